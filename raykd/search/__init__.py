"""Ray Tune + Optuna searches over distillation settings (`python -m raykd.search`)."""
