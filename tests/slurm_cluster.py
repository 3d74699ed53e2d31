"""A real single-node SLURM cluster on this machine, for the tests that submit through sbatch.

The fixture `slurm_cluster` starts munged, slurmctld and slurmd (Debian packages munge,
slurmctld, slurmd, slurm-client; `.ci/run` installs them) with every key, socket, state
and log file in a temporary folder, waits until the node is idle, and stops the daemons
afterwards. The tests are skipped, saying why, where the binaries are missing.

The node advertises one GPU, a generic resource whose device file is /dev/null: the
profile's GPU requests (sbatch --gpus=1) are scheduled as on a GPU cluster, and the jobs
see CUDA_VISIBLE_DEVICES=0 without a CUDA device, so torch computes on the CPU.

Two files live outside the temporary folder: slurm.conf and gres.conf, at the clients'
compiled-in default path. The SLURM executor's job step runs `srun` with SLURM_CONF
removed from its environment (it keeps only the job's identity), so inside a job the
clients find the cluster only where a real cluster keeps its configuration. The fixture
writes these files only where none exist or where an earlier run of its own left them,
and removes them on teardown; a lock keeps two test sessions on one machine from
overlapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
DEBIAN_PACKAGES = "slurmctld slurmd slurm-client munge"
# Where SLURM looks for its configuration when SLURM_CONF is not set (Debian's build).
CONF_DIR = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf")
OUR_MARK = "# Written by the unet test suite (tests/slurm_cluster.py); removed when the tests end."
LOCK = Path(tempfile.gettempdir()) / "unet-slurm-test-cluster.lock"
STARTUP_TIMEOUT_S = 60
# The node description that `slurmd -C` prints (and slurm.conf takes).
HARDWARE = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")


def why_no_cluster() -> str | None:
    """The reason a test cluster cannot be started here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        return (
            f"a SLURM test cluster needs {', '.join(missing)}: install the Debian packages "
            f"{DEBIAN_PACKAGES} (as .ci/run does)"
        )
    if os.geteuid() != 0:
        return "a SLURM test cluster runs slurmd as root (it starts jobs as their user); run the tests as root"
    foreign = [path for path in _conf_paths() if path.exists() and OUR_MARK not in path.read_text(errors="replace")]
    if foreign:
        return (
            f"{', '.join(map(str, foreign))} configure another SLURM cluster on this machine; the tests leave it alone"
        )
    return None


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster: partition `debug` (the default) with node `node`."""

    root: Path
    node: str
    hardware: dict[str, int]  # HARDWARE keys

    @property
    def cpus(self) -> int:
        return self.hardware["CPUs"]

    @property
    def controller_log(self) -> Path:
        return self.root / "log" / "slurmctld.log"

    def command(self, *args: str) -> str:
        """Runs a SLURM client command and returns its standard output."""
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Comment, ...); finished jobs stay for MinJobAge."""
        text = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def submitted_job_ids(self) -> list[str]:
        """The ids of every job the controller accepted from sbatch, from its own log."""
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", self.controller_log.read_text())

    def wait_for_job(self, job_id: str, timeout_s: float = 60) -> dict[str, str]:
        """The job's record once it has left the queue (COMPLETED, FAILED, ...)."""
        deadline = time.monotonic() + timeout_s
        while (job := self.job(job_id))["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM job {job_id} still {job['JobState']} after {timeout_s} s")
            time.sleep(0.5)
        return job

    def diagnostics(self) -> str:
        """The tails of the daemons' logs, for failure messages."""
        return _log_tails(self.root)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Starts munged, slurmctld and slurmd under `root` and stops them on exit."""
    with _exclusive(LOCK), contextlib.ExitStack() as stack:
        for folder in ("munge", "run", "state", "spool", "log"):
            (root / folder).mkdir(mode=0o755)
        munge_socket = _start_munged(root, stack)
        cluster = SlurmCluster(root=root, node=socket.gethostname().split(".")[0], hardware=_node_hardware())
        stack.enter_context(_installed_conf(_slurm_conf(cluster, munge_socket), _gres_conf()))
        stack.enter_context(_daemon(root, "slurmctld", ["slurmctld", "-D"]))
        stack.enter_context(_daemon(root, "slurmd", ["slurmd", "-D", "-N", cluster.node]))
        _wait_for(lambda: _node_state(cluster) == "idle", f"node {cluster.node} to become idle", root)
        try:
            yield cluster
        finally:
            _cancel_all_jobs(cluster)


def _start_munged(root: Path, stack: contextlib.ExitStack) -> Path:
    """The tests' own munged, with its own key and socket: a system munged is neither needed nor touched."""
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(128))
    key.chmod(0o600)
    munge_socket = root / "run" / "munge.socket"
    argv = [
        "munged",
        "--foreground",
        # munged refuses keys and sockets under a world-writable folder such as /tmp otherwise.
        "--force",
        f"--socket={munge_socket}",
        f"--key-file={key}",
        f"--pid-file={root / 'run' / 'munged.pid'}",
        f"--seed-file={root / 'munge' / 'munged.seed'}",
        f"--log-file={root / 'log' / 'munged.log'}",
    ]
    stack.enter_context(_daemon(root, "munged", argv))
    _wait_for(munge_socket.exists, "munged to create its socket", root)
    return munge_socket


def _node_hardware() -> dict[str, int]:
    """The node's CPU layout and memory as slurmd itself detects them, so that it is not drained for a mismatch."""
    detected = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    values = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)\b", detected.splitlines()[0])}
    return {key: values[key] for key in HARDWARE}


def _slurm_conf(cluster: SlurmCluster, munge_socket: Path) -> str:
    root = cluster.root
    controller_port, node_port = _free_ports(2)
    hardware = " ".join(f"{key}={value}" for key, value in cluster.hardware.items())
    lines = [
        OUR_MARK,
        "ClusterName=unettest",
        # Addresses are 127.0.0.1 so that the host name need not resolve.
        f"SlurmctldHost={cluster.node}(127.0.0.1)",
        f"SlurmctldPort={controller_port}",
        f"SlurmdPort={node_port}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={cluster.controller_log}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        # No cgroups: plain /proc process tracking and no task containment work in any container.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        # Finished jobs stay visible to squeue/scontrol for 2 hours, longer than any test's run: the
        # executor's status queries (squeue, as there is no accounting database) and the tests read
        # them, the demo's after the whole run (over 10 minutes on a loaded machine).
        "MinJobAge=7200",
        "ReturnToService=2",
        "GresTypes=gpu",
        f"NodeName={cluster.node} NodeAddr=127.0.0.1 {hardware} Gres=gpu:1 State=UNKNOWN",
        f"PartitionName=debug Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _gres_conf() -> str:
    return f"{OUR_MARK}\nAutoDetect=off\nName=gpu File=/dev/null\n"


def _conf_paths() -> list[Path]:
    return [CONF_DIR / name for name in CONF_FILES]


@contextlib.contextmanager
def _installed_conf(*texts: str) -> Iterator[None]:
    """Writes CONF_FILES (in that order) where the SLURM daemons and clients look for them; removes them on exit."""
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    try:
        for path, text in zip(_conf_paths(), texts, strict=True):
            path.write_text(text)
        yield
    finally:
        for path in _conf_paths():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _daemon(root: Path, name: str, argv: list[str]) -> Iterator[subprocess.Popen]:
    """A daemon in the foreground, its output in log/<name>.out, terminated on exit."""
    with open(root / "log" / f"{name}.out", "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _node_state(cluster: SlurmCluster) -> str | None:
    result = subprocess.run(
        ["sinfo", "--noheader", f"--nodes={cluster.node}", "--format=%T"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _cancel_all_jobs(cluster: SlurmCluster) -> None:
    with contextlib.suppress(RuntimeError):
        job_ids = cluster.command("squeue", "--noheader", "--format=%i").split()
        if job_ids:
            cluster.command("scancel", *job_ids)


def _wait_for(condition: Callable[[], bool], what: str, root: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {STARTUP_TIMEOUT_S} s for {what}\n{_log_tails(root)}")
        time.sleep(0.25)


def _log_tails(root: Path, lines: int = 20) -> str:
    tails = []
    for log in sorted((root / "log").glob("*")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(tails)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One test cluster per machine at a time: they would share the node name and the configuration path."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
