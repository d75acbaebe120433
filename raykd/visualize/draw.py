"""One figure per image: detections on top, then one block of panels per distilled level.

Built on :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state). Map panels are
drawn in image pixels (a cell of a stride-s level covers s×s pixels) with the ground-truth
boxes outlined; every panel has its own colour bar. Each axes is labelled ``LEVEL/KEY``
(``detections/...`` for the top row) so tests can read back what was drawn.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from raykd.distill.config import DistillConfig
from raykd.visualize.collect import Detections, ImageView
from raykd.visualize.panels import Panel, level_panels, settings_text

MAX_COLUMNS = 8
PANEL_INCHES = (2.3, 2.1)
DPI = 80
SCORE_THRESH = 0.3  # detections drawn: score at least this
MAX_DETECTIONS = 10
FONT = 7


def figure(view: ImageView, cfg: DistillConfig, subtitle: str) -> Figure:
    """The picture of ``view``: ``cfg`` is the distillation config (titles), ``subtitle`` says
    which image, split and student it shows."""
    blocks = [level_panels(level, cfg) for level in view.levels]
    ncols = max(3, min(MAX_COLUMNS, max((len(b) for b in blocks), default=3)))
    rows = [1] + [math.ceil(len(b) / ncols) for b in blocks]
    fig = Figure(figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * sum(rows) + 0.5), layout="constrained")
    grid = fig.add_gridspec(sum(rows), ncols)
    terms = _term_sums(view.losses)
    lines = textwrap.wrap(settings_text(cfg), width=24 * ncols) + [subtitle] + ([f"loss terms: {terms}"] if terms else [])
    fig.suptitle("\n".join(lines), fontsize=FONT + 1)
    height, width = view.image.shape[-2:]
    image = view.image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    tops = [("ground_truth", f"ground truth ({len(view.boxes)})", None),
            ("teacher", "teacher detections", view.teacher_detections),
            ("student", "student detections", view.student_detections)]
    for col, (key, title, detections) in enumerate(tops):
        ax = fig.add_subplot(grid[0, col], label=f"detections/{key}")
        ax.imshow(image, interpolation="nearest")
        if detections is None:
            _boxes(ax, view.boxes.cpu().numpy(), "lime")
        else:
            shown = _shown(detections)
            _boxes(ax, shown.boxes.cpu().numpy(), "red" if key == "student" else "deepskyblue",
                   [f"{int(label)}:{score:.2f}" for label, score in zip(shown.labels, shown.scores.tolist())])
            title = f"{title}: {len(shown.scores)} ≥ {SCORE_THRESH:g}"
        _style(ax, title)
    row = 1
    for level, panels in zip(view.levels, blocks):
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(grid[row + i // ncols, i % ncols], label=f"{level.level}/{panel.key}")
            if panel.kind == "strip":
                _strip(fig, ax, panel)
            else:
                _map(fig, ax, panel, level.stride, (height, width), view.boxes.cpu().numpy())
        row += math.ceil(len(panels) / ncols)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _term_sums(losses: dict[str, float]) -> str:
    """``mgd 1.2e-03, ...``: each distillation term summed over levels (``mgd_0`` + ``mgd_1`` ...)."""
    sums: dict[str, float] = {}
    for name, value in losses.items():
        term = name.rsplit("_", 1)[0]
        sums[term] = sums.get(term, 0.0) + value
    return ", ".join(f"{term} {value:.3g}" for term, value in sums.items())


def _shown(detections: Detections) -> Detections:
    keep = (detections.scores >= SCORE_THRESH).nonzero().flatten()[:MAX_DETECTIONS]
    return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])


def _boxes(ax, boxes: np.ndarray, colour: str, labels: Sequence[str] = ()) -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.0))
        if i < len(labels):
            ax.text(x1, y1, labels[i], color=colour, fontsize=FONT - 1, va="bottom")


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)


def _map(fig: Figure, ax, panel: Panel, stride: int, size: tuple[int, int], boxes: np.ndarray) -> None:
    h, w = panel.data.shape
    extent = (0, w * stride, h * stride, 0)
    limits = {"vmin": 0.0, "vmax": 1.0} if panel.binary else {}
    shown = ax.imshow(panel.data, extent=extent, cmap=panel.cmap, interpolation="nearest", **limits)
    _boxes(ax, boxes, "cyan")
    ax.set_xlim(0, size[1])
    ax.set_ylim(size[0], 0)
    _colour_bar(fig, ax, shown, panel)
    _style(ax, panel.title)


def _strip(fig: Figure, ax, panel: Panel) -> None:
    limits = {"vmin": 0.0, "vmax": 1.0} if panel.binary else {}
    shown = ax.imshow(panel.data, aspect="auto", cmap=panel.cmap, interpolation="nearest", **limits)
    ax.set_xlabel("channel", fontsize=FONT - 1)
    if panel.row_labels:
        ax.set_yticks([start for start, _ in panel.row_labels], [label for _, label in panel.row_labels])
        for start, _ in panel.row_labels[1:]:
            ax.axhline(start - 0.5, color="tab:red", linewidth=0.8)
    else:
        ax.set_yticks([])
    _colour_bar(fig, ax, shown, panel)
    _style(ax, panel.title)


def _colour_bar(fig: Figure, ax, shown, panel: Panel) -> None:
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=FONT - 1)
    if panel.binary:
        bar.set_ticks([0.0, 1.0], labels=["masked", "kept"])
