"""Whether the search's ranking held at confirmation (``confirm.rank_check``).

A search on a proxy (fewer images, smaller inputs, fewer epochs: ``confirm.set``) is worth
its saving only when the configurations it ranks high stay high at full fidelity. The check
ranks the confirmed configurations by their search-phase mean and by their confirmed mean
and reports Spearman's ρ and Kendall's τ (scipy, ties averaged) over the ``n`` configurations
both phases scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from scipy import stats as sps

from raykd.analyze.tables import config_keys

MIN_CONFIGS = 3


@dataclass(frozen=True)
class RankCheck:
    """Spearman's ρ and Kendall's τ between the search's and the confirmation's ranking of
    ``n`` configurations; ``held``: the search's best is the confirmed best and τ > 0."""

    spearman: float
    kendall: float
    n: int
    held: bool
    search_best: str
    confirmed_best: str

    def line(self) -> str:
        verdict = ("the search's ranking held" if self.held else
                   "the search's ranking did NOT hold: its order of these configurations is not the confirmed one")
        where = "" if self.held or self.search_best == self.confirmed_best else \
            f" (search's best: {self.search_best}; confirmed best: {self.confirmed_best})"
        return (f"rank check over {self.n} configurations: Spearman {self.spearman:+.2f}, Kendall {self.kendall:+.2f}"
                f": {verdict}{where}")


def rank_check(search: pd.DataFrame, confirm: pd.DataFrame, keys: Sequence[str],
               labels: dict[tuple, str] | None = None) -> RankCheck | None:
    """Compare the mean ``value`` per configuration (the exact values of ``keys``) of the scored
    ``search`` and ``confirm`` trials over the configurations both hold; None when fewer than
    :data:`MIN_CONFIGS`. ``labels``: a configuration's display label by its key tuple."""
    s = search["value"].groupby(config_keys(search, keys)).mean()
    c = confirm["value"].groupby(config_keys(confirm, keys)).mean()
    common = [k for k in c.index if k in s.index]
    if len(common) < MIN_CONFIGS:
        return None
    proxy, full = s[common].to_numpy(dtype=float), c[common].to_numpy(dtype=float)
    rho = float(sps.spearmanr(proxy, full).statistic)
    tau = float(sps.kendalltau(proxy, full).statistic)
    s_best, c_best = common[int(proxy.argmax())], common[int(full.argmax())]
    name = (labels or {}).get
    held = s_best == c_best and not math.isnan(tau) and tau > 0
    return RankCheck(rho, tau, len(common), held, name(s_best, str(s_best)), name(c_best, str(c_best)))
