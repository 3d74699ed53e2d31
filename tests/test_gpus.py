"""One job per GPU (`unet gpu`): real processes holding real `flock` locks, on pretended GPU ids (the `gpus`
key), so that a machine without GPUs exercises everything but `cuda:N` itself."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unet.gpus import GPUS_VARIABLE, POLL_S, gpu_id

from helpers import DEMO_CONFIG, copy_workflow, snakemake

GPUS = ("0", "1", "2", "3")
WAITING = "are all held by other jobs; waiting for one to be free"
# A job: records its GPU, process id and start, holds the GPU until the test creates `release`, records its end.
HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    records, name = Path(sys.argv[1]), sys.argv[2]

    def record(kind, **values):
        temporary = records / f".{name}.{kind}"
        temporary.write_text(json.dumps(values))
        temporary.replace(records / f"{name}.{kind}.json")

    now = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
    record("start", gpu=os.environ["CUDA_VISIBLE_DEVICES"], pid=os.getpid(), time=now())
    while not (records / "release").exists():
        time.sleep(0.01)
    record("end", time=now())
    """
)
PRINT_VISIBLE = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without what would choose the GPUs, with `variables`."""
    chosen = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", GPUS_VARIABLE)
    return {k: v for k, v in os.environ.items() if k not in chosen} | variables


def unet_gpu(locks: Path, *command: str, gpus: tuple[str, ...] = ()) -> list[str]:
    """The `unet gpu` command line that runs `command` (with `gpus`, if any) and its lock folder."""
    flags = ["--gpus", ",".join(gpus)] if gpus else []
    return [sys.executable, "-m", "unet.cli", "gpu", "--locks", str(locks), *flags, "--", *command]


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # system-wide: comparable with the jobs' records


def records(folder: Path, kind: str) -> dict[str, dict]:
    return {path.name.split(".")[0]: json.loads(path.read_text()) for path in folder.glob(f"*.{kind}.json")}


def waiting_jobs(folder: Path) -> list[str]:
    return [path.stem for path in folder.glob("*.log") if WAITING in path.read_text()]


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = now() + timeout
    while not condition():
        if now() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_eight_jobs_share_four_gpus_one_job_per_gpu_and_a_killed_job_frees_its_gpu(tmp_path: Path) -> None:
    locks, folder = tmp_path / "locks", tmp_path / "records"
    folder.mkdir()
    jobs = {}
    for index in range(8):
        name = f"job{index}"
        with open(folder / f"{name}.log", "w") as log:
            jobs[name] = subprocess.Popen(
                unet_gpu(locks, sys.executable, "-c", HOLDER, str(folder), name, gpus=GPUS),
                stderr=log,
                env=environment(),
            )
    try:
        # Four jobs hold the four GPUs, the four others wait; none gets a GPU while the holders run.
        wait_for(lambda: len(waiting_jobs(folder)) == 4 and len(records(folder, "start")) >= 4, "4 waiting jobs")
        time.sleep(3 * POLL_S)
        holders = records(folder, "start")
        assert sorted(holders) == sorted(set(jobs) - set(waiting_jobs(folder)))
        assert sorted(holder["gpu"] for holder in holders.values()) == list(GPUS)
        # The job is the process that holds the lock (`unet gpu` replaced itself with it); kill -9 frees its GPU,
        # and a waiting job takes that one, the only free one.
        killed = next(name for name, holder in holders.items() if holder["gpu"] == "2")
        assert holders[killed]["pid"] == jobs[killed].pid
        killed_at = now()
        os.kill(jobs[killed].pid, signal.SIGKILL)
        assert jobs[killed].wait(timeout=60) == -signal.SIGKILL
        wait_for(lambda: len(records(folder, "start")) == 5, "a waiting job to take the killed job's GPU")
        (successor,) = set(records(folder, "start")) - set(holders)
        assert records(folder, "start")[successor]["gpu"] == "2"

        (folder / "release").touch()
        codes = {name: job.wait(timeout=120) for name, job in jobs.items()}
    finally:
        for job in jobs.values():
            job.kill()
    assert codes == {name: -signal.SIGKILL if name == killed else 0 for name in jobs}

    starts, ends = records(folder, "start"), records(folder, "end") | {killed: {"time": killed_at}}
    assert sorted(starts) == sorted(ends) == sorted(jobs)
    assert {start["gpu"] for start in starts.values()} == set(GPUS)
    for gpu in GPUS:
        held = sorted((starts[name]["time"], ends[name]["time"]) for name in jobs if starts[name]["gpu"] == gpu)
        overlaps = [(a, b) for a, b in zip(held, held[1:]) if b[0] < a[1]]
        assert not overlaps, f"GPU {gpu} was held by two jobs at once: {overlaps}"
    for name in jobs:
        log = (folder / f"{name}.log").read_text()
        assert f"this job runs on GPU {starts[name]['gpu']} " in log, log
        assert log.count(WAITING) == (name in waiting_jobs(folder)), log


@pytest.mark.parametrize(
    ("variables", "gpus"),
    [
        ({"CUDA_VISIBLE_DEVICES": "3"}, ()),  # one GPU
        ({"CUDA_VISIBLE_DEVICES": ""}, ()),  # none
        ({"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "1"}, GPUS),  # a SLURM job: SLURM chose its GPU
    ],
    ids=["one-gpu", "no-gpu", "slurm-job"],
)
def test_a_job_runs_unchanged_with_one_gpu_or_none_and_inside_slurm(variables, gpus, tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    result = subprocess.run(
        unet_gpu(locks, sys.executable, "-c", PRINT_VISIBLE, gpus=gpus),
        capture_output=True,
        text=True,
        env=environment(**variables),
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout.strip(), result.stderr) == (variables["CUDA_VISIBLE_DEVICES"], "")
    assert not locks.exists()


def test_jobs_share_the_visible_gpus_and_take_the_first_free_one(tmp_path: Path) -> None:
    """Without `gpus`, CUDA_VISIBLE_DEVICES lists the GPUs; one held by another process is passed over."""
    locks = tmp_path / "locks"
    locks.mkdir()
    with open(locks / "2.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = subprocess.run(
            unet_gpu(locks, sys.executable, "-c", PRINT_VISIBLE),
            capture_output=True,
            text=True,
            env=environment(CUDA_VISIBLE_DEVICES="2,3"),
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert "this job runs on GPU 3 (CUDA_VISIBLE_DEVICES=3; shared: 2,3)" in result.stderr


def test_a_gpu_that_torch_does_not_see_makes_the_job_compute_on_the_cpu_and_say_so(tmp_path: Path) -> None:
    resolve = "from unet.device import resolve_device; print(resolve_device('auto'))"
    result = subprocess.run(
        unet_gpu(tmp_path, sys.executable, "-c", resolve, gpus=("99",)),
        capture_output=True,
        text=True,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    assert "torch sees no CUDA device (CUDA_VISIBLE_DEVICES=99): computing on the CPU" in result.stderr


def test_the_recorded_gpu_is_the_machines_id_of_the_device() -> None:
    assert gpu_id(1, {"CUDA_VISIBLE_DEVICES": "GPU-5e1f, GPU-77aa"}) == "GPU-77aa"
    assert gpu_id(0, {"CUDA_VISIBLE_DEVICES": "2"}) == "2"
    assert gpu_id(1, {}) == "1"


@pytest.mark.slow
def test_the_workflow_runs_two_trainings_on_two_gpus_and_other_gpus_rerun_nothing(tmp_path: Path) -> None:
    """The demo's first two ISBI folds trained at once (--resources gpu=2) on the pretended GPUs 5 and 6."""
    workdir = copy_workflow(tmp_path)
    models = [f"results/models/demo-em/fold{k}/seed0/model.pt" for k in (0, 1)]
    settings = ("train={iterations: 2, log_every: 1, val_every: 2}", "threads={train: 1}")
    run = ("--configfile", DEMO_CONFIG, "--cores", "2", "--resources", "gpu=2", "--config", *settings)
    result = snakemake(workdir, *run, "gpus=[5,6]", "--", *models, env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [(workdir / f"results/logs/train/demo-em/fold{k}/seed0.log").read_text() for k in (0, 1)]
    gpus = sorted(gpu for gpu in "56" for log in logs if f"this job runs on GPU {gpu} " in log)
    assert gpus == ["5", "6"], logs
    assert all("computing on the CPU" in log for log in logs), logs
    assert json.loads((workdir / models[0]).with_name("run.json").read_text())["gpu"] is None  # computed on the CPU

    other_gpus = snakemake(workdir, *run, "gpus=[1]", "--dry-run", "--", *models, env=environment())
    assert "Nothing to be done" in other_gpus.stdout + other_gpus.stderr, other_gpus.stdout[-3000:]
