"""benchmarks/gpu.sh, the script a lent GPU machine runs, checked on the CPU before a GPU is spent on it:
`gpu.sh selftest` runs every step of `bench` and `reproduce` with tiny settings (the DAG as a dry run)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import tifffile

from helpers import REPO, job_stats

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pure_python_wheel(folder: Path, name: str) -> Path:
    """A minimal wheel of one module, `name.READY = True`, as pip installs it from a folder of wheels."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": b"READY = True\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def data_archive(path: Path, shared_data: Path) -> Path:
    """A mirror archive laid out as .devdata/mirror.tar.xz, with two real ISBI slices cropped to 256 x 256."""
    with tarfile.open(path, "w:xz") as archive:
        for name in ("train-volume.tif", "train-labels.tif"):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, tifffile.imread(shared_data / "isbi2012" / name, key=[0, 1])[:, :256, :256])
            member = tarfile.TarInfo(f"data/isbi2012/{name}")
            member.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(member, buffer)
    return path


def test_selftest_runs_every_step_of_the_gpu_script_on_the_cpu(shared_data, tmp_path):
    recorded = {path.name: path.read_bytes() for path in (REPO / "benchmarks" / "results").glob("*.md")}
    out, work = tmp_path / "out", tmp_path / "work"
    environment = os.environ | {
        "OUT": str(out),
        "WORK": str(work),
        "WHEELS": str(pure_python_wheel(tmp_path / "wheels", "gpu_selftest_probe").parent),
        "DATA_ARCHIVE": str(data_archive(tmp_path / "mirror.tar.xz", shared_data)),
        "UNET_COMMIT": COMMIT,
    }
    result = subprocess.run(
        ["bash", REPO / "benchmarks" / "gpu.sh", "selftest"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert (work / "site" / "gpu_selftest_probe.py").is_file()  # the wheels were installed
    steps = re.findall(r"^gpu\.sh: (bench_\w+ .*?)(?: \(at most \d+ s\))?$", result.stderr, re.MULTILINE)
    assert steps[-1].startswith("bench_train") and "--compile" in steps[-1]  # the slow one last
    # Each benchmark handed its table to $OUT, named by the commit given, the repository's records untouched.
    augment = importlib.util.find_spec("elasticdeform") is not None
    for stage in ("train", "predict") + (("augment",) if augment else ()):
        assert f"commit {COMMIT[:7]}, " in (out / f"{stage}.md").read_text()
    if not augment:
        assert "bench_augment skipped: elasticdeform" in result.stderr
    assert (out / "train.md").read_text().count(f"commit {COMMIT[:7]}") == 2  # eager, then --compile
    assert {path.name: path.read_bytes() for path in (REPO / "benchmarks" / "results").glob("*.md")} == recorded
    # The reproduction's DAG: the real data sets from the extracted mirror, every target but the exports.
    jobs = job_stats(result.stdout)
    assert {"fetch", "train", "predict_fold", "evaluate_ctc", "tables", "rule_times", "all"} <= set(jobs)
    assert "export" not in jobs
    assert (work / "mirror" / "data" / "isbi2012" / "train-volume.tif").is_file()
