"""The settings of each stage: one dataclass per config section, with its defaults, bounds and help.

Each field is a key of its config section (`train.input_size`), a flag of its stage's command
(`unet train --input-size`) and a property of `workflow/schemas/config.schema.yaml`; the
flags and the configuration check follow from the dataclass, and a test keeps the schema's
bounds equal to these. Fields marked `paper=True` hold the value the paper states; every other
default is our choice, explained in config/README.md.

Standard library only: the workflow reads this module whenever Snakemake parses the rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from unet.errors import UsageError

PAPER_TILE = 572  # the paper's input tile side (Fig. 1): 388 x 388 outputs
PRECISIONS = ("auto", "bf16", "fp32")  # `unet.device` says what `auto` means on each device


class SettingError(UsageError):
    """A setting out of its bounds, of the wrong type, or unknown; the message names its config key."""


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    exclusive_maximum: float | None = None,
    choices: tuple | None = None,
    pattern: str | None = None,
    paper: bool = False,
):
    """A settings field: its default, its flag's help text, its bounds (as the schema writes them), and
    whether the default is the paper's value."""
    bounds = {
        "minimum": minimum,
        "maximum": maximum,
        "exclusiveMinimum": exclusive_minimum,
        "exclusiveMaximum": exclusive_maximum,
        "enum": choices,
        "pattern": pattern,
    }
    metadata = {"help": help, "paper": paper, "bounds": {k: v for k, v in bounds.items() if v is not None}}
    return field(default=default, metadata=metadata)


class StageSettings:
    """Base of the settings dataclasses: checks every field against its type and bounds on creation."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        _check(type(self), dataclasses.asdict(self), lambda key: f"{self.SECTION}.{key}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str | None = None):
        """The settings of a config section; an unknown key or a bad value is a `SettingError` naming it as
        `where.key` (default: the section's name)."""
        where = where or cls.SECTION
        known = [spec.name for spec in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingError(f"{where}: unknown keys {unknown} (known: {known})")
        _check(cls, values, lambda key: f"{where}.{key}")
        return cls(**values)

    def as_flags(self) -> str:
        """These settings as the flags of their stage's command (`cli_flags`)."""
        return cli_flags(dataclasses.asdict(self))


def _check(cls: type, values: Mapping[str, Any], name_of) -> None:
    """Raise a `SettingError` for the first value of `values` that breaks its field's type or bounds."""
    for spec in dataclasses.fields(cls):
        if spec.name in values:
            problem = _problem(values[spec.name], spec)
            if problem:
                raise SettingError(f"{name_of(spec.name)} = {values[spec.name]!r}: {problem}")


def _problem(value: Any, spec: dataclasses.Field) -> str | None:
    """What is wrong with `value` for the field `spec`, or None."""
    expected = type(spec.default)
    numeric = expected is float and isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (numeric or (type(value) is expected)):
        return f"must be of type {expected.__name__}"
    if numeric and not math.isfinite(value):  # `.inf` (YAML) or `inf` (a flag) passes a lower bound
        return "must be a finite number"
    bounds = spec.metadata["bounds"]
    checks = {
        "minimum": lambda limit: value >= limit,
        "maximum": lambda limit: value <= limit,
        "exclusiveMinimum": lambda limit: value > limit,
        "exclusiveMaximum": lambda limit: value < limit,
        "enum": lambda options: value in options,
        "pattern": lambda pattern: re.fullmatch(pattern, value),
    }
    words = {
        "minimum": "must be >=",
        "maximum": "must be <=",
        "exclusiveMinimum": "must be >",
        "exclusiveMaximum": "must be <",
        "enum": "must be one of",
        "pattern": "must match",
    }
    for name, limit in bounds.items():
        if not checks[name](limit):
            return f"{words[name]} {list(limit) if name == 'enum' else limit}"
    return None


# --- the six stage sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightmapSettings(StageSettings):
    """The `weightmap` section: w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) (paper, section 3)."""

    SECTION: ClassVar[str] = "weightmap"
    w0: float = setting(10.0, "border term height (paper: 10)", minimum=0, paper=True)
    sigma: float = setting(5.0, "border term width in pixels (paper: about 5)", exclusive_minimum=0, paper=True)
    ignore_margin: int = setting(
        5, "pixels around an unannotated cell that also get no weight (the cell's extent is approximate)", minimum=0
    )
    separation: float = setting(
        3.0,
        "instance labels: cell pixels within this many pixels of another cell become background, the border "
        "that splits touching cells (3: a border 6 px wide; 1.5: the 8 neighbours, 2 px)",
        minimum=1,
    )


@dataclass(frozen=True)
class ModelSettings(StageSettings):
    """The `model` section: the network's size (the paper's network by default)."""

    SECTION: ClassVar[str] = "model"
    base_channels: int = setting(64, "feature channels of the first level, doubled per level", minimum=1, paper=True)
    depth: int = setting(4, "number of 2x2 poolings", minimum=1, maximum=6, paper=True)
    dropout: float = setting(
        0.5, "dropout probability after the last two contracting levels", minimum=0, exclusive_maximum=1, paper=True
    )


@dataclass(frozen=True)
class AugmentSettings(StageSettings):
    """The `augment` section: the training samples' deformations (paper, section 3.1)."""

    SECTION: ClassVar[str] = "augment"
    elastic_grid: int = setting(
        3,
        "control points per axis of the coarse displacement grid spanning the input tile (paper: 3)",
        minimum=2,
        paper=True,
    )
    elastic_std: float = setting(
        10.0,
        "standard deviation in pixels of each component of a coarse displacement "
        "(paper: 10; 0 = no elastic deformation)",
        minimum=0,
        paper=True,
    )
    rotation: float = setting(
        180.0,
        "rotation angle drawn uniformly from [-ROTATION, ROTATION] degrees (180 = any orientation; 0 = none)",
        minimum=0,
        maximum=180,
    )
    flip: bool = setting(True, "mirror the tile with probability 1/2")
    gray_contrast: float = setting(
        0.1,
        "contrast factor drawn from [1 - C, 1 + C], applied around the tile mean (0 = none)",
        minimum=0,
        exclusive_maximum=1,
    )
    gray_brightness: float = setting(
        0.1, "offset drawn from [-B, B] added to the normalised tile (0 = none)", minimum=0
    )

    @classmethod
    def identity(cls) -> AugmentSettings:
        """Zero strength: plain random crops with mirrored context."""
        return cls(elastic_std=0.0, rotation=0.0, flip=False, gray_contrast=0.0, gray_brightness=0.0)


@dataclass(frozen=True)
class TrainSettings(StageSettings):
    """The `train` section; config/README.md explains the defaults."""

    SECTION: ClassVar[str] = "train"
    iterations: int = setting(60000, "optimiser steps", minimum=1)
    learning_rate: float = setting(0.003, "peak learning rate, for the weighted-mean loss", exclusive_minimum=0)
    lr_schedule: str = setting(
        "poly", "constant, or poly: lr * (1 - step / iterations) ** 0.9", choices=("constant", "poly")
    )
    warmup: int = setting(200, "iterations of linear warm-up: lr * (step + 1) / warmup", minimum=0)
    momentum: float = setting(0.99, "SGD momentum (paper: 0.99)", minimum=0, exclusive_maximum=1, paper=True)
    grad_clip: float = setting(1.0, "largest global L2 norm of the gradient, a guard (0 = no clipping)", minimum=0)
    average_last: float = setting(
        0.0,
        "the kept model is the mean of the weights over this fraction of the last iterations (0 = the last weights)",
        minimum=0,
        maximum=1,
    )
    batch_size: int = setting(1, "tiles per step (paper: 1)", minimum=1, paper=True)
    input_size: int = setting(PAPER_TILE, "side of the input tile (paper: 572)", minimum=1, paper=True)
    checkpoint_every: int = setting(5000, "iterations between checkpoints", minimum=1)
    log_every: int = setting(100, "iterations between rows of log.csv", minimum=1)
    val_every: int = setting(1000, "iterations between held-out scores", minimum=1)
    device: str = setting(
        "auto", "auto (cuda if available), cpu, cuda or cuda:N", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$"
    )
    precision: str = setting(
        "auto",
        "auto = bf16 autocast where the device computes bf16 faster than fp32 (CUDA; CPUs with AMX-BF16, AMD CPUs "
        "with AVX512-BF16), else fp32; bf16 or fp32 to force one (the loss stays fp32)",
        choices=PRECISIONS,
    )
    channels_last: bool = setting(
        True, "channels_last memory format where it is the faster one: GPUs and AVX-512 CPUs (not AVX2 ones)"
    )
    compile: bool = setting(False, "torch.compile the forward pass and loss")


@dataclass(frozen=True)
class PredictSettings(StageSettings):
    """The `predict` section: overlap-tile prediction (paper, sections 2 and 3)."""

    SECTION: ClassVar[str] = "predict"
    input_size: int = setting(
        PAPER_TILE, "largest input tile side, a valid U-Net input (paper: 572); results do not depend on it", minimum=1
    )
    batch_size: int = setting(8, "tiles per forward pass, augmented variants included", minimum=1)
    tta: str = setting(
        "d4",
        "test-time augmentation: d4 = 8 rotations/flips (EM), flips = 4 flips (cells), none",
        choices=("none", "flips", "d4"),
    )
    precision: str = setting(
        "auto",
        "auto = bf16 autocast where the device computes bf16 faster than fp32 (CUDA; CPUs with AMX-BF16, AMD CPUs "
        "with AVX512-BF16), else fp32; bf16 or fp32 to force one",
        choices=PRECISIONS,
    )
    min_area: int = setting(0, "instances smaller than this many pixels are removed", minimum=0)
    connectivity: int = setting(8, "pixel connectivity of instances", choices=(4, 8))
    threshold: float = setting(
        0.5,
        "instances are made of the pixels whose cell probability exceeds this; 0.5 = the class with the higher "
        "probability (the release's arg-max)",
        exclusive_minimum=0,
        exclusive_maximum=1,
    )


@dataclass(frozen=True)
class EvaluateSettings(StageSettings):
    """The `evaluate` section: the settings of `unet evaluate isbi` (CTC scoring has none)."""

    SECTION: ClassVar[str] = "evaluate"
    rand_normalisation: str = setting(
        "n2",
        "Rand error pair counting: n2 = Fiji since January 2015 (sums of squares), pairs = Fiji before (n(n-1)/2)",
        choices=("n2", "pairs"),
    )
    warping_radius: int = setting(
        20, "window radius in pixels for telling splits from hole deletions (the challenge's 20)", minimum=1
    )


@dataclass(frozen=True)
class SyntheticEmSettings(StageSettings):
    """`datasets.NAME.synthetic` of a synthetic isbi data set: `unet synthesize em` (the demo's EM sections)."""

    SECTION: ClassVar[str] = "synthetic"
    seed: int = setting(0, "random seed: the same seed gives the same files", minimum=0)
    size: int = setting(256, "image height and width in pixels", minimum=32)
    train_slices: int = setting(12, "labelled training sections", minimum=1)
    test_slices: int = setting(4, "unlabelled test sections", minimum=1)
    cell_size: float = setting(32.0, "typical cell diameter in pixels", exclusive_minimum=0)


@dataclass(frozen=True)
class SyntheticCellsSettings(StageSettings):
    """`datasets.NAME.synthetic` of a synthetic ctc data set: `unet synthesize cells` (the demo's cells)."""

    SECTION: ClassVar[str] = "synthetic"
    seed: int = setting(0, "random seed: the same seed gives the same files", minimum=0)
    size: int = setting(256, "image height and width in pixels", minimum=32)
    frames: int = setting(8, "frames per sequence (01 and 02)", minimum=1)
    annotated: int = setting(4, "frames per sequence with a SEG ground truth", minimum=1)
    cell_count: int = setting(8, "cells per sequence", minimum=1)
    cell_size: float = setting(64.0, "typical cell diameter in pixels", exclusive_minimum=0)


# The prediction settings that belong to the data, not the machine: a model carries them for its users
# (`unet train --predict-KEY`, saved in model.pt), and `unet predict` takes them as its defaults.
MODEL_PREDICT_KEYS = ("tta", "min_area", "connectivity", "threshold")
# How instances are made of a prediction (`unet.predict.instance_masks`): `unet evaluate split` takes them too.
INSTANCE_KEYS = ("min_area", "connectivity", "threshold")


STAGE_SETTINGS: dict[str, type[StageSettings]] = {
    cls.SECTION: cls
    for cls in (WeightmapSettings, ModelSettings, AugmentSettings, TrainSettings, PredictSettings, EvaluateSettings)
}


# --- settings <-> command-line flags ------------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser,
    settings_class: type[StageSettings],
    defaults: StageSettings | None = None,
    *,
    keys: tuple[str, ...] | None = None,
    prefix: str = "",
    title: str | None = None,
    unset: str | None = None,
) -> None:
    """One flag per field (`input_size` -> `--input-size`), in a group titled after the config section.

    `defaults` replaces the dataclass defaults; `keys` limits the fields, and `prefix` names their flags
    `--PREFIX-KEY` (for another stage's settings). With `unset` (what decides instead, e.g. "the model's"),
    a flag not given is None and its help names that source before the dataclass default.
    """
    section = settings_class.SECTION
    group = parser.add_argument_group(title or f"{section} settings (config section `{section}`)")
    defaults = defaults or settings_class()
    for spec in dataclasses.fields(settings_class):
        if keys is not None and spec.name not in keys:
            continue
        default = getattr(defaults, spec.name)
        flag = _flag(spec.name, prefix)
        shown = f"{unset}, else {default}" if unset else "%(default)s"
        options = {"default": None if unset else default, "help": f"{spec.metadata['help']} (default: {shown})"}
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            choices = spec.metadata["bounds"].get("enum")
            group.add_argument(flag, type=type(default), choices=choices, **options)


def from_arguments(
    settings_class: type[StageSettings],
    args: argparse.Namespace,
    *,
    keys: tuple[str, ...] | None = None,
    prefix: str = "",
    defaults: StageSettings | None = None,
):
    """The settings that `add_arguments` flags describe, from the parsed `args`; fields outside `keys`, and flags
    left unset (None), come from `defaults`. A bad value names its flag."""
    values = dataclasses.asdict(defaults or settings_class())
    for spec in dataclasses.fields(settings_class):
        given = getattr(args, _flag(spec.name, prefix)[2:].replace("-", "_"), None)
        if (keys is None or spec.name in keys) and given is not None:
            values[spec.name] = given
    _check(settings_class, values, lambda key: _flag(key, prefix))
    return settings_class(**values)


def _flag(key: str, prefix: str = "") -> str:
    return "--" + (f"{prefix}-" if prefix else "") + key.replace("_", "-")


def cli_flags(settings: Mapping[str, Any]) -> str:
    """Settings as flags: `{"input_size": 572, "compile": False}` -> `--input-size 572 --no-compile`.

    Booleans become `--flag` / `--no-flag`, lists repeat their values, None is left out.
    """
    flags = []
    for key, value in settings.items():
        flag = _flag(key)
        if isinstance(value, bool):
            flags.append(flag if value else _flag(key, "no"))
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def paper_values(settings_class: type[StageSettings]) -> dict[str, Any]:
    """The fields whose default is the paper's value, with that value."""
    return {spec.name: spec.default for spec in dataclasses.fields(settings_class) if spec.metadata["paper"]}
