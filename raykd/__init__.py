"""raykd: knowledge distillation of object detectors, searched with Ray Tune + Optuna."""

__version__ = "0.1.0"
