"""The typed description of a searched parameter, built once from the space file.

One :class:`ParamSpec` per searched key (``distill.mask_ratio``): its distribution
(``uniform`` / ``loguniform`` / ``int`` / ``choice``, or a constant ``value``), bounds or
choices, log flag and ``when`` condition. The search builds them from its space
(:attr:`raykd.search.space.Space.params`), Optuna samples from them
(:meth:`ParamSpec.suggest`), the writer stores them in the trials schema metadata
(``raykd.param_specs``, :func:`dumps`) and the analysis reads the real distributions back
(:func:`loads`) instead of inferring them from the values seen.

Optuna's categoricals hold scalars only, so a list-valued choice (``[1, 2, 4]``) is encoded
as ``"1,2,4"`` for Optuna and decoded back here (:meth:`ParamSpec.encode` /
:meth:`ParamSpec.decode`), the one place that knows; everything after the sampler (Tune's
config, the trial's experiment, the tables) sees the list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("uniform", "loguniform", "int", "choice", "value")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    value: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "loguniform":
            object.__setattr__(self, "log", True)

    # --- the values a trial can receive ---------------------------------------------------

    @property
    def numeric(self) -> bool:
        return self.kind in ("uniform", "loguniform", "int")

    def candidates(self) -> list[Any]:
        """Values that cover what a trial can receive (for validation and column types)."""
        if self.kind == "choice":
            return [_thawed(choice) for choice in self.choices]
        if self.kind == "value":
            return [self.value]
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether ``when`` holds for the (decoded) values sampled so far."""
        return all(_frozen(values.get(key)) in options for key, options in self.when)

    # --- Optuna ---------------------------------------------------------------------------

    @staticmethod
    def encode(value: Any) -> Any:
        """A choice as Optuna stores it: lists become ``"1,2,4"``, scalars stay."""
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return value

    def decode(self, value: Any) -> Any:
        """The choice whose encoding is ``value`` (itself for scalars)."""
        for choice in self.choices or ():
            if self.encode(choice) == value:
                return list(choice) if isinstance(choice, (list, tuple)) else choice
        return value

    def suggest(self, trial) -> Any:
        """Sample this parameter on an Optuna trial; list choices come back as lists."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.name, [self.encode(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind in ("uniform", "loguniform"):
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return self.value

    # --- storage --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["choices"] = None if self.choices is None else [_listed(c) for c in self.choices]
        out["when"] = {key: [_listed(o) for o in options] for key, options in self.when}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        data = dict(data)
        choices = data.get("choices")
        data["choices"] = None if choices is None else tuple(_frozen(c) for c in choices)
        data["when"] = tuple((key, tuple(_frozen(o) for o in options))
                             for key, options in (data.get("when") or {}).items())
        return cls(**data)


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, (list, tuple)) else value


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def dumps(specs: Mapping[str, ParamSpec]) -> bytes:
    """``specs`` as stored in the trials schema metadata (JSON, by name)."""
    return json.dumps({name: spec.to_dict() for name, spec in specs.items()}).encode()


def loads(raw: bytes | str | None) -> dict[str, ParamSpec]:
    """The specs :func:`dumps` stored (empty for tables written before they were stored)."""
    if not raw:
        return {}
    return {name: ParamSpec.from_dict(data) for name, data in json.loads(raw).items()}


def _thawed(value: Any) -> Any:
    """A frozen choice as the space file wrote it: tuples back to lists."""
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value
