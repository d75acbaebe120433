"""What each panel of a level shows, as plain arrays and titles (drawing is in ``draw.py``).

Every map panel is a 2-D array over the level's grid (row-major, as the feature map);
strip panels are ``[rows, C]`` arrays over channels. Keep-masks are drawn as recorded
(1 = kept, 0 = masked, or FGD's box weights).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from raykd.distill.attention import channel_attention, spatial_attention
from raykd.distill.cells import cell_grid, cell_mean
from raykd.distill.config import DistillConfig
from raykd.distill.methods import REGISTRY
from raykd.visualize.collect import LevelView

_GRID = re.compile(r"^g(\d+)/")


@dataclass
class Panel:
    """One panel: ``key`` names it (``mask_spatial``, ``g2/mask_spatial``, ``attention_spatial``,
    ...; the figure labels its axes ``LEVEL/key``), ``data`` is 2-D, ``kind`` is ``map`` (over
    the feature grid) or ``strip`` (over channels, ``row_labels`` naming row blocks)."""

    key: str
    title: str
    data: np.ndarray
    kind: str = "map"
    cmap: str = "viridis"
    binary: bool = False
    row_labels: tuple[tuple[int, str], ...] = ()


def settings_text(cfg: DistillConfig) -> str:
    """``mgd: alpha=1e-07, mask_ratio=0.65``: the method and the settings it reads (weights resolved)."""
    resolved = cfg.resolved()
    keys = REGISTRY[cfg.method].keys
    parts = [f"{key}={_short(getattr(resolved, key))}" for key in keys if getattr(resolved, key) is not None]
    return f"{cfg.method}: {', '.join(parts)}" if parts else cfg.method


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _np(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _norm(feature: Tensor) -> np.ndarray:
    """``‖F‖₂`` over channels: ``[C, H, W]`` -> ``[H, W]``."""
    return _np(feature.float().norm(dim=0))


def _grid_of(key: str) -> int:
    match = _GRID.match(key)
    return int(match.group(1)) if match else 1


def _scope(key: str) -> str:
    match = _GRID.match(key)
    return f" g={match.group(1)}" if match else ""


def channel_rows(mask: Tensor, g: int) -> np.ndarray:
    """A channel keep-mask ``[C, 1, 1]`` or ``[C, H, W]`` (constant per cell of a g×g grid) as
    ``[g·g, C]``: one row per cell, row-major over the grid."""
    c, h, w = mask.shape
    if h == w == 1:
        return _np(mask.reshape(1, c))
    per_cell = cell_mean(mask.reshape(1, c, h * w).float(), cell_grid(h, w, g, mask.device))[0]  # [C, g·g]
    return _np(per_cell.T)


def level_panels(view: LevelView, cfg: DistillConfig) -> list[Panel]:
    """The panels of one level, in drawing order: teacher spatial attention, the spatial masks,
    channel attention and masks (strips), feature norms, reconstructions and their error, SLD
    weights."""
    where = f"level {view.level} · stride {view.stride}"
    notes = view.notes
    teacher = view.teacher[None].float()
    panels = [Panel("attention_spatial", f"{where}\nteacher A_s (τ={cfg.tau:g})",
                    _np(notes.get("attention_spatial", spatial_attention(teacher, cfg.tau)[0])[0]), cmap="magma")]
    for key in sorted(k for k in notes if k.rsplit("/", 1)[-1] in ("mask_spatial", "mask_fg", "mask_bg")):
        panels.append(_spatial_mask_panel(where, key, notes[key], cfg))
    attention_c = notes.get("attention_channel", channel_attention(teacher, cfg.tau)[0])
    panels.append(Panel("attention_channel", f"{where}\nteacher A_c", _np(attention_c.reshape(1, -1)),
                        kind="strip", cmap="magma"))
    channel_keys = sorted((k for k in notes if k.rsplit("/", 1)[-1] == "mask_channel"), key=_grid_of)
    if channel_keys:
        blocks = [channel_rows(notes[k], _grid_of(k)) for k in channel_keys]
        starts = np.cumsum([0] + [len(b) for b in blocks[:-1]])
        labels = tuple((int(s), f"g={_grid_of(k)}") for s, k in zip(starts, channel_keys))
        kept = float(np.concatenate(blocks).mean())
        panels.append(Panel("mask_channel", f"{where}\nM_c (λ_c={cfg.channel_mask_ratio:g}), kept {kept:.0%}",
                            np.concatenate(blocks), kind="strip", cmap="gray", binary=True, row_labels=labels))
    panels.append(Panel("norm_student", f"{where}\n‖S'‖", _norm(view.student)))
    panels.append(Panel("norm_teacher", f"{where}\n‖T‖", _norm(view.teacher)))
    recon_keys = sorted(k for k in notes if k.rsplit("/", 1)[-1].startswith("reconstruction"))
    for key in recon_keys:
        scope = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        target = notes.get(f"{scope}target", view.teacher)
        branch = key.rsplit("/", 1)[-1].removeprefix("reconstruction").lstrip("_")
        name = f"R{'_' + branch[0] if branch else ''}{_scope(key)}"
        panels.append(Panel(f"norm_{key}", f"{where}\n‖{name}‖", _norm(notes[key])))
        panels.append(Panel(f"error_{key}", f"{where}\n‖{name} − T‖", _norm(notes[key] - target), cmap="inferno"))
    if not recon_keys and view.student.shape == view.teacher.shape:
        panels.append(Panel("error_student", f"{where}\n‖S' − T‖", _norm(view.student - view.teacher), cmap="inferno"))
    if "region_weights" in notes:
        panels.append(Panel("region_weights", f"{where}\nSLD weights ({cfg.sld_weighting})",
                            _np(notes["region_weights"]), cmap="cividis"))
    return panels


def _spatial_mask_panel(where: str, key: str, mask: Tensor, cfg: DistillConfig) -> Panel:
    name = key.rsplit("/", 1)[-1]
    data = _np(mask[0])
    if name == "mask_spatial":
        rule = "random" if cfg.method == "mgd" else cfg.mask_rule
        ratio = "λ" if cfg.method == "mgd" else "λ_s"
        return Panel(key, f"{where}\nM_s{_scope(key)} ({ratio}={cfg.mask_ratio:g}, {rule}), kept {data.mean():.0%}",
                     data, cmap="gray", binary=True)
    label = "foreground" if name == "mask_fg" else "background"
    return Panel(key, f"{where}\nFGD {label} M", data, cmap="Greens" if name == "mask_fg" else "Blues")
