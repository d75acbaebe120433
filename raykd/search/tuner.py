"""Building and running the Tune search: OptunaSearch + scheduler + resources + callbacks.

Layout of one search under ``STORAGE/NAME/``: Tune's own experiment state and trial
folders, ``tables/`` (the Parquet trial tables, see ``raykd.results``) and
``optuna.journal`` (the Optuna study, which optuna-dashboard opens).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater, Searcher

from raykd.errors import UserError
from raykd.results import arrow_type_for
from raykd.results.layout import CONFIRM_DIR, TRIAL_PREFIX, SearchFolder
from raykd.results.schema import CONFIRM_PHASE, SEARCH_PHASE
from raykd.search.progress import ProgressCallback
from raykd.search.space import Space
from raykd.search.trainable import run_trial
from raykd.search.tune_state import BackUpState, ResumableOptunaSearch, ShrinkFinishedCheckpoints
from raykd.uri import is_uri

TRAIN_DRIVER_CPU = 0.01  # Ray refuses 0 CPUs for a trial; its TorchTrainer workers hold the real ones


def make_sampler(space: Space) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler named in ``search.sampler``."""
    settings = space.settings.search
    seed = settings.seed
    kind = settings.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "multivariate_tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise UserError("sampler 'cmaes' needs the cmaes extra: pip install 'raykd[cmaes]'", file=space.path,
                        key="search.sampler") from None
    return optuna.samplers.CmaEsSampler(seed=seed)


def param_types(space: Space) -> dict[str, Any]:
    """Arrow type of every searched and fixed key, from the values a trial can receive."""
    types = {key: arrow_type_for(spec.candidates()) for key, spec in space.params.items()}
    types.update({key: arrow_type_for([value]) for key, value in space.settings.fixed.items() if key not in types})
    return types


def confirm_param_types(space: Space) -> dict[str, Any]:
    """:func:`param_types` of the confirmation trials: with ``confirm.set``'s keys and, when it
    seeds teachers, the teacher's seed."""
    from raykd.search.confirm import TEACHER_SEED_KEY, seeds_teachers

    types = param_types(space)
    types.update({key: arrow_type_for([value]) for key, value in space.settings.confirm.set.items()})
    if seeds_teachers(space):
        types[TEACHER_SEED_KEY] = arrow_type_for(space.settings.confirm.teacher_seeds)
    return types


def max_concurrent(space: Space, *, autoscaling: bool = False) -> int:
    """``search.max_concurrent`` capped by what the cluster can run at once.

    ``autoscaling`` (a cluster joined with ``--address``): nodes may still come, so only
    ``search.max_concurrent`` caps it; one trial must fit in what is there now (keep one GPU
    node up on autoscaling clusters), or the search fails at once instead of waiting forever.
    """
    res = space.settings.resources
    resources = ray.cluster_resources()
    per_trial_cpu = res.workers_per_trial * res.cpus_per_worker + TRAIN_DRIVER_CPU * (res.resolved_executor() == "train")
    limit = math.floor(resources.get("CPU", 1) / per_trial_cpu + 1e-9)
    if res.gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus < res.gpus_per_worker:
            raise UserError(f"each worker needs {res.gpus_per_worker} GPU but the cluster has {gpus:g}",
                            file=space.path, key="resources.gpus_per_worker")
        limit = min(limit, math.floor(gpus / (res.workers_per_trial * res.gpus_per_worker) + 1e-9))
    if limit < 1:
        raise UserError(f"one trial needs {per_trial_cpu:g} CPUs but the cluster has {resources.get('CPU', 0):g} "
                        "(a Ray Train trial adds 0.01 for its driver)", file=space.path,
                        key="resources.cpus_per_worker")
    if autoscaling:
        return space.settings.search.max_concurrent
    return max(1, min(space.settings.search.max_concurrent, limit))


def trial_resources(res) -> dict[str, float]:
    """What Tune reserves for one trial: the worker's CPUs and GPUs when it runs inline; only
    :data:`TRAIN_DRIVER_CPU` for a Ray Train trial, whose workers ask for the real resources
    (:func:`raykd.train.worker.scaling_config`)."""
    if res.resolved_executor() == "inline":
        return {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    return {"CPU": TRAIN_DRIVER_CPU}


def make_trainable(space: Space, paths: SearchFolder, teacher_checkpoint: str | None):
    res = space.settings.resources
    executor = res.resolved_executor()
    fn = tune.with_parameters(
        run_trial, base=space.base, teacher_checkpoint=teacher_checkpoint, executor=executor,
        workers=res.workers_per_trial, cpus_per_worker=res.cpus_per_worker, gpus_per_worker=res.gpus_per_worker,
        storage_path=paths.ray_train,
    )
    return tune.with_resources(fn, trial_resources(res))


def trial_dirname(trial) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def build_tuner(space: Space, paths: SearchFolder, teacher_checkpoint: str | None, *, quiet: bool = False,
                extra_callbacks: list | None = None, autoscaling: bool = False):
    """A new :class:`ray.tune.Tuner` for ``space`` writing under ``paths``.

    ``extra_callbacks``: more Tune callbacks (benchmarks use one to time trials).
    """
    spec = space.settings
    metrics, modes = spec.metrics, spec.modes
    single = len(metrics) == 1
    storage = None
    if paths.journal:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(paths.journal).parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(paths.journal))
    searcher = ResumableOptunaSearch(
        space=space.define_by_run(), metric=metrics[0] if single else metrics, mode=modes[0] if single else modes,
        points_to_evaluate=space.points or None, sampler=make_sampler(space), study_name=paths.name,
        storage=storage,
    )
    search_alg = Repeater(searcher, repeat=spec.search.repeats) if spec.search.repeats > 1 else searcher
    scheduler = None
    epochs = space.base_config.train.epochs
    if spec.scheduler.type == "asha" and epochs > spec.scheduler.grace_period:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    callbacks = _callbacks(space, paths, paths.root, SEARCH_PHASE, quiet=quiet, extra=extra_callbacks)
    return tune.Tuner(
        make_trainable(space, paths, teacher_checkpoint),
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler,
            metric=metrics[0] if single else None, mode=modes[0] if single else None,
            num_samples=spec.search.num_samples * spec.search.repeats,
            max_concurrent_trials=max_concurrent(space, autoscaling=autoscaling),
            trial_dirname_creator=trial_dirname,
            reuse_actors=_reuse_actors(space),
        ),
        run_config=_run_config(paths.name, paths.storage, callbacks),
    )


def _callbacks(space: Space, paths: SearchFolder, state_root: str, phase: str, *, quiet: bool,
               extra: list | None) -> list:
    """The Tune callbacks of one phase: tables, progress lines, checkpoint shrinking, state backups."""
    from raykd.results.callback import ParquetResultsCallback

    confirming = phase == CONFIRM_PHASE
    types = confirm_param_types(space) if confirming else param_types(space)
    epochs = space.settings.confirm.set.get("train.epochs", space.base_config.train.epochs) if confirming \
        else space.base_config.train.epochs
    return [
        ParquetResultsCallback(paths.tables, paths.name, types, flush_every_s=5.0, phase=phase,
                               specs=space.params),
        ProgressCallback(space.settings.metrics[0], space.settings.modes[0], epochs=epochs,
                         quiet=quiet),
        ShrinkFinishedCheckpoints(),
        *([BackUpState(state_root)] if not is_uri(paths.storage) else []),
        *(extra or []),
    ]


def _reuse_actors(space: Space) -> bool:
    # Reusing trial actors saves seconds per trial; with TorchTrainer trials it hung under
    # ASHA (docs/architecture.md), so only the inline executor reuses them.
    return space.settings.resources.resolved_executor() == "inline"


def _run_config(name: str, storage: str, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(
        name=name, storage_path=storage, callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=1),
        # Two, not one: the experiment snapshot may still name the previous checkpoint when
        # the driver dies, and resuming from a deleted checkpoint fails the trial.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


class FixedPoints(Searcher):
    """Suggests each of ``points`` (dotted config mappings) once, in order, then finishes.

    Tune's own :class:`~ray.tune.search.BasicVariantGenerator` resolves preset points against
    its param space element by element, so a list value (``distill.pyramid_scales: [1, 2]``)
    fails there unless the space holds a list of the same length; a searcher's suggestions
    are taken as they are. Its state (the next index) is saved with the experiment, so a
    resumed confirmation phase does not suggest a point twice.
    """

    def __init__(self, points: list[dict[str, Any]]):
        super().__init__()
        self.points = [dict(p) for p in points]
        self.next_index = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.next_index]
        self.next_index += 1
        return dict(point)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict[str, Any]:
        return {"points": self.points, "next_index": self.next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.points, self.next_index = state["points"], state["next_index"]

    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle: restoring a search folder runs no code. Values from the tables may be numpy scalars.
        Path(checkpoint_path).write_text(json.dumps(self.get_state(), default=lambda v: v.tolist()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def build_confirm_tuner(space: Space, paths: SearchFolder, teacher_checkpoint: str | None,
                        points: list[dict[str, Any]], *, quiet: bool = False, autoscaling: bool = False,
                        extra_callbacks: list | None = None):
    """A :class:`ray.tune.Tuner` that runs each of ``points`` (dotted config mappings, list
    values as lists, as the search's trials receive them: :class:`~raykd.results.params.ParamSpec`)
    once, at the full budget (no scheduler), as ``phase = confirm`` trials of the same tables;
    its Tune state lives in ``paths.confirm``. A point leaves out a key its method does
    not define (the trainable reads the fixed value or the default)."""
    callbacks = _callbacks(space, paths, paths.confirm, CONFIRM_PHASE, quiet=quiet, extra=extra_callbacks)
    searcher = ConcurrencyLimiter(FixedPoints(points), max_concurrent=max_concurrent(space, autoscaling=autoscaling))
    return tune.Tuner(
        make_trainable(space, paths, teacher_checkpoint),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=len(points),
            trial_dirname_creator=trial_dirname, reuse_actors=_reuse_actors(space),
        ),
        run_config=_run_config(CONFIRM_DIR, paths.root, callbacks),
    )


def restore_tuner(space: Space, paths: SearchFolder, teacher_checkpoint: str | None, *, confirm: bool = False):
    """The interrupted search (or its confirmation phase) at ``paths``; unfinished and errored
    trials continue."""
    root = paths.confirm if confirm else paths.root
    if not tune.Tuner.can_restore(root):
        raise UserError(f"no search state to resume at {root}", key="--resume")
    return tune.Tuner.restore(root, trainable=make_trainable(space, paths, teacher_checkpoint),
                              resume_unfinished=True, resume_errored=True)

