"""Workflow stage: how long Snakemake takes to read the workflow and plan the paper profile (`snakemake -n`), against
the same dry run of a baseline commit, measured in the same run.

Snakemake reads the rule files at every start, and on a cluster once more for every job. The rule files
reach the package through `unet.pipeline`, which imports neither torch, numba nor scipy; the default
baseline, d66c69b, imported the stage modules (`unet.train`, `unet.data`) for the same vocabulary. The
baseline is checked out into a temporary git worktree and run with its own package on PYTHONPATH.

    python benchmarks/bench_workflow.py [--baseline COMMIT] [--repeats 5] [--record]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from benchmarks.common import parser, report  # noqa: E402

WORKFLOW_FILES = ("Snakefile", "config", "workflow", "envs", "profiles")


def dry_run_seconds(tree: Path, workdir: Path, repeats: int) -> float:
    """Median wall time of `snakemake -n` of the paper profile, with `tree`'s workflow and package."""
    for name in WORKFLOW_FILES:
        source = tree / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, workdir / name)
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    times = []
    for _ in range(repeats + 1):  # the first run warms the file cache and Python's bytecode cache
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--quiet"],
            cwd=workdir,
            env=environment,
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--baseline", default="d66c69b", help="commit to compare with (default %(default)s)")
    args = arguments.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            (scratch / "ours").mkdir()
            (scratch / "theirs").mkdir()
            ours = dry_run_seconds(REPO, scratch / "ours", args.repeats)
            theirs = dry_run_seconds(baseline, scratch / "theirs", args.repeats)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True)
    report(
        "workflow",
        ["what", "median s", "ratio to baseline"],
        [
            ["snakemake -n, paper profile (this checkout)", ours, ours / theirs],
            [f"baseline: the same at {args.baseline}", theirs, 1.0],
        ],
        device="cpu",
        record=args.record,
        command="python benchmarks/bench_workflow.py --record",
        notes="ratio = our time / the baseline's time (below 1 = faster). Each: median of "
        f"{args.repeats} runs after one warm-up run.",
    )


if __name__ == "__main__":
    main()
