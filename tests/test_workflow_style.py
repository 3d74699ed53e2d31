"""Standards every rule file keeps: snakemake --lint reports nothing, snakefmt and ruff leave the files
unchanged, each rule has its log, benchmark, resources and conda environment; envs/ installs what
pyproject.toml depends on; CI runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import CONFIG, DEMO_CONFIG, REPO
from workflow_rules import workflow_rules

RULE_FILES = [
    REPO / "Snakefile",
    *sorted((REPO / "workflow" / "rules").glob("*.smk")),
    REPO / "tests" / "slurm_workflow" / "Snakefile",
]
DEFAULT_CONFIG = CONFIG
CONFIGS = [DEFAULT_CONFIG] + [DEMO_CONFIG] * DEMO_CONFIG.is_file()
ENVS = REPO / "envs"
RULE_ENV = ENVS / "unet.yaml"
PROFILES = REPO / "profiles"
# pip names whose conda-forge package is named otherwise (matplotlib-base: without a GUI toolkit).
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# Run outside the rules' environment: snakemake activates it for each job, and checks the configuration
# (unet.pipeline, with jsonschema) itself.
NOT_IN_RULE_ENV = {"snakemake", "jsonschema"}
DOWNLOAD = re.compile(r"\bunet(\.cli)?\s+fetch\b")
GPU_COMMAND = re.compile(r"\bunet(\.cli)?\s+(train|predict)\b")


def run(*args: str | Path) -> subprocess.CompletedProcess:
    """A tool (snakefmt, ruff, snakemake --lint) on the repository."""
    return subprocess.run([str(arg) for arg in args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda path: path.name)
def test_lint_reports_nothing(configfile: Path) -> None:
    result = run(sys.executable, "-m", "snakemake", "--lint", "--configfile", configfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_leaves_the_rule_files_unchanged() -> None:
    result = run(sys.executable, "-m", "snakefmt", "--check", "--diff", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check", "--diff"]], ids=["lint", "format"])
def test_ruff_leaves_the_python_files_unchanged(command: list[str]) -> None:
    result = run(sys.executable, "-m", "ruff", *command, "unet", "tests", "benchmarks", "envs")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda path: path.name)
def test_rules_have_log_benchmark_resources_and_environment(configfile: Path) -> None:
    assert rule_violations(REPO / "Snakefile", configfile) == []


def test_rule_check_finds_violations(tmp_path: Path) -> None:
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        f"""
rule fetch:
    output: "results/raw/x"
    log: "results/logs/fetch/x.log"
    shell: "unet fetch x > {{output}}"

rule weightmap:
    output: "results/weights/x"
    log: "results/logs/weightmap/x.log"
    benchmark: "results/benchmarks/weightmap/x.tsv"
    resources: mem_mb=100, runtime=1
    conda: "{RULE_ENV}"
    shell: "unet weightmap x {{output}}"
"""
    )
    assert rule_violations(snakefile) == [
        "rule fetch: no benchmark",
        "rule fetch: resources without mem_mb, runtime",
        f"rule fetch: conda environment None is not {RULE_ENV}",
        "rule fetch: downloads but is not a localrule",
    ]


def test_profiles_give_a_gpu_to_training_and_prediction() -> None:
    rules = workflow_rules(REPO / "Snakefile", DEFAULT_CONFIG)
    assert [problem for profile in PROFILES.glob("*/config.yaml") for problem in gpu_problems(profile, rules)] == []


def test_gpu_check_finds_mismatches(tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(
        'rule train:\n    output: "m"\n    shell: "unet train --out {output}"\n\n'
        'rule evaluate:\n    output: "s"\n    shell: "unet evaluate isbi x y --out {output}"\n'
    )
    profile = tmp_path / "config.yaml"
    profile.write_text("set-resources:\n  evaluate: {gpu: 1}\n  predict: {gpu: 1}\n")
    assert gpu_problems(profile, workflow_rules(tmp_path / "Snakefile")) == [
        f"{profile}: set-resources names rules that do not exist: ['predict']",
        f"{profile}: no gpu for rules that train or predict: ['train']",
        f"{profile}: gpu for rules that neither train nor predict: ['evaluate']",
    ]


def gpu_problems(profile: Path, rules: list) -> list[str]:
    """How a profile's set-resources miss the workflow's rules, or give a GPU to other rules than training and
    prediction."""
    per_rule = yaml.safe_load(profile.read_text()).get("set-resources", {})
    with_gpu = {rule for rule, resources in per_rule.items() if resources.get("gpu")}
    needs_gpu = {rule.name for rule in rules if rule.shellcmd and GPU_COMMAND.search(rule.shellcmd)}
    existing = {rule.name for rule in rules}
    problems = {
        "set-resources names rules that do not exist": set(per_rule) - existing,
        "no gpu for rules that train or predict": needs_gpu - with_gpu,
        "gpu for rules that neither train nor predict": (with_gpu & existing) - needs_gpu,
    }
    return [f"{profile}: {problem}: {sorted(names)}" for problem, names in problems.items() if names]


def test_rule_environment_and_pip_lock_pin_the_same_versions_of_the_runtime_dependencies() -> None:
    """envs/unet.yaml (conda) and envs/constraints.txt (pip) pin each runtime dependency of pyproject.toml to
    one version, the same in both, within pyproject's range (envs/lock.py writes both)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = dict(line.split("==") for line in (ENVS / "constraints.txt").read_text().splitlines() if "==" in line)
    env = yaml.safe_load(RULE_ENV.read_text())
    listed = dict(_conda_spec(spec) for spec in env["dependencies"] if isinstance(spec, str) and spec != "pip")
    assert listed.pop("python") == project["requires-python"]
    wanted = {}
    for requirement in map(Requirement, project["dependencies"]):
        version = locked[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (
            f"the lock's {requirement.name} {version} is outside {requirement}"
        )
        if requirement.name not in NOT_IN_RULE_ENV:
            wanted[CONDA_NAMES.get(requirement.name, requirement.name)] = f"=={version}"
    assert listed == wanted
    assert env["channels"][0] == "conda-forge"


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"^test_command='(.+)'$", (REPO / ".ci" / "run").read_text(), re.MULTILINE)
    assert command, ".ci/run defines no test_command"
    assert f"`{command[1]}`" in (REPO / "README.md").read_text()


def _conda_spec(spec: str) -> tuple[str, str]:
    name, version = re.fullmatch(r"([\w.-]+)\s*(.*)", spec).groups()
    return name, version.replace(" ", "")


def rule_violations(snakefile: Path, configfile: Path | None = None) -> list[str]:
    """How the rules of a workflow break the rule standards (this module's docstring), one line each."""
    problems = []
    for rule in workflow_rules(snakefile, configfile):
        if not rule.output:
            continue  # a target rule such as `all`: nothing runs
        where = f"rule {rule.name}"
        logs = [str(log) for log in rule.log]
        if not logs:
            problems.append(f"{where}: no log")
        elif not all(log.startswith(f"results/logs/{rule.name}/") for log in logs):
            problems.append(f"{where}: log {logs} not under results/logs/{rule.name}/")
        if rule.benchmark is None:
            problems.append(f"{where}: no benchmark")
        elif not str(rule.benchmark).startswith(f"results/benchmarks/{rule.name}/"):
            problems.append(f"{where}: benchmark {rule.benchmark} not under results/benchmarks/{rule.name}/")
        missing = [name for name in ("mem_mb", "runtime") if name not in rule.resources]
        if missing:
            problems.append(f"{where}: resources without {', '.join(missing)}")
        env = rule.conda_env and (Path(rule.snakefile).parent / str(rule.conda_env)).resolve()
        if env != RULE_ENV:
            problems.append(f"{where}: conda environment {rule.conda_env} is not {RULE_ENV}")
        if rule.shellcmd and DOWNLOAD.search(rule.shellcmd) and not rule.is_local:
            problems.append(f"{where}: downloads but is not a localrule")
    return problems
