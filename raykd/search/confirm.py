"""The confirmation phase: which configurations are re-run on fresh seeds after a search.

The search phase picks its best configurations by a maximum over noisy trials; re-running
them (and the no-distillation baseline) at the full budget on seeds no search trial used
gives unbiased estimates, and differences paired over those seeds.
"""

from __future__ import annotations

from typing import Any

from raykd.analyze.factors import BASELINE_METHOD, METHOD
from raykd.analyze.inputs import read_inputs
from raykd.analyze.verdict import phase_of, rank
from raykd.config import SEED_KEY
from raykd.results.schema import SEARCH_PHASE
from raykd.search.space import Space


def confirmation_points(space: Space, root: str) -> list[dict[str, Any]]:
    """The dotted configs of the confirmation trials of the search folder ``root``.

    The ``confirm.top`` best distilled configurations of its search phase (ranked as
    ``raykd.analyze`` ranks them; the top of each value of ``confirm.per`` when given) and,
    with ``confirm.baseline``, its best no-distillation configuration, each once per
    ``confirm.seeds``. Empty when no trial has a value yet.

    Seed-major order (every configuration on the first seed, then on the next): the trials of
    a seed start together, so an interrupted or slow phase has whole pairs rather than one
    configuration's seeds, and trials of unequal cost (a teacher or none) share the workers.
    """
    confirm = space.spec.confirm
    assert confirm is not None
    inputs = read_inputs([root])
    trials = inputs.trials[phase_of(inputs.trials) == SEARCH_PHASE]
    ranking = rank(trials, inputs.epochs, inputs.params, space.spec.metrics[0])
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
    return [{**{k: v for k, v in values.items() if k in searched or k == METHOD}, SEED_KEY: seed}
            for seed in confirm.seeds for values in chosen]
