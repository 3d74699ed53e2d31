"""Shared fixtures: the real data copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unet.provenance import python_path_first

from helpers import REPO, SHARED_DATA

# The `slurm_cluster` fixture: a real single-node SLURM cluster (tests/slurm_cluster.py).
pytest_plugins = ["slurm_cluster"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data; its absence is an error, not a skip: CI always has it."""
    if not (SHARED_DATA / "isbi2012" / "train-volume.tif").is_file():
        pytest.fail(
            f"real data not found at {SHARED_DATA}; set UNET_SHARED_DATA to a copy laid out like ../shared/data"
        )
    return SHARED_DATA


# Subprocesses (the `unet` command, snakemake) must import the package of this checkout.
os.environ["PYTHONPATH"] = python_path_first(REPO)


# The suite runs on two workers (pyproject's addopts: `-n 2 --dist loadfile --no-loadscope-reorder`), a file
# per worker at a time. The files that take minutes go first, so that the SLURM cluster's waits and the demo
# runs overlap the rest instead of ending the run alone.
# Each worker starts with two files: the SLURM tests beside the folder data sets, the demo beside the killed jobs.
LONGEST_FIRST = ["test_slurm.py", "test_pipeline.py", "test_folder.py", "test_interrupted_jobs.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
