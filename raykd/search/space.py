"""Search-space files: the typed spec, its full validation, and the Optuna define-by-run space.

A space file points to an experiment and says what varies (dotted keys into it). Every key
and every value a trial could receive is validated against the experiment schema before
anything starts, so a typo fails in a second instead of in trial 17.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raykd.config import (
    BASE_KEY,
    MASK_ARCHS,
    SEED_KEY,
    experiment_from_dict,
    get_dotted,
    load_experiment_dict,
    load_with_bases,
    load_yaml,
    set_dotted,
    touches,
    validation_message,
)
from raykd.distill.methods import REGISTRY
from raykd.errors import UserError
from raykd.metric_names import METRICS
from raykd.results.params import ParamSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchSettings(_Strict):
    sampler: Literal["tpe", "random", "multivariate_tpe", "nsga2", "gp", "cmaes"] = "tpe"
    num_samples: int = Field(12, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    repeats: int = Field(1, ge=1, description="evaluate every sampled configuration on this many seeds")


class SchedulerSettings(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(3, gt=1)


class ResourceSettings(_Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    executor: Literal["auto", "train", "inline"] = "auto"

    @model_validator(mode="after")
    def _fractional_gpus(self) -> ResourceSettings:
        if self.workers_per_trial > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError("fractional gpus_per_worker only for single-worker trials (NCCL refuses two ranks on one GPU)")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g}: Ray gives a worker a fraction of one GPU "
                             "or whole GPUs, not both")
        if self.workers_per_trial > 1 and self.executor == "inline":
            raise ValueError("executor 'inline' runs one worker; use 'train' or 'auto' for workers_per_trial > 1")
        return self

    def resolved_executor(self) -> str:
        """``auto``: inline for single-worker trials (about 1 s of overhead against 16-19 s for a
        TorchTrainer trial, docs/architecture.md), Ray Train for DDP trials."""
        if self.executor != "auto":
            return self.executor
        return "inline" if self.workers_per_trial == 1 else "train"


class ParamEntry(_Strict):
    """One searched key as the space file writes it: exactly one of choice / uniform / loguniform /
    int / value (:meth:`describe` gives the :class:`ParamSpec` everything after the file uses)."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[int, int] | None = None
    value: Any = None
    step: float | None = Field(None, gt=0, description="grid step for uniform / int")
    log: bool = Field(False, description="log scale for int")
    when: dict[str, Any] | None = Field(None, description="only defined when these keys have these values")

    @model_validator(mode="after")
    def _one_kind(self) -> ParamEntry:
        kinds = [k for k in ("choice", "uniform", "loguniform", "int") if getattr(self, k) is not None]
        if "value" in self.model_fields_set:
            kinds.append("value")
        if len(kinds) != 1:
            raise ValueError("expected exactly one of choice, uniform, loguniform, int, value")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one option")
        for name in ("uniform", "loguniform", "int"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name} needs [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs a positive lower bound")
        if self.step is not None and self.uniform is None and self.int is None:
            raise ValueError("step applies to uniform or int ranges")
        return self

    @property
    def kind(self) -> str:
        for name in ("choice", "uniform", "loguniform", "int"):
            if getattr(self, name) is not None:
                return name
        return "value"

    def describe(self, name: str) -> ParamSpec:
        """The typed description of key ``name`` that Optuna, the writer and the analysis share."""
        when = tuple((key, tuple(_frozen(o) for o in (wanted if isinstance(wanted, list) else [wanted])))
                     for key, wanted in (self.when or {}).items())
        if self.kind == "choice":
            return ParamSpec(name, "choice", choices=tuple(_frozen(c) for c in self.choice), when=when)
        if self.kind == "value":
            return ParamSpec(name, "value", value=self.value, when=when)
        low, high = getattr(self, self.kind)
        return ParamSpec(name, self.kind, low=low, high=high, step=self.step, log=self.log, when=when)


def _flat(mapping: dict, prefix: str) -> dict:
    """Nested mappings as dotted keys (``{a: {b: 1}}`` -> ``{"a.b": 1}``)."""
    out: dict = {}
    for key, item in mapping.items():
        name = f"{prefix}{key}"
        out.update(_flat(item, f"{name}.") if isinstance(item, dict) and item else {name: item})
    return out


class ConfirmSettings(_Strict):
    """After the search: the ``top`` configurations (and the no-distillation baseline) re-run at
    the full budget on fresh ``seeds``, without early stopping (``phase = confirm``)."""

    top: int = Field(2, ge=1, description="configurations to confirm, best first by the search metric")
    seeds: list[int] = Field(min_length=2, description="fresh seeds, each run by every confirmed configuration "
                                                       "(two or more: the differences are paired over them)")
    baseline: bool = Field(True, description="also re-run the no-distillation baseline on the same seeds")
    per: str | None = Field(None, description="a searched key: confirm the top configurations of each of its "
                                              "values (e.g. distill.method: the best of every method)")
    teacher_seeds: list[int] | None = Field(
        None, min_length=1, description="train the teacher once per seed (teacher.train.seed, cached) and run every "
                                        "confirmed configuration with every teacher on every seed")
    set: dict[str, Any] = Field(default_factory=dict, description="experiment keys the confirmation trials run with "
                                                                  "(and the search's trials not): search on a proxy, "
                                                                  "confirm at full fidelity")
    rank_check: bool = Field(False, description="report how the search's ranking of the confirmed configurations "
                                                "held at confirmation (Spearman, Kendall; needs top >= 3)")

    @field_validator("seeds", "teacher_seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"expected distinct seeds, got {seeds}")
        return seeds

    @field_validator("set", mode="before")
    @classmethod
    def _dotted_set(cls, value: Any) -> Any:
        return _flat(value, "") if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _rank_needs_three(self) -> ConfirmSettings:
        if self.rank_check and self.top < 3:
            raise ValueError(f"rank_check needs top >= 3 configurations to rank, got top: {self.top}")
        return self


class SpaceSettings(_Strict):
    """A search-space file (see ``search_spaces/``, docs/configuration.md and docs/architecture.md)."""

    experiment: str
    name: str | None = None
    metric: str | list[str] = "bbox_mAP"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    space: dict[str, ParamEntry] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any] | str] = Field(default_factory=list)
    confirm: ConfirmSettings | None = None
    closing_note: str | None = Field(None, description="lines the search prints after its verdict (what the "
                                                       "verdict of this space can and cannot show)")

    @field_validator("fixed", mode="before")
    @classmethod
    def _dotted(cls, value: Any) -> Any:
        # `data.synthetic: {out_dir: d}` means `data.synthetic.out_dir: d`: one column per key
        return _flat(value, "") if isinstance(value, dict) else value

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `key: [a, b]` is shorthand for `key: {choice: [a, b]}`, a scalar for `{value: x}`
        if isinstance(value, dict):
            return {k: ({"choice": v} if isinstance(v, list) else v if isinstance(v, dict) else {"value": v})
                    for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _shapes(self) -> SpaceSettings:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        if len(metrics) != len(modes):
            raise ValueError(f"metric and mode need the same length, got {len(metrics)} and {len(modes)}")
        if len(metrics) > 1 and self.search.sampler not in ("nsga2", "random", "tpe"):
            raise ValueError(f"sampler {self.search.sampler!r} is single-objective; use nsga2 or tpe for several metrics")
        if len(metrics) > 1 and self.scheduler.type == "asha":
            raise ValueError("asha stops trials on one metric; use scheduler.type: none for several metrics")
        if self.confirm is not None and (len(metrics) > 1 or modes[0] != "max"):
            raise ValueError("confirm ranks configurations by one metric to maximise (mode: max)")
        return self

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]


# Named points: the no-distillation baseline and every method's defaults (its registry entry's point).
NAMED_POINTS: dict[str, dict[str, Any]] = {
    "baseline": {"distill.method": "none"},
    **{f"{name}_defaults": {"distill.method": name, **{f"distill.{k}": v for k, v in method.point.items()}}
       for name, method in REGISTRY.items() if method.build is not None},
}


def _resolve_experiment(raw: dict[str, Any], folder: Path) -> None:
    """A base space file's relative ``experiment`` made absolute against its own ``folder``."""
    value = raw.get("experiment")
    if isinstance(value, str) and not Path(value).expanduser().is_absolute():
        raw["experiment"] = str((folder / value).resolve())


def _load_error(err: ValidationError, file: Path) -> UserError:
    key, msg = validation_message(err)
    return UserError(msg, file=file, key=key)


class Space:
    """A validated space file with its experiment: what the search layer works from."""

    def __init__(self, path: str | Path, overrides: dict[str, Any] | None = None,
                 num_samples: int | None = None):
        self.path = Path(path)
        merged = load_with_bases(self.path, _resolve_experiment)
        inherits = BASE_KEY in load_yaml(self.path)
        raw = copy.deepcopy(merged)
        for key, value in (overrides or {}).items():
            if key.split(".")[0] in SpaceSettings.model_fields:
                set_dotted(raw, key, value)
        try:
            self.settings = SpaceSettings.model_validate(raw)
        except ValidationError as err:
            raise _load_error(err, self.path) from None
        if num_samples is not None:
            if num_samples < 1:
                raise UserError(f"expected a positive number, got {num_samples}", key="--num-samples")
            self.settings.search.num_samples = num_samples
        exp_path = Path(self.settings.experiment)
        if not exp_path.is_absolute():
            exp_path = self.path.resolve().parent / exp_path
        if not exp_path.is_file():
            raise UserError(f"experiment file not found: {exp_path}", file=self.path, key="experiment")
        self.experiment_path = exp_path
        exp_overrides = {k: v for k, v in (overrides or {}).items() if k.split(".")[0] not in SpaceSettings.model_fields}
        # --set wins over the file's fixed value (the trials receive fixed values as constants)
        self.settings.fixed.update({k: v for k, v in exp_overrides.items() if k in self.settings.fixed})
        self.base = load_experiment_dict(exp_path, {**self.settings.fixed, **exp_overrides})
        try:
            self.base_config = experiment_from_dict(copy.deepcopy(self.base), file=exp_path)
        except UserError as err:
            for source, keys in (("fixed", self.settings.fixed), ("--set", exp_overrides)):
                if touches(err.key, keys):
                    file = self.path if source == "fixed" else "--set"
                    key = f"fixed.{err.key}" if source == "fixed" else err.key
                    raise UserError(err.message, file=file, key=key) from None
            raise
        # what the runs table keeps of the space: the file, or with bases the merged mapping
        self.text = (f"# {self.path.name} merged with its {BASE_KEY} files\n" + yaml.safe_dump(merged, sort_keys=False)
                     if inherits else self.path.read_text())
        self.params: dict[str, ParamSpec] = {key: entry.describe(key) for key, entry in self.settings.space.items()}
        """Every searched key's description, in sampling order (a ``when`` key before the keys it conditions)."""
        self._check_keys()
        order = self._dependency_order()
        self.settings.space = {key: self.settings.space[key] for key in order}
        self.params = {key: self.params[key] for key in order}
        self.points = [self._point(p, i) for i, p in enumerate(self.settings.points_to_evaluate)]
        self._check_confirm()

    @property
    def name(self) -> str:
        return self.settings.name or self.path.stem

    def search_seeds(self) -> set[int]:
        """Every ``train.seed`` a search-phase trial can run with (repeats shift it by 0..repeats-1)."""
        seed = self.params.get(SEED_KEY)
        starts = ([int(v) for v in seed.candidates()] if seed is not None and seed.kind in ("choice", "value")
                  else [int(self.base_config.train.seed)])
        return {s + i for s in starts for i in range(self.settings.search.repeats)}

    # ---------------------------------------------------------------- validation

    def _check_confirm(self) -> None:
        """``confirm.set`` keys the experiment takes, not searched ones; a teacher to seed."""
        confirm = self.settings.confirm
        if confirm is None:
            return
        for key, value in confirm.set.items():
            if key in self.params or key == SEED_KEY:
                raise UserError("expected a key the search does not sample (the confirmed configuration keeps "
                                "its searched values; the seeds are confirm.seeds)", file=self.path,
                                key=f"confirm.set.{key}")
            self._check_value(key, value, f"confirm.set.{key}")
        if confirm.teacher_seeds and self.base_config.teacher is None:
            raise UserError("expected a teacher block in the experiment (there is no teacher to seed)",
                            file=self.path, key="confirm.teacher_seeds")
        self._check_confirm_seeds()

    def _check_confirm_seeds(self) -> None:
        confirm = self.settings.confirm
        seed = self.params.get(SEED_KEY)
        if seed is not None and seed.kind not in ("choice", "value"):
            return  # a searched seed range: freshness cannot be listed, the user chose the seeds
        if confirm.per is not None and confirm.per not in self.params:
            raise UserError(f"expected a searched key, got {confirm.per!r} (searched: {', '.join(self.params)})",
                            file=self.path, key="confirm.per")
        used = sorted(self.search_seeds() & set(confirm.seeds))
        if used:
            raise UserError(f"expected fresh seeds, not ones the search phase runs: {used}", file=self.path,
                            key="confirm.seeds")

    def _check_value(self, key: str, value: Any, where: str) -> None:
        trial = copy.deepcopy(self.base)
        if key.startswith("train.output_dir") or key == "cache_dir":
            raise UserError("cannot be searched", file=self.path, key=where)
        set_dotted(trial, key, value)
        try:
            experiment_from_dict(trial, file=self.path)
        except UserError as err:
            if err.key == key and err.message == "unknown key":
                raise UserError(f"unknown key: the experiment has no {key}", file=self.path, key=where) from None
            inner = f" for {err.key}" if err.key and err.key != "(top level)" else ""
            raise UserError(f"value {value!r} is not valid{inner}: {err.message}", file=self.path,
                            key=where) from None

    def _check_keys(self) -> None:
        for key, param in self.params.items():
            for i, value in enumerate(param.candidates()):
                if param.kind == "choice" and not isinstance(value, (str, int, float, bool, list, type(None))):
                    raise UserError(f"choice options must be scalars or lists, got {value!r}", file=self.path,
                                    key=f"space.{key}.choice[{i}]")
                self._check_value(key, value, f"space.{key}")
            for cond_key, cond_value in (self.settings.space[key].when or {}).items():
                if cond_key not in self.params:
                    raise UserError(f"condition on {cond_key!r}, which is not a searched key", file=self.path,
                                    key=f"space.{key}.when")
                allowed = self.params[cond_key].candidates()
                wanted = cond_value if isinstance(cond_value, list) and not isinstance(allowed[0], list) else [cond_value]
                if self.params[cond_key].kind in ("choice", "value"):
                    for v in wanted:
                        if v not in allowed:
                            raise UserError(f"{cond_key} never takes the value {v!r} (options: {allowed})",
                                            file=self.path, key=f"space.{key}.when")
        metrics = set(self.settings.metrics)
        allowed_metrics = {*METRICS, "step_time", "epoch_time", "time_total_s", "loss_total", "loss_det", "loss_kd"}
        for metric in metrics - allowed_metrics:
            raise UserError(f"unknown metric {metric!r}; expected one of {sorted(allowed_metrics)}",
                            file=self.path, key="metric")

    def _dependency_order(self) -> list[str]:
        """Keys ordered so that every ``when`` key is sampled before the keys it conditions."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(key: str) -> None:
            if key in order:
                return
            if key in visiting:
                raise UserError(f"conditions form a cycle through {key!r}", file=self.path, key=f"space.{key}.when")
            visiting.add(key)
            for dep in self.settings.space[key].when or {}:
                visit(dep)
            visiting.discard(key)
            order.append(key)

        for key in self.params:
            visit(key)
        return order

    def _point(self, point: dict[str, Any] | str, index: int) -> dict[str, Any]:
        """A point to evaluate as Optuna enqueues it (list choices encoded, :class:`ParamSpec`)."""
        where = f"points_to_evaluate[{index}]"
        if isinstance(point, str):
            if point not in NAMED_POINTS:
                raise UserError(f"unknown named point {point!r}; expected one of {sorted(NAMED_POINTS)}",
                                file=self.path, key=where)
            point = {k: v for k, v in NAMED_POINTS[point].items() if k in self.params}
        out = {}
        for key, value in point.items():
            if key not in self.params:
                raise UserError(f"{key!r} is not a searched key", file=self.path, key=where)
            self._check_value(key, value, f"{where}.{key}")
            out[key] = value
        # Fill unset active keys with the experiment's own value, or the first option.
        for key, spec in self.params.items():
            if key in out or spec.kind == "value" or not spec.active(out):
                continue
            current = get_dotted(self.base, key)
            if spec.kind == "choice":
                out[key] = current if _frozen(current) in spec.choices else spec.decode(spec.encode(spec.choices[0]))
            else:
                low, high = spec.low, spec.high
                fallback = math.sqrt(low * high) if spec.kind == "loguniform" else (low + high) / 2
                value = current if isinstance(current, (int, float)) and low <= current <= high else fallback
                out[key] = int(round(value)) if spec.kind == "int" else float(value)
        return {k: ParamSpec.encode(out[k]) if self.params[k].kind == "choice" else out[k]
                for k in self.params if k in out}

    def trains_masks(self) -> bool:
        """Whether some trial trains a Mask R-CNN (so the data needs instance masks): the
        experiment does (:meth:`ExperimentConfig.trains_masks`) or ``student.arch`` is searched
        over a mask head family."""
        spec = self.params.get("student.arch")
        searched = spec is not None and spec.kind == "choice" and any(c in MASK_ARCHS for c in spec.choices)
        return self.base_config.trains_masks() or searched

    def define_by_run(self) -> DefineByRun:
        return DefineByRun(list(self.params.values()), self.settings.fixed)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


class DefineByRun:
    """Picklable Optuna define-by-run space (OptunaSearch pickles it when it checkpoints).

    Keys are sampled in dependency order (:meth:`ParamSpec.suggest`); a key whose ``when``
    does not hold is not sampled, so it stays absent from the trial's config (null in the
    tables). ``value:`` keys, the space's ``fixed`` keys and list choices (decoded, as lists)
    are returned as constants: Ray's OptunaSearch lays them over what Optuna recorded, so
    Tune's config, the trial's experiment and the tables see each value in its own type.
    """

    def __init__(self, specs: list[ParamSpec], fixed: dict[str, Any] | None = None):
        self.specs = list(specs)  # the pickled name: searches saved since the specs exist resume with it
        self.fixed = dict(fixed or {})

    def __setstate__(self, state: dict) -> None:
        # Pickled before the specs existed (a search resumed across the upgrade): key -> ParamEntry dump.
        if isinstance(state.get("params"), dict):
            state = {"specs": [ParamEntry.model_validate(p).describe(k) for k, p in state.pop("params").items()], **state}
        self.__dict__.update(state)

    def __call__(self, trial) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = dict(self.fixed)
        for spec in self.specs:
            if not spec.active(values):
                continue
            values[spec.name] = spec.suggest(trial)
            if spec.kind == "value" or isinstance(values[spec.name], list):
                constants[spec.name] = values[spec.name]
        return constants or None
