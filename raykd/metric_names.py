"""The names of what an epoch reports, defined once (no imports: training, the distiller,
the results tables and the trackers all read them): COCO metrics and loss keys."""

from __future__ import annotations

BOX_METRICS = ("bbox_mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
"""COCOeval ``iouType="bbox"``: AP@[.5:.95], AP@.5, AP@.75, AP small / medium / large."""

SEGM_METRICS = ("segm_mAP", "segm_AP50", "segm_AP75", "segm_AP_S", "segm_AP_M", "segm_AP_L")
"""The same six from ``iouType="segm"`` (instance masks; Mask R-CNN runs only, else absent / null)."""

METRICS = BOX_METRICS + SEGM_METRICS

BOX_RECALLS = ("AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")
"""COCOeval ``stats[6:12]``: AR given 1, 10, 100 detections per image, AR small / medium / large
(``raykd.data evaluate`` prints them; the tables record the six APs)."""
SEGM_RECALLS = ("segm_AR1", "segm_AR10", "segm_AR100", "segm_AR_S", "segm_AR_M", "segm_AR_L")

LOSS_PREFIX = "loss_"
LOSS_TOTAL, LOSS_DET, LOSS_KD = "loss_total", "loss_det", "loss_kd"
FIXED_LOSSES = (LOSS_TOTAL, LOSS_DET, LOSS_KD)
"""The three losses every epoch reports (a column each); every other ``loss_<name>`` is a term."""


def term_key(term: str, level: str) -> str:
    """The flat name of a distillation ``term`` at FPN ``level`` (``mgd_0``), as reports show it."""
    return f"{term}_{level}"
