"""Typed experiment configuration: YAML loading, dotted ``--set`` overrides, errors naming the key.

An experiment says what is trained: ``data``, ``teacher``, ``student``, ``distill`` and
``train``. Relative paths in a YAML file are relative to the folder of that file, so a
file means the same thing from any working directory (Ray workers run elsewhere). A file may
inherit from others with ``_base_: path.yaml`` (or a list): see :func:`load_with_bases`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from raykd.distill.config import DistillConfig
from raykd.errors import UserError
from raykd.uri import is_uri

Arch = Literal["fcos", "retinanet", "retinanet_v2", "faster_rcnn", "faster_rcnn_v2", "mask_rcnn", "mask_rcnn_v2"]
Norm = Literal["frozen_bn", "bn", "sync_bn"]

SEED_KEY = "train.seed"
"""The dotted key of a trial's seed (data order and initialisation)."""
WEIGHTS_ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
"""A torchvision weights enum as ``Class.MEMBER`` (every such class is named ``*_Weights``); other
``weights`` / ``backbone_weights`` values are file paths."""
Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large"]

PATH_MARK = "raykd_path"
"""The ``json_schema_extra`` key that marks a field as a file-system path (see :func:`path_field`)."""


def path_field(default: Any = ..., *, shared: bool = True, **kwargs: Any) -> Any:
    """A ``str`` field holding a file or folder path: a relative value in a YAML file is relative
    to that file's folder (:func:`load_experiment_dict`). ``shared``: every trial of a search reads
    it (or shares what is written there), so on a multi-node cluster it must not point into the
    job's per-node package (:func:`raykd.submit.package.node_local_paths`); ``False`` for a
    run's own output folder, which a search replaces."""
    return Field(default, json_schema_extra={PATH_MARK: "shared" if shared else "own"}, **kwargs)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CocoSplit(_Strict):
    """One COCO split: an annotation file and the folder its ``file_name`` entries are under."""

    format: Literal["coco"] = "coco"
    annotations: str = path_field()
    images: str = path_field()


class VocSplit(_Strict):
    """One Pascal VOC split: ``root/Annotations/*.xml``, ``root/JPEGImages/``, ``root/ImageSets/Main/<split>.txt``.
    ``classes``: the class names in label order (default: every name in the XML files, sorted)."""

    format: Literal["voc"]
    root: str = path_field()
    split: str = Field(min_length=1)
    classes: list[str] | None = Field(None, min_length=1)


class YoloSplit(_Strict):
    """One split of a YOLO data set: the ``split`` key of an ultralytics-style ``data.yaml``
    (``path``, ``train``/``val`` image folders with ``labels/`` beside ``images/``, ``names``)."""

    format: Literal["yolo"]
    yaml: str = path_field()
    split: str = Field(min_length=1)


def _split_format(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("format", "coco")
    return getattr(value, "format", None) if isinstance(value, BaseModel) else None


SplitConfig = Annotated[
    Annotated[CocoSplit, Tag("coco")] | Annotated[VocSplit, Tag("voc")] | Annotated[YoloSplit, Tag("yolo")],
    Discriminator(_split_format, custom_error_type="split_format",
                  custom_error_message="expected a mapping with format: coco (the default), voc or yolo"),
]
"""A data split in any of the three formats, told apart by ``format``."""


class SyntheticConfig(_Strict):
    """Generate the synthetic shapes set into ``out_dir`` when it is missing."""

    out_dir: str = path_field()
    train_images: int = Field(3000, ge=1)
    val_images: int = Field(500, ge=1)
    seed: int = 0
    image_size: int = Field(160, ge=64, description="side of the generated images, px (the generator needs 64+)")


class DataConfig(_Strict):
    """Either ``train`` + ``val`` splits (COCO, Pascal VOC or YOLO, see :data:`SplitConfig`), or a
    ``synthetic`` block (which fills them in)."""

    train: SplitConfig | None = None
    val: SplitConfig | None = None
    synthetic: SyntheticConfig | None = None
    image_size: int = Field(160, ge=32, description="longer image side after resizing, px (cap with min_size)")
    min_size: int | None = Field(None, ge=16, description="shorter image side after resizing, px, unless the "
                                 "longer side would pass max_size (torchvision's detection resize; COCO: 800)")
    max_size: int | None = Field(None, ge=32, description="the longer side's cap, px (COCO: 1333); "
                                 "the same as image_size, which it sets")
    num_workers: int | None = Field(None, ge=0, description="DataLoader worker processes (default: a GPU "
                                    "search trial's cpus_per_worker − 1, at most 8; else 0)")
    val_max_images: int | None = Field(None, ge=1, description="evaluate on the first N val images")

    @model_validator(mode="before")
    @classmethod
    def _max_size_is_image_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_size") is not None:
            if data.get("image_size") not in (None, data["max_size"]):
                raise ValueError(f"data.max_size ({data['max_size']}) and data.image_size ({data['image_size']}) "
                                 "name the same longer-side cap: give one")
            data = {**data, "image_size": data["max_size"]}
        return data

    @model_validator(mode="after")
    def _sizes(self) -> DataConfig:
        if self.min_size is not None and self.min_size >= self.image_size:
            raise ValueError(f"data.min_size ({self.min_size}) must be below the longer-side cap "
                             f"data.max_size / image_size ({self.image_size})")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.synthetic is None and (self.train is None or self.val is None):
            raise ValueError("expected either data.synthetic or both data.train and data.val")
        return self


class ModelConfig(_Strict):
    """A torchvision detector: head family, backbone, FPN width, pretrained weights and norm.

    ``weights``: the whole detector's weights, ``backbone_weights``: the backbone body's; each a
    torchvision enum ``"Class.MEMBER"`` (read from the torch hub cache) or a file (a raykd
    checkpoint or a torchvision state dict). ``norm`` of the backbone body: default
    ``frozen_bn`` when any pretrained weights are given, else ``bn``. ``trainable_layers``
    (backbone stages trained, 0-5): default 3 with pretrained weights, 5 without (torchvision's rule).
    """

    arch: Arch = "fcos"
    backbone: Backbone = "resnet18"
    fpn_channels: int = Field(256, ge=8)
    weights: str | None = path_field(None, min_length=1)  # or a torchvision enum (WEIGHTS_ENUM)
    backbone_weights: str | None = path_field(None, min_length=1)
    norm: Norm | None = None
    trainable_layers: int | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _groupnorm_width(self) -> ModelConfig:
        if self.arch in ("fcos", "retinanet_v2") and self.fpn_channels % 32:
            raise ValueError(f"{self.arch} heads use GroupNorm(32): fpn_channels must be a multiple of 32, "
                             f"got {self.fpn_channels}")
        return self

    @property
    def pretrained(self) -> bool:
        return self.weights is not None or self.backbone_weights is not None

    @property
    def norm_layer(self) -> str:
        """``norm``, or its default: ``frozen_bn`` with pretrained weights, else ``bn``."""
        return self.norm or ("frozen_bn" if self.pretrained else "bn")

    @property
    def trainable_stages(self) -> int:
        """``trainable_layers``, or its default: 3 with pretrained weights, else 5."""
        return self.trainable_layers if self.trainable_layers is not None else (3 if self.pretrained else 5)


MASK_ARCHS = ("mask_rcnn", "mask_rcnn_v2")
"""Archs that train on instance masks (COCO ``segmentation``) and report segm mAP too."""


class StudentConfig(ModelConfig):
    """The trained model. ``inherit``: copy the teacher's FPN and head weights first."""

    inherit: bool = False


def default_evaluator() -> str:
    """``faster_coco_eval`` when it is installed (a dependency of raykd), else ``pycocotools``."""
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


class ScheduleConfig(_Strict):
    """Optimiser, learning-rate schedule and loop settings (see METHODS.md, training recipe)."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(4, ge=1, description="images per worker and step")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (small budgets)")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(500, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [16, 22], description="epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    clip_grad: float | None = Field(35.0, gt=0)
    amp: Literal["bf16", "fp16", "off"] = Field("off", description="autocast of the detectors' convolutions on "
                                                "CUDA (fp16 adds a GradScaler; ignored on CPU); true = bf16, false = off")
    log_every: int = Field(20, ge=1, description="steps between the host reading losses (the only sync of a step)")
    lr_scaling: Literal["linear", "none"] = Field("linear", description="lr × effective batch / reference_batch")
    reference_batch: int | None = Field(None, ge=1, description="the recipe's batch over all workers that lr is for")
    compile: bool = Field(False, description="torch.compile the student's backbone and heads and the KD losses")
    channels_last: bool = Field(False, description="channels_last memory format for the models")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads per worker")
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and after the last)")
    evaluator: Literal["faster_coco_eval", "pycocotools"] = Field(
        default_factory=lambda: default_evaluator(),
        description="COCO evaluation: faster_coco_eval (the same 12 stats as pycocotools, ~6x faster; the "
                    "default when installed) or pycocotools")
    output_dir: str = path_field("runs/experiment", shared=False)

    @field_validator("evaluator")
    @classmethod
    def _evaluator_installed(cls, value: str) -> str:
        if importlib.util.find_spec(value) is None:
            package = value.replace("_", "-")
            raise ValueError(f"evaluator {value} is not installed: pip install {package}, or set "
                             "train.evaluator: pycocotools")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_boolean(cls, value: Any) -> Any:
        # the key was a boolean (bf16 on CUDA); YAML also reads a bare `off` as false
        return {True: "bf16", False: "off"}.get(value, value) if isinstance(value, bool) else value


class TeacherConfig(ModelConfig):
    """The frozen teacher: a checkpoint, pretrained ``weights``, or how to train one (from
    ``weights`` when given) when the checkpoint is missing."""

    checkpoint: str | None = path_field(None)
    train: ScheduleConfig | None = None

    @model_validator(mode="after")
    def _has_source(self) -> TeacherConfig:
        if self.checkpoint is None and self.train is None and self.weights is None:
            raise ValueError("expected teacher.checkpoint, teacher.weights or a teacher.train block to train one")
        return self


class ExperimentConfig(_Strict):
    """What is trained: data, teacher (optional), student, distillation method, schedule."""

    name: str = "experiment"
    data: DataConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig | None = None
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: ScheduleConfig = Field(default_factory=ScheduleConfig)
    cache_dir: str = path_field("cache", description="cached teachers trained for searches and VOC/YOLO splits as COCO")
    source: str | None = Field(None, exclude=True, description="the YAML file this came from")

    @model_validator(mode="after")
    def _teacher_when_needed(self) -> ExperimentConfig:
        if self.distill.method != "none" and self.teacher is None:
            raise ValueError(f"distill.method {self.distill.method!r} needs a teacher block")
        if self.student.inherit and self.teacher is None:
            raise ValueError("student.inherit needs a teacher block")
        return self

    def trains_masks(self) -> bool:
        """Whether a model trained by this experiment needs instance masks: a Mask R-CNN
        student, or a Mask R-CNN teacher with a ``train`` block (a frozen one needs none)."""
        return self.student.arch in MASK_ARCHS or (
            self.teacher is not None and self.teacher.train is not None and self.teacher.arch in MASK_ARCHS)


def _check_masks_available(cfg: ExperimentConfig) -> None:
    """A Mask R-CNN that is trained needs instance masks, which VOC and YOLO splits do not have."""
    if not cfg.trains_masks():
        return
    key = "student.arch" if cfg.student.arch in MASK_ARCHS else "teacher.arch"
    arch = cfg.student.arch if key == "student.arch" else cfg.teacher.arch
    for split in ("train", "val"):
        source = getattr(cfg.data, split)
        if source is not None and source.format != "coco":
            raise UserError(f"{arch} trains on instance masks, which {source.format.upper()} data "
                            f"(data.{split}.format: {source.format}) does not have: use COCO annotations "
                            f"with segmentation, or {arch.replace('mask', 'faster')}", key=key)


# ---------------------------------------------------------------- loading and overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no Python tags)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"not valid YAML{where}: {getattr(err, 'problem', err)}", file=path) from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping at the top level", file=path)
    return data


BASE_KEY = "_base_"
"""The key naming the files an experiment or space file inherits from (a path or a list of paths,
relative to the file): they are merged key by key, later bases and the file itself winning."""


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` key by key: mappings merge recursively, any other
    value (lists included) replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_with_bases(path: str | Path, resolve_base: Callable[[dict[str, Any], Path], None] | None = None,
                    *, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of ``path`` over its :data:`BASE_KEY` files (each loaded the same way,
    so bases may have bases), without the key. ``resolve_base(mapping, folder)`` makes a base's
    relative paths absolute against its own folder before the merge (the file's own are left
    to the caller, which applies overrides first). A missing base or a cycle is a
    :class:`~raykd.errors.UserError` naming the file that refers to it."""
    path = Path(path)
    raw = load_yaml(path)
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise UserError("expected a file path or a list of file paths", file=path, key=BASE_KEY)
    chain = (*_chain, path.resolve())
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = Path(base).expanduser()
        base_path = base_path if base_path.is_absolute() else path.resolve().parent / base_path
        if base_path.resolve() in chain:
            cycle = " -> ".join(p.name for p in (*chain, base_path.resolve()))
            raise UserError(f"inherits from itself ({cycle})", file=path, key=BASE_KEY)
        if not base_path.is_file():
            raise UserError(f"base file not found: {base_path}", file=path, key=BASE_KEY)
        layer = load_with_bases(base_path, resolve_base, _chain=chain)
        if resolve_base is not None:
            resolve_base(layer, base_path.resolve().parent)
        merged = merge(merged, layer)
    return merge(merged, raw)


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (``0.5`` -> float, ``[1, 2]`` -> list, ``mgd`` -> str)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}", file=source)
        out[key.strip()] = parse_value(value)
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"cannot set {key!r}: {part!r} is not a mapping", key=key)
        node = child
    node[parts[-1]] = value


def get_dotted(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_UNION_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "coco", "voc", "yolo"}
"""Bare tags pydantic puts in an error's location for members of a union (``metric: str | list``);
composite ones carry brackets (``literal['max','min']``, ``list[str]``); the data split formats
are the tags of :data:`SplitConfig`."""


def validation_message(err: ValidationError) -> tuple[str, str]:
    """(dotted key, one-line message) of the first error pydantic found."""
    first = err.errors()[0]
    key = ""
    for part in first["loc"]:
        if isinstance(part, int):
            key += f"[{part}]"
        elif "[" not in part and part not in _UNION_TAGS:  # a union member's tag is not a key
            key += f".{part}" if key else part
    key = key or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif "input" in first and first["type"] not in ("value_error",):
        msg = f"{msg} (got {first['input']!r})"
    return key, msg.removeprefix("Value error, ")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (through unions, ``Optional`` and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def path_keys(model: type[BaseModel], *, shared_only: bool = False, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of every field marked with :func:`path_field` in ``model`` and the models
    inside it (each key once, in field order; a data split lists the keys of all its formats).
    ``shared_only``: only those every trial of a search reads."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        mark = (info.json_schema_extra or {}).get(PATH_MARK) if isinstance(info.json_schema_extra, dict) else None
        if mark is not None and (mark == "shared" or not shared_only):
            keys.append(key)
        for inner in _models_in(info.annotation):
            keys += path_keys(inner, shared_only=shared_only, prefix=f"{key}.")
    return tuple(dict.fromkeys(keys))


def relative_path(value: Any) -> bool:
    """Whether a path key's value resolves against the experiment file: a string that is not a
    URI, a torchvision weights enum (``Class.MEMBER``) or an absolute (or ``~``) path."""
    return (isinstance(value, str) and not WEIGHTS_ENUM.match(value) and not is_uri(value)
            and not Path(value).expanduser().is_absolute())


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of an experiment mapping absolute against ``base``."""
    for key in PATH_KEYS:
        value = get_dotted(raw, key)
        if relative_path(value):
            set_dotted(raw, key, str((base / value).resolve()))
        elif isinstance(value, str) and value.startswith("~") and not WEIGHTS_ENUM.match(value):
            set_dotted(raw, key, str(Path(value).expanduser()))


def experiment_from_dict(raw: dict[str, Any], *, file: str | Path | None = None) -> ExperimentConfig:
    """Validate a mapping (paths already absolute); errors name ``file`` and the dotted key."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        key, msg = validation_message(err)
        raise UserError(msg, file=file, key=key) from None
    try:
        _check_masks_available(cfg)
    except UserError as err:
        raise UserError(err.message, file=file, key=err.key) from None
    cfg.source = str(file) if file else None
    return cfg


def overridden(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the experiment mapping ``raw`` with every dotted key of ``overrides`` set
    (a ``None`` value sets null). The one way overrides reach an experiment: ``--set`` and
    ``fixed:`` (:func:`load_experiment_dict`), a trial's values (``raykd.search.trainable``),
    ``confirm.set`` (``raykd.search.confirm``), a trial rebuilt for pictures (``raykd.visualize.trial``)."""
    out = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any], *,
                    file: str | Path | None = None) -> ExperimentConfig:
    """:func:`overridden`, validated (errors name ``file`` and the key)."""
    return experiment_from_dict(overridden(raw, overrides), file=file)


def effective_values(cfg: ExperimentConfig, keys: Iterable[str]) -> dict[str, Any]:
    """What a run uses for each dotted key: the validated config's value, as the config
    normalised it (a searched ``0.65000001`` stays that; level names become strings), JSON-typed."""
    dumped = cfg.model_dump(mode="json")
    return {key: get_dotted(dumped, key) for key in keys}


def load_experiment_dict(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The experiment mapping with overrides applied and paths made absolute (not validated)."""
    path = Path(path)
    raw = overridden(load_with_bases(path, resolve_paths), overrides or {})
    resolve_paths(raw, path.resolve().parent)
    return raw


def touches(key: str | None, keys) -> bool:
    """Whether an error at dotted ``key`` concerns one of ``keys`` (the same key, inside it, or around it)."""
    return key is not None and any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in keys)


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load, override (dotted keys) and validate an experiment YAML file; an error in an
    overridden key names ``--set`` instead of the file."""
    try:
        return experiment_from_dict(load_experiment_dict(path, overrides), file=path)
    except UserError as err:
        if touches(err.key, overrides or {}):
            raise UserError(err.message, file="--set", key=err.key) from None
        raise


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (teacher cache keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


PATH_KEYS = path_keys(ExperimentConfig)
"""Every path-typed key of an experiment (derived from the :func:`path_field` marks)."""
SHARED_PATH_KEYS = path_keys(ExperimentConfig, shared_only=True)
"""The path keys every trial of a search reads: node-local when relative on a multi-node cluster."""
