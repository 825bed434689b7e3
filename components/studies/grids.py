"""The paper's studies as data: one definition each, expanded into trials at a scale.

A study has one or two table axes (rows, then columns). Each axis has levels per scale; a
level is a label and the configuration keys it sets (dotted keys, as ``--set`` takes them).
A trial is one cell of the table (a level of every axis), optionally one of the cell's
*variants* (a hyper-parameter tuned within the cell: the best on validation represents it,
as the paper tunes each loss's temperature or margin), and one seed (added to the base
configuration's ``seed``: ``--set seed=7`` replicates a whole study). Its overrides are the
study's base overrides, then the levels', then the variant's.

Two shapes of grid:

- the product of the axes' levels; a level may make another axis moot (``collapses``: no
  projection head has no output dimension), so it is crossed with that axis once, under the
  label ``-`` and without that axis's overrides;
- ``pairs``: the symmetric matrix of one axis with itself (the augmentation study): the cells
  (a, b) with a at or before b; the two levels' op lists are joined. The ops of a view apply in
  one fixed order (``AUGMENT_OPS``), so (a, b) and (b, a) are the same trial here.

Scales (``study.scale``): ``smoke`` (two levels per axis: tests), ``small`` (a 2-core
machine with ``presets/study.yaml``) and ``full`` (the paper's grids: ``presets/study-gpu.yaml``
on a GPU cluster).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from components.config import StudyScale
from components.errors import ConfigError

SCALES: tuple[StudyScale, ...] = ("smoke", "small", "full")
Overrides = Mapping[str, Any]  # {"pretrain.temperature": 0.1, ...}
PlotKind = Literal["heatmap", "bars", "curves"]
MOOT = "-"  # the label of an axis a level collapses
TRIAL_METHOD = "study.trial_method"  # simclr (default) | supervised: what a trial trains
SUPERVISED = "supervised"  # that key's value for the supervised reference (and its rows' label)
JOINED_KEYS = ("augment.ops",)  # list values joined (not replaced) when two levels meet in a pair


@dataclass(frozen=True)
class Level:
    """One value of an axis: a label and the keys it sets.

    ``variants`` (per scale): alternatives tried within the level's cells, the best on
    validation representing the cell; ``collapses``: axes that do not apply with this level.
    """

    label: str
    overrides: Overrides = field(default_factory=dict)
    variants: Mapping[StudyScale, tuple[Level, ...]] = field(default_factory=dict)
    collapses: tuple[str, ...] = ()
    value: float | None = None  # where a curve plots it (a numeric level: dim, epochs)


@dataclass(frozen=True)
class Axis:
    """A table axis: ``name`` (a short key), ``title`` (for tables and plots), levels per scale."""

    name: str
    title: str
    levels: Mapping[StudyScale, tuple[Level, ...]]


@dataclass(frozen=True)
class Trial:
    """One trial of a study: where it sits, what it sets, and its unique ``name``.

    ``cell``: one level label per axis (``-`` for a collapsed axis); ``variant``: the label of
    the variant tried ("" when the cell has none); ``seed``: the replicate, an offset from the
    base configuration's ``seed``; ``overrides``: every other key it sets over the base.
    """

    name: str
    cell: tuple[str, ...]
    variant: str
    seed: int
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Study:
    """A named grid of the paper and how to read it.

    ``metric`` is the validation metric that ranks cells and variants; ``probe_z`` also probes
    z = g(h) (the head study); ``plot`` picks the figure; ``paper``, ``question``, ``finding``
    and ``caveat`` (what differs on this data) go into the report.
    """

    name: str
    title: str
    paper: str
    question: str
    finding: str
    caveat: str
    axes: tuple[Axis, ...]
    plot: PlotKind
    base: Overrides = field(default_factory=dict)
    seeds: Mapping[StudyScale, tuple[int, ...]] = field(
        default_factory=lambda: dict.fromkeys(SCALES, (0,)))
    pairs: bool = False
    probe_z: bool = False
    metric: str = "linear_val_top1"

    def trials(self, scale: StudyScale) -> list[Trial]:
        """Every trial of the grid at ``scale``, in table order (rows, columns, variants, seeds)."""
        cells = self._pair_cells(scale) if self.pairs else self._product_cells(scale)
        trials = []
        for cell, overrides, variants in cells:
            for variant in variants or (Level(""),):
                for seed in self.seeds[scale]:
                    parts = [part for part in cell if part != MOOT]
                    label = ", ".join(parts[:1] if self.pairs and len(set(parts)) == 1 else parts)
                    name = "; ".join(part for part in (label, variant.label) if part)
                    if len(self.seeds[scale]) > 1:
                        name = f"{name}; seed {seed}"
                    trials.append(Trial(name, cell, variant.label, seed, {
                        **self.base, **overrides, **variant.overrides}))
        names = [trial.name for trial in trials]
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name}: trial names repeat at scale {scale}")
        return trials

    def _product_cells(self, scale: StudyScale) -> list[tuple[tuple[str, ...], dict, tuple]]:
        cells, seen = [], set()
        for combo in itertools.product(*(axis.levels[scale] for axis in self.axes)):
            moot = {name for level in combo for name in level.collapses}
            labels = tuple(MOOT if axis.name in moot else level.label
                           for axis, level in zip(self.axes, combo, strict=True))
            if labels in seen:
                continue
            seen.add(labels)
            overrides: dict[str, Any] = {}
            variants: tuple[Level, ...] = ()
            for axis, level in zip(self.axes, combo, strict=True):
                if axis.name not in moot:
                    overrides.update(level.overrides)
                    variants = variants or level.variants.get(scale, ())
            cells.append((labels, overrides, variants))
        return cells

    def _pair_cells(self, scale: StudyScale) -> list[tuple[tuple[str, ...], dict, tuple]]:
        (axis,) = self.axes
        levels = axis.levels[scale]
        cells = []
        for i, first in enumerate(levels):
            for second in levels[i:]:
                overrides = {**first.overrides}
                if second is not first:
                    for key, value in second.overrides.items():
                        joined = key in JOINED_KEYS and key in overrides
                        overrides[key] = [*overrides[key], *value] if joined else value
                cells.append(((first.label, second.label), overrides, ()))
        return cells

    def table_axes(self) -> tuple[tuple[str, str], ...]:
        """(name, title) of the table's row and column axes (a pairs study: the axis twice)."""
        if self.pairs:
            (axis,) = self.axes
            return ((f"{axis.name}_1", f"{axis.title} (1st)"),
                    (f"{axis.name}_2", f"{axis.title} (2nd)"))
        return tuple((axis.name, axis.title) for axis in self.axes)


def _every_scale(*levels: Level) -> dict[StudyScale, tuple[Level, ...]]:
    return dict.fromkeys(SCALES, levels)


def _values(key: str, values: Mapping[StudyScale, tuple[Any, ...]],
            label: str = "{}") -> dict[StudyScale, tuple[Level, ...]]:
    """Levels setting ``key`` to each value, per scale (labels from ``label.format(value)``)."""
    return {scale: tuple(Level(label.format(_short(v)), {key: v}, value=float(v)) for v in vs)
            for scale, vs in values.items()}


def _with_supervised(levels: dict[StudyScale, tuple[Level, ...]],
                     supervised: Mapping[StudyScale, tuple[int, ...]]
                     ) -> dict[StudyScale, tuple[Level, ...]]:
    """The batch levels, then the supervised reference's rows at the batch sizes
    ``supervised`` lists per scale (``study.trial_method: supervised``)."""
    return {scale: (*found, *(Level(f"{SUPERVISED}, batch {batch}",
                                    {"pretrain.batch_size": batch, TRIAL_METHOD: SUPERVISED},
                                    value=float(batch)) for batch in supervised[scale]))
            for scale, found in levels.items()}


def is_supervised(level: Level) -> bool:
    """Whether ``level`` makes its trials the supervised reference."""
    return level.overrides.get(TRIAL_METHOD) == SUPERVISED


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


L2_AXIS = Axis("l2", "l2 normalisation", _every_scale(
    Level("l2 norm", {"pretrain.loss.l2_normalize": True}),
    Level("no l2 norm", {"pretrain.loss.l2_normalize": False})))

# --------------------------------------------------------------------------- augmentations
# The seven ops of Figure 5 as this project's ops: "crop" is random resized crop with
# horizontal flip (the paper's crop-and-resize with flip), "color" is jitter + greyscale.
_OPS = {"crop": ["crop", "flip"], "cutout": ["cutout"], "color": ["color"], "sobel": ["sobel"],
        "noise": ["noise"], "blur": ["blur"], "rotate": ["rotate"]}
_OP_LEVELS = {name: Level(name, {"augment.ops": ops}) for name, ops in _OPS.items()}

AUGMENTATIONS = Study(
    name="augmentations",
    title="Composition of data augmentations",
    paper="Figure 5 (section 3.1)",
    question="Which pair of augmentations makes the contrastive task teach the most?",
    finding="No single transformation suffices; crop followed by colour distortion is by far "
            "the best pair (the paper's diagonal stays low, crop + colour tops the matrix).",
    caveat="The targeted ops transform one branch only; the other branch is the image itself "
           "(augment.second_view_ops: []). The paper first crops and resizes every image because "
           "ImageNet images differ in size; Fashion-MNIST images are all 28 px, so the untouched "
           "branch is the plain image. Ops apply in one fixed order here, so the matrix is "
           "symmetric (the paper's is ordered: op 1 then op 2). Blur is on for these trials "
           "(augment.blur: true; 'auto' turns it off at 32 px and less). Grey images: colour "
           "is brightness and contrast only.",
    axes=(Axis("op", "transformation", {
        "smoke": (_OP_LEVELS["crop"], _OP_LEVELS["color"]),
        "small": tuple(_OP_LEVELS.values()), "full": tuple(_OP_LEVELS.values())}),),
    plot="heatmap",
    base={"augment.second_view_ops": [], "augment.blur": True},
    pairs=True,
)

# --------------------------------------------------------------------------- colour strength
_STRENGTHS = tuple(Level(label, {"augment.color_strength": s}, value=s)
                   for label, s in (("s=1/8", 0.125), ("s=1/4", 0.25), ("s=1/2", 0.5),
                                    ("s=1", 1.0)))
_STRENGTH_BLUR = Level("s=1 + blur", {"augment.color_strength": 1.0, "augment.blur": True})

COLOUR_STRENGTH = Study(
    name="colour-strength",
    title="Strength of colour distortion",
    paper="Table 1 (section 3.2)",
    question="Does contrastive learning want stronger colour distortion than supervised learning?",
    finding="SimCLR's linear evaluation keeps rising with colour strength up to 1 (+ blur), "
            "while supervised accuracy does not (the paper's supervised column is not rerun here).",
    caveat="Fashion-MNIST is grey: only brightness and contrast act (no saturation, hue or "
           "greyscale), so expect a weaker effect than the paper's. Blur is off at 28 px unless "
           "the level says '+ blur'.",
    axes=(Axis("strength", "colour strength s", {
        "smoke": (_STRENGTHS[0], _STRENGTHS[3]),
        "small": (*_STRENGTHS, _STRENGTH_BLUR),
        "full": (*_STRENGTHS, _STRENGTH_BLUR)}),),
    plot="bars",
    seeds={"smoke": (0,), "small": (0, 1, 2), "full": (0, 1, 2)},
)

# --------------------------------------------------------------------------- projection head
_NO_HEAD = Level("none", {"model.head_layers": 0}, collapses=("dim",))
_LINEAR_HEAD = Level("linear", {"model.head_layers": 1})
_NONLINEAR_HEAD = Level("nonlinear", {"model.head_layers": 2})

HEAD = Study(
    name="head",
    title="Projection head and its output dimension",
    paper="Figure 8 and Table 3 (section 4.2)",
    question="Does a (nonlinear) projection head help, and is h better than z = g(h)?",
    finding="A nonlinear head beats a linear one by about 3 points and no head by more than 10; "
            "linear evaluation on h beats z by more than 10 points; the output dimension "
            "matters little for the nonlinear head.",
    caveat="h is the encoder's pooled output (256-d with the study preset's encoder); "
           "'none' trains on h itself (z = h), so it has no output dimension.",
    axes=(Axis("head", "projection head", {
              "smoke": (_NO_HEAD, _NONLINEAR_HEAD),
              "small": (_NO_HEAD, _LINEAR_HEAD, _NONLINEAR_HEAD),
              "full": (_NO_HEAD, _LINEAR_HEAD, _NONLINEAR_HEAD)}),
          Axis("dim", "output dimension", _values("model.projection_dim", {
              "smoke": (32, 128), "small": (32, 128, 512),
              "full": (32, 64, 128, 256, 512, 1024, 2048)}, "dim {}"))),
    plot="curves",
    seeds={"smoke": (0,), "small": (0, 1), "full": (0, 1, 2)},
    probe_z=True,
)

# --------------------------------------------------------------------------- losses
def _tuned(key: str, small: tuple[float, ...], full: tuple[float, ...],
           symbol: str) -> dict[StudyScale, tuple[Level, ...]]:
    return {"smoke": (), **{scale: tuple(Level(f"{symbol}={_short(v)}", {key: v}) for v in vs)
                           for scale, vs in (("small", small), ("full", full))}}


_TAUS_SMALL, _TAUS_FULL = (0.1, 0.2, 0.5), (0.05, 0.1, 0.2, 0.5, 1.0)
_LOSSES = (
    Level("NT-Xent", {"pretrain.loss.name": "nt_xent"},
          variants=_tuned("pretrain.temperature", _TAUS_SMALL, _TAUS_FULL, "tau")),
    Level("NT-Logistic", {"pretrain.loss.name": "nt_logistic"},
          variants=_tuned("pretrain.temperature", _TAUS_SMALL, _TAUS_FULL, "tau")),
    Level("margin triplet", {"pretrain.loss.name": "margin_triplet"},
          variants=_tuned("pretrain.loss.margin", (0.25, 0.5, 1.0), (0.1, 0.2, 0.5, 1.0, 2.0),
                          "m")),
)

LOSS = Study(
    name="loss",
    title="Contrastive loss functions, with and without l2 normalisation",
    paper="Tables 2 and 4 (section 5.1)",
    question="Which contrastive objective, and does l2 normalisation matter?",
    finding="NT-Xent wins over NT-Logistic and margin triplet (each with its own tuned "
            "temperature or margin); without l2 normalisation contrastive accuracy rises while "
            "linear evaluation falls.",
    caveat="Each cell is the best of its tuned variants on validation (temperature for the "
           "NT losses, margin for the triplet loss); the paper tuned more values and also "
           "tried semi-hard negative mining, which is not implemented here.",
    axes=(Axis("loss", "loss", {"smoke": (_LOSSES[0], _LOSSES[2]), "small": _LOSSES,
                                "full": _LOSSES}), L2_AXIS),
    plot="bars",
)

# --------------------------------------------------------------------------- temperature
TEMPERATURE = Study(
    name="temperature",
    title="Temperature of NT-Xent, with and without l2 normalisation",
    paper="Table 5 (section 5.1)",
    question="How does the temperature act, with and without l2 normalisation?",
    finding="With l2 normalisation a suitable temperature (0.1-0.5) matters a lot; without it "
            "contrastive accuracy is high but linear evaluation is poor.",
    caveat="NT-Xent only (pretrain.loss.name: nt_xent); the table also lists the final "
           "contrastive accuracy, as the paper does.",
    axes=(Axis("temperature", "temperature tau", _values("pretrain.temperature", {
              "smoke": (0.1, 0.5), "small": (0.05, 0.1, 0.5, 1.0),
              "full": (0.05, 0.1, 0.5, 1.0)}, "tau={}")), L2_AXIS),
    plot="bars",
    base={"pretrain.loss.name": "nt_xent"},
    seeds={"smoke": (0,), "small": (0, 1), "full": (0, 1, 2)},
)

# --------------------------------------------------------------------------- batch x epochs
BATCH_EPOCHS = Study(
    name="batch-epochs",
    title="Batch size and training length",
    paper="Figure 9 (section 5.2)",
    question="How much do larger batches and longer training help?",
    finding="Larger batches help most in short runs; with longer training the gap between "
            "batch sizes shrinks (more steps see more negatives).",
    caveat="The learning rate follows pretrain.optim.lr_scaling (sqrt in params.yaml, the "
           "paper's rule for small batches); the small grid has batches of 128-512 and 2-16 "
           "epochs of the study preset's 6,000-image sample (the paper: 256-8192, 100-800 "
           "epochs of ImageNet). The 'supervised' rows (dashed) train the same encoder from "
           "random init on the labels of as many images (outside the validation split) for "
           "the same batch and epochs, with the fine-tuning recipe at a linearly scaled "
           "learning rate; their encoders get the same linear probe.",
    axes=(Axis("batch", "batch size", _with_supervised(_values("pretrain.batch_size", {
              "smoke": (32, 64), "small": (128, 256, 512),
              "full": (256, 512, 1024, 2048, 4096, 8192)}, "batch {}"),
              {"smoke": (32,), "small": (128, 512), "full": (256, 8192)})),
          Axis("epochs", "epochs", _values("pretrain.epochs", {
              "smoke": (1, 2), "small": (2, 4, 8, 16), "full": (100, 200, 400, 800)},
              "epochs {}"))),
    plot="curves",
)

STUDIES: dict[str, Study] = {study.name: study for study in (
    AUGMENTATIONS, COLOUR_STRENGTH, HEAD, LOSS, TEMPERATURE, BATCH_EPOCHS)}


def study_named(name: str) -> Study:
    """The study called ``name``; a :class:`ConfigError` (one ``error:`` line) listing them."""
    if name not in STUDIES:
        raise ConfigError(f"study: unknown study {name!r}; studies: {', '.join(STUDIES)}")
    return STUDIES[name]


__all__ = ["SCALES", "STUDIES", "SUPERVISED", "TRIAL_METHOD", "Axis", "Level", "Study", "Trial",
           "is_supervised", "study_named"]
