"""The names of the COCO metrics reported per epoch, defined once (no imports: training, the
results tables and the trackers all read them)."""

from __future__ import annotations

BOX_METRICS = ("bbox_mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
"""COCOeval ``iouType="bbox"``: AP@[.5:.95], AP@.5, AP@.75, AP small / medium / large."""

SEGM_METRICS = ("segm_mAP", "segm_AP50", "segm_AP75", "segm_AP_S", "segm_AP_M", "segm_AP_L")
"""The same six from ``iouType="segm"`` (instance masks; Mask R-CNN runs only, else absent / null)."""

METRICS = BOX_METRICS + SEGM_METRICS
