"""Effect curves of continuous factors: a local linear fit with a pointwise 95 % band.

A continuous factor (``distill.mask_ratio``, a loss weight on a log axis) is sampled at
scattered values, one trial each; a table of bins shows coarse steps, the curve shows the
trend. At each grid point ``x0`` the fit is the weighted least-squares line through the
trials with Gaussian weights ``exp(-((x - x0)/h)^2 / 2)`` (``h``: :data:`BANDWIDTH` of the
range), its value at ``x0`` the estimate ``ŷ(x0) = l(x0)ᵀ y``. The band is
``ŷ ± t_{0.975, n - ν} · σ̂ · ‖l(x0)‖`` with ``σ̂² = RSS / (n - ν)`` from the fit at the
trials and ``ν`` the trace of the smoother matrix (its effective number of parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

BANDWIDTH = 0.3
"""The kernel's standard deviation as a fraction of the range of x."""
MIN_POINTS = 5


@dataclass(frozen=True)
class Curve:
    """The fit on ``x`` (grid, in the axis's units: log10 for a log factor) with its band."""

    x: np.ndarray
    fit: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _weights(x: np.ndarray, x0: float, h: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - x0) / h) ** 2)


def _smoother_row(x: np.ndarray, x0: float, h: float) -> np.ndarray:
    """``l(x0)``: the weights of the local linear estimate at ``x0`` on the observations."""
    w = _weights(x, x0, h)
    design = np.column_stack([np.ones_like(x), x - x0])
    gram = design.T @ (design * w[:, None])
    return np.linalg.pinv(gram)[0] @ (design * w[:, None]).T


def effect_curve(x: np.ndarray, y: np.ndarray, points: int = 60, confidence: float = 0.95) -> Curve | None:
    """The local linear fit of ``y`` on ``x`` over a grid of ``points`` with its pointwise band;
    None with fewer than :data:`MIN_POINTS` finite pairs or two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < MIN_POINTS or np.unique(x).size < 2:
        return None
    h = BANDWIDTH * float(x.max() - x.min())
    smoother = np.vstack([_smoother_row(x, xi, h) for xi in x])
    nu = float(np.trace(smoother))
    dof = len(x) - nu
    residuals = y - smoother @ y
    sigma = math.sqrt(float(residuals @ residuals) / dof) if dof > 0 else math.nan
    t = float(sps.t.ppf((1 + confidence) / 2, dof)) if dof > 0 else math.nan
    grid = np.linspace(x.min(), x.max(), points)
    rows = np.vstack([_smoother_row(x, g, h) for g in grid])
    fit = rows @ y
    half = t * sigma * np.linalg.norm(rows, axis=1)
    return Curve(grid, fit, fit - half, fit + half)
