"""The seam between the workflow and the package: the settings dataclasses, the config file, the schema and the
commands' flags agree; the configuration check names the key; the workflow's module imports no heavy library."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from unet.cli import build_parser
from unet.errors import UsageError
from unet.pipeline import ConfigError, check_config, deep_merge, parse_run, parse_score_path, scored_runs
from unet.settings import (
    MODEL_PREDICT_KEYS,
    STAGE_SETTINGS,
    AugmentSettings,
    ModelSettings,
    SettingError,
    SyntheticCellsSettings,
    SyntheticEmSettings,
    TrainSettings,
    from_arguments,
    paper_values,
)

from helpers import CONFIG, DEMO_CONFIG, SCHEMA

# The command (and its required arguments) whose flags each config section sets.
COMMANDS = {
    "weightmap": ["weightmap", "DATA", "OUT"],
    "model": ["train", "--data", "d", "--weights", "w", "--out", "o"],
    "augment": ["train", "--data", "d", "--weights", "w", "--out", "o"],
    "train": ["train", "--data", "d", "--weights", "w", "--out", "o"],
    "predict": ["predict", "--data", "d", "--model", "m", "--out", "o"],
    "evaluate": ["evaluate", "isbi", "p.tif", "l.tif"],
}
SCHEMA_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def schema_section(name: str) -> dict:
    return yaml.safe_load(SCHEMA.read_text())["$defs"][name]["properties"]


def test_importing_the_workflows_modules_loads_no_heavy_library():
    heavy = "{'torch', 'numba', 'scipy', 'numpy'}"
    code = f"import sys, unet.pipeline, unet.gpus; print(sorted({heavy} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("section", STAGE_SETTINGS)
def test_the_config_file_lists_every_setting_at_its_default(section):
    config = yaml.safe_load(CONFIG.read_text())[section]
    assert config == dataclasses.asdict(STAGE_SETTINGS[section]())


@pytest.mark.parametrize("section", STAGE_SETTINGS)
def test_every_setting_is_a_flag_of_its_command_with_the_default_as_default(section):
    parsed = build_parser(COMMANDS[section][0]).parse_args(COMMANDS[section])
    for spec in dataclasses.fields(STAGE_SETTINGS[section]):
        # `unet predict` takes the data's settings from the model (None: not given), the defaults otherwise.
        from_model = section == "predict" and spec.name in MODEL_PREDICT_KEYS
        assert getattr(parsed, spec.name) == (None if from_model else spec.default), f"{section}.{spec.name}"


@pytest.mark.parametrize(
    "settings_class",
    [*STAGE_SETTINGS.values(), SyntheticEmSettings, SyntheticCellsSettings],
    ids=lambda cls: cls.__name__,
)
def test_the_schema_states_the_same_types_and_bounds_as_the_dataclass(settings_class):
    properties = (
        schema_section("dataset")["synthetic"]["properties"]
        if settings_class.SECTION == "synthetic"
        else schema_section(settings_class.SECTION)
    )
    fields = {spec.name: spec for spec in dataclasses.fields(settings_class)}
    assert set(fields) <= set(properties)
    for name, spec in fields.items():
        stated = {key: value for key, value in properties[name].items() if key not in ("description", "type")}
        bounds = {key: list(value) if key == "enum" else value for key, value in spec.metadata["bounds"].items()}
        assert stated == bounds, f"{settings_class.SECTION}.{name}"
        if "enum" not in bounds:
            assert properties[name]["type"] == SCHEMA_TYPES[type(spec.default)], f"{settings_class.SECTION}.{name}"


def test_bad_values_name_the_key_and_flags_name_the_flag():
    with pytest.raises(SettingError, match=r"^train.momentum = 1.0: must be < 1$"):
        TrainSettings(momentum=1.0)
    with pytest.raises(SettingError, match=r"^augment.elastic_grid = 2.5: must be of type int$"):
        AugmentSettings(elastic_grid=2.5)
    with pytest.raises(SettingError, match=r"^datasets.x.train: unknown keys \['itterations'\]"):
        TrainSettings.from_mapping({"itterations": 3}, "datasets.x.train")
    parsed = build_parser("train").parse_args([*COMMANDS["train"], "--device", "gpu"])
    with pytest.raises(SettingError, match=r"^--device = 'gpu': must match"):
        from_arguments(TrainSettings, parsed)
    parsed = build_parser("train").parse_args([*COMMANDS["train"], "--learning-rate", "inf", "--dropout", "1"])
    with pytest.raises(SettingError, match=r"^--dropout = 1.0: must be < 1$"):
        from_arguments(ModelSettings, parsed)
    with pytest.raises(SettingError, match=r"^--learning-rate = inf: must be a finite number$"):
        from_arguments(TrainSettings, parsed)


def test_paper_values_are_the_papers():
    assert paper_values(STAGE_SETTINGS["model"]) == {"base_channels": 64, "depth": 4, "dropout": 0.5}
    assert paper_values(TrainSettings) == {"momentum": 0.99, "batch_size": 1, "input_size": 572}
    assert paper_values(STAGE_SETTINGS["weightmap"]) == {"w0": 10.0, "sigma": 5.0}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"train": {"input_size": 190}},
            r"^config: train.input_size = 190: input size 190 is invalid for a depth-3 "
            r"U-Net",
        ),
        (
            {"model": {"depth": 4}},
            r"^config: predict.input_size = 188: input size 188 leaves an output of 4 px, less "
            r"than the 16 px step between tiles; use at least 204 \(model.depth = 4\)",
        ),
        (
            {"datasets": {"demo-em": {"predict": {"input_size": 190}}}, "predict": {"input_size": 188}},
            r"^config: datasets.demo-em.predict.input_size = 190: .*depth-3",
        ),
        (
            {"isbi": {"folds": 13}},
            r"^config: isbi.folds = 13: more folds than the 12 labelled training slices of demo-em",
        ),
        (
            {"datasets": {"demo-em": {"synthetic": {"train_slices": 0}}}},
            r"^config: datasets.demo-em.synthetic.train_slices: 0 is less than the minimum of 1",
        ),
        (
            {"datasets": {"demo-cells": {"train": {"iterations": 0}}}},
            r"^config: datasets.demo-cells.train.iterations: 0 is",
        ),
        (
            {"train": {"learning_rate": float("inf")}},
            r"^config: train.learning_rate = inf: must be a finite number$",
        ),
        (
            {"datasets": {"demo-em": {"weightmap": {"sigma": float("inf")}}}},
            r"^config: datasets.demo-em.weightmap.sigma = inf: must be a finite number$",
        ),
        (
            {"model": {"dropout": 1.0}},
            r"^config: model.dropout: 1.0 is greater than or equal to the maximum of 1",
        ),
        (
            {"experiments": ["demo-em", "isbi2012"], "isbi": {"folds": 31}},
            r"^config: isbi.folds = 31: more folds than the 12 labelled",
        ),
    ],
)
def test_the_configuration_check_names_the_key_and_value(override, message):
    config = deep_merge(
        deep_merge(yaml.safe_load(CONFIG.read_text()), yaml.safe_load(DEMO_CONFIG.read_text())), override
    )
    with pytest.raises(ConfigError, match=message):
        check_config(config, SCHEMA)


def test_the_shipped_configurations_pass_the_check():
    paper = yaml.safe_load(CONFIG.read_text())
    check_config(paper, SCHEMA)
    for name in ("demo.yaml", "quick.yaml"):
        check_config(deep_merge(paper, yaml.safe_load((CONFIG.parent / name).read_text())), SCHEMA)


def test_runs_name_their_split_fold_and_predicted_split():
    fold = parse_run("isbi", "fold2", 3)
    assert (fold.split, fold.fold, fold.predicts, fold.fold_flags(3)) == ("train", 2, "train", "--fold 2 --folds 3")
    everything = parse_run("isbi", "all", 3)
    assert (everything.split, everything.fold, everything.predicts, everything.fold_flags(3)) == (
        "train",
        None,
        "test",
        "",
    )
    sequence = parse_run("ctc", "02")
    assert (sequence.split, sequence.predicts, sequence.fold_flags(3)) == ("02", "01", "")
    assert scored_runs("isbi", 3) == ["fold0", "fold1", "fold2"] and scored_runs("ctc", 3) == ["01", "02"]
    for protocol, run, message in [
        ("isbi", "fold3", "fold0 to fold2"),
        ("isbi", "01", "'all' or"),
        ("ctc", "fold0", "sequence"),
        ("tiff", "all", "unknown protocol"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_run(protocol, run, 3)
    assert parse_score_path("results/scores/demo-em/fold1/seed3.json") == ("demo-em", "fold1", 3)
    assert parse_score_path("results/scores/demo-em/fold1/s3.json") is None
