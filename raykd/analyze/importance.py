"""Parameter importances with Optuna's fANOVA and PED-ANOVA on trials imported from the table.

Scored trials become ``optuna.trial.create_trial(params=..., distributions=..., value=...)``
trials of an in-memory study (maximised). fANOVA only sees parameters defined in every
trial, so each *scope* is evaluated on its own: ``all trials`` for the parameters defined
everywhere, and for the conditional parameters the sub-study of the trials where they are
defined (e.g. ``distill.beta`` among SAMKD trials), together with the other parameters
that vary there. Lists (pyramid scales), strings and bools are categorical (lists as
strings); numbers are float or int ranges over the values seen, on a log scale when they
span a factor of :data:`~raykd.analyze.factors.LOG_SPAN`. Importances are normalised to sum
to 1 within a scope.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raykd.analyze.factors import LOG_SPAN, display, is_null

MIN_TRIALS = 6
"""Fewer scored trials than this in a scope: no importances for it."""

ALL = "all trials"


@dataclass
class Importances:
    """One row per (scope, parameter): ``fanova`` and ``ped_anova`` importances, ``n`` trials."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _distribution(values: list):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if any(isinstance(v, (str, bool, np.bool_, list, tuple, np.ndarray)) for v in values):
        return CategoricalDistribution(sorted({display(v) for v in values})), display
    numbers = np.asarray(values, dtype=float)
    low, high = float(numbers.min()), float(numbers.max())
    log = low > 0 and high / low >= LOG_SPAN
    if all(isinstance(v, (int, np.integer)) for v in values):
        return IntDistribution(int(low), int(high), log=log), int
    return FloatDistribution(low, high, log=log), float


def _study(frame: pd.DataFrame, names: Sequence[str]):
    import optuna

    distributions, casts = {}, {}
    for name in names:
        distributions[name], casts[name] = _distribution(frame[name].tolist())
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(params={n: casts[n](row[n]) for n in names}, distributions=distributions,
                                  value=float(row["value"]))
        for _, row in frame.iterrows()
    ])
    return study


@dataclass
class _Scope:
    label: str
    rows: pd.Series  # bool mask over the scored trials
    params: list[str]  # parameters defined in every trial of the scope


def _scopes(frame: pd.DataFrame, names: Sequence[str], conditions: dict[str, str]) -> list[_Scope]:
    """``all trials`` with the parameters defined everywhere, then one sub-study per set of
    trials where some conditional parameters are defined."""
    defined = {n: ~frame[n].map(is_null) for n in names}
    scopes = [_Scope(ALL, pd.Series(True, index=frame.index), [n for n in names if defined[n].all()])]
    groups: dict[tuple, list[str]] = {}
    for n in names:
        if defined[n].any() and not defined[n].all():
            groups.setdefault(tuple(defined[n]), []).append(n)
    for mask, owners in groups.items():
        rows = pd.Series(mask, index=frame.index)
        label = next((conditions[n] for n in owners if n in conditions), f"where {', '.join(owners)} defined")
        scopes.append(_Scope(label, rows, [n for n in names if defined[n][rows].all()]))
    return scopes


def _varying(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    return sorted(n for n in names if frame[n].map(display).nunique() > 1)


def importances(frame: pd.DataFrame, names: Sequence[str], *, conditions: dict[str, str] | None = None,
                seed: int = 0) -> Importances:
    """fANOVA and PED-ANOVA importances of the parameters ``names`` for ``frame["value"]``.

    ``conditions``: a conditional parameter's condition text (``distill.method ∈ {samkd}``),
    used to label its scope. Scopes with fewer than :data:`MIN_TRIALS` trials or no varying
    parameter are skipped with a note.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    rows, notes = [], []
    for scope in _scopes(frame, names, conditions or {}):
        part, label = frame[scope.rows], scope.label
        params = _varying(part, scope.params)  # sorted: Optuna 5.0.0 misnames unsorted params (docs/architecture.md)
        if not params:
            continue
        if len(part) < MIN_TRIALS:
            notes.append(f"{label}: {len(part)} trials, fewer than {MIN_TRIALS}; no importances")
            continue
        # PED-ANOVA is stable with about five trials above its quantile (Optuna's docs).
        quantile = min(0.5, max(0.1, 5 / len(part)))
        values = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(logging.ERROR)
            try:
                study = _study(part, params)
                values["ped_anova"] = get_param_importances(
                    study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile), params=params)
                values["fanova"] = get_param_importances(
                    study, evaluator=FanovaImportanceEvaluator(seed=seed), params=params)
            finally:
                optuna.logging.set_verbosity(previous)
        for name in params:
            rows.append({"scope": label, "parameter": name, "n": len(part),
                         "fanova": float(values["fanova"][name]),
                         "ped_anova": float(values["ped_anova"][name])})
    table = pd.DataFrame(rows, columns=["scope", "parameter", "n", "fanova", "ped_anova"])
    return Importances(table, list(dict.fromkeys(notes)))
