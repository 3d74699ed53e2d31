"""Shared fixtures: the real data copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
