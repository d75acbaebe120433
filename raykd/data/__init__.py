"""Detection data in the COCO form: dataset, transforms, loader, synthetic set and checks;
Pascal VOC (:mod:`raykd.data.voc`) and YOLO (:mod:`raykd.data.yolo`) splits read into it
(and cached as COCO files, :mod:`raykd.data.converted`).

``python -m raykd.data synth OUT_DIR`` writes the synthetic set;
``python -m raykd.data check ANNOTATIONS.json --images DIR`` validates a COCO set
(``--format voc --root DIR --split NAME``, ``--format yolo --yaml FILE --split NAME`` the others);
``python -m raykd.data convert --format voc|yolo ... --out FILE.json`` writes one as COCO.
Names are imported on first use, so the commands (which need no torch) start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckReport": "raykd.data.check",
    "check_coco": "raykd.data.check",
    "CocoDetection": "raykd.data.dataset",
    "DataWarning": "raykd.data.annindex",
    "AnnotationIndex": "raykd.data.annindex",
    "load_index": "raykd.data.annindex",
    "build_loader": "raykd.data.loader",
    "collate_detection": "raykd.data.loader",
    "SyntheticPaths": "raykd.data.synthetic",
    "ensure_synthetic": "raykd.data.synthetic",
    "generate_synthetic": "raykd.data.synthetic",
    "detection_transforms": "raykd.data.transforms",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from raykd.data.annindex import AnnotationIndex, DataWarning, load_index
    from raykd.data.check import CheckReport, check_coco
    from raykd.data.dataset import CocoDetection
    from raykd.data.loader import build_loader, collate_detection
    from raykd.data.synthetic import SyntheticPaths, ensure_synthetic, generate_synthetic
    from raykd.data.transforms import detection_transforms


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raykd.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
