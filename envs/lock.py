"""Write envs/constraints.txt, the lock of a pip install: the exact version of every package that
`pip install -e ".[test,slurm]"` brought into this environment, and pin envs/unet.yaml (the rules'
conda environment) to the same versions of the runtime dependencies.

Run it in an environment where the tests pass, after changing pyproject.toml's dependencies:

    python envs/lock.py

A reviewer then installs exactly those versions with `pip install torch==2.13.0 -e . -c
envs/constraints.txt` (README.md); tests/test_workflow_style.py keeps the three files in step.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ENVS = Path(__file__).resolve().parent
REPO = ENVS.parent
CONSTRAINTS = ENVS / "constraints.txt"
RULE_ENV = ENVS / "unet.yaml"
EXTRAS = ("test", "slurm")
# pip names whose conda-forge package is named otherwise (matplotlib-base: without a GUI toolkit).
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# Run outside the rules' environment: snakemake activates it for each job and checks the configuration.
NOT_IN_RULE_ENV = {"snakemake", "jsonschema"}


def installed_closure(requirements: list[Requirement], extras: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> installed version for `requirements` and everything they require, in this environment."""
    found: dict[str, str] = {}
    pending = [(requirement, set(extras)) for requirement in requirements]
    while pending:
        requirement, chosen = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in chosen | {""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found[name] = metadata.version(name).split("+")[0]  # torch 2.13.0+cpu: the build is the installer's choice
        pending += [(Requirement(text), set(requirement.extras)) for text in metadata.requires(name) or []]
    return found


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in project()["dependencies"]]


def main() -> int:
    wanted = runtime_requirements() + [
        Requirement(text) for extra in EXTRAS for text in project()["optional-dependencies"][extra]
    ]
    versions = installed_closure(wanted)
    lines = [f"{name}=={version}" for name, version in sorted(versions.items())]
    header = "# The lock of a pip install (envs/lock.py wrote it): pip install ... -c envs/constraints.txt\n"
    CONSTRAINTS.write_text(header + "\n".join(lines) + "\n")
    pin_rule_environment(versions)
    print(f"{CONSTRAINTS}: {len(lines)} packages; {RULE_ENV}: pinned", file=sys.stderr)
    return 0


def pin_rule_environment(versions: dict[str, str]) -> None:
    """Rewrite the runtime dependencies of envs/unet.yaml as `conda-name==version`."""
    text = RULE_ENV.read_text()
    for requirement in runtime_requirements():
        if requirement.name in NOT_IN_RULE_ENV:
            continue
        conda = CONDA_NAMES.get(requirement.name, requirement.name)
        pinned = f"  - {conda}=={versions[canonicalize_name(requirement.name)]}"
        text, count = re.subn(rf"^  - {re.escape(conda)}[=<>!~ ].*$", pinned, text, flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(f"{RULE_ENV}: no single line for {conda}")
    RULE_ENV.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
