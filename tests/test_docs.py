"""Docs the code cites exist, and docs/architecture.md names files and modules that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _exists(name: str) -> bool:
    return any((base / name).is_file() for base in (ROOT, ROOT / "docs"))


def test_every_markdown_file_cited_in_the_code_is_in_the_repository():
    cited = {}
    for path in sorted((ROOT / "raykd").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in re.findall(r"\b(docs/[\w./-]+\.md|[A-Z][A-Z_]*\.md)\b", line):  # docs, not outputs
                cited.setdefault(name, f"{path.relative_to(ROOT)}:{n}")
    assert "docs/architecture.md" in cited
    missing = {name: where for name, where in cited.items() if not _exists(name)}
    assert missing == {}, "cite docs/architecture.md (or another file in the repository)"


def test_architecture_names_what_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for section in ("## Data flow, stage by stage", "## Layers: what may import what",
                    "## Assumptions about Ray Tune's internals, and where"):
        assert section in text
    files = set(re.findall(r"`(raykd/[\w/]+\.py)`", text))
    modules = set(re.findall(r"`(raykd(?:\.\w+)+)`", text))
    assert len(files) >= 10 and len(modules) >= 20
    assert sorted(f for f in files if not (ROOT / f).is_file()) == []
    unknown = []
    for dotted in modules:  # a module, or an attribute of one (raykd.results.load)
        parts = dotted.split(".")
        if not any(importlib.util.find_spec(".".join(parts[:k])) for k in range(len(parts), 1, -1)
                   if (ROOT / Path(*parts[:k])).with_suffix(".py").is_file() or (ROOT / Path(*parts[:k])).is_dir()):
            unknown.append(dotted)
    assert unknown == []


# --- the README cannot drift: its runnable blocks are checked against the code -------------------

RUNNABLE = "<!-- runnable -->"


def _sections(text: str) -> list[str]:
    """The README's ``##`` sections, in order (the text before the first one left out)."""
    return re.split(r"^## ", text, flags=re.M)[1:]


def runnable_blocks(text: str, sections: int = 2) -> list[str]:
    """The code blocks marked ``<!-- runnable -->`` in the first ``sections`` ``##`` sections."""
    blocks = []
    for section in _sections(text)[:sections]:
        blocks += re.findall(rf"{re.escape(RUNNABLE)}\n```\w*\n(.*?)```", section, flags=re.S)
    return blocks


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block: comments dropped, ``\\`` continuations joined, ``&&`` split."""
    import shlex

    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return out


def _pyproject() -> dict:
    tomllib = __import__("pytest").importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def check_command(words: list[str], project: dict) -> None:
    """Fail unless ``words`` is a command the repository supports as written: a ``pip install``
    of the project (extras that exist) or of the pinned torch pair, the test command, the cluster
    image's build, or a raykd command whose flags its own parser accepts (``config show`` is run:
    it only reads files) and whose repository files exist."""
    import contextlib
    import importlib
    import io

    from raykd import cli

    extras = project["optional-dependencies"]
    if words[:3] == ["pip", "install", "-e"]:
        target = words[3]
        assert target == "." or re.fullmatch(r"\.\[([\w,]+)\]", target), words
        for extra in re.findall(r"\w+", target.removeprefix(".")):
            assert extra in extras, f"no extra {extra!r} in pyproject.toml"
        assert words[4:] in ([], ["-c", "constraints.txt"]), words
        return
    if words[:2] == ["pip", "install"]:  # the tested torch pair, as constraints.txt pins it
        pins = {line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
        assert [w for w in words[2:] if "==" in w] and all(w in pins for w in words[2:] if "==" in w), words
        return
    if words[:3] == ["python", "-m", "pytest"]:
        assert any(d.startswith("pytest") for d in extras["test"])
        return
    if words[:2] == ["docker", "build"]:
        assert (ROOT / words[words.index("-f") + 1]).is_file()
        return
    if words[:3] == ["python", "-m", "raykd"]:
        words = ["raykd", *words[3:]]
    elif words[:2] == ["python", "-m"] and words[2].startswith("raykd."):
        words = ["raykd", words[2].removeprefix("raykd."), *words[3:]]
    assert words[0] == "raykd", f"not a command the README may show: {words}"
    for word in words[1:]:
        if re.fullmatch(r"(experiments|search_spaces)/[\w/.-]+\.yaml", word):
            assert (ROOT / word).is_file(), word
    if words[1:] == ["--version"]:
        return
    name, args = cli.split_command(words[1:])
    module = importlib.import_module(cli.COMMANDS[name].module)
    parser = module.build_parser() if hasattr(module, "build_parser") else module._parser()
    if name == "submit":
        args = module.job_command_flags(args)
    parser.parse_args(args)  # exits 2 on a flag the command does not have
    if name == "config" and args[0] == "show":
        with contextlib.redirect_stdout(io.StringIO()):
            assert module.main([args[0], str(ROOT / args[1]), *args[2:]]) == 0


def test_the_readme_runnable_blocks_match_the_code(monkeypatch):
    """Every command of the README's first two sections' runnable blocks is one the code accepts
    as written; the two commands are kept exactly."""
    monkeypatch.chdir(ROOT)
    text = (ROOT / "README.md").read_text()
    blocks = runnable_blocks(text)
    assert len(blocks) >= 2
    assert "pip install -e . -c constraints.txt && python -m raykd.search search_spaces/demo.yaml" in blocks[0]
    assert 'pip install -e ".[test]" -c constraints.txt && python -m pytest -q -m "not slow"' in blocks[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" -c constraints.txt && python -m pytest -q -m "not slow"' in ci
    project = _pyproject()
    checked = [words for block in blocks for words in commands(block)]
    assert len(checked) >= 10
    for words in checked:
        check_command(words, project)


def test_the_readme_check_refuses_what_the_code_does_not_do():
    """The check itself: a flag, an extra, a file or a command that does not exist fails it."""
    import pytest

    project = _pyproject()
    for bad in (["raykd", "search", "search_spaces/demo.yaml", "--no-such-flag"],
                ["pip", "install", "-e", ".[gpu]"],
                ["raykd", "train", "experiments/missing.yaml"],
                ["python", "-m", "raykd.search", "search_spaces/demo.yaml", "--workers", "8"],
                ["make", "install"]):
        with pytest.raises((AssertionError, SystemExit)):
            check_command(bad, project)


def test_the_readme_fits_a_few_screens_and_its_links_resolve():
    """At most ~250 lines; every relative link of the README and docs/*.md names a file (and a
    heading) that exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.name}: {target}"
            if anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{path.name}: {target}"


# --- texts that had gone stale ---------------------------------------------------


def test_the_hardening_figures_are_quoted_in_one_place():
    """The README's fault table said 30/140 while its Tests paragraph said 32/142: the figures of
    the test suite's hardening line are now quoted once, in docs/reliability.md."""
    texts = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    quoting = [name for name, text in texts.items()
               if re.search(r"faults injected\W+\d", text) or re.search(r"faults injected \| \d", text)]
    assert quoting == ["reliability.md"]
    table = texts["reliability.md"]
    injected = re.search(r"\| faults injected \| (\d+) \|", table).group(1)
    survived = re.search(r"\| faults survived \| (\d+) \|", table).group(1)
    tried = re.search(r"\| bad inputs tried \| (\d+) \|", table).group(1)
    answered = re.search(r"\| bad inputs answered with a clear error \| (\d+) \|", table).group(1)
    assert (injected, tried) == (survived, answered)


def test_a_space_files_comment_on_set_and_fixed_says_what_the_code_does(write_experiment, tmp_path):
    """search_spaces/methods_compare_small.yaml said a ``--set`` of a ``fixed:`` key does not reach
    the trials; it does (tests/search/test_space_fixed.py), and no shipped space says otherwise."""
    import yaml

    from raykd.search.space import Space

    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        assert "does not reach the trials" not in path.read_text(), path.name
    claim = [line for line in (ROOT / "search_spaces" / "methods_compare_small.yaml").read_text().splitlines()
             if "--set" in line and "fixed:" in line]
    assert claim and "wins" in claim[0]
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"experiment": str(write_experiment()), "space": {"train.seed": [0, 1]},
                                     "fixed": {"data.val_max_images": 8}}))
    assert Space(space, {"data.val_max_images": 4}).define_by_run().fixed == {"data.val_max_images": 4}


def test_methods_md_says_which_samkd_version_is_reconstructed():
    """arXiv 2501.07101 has two versions with different titles and methods."""
    text = (ROOT / "docs" / "METHODS.md").read_text()
    section = text[text.index("## SAMKD"):text.index("## AMD")]
    assert "v2" in section and "Spatial-aware Adaptive Masking" in section and "Dual Scale-aware" in section
    assert "reconstruct" in section
    assert "2501.07101v2" in (ROOT / "raykd" / "distill" / "samkd.py").read_text()
    bib = text[text.index("## Citing the methods"):]
    for key in ("mgd", "fgd", "cwd", "pkd", "freekd", "fitnets", "dmkd", "samkd", "amd", "dfmsd"):
        assert re.search(rf"@\w+\{{\w+{key},", bib), key


def test_the_readme_results_are_the_measured_ones():
    """Every interval and GPU time in the README's results table is in docs/results.md, where its
    command, machine and date are."""
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "docs" / "results.md").read_text()
    table = readme[readme.index("## Results"):readme.index("## COCO on 8 GPUs")]
    intervals = re.findall(r"[+−-]\d+\.\d+ \[[+−-]\d+\.\d+, [+−-]\d+\.\d+\]", table)
    times = re.findall(r"\b\d+\.\d+ ms\b|\b\d+\.\d (?=\()", table)
    assert len(intervals) >= 4 and times
    for figure in intervals + [t.strip() for t in times]:
        assert figure.replace(" ms", "") in results, figure


def test_the_shapes_teacher_figure_is_dated():
    """The shapes teacher was quoted at 0.258 mAP as if current; a later run gave 0.341: wherever
    the old figure appears, it says when it was measured and names the later run."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for paragraph in path.read_text().split("\n\n"):
            if "0.258" in paragraph:
                assert "before" in paragraph and "0.341" in paragraph, path.name


def test_every_raykd_command_in_the_docs_parses(monkeypatch):
    """The raykd commands the user docs show (bash blocks of docs/guide.md, configuration.md and
    results.md, the README's other sections) take the flags they are shown with."""
    monkeypatch.chdir(ROOT)
    project = _pyproject()
    checked = 0
    for name in ("README.md", "docs/guide.md", "docs/configuration.md", "docs/results.md"):
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / name).read_text(), flags=re.S):
            for words in commands(block):
                if words[:1] == ["raykd"] or words[:3] == ["python", "-m", "raykd"] or (
                        words[:2] == ["python", "-m"] and words[2].startswith("raykd.")):
                    check_command(words, project)
                    checked += 1
    assert checked >= 25
