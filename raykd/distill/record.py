"""Recording what a loss module drew and built in one forward pass, for pictures and tests.

Loss modules call :func:`note` with the tensors they use (masks, attention, reconstructions);
it does nothing unless a :class:`Recorder` is active (``with recording(recorder):``), so
training pays one context-variable lookup per call. The recorded tensor *is* the one the loss
used (detached), not a recomputation. :func:`record_levels` names every note after the
distiller level whose loss module made it; :func:`scope` adds a sub-name (SAMKD's grids).

Names a loss module should use, so that ``python -m raykd.visualize`` draws them (shapes
for one level of a batch of N images, C channels, an H×W map; keep-masks are 1 = kept):

- ``mask_spatial`` ``[N, 1, H, W]``, ``mask_channel`` ``[N, C, 1, 1]`` or ``[N, C, H, W]``
  (constant inside each cell of a g×g grid); ``mask_fg`` / ``mask_bg`` ``[N, 1, H, W]``
  (FGD's box weights);
- ``attention_spatial`` ``[N, 1, H, W]``, ``attention_channel`` ``[N, C, 1, 1]``: the
  teacher attention the loss weighted with;
- ``reconstruction`` ``[N, C, H, W]``: what is compared with the teacher (``target``, when
  that is not the level's teacher feature itself, e.g. pooled); ``reconstruction_spatial`` /
  ``reconstruction_channel``: a branch's own output when the branches are not fused;
- ``region_weights`` ``[N, H, W]``: SAMKD's SLD weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor, nn


class Recorder:
    """Collects ``{"LEVEL/SCOPE/name": tensor}`` (detached) while active."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}
        self._scopes: list[str] = []

    def add(self, name: str, value: Tensor) -> None:
        self.values["/".join([*self._scopes, name])] = value.detach()

    @contextmanager
    def scoped(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def level(self, level: str) -> dict[str, Tensor]:
        """The notes of one level, without the ``LEVEL/`` prefix."""
        prefix = f"{level}/"
        return {key[len(prefix):]: value for key, value in self.values.items() if key.startswith(prefix)}


_ACTIVE: ContextVar[Recorder | None] = ContextVar("raykd_distill_recorder", default=None)


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Make ``recorder`` receive every :func:`note` inside the block."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def note(name: str, value: Tensor) -> None:
    """Record ``value`` under ``name`` (in the current scopes) when a recorder is active."""
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.add(name, value)


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the notes made inside the block with ``name/`` (nothing when not recording)."""
    recorder = _ACTIVE.get()
    if recorder is None:
        yield
        return
    with recorder.scoped(name):
        yield


@contextmanager
def record_levels(losses: nn.ModuleDict, recorder: Recorder) -> Iterator[Recorder]:
    """Record with ``recorder``, each note prefixed by the key of the module of ``losses``
    (a distiller's ``losses``, keyed by level) whose forward made it."""
    handles = []
    for level, module in losses.items():
        entered: list = []

        def before(_module, _args, level=level, entered=entered):
            context = recorder.scoped(level)
            context.__enter__()
            entered.append(context)

        def after(_module, _args, _output, entered=entered):
            entered.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with recording(recorder):
            yield recorder
    finally:
        for handle in handles:
            handle.remove()
