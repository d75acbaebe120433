"""Pictures of the distillation: masks, attention and reconstructions of every distilled level.

``python -m raykd.visualize EXPERIMENT.yaml --out DIR`` draws, per image, the detections of
teacher and student and, per level, what the distiller's own losses drew and built (recorded
through :mod:`raykd.distill.record`, not recomputed).
"""

from raykd.visualize.render import Picture, pictures, prepare

__all__ = ["Picture", "pictures", "prepare"]
