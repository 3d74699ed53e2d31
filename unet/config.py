"""The pipeline configuration as the stages see it: global stage settings, overridden per data set."""

from __future__ import annotations

import copy
from typing import Any, Mapping

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


def stage_settings(config: Mapping[str, Any], stage: str, dataset: str) -> dict[str, Any]:
    """The settings of `stage` for `dataset`: the global section with the data set's own section merged in."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are {STAGES}")
    if dataset not in config["datasets"]:
        raise KeyError(f"experiment {dataset!r} is not a key of `datasets` (known: {sorted(config['datasets'])})")
    return deep_merge(config.get(stage, {}), config["datasets"][dataset].get(stage, {}))
