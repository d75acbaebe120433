"""``python -m raykd.config_command show FILE`` and ``schema``: an experiment or space file as a
run sees it (``_base_`` files merged, ``--set`` applied, defaults filled), and the JSON Schemas of
both kinds of file for editors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from raykd.config import BASE_KEY, ExperimentConfig, load_experiment, load_with_bases, parse_overrides
from raykd.console import add_verbosity_args
from raykd.errors import ArgumentParser, UserError, run_cli

PROG = "python -m raykd.config_command"
SCHEMA_FILES = {"experiment": "raykd-experiment.schema.json", "space": "raykd-space.schema.json"}
"""What ``schema`` writes: one JSON Schema (draft 2020-12) per kind of file."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Experiment and search-space files as raykd reads them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser(
        "show", help="print the resolved configuration of an experiment or space file",
        description="Print FILE as a run uses it: its _base_ files merged, --set applied, relative paths made "
                    "absolute and every default filled in (an experiment: what a run writes to "
                    "OUTPUT/config.yaml). A space file prints the space, then its experiment with the space's "
                    "fixed values and --set applied. Nothing is run or written.")
    show.add_argument("file", metavar="FILE", help="experiment (experiments/) or search-space (search_spaces/) YAML")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted key, as on raykd train / raykd search (repeatable)")
    schema = commands.add_parser(
        "schema", help="write the JSON Schemas of experiment and space files",
        description=f"Write {SCHEMA_FILES['experiment']} and {SCHEMA_FILES['space']} (JSON Schema 2020-12) for "
                    "editors: e.g. '# yaml-language-server: $schema=raykd-experiment.schema.json' as a YAML "
                    "file's first line gives completion and checks in VS Code's YAML extension.")
    schema.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder to write (default: .)")
    for sub in commands.choices.values():
        add_verbosity_args(sub)
    return parser


def is_space(raw: dict[str, Any]) -> bool:
    """A space file names its experiment; an experiment file never has that key."""
    return "experiment" in raw


def show(path: str, overrides: dict[str, Any]) -> str:
    """The resolved YAML of the experiment or space file at ``path``."""
    if not is_space(load_with_bases(path)):
        cfg = load_experiment(path, overrides)
        return f"# {path}: resolved\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    from raykd.search.space import Space

    space = Space(path, overrides)
    spec = space.settings.model_dump(mode="json", exclude_none=True)
    spec["experiment"] = str(space.experiment_path.resolve())
    return (f"# {path}: resolved\n" + yaml.safe_dump(spec, sort_keys=False)
            + f"---\n# {space.experiment_path}: resolved, with the space's fixed values and --set\n"
            + yaml.safe_dump(space.base_config.model_dump(mode="json"), sort_keys=False))


def schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each kind of file, ``_base_`` and the space's shorthands allowed. No key
    is required: a file inheriting from others may hold any part (``raykd config show`` and every
    command check the merged whole)."""
    from raykd.search.space import SpaceSettings

    base = {"description": "file(s) this one inherits from, relative to it; merged key by key, this file winning",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    out = {}
    for kind, model in (("experiment", ExperimentConfig), ("space", SpaceSettings)):
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["properties"].pop("source", None)  # set by the loader, not a key of the file
        schema["properties"] = {BASE_KEY: base, **schema["properties"]}
        if kind == "space":  # `key: [a, b]` is a choice, a scalar a constant (SpaceSettings._shorthand)
            param = schema["properties"]["space"]["additionalProperties"]
            schema["properties"]["space"]["additionalProperties"] = {
                "anyOf": [param, {"type": "array"}, {"type": ["string", "number", "boolean", "null"]}]}
        out[kind] = _optional(schema)
    return out


def _optional(node: Any) -> Any:
    """``node`` without any ``required`` list, at every depth."""
    if isinstance(node, dict):
        return {key: _optional(value) for key, value in node.items() if key != "required"}
    return [_optional(item) for item in node] if isinstance(node, list) else node


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "show":
        print(show(args.file, parse_overrides(args.overrides)), end="")
        return 0
    written = {args.out / SCHEMA_FILES[kind]: json.dumps(schema, indent=1) + "\n" for kind, schema in schemas().items()}
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for path, text in written.items():
            path.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write the schemas: {err.strerror}", file=args.out, key="--out") from None
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
