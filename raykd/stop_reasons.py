"""How a trial ended, defined once: the ``stop_reason`` column of the trials table, which the
writer fills, the trackers record, the progress lines and the analysis explain.

No imports: the results writer, the trackers, the search and the analysis all read it.
"""

from __future__ import annotations

COMPLETED, EARLY_STOPPED, ERROR, RUNNING = "completed", "early_stopped", "error", "running"
STOP_REASONS = (COMPLETED, EARLY_STOPPED, ERROR, RUNNING)


def stopped_early(epochs_run: int | None, epochs_total: int | None) -> bool:
    """A trial that ended (not failed) before its schedule's last epoch: the scheduler (ASHA) stopped it."""
    return epochs_run is not None and epochs_total is not None and epochs_run < epochs_total


def stop_reason(status: str, epochs_run: int | None, epochs_total: int | None) -> str:
    """The ``stop_reason`` of a trial with Tune ``status`` (RUNNING, TERMINATED, ERROR) after ``epochs_run``."""
    if status == "RUNNING":
        return RUNNING
    if status == "ERROR":
        return ERROR
    return EARLY_STOPPED if stopped_early(epochs_run, epochs_total) else COMPLETED


def stopped_early_text(epoch: object, epochs_total: object = None) -> str:
    """How the progress lines and the analysis say it: ``stopped early by the scheduler after epoch 2 of 4``."""
    return f"stopped early by the scheduler after epoch {epoch}" + (
        f" of {epochs_total}" if epochs_total is not None else "")
