"""What every raykd command prints besides its results: ``-q/--quiet`` and ``-v/--verbose``, the
same on each command, progress bars only on a terminal, and the libraries' own chatter.

By default a command prints its own lines (and progress bars when stderr is a terminal, so a
redirected log holds no ``\\r`` bars); Ray's and Optuna's INFO lines and Ray Tune's start-up
banner are hidden. ``-q`` also hides progress lines and bars: results, notes and errors only.
``-v`` shows the libraries' INFO lines and Tune's banner.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

QUIET, NORMAL, VERBOSE = -1, 0, 1


def add_verbosity_args(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (exclusive) on ``parser``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress lines or bars: results, notes and errors only")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also Ray's and Optuna's INFO lines and Ray Tune's banner")


def level(args: argparse.Namespace) -> int:
    """:data:`QUIET`, :data:`NORMAL` or :data:`VERBOSE` from parsed ``args``."""
    if getattr(args, "quiet", False):
        return QUIET
    return VERBOSE if getattr(args, "verbose", False) else NORMAL


def progress_bars(args: argparse.Namespace, stream=None) -> bool:
    """Whether to draw progress bars: not ``--quiet`` and ``stream`` (default stderr, where tqdm
    writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return level(args) > QUIET and bool(getattr(stream, "isatty", lambda: False)())


def library_log_level(args: argparse.Namespace) -> int:
    """The ``logging`` level for Ray and Optuna: INFO with ``-v``, else WARNING."""
    return logging.INFO if level(args) == VERBOSE else logging.WARNING


def quiet_libraries(args: argparse.Namespace) -> None:
    """Hide Ray's and Optuna's INFO lines and Tune's banner unless ``-v``; call before Ray starts.

    Tune's new output engine prints its banner (the experiment table, "View detailed results
    here") at every verbosity; its previous engine prints nothing at ``verbose=0``, which the
    search's run configuration sets. Ray workers inherit the environment variable.
    """
    log_level = library_log_level(args)
    for name in ("ray", "optuna"):
        logging.getLogger(name).setLevel(log_level)
    if level(args) != VERBOSE:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
