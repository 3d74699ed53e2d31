"""What the tests share: where things are, and the `unet` and `snakemake` commands run as a user runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The real ISBI 2012 and Cell Tracking Challenge copies (../shared/data beside the checkout).
SHARED_DATA = Path(os.environ.get("UNET_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
CONFIG = REPO / "config" / "config.yaml"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# What a fresh clone holds of the workflow: enough to run it anywhere.
WORKFLOW_FILES = ("Snakefile", "config", "workflow", "envs", "profiles")
# A job as Snakemake prints it: "[local]rule NAME:" and its indented fields (log:, benchmark:, ...).
JOB_STATS_ROW = re.compile(r"^(?P<rule>\w+)\s+(?P<count>\d+)$", re.MULTILINE)


def unet(*args, check: bool = False, **options) -> subprocess.CompletedProcess:
    """`unet ARGS...` in a subprocess (this checkout's package), its output captured as text."""
    result = subprocess.run(
        [sys.executable, "-m", "unet.cli", *map(str, args)], capture_output=True, text=True, **options
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def snakemake(workdir: Path, *args, timeout: float = 900, **options) -> subprocess.CompletedProcess:
    """`snakemake ARGS...` in `workdir` (a copy of the workflow, see `copy_workflow`), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *map(str, args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def copy_workflow(destination: Path) -> Path:
    """The workflow's own files (no results, no .snakemake) in `destination`, as a fresh clone has them."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def job_stats(log: str) -> dict[str, int]:
    """The first "Job stats" table of a Snakemake log: jobs per rule, without the total."""
    table = log[log.index("Job stats:") :].split("\n\n")[0]
    return {row["rule"]: int(row["count"]) for row in JOB_STATS_ROW.finditer(table) if row["rule"] != "total"}
