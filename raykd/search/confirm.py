"""The confirmation phase: which configurations are re-run on fresh seeds after a search.

The search phase picks its best configurations by a maximum over noisy trials; re-running
them (and the no-distillation baseline) at the full budget on seeds no search trial used
gives unbiased estimates, and differences paired over those seeds.

``confirm.set`` runs the confirmation at other settings than the search (a proxy search,
confirmed at full fidelity); ``confirm.teacher_seeds`` trains the teacher once per seed (under
the confirmation's settings, cached) and runs every configuration with every teacher, so the
verdict also says how much of it is one draw of the teacher (docs/statistics.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.analyze.factors import BASELINE_METHOD, METHOD, TEACHER_SEED
from raykd.analyze.inputs import read_inputs
from raykd.analyze.verdict import phase_of, rank
from raykd.config import SEED_KEY, ExperimentConfig, experiment_from_dict, overridden
from raykd.results.schema import SEARCH_PHASE
from raykd.search.space import Space

TEACHER_SEED_KEY = TEACHER_SEED
TEACHER_CHECKPOINT_KEY = "teacher.checkpoint"


@dataclass(frozen=True)
class ConfirmTeacher:
    """One teacher of the confirmation phase: its seed (None: the experiment's one teacher),
    checkpoint (None: ``teacher.weights`` as they are) and stored metrics."""

    seed: int | None
    checkpoint: str | None
    metrics: dict[str, Any]


def confirm_experiment(space: Space) -> dict[str, Any]:
    """The experiment mapping of the confirmation trials: the search's, with ``confirm.set``."""
    return overridden(space.base, space.settings.confirm.set)


def confirm_config(space: Space) -> ExperimentConfig:
    """:func:`confirm_experiment` validated."""
    return experiment_from_dict(confirm_experiment(space), file=space.path)


def seeds_teachers(space: Space) -> bool:
    """Whether the confirmation trains one teacher per ``confirm.teacher_seeds`` (a teacher it
    trains: a ``teacher.train`` block); a teacher used as it is stays one teacher."""
    confirm = space.settings.confirm
    teacher = space.base_config.teacher
    return bool(confirm and confirm.teacher_seeds) and teacher is not None and teacher.train is not None


def prepare_teachers(space: Space, *, log: Callable[[str], None] = print,
                     progress: bool = True) -> list[ConfirmTeacher]:
    """The teachers of the confirmation trials, trained (once each, cached by
    :func:`raykd.train.teacher.ensure_teacher`) when missing; empty without a teacher block.

    With :func:`seeds_teachers`, one per ``confirm.teacher_seeds`` (``teacher.train.seed``
    set, ``teacher.checkpoint`` left to the cache); else the one teacher of the confirmation's
    experiment (the search's teacher unless ``confirm.set`` changed the data or the teacher).
    """
    from raykd.train.teacher import ensure_teacher, teacher_metrics

    exp = confirm_experiment(space)
    if exp.get("teacher") is None:
        return []
    if not seeds_teachers(space):
        cfg = experiment_from_dict(exp, file=space.path)
        path = ensure_teacher(cfg, log=log, progress=progress)
        return [ConfirmTeacher(None, path, teacher_metrics(path) if path else {})]
    teachers = []
    for seed in space.settings.confirm.teacher_seeds:
        seeded = overridden(exp, {TEACHER_SEED_KEY: seed})
        seeded["teacher"].pop("checkpoint", None)
        cfg = experiment_from_dict(seeded, file=space.path)
        path = str(Path(ensure_teacher(cfg, log=lambda line, s=seed: log(f"[teacher seed {s}] {line}"),
                                       progress=progress)).resolve())
        teachers.append(ConfirmTeacher(seed, path, teacher_metrics(path)))
    return teachers


def _uses_teacher(values: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether a trial with these dotted ``values`` builds the teacher (distils, or inherits its weights)."""
    inherit = values.get("student.inherit", (base.get("student") or {}).get("inherit", False))
    return values.get(METHOD, (base.get("distill") or {}).get("method", BASELINE_METHOD)) != BASELINE_METHOD \
        or bool(inherit)


def confirmation_points(space: Space, root: str, teachers: list[ConfirmTeacher] | None = None) -> list[dict[str, Any]]:
    """The dotted configs of the confirmation trials of the search folder ``root``.

    The ``confirm.top`` best distilled configurations of its search phase (ranked as
    ``raykd.analyze`` ranks them; the top of each value of ``confirm.per`` when given) and,
    with ``confirm.baseline``, its best no-distillation configuration, each once per
    ``confirm.seeds`` and, with seeded ``teachers``, once per (teacher, seed) pair: a
    configuration that does not build the teacher (the baseline) runs once per seed and is
    paired with every teacher's trial of that seed (it would compute the same numbers again).
    Every point carries ``confirm.set``. Empty when no trial has a value yet.

    Seed-major order (every configuration on the first seed, then on the next): the trials of
    a seed start together, so an interrupted or slow phase has whole pairs rather than one
    configuration's seeds, and trials of unequal cost (a teacher or none) share the workers.
    """
    confirm = space.settings.confirm
    assert confirm is not None
    inputs = read_inputs([root])
    trials = inputs.trials[phase_of(inputs.trials) == SEARCH_PHASE]
    ranking = rank(trials, inputs.epochs, inputs.params, space.settings.metrics[0])
    if ranking is None:
        return []
    configs = ranking.configs
    distilled = [ranking.values(i) for i in configs.order if ranking.values(i).get(METHOD) != BASELINE_METHOD]
    chosen: list[dict[str, Any]] = []
    for values in distilled:  # best first
        group = [c for c in chosen if confirm.per is None or c.get(confirm.per) == values.get(confirm.per)]
        if len(group) < confirm.top:
            chosen.append(values)
    if confirm.baseline:
        chosen.append(ranking.values(configs.baseline) if configs.baseline is not None else {METHOD: BASELINE_METHOD})
    searched = set(space.params)
    seeded = [t for t in teachers or [] if t.seed is not None]
    points = []
    for seed in confirm.seeds:
        for values in chosen:
            point = {**{k: v for k, v in values.items() if k in searched or k == METHOD}, **confirm.set, SEED_KEY: seed}
            if not seeded or not _uses_teacher(point, space.base):
                points.append(point)
                continue
            points += [{**point, TEACHER_SEED_KEY: t.seed, TEACHER_CHECKPOINT_KEY: t.checkpoint} for t in seeded]
    return points
