"""Training loop, COCO evaluation, checkpoints and the Ray Train worker (in ``worker.py``)."""
