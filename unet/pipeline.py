"""The pipeline's vocabulary and configuration: the one module the workflow's rules import.

- Protocols and splits: an `isbi` data set is prepared into the splits `train` (labelled) and
  `test`; a `ctc` data set into its sequences `01` and `02`, and its challenge test
  sequences into `{dataset}-test/01`, `02`; a `folder` data set (your own annotated images,
  `unet.folder`) into `train`.
- Runs: what one trained model is called. `fold<k>` trains on the labelled frames except the
  k-th of `folds` contiguous blocks and predicts that block (ISBI: `isbi.folds` over the
  training slices; folder: `datasets.NAME.folds` over its images, which the prepared split holds
  in a seeded order); `all` trains on all of them (ISBI: and predicts the test volume; folder:
  the model to use and export); a CTC run is named after its training sequence (`01`, `02`) and
  predicts the other one.
- Configuration: the stage sections merged per data set, checked before any job runs, with
  errors that name the config key and value; the flags each rule passes to its command.

Standard library and yaml only (plus jsonschema for the check): Snakemake reads this module
whenever it parses the workflow, on every cluster job too, so it must not import torch.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unet.errors import UsageError
from unet.settings import (
    INSTANCE_KEYS,
    MODEL_PREDICT_KEYS,
    PAPER_TILE,
    STAGE_SETTINGS,
    SettingError,
    StageSettings,
    SyntheticCellsSettings,
    SyntheticEmSettings,
    cli_flags,
    paper_values,
)
from unet.sizes import InvalidSizeError, check_prediction_tile, output_size

CHALLENGE_PROTOCOLS = ("isbi", "ctc")  # data sets fetched in a challenge's official layout
FOLDER = "folder"  # a folder of your own images and masks, read where it is (`unet.folder`)
PROTOCOLS = (*CHALLENGE_PROTOCOLS, FOLDER)
CROSS_VALIDATED = ("isbi", FOLDER)  # protocols scored by cross-validation folds
FOLDER_FOLDS = 5  # the default of `datasets.NAME.folds`
# Prepared splits per protocol, the labelled ones first.
SPLITS = {"isbi": ("train", "test"), "ctc": ("01", "02"), FOLDER: ("train",)}
LABELLED_SPLITS = {"isbi": ("train",), "ctc": ("01", "02"), FOLDER: ("train",)}
CTC_SEQUENCES = SPLITS["ctc"]
OTHER_SEQUENCE = {"01": "02", "02": "01"}
LABEL_KIND = {"isbi": "binary", "ctc": "instance"}  # unet.io.Split.kind of each protocol's labels
SYNTHETIC_KIND = {"isbi": "em", "ctc": "cells"}  # `unet synthesize KIND` of each protocol
SYNTHETIC_SETTINGS = {"isbi": SyntheticEmSettings, "ctc": SyntheticCellsSettings}
ALL_SLICES = "all"
FOLD = "fold"
RUN_PATTERN = rf"{FOLD}\d+|{ALL_SLICES}|\d\d"  # any run name, as a wildcard constraint
FOLD_RUN_PATTERN = rf"{FOLD}\d+"  # the cross-validation runs (ISBI, folder)
SEQUENCE_PATTERN = "|".join(CTC_SEQUENCES)  # a CTC sequence, as a run or a split
LABELLED_SPLIT_PATTERN = "|".join(dict.fromkeys(s for splits in LABELLED_SPLITS.values() for s in splits))
# Labelled training frames of the data sets whose count is known before they are fetched.
KNOWN_LABELLED_FRAMES = {"isbi2012": 30}


class ConfigError(UsageError):
    """A configuration that cannot run; the message names the key and the value."""


# --- runs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One trained model of a data set: the split it trains on, the fold it holds out, the split it predicts."""

    protocol: str
    name: str
    split: str
    fold: int | None
    predicts: str | None  # None: a folder data set's model on all images, which has nothing left to predict
    held_out: str | None = None  # another split whose labelled frames training scores (CTC: the other sequence)

    def fold_flags(self, folds: int) -> str:
        """`--fold K --folds N` for a fold run (training holds the block out; prediction and evaluation take it),
        else nothing."""
        return "" if self.fold is None else f"--fold {self.fold} --folds {folds}"


def parse_run(protocol: str, name: str, folds: int | None = None) -> Run:
    """The `Run` a run name stands for; a `UsageError` for a name the protocol does not know."""
    if protocol in CROSS_VALIDATED:
        if name == ALL_SLICES:
            return Run(protocol, name, "train", None, "test" if protocol == "isbi" else None)
        match = re.fullmatch(rf"{FOLD}(\d+)", name)
        if match and (folds is None or int(match[1]) < folds):
            return Run(protocol, name, "train", int(match[1]), "train")
        limit = f"fold0 to fold{folds - 1}" if folds else "fold<k>"
        raise UsageError(f"{protocol} run {name!r}: expected {ALL_SLICES!r} or {limit}")
    if protocol == "ctc":
        if name in OTHER_SEQUENCE:
            return Run(protocol, name, name, None, OTHER_SEQUENCE[name], held_out=OTHER_SEQUENCE[name])
        raise UsageError(f"ctc run {name!r}: expected a sequence, {' or '.join(CTC_SEQUENCES)}")
    raise UsageError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def held_out_frames(frames: list[int], folds: int, fold: int) -> list[int]:
    """The frames held out by cross-validation fold `fold` (0-based): its block of `folds` contiguous blocks.

    Blocks keep the order of `frames` and differ in size by at most one, the
    larger ones first (30 slices, 3 folds: 0-9, 10-19, 20-29). Contiguous blocks,
    because neighbouring EM sections are correlated.
    """
    if not 2 <= folds <= len(frames):
        raise UsageError(f"folds must be between 2 and the number of frames ({len(frames)}), found {folds}")
    if not 0 <= fold < folds:
        raise UsageError(f"fold must be between 0 and {folds - 1}, found {fold}")
    size, larger = divmod(len(frames), folds)
    start = fold * size + min(fold, larger)
    return [int(frame) for frame in frames[start : start + size + (fold < larger)]]


def add_fold_arguments(parser, selected: str) -> None:
    """`--fold K --folds N`: select the frames held out by cross-validation fold K (`held_out_frames`)."""
    parser.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help=f"{selected} the labelled frames held out by cross-validation fold K (0-based) "
        "of --folds contiguous blocks",
    )
    parser.add_argument("--folds", type=int, metavar="N", help="number of cross-validation folds (with --fold)")


def fold_of(args) -> tuple[int, int] | None:
    """(fold, folds) from `add_fold_arguments`' flags, or None when no fold is selected."""
    if (args.fold is None) != (args.folds is None):
        raise UsageError("--fold and --folds go together")
    return None if args.fold is None else (args.fold, args.folds)


def fold_run(fold: int) -> str:
    return f"{FOLD}{fold}"


def scored_runs(protocol: str, folds: int | None) -> list[str]:
    """The runs whose predictions are scored: the cross-validation folds (ISBI, folder), or both CTC directions."""
    return [fold_run(k) for k in range(folds)] if protocol in CROSS_VALIDATED else list(CTC_SEQUENCES)


def cross_validation_folds(config: Mapping[str, Any], dataset: str) -> int | None:
    """The folds of a data set's cross-validation: `isbi.folds`, or a folder data set's own `folds`; None for CTC."""
    spec = config["datasets"][dataset]
    if spec["protocol"] == "isbi":
        return config["isbi"]["folds"]
    return spec.get("folds", FOLDER_FOLDS) if spec["protocol"] == FOLDER else None


def trains_on_all(config: Mapping[str, Any], dataset: str) -> bool:
    """Whether the run trains a model on all labelled frames (run `all`): ISBI's for the test volume
    (`isbi.predict_test`), and every folder data set's, the model its users take."""
    protocol = config["datasets"][dataset]["protocol"]
    return protocol == FOLDER or (protocol == "isbi" and config["isbi"]["predict_test"])


# Where the evaluation stage writes the scores of one run and seed (tables read them back).
SCORE_PATH = "results/scores/{dataset}/{run}/seed{seed}.json"
_SCORE_NAME = re.compile(rf"(?P<dataset>[^/]+)/(?P<run>{RUN_PATTERN})/seed(?P<seed>\d+)\.json$")


def parse_score_path(path: str | Path) -> tuple[str, str, int] | None:
    """(dataset, run, seed) of a score file named like `SCORE_PATH`, or None."""
    match = _SCORE_NAME.search(Path(path).as_posix())
    return (match["dataset"], match["run"], int(match["seed"])) if match else None


# A file of a trained model's folder, results/models/{dataset}/{run}/seed{seed}/NAME.
_MODEL_FILE = re.compile(rf"(?P<dataset>[^/]+)/(?P<run>{RUN_PATTERN})/seed(?P<seed>\d+)/[^/]+$")


def parse_model_file(path: str | Path) -> tuple[str, str, int] | None:
    """(dataset, run, seed) of a file in a model's folder (`model.pt`, `run.json`), or None."""
    match = _MODEL_FILE.search(Path(path).as_posix())
    return (match["dataset"], match["run"], int(match["seed"])) if match else None


# --- a folder data set's files (`unet.folder` reads them) ---------------------------------------------------

FOLDER_IMAGES = "images"
FOLDER_MASKS = ("masks", "labels")  # either name; not both


def folder_layout(source: str | Path) -> tuple[Path, Path]:
    """A folder data set's `images/` folder and its `masks/` (or `labels/`); a `UsageError` names what is
    missing."""
    source = Path(source)
    if not source.is_dir():
        raise UsageError(f"{source}: no such folder")
    masks = [source / name for name in FOLDER_MASKS if (source / name).is_dir()]
    if len(masks) > 1:
        raise UsageError(f"{source}: has both {FOLDER_MASKS[0]}/ and {FOLDER_MASKS[1]}/; keep the masks in one of them")
    if not ((source / FOLDER_IMAGES).is_dir() and masks):
        raise UsageError(
            f"{source}: expected a folder {FOLDER_IMAGES}/ and a folder {FOLDER_MASKS[0]}/ (or {FOLDER_MASKS[1]}/) "
            f"in it, found {sorted(path.name for path in source.iterdir())}"
        )
    return source / FOLDER_IMAGES, masks[0]


def visible_entries(folder: Path) -> list[Path]:
    """The entries of `folder` in name order, hidden ones (`.DS_Store`, `._a.png`) left out."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def folder_files(source: str | Path) -> list[Path]:
    """Every file of a folder data set that `unet prepare` reads: what its prepared split depends on."""
    return [path for folder in folder_layout(source) for path in visible_entries(folder)]


# --- the configuration --------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in, recursively for nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def typed_command_line_values(value: Any) -> Any:
    """`value` (a `--config` override) with its strings that YAML reads as a number, boolean or null typed so.

    Snakemake reads a nested `--config` value such as `model={depth: 3}` or `seeds=[0,1]`
    with YAML's BaseLoader, which keeps every scalar a string ("3"), and a top-level
    `mirror=null` as the string "null"; a config file would have given 3 and None.
    Other strings (names, paths, URLs) are left as they are.
    """
    if isinstance(value, Mapping):
        return {key: typed_command_line_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed_command_line_values(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if parsed is None or isinstance(parsed, (bool, int, float)):
            return parsed
    return value


def stage_settings(config: Mapping[str, Any], stage: str, dataset: str) -> StageSettings:
    """The settings of `stage` for `dataset`: the global section with the data set's own section merged in.

    A bad value is a `ConfigError` naming the key where it was set (`train.input_size`, or
    `datasets.NAME.train.input_size` for a data set's own value).
    """
    if stage not in STAGE_SETTINGS:
        raise KeyError(f"unknown stage {stage!r}; stages are {tuple(STAGE_SETTINGS)}")
    if dataset not in config["datasets"]:
        raise KeyError(f"experiment {dataset!r} is not a key of `datasets` (known: {sorted(config['datasets'])})")
    settings_class = STAGE_SETTINGS[stage]
    own = config["datasets"][dataset].get(stage, {})
    try:
        settings_class.from_mapping(own, f"datasets.{dataset}.{stage}")  # named where they are set
        return settings_class.from_mapping(deep_merge(config.get(stage, {}), own))
    except SettingError as error:
        raise ConfigError(f"config: {error}") from None


def stage_flags(config: Mapping[str, Any], dataset: str, *stages: str) -> str:
    """The flags of `stages`' settings for `dataset`, as its rule passes them to the stage's command."""
    return " ".join(stage_settings(config, stage, dataset).as_flags() for stage in stages)


def check_config(config: Mapping[str, Any], schema: str | Path) -> None:
    """Check the merged configuration before any job runs: the schema, then each experiment's settings and the
    rules between them (tile sizes valid for the depth, folds within the training slices). The first problem
    is a `ConfigError` that names the key and the value."""
    _check_schema(config, schema)
    unknown = [name for name in config["experiments"] if name not in config["datasets"]]
    if unknown:
        raise ConfigError(
            f"config: experiments {unknown} are not keys of `datasets` (known: {sorted(config['datasets'])})"
        )
    for dataset in config["datasets"]:
        _check_protocol_keys(config, dataset)
    for dataset in config["experiments"]:
        for stage in STAGE_SETTINGS:  # what the schema cannot say, e.g. that a value is finite
            stage_settings(config, stage, dataset)
        _check_tile_sizes(config, dataset)
        _check_folds(config, dataset)


def _check_schema(config: Mapping[str, Any], schema: str | Path) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema).read_text()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise ConfigError(f"config: {key}: {error.message}")


def _check_tile_sizes(config: Mapping[str, Any], dataset: str) -> None:
    depth = stage_settings(config, "model", dataset).depth
    checks = {"train": output_size, "predict": check_prediction_tile}
    for stage, check in checks.items():
        size = stage_settings(config, stage, dataset).input_size
        try:
            check(size, depth)
        except InvalidSizeError as error:
            raise ConfigError(
                f"config: {_where(config, dataset, stage, 'input_size')} = {size}: {error} (model.depth = {depth})"
            ) from None


# Keys of `datasets.NAME` that only one kind of protocol takes.
FOLDER_KEYS = ("folds", "ignore_label", "channel")
CHALLENGE_KEYS = ("checksums", "test_source", "test_checksums", "synthetic")


def _check_protocol_keys(config: Mapping[str, Any], dataset: str) -> None:
    spec = config["datasets"][dataset]
    folder = spec["protocol"] == FOLDER
    for key in CHALLENGE_KEYS if folder else FOLDER_KEYS:
        if key in spec:
            kind = "isbi and ctc" if folder else "folder"
            also = " (isbi data sets take isbi.folds)" if key == "folds" else ""
            raise ConfigError(f"config: datasets.{dataset}.{key}: a key of protocol {kind} data sets only{also}")
    if folder and spec["source"] == "synthetic":
        raise ConfigError(
            f"config: datasets.{dataset}.source = 'synthetic': a folder data set's source is the folder of its images"
        )


def _check_folds(config: Mapping[str, Any], dataset: str) -> None:
    spec = config["datasets"][dataset]
    if spec["protocol"] == FOLDER:
        _check_folder(config, dataset)
        return
    if spec["protocol"] != "isbi":
        return
    frames = (
        synthetic_settings(config, dataset).train_slices
        if spec["source"] == "synthetic"
        else KNOWN_LABELLED_FRAMES.get(dataset)
    )
    folds = config["isbi"]["folds"]
    if frames is not None and folds > frames:
        raise ConfigError(
            f"config: isbi.folds = {folds}: more folds than the {frames} labelled training slices of {dataset}"
        )


def _check_folder(config: Mapping[str, Any], dataset: str) -> None:
    """The folder exists in the documented layout and holds at least as many images as the folds."""
    spec = config["datasets"][dataset]
    try:
        images, _ = folder_layout(spec["source"])
    except UsageError as error:
        raise ConfigError(f"config: datasets.{dataset}.source: {error}") from None
    count, folds = len(visible_entries(images)), cross_validation_folds(config, dataset)
    if count < folds:
        where = f"datasets.{dataset}.folds" if "folds" in spec else f"datasets.{dataset}.folds (default)"
        raise ConfigError(
            f"config: {where} = {folds}: more folds than the {count} images in {images}; add images or lower the folds"
        )


def synthetic_settings(config: Mapping[str, Any], dataset: str) -> StageSettings:
    """The generator settings of a synthetic data set (`datasets.NAME.synthetic`)."""
    spec = config["datasets"][dataset]
    try:
        return SYNTHETIC_SETTINGS[spec["protocol"]].from_mapping(
            spec.get("synthetic", {}), f"datasets.{dataset}.synthetic"
        )
    except SettingError as error:
        raise ConfigError(f"config: {error}") from None


def _where(config: Mapping[str, Any], dataset: str, stage: str, key: str) -> str:
    """The config key that sets `stage.key` for `dataset`: its own section's, if it has one."""
    own = config["datasets"][dataset].get(stage, {})
    return f"datasets.{dataset}.{stage}.{key}" if key in own else f"{stage}.{key}"


# Snakemake priorities: the data jobs that trainings wait for first (they take seconds), then the trainings,
# longest first, so that the longest ones do not start last and leave cores idle at the end.
DATA_PRIORITY = 1000
TRAINING_PRIORITY = 100  # the costliest training's; the others' in proportion (at least 1)


def training_priority(config: Mapping[str, Any], dataset: str) -> int:
    """The Snakemake priority of `dataset`'s training jobs, in proportion to their cost among the experiments."""
    costs = {name: training_cost(config, name) for name in config["experiments"]}
    return max(1, round(TRAINING_PRIORITY * training_cost(config, dataset) / max(costs.values())))


def training_cost(config: Mapping[str, Any], dataset: str) -> float:
    """What one training of `dataset` costs, in paper-network steps: iterations x tiles per step x the tile's area
    x the width squared, each relative to the paper's network (572 px, 64 channels)."""
    train, model = stage_settings(config, "train", dataset), stage_settings(config, "model", dataset)
    relative_step = train.batch_size * (train.input_size / PAPER_TILE) ** 2 * (model.base_channels / 64) ** 2
    return train.iterations * relative_step


def model_predict_flags(config: Mapping[str, Any], dataset: str) -> str:
    """The `unet train --predict-KEY` flags: the prediction defaults a trained model carries for its users."""
    predict = stage_settings(config, "predict", dataset)
    return cli_flags({f"predict_{key}": getattr(predict, key) for key in MODEL_PREDICT_KEYS})


def prepare_flags(config: Mapping[str, Any], dataset: str) -> str:
    """The `unet prepare` flags of a data set beyond its protocol: a folder data set's folds, `ignore_label` and
    `channel`; none for the others."""
    spec = config["datasets"][dataset]
    if spec["protocol"] != FOLDER:
        return ""
    keys = {"folds": cross_validation_folds(config, dataset)} | {key: spec.get(key) for key in FOLDER_KEYS[1:]}
    return cli_flags(keys)


def instance_flags(config: Mapping[str, Any], dataset: str) -> str:
    """`--min-area`, `--connectivity`, `--threshold`: how `unet evaluate split` makes instances of a prediction, as
    the data set's `predict` section says `unet predict` makes them."""
    predict = stage_settings(config, "predict", dataset)
    return cli_flags({key: getattr(predict, key) for key in INSTANCE_KEYS})


def synthetic_flags(config: Mapping[str, Any], dataset: str) -> str:
    """The `unet synthesize KIND` arguments of a synthetic data set."""
    protocol = config["datasets"][dataset]["protocol"]
    return f"{SYNTHETIC_KIND[protocol]} {synthetic_settings(config, dataset).as_flags()}"


def fetch_flags(config: Mapping[str, Any], dataset: str, part: str = "train") -> str:
    """The `unet fetch` flags for `dataset`: a `mirror` overrides every real source; otherwise the data set's
    `source` (or `test_source`) and `checksums` (or `test_checksums`) are passed on."""
    spec = config["datasets"][dataset]
    flags = ["--protocol", spec["protocol"], "--part", part]
    if config.get("mirror"):
        flags += ["--mirror", str(config["mirror"])]
    else:
        source = spec.get("test_source" if part == "test" else "source")
        flags += ["--source", source] if source else []
        checksums = spec.get("test_checksums" if part == "test" else "checksums") or {}
        for name, checksum in checksums.items():
            flags += ["--checksum", f"{name}={checksum}"]
    return " ".join(shlex.quote(flag) for flag in flags)


def paper_deviations(config: Mapping[str, Any], dataset: str) -> str:
    """A short account of how `dataset`'s settings differ from the paper's, with the schedule we chose."""
    differences = []
    for stage, settings_class in STAGE_SETTINGS.items():
        settings = stage_settings(config, stage, dataset)
        differences += [
            f"{key} {getattr(settings, key)} (paper {paper})"
            for key, paper in paper_values(settings_class).items()
            if getattr(settings, key) != paper
        ]
    train = stage_settings(config, "train", dataset)
    schedule = (
        f"{train.iterations} iterations, learning rate {train.learning_rate} ({train.lr_schedule}; not published)"
    )
    return ", ".join(differences + [schedule]) if differences else f"the paper's settings, {schedule}"
