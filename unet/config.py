"""The pipeline configuration as the stages see it: global stage settings, overridden per data set."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
from typing import Any, Mapping

import yaml

STAGES = ("weightmap", "model", "augment", "train", "predict", "evaluate")


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


def stage_settings(config: Mapping[str, Any], stage: str, dataset: str) -> dict[str, Any]:
    """The settings of `stage` for `dataset`: the global section with the data set's own section merged in."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are {STAGES}")
    if dataset not in config["datasets"]:
        raise KeyError(f"experiment {dataset!r} is not a key of `datasets` (known: {sorted(config['datasets'])})")
    return deep_merge(config.get(stage, {}), config["datasets"][dataset].get(stage, {}))


def field_help(text: str, **extra) -> dict:
    """The metadata of a settings dataclass field: its flag's help text (and e.g. `choices`)."""
    return {"help": text, **extra}


def add_dataclass_arguments(parser: argparse.ArgumentParser, settings_class: type, title: str) -> None:
    """One flag per field of a settings dataclass (`input_size` -> `--input-size`), the field's default as default.

    The inverse of `cli_flags`: a stage's config section becomes these flags in a rule.
    """
    group = parser.add_argument_group(title)
    defaults = settings_class()
    for spec in dataclasses.fields(settings_class):
        default = getattr(defaults, spec.name)
        flag = "--" + spec.name.replace("_", "-")
        text = spec.metadata.get("help", "") + " (default: %(default)s)"
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(flag, type=type(default), default=default, help=text,
                               choices=spec.metadata.get("choices"))


def dataclass_from_args(settings_class: type, args: argparse.Namespace):
    """The settings dataclass that `add_dataclass_arguments` flags describe, from the parsed `args`."""
    return settings_class(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(settings_class)})


def cli_flags(settings: Mapping[str, Any]) -> str:
    """A stage's settings as the flags of its CLI: `{"input_size": 572}` -> `--input-size 572`.

    Every key of a stage's config section is a flag of that stage's command with the
    same name; booleans become `--flag` / `--no-flag`, lists repeat their values.
    """
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


# The values the paper states (sections 2 and 3); everything else is our choice.
PAPER = {
    "model": {"base_channels": 64, "depth": 4, "dropout": 0.5},
    "augment": {"elastic_grid": 3, "elastic_std": 10.0},
    "train": {"momentum": 0.99, "batch_size": 1, "input_size": 572},
    "weightmap": {"w0": 10.0, "sigma": 5.0},
}


def paper_deviations(config: Mapping[str, Any], dataset: str) -> str:
    """A short account of how `dataset`'s settings differ from the paper's, with the schedule we chose."""
    differences = [
        f"{key} {value} (paper {PAPER[stage][key]})"
        for stage in PAPER
        for key, value in stage_settings(config, stage, dataset).items()
        if key in PAPER[stage] and value != PAPER[stage][key]
    ]
    train = stage_settings(config, "train", dataset)
    schedule = (f"{train.get('iterations')} iterations, learning rate {train.get('learning_rate')} "
                f"({train.get('lr_schedule')}; not published)")
    return ", ".join(differences + [schedule]) if differences else f"the paper's settings, {schedule}"
