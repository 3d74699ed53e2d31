"""The SLURM profile on a real single-node cluster that the tests start (tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from demo_tables import check_demo_tables
from helpers import CONFIG, DEMO_CONFIG, REPO, snakemake, unet
from slurm_cluster import SlurmCluster
from workflow_rules import workflow_rules

SLURM_PROFILE = REPO / "profiles" / "slurm"

pytestmark = pytest.mark.slurm


@dataclass(frozen=True)
class WorkflowRun:
    """A workflow the test submits: its Snakefile, targets, further snakemake arguments, what it must produce."""

    snakefile: Path
    targets: tuple[str, ...]  # none: the first rule's
    args: tuple[str, ...]
    outputs: tuple[str, ...]  # relative to the working directory
    configfile: Path | None = None  # the last of args' config files: what the rules are parsed with


# The mechanics: a local rule and two submitted rules named like GPU rules of the profile.
MECHANICS_RUN = WorkflowRun(
    snakefile=REPO / "tests" / "slurm_workflow" / "Snakefile",
    targets=(),
    args=(),
    outputs=("results/fetch.txt", "results/train.txt", "results/predict.txt"),
)
# The product: the demo configuration from the data to both tables. The Snakefile's own
# `configfile: config/config.yaml` is relative to the working directory, a temporary one
# here: the defaults are given with the demo's overrides, as from the repository's root.
# Training is cut to 40 iterations: this test is about every job going through sbatch
# (tests/test_pipeline.py checks what the demo learns), and the 12 training and
# prediction jobs run one after the other on the node's one GPU. The six bioimage.io exports are left
# out: they are CPU jobs submitted as the evaluations are (tests/test_pipeline.py runs them in the demo),
# and each would add a job's start and a status check's wait to the suite.
DEMO_RUN = WorkflowRun(
    snakefile=REPO / "Snakefile",
    targets=(),
    args=(
        "--configfile",
        str(CONFIG),
        str(DEMO_CONFIG),
        "--config",
        "exports=false",
        "train={iterations: 40}",
        "datasets={demo-cells: {train: {iterations: 40}}}",
    ),
    outputs=("results/tables/table1.csv", "results/tables/table2.csv"),
    configfile=DEMO_CONFIG,
)
SLURM_RUNS = {"mechanics": MECHANICS_RUN, "demo": DEMO_RUN}

SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+)")
# The executor plugin comments each job with its rule (and wildcards).
RULE_OF_JOB = re.compile(r"rule_(?P<name>\w+?)(_wildcards_.*)?")


def test_sbatch_runs_a_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "hostname.out"
    job_id = slurm_cluster.command("sbatch", "--parsable", f"--output={output}", "--wrap", "hostname").strip()
    job = slurm_cluster.wait_for_job(job_id)
    assert job["JobState"] == "COMPLETED", slurm_cluster.diagnostics()
    assert output.read_text().strip() == slurm_cluster.node


@pytest.mark.parametrize("run", SLURM_RUNS.values(), ids=SLURM_RUNS.keys())
def test_workflow_runs_through_the_slurm_profile(run: WorkflowRun, slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    log = run_with_slurm_profile(slurm_cluster, run, workdir)

    job_ids = SUBMITTED.findall(log)
    assert job_ids, f"no job was submitted through sbatch:\n{log}"
    assert set(job_ids) <= set(slurm_cluster.submitted_job_ids()), "slurmctld did not log these submissions"
    gpu_rules = {rule for rule, resources in slurm_profile()["set-resources"].items() if resources.get("gpu")}
    for job_id in job_ids:
        job = slurm_cluster.job(job_id)
        assert job["JobState"] == "COMPLETED", f"SLURM job {job_id}: {job}"
        rule = RULE_OF_JOB.fullmatch(job["Comment"])
        assert rule, f"SLURM job {job_id} is not a snakemake job: {job}"
        asks_gpu = "gpu" in job.get("TresPerJob", "")
        assert asks_gpu == (rule["name"] in gpu_rules), f"SLURM job {job_id} of rule {rule['name']}: {job}"

    missing = [name for name in run.outputs if not (workdir / name).is_file()]
    assert not missing, f"not produced: {missing}\n{log}"
    if run is MECHANICS_RUN:
        # The submitted rules ran inside their allocations, the local rule where snakemake runs.
        ran_in = {name: (workdir / f"results/{name}.txt").read_text().strip() for name in ("fetch", "train", "predict")}
        assert ran_in["fetch"] == "job=local"
        assert sorted([ran_in["train"], ran_in["predict"]]) == sorted(f"job={job_id}" for job_id in job_ids)
    if run is DEMO_RUN:
        check_demo_tables(workdir / "results" / "tables")


def run_with_slurm_profile(cluster: SlurmCluster, run: WorkflowRun, workdir: Path) -> str:
    """Runs snakemake with profiles/slurm as a user would, with this small cluster's site settings; returns its log."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = snakemake(
        workdir,
        *run.targets,  # first: options such as --configfile take any number of values
        "--snakefile",
        run.snakefile,
        "--workflow-profile",
        site_profile(cluster, run, workdir.parent / "profile"),
        # No accounting database: job states come from squeue, no account is guessed.
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--retries",
        "0",
        "--latency-wait",
        "5",
        *run.args,
        timeout=1800,  # a limit for a hang: the demo's jobs share the cores with the other tests
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{log}\n{cluster.diagnostics()}"
    return log


def site_profile(cluster: SlurmCluster, run: WorkflowRun, directory: Path) -> Path:
    """profiles/slurm with what a site whose nodes are as small as this one adds to it (its comments say where).

    SLURM rejects a job that asks for more CPUs or memory than any node has, and the
    executor asks for --cpus-per-task = the rule's threads and --mem = its mem_mb:
    `max-threads` lowers the threads of every rule to the node's CPUs (as `--cores` does
    for local runs), and set-resources lowers the mem_mb of the rules that ask for more
    than the node's memory (train and predict ask for 16 GB; a CI machine may have less).
    """
    profile = slurm_profile()
    profile["max-threads"] = cluster.cpus
    memory = cluster.hardware["RealMemory"]
    per_rule = {rule: dict(resources) for rule, resources in profile["set-resources"].items()}
    for rule in workflow_rules(run.snakefile, run.configfile):
        mem_mb = rule.resources.get("mem_mb")  # a constant in every rule of ours
        if not mem_mb.is_evaluable() and (mem_mb.value or 0) > memory:
            per_rule.setdefault(rule.name, {})["mem_mb"] = memory
    profile["set-resources"] = per_rule
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


def slurm_profile() -> dict:
    return yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())


# The demo's EM data and a tiny network, trained long enough (a few seconds) to be stopped midway. No
# periodic checkpoint before the end: a resumed run can only start from the checkpoint of the stop.
STOPPED_ITERATIONS = 3000
STOPPED_TRAINING = (
    "--configfile",
    str(CONFIG),
    str(DEMO_CONFIG),
    "--config",
    "threads={train: 1}",
    "model={base_channels: 4, depth: 2}",
    f"train={{iterations: {STOPPED_ITERATIONS}, input_size: 60, warmup: 0, checkpoint_every: 100000, "
    "log_every: 50, val_every: 100000}",
)
STOPPED_MODEL = "results/models/demo-em/fold0/seed0"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_training_job_stopped_by_slurm_is_resubmitted_and_resumes_to_the_same_weights(
    slurm_cluster: SlurmCluster, tmp_path: Path, stop: signal.Signals
) -> None:
    """A time limit or a preemption: SLURM sends SIGTERM to the job's processes (and SIGUSR1 ahead of the
    limit, which profiles/slurm asks for with --signal). Training writes a checkpoint at the iteration it
    reached and exits; the profile's retries resubmit the job, which resumes from that
    checkpoint; the final weights are those of a run that was never stopped."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    profile = site_profile(slurm_cluster, DEMO_RUN, tmp_path / "profile")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        f"{STOPPED_MODEL}/model.pt",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--workflow-profile",
        str(profile),
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "5",
        *STOPPED_TRAINING,
    ]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = workdir / STOPPED_MODEL / "log.csv"  # its first row: the training is under way
    deadline = time.monotonic() + 600
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), f"training never started\n{process.communicate()[0]}"
    train_job = next(job for job, comment in queued_jobs(slurm_cluster) if comment.startswith("rule_train"))
    slurm_cluster.command("scancel", f"--signal={stop.name.removeprefix('SIG')}", train_job)
    log = process.communicate(timeout=600)[0]
    assert process.returncode == 0, f"{log}\n{slurm_cluster.diagnostics()}"
    stopped = slurm_cluster.job(train_job)
    # The job's own snakemake turns the training's exit status (128 + signal, tested in test_train) into 1.
    assert stopped["JobState"] == "FAILED", stopped
    train_log = (workdir / "results/logs/train/demo-em/fold0/seed0.log").read_text()
    resumed_at = re.search(r"resuming from \S+ at iteration (\d+)", train_log)
    # No periodic checkpoint before the end: only the stop can have written the one it resumed from.
    assert resumed_at and 0 < int(resumed_at[1]) < STOPPED_ITERATIONS, train_log[-2000:]

    # The same training on the same data, never stopped, one thread as in the cluster's job.
    # The rule's command is `unet gpu -- unet train ...`: the GPU allocator around the training.
    shell = next(line for line in log.splitlines() if line.startswith("Shell command: ") and "unet train " in line)
    arguments = ["train", *shell.split("unet train ", 1)[1].split(" > ")[0].split()]
    arguments[arguments.index("--out") + 1] = str(tmp_path / "straight")
    unet(*arguments, check=True, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"})
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(workdir / STOPPED_MODEL / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight), "the resumed weights differ"


def test_the_profile_asks_slurm_to_warn_training_jobs_only() -> None:
    """--signal=USR1@120 for training, which checkpoints on it; any other job would just die early."""
    resources = slurm_profile()["set-resources"]
    assert resources["train"]["slurm_extra"] == "'--signal=USR1@120'"
    assert [rule for rule, values in resources.items() if "slurm_extra" in values] == ["train"]
    assert "slurm_extra" not in slurm_profile()["default-resources"]


def queued_jobs(cluster: SlurmCluster) -> list[tuple[str, str]]:
    """(job id, comment) of the jobs in the queue; the executor plugin comments each with its rule."""
    lines = cluster.command("squeue", "--noheader", "--format=%i %k").splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines if len(line.split(maxsplit=1)) == 2]
