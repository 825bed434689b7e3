"""Typed pipeline configuration, loaded from ``params.yaml`` (DVC's params file).

One file holds every setting; presets (``presets/<name>.yaml``) and ``key.path=value``
overrides are merged on top (:func:`merge_layers`, shared by ``simclr`` and the flow) before
validation. Validation, the cross-field rules included (batch vs workers, subsets, image size vs
stem), fails before any work with a :class:`ConfigError` whose message names the offending key
(``pretrain.batch_size: ...``). A key ``params.yaml`` leaves out takes the default below: this
file is a DVC dependency of every stage, so changing a default reruns what it affects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]  # resolved per device: components/precision.py


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ----------------------------------------------------------------------------- data
SourceKind = Literal["idx", "digits", "image_folder", "cifar"]


class SourceConfig(_Section):
    """Where a data set comes from. ``path`` may be a local folder or an ``s3://bucket/prefix``."""

    kind: SourceKind = "idx"
    path: str | None = "/usr/share/datasets/fashion-mnist"
    name: str = Field("fashion-mnist", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name
    classes: list[str] | None = None  # class names for sources that carry only integer labels
    image_size: int | None = None  # resize (square) for image folders; None keeps the source size
    channels: Literal[1, 3] | None = None  # None keeps the source channels
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # used only when the source has no split

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.kind != "digits" and not self.path:
            raise ValueError(f"source kind {self.kind!r} needs a path")
        return self


class DataConfig(_Section):
    source: SourceConfig = SourceConfig()
    transfer: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(kind="digits", path=None, name="digits")]
    )
    shard_size: int = Field(10_000, gt=0)  # images per memory-mappable shard
    split_seed: int = 0


class SubsetsConfig(_Section):
    """The validation split and class-balanced label subsets of the training split (fractions
    of the whole split; subsets never take validation images)."""

    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1])
    seed: int = 0
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # stratified; read by every choice

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"fraction {fraction} is not in (0, 1]")
        return value


# ----------------------------------------------------------------------------- model
# The ops a view may compose, in the one order they apply (whatever order ``ops`` lists them in):
# geometry first (crop + flip; without crop the image is only resized), then appearance; cutout
# last, so that its patch keeps the fill value. The default is the paper's SimCLR view.
AugmentOp = Literal["crop", "flip", "rotate", "color", "sobel", "blur", "noise", "cutout"]
AUGMENT_OPS: tuple[AugmentOp, ...] = ("crop", "flip", "rotate", "color", "sobel", "blur", "noise",
                                      "cutout")
DEFAULT_AUGMENT_OPS: tuple[AugmentOp, ...] = ("crop", "flip", "color", "blur")


class AugmentConfig(_Section):
    """SimCLR view generation (paper, appendix A), and the ops of its augmentation study.

    ``ops`` picks the ops of a view (applied in the fixed order of ``AUGMENT_OPS``): ``color``
    is colour jitter + random greyscale, ``blur`` still follows ``blur`` ("auto": off at 32 px
    and less). The per-op settings below act only when their op is in ``ops``.
    ``second_view_ops`` (default None: the same ops) gives the second view its own ops.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    color_strength: float = Field(0.5, ge=0.0)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur: bool | Literal["auto"] = "auto"  # auto: off for images of 32 px and less
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    ops: list[AugmentOp] = Field(default_factory=lambda: list(DEFAULT_AUGMENT_OPS))
    # None: both views use ``ops`` (SimCLR). A list: the second view uses these ops instead;
    # [] is the identity view (the image, only resized to the model's size): the augmentation
    # study's one-branch protocol (paper, Figure 5)
    second_view_ops: list[AugmentOp] | None = None
    rotate_angles: list[Literal[0, 90, 180, 270]] = Field(  # one drawn uniformly per image
        default_factory=lambda: [0, 90, 180, 270])
    sobel_p: float = Field(1.0, ge=0.0, le=1.0)
    noise_p: float = Field(1.0, ge=0.0, le=1.0)
    noise_sigma: tuple[float, float] = (0.05, 0.2)  # std of the additive noise, pixels in [0, 1]
    cutout_p: float = Field(1.0, ge=0.0, le=1.0)
    cutout_size: tuple[float, float] = (0.1, 0.5)  # the square's side, a fraction of the side

    @field_validator("ops", "second_view_ops", mode="before")
    @classmethod
    def _known_ops_once(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            unknown = [op for op in value if op not in AUGMENT_OPS]
            if unknown:
                raise ValueError(f"unknown op(s) {unknown}; known: {', '.join(AUGMENT_OPS)}")
            repeated = sorted({op for op in value if list(value).count(op) > 1})
            if repeated:
                raise ValueError(f"op(s) {repeated} listed more than once")
            value = [op for op in AUGMENT_OPS if op in value]  # the order they apply in
        return value

    @field_validator("rotate_angles")
    @classmethod
    def _angles_once(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one angle")
        if len(set(value)) != len(value):
            raise ValueError(f"{value} repeats an angle")
        return value

    @model_validator(mode="after")
    def _ranges_ordered(self) -> AugmentConfig:
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "cutout_size"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(low, high)}")
        low, high = self.noise_sigma
        if not 0 <= low <= high:
            raise ValueError(f"noise_sigma must satisfy 0 <= low <= high, got {(low, high)}")
        if self.crop_scale[1] > 1.0:
            raise ValueError("crop_scale upper bound must be <= 1")
        if self.cutout_size[1] > 1.0:
            raise ValueError("cutout_size upper bound must be <= 1")
        return self


class ModelConfig(_Section):
    """Encoder f (ResNet family) and projection head g."""

    arch: Literal["small", "small-bottleneck", "resnet18", "resnet34", "resnet50"] = "small"
    width: float = Field(1.0, gt=0.0)
    # auto: CIFAR stem (3x3, stride 1) for images <= 64 px, else ImageNet (7x7/2 + max-pool);
    # stride2: 3x3 stride 2, a quarter of the CIFAR stem's cost for CPU-sized runs
    stem: Literal["auto", "cifar", "stride2", "imagenet"] = "auto"
    # 2: SimCLR v1 (Linear-BN-ReLU-Linear), 3: v2; the head study's 1: one Linear (linear
    # head), 0: none (z = h, projection_dim unused)
    head_layers: Literal[0, 1, 2, 3] = 2
    head_hidden_dim: int | None = None  # None: the representation size
    projection_dim: int = Field(128, gt=0)
    # BatchNorm over the global batch when training on more than one worker (paper 2.2)
    global_bn: bool = True


class OptimConfig(_Section):
    """LARS + linear warm-up + cosine decay; lr = base_lr x B/256 (linear) or x sqrt(B) (sqrt)."""

    name: Literal["lars", "sgd"] = "lars"
    lr_scaling: Literal["linear", "sqrt"] = "linear"
    base_lr: float = Field(0.3, gt=0.0)  # 0.3 for linear, 0.075 for sqrt in the paper
    weight_decay: float = Field(1e-6, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    trust_coefficient: float = Field(0.001, gt=0.0)
    warmup_epochs: float = Field(10, ge=0.0)


LossName = Literal["nt_xent", "nt_logistic", "margin_triplet"]  # components.losses.LOSSES


class LossConfig(_Section):
    """The contrastive loss (paper Table 2; Table 4 compares each with and without l2 norm).

    ``nt_xent`` and ``nt_logistic`` use ``pretrain.temperature``; ``margin_triplet`` uses
    ``margin`` (> 0: with 0, collapsed embeddings would be a minimum).
    """

    name: LossName = "nt_xent"
    l2_normalize: bool = True  # cosine similarities; False: dot products of the raw projections
    margin: float = Field(1.0, gt=0.0)


class PretrainConfig(_Section):
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(512, gt=1)  # global batch, split evenly over workers
    temperature: float = Field(0.5, gt=0.0)
    loss: LossConfig = LossConfig()
    max_images: int | None = Field(None, gt=0)  # cap the training images (quick runs)
    # with max_images: None trains on the first max_images training images; a seed, on a
    # seeded random sample of max_images of them (the study preset)
    subset_seed: int | None = None
    precision: Precision = "fp32"
    channels_last: bool = False
    checkpoint_every: int = Field(1, gt=0)  # epochs
    knn_every: int = Field(5, ge=0)  # epochs; 0 disables the kNN monitor
    knn_k: int = Field(200, gt=0)
    knn_images: int = Field(2000, gt=0)  # labelled images used by the kNN monitor
    threads_per_worker: int | None = None  # torch intra-op threads; None: cpus_per_worker
    optim: OptimConfig = OptimConfig()


class RayConfig(_Section):
    address: str | None = None  # None: RAY_ADDRESS if set, else a local instance
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(2, ge=0)
    storage_path: str = "checkpoints"  # local folder or s3://bucket/prefix, outside DVC outs


# ----------------------------------------------------------------------------- evaluation
class LinearEvalConfig(_Section):
    """Multinomial logistic regression on frozen features; L2 strength picked on a val split."""

    l2_grid: list[float] = Field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3])
    # carved from train only where no versioned validation split exists (transfer data sets)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    epochs: int = Field(100, gt=0)
    max_train_images: int | None = Field(None, gt=0)
    # the probe's in-memory matrix (fit + val rows) x feature dim, in float32 elements (512 MiB):
    # above it, seeded row subsamples (recorded as images_<prefix>*); test rows are all scored
    max_elements: int = Field(1 << 27, gt=0)


class FinetuneConfig(_Section):
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.05, gt=0.0)
    head_lr: float | None = None  # None: same as lr
    weight_decay: float = Field(5e-4, ge=0.0)
    augment: bool = True  # crop + flip while fine-tuning
    min_steps: int = Field(0, ge=0)  # at least this many steps, however small the label set
    monitor_images: int = Field(1000, gt=0)  # validation images scored each epoch (the curve)


class RecipeConfig(_Section):
    """One candidate training recipe: overrides of the fine-tuning recipe (None: keep it)."""

    epochs: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0.0)
    augment: bool | None = None


class SupervisedConfig(_Section):
    """Baselines from random init: every candidate recipe is trained under the fine-tuning
    budget rule (steps = max(epochs x batches, min_steps)); the best on validation is kept."""

    recipes: list[RecipeConfig] = Field(default_factory=lambda: [RecipeConfig()], min_length=1)
    # the 100%-labels baseline (epochs default: evaluate.supervised_full_epochs)
    full_recipes: list[RecipeConfig] = Field(default_factory=lambda: [RecipeConfig()], min_length=1)


class KnnConfig(_Section):
    k: int = Field(200, gt=0)
    temperature: float = Field(0.1, gt=0.0)


class EvaluateConfig(_Section):
    batch_size: int = Field(512, gt=0)  # feature extraction
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    linear: LinearEvalConfig = LinearEvalConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    knn: KnnConfig = KnnConfig()
    supervised_full_epochs: int = Field(10, gt=0)  # the 100%-labels supervised baseline
    supervised: SupervisedConfig = SupervisedConfig()
    transfer_finetune: bool = False  # also fine-tune (and train from scratch) on transfer sets
    cache_dir: str = ".cache/features"  # frozen features, keyed by encoder + data hash; not a DVC out
    embedding_method: Literal["tsne", "pca"] = "tsne"  # 2-D map of test features
    embedding_points: int = Field(2000, gt=0)
    threads: int | None = Field(None, gt=0)  # torch intra-op threads; None: torch's default


# ----------------------------------------------------------------------------- tracking
class TrackingConfig(_Section):
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db
    experiment: str = "simclr"
    system_metrics: bool = False


VAL_MARK = "_val_"  # what names a validation-split metric: linear_val_top1, transfer_x_val_top1


class GateConfig(_Section):
    """A challenger becomes champion only if it clears every threshold."""

    metric: str = "linear_val_top1"  # a validation metric (*_val_*): the test split never chooses
    min_value: float = 0.0
    min_improvement: float = 0.0  # over the current champion's value of ``metric``
    max_transfer_drop: float = 0.05  # no transfer_*_val_top1 may fall further below the champion's

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str) -> str:
        if VAL_MARK not in value:
            raise ValueError(f"{value!r} is not a validation metric (*_val_*, e.g. linear_val_top1): "
                             f"the gate chooses the champion, and choices never read the test split")
        return value


class RegistryConfig(_Section):
    model_name: str = "simclr-encoder"
    gate: GateConfig = GateConfig()


# ----------------------------------------------------------------------------- studies
StudyScale = Literal["smoke", "small", "full"]


class StudyConfig(_Section):
    """How ``simclr study NAME`` runs one of the paper's ablations (``components/studies``).

    A trial's training and evaluation settings are the rest of this configuration plus the
    trial's overrides; its resources are one Ray worker's (``ray.cpus_per_worker`` CPUs, one
    GPU with ``ray.use_gpu``). ``scale`` picks the extent of every study's grid: ``smoke`` (2
    levels per axis: tests, with the ``tiny`` preset), ``small`` (what fits a 2-core machine
    with the ``study`` preset) or ``full`` (the paper's grids: the ``study-gpu`` preset).
    """

    scale: StudyScale = "small"
    max_concurrent_trials: int | None = Field(None, gt=0)  # None: as many as resources allow
    results_dir: str = "bench/results/studies"  # <results_dir>/<experiment>/results.json, ...
    # what a trial trains: SimCLR, or the supervised reference (set per trial by a study's
    # grid: the batch-epochs study's supervised curve; components/studies/supervised.py)
    trial_method: Literal["simclr", "supervised"] = "simclr"


# ----------------------------------------------------------------------------- top level
class PathsConfig(_Section):
    data: str = "data"  # canonical data sets and subsets (DVC outs)
    outputs: str = "outputs"  # models, metrics, plots (DVC outs)


# Native image size of the sources that have one (others: ``SourceConfig.image_size`` if set).
NATIVE_IMAGE_SIZE = {"digits": 8, "cifar": 32}
IMAGENET_STEM_MIN_SIZE = 32  # 7x7/2 conv + 3x3/2 max-pool: 4x smaller before the first block


class PipelineConfig(_Section):
    seed: int = 0
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    subsets: SubsetsConfig = SubsetsConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    ray: RayConfig = RayConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    study: StudyConfig = StudyConfig()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PipelineConfig:
        """Rules across sections, checked at load time (before any run is created)."""
        batch, workers = self.pretrain.batch_size, self.ray.num_workers
        if batch % workers:
            raise ValueError(f"pretrain.batch_size: {batch} is not divisible by "
                             f"ray.num_workers={workers} (the global batch is split evenly)")
        if batch // workers < 2:
            raise ValueError(f"pretrain.batch_size: {batch} gives {batch // workers} image(s) per "
                             f"worker for ray.num_workers={workers}; the contrastive loss needs >= 2")
        if self.pretrain.max_images is not None and self.pretrain.max_images < batch:
            raise ValueError(f"pretrain.max_images: {self.pretrain.max_images} is smaller than "
                             f"pretrain.batch_size={batch} (no full batch to train on)")
        from components.data.subsets import subset_tag

        tags = [subset_tag(f) for f in self.subsets.fractions]
        if len(set(tags)) != len(tags):
            raise ValueError(f"subsets.fractions: {self.subsets.fractions} repeats a fraction")
        names = [source.name for source in self.data.transfer]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"data.transfer: duplicate source names {repeated}")
        source = self.data.source
        size = source.image_size or NATIVE_IMAGE_SIZE.get(source.kind)
        if self.model.stem == "imagenet" and size is not None and size < IMAGENET_STEM_MIN_SIZE:
            raise ValueError(f"model.stem: imagenet needs images of >= {IMAGENET_STEM_MIN_SIZE} px; "
                             f"data.source ({source.name}) has {size} px (use auto or cifar)")
        return self

    def flat(self) -> dict[str, Any]:
        """The config as ``{"pretrain.optim.base_lr": 0.3, ...}`` (for MLflow params)."""
        return flatten(self.model_dump(mode="json"))

    def digest(self, *sections: str, exclude: tuple[str, ...] = ()) -> str:
        """A short stable hash of the named sections (all when none are named).

        ``exclude``: dotted keys left out (``"pretrain.knn_every"``).
        """
        dumped = self.model_dump(mode="json")
        chosen = {name: dumped[name] for name in sections} if sections else dumped
        for key in exclude:
            *parents, leaf = key.split(".")
            node = chosen
            for part in parents:
                node = node.get(part, {})
            node.pop(leaf, None)
        blob = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"pretrain.optim.base_lr=0.1"`` -> ``{"pretrain": {"optim": {"base_lr": 0.1}}}``.

    The value is parsed as YAML, so numbers, booleans, lists and ``null`` work.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML ({err})") from err
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def _read_yaml(path: Path, what: str = "") -> dict[str, Any]:
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise ConfigError(f"{label}: file not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{label}: not valid YAML ({_one_line(err)})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{label}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _format_error(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}" if key else message)
    return "invalid configuration: " + "; ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def preset_path(name_or_path: str, root: Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate if candidate.is_absolute() else root / candidate
    return root / "presets" / f"{name_or_path}.yaml"


def merge_layers(raw: dict[str, Any], preset: str | None, overrides: list[str] | None,
                 root: Path) -> dict[str, Any]:
    """``raw`` with a preset (name under ``root/presets/`` or a YAML path) and then the
    ``key.path=value`` overrides merged in: the one merge of ``simclr`` and the flow.

    ``raw`` may be a round-trip (comment-keeping) mapping; the result keeps its comments.
    """
    merged = raw
    if preset:
        merged = deep_merge(merged, _read_yaml(preset_path(preset, root), f"preset {preset!r}:"))
    for override in overrides or []:
        merged = deep_merge(merged, parse_override(override))
    return merged


def load_config(
    params: str | Path = "params.yaml",
    preset: str | None = None,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """Read ``params``, merge a preset (name under ``presets/`` or a YAML path) and overrides."""
    params = Path(params)
    return config_from_dict(merge_layers(_read_yaml(params), preset, overrides,
                                         params.resolve().parent))


def apply_to_params_file(params: str | Path, preset: str | None = None,
                         overrides: list[str] | None = None) -> PipelineConfig:
    """Merge ``preset`` and ``overrides`` into the ``params`` file itself, as ``dvc exp run -S``.

    Validated before anything is written; written (atomically) only when it changes a value,
    with the file's comments and key order kept (round-trip YAML). Only the given keys change:
    defaults are not written out, so DVC's params dependencies see exactly the changed values.
    """
    import io

    from ruamel.yaml import YAML, YAMLError

    params = Path(params)
    _read_yaml(params)  # missing / invalid / not a mapping: one clear error, as for load_config
    round_trip = YAML(typ="rt")
    round_trip.preserve_quotes = True
    try:
        original = round_trip.load(params.read_text())
    except YAMLError as err:
        raise ConfigError(f"{params}: not valid YAML ({_one_line(err)})") from None
    merged = merge_layers(original, preset, overrides, params.resolve().parent)
    cfg = config_from_dict(json.loads(json.dumps(merged)))  # plain types for validation
    if merged != original:
        text = io.StringIO()
        round_trip.dump(merged, text)
        tmp = params.with_name(f".{params.name}.tmp")
        tmp.write_text(text.getvalue())
        tmp.replace(params)
    return cfg
