"""``python -m raykd.results compact RESULTS``: maintenance of a search's Parquet tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from raykd.console import add_verbosity_args, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli

PROG = "python -m raykd.results"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="The Parquet trial tables of a search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compact = commands.add_parser(
        "compact", help="merge the part files of each table into one per search",
        description="Replace the part files of each table (trials, epochs, runs) by one part per search, holding "
                    "the newest version of each row: afterwards a plain query of the part files counts one row "
                    "per trial. A search compacts its tables when it ends; this is for one that was stopped. "
                    "Safe while a search writes.")
    compact.add_argument("results", metavar="RESULTS",
                         help="search folder (STORAGE/NAME), its tables/ folder, or a storage holding one search "
                              "(a path or a pyarrow URI)")
    for sub in commands.choices.values():
        add_verbosity_args(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    from raykd.results.compact import compact
    from raykd.uri import is_uri

    if not is_uri(args.results) and not Path(args.results).is_dir():
        raise UserError("expected a search folder (STORAGE/NAME) or its tables/ folder", file=args.results)
    merged = compact(args.results)
    print(f"{args.results}: " + ", ".join(f"{table} {count} part(s) merged" for table, count in merged.items()))
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
