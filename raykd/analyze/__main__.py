"""``python -m raykd.analyze RESULTS``: ablation tables, importances and plots from the trial tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from raykd.analyze.factors import DEFAULT_BINS
from raykd.analyze.report import FORMATS, parse_formats, write, write_summary
from raykd.analyze.scores import FIDELITIES
from raykd.console import add_verbosity_args, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli
from raykd.metric_names import METRICS
from raykd.uri import is_uri

PROG = "python -m raykd.analyze"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Turn the Parquet trial tables of a raykd search into an ablation report:\n"
                    "  - a leaderboard of configurations (seeds pooled, mean ± 95% t-interval) beside the\n"
                    "    no-distillation baseline (distill.method=none) and the teacher (teacher.json);\n"
                    "  - one ablation table per parameter (numeric ones binned, conditional ones where they\n"
                    "    are defined) with Welch differences to a reference level, AP_S/M/L and failures;\n"
                    "  - two-factor tables, and one-factor-at-a-time comparisons around the best configuration;\n"
                    "  - fANOVA and PED-ANOVA importances (Optuna), conditional parameters on sub-studies;\n"
                    "  - the ablation path from the baseline to the best configuration (greedy, additive model);\n"
                    "  - plots: factor effects, learning curves, metric against cost, importances, parallel\n"
                    "    coordinates of the top trials.\n"
                    "Works on a search that is still running.",
        epilog="writes, under --out: report.md, report.html (self-contained), report.tex (+ tex/NAME.tex),\n"
               "csv/NAME.csv (the raw numbers of every table), plots/NAME.png and summary.json (best, baseline,\n"
               "delta with its paired or Welch 95% interval, fidelity: the lines raykd.search closes with)\n\n"
               "examples:\n"
               f"  {PROG} results/demo-20250101-120000\n"
               f"  {PROG} results/demo-*/ --metric AP50 --by distill.method,distill.fusion\n"
               f"  {PROG} results/demo --filter distill.method=mgd,dmkd --format md,csv\n\n"
               "fidelity (trials stopped early by ASHA ran fewer epochs):\n"
               "  auto          common-epoch if it leaves at least 3 trials, else completed if that\n"
               "                compares more (default)\n"
               "  common-epoch  every trial at the last epoch all finished non-failed trials reached\n"
               "  completed     only trials that ran their full schedule, at their final epoch\n"
               "  best          every trial at its best epoch (optimistic)\n"
               "Failed trials are never compared; the report lists them with their error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="search folder (STORAGE/NAME), tables folder, or Parquet part files; several pool "
                             "their trials")
    parser.add_argument("--metric", default="bbox_mAP", help=f"metric to compare: {', '.join(METRICS)} "
                                                              "(default: bbox_mAP)")
    parser.add_argument("--by", action="append", default=[], metavar="KEY[,KEY...]",
                        help="parameters to tabulate (repeatable; default: every parameter but the seed)")
    parser.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=V1[,V2...]",
                        help="keep trials whose column KEY has one of the values (repeatable, all must hold); "
                             "'null' matches an undefined parameter; list columns take [1,2],[1,2,4]")
    parser.add_argument("--fidelity", default="auto", choices=FIDELITIES,
                        help="which epoch of each trial is compared (default: auto; see below)")
    parser.add_argument("--format", default=",".join(FORMATS), metavar="FMT[,FMT...]",
                        help=f"what to write: {', '.join(FORMATS)} (default: all; md brings png)")
    parser.add_argument("--out", help="report folder (default: RESULTS/report for one results folder, else ./report)")
    parser.add_argument("--correction", choices=("holm", "bh", "none"),
                        help="multiple-comparison correction of each table's differences to its reference: "
                             "holm (family-wise, Bonferroni intervals), bh (false discovery rate, FCR intervals) "
                             "or none (default: holm when a table compares more than one row, else none)")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS,
                        help=f"quantile bins of a numeric parameter with a value of fewer than two trials "
                             f"(default: {DEFAULT_BINS})")
    add_verbosity_args(parser)
    return parser


def default_out(results: Sequence[str]) -> Path:
    """``RESULTS/report`` for one local results folder, else ``./report``."""
    if len(results) == 1 and not is_uri(results[0]) and Path(results[0]).is_dir():
        return Path(results[0]) / "report"
    return Path("report")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    formats = parse_formats(args.format)
    by = [name.strip() for item in args.by for name in item.split(",") if name.strip()]
    from raykd.analyze.pipeline import analyze, build_report, summary

    if args.bins < 1:
        raise UserError(f"expected a positive number of bins, got {args.bins}", key="--bins")
    analysis = analyze(args.results, metric=args.metric, by=by or None, filters=args.filters,
                       fidelity=args.fidelity, correction=args.correction or "auto", bins=args.bins)
    out = Path(args.out) if args.out else default_out(args.results)
    with_plots = bool({"png", "html"} & set(formats))
    pictures = None
    if with_plots:  # the command wires the models' pictures into the analysis, which reads tables only
        from raykd.visualize.trial import search_pictures as pictures
    report = build_report(analysis, with_plots=with_plots, pictures=pictures)
    try:
        written = write(report, out, formats)
        written.append(write_summary(analysis.verdict, out))
    except OSError as err:
        raise UserError(f"cannot write the report: {err}", file=out) from err
    names = sorted({p.relative_to(out).parts[0] + ("/" if len(p.relative_to(out).parts) > 1 else "")
                    for p in written})
    for line in summary(analysis, os.fspath(out), names):
        print(line)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
