"""``python -m raykd COMMAND ...``: the ``raykd`` command (:mod:`raykd.cli`)."""

from raykd.cli import main

main(prog="python -m raykd")
