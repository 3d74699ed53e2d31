"""Jobs killed while they write: no rule kind of prediction or evaluation leaves a partial output, and a rerun
gives what an uninterrupted run gives. Each job is killed with SIGKILL (with its Snakemake) at the moment its
first temporary output appears, i.e. while it writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib import image as mpimg

from helpers import DEMO_CONFIG, copy_workflow, snakemake

# The demo with a tiny network: models in seconds; the prediction and evaluation jobs are what is tested.
TINY = [
    "--config",
    "model={base_channels: 4, depth: 2}",
    "predict={input_size: 76}",
    "train={iterations: 4, input_size: 60, warmup: 0, checkpoint_every: 2, log_every: 2, val_every: 2}",
    "datasets={demo-cells: {train: {iterations: 4}}}",  # the demo trains its cells longer
]
# Each rule kind: a target, and the outputs of its job.
JOBS = {
    "predict_fold": ["results/predictions/demo-em/fold0/seed0/probabilities.tif"],
    "predict_isbi_test": [
        "results/predictions/demo-em/all/seed0/probabilities.tif",
        "results/predictions/demo-em/all/seed0/submission.tif",
    ],
    "predict_ctc": [
        "results/predictions/demo-cells/01/seed0/02_probabilities.tif",
        "results/predictions/demo-cells/01/seed0/02_RES",
    ],
    "evaluate_isbi": ["results/scores/demo-em/fold0/seed0.json", "results/figures/overlay-demo-em-fold0-seed0.png"],
    "evaluate_ctc": ["results/scores/demo-cells/01/seed0.json", "results/figures/overlay-demo-cells-01-seed0.png"],
}
MODELS = [f"results/models/demo-em/{run}/seed0/model.pt" for run in ("fold0", "all")] + [
    f"results/models/demo-cells/{run}/seed0/model.pt" for run in ("01", "02")
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workflow copy with the demo's data and tiny models, and a reference copy with every job's outputs."""
    root = tmp_path_factory.mktemp("interrupted")
    workdir = copy_workflow(root / "trained")
    run(workdir, *MODELS)
    reference = root / "reference"
    shutil.copytree(workdir, reference)
    run(reference, *(outputs[0] for outputs in JOBS.values()))
    return root


def run(workdir: Path, *targets: str) -> None:
    result = snakemake(workdir, "--cores", "2", "--configfile", DEMO_CONFIG, *TINY, "--", *targets)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("rule", JOBS)
def test_a_job_killed_while_writing_leaves_no_partial_output_and_a_rerun_gives_the_same(trained, tmp_path, rule):
    workdir = tmp_path / "work"
    shutil.copytree(trained / "trained", workdir)
    outputs = [workdir / path for path in JOBS[rule]]
    killed = kill_while_writing(workdir, JOBS[rule][0], [path.parent for path in outputs])
    assert killed, f"{rule}: the job finished before any of its outputs was being written"
    for path in outputs:
        assert not path.exists() or complete(path), f"{rule}: {path} is half-written"
    # What a user does after the kill: unlock the folder (Snakemake's lock survives SIGKILL) and run again.
    unlocked = snakemake(workdir, "--unlock", "--configfile", DEMO_CONFIG)
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    run(workdir, JOBS[rule][0])
    for path in outputs:
        assert same(path, trained / "reference" / path.relative_to(workdir)), f"{rule}: {path} differs"
    leftovers = [p for path in outputs for p in path.parent.glob(f".{path.name}.*")]
    assert not leftovers, leftovers


def kill_while_writing(workdir: Path, target: str, folders: list[Path], attempts: int = 5) -> bool:
    """Run Snakemake for `target`; SIGKILL it with its job as soon as a temporary output (`.NAME.*`, see
    unet.io.atomic_path; not the output's lock, `.NAME.lock`, taken when the job starts) appears in `folders`.
    True if killed in time."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(DEMO_CONFIG), *TINY, "--", target]
    for _ in range(attempts):
        process = subprocess.Popen(
            command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while process.poll() is None:
            if any(
                entry.name.startswith(".") and entry.name != ".snakemake" and not entry.name.endswith(".lock")
                for folder in folders
                if folder.is_dir()
                for entry in os.scandir(folder)
            ):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.0005)
        for folder in folders:  # finished too soon: start over
            shutil.rmtree(folder, ignore_errors=True)
    return False


def complete(path: Path) -> bool:
    """Whether a result reads back whole."""
    try:
        if path.is_dir():
            return all(complete(file) for file in path.glob("*.tif"))
        if path.suffix == ".tif":
            tifffile.imread(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            mpimg.imread(path)
    except Exception:
        return False
    return True


def same(path: Path, reference: Path) -> bool:
    if path.is_dir():
        names = sorted(p.name for p in path.glob("*.tif"))
        return names == sorted(p.name for p in reference.glob("*.tif")) and all(
            same(path / name, reference / name) for name in names
        )
    if path.suffix == ".tif":
        return np.array_equal(tifffile.imread(path), tifffile.imread(reference))
    if path.suffix == ".png":
        return np.array_equal(mpimg.imread(path), mpimg.imread(reference))
    return json.loads(path.read_text()) == json.loads(reference.read_text())
