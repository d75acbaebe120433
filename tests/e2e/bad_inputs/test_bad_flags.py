"""Bad command-line flags of the five commands: one line naming the flag, exit 2, nothing started."""

from __future__ import annotations

import pytest
from bad_input_tools import EARLIER

ADDRESS = ["--address", "http://127.0.0.1:1"]  # nothing listens there: contacting it would fail differently


def _search(b, *flags):
    return [b.space(), "--storage", b.storage, *flags]


def _file(b, name="a_file"):
    path = b.root / name
    path.write_text("not a folder\n")
    return path


def _folder(b, name="empty"):
    (b.root / name).mkdir()
    return b.root / name


# (id, command, argv from the bench, what is named, words of what was expected)
CASES = [
    # raykd.search
    ("search-missing-space", "search", lambda b: [], ["space"], "the following arguments are required: space"),
    ("search-unknown-flag", "search", lambda b: _search(b, "--bogus"), ["--bogus"], "unrecognized arguments"),
    ("search-num-samples-zero", "search", lambda b: _search(b, "--num-samples", "0"), ["--num-samples"],
     "expected a positive number, got 0"),
    ("search-num-samples-not-a-number", "search", lambda b: _search(b, "--num-samples", "abc"), ["--num-samples"],
     "invalid int value: 'abc'"),
    ("search-num-cpus-not-a-number", "search", lambda b: _search(b, "--num-cpus", "two"), ["--num-cpus"],
     "invalid int value: 'two'"),
    ("search-storage-is-a-file", "search", lambda b: [b.space(), "--storage", _file(b)], ["a_file", "--storage"],
     "expected a folder to hold searches, this is a file"),
    ("search-name-of-an-existing-search", "search", lambda b: _search(b, "--name", EARLIER),
     ["--name"], f"a search named {EARLIER!r} exists at"),
    ("search-resume-with-nothing-to-resume", "search", lambda b: _search(b, "--resume"), ["--resume"],
     "no earlier search of 'space' under"),
    ("search-set-without-equals", "search", lambda b: _search(b, "--set", "train.epochs"), ["--set"],
     "expected key=value, got 'train.epochs'"),
    ("search-set-unknown-key", "search", lambda b: _search(b, "--set", "train.epoch=3"), ["--set", "train.epoch"],
     "unknown key"),
    ("search-set-value-of-wrong-type", "search", lambda b: _search(b, "--set", "train.epochs=three"),
     ["--set", "train.epochs"], "valid integer"),
    ("search-set-bad-space-value", "search", lambda b: _search(b, "--set", "search.sampler=bayes"),
     ["search.sampler"], "(got 'bayes')"),
    # raykd.train
    ("train-missing-experiment", "train", lambda b: [], ["experiment"],
     "the following arguments are required: experiment"),
    ("train-workers-zero", "train", lambda b: [b.experiment(), "--workers", "0"], ["--workers"],
     "expected a positive number of workers, got 0"),
    ("train-workers-not-a-number", "train", lambda b: [b.experiment(), "--workers", "many"], ["--workers"],
     "invalid int value: 'many'"),
    ("train-gpus-per-worker-two", "train", lambda b: [b.experiment(), "--gpus-per-worker", "2"],
     ["--gpus-per-worker"], "invalid choice: 2 (choose from 0, 1)"),
    ("train-resume-with-nothing-to-resume", "train", lambda b: [b.experiment(), "--resume"],
     ["state.pt", "--resume"], "nothing to resume: no checkpoint"),
    ("train-set-without-equals", "train", lambda b: [b.experiment(), "--set", "distill.method"], ["--set"],
     "expected key=value, got 'distill.method'"),
    ("train-set-unknown-key", "train", lambda b: [b.experiment(), "--set", "distill.methd=mgd"],
     ["--set", "distill.methd"], "unknown key"),
    # raykd.analyze
    ("analyze-folder-without-tables", "analyze", lambda b: [_folder(b)], ["empty"], "no raykd tables here"),
    ("analyze-results-folder-missing", "analyze", lambda b: [b.root / "gone"], ["gone"],
     "no such results folder or file"),
    ("analyze-unknown-metric", "analyze", lambda b: [b.storage / EARLIER, "--metric", "mAP", "--out", b.root / "r"],
     ["--metric"], "unknown metric 'mAP'; expected one of"),
    ("analyze-unknown-fidelity", "analyze", lambda b: [b.storage / EARLIER, "--fidelity", "newest"], ["--fidelity"],
     "invalid choice: 'newest'"),
    ("analyze-unknown-format", "analyze", lambda b: [b.storage / EARLIER, "--format", "pdf", "--out", b.root / "r"],
     ["--format"], "unknown format pdf"),
    ("analyze-unknown-correction", "analyze", lambda b: [b.storage / EARLIER, "--correction", "bonferroni"],
     ["--correction"], "invalid choice: 'bonferroni'"),
    ("analyze-bins-zero", "analyze", lambda b: [b.storage / EARLIER, "--bins", "0", "--out", b.root / "r"],
     ["--bins"], "expected a positive number of bins, got 0"),
    # raykd.submit
    ("submit-address-auto", "submit", lambda b: [b.space(), "--address", "auto"], ["--address"],
     "expected the dashboard address (http://HEAD:8265), got 'auto'"),
    ("submit-address-ray-client-scheme", "submit", lambda b: [b.space(), "--address", "ray://head:10001"],
     ["--address"], "expected the dashboard address (http://HEAD:8265), got 'ray://head:10001'"),
    ("submit-space-and-status", "submit", lambda b: [b.space(), "--status", "raykd-x", *ADDRESS], ["SPACE"],
     "give either SPACE.yaml or --status, not both"),
    ("submit-status-and-stop", "submit", lambda b: ["--status", "a", "--stop", "b", *ADDRESS], ["--stop", "--status"],
     "not allowed with argument"),
    ("submit-num-samples-zero", "submit", lambda b: [b.space(), "--num-samples", "0", *ADDRESS], ["--num-samples"],
     "expected a positive number, got 0"),
    # raykd.data
    ("data-no-command", "data", lambda b: [], ["COMMAND"], "the following arguments are required: COMMAND"),
    ("data-unknown-command", "data", lambda b: ["chek"], ["COMMAND"], "invalid choice: 'chek'"),
    ("data-check-without-images", "data", lambda b: ["check", b.root / "a.json"], ["--images"],
     "the following arguments are required: --images"),
    ("data-synth-zero-images", "data", lambda b: ["synth", b.root / "s", "--images", "0"], ["--images"],
     "expected an integer >= 1, got 0"),
    ("data-synth-image-size-too-small", "data", lambda b: ["synth", b.root / "s", "--image-size", "32"],
     ["--image-size"], "expected an integer >= 64, got 32"),
    ("data-synth-into-a-folder-of-other-files", "data", lambda b: ["synth", b.storage, "--images", "2"],
     ["results"], "folder exists and is not a raykd synthetic set (no synth.json); not replacing it"),
    ("data-synth-onto-a-file", "data", lambda b: ["synth", _file(b), "--images", "2"], ["a_file"],
     "expected a folder for the synthetic set, this is a file"),
]


@pytest.mark.parametrize(("cmd", "argv", "where", "what"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_flag(bench, cmd, argv, where, what):
    bench.check_refused(cmd, argv(bench), where=where, what=what)
