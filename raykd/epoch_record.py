"""What the training loop reports after each epoch, typed once.

:func:`raykd.train.loop.fit` builds an :class:`EpochRecord` per epoch. It travels as the flat
mapping :meth:`EpochRecord.as_report` (a Ray Tune / Ray Train result, a line of
``metrics.jsonl``, an entry of a checkpoint's ``history``) and is read back with
:meth:`EpochRecord.from_report`, which ignores the keys others add (Tune's ``trial_id``...):
the results writer and the search's progress lines read Tune results that way. Losses are
built as a structure (:class:`EpochLosses`: detector terms, distillation terms by level) and
flattened to ``loss_<name>`` keys here and nowhere else. No torch: ``raykd.results`` imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raykd.metric_names import FIXED_LOSSES, LOSS_DET, LOSS_KD, LOSS_PREFIX, LOSS_TOTAL, METRICS, term_key

EFFECTIVE_CONFIG = "effective_config"
"""The report key a search trial adds to every result: JSON ``{dotted key: value}`` of the values
its run used for the keys Tune set (``raykd.search.trainable.reported_values``); the trials
table records these, not Tune's sampled ones."""


@dataclass
class EpochLosses:
    """Loss sums of one epoch, as the loop accumulates them step by step.

    ``det``: detector terms by torchvision's name without ``loss_`` (FCOS: ``classification``,
    ``bbox_regression``, ``bbox_ctrness``); ``kd``: distillation terms, level -> term -> sum
    (e.g. ``{"0": {"mgd": ...}}``); ``steps``: how many steps were added.
    """

    det: dict[str, float] = field(default_factory=dict)
    kd: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0

    def add(self, det: Mapping[str, float], kd: Mapping[str, Mapping[str, float]]) -> None:
        """Add one step's values (plain floats)."""
        for name, value in det.items():
            self.det[name] = self.det.get(name, 0.0) + value
        for level, terms in kd.items():
            sums = self.kd.setdefault(level, {})
            for term, value in terms.items():
                sums[term] = sums.get(term, 0.0) + value
        self.steps += 1

    def summary(self) -> LossSummary:
        """Mean per step: the three totals, every detector term, every distillation term summed
        over levels (``mgd``) and per level (``mgd_0``)."""
        n = max(self.steps, 1)
        terms = {name: total / n for name, total in self.det.items()}
        det = sum(terms.values())
        kd = 0.0
        for level, level_terms in self.kd.items():
            for term, total in level_terms.items():
                mean = total / n
                terms[term_key(term, level)] = mean
                terms[term] = terms.get(term, 0.0) + mean
                kd += mean
        return LossSummary(total=det + kd, det=det, kd=kd, terms=terms)


@dataclass(frozen=True)
class LossSummary:
    """Mean losses per step of one epoch: totals and every named term (without ``loss_``);
    a total is None only when read back from a report that lacks it."""

    total: float | None
    det: float | None
    kd: float | None
    terms: dict[str, float] = field(default_factory=dict)

    def as_report(self) -> dict[str, float]:
        return {LOSS_TOTAL: self.total, LOSS_DET: self.det, LOSS_KD: self.kd,
                **{f"{LOSS_PREFIX}{name}": value for name, value in self.terms.items()}}

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> LossSummary:
        terms = {key[len(LOSS_PREFIX):]: number for key, value in report.items()
                 if key.startswith(LOSS_PREFIX) and key not in FIXED_LOSSES and (number := finite_number(value)) is not None}
        return cls(total=finite_number(report.get(LOSS_TOTAL)), det=finite_number(report.get(LOSS_DET)),
                   kd=finite_number(report.get(LOSS_KD)), terms=terms)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of one run.

    ``scores``: COCO metrics by name (:data:`raykd.metric_names.METRICS`, box and, for Mask
    R-CNN, segm; pycocotools' -1 kept as reported), or carried from the last evaluated epoch;
    ``lr``: the first parameter group's at the epoch's end; ``step_time``: training seconds
    per step (data + forward + backward + optimiser); ``epoch_time``: the epoch's seconds,
    evaluation included; ``time_total_s``: the run's training seconds so far (a resumed run
    continues its count); ``timestamp``: Unix seconds at the epoch's end. The loop sets every
    field; a report read back without a value gives None (or the default).
    """

    epoch: int
    epochs_total: int
    losses: LossSummary
    scores: dict[str, float | None]
    lr: float | None
    step_time: float | None
    epoch_time: float | None
    time_total_s: float | None
    num_workers: int = 1
    device: str = "cpu"
    timestamp: float | None = None
    kd_scale: float | None = None  # distill.loss_ratio's calibrated multiplier (raykd/train/calibrate.py)

    def score(self, name: str) -> float | None:
        """A metric's value, None when it was not measured (e.g. ``segm_mAP`` of a box model)."""
        return self.scores.get(name)

    def as_report(self) -> dict[str, Any]:
        """The flat mapping reported to Ray and written to ``metrics.jsonl``."""
        return {**self.losses.as_report(), **self.scores, "epoch": self.epoch, "epochs_total": self.epochs_total,
                "lr": self.lr, "step_time": self.step_time, "epoch_time": self.epoch_time,
                "time_total_s": self.time_total_s, "num_workers": self.num_workers, "device": self.device,
                "timestamp": self.timestamp, **({"kd_scale": self.kd_scale} if self.kd_scale is not None else {})}

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> EpochRecord:
        """Read back :meth:`as_report`'s mapping (extra keys are ignored); raises KeyError
        without ``epoch``."""
        return cls(
            epoch=int(report["epoch"]),
            epochs_total=int(report.get("epochs_total") or report["epoch"]),
            losses=LossSummary.from_report(report),
            scores={name: finite_number(report[name]) for name in METRICS if name in report},
            lr=finite_number(report.get("lr")),
            step_time=finite_number(report.get("step_time")),
            epoch_time=finite_number(report.get("epoch_time")),
            time_total_s=finite_number(report.get("time_total_s")),
            num_workers=int(report.get("num_workers") or 1),
            device=str(report.get("device") or "cpu"),
            timestamp=finite_number(report.get("timestamp")),
            kd_scale=finite_number(report.get("kd_scale")),
        )

    def line(self) -> str:
        """One line of metrics, as the CLI prints it per epoch."""
        kd = f" kd {self.losses.kd:.4f}" if self.losses.kd else ""
        ap = self.score("bbox_mAP")
        ap_text = "mAP -"
        if ap is not None:
            ap_text = (f"mAP {ap:.4f} AP50 {self.score('AP50'):.4f} AP_S/M/L {self.score('AP_S'):.3f}/"
                       f"{self.score('AP_M'):.3f}/{self.score('AP_L'):.3f}")
        if self.score("segm_mAP") is not None:
            ap_text += f"  segm mAP {self.score('segm_mAP'):.4f} AP50 {self.score('segm_AP50'):.4f}"
        return (f"epoch {self.epoch}/{self.epochs_total}  loss {self.losses.total:.4f} (det {self.losses.det:.4f}{kd})"
                f"  {ap_text}  lr {self.lr:.2e}  {self.step_time:.3f} s/step  {self.epoch_time:.1f} s")


def finite_number(value: object) -> float | None:
    """``value`` as a finite float; None for None, booleans, what ``float`` refuses, NaN and ±inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metrics_lines(reports: list[Mapping[str, Any]]) -> str:
    """``metrics.jsonl`` text of :meth:`EpochRecord.as_report` mappings, one JSON line each: a COCO
    metric of pycocotools' -1 (no objects of that size) or NaN is written as null, as the
    results tables store it (and NaN is not JSON)."""
    def clean(report: Mapping[str, Any]) -> dict[str, Any]:
        return {key: None if key in METRICS and _unmeasured(value) else value for key, value in report.items()}

    return "".join(json.dumps(clean(report)) + "\n" for report in reports)


def _unmeasured(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (math.isnan(value) or value < 0)
