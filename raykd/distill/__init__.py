"""The distillation library: tapped features in, named loss terms out.

Knows nothing of Ray, YAML or files. Three separate ideas, as in MMRazor: what is tapped
(FPN features and dense-head logits, given by the caller), connectors (align convs,
generation blocks, fusion, GcBlocks) and losses (one module per method and level).
DMKD, SAMKD, AMD and DFMSD are reconstructions from their abstracts; MGD, FGD, CWD, PKD and
FreeKD (its loss; its prompt-training loop is a reconstruction) follow their reference code.
See ``METHODS.md``.
"""

from raykd.distill.config import METHODS, DistillConfig
from raykd.distill.distiller import (
    Distiller,
    LevelTerms,
    build_distiller,
    flat_terms,
    term_key,
    term_names,
    total_loss,
)

__all__ = ["METHODS", "DistillConfig", "Distiller", "LevelTerms", "build_distiller", "flat_terms", "term_key",
           "term_names", "total_loss"]
