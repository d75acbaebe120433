"""Running a command on a bad input in-process and checking how it answers.

Every bad input must be answered the way ``python -m raykd.<cmd>`` answers it: exit code 2,
one line on stderr (no traceback, no usage block) naming where the mistake is and what was
expected, no Ray started, and no file under the watched folder created, changed or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from raykd.errors import run_cli

EARLIER = "earlier-search"  # the search the bench's results folder already holds

# The good COCO set the dataset cases start from: two 32 px images, categories 1 and 3.
CATEGORIES = [{"id": 1, "name": "box"}, {"id": 3, "name": "disc"}]
IMAGES = [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
          {"id": 2, "file_name": "b.png", "width": 32, "height": 32}]
ANNOTATIONS = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
               {"id": 11, "image_id": 2, "category_id": 3, "bbox": [4, 4, 8, 12]}]


def snapshot(root: Path) -> dict[str, object]:
    """Every folder and file under ``root``: relative path -> ``"dir"`` or (size, sha256)."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            state[rel] = "dir"
        else:
            data = path.read_bytes()
            state[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return state


def ray_started() -> bool:
    """Whether this process initialised Ray (without importing it when nothing did)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def answer(cmd: str, argv: Sequence[str]) -> tuple[int, str, str]:
    """``python -m raykd.<cmd> ARGV`` in this process: (exit code, stdout, stderr).

    ``run_cli`` is what the module's ``__main__`` runs: it turns a UserError into one line and
    exit 2; argparse exits by itself. Any other exception escapes (a traceback: a failure).
    """
    main = importlib.import_module(f"raykd.{cmd}.__main__").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(lambda _argv: main(list(argv)), f"python -m raykd.{cmd}")
            code = 0  # run_cli always exits; kept for completeness
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def check_line(cmd: str, code: int, stderr: str, where: Sequence[str], what: str) -> str:
    """The checks on the answer itself; returns the message after ``prog: error: ``."""
    assert code == 2, f"exit code {code}, stderr: {stderr!r}"
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line: {stderr!r}"
    assert "Traceback" not in stderr and "usage:" not in stderr, stderr
    prefix, sep, message = stderr.rstrip("\n").partition(": error: ")
    assert sep and prefix.startswith(f"python -m raykd.{cmd}"), stderr
    if message.endswith("(see --help)"):  # argparse's own message names flags and arguments as words
        for part in where:
            assert re.search(rf"(?<![\w.-]){re.escape(part)}(?![\w.-])", message), f"{part!r} not in {message!r}"
    start = 0
    for part in () if message.endswith("(see --help)") else where:
        # FILE, then KEY, each named as `NAME: ` at a word boundary (not inside a temporary path)
        found = re.compile(rf"(^|[/ ]){re.escape(part)}: ").search(message, start)
        assert found, f"{part + ': '!r} not named (after the file) in {message!r}"
        start = found.end() - 1  # from the space after the delimiter: a key right after the file
    assert what in message, f"expected {what!r} in {message!r}"
    return message


def check_refused(cmd: str, argv: Sequence[str], *, where: Sequence[str], what: str, watch: Path) -> str:
    """Run the command on a bad input and check every rule (see the module docstring)."""
    assert not ray_started()
    before = snapshot(watch)
    code, _, stderr = answer(cmd, argv)
    message = check_line(cmd, code, stderr, where, what)
    assert not ray_started(), "Ray was started"
    after = snapshot(watch)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files created, changed or removed: {changed}"
    return message
