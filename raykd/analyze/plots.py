"""The report's plots, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global backend
state). AP metrics are drawn in points (x100), as papers print them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from raykd.analyze.factors import METHOD, SCALE, Factor, is_null
from raykd.analyze.tables import Ablation

STATUS_COLORS = {"completed": "tab:blue", "early_stopped": "tab:orange", "running": "tab:gray", "error": "tab:red"}
STATUS_LABELS = {"completed": "completed", "early_stopped": "stopped early (ASHA)", "running": "running",
                 "error": "failed"}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _grid(count: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2),
          sharey: bool = False) -> tuple[Figure, list]:
    ncols = min(ncols, max(count, 1))
    nrows = math.ceil(max(count, 1) / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def effects(ablations: Sequence[Ablation], metric: str, teacher: float | None = None) -> bytes:
    """One panel per factor: mean metric per level with its 95 % t-interval; the dashed line is
    the reference level's mean, the dotted one the teacher."""
    fig, axes = _grid(len(ablations))
    for ax, ab in zip(axes, ablations):
        table = ab.table[ab.table["n"] > 0]
        x = np.arange(len(table))
        mean = table["mean"].to_numpy() * SCALE
        low = np.nan_to_num(mean - table["ci_low"].to_numpy() * SCALE)
        high = np.nan_to_num(table["ci_high"].to_numpy() * SCALE - mean)
        colors = ["black" if ref else "tab:blue" for ref in table["reference"]]
        for xi, m, lo, hi, c in zip(x, mean, low, high, colors):
            ax.errorbar(xi, m, yerr=[[lo], [hi]], fmt="o", color=c, capsize=4, markersize=5)
        ref = table.loc[table["reference"], "mean"]
        if len(ref):
            ax.axhline(float(ref.iloc[0]) * SCALE, color="gray", linestyle="--", linewidth=1)
        note = _teacher_line(ax, teacher * SCALE) if teacher is not None and ab.factor.name == METHOD else ""
        ax.set_xticks(x, [f"{lv}\nn={n}" for lv, n in zip(table["level"], table["n"])], fontsize=7,
                      rotation=30 if max(map(len, table["level"]), default=0) > 8 else 0)
        ax.set_xlim(-0.5, len(table) - 0.5)
        title = ab.factor.name + (f"\n({ab.factor.condition})" if ab.factor.condition else "") + note
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"{metric} (x100)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Effect of each factor on {metric}: mean and 95% CI per level "
                 "(black: reference level, dashed: its mean)", fontsize=10)
    return _png(fig)


def _teacher_line(ax, value: float) -> str:
    """A dotted line at the teacher's value; when it lies far outside the data, the text to
    add to the panel's title instead."""
    low, high = ax.get_ylim()
    if low - (high - low) / 2 <= value <= high + (high - low) / 2:
        ax.axhline(value, color="tab:green", linestyle=":", linewidth=1.5, label="teacher")
        ax.legend(fontsize=7, loc="lower right")
        return ""
    return f"\n(teacher {value:.2f}, off scale)"


def plural(n: int, noun: str) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def epoch_ticks(ax, epochs: pd.Series) -> None:
    """Whole-epoch ticks on the x axis: each epoch plotted when there are few (one epoch, too,
    where matplotlib's integer locator falls back to fractions), else integers chosen by matplotlib."""
    present = sorted({int(e) for e in epochs.dropna()})
    if 0 < len(present) <= 12:
        ax.set_xticks(present)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame, metric: str, *,
                    common_epoch: int | None = None) -> bytes:
    """``metric`` per epoch of every trial, one panel per method; colour by how the trial
    ended, black the mean over the non-failed trials that reached each epoch."""
    merged = epochs.merge(trials[["experiment", "trial_id", "stop_reason", *([METHOD] if METHOD in trials else [])]],
                          on=["experiment", "trial_id"])
    merged = merged[merged[metric].notna()]
    groups = sorted(merged[METHOD].dropna().unique(), key=lambda m: (m != "none", m)) if METHOD in merged else ["all"]
    fig, axes = _grid(len(groups), size=(4.2, 3.0), sharey=True)
    seen: set[str] = set()
    for ax, group in zip(axes, groups):
        part = merged if group == "all" else merged[merged[METHOD] == group]
        for (_, _), curve in part.groupby(["experiment", "trial_id"]):
            curve = curve.sort_values("epoch")
            reason = curve["stop_reason"].iloc[0]
            label = STATUS_LABELS.get(reason, reason) if reason not in seen else None
            seen.add(reason)
            ax.plot(curve["epoch"], curve[metric] * SCALE, color=STATUS_COLORS.get(reason, "tab:purple"),
                    alpha=0.45, linewidth=1, linestyle="--" if reason == "error" else "-", label=label)
            if reason in ("early_stopped", "error"):
                ax.plot(curve["epoch"].iloc[-1], curve[metric].iloc[-1] * SCALE, "x",
                        color=STATUS_COLORS[reason], markersize=5)
        ok = part[part["stop_reason"] != "error"]
        mean = ok.groupby("epoch")[metric].mean() * SCALE
        ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=2,
                label="mean of trials at that epoch" if "mean" not in seen else None)
        seen.add("mean")
        if common_epoch is not None:
            ax.axvline(common_epoch, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{METHOD} = {group} ({plural(part.groupby(['experiment', 'trial_id']).ngroups, 'trial')})"
                     if group != "all" else "all trials", fontsize=9)
        epoch_ticks(ax, part["epoch"])
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(f"{metric} (x100)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=5, fontsize=8)
    suffix = f"; dotted: the common epoch {common_epoch}" if common_epoch is not None else ""
    fig.suptitle(f"Learning curves per method{suffix}", fontsize=10)
    return _png(fig)


def pareto_front(x: np.ndarray, y: np.ndarray, *, x_min: bool = True, y_max: bool = True) -> np.ndarray:
    """Indices of the points no other point beats on both axes, by increasing ``x`` quality."""
    sx = x if x_min else -x
    sy = -y if y_max else y  # minimise both
    order = np.lexsort((sy, sx))
    front, best = [], math.inf
    for i in order:
        if sy[i] < best:
            front.append(i)
            best = sy[i]
    return np.asarray(front, dtype=int)


def cost(frame: pd.DataFrame, metric: str) -> bytes:
    """``metric`` against the device time spent to reach it, per method, with the Pareto front."""
    hours = frame["cost_h"].astype(float).to_numpy()
    seconds = hours.max(initial=0) < 0.5
    x = hours * 3600 if seconds else hours
    y = frame["value"].to_numpy() * SCALE
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    methods = frame[METHOD].fillna("?") if METHOD in frame else pd.Series("all", index=frame.index)
    for i, method in enumerate(sorted(methods.unique(), key=lambda m: (m != "none", m))):
        mask = (methods == method).to_numpy()
        ax.scatter(x[mask], y[mask], s=22, alpha=0.8, color=f"C{i}", label=method)
    ok = ~np.isnan(x) & ~np.isnan(y)
    if ok.any():
        idx = np.flatnonzero(ok)[pareto_front(x[ok], y[ok])]
        ax.step(x[idx], y[idx], where="post", color="black", linewidth=1.2, label="Pareto front")
    ax.set_xlabel("device-seconds to the scored epoch" if seconds else "device-hours to the scored epoch", fontsize=9)
    ax.set_ylabel(f"{metric} (x100)", fontsize=9)
    ax.set_title(f"{metric} against cost, one point per trial", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def objectives(frame: pd.DataFrame, first: tuple[str, str], second: tuple[str, str]) -> bytes:
    """The first two objectives of a multi-objective search, one point per trial, with the
    Pareto front in the search's own directions."""
    x, y = frame[first[0]].astype(float).to_numpy(), frame[second[0]].astype(float).to_numpy()
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(x, y, s=22, alpha=0.7, color="tab:blue", label="trials")
    ok = ~np.isnan(x) & ~np.isnan(y)
    if ok.any():
        idx = np.flatnonzero(ok)[pareto_front(x[ok], y[ok], x_min=first[1] == "min", y_max=second[1] == "max")]
        idx = idx[np.argsort(x[idx])]
        ax.plot(x[idx], y[idx], "o-", color="black", markersize=4, label="Pareto front")
    ax.set_xlabel(f"{first[0]} ({first[1]})", fontsize=9)
    ax.set_ylabel(f"{second[0]} ({second[1]})", fontsize=9)
    ax.set_title("Search objectives", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def importance_bars(table: pd.DataFrame) -> bytes:
    """fANOVA and PED-ANOVA importances side by side, one panel per scope."""
    scopes = list(dict.fromkeys(table["scope"]))
    heights = [max(1.6, 0.45 * (table["scope"] == s).sum() + 0.9) for s in scopes]
    fig = Figure(figsize=(7.0, sum(heights)), layout="constrained")
    axes = fig.subplots(len(scopes), 1, squeeze=False, height_ratios=heights).ravel()
    for ax, scope in zip(axes, scopes):
        part = table[table["scope"] == scope].sort_values("fanova", na_position="first")
        y = np.arange(len(part))
        ax.barh(y - 0.2, part["fanova"].fillna(0), height=0.4, color="tab:blue", label="fANOVA")
        ax.barh(y + 0.2, part["ped_anova"], height=0.4, color="tab:orange", label="PED-ANOVA")
        ax.set_yticks(y, part["parameter"], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{scope} (n={int(part['n'].iloc[0])})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[-1].set_xlabel("importance (normalised within each panel)", fontsize=8)
    return _png(fig)


def _axis_positions(factor: Factor, column: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Positions in [0, 1] of a factor's values (nulls at -0.12) and the axis labels."""
    pos = np.full(len(column), -0.12)
    defined = ~column.map(is_null).to_numpy()
    ticks: list[tuple[float, str]] = [(-0.12, "n/a")] if not defined.all() else []
    if factor.kind == "bins":
        values = column[defined].astype(float).to_numpy()
        low, high = factor.edges[0], factor.edges[-1]
        scale = (lambda v: np.log(v)) if factor.log else (lambda v: v)
        span = (scale(high) - scale(low)) or 1.0
        pos[defined] = (scale(values) - scale(low)) / span
        ticks += [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    else:
        where = {lv: (i / (len(factor.levels) - 1) if len(factor.levels) > 1 else 0.5)
                 for i, lv in enumerate(factor.levels)}
        pos[defined] = [where[factor.level(v)] for v in column[defined]]
        ticks += [(p, lv) for lv, p in where.items()]
    return pos, ticks


def parallel(frame: pd.DataFrame, factors: Sequence[Factor], metric: str, *, top: int = 10) -> bytes:
    """Parallel coordinates: one line per trial across the factors and the metric; the ``top``
    trials coloured by their metric, the others grey."""
    frame = frame.sort_values("value")
    columns = [_axis_positions(f, frame[f.name]) for f in factors]
    values = frame["value"].to_numpy() * SCALE
    vlow, vhigh = np.nanmin(values), np.nanmax(values)
    vpos = (values - vlow) / ((vhigh - vlow) or 1.0)
    columns.append((vpos, [(0.0, f"{vlow:.2f}"), (1.0, f"{vhigh:.2f}")]))
    names = [f.short for f in factors] + [f"{metric} (x100)"]
    matrix = np.column_stack([c[0] for c in columns])
    fig = Figure(figsize=(max(6.0, 1.5 * len(names)), 4.4), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(names))
    is_top = np.zeros(len(frame), dtype=bool)
    is_top[-top:] = True
    cmap = colormaps["viridis"]
    top_values = values[is_top]
    norm = Normalize(float(top_values.min()), float(top_values.max()))
    for row, flag, v in zip(matrix, is_top, values):
        if flag:
            ax.plot(xs, row, color=cmap(norm(v)), linewidth=1.8, alpha=0.9)
        else:
            ax.plot(xs, row, color="lightgray", linewidth=0.8, alpha=0.6)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.01, fraction=0.03, label=f"{metric} (x100), top trials")
    for x, (_, ticks) in zip(xs, columns):
        ax.axvline(x, color="black", linewidth=0.8)
        for p, text in ticks:
            ax.text(x + 0.03, p, text, fontsize=7, va="center")
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.08)
    ax.set_xlim(-0.2, len(names) - 0.5)
    ax.set_title(f"Top {min(top, len(frame))} trials by {metric} (coloured, brighter = better); others grey",
                 fontsize=10)
    return _png(fig)



def continuous(factors: Sequence[Factor], specs: dict) -> list[Factor]:
    """The numeric factors that are not a ``choice`` (the ones an effect curve describes)."""
    return [f for f in factors if f.numeric and (specs.get(f.name) is None or specs[f.name].kind not in
                                                ("choice", "value"))]


def effect_curves(frame: pd.DataFrame, factors: Sequence[Factor], metric: str) -> bytes | None:
    """One panel per continuous factor: every trial's value against the factor (log axis when
    the factor is), a local linear fit and its pointwise 95 % band (:mod:`raykd.analyze.curves`);
    None when no factor has enough trials for a curve."""
    from raykd.analyze.curves import effect_curve

    drawn = []
    for f in factors:
        part = frame[frame[f.name].map(lambda v: not is_null(v))]
        x = part[f.name].to_numpy(dtype=float)
        if f.log:
            x = np.log10(x)
        curve = effect_curve(x, part["value"].to_numpy(dtype=float) * SCALE)
        if curve is not None:
            drawn.append((f, x, part["value"].to_numpy(dtype=float) * SCALE, curve))
    if not drawn:
        return None
    fig, axes = _grid(len(drawn))
    for ax, (f, x, y, curve) in zip(axes, drawn):
        ax.scatter(x, y, s=10, color="tab:blue", alpha=0.6, label="trials")
        ax.fill_between(curve.x, curve.low, curve.high, color="tab:orange", alpha=0.25, label="95% band")
        ax.plot(curve.x, curve.fit, color="tab:orange", linewidth=1.5, label="local linear fit")
        ax.set_xlabel(f"log10 {f.short}" if f.log else f.short, fontsize=8)
        ax.set_ylabel(f"{metric} (x100)", fontsize=8)
        ax.set_title(f.name + (f"\n({f.condition})" if f.condition else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Effect curves of the continuous factors on {metric}", fontsize=10)
    return _png(fig)
