"""The ``raykd`` command: its console script, the subcommands it delegates to each module's own
parser, the same -q/-v everywhere, progress bars on terminals only, and the commands that were
Python functions only (``results compact``, ``config show|schema``)."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

import raykd
from raykd import cli
from raykd.console import progress_bars, quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def run_raykd(argv, capsys) -> tuple[int, str, str]:
    """``raykd ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


def test_the_console_script_resolves_to_the_command():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["raykd"].partition(":")
    assert getattr(importlib.import_module(module), name) is cli.main


def test_help_lists_every_command_and_version(capsys):
    code, out, _ = run_raykd(["--help"], capsys)
    assert code == 0
    for name, command in cli.COMMANDS.items():
        assert f"  {name}" in out and command.summary in out
    assert run_raykd(["--version"], capsys)[:2] == (0, f"raykd {raykd.__version__}\n")


@pytest.mark.parametrize("argv, message", [
    ([], "expected a COMMAND"),
    (["serach", "x.yaml"], "unknown command 'serach'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = run_raykd(argv, capsys)
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_is_its_module_parser_with_quiet_and_verbose(capsys, name):
    """``raykd NAME --help`` is the module's own help under the name ``raykd NAME``, and every
    command (each subcommand of those that have them) takes -q/--quiet and -v/--verbose."""
    module = importlib.import_module(cli.COMMANDS[name].module)
    code, out, _ = run_raykd([name, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: raykd {name}")
    assert module.PROG.startswith("python -m raykd.")  # restored after the run
    parser = module.build_parser() if hasattr(module, "build_parser") else module._parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    parsers = list(subparsers[0].choices.values()) if subparsers else [parser]
    for each in parsers:
        flags = {opt for action in each._actions for opt in action.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, each.prog
    with pytest.raises(SystemExit):
        module.main(["--help"])
    direct = capsys.readouterr().out
    assert direct.replace(module.PROG, f"raykd {name}").split() == out.split()


def test_data_subcommands_come_from_raykd_data(capsys):
    from raykd.data.__main__ import _parser

    names = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    out = run_raykd(["data", "--help"], capsys)[1]
    for name in names:
        assert name in out
        assert run_raykd(["data", name, "--help"], capsys)[0] == 0


def test_python_m_raykd_runs_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raykd", "--version"], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, f"raykd {raykd.__version__}\n")
    proc = subprocess.run([sys.executable, "-m", "raykd", "config", "show", "nowhere.yaml"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "python -m raykd config: error: nowhere.yaml: file not found\n")


def test_submit_job_commands_are_subcommands():
    from raykd.errors import UserError
    from raykd.submit.__main__ import build_parser, job_command_flags

    assert job_command_flags(["status", "raykd-a", "--address", "http://h:8265"]) == [
        "--status", "raykd-a", "--address", "http://h:8265"]
    assert job_command_flags(["logs", "raykd-a", "--follow"]) == ["--logs", "raykd-a", "--follow"]
    assert job_command_flags(["stop", "raykd-a"]) == ["--stop", "raykd-a"]
    assert job_command_flags(["list"]) == ["--list"]
    assert job_command_flags(["space.yaml", "--name", "x"]) == ["space.yaml", "--name", "x"]
    with pytest.raises(UserError, match="expected a JOB_ID after 'stop'"):
        job_command_flags(["stop", "--address", "http://h:8265"])
    args = build_parser().parse_args(job_command_flags(["stop", "raykd-a"]))
    assert (args.stop, args.space) == ("raykd-a", None)


# --- what commands print -----------------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("argv, tty, bars", [
    ([], True, True), ([], False, False), (["-q"], True, False), (["-v"], False, False), (["-v"], True, True),
])
def test_progress_bars_only_on_a_terminal_and_never_with_quiet(argv, tty, bars):
    from raykd.train.__main__ import build_parser

    args = build_parser().parse_args(["exp.yaml", *argv])
    assert progress_bars(args, _Stream(tty)) is bars


def test_quiet_and_verbose_exclude_each_other(capsys):
    from raykd.search.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["s.yaml", "-q", "-v"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_library_info_lines_and_tunes_banner_hidden_unless_verbose(monkeypatch):
    from raykd.search.__main__ import build_parser

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    for name in ("ray", "optuna"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_libraries(build_parser().parse_args(["s.yaml"]))
    assert logging.getLogger("ray").level == logging.getLogger("optuna").level == logging.WARNING
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's old output engine prints no banner at verbose=0
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT")
    quiet_libraries(build_parser().parse_args(["s.yaml", "-v"]))
    assert logging.getLogger("ray").level == logging.getLogger("optuna").level == logging.INFO
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ


def test_train_log_help_describes_a_run_not_a_search(capsys):
    """``raykd.train --help`` described ``--log`` with the search's resume text."""
    from raykd.search.__main__ import build_parser as search_parser
    from raykd.train.__main__ import build_parser as train_parser

    def log_help(parser) -> str:
        return next(a.help for a in parser._actions if "--log" in a.option_strings)

    assert "search" not in log_help(train_parser()) and "keeps the run's" in log_help(train_parser())
    assert "keeps the search's" in log_help(search_parser())


# --- results compact ------------------------------------------------------------------------


def _search_with_parts(root: Path) -> Path:
    from raykd.epoch_record import EpochRecord, LossSummary
    from raykd.results import TableWriter

    writer = TableWriter(root / "s1" / "tables", "s1", {"train.seed": pa.int64()}, flush_every_s=0)
    for trial in ("t1", "t2"):
        for epoch in (1, 2):
            record = EpochRecord(epoch=epoch, epochs_total=2, losses=LossSummary(total=1.0, det=1.0, kd=0.0),
                                 scores={"bbox_mAP": 0.1 * epoch}, lr=0.01, step_time=0.1, epoch_time=1.0,
                                 time_total_s=float(epoch))
            writer.add_result(trial, {"train.seed": 0}, record.as_report())
            writer.flush()
    return root / "s1"


@pytest.mark.parametrize("argv0", [["-m", "raykd.results.compact"], ["-m", "raykd", "results", "compact"]])
def test_results_compact_is_a_command(tmp_path, argv0):
    """``python -m raykd.results.compact`` exited 0 doing nothing."""
    search = _search_with_parts(tmp_path)
    before = len(list((search / "tables" / "trials").glob("*.parquet")))
    proc = subprocess.run([sys.executable, *argv0, str(search)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no RuntimeWarning from runpy
    assert f"trials {before} part(s) merged" in proc.stdout and before > 1
    assert len(list((search / "tables" / "trials").glob("*.parquet"))) == 1
    proc = subprocess.run([sys.executable, *argv0, str(tmp_path / "none")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "expected a search folder" in proc.stderr


# --- config show | schema -----------------------------------------------------------------


def test_config_show_prints_the_resolved_experiment(capsys, tmp_path):
    code, out, _ = run_raykd(["config", "show", str(ROOT / "experiments" / "reproduction_student.yaml"),
                              "--set", "train.epochs=5"], capsys)
    shown = yaml.safe_load(out)
    assert code == 0 and shown["name"] == "reproduction_student" and shown["train"]["epochs"] == 5
    assert shown["teacher"]["backbone"] == "resnet34"  # from demo_student.yaml, the base
    assert shown["data"]["synthetic"]["out_dir"] == str(ROOT / "data_cache" / "demo96")
    assert shown["train"]["momentum"] == 0.9  # defaults filled in, as OUTPUT/config.yaml holds them


def test_config_show_prints_a_space_and_its_experiment(capsys):
    code, out, _ = run_raykd(["config", "show", str(ROOT / "search_spaces" / "demo.yaml"), "--set",
                              "search.num_samples=3", "--set", "train.epochs=2"], capsys)
    space, experiment = yaml.safe_load_all(out)
    assert code == 0 and space["search"]["num_samples"] == 3 and "distill.method" in space["space"]
    assert space["experiment"] == str(ROOT / "experiments" / "demo_student.yaml")
    assert experiment["name"] == "demo_student" and experiment["train"]["epochs"] == 2


def test_config_schema_validates_the_repository_files(capsys, tmp_path):
    import jsonschema

    code, out, _ = run_raykd(["config", "schema", "--out", str(tmp_path)], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    schemas = {kind: json.loads((tmp_path / f"raykd-{kind}.schema.json").read_text()) for kind in ("experiment", "space")}
    files = {"experiment": [p for p in (ROOT / "experiments").rglob("*.yaml") if "cluster" not in p.parts],
             "space": list((ROOT / "search_spaces").glob("*.yaml"))}
    for kind, paths in files.items():
        assert paths
        for path in paths:
            jsonschema.validate(yaml.safe_load(path.read_text()), schemas[kind])
    bad = yaml.safe_load((ROOT / "experiments" / "demo_student.yaml").read_text())
    bad["train"]["epoch"] = 3  # a typo of epochs
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["experiment"])
