"""Pictures of the distillation: masks, attention and reconstructions of every distilled level.

``python -m raykd.visualize EXPERIMENT.yaml --out DIR`` draws, per image, the detections of
teacher and student and, per level, what the distiller's own losses drew and built (recorded
through :mod:`raykd.distill.record`, not recomputed). :mod:`raykd.visualize.render` is the
library face (``prepare`` then ``pictures``); nothing heavy is imported with the package, so
the command answers a bad flag at once.
"""
