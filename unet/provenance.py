"""What produced a result: the code's commit, the versions of what ran it, the device.

Training writes this record beside each model (`run.json`, also in model.pt's metadata); the
tables carry it for their rows, so that a reviewer can tell which code, libraries and hardware
made each number, and install the same versions (`constraints.txt`).

Standard library only; the caller adds what only torch knows (CUDA and cuDNN builds, the device).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The package's own checkout: the commit of the code that ran, wherever the job's working directory is.
SOURCE = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "numpy", "snakemake")
# The commit of a copy without .git (as on a lent GPU machine), "+dirty" appended for uncommitted changes:
# `UNET_COMMIT=$(git rev-parse HEAD)$(git diff --quiet HEAD || echo +dirty)`, set where the copy was made.
COMMIT_VARIABLE = "UNET_COMMIT"


def code_version(source: Path = SOURCE) -> dict[str, object]:
    """The checkout's commit and whether it had uncommitted changes: from $UNET_COMMIT where it is set, else from
    git (None for both outside a git checkout)."""
    given = os.environ.get(COMMIT_VARIABLE)
    if given:
        commit, _, state = given.partition("+")
        return {"commit": commit, "dirty": state == "dirty"}
    try:
        commit = _git(source, "rev-parse", "HEAD")
        dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def python_path_first(folder: Path = SOURCE) -> str:
    """$PYTHONPATH with `folder` first (default: this package's checkout), for subprocesses that must import
    the code there, not another installed copy of the package."""
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def versions() -> dict[str, str | None]:
    """Python's version and the installed versions of the main libraries (None where one is missing)."""
    found = {"python": platform.python_version(), "unet": _version("unet-reproduction")}
    return found | {name: _version(name) for name in PACKAGES}


def record(code: dict[str, object] | None = None, **extra) -> dict[str, object]:
    """The code version (`code`, as `code_version` read it when the work started; default: now), the library
    versions and the host, with `extra` (device, seed, wall time...)."""
    return {**(code or code_version()), **versions(), "host": platform.node(), **extra}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(source: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(source), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
