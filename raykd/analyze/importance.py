"""Parameter importances with Optuna's fANOVA and PED-ANOVA on trials imported from the table.

Scored trials become ``optuna.trial.create_trial(params=..., distributions=..., value=...)``
trials of an in-memory study (maximised). fANOVA only sees parameters defined in every
trial, so each *scope* is evaluated on its own: ``all trials`` for the parameters defined
everywhere, and for the conditional parameters the sub-study of the trials where they are
defined (e.g. ``distill.beta`` among SAMKD trials), together with the other parameters
that vary there. Lists (pyramid scales), strings and bools are categorical (lists as
strings); numbers are the searched float or int distributions stored with the table
(:mod:`raykd.results.params`), or for tables without them ranges over the values seen, on
the scale :func:`~raykd.analyze.factors.log_scale` infers. Importances are normalised to sum
to 1 within a scope.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raykd.analyze.factors import display, is_null, log_scale
from raykd.results import ParamSpec

MIN_TRIALS = 6
"""Fewer scored trials than this in a scope: no importances for it."""

ALL = "all trials"


@dataclass
class Importances:
    """One row per (scope, parameter): ``fanova`` and ``ped_anova`` importances, ``n`` trials."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _distribution(values: list, spec: ParamSpec | None = None):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if any(isinstance(v, (str, bool, np.bool_, list, tuple, np.ndarray)) for v in values):
        return CategoricalDistribution(sorted({display(v) for v in values})), display
    numbers = np.asarray(values, dtype=float)
    low, high = float(numbers.min()), float(numbers.max())
    if spec is not None and spec.numeric:  # the searched range (widened if a value lies outside)
        low, high = min(low, spec.low), max(high, spec.high)
        if spec.kind == "int":
            return IntDistribution(int(low), int(high), log=spec.log), int
        return FloatDistribution(low, high, log=spec.log), float
    log = log_scale(None, low, high)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return IntDistribution(int(low), int(high), log=log), int
    return FloatDistribution(low, high, log=log), float


def _study(frame: pd.DataFrame, names: Sequence[str], specs: Mapping[str, ParamSpec]):
    import optuna

    distributions, casts = {}, {}
    for name in names:
        distributions[name], casts[name] = _distribution(frame[name].tolist(), specs.get(name))
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
                seed: int = 0, specs: Mapping[str, ParamSpec] | None = None) -> Importances:
    """fANOVA and PED-ANOVA importances of the parameters ``names`` for ``frame["value"]``.

    ``conditions``: a conditional parameter's condition text (``distill.method ∈ {samkd}``),
    used to label its scope. Scopes with fewer than :data:`MIN_TRIALS` trials or no varying
    parameter are skipped with a note. ``specs``: the searched distributions (from the table).
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
                study = _study(part, params, specs or {})
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
