"""User-facing errors and the command-line wrapper that turns them into one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UserError(Exception):
    """A mistake in user input (file, key or value): printed as one line, exit code 2.

    ``file`` and ``key`` name where the mistake is; ``message`` says what was expected.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        return f"{where}: {self.message}" if where else self.message


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line, like a :class:`UserError`:
    ``prog: error: MESSAGE (see --help)`` on stderr and exit code 2 (no usage block)."""

    def error(self, message: str):
        message = " ".join(message.split())  # argparse messages may wrap
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main: Callable[[Sequence[str] | None], int], prog: str) -> None:
    """Run ``main(argv)``; a :class:`UserError` becomes ``prog: error: ...`` on stderr, exit 2."""
    try:
        code = main(None)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
