"""Experiment tracking: every epoch of every trial shown live in TensorBoard, MLflow or W&B.

The Parquet tables stay the source of truth; the trackers mirror them for the dashboards
users already open. ``--log tensorboard,mlflow,wandb`` on ``raykd.search`` and ``raykd.train``
chooses them (:mod:`raykd.tracking.setup`); each backend is one module implementing
:class:`~raykd.tracking.base.Tracker`; :mod:`raykd.tracking.callbacks` feeds them from Ray
Tune and Ray Train. Nothing here imports Ray, TensorBoard, MLflow or W&B at import time.
"""

from raykd.tracking.base import Tracker, TrialInfo, epoch_scalars
from raykd.tracking.setup import BACKENDS, TrackingSetup, add_tracking_args, parse_backends

__all__ = ["BACKENDS", "Tracker", "TrackingSetup", "TrialInfo", "add_tracking_args", "epoch_scalars",
           "parse_backends"]
