"""The learning-curves plot of ``raykd analyze``: whole-epoch ticks and counted nouns."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from raykd.analyze.plots import epoch_ticks, plural  # noqa: E402


@pytest.mark.parametrize("epochs", [[1], [1, 2, 3], [2, 5], list(range(1, 25))])
def test_epoch_axis_ticks_are_whole_epochs(epochs):
    """a panel whose trials ran one epoch had ticks at 0.945, 0.960, ..."""
    fig, ax = plt.subplots()
    ax.plot(epochs, [0.1] * len(epochs), "x")
    epoch_ticks(ax, pd.Series(epochs, dtype=float))
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks)
    if len(epochs) <= 12:
        assert ticks == epochs


def test_panel_titles_count_trials_in_english():
    assert (plural(1, "trial"), plural(2, "trial"), plural(0, "trial")) == ("1 trial", "2 trials", "0 trials")
