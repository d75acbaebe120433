"""The cluster's node image (experiments/cluster/Dockerfile) installs raykd from pyproject.toml:
no hand-copied dependency list that could drift, extras that exist, and the Ray and Python of
its base image the ones pyproject pins."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "experiments" / "cluster" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def pip_installs(steps: list[tuple[str, str]]) -> list[list[str]]:
    """The arguments (options dropped) of every ``pip install`` in the RUN steps."""
    found = []
    for kind, args in steps:
        if kind != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append([w for w in words[words.index("install") + 1:] if not w.startswith("-")])
    return found


def image_problems(dockerfile: str, pyproject: dict) -> list[str]:
    """What makes the image's installed packages differ from what pyproject.toml declares."""
    steps = instructions(dockerfile)
    project = pyproject["project"]
    copied = {}  # destination -> sources of COPY steps from the build context (the project root)
    for kind, args in steps:
        if kind == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for source in words[:-1]:
                copied[source.rstrip("/")] = words[-1]
    problems = []
    installs = pip_installs(steps)
    if not installs:
        problems.append("no pip install")
    for targets in installs:
        for target in targets:
            folder, _, extras = target.partition("[")
            if folder.rstrip("/") not in {d.rstrip("/") for d in copied.values()} | {"."}:
                problems.append(f"installs {target!r}, not the project copied from the build context")
            for extra in filter(None, extras.rstrip("]").split(",")):
                if extra not in project.get("optional-dependencies", {}):
                    problems.append(f"extra {extra!r} is not in pyproject.toml")
    for needed in ("pyproject.toml", "raykd", project["readme"]):
        if needed not in copied:
            problems.append(f"{needed} is not copied into the image")
    base = next(args for kind, args in steps if kind == "FROM")
    tag = re.match(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)", base)
    if tag is None:
        return problems + [f"base image {base!r} is not rayproject/ray:VERSION-pyXY"]
    ray = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray")
    if tag["ray"] not in ray.specifier:
        problems.append(f"base image has Ray {tag['ray']}, pyproject wants ray{ray.specifier}")
    if f"{tag['py']}.{tag['minor']}" not in SpecifierSet(project["requires-python"]):
        problems.append(f"base image has Python {tag['py']}.{tag['minor']}, pyproject wants {project['requires-python']}")
    return problems


def test_node_image_installs_the_project_as_pyproject_declares_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert image_problems(DOCKERFILE.read_text(), pyproject) == []


def test_a_drifting_image_is_caught():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    good = DOCKERFILE.read_text()
    hand_copied = good.replace('"/tmp/raykd[mlflow,cmaes]"', '"torch==2.15.0" "optuna==5.0.0"')
    assert any("not the project" in p for p in image_problems(hand_copied, pyproject))
    assert any("'comet'" in p for p in image_problems(good.replace("mlflow,cmaes", "comet"), pyproject))
    assert any("Ray 2.59.0" in p for p in image_problems(good.replace("ray:2.60.0", "ray:2.59.0"), pyproject))
    assert any("Python 3.9" in p for p in image_problems(good.replace("-py311-", "-py39-"), pyproject))
    assert any("raykd is not copied" in p for p in image_problems(
        good.replace("COPY --chown=ray:users raykd /tmp/raykd/raykd\n", ""), pyproject))
