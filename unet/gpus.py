"""`unet gpu -- COMMAND...`: run a command on a GPU of its own, one job per GPU on a machine with several.

Snakemake counts GPUs (`--resources gpu=4`) but does not say which one a job gets (snakemake/snakemake#281):
four trainings would all run on the first GPU. The workflow starts training and prediction through this
command, which

- finds the GPUs the jobs share: `--gpus` or $UNET_GPUS (the workflow's config key `gpus`), else
  CUDA_VISIBLE_DEVICES where set, else every NVIDIA GPU of the machine, counted from the driver's
  /proc/driver/nvidia/gpus (or `nvidia-smi -L`) without initialising CUDA;
- takes the first that no other job holds, by an exclusive `flock` on `LOCKS/<id>.lock`; while every one
  is held it waits, and says so once;
- replaces itself with the command (exec), with CUDA_VISIBLE_DEVICES set to that GPU alone, so that every
  library of the job agrees on it. The command inherits the locked file: it holds the GPU while it runs,
  and the system frees it when it ends, crashes or is killed (kill -9 too).

Inside a SLURM job, and without `--gpus` on a machine with one GPU or none, the command runs unchanged:
SLURM gives each job its own GPUs, and one GPU needs no choosing. Standard library only: the workflow
imports this module, and the command starts before torch.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from unet.errors import UsageError

# Where the workflow's jobs lock their GPUs, and the environment variable by which it passes them the
# config's `gpus` (workflow/rules/common.smk).
WORKFLOW_LOCKS = ".snakemake/gpus"
GPUS_VARIABLE = "UNET_GPUS"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver knows
UNSAFE_IN_FILE_NAME = re.compile(r"[^\w.-]")  # a MIG device's old-style name has slashes
POLL_S = 0.5  # how often a waiting job looks for a freed GPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--locks",
        type=Path,
        default=Path(WORKFLOW_LOCKS),
        metavar="DIR",
        help=f"folder of the lock files, one per GPU (default: {WORKFLOW_LOCKS}, the workflow's, from its folder)",
    )
    parser.add_argument(
        "--gpus",
        default=os.environ.get(GPUS_VARIABLE) or None,
        metavar="IDS",
        help="comma-separated GPUs the jobs share, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs); "
        "ids that torch does not see make the job compute on the CPU. Default: $UNET_GPUS, else "
        "CUDA_VISIBLE_DEVICES where set, else every GPU of the machine",
    )
    parser.add_argument("job", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run")


def run(args: argparse.Namespace) -> NoReturn:
    command = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not command:
        raise UsageError("give the command to run after --, e.g. unet gpu -- unet train ...")
    environment = dict(os.environ)
    gpus = shared_gpus(args.gpus.split(",") if args.gpus else None, environment)
    if gpus:
        gpu, lock = take_gpu(gpus, args.locks)
        os.set_inheritable(lock, True)  # exec closes the others: the command holds the lock
        environment["CUDA_VISIBLE_DEVICES"] = gpu
        print(
            f"unet gpu: this job runs on GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu}; shared: {','.join(gpus)})",
            file=sys.stderr,
        )
    try:
        os.execvpe(command[0], command, environment)
    except FileNotFoundError:
        raise UsageError(f"{command[0]}: command not found") from None


def shared_gpus(configured: list[str] | None, environ: Mapping[str, str]) -> list[str]:
    """The GPUs a job takes one of: `configured`, else the visible ones if several; none (run as it is) inside
    a SLURM job."""
    if "SLURM_JOB_ID" in environ:
        return []
    if configured:
        return [gpu.strip() for gpu in configured]
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = _ids(visible) if visible is not None else [str(index) for index in range(machine_gpus())]
    return gpus if len(gpus) > 1 else []


def machine_gpus() -> int:
    """The NVIDIA GPUs of this machine, without initialising CUDA: the driver's /proc entries, else the lines
    of `nvidia-smi -L`, else 0."""
    with contextlib.suppress(OSError):
        return len(os.listdir(NVIDIA_GPUS))
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def take_gpu(gpus: list[str], locks: Path, poll_s: float = POLL_S) -> tuple[str, int]:
    """The first of `gpus` that no other process holds, and the descriptor of its lock file, locked; waits while
    every one is held."""
    locks.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for gpu in gpus:
            lock = _try_lock(locks / f"{UNSAFE_IN_FILE_NAME.sub('_', gpu)}.lock")
            if lock is not None:
                return gpu, lock
        if not waiting:
            print(
                f"unet gpu: GPUs {','.join(gpus)} are all held by other jobs; waiting for one to be free",
                file=sys.stderr,
            )
            waiting = True
        time.sleep(poll_s)


def _try_lock(path: Path) -> int | None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def gpu_id(index: int, environ: Mapping[str, str] = os.environ) -> str:
    """The machine's name of CUDA device `index` of this process: its entry of CUDA_VISIBLE_DEVICES where set
    (`unet gpu` sets one), else the index."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return _ids(visible)[index] if visible else str(index)


def _ids(visible: str) -> list[str]:
    return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
