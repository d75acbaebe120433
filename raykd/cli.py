"""``raykd COMMAND ...``: one command for everything raykd does (the ``raykd`` console script,
also ``python -m raykd``).

Each command is a module with its own parser and ``main(argv)``, still run as ``python -m
raykd.X``; ``raykd X ARGS`` runs that ``main`` with ARGS, so a flag is defined once and a new
subcommand of a module (``raykd data ...``) appears here by itself. A module names itself in
usage lines and messages by its ``PROG``, which is ``raykd X`` while ``raykd X`` runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from raykd import __version__
from raykd.errors import ArgumentParser, run_cli


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "search": Command("raykd.search.__main__", "search distillation settings with Ray Tune + Optuna"),
    "train": Command("raykd.train.__main__", "train one teacher or student (one process, or DDP with --workers)"),
    "analyze": Command("raykd.analyze.__main__", "ablation tables, intervals, importances and plots of a search"),
    "submit": Command("raykd.submit.__main__", "run a search on a Ray cluster; status|logs|stop|list its jobs"),
    "data": Command("raykd.data.__main__", "write the synthetic set; check or convert COCO, VOC and YOLO data; "
                    "score detections"),
    "visualize": Command("raykd.visualize.__main__", "draw what a method distils: masks, attention, detections"),
    "export": Command("raykd.export", "write a trained student as a state dict torchvision loads"),
    "results": Command("raykd.results.__main__", "maintain a search's Parquet tables (compact)"),
    "config": Command("raykd.config_command", "show the resolved config of a file; write the JSON Schemas"),
}
"""``raykd`` subcommand -> the module whose ``main(argv)`` runs it, and its line in ``raykd --help``."""

VERBOSITY_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def build_parser(prog: str = "raykd") -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    parser = ArgumentParser(
        prog=prog,
        usage=f"{prog} [-h] [--version] COMMAND [ARGS ...]",
        description="Knowledge distillation of torchvision detectors (MGD, FGD, CWD, PKD, DMKD, SAMKD, AMD,\n"
                    "FreeKD, DFMSD), searched with Ray Tune + Optuna; every trial in Parquet tables.",
        epilog="commands:\n" + "".join(f"  {name:<{width}}  {c.summary}\n" for name, c in COMMANDS.items())
               + f"\nevery command takes -q/--quiet and -v/--verbose; '{prog} COMMAND --help' shows its options.\n"
               f"example: {prog} search search_spaces/demo.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raykd {__version__}")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help=argparse.SUPPRESS)
    return parser


@contextmanager
def _named(module, prog: str) -> Iterator[None]:
    """``module.PROG`` set to ``prog`` while the command runs."""
    before = module.PROG
    module.PROG = prog
    try:
        yield
    finally:
        module.PROG = before


def split_command(argv: Sequence[str], prog: str = "raykd") -> tuple[str, list[str]]:
    """(command, its arguments) of a ``raykd`` command line; ``-h``, ``--version`` and usage
    errors exit here. ``-q``/``-v`` before the command go to the command (at the end, after a
    subcommand such as ``config show``)."""
    argv = list(argv)
    leading = []
    while argv and argv[0] in VERBOSITY_FLAGS:
        leading.append(argv.pop(0))
    parser = build_parser(prog)
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # -h, --version; else an error
        parser.error("expected a COMMAND")
    name = argv[0]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")
    return name, argv[1:] + leading


def main(argv: Sequence[str] | None = None, prog: str = "raykd") -> None:
    """Run ``raykd COMMAND ARGS``; exits with the command's code (2: bad input, one line)."""
    name, args = split_command(sys.argv[1:] if argv is None else argv, prog)
    module = importlib.import_module(COMMANDS[name].module)
    with _named(module, f"{prog} {name}"):
        run_cli(lambda _: module.main(args), f"{prog} {name}")


if __name__ == "__main__":
    main()
