"""Label spaces: the data set's classes against the classes a pretrained head predicts.

The data set numbers its categories 1..K in sorted id order (0 is background). A model whose
pretrained head knows every data set class by name (torchvision's COCO weights: 91 slots with
'N/A' gaps) keeps that head: training labels are mapped into the model's numbering and
predictions back to the data set's category ids; classes the data set lacks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

BACKGROUND = "__background__"


@dataclass(frozen=True)
class LabelSpace:
    """categories: model label -> class name (index 0 background); cat_ids: the data set's
    category ids, data label i+1 -> ``cat_ids[i]``; to_model: data label -> model label
    (index 0 -> 0); kept: whether a pretrained head's numbering is used."""

    categories: tuple[str, ...]
    cat_ids: tuple[int, ...]
    to_model: tuple[int, ...]
    kept: bool = False

    @property
    def num_classes(self) -> int:
        """K of the model's head, background included."""
        return len(self.categories)

    @property
    def identity(self) -> bool:
        return self.to_model == tuple(range(len(self.to_model))) and len(self.to_model) == self.num_classes

    def model_labels(self, labels: Tensor) -> Tensor:
        """Data set labels ``[N]`` int64 -> the model's labels ``[N]``."""
        if self.identity:
            return labels
        return _table(self.to_model, labels.device).to(labels.dtype)[labels]

    def label_to_cat_id(self, label: int) -> int | None:
        """The data set's category id of a model label; None for a class the data set lacks."""
        try:
            return self.cat_ids[self.to_model.index(label, 1) - 1]
        except ValueError:
            return None


@lru_cache(maxsize=64)
def _table(to_model: tuple[int, ...], device: torch.device) -> Tensor:
    """``to_model`` as an int64 tensor on ``device``, built once (no host-to-device copy per step)."""
    return torch.tensor(to_model, dtype=torch.int64, device=device)


def data_space(names: list[str], cat_ids: list[int]) -> LabelSpace:
    """The data set's own numbering: K+1 classes, labels unchanged."""
    return LabelSpace((BACKGROUND, *names), tuple(cat_ids), tuple(range(len(names) + 1)))


def matched_space(categories: list[str], names: list[str], cat_ids: list[int]) -> LabelSpace | None:
    """The pretrained numbering when every data set class name is among ``categories``
    (exact names, e.g. COCO's 'person'); None otherwise."""
    index = {name: i for i, name in enumerate(categories) if i > 0 and name not in ("N/A", BACKGROUND)}
    if not names or any(name not in index for name in names):
        return None
    return LabelSpace(tuple(categories), tuple(cat_ids), (0, *(index[name] for name in names)), kept=True)
