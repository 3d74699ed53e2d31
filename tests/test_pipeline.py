"""The whole DAG: the demo configuration end to end (tables, submission, result masks, logs,
report), a dry run of the paper configuration, and the configuration checks that stop a run
before its first job. Each runs in a copy of the workflow's files, without results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from unet.io import read_split

from demo_tables import DEMO_CTC_RUNS, DEMO_ISBI_RUNS, check_demo_tables
from helpers import CONFIG, copy_workflow, job_stats, snakemake

DEMO_CONFIG = "config/demo.yaml"
# A job as Snakemake prints it: "[local]rule NAME:" and its indented fields (log:, benchmark:, ...).
JOB = re.compile(r"^(?:local)?rule (?P<rule>\w+):\n(?P<fields>(?:    .*\n)+)", re.MULTILINE)
FIELD = re.compile(r"^    (?P<key>\w+): (?P<value>.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    workdir: Path
    log: str

    @property
    def results(self) -> Path:
        return self.workdir / "results"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One run of the demo DAG, from the synthetic data to both tables, as the README tells users to start it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    result = snakemake(workdir, "--configfile", DEMO_CONFIG, "--cores", "2")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    return Run(workdir, log)


@pytest.mark.slow
def test_demo_tables_hold_the_paper_rows_and_ours(demo: Run) -> None:
    check_demo_tables(demo.results / "tables")


@pytest.mark.slow
def test_demo_markdown_tables_state_the_protocol_and_the_settings(demo: Run) -> None:
    table1 = (demo.results / "tables" / "table1.md").read_text()
    table2 = (demo.results / "tables" / "table2.md").read_text()
    assert "held-out contiguous blocks" in table1 and "hidden test slices" in table1
    assert "trained on the other sequence" in table2 and "hidden test sequences" in table2
    for table in (table1, table2):
        # Our rows say how the demo's network differs from the paper's.
        assert "base_channels 8 (paper 64)" in table and "depth 3 (paper 4)" in table
    assert re.search(r"^\| - \| ours \(demo-em\) \| [\d.]+ ± [\d.]+ \|.* \| 3 \|$", table1, re.MULTILINE)
    assert re.search(r"^\| ours \| - \| - \| [\d.]+ ± [\d.]+ \|", table2, re.MULTILINE)


@pytest.mark.slow
def test_demo_submission_is_the_test_volume_probability_stack(demo: Run) -> None:
    test_slices = yaml.safe_load(CONFIG.read_text())["datasets"]["demo-em"]["synthetic"]["test_slices"]
    run = demo.results / "predictions" / "demo-em" / "all" / "seed0"
    with tifffile.TiffFile(run / "submission.tif") as tiff:
        assert len(tiff.pages) == test_slices
        submission = tiff.asarray()
    assert submission.dtype == np.float32
    assert 0 <= submission.min() and submission.max() <= 1
    np.testing.assert_array_equal(submission, tifffile.imread(run / "probabilities.tif"))


@pytest.mark.slow
def test_demo_ctc_results_have_a_mask_for_every_frame(demo: Run) -> None:
    for run, tested in (("01", "02"), ("02", "01")):
        split = read_split(demo.results / "data" / "demo-cells" / tested)
        results = demo.results / "predictions" / "demo-cells" / run / "seed0" / f"{tested}_RES"
        assert sorted(path.name for path in results.glob("*.tif")) == [f"mask{frame:03d}.tif" for frame in split.frames]
        masks = np.stack([tifffile.imread(results / f"mask{frame:03d}.tif") for frame in split.frames])
        assert masks.shape == split.images.shape and np.issubdtype(masks.dtype, np.unsignedinteger)
        assert masks.max() > 0, f"{results}: no cell found in any frame"


@pytest.mark.slow
def test_demo_every_job_wrote_its_log_and_benchmark(demo: Run) -> None:
    jobs = [(job["rule"], dict(FIELD.findall(job["fields"]))) for job in JOB.finditer(demo.log)]
    ran = {}
    for rule, fields in jobs:
        ran[rule] = ran.get(rule, 0) + 1
        if rule == "all":
            continue
        assert "log" in fields and "benchmark" in fields, f"rule {rule}: {fields}"
        for path in fields["log"].split(", ") + [fields["benchmark"]]:
            assert (demo.workdir / path).is_file(), f"rule {rule} did not write {path}"
    assert ran == job_stats(demo.log)  # every job of the DAG ran, once
    assert ran["train"] == DEMO_ISBI_RUNS + 1 + DEMO_CTC_RUNS  # the folds, the model on all slices, both directions


@pytest.mark.slow
def test_demo_report_has_the_tables_curves_figures_and_run_times(demo: Run) -> None:
    result = snakemake(demo.workdir, "--configfile", DEMO_CONFIG, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (demo.results / "report.html").read_text()
    assert len(html) > 1_000_000, "the report embeds no figures"
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html).group(1))
    files = {category: sorted(sum(groups.values(), [])) for category, groups in categories.items()}
    assert files == {
        "Tables": ["results/tables/table1.csv", "results/tables/table2.csv"],
        "Training": sorted(
            f"results/models/{dataset}/{run}/seed0/loss.png"
            for dataset, runs in (("demo-em", ("fold0", "fold1", "fold2", "all")), ("demo-cells", ("01", "02")))
            for run in runs
        ),
        "Predictions": sorted(
            f"results/figures/overlay-{name}-seed0.png"
            for name in ("demo-em-fold0", "demo-em-fold1", "demo-em-fold2", "demo-cells-01", "demo-cells-02")
        ),
        "Weight maps and augmentation": sorted(
            f"results/figures/{kind}-{dataset}.png"
            for kind in ("augment", "weightmap")
            for dataset in ("demo-cells", "demo-em")
        ),
        "Run time": ["results/tables/rule_times.png"],
        "bioimage.io models": sorted(
            f"results/exports/{dataset}/{run}/seed0/cover.png"
            for dataset, runs in (("demo-em", ("fold0", "fold1", "fold2", "all")), ("demo-cells", ("01", "02")))
            for run in runs
        ),
    }
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    assert all(results[path]["caption"].strip() for paths in files.values() for path in paths), "a caption is empty"
    # Snakemake's own statistics: the run time of every job, per rule.
    runtimes = json.loads(re.search(r"var runtimes_spec = (\{.*?\});\n", html).group(1))
    assert {job["rule"] for job in runtimes["data"]["values"]} == set(job_stats(demo.log)) - {"all"}


# The paper profile's DAG, job by job, from config/config.yaml: experiments isbi2012 (protocol
# isbi) and DIC-C2DH-HeLa, PhC-C2DH-U373 (protocol ctc), isbi.folds 3, seeds [0], predict_test.
PAPER_JOBS = {
    "fetch": 3,  # each data set, from its official source
    "prepare": 1 + 2 * 2,  # the labelled splits: isbi train; ctc sequences 01 and 02
    "prepare_isbi_test": 1,  # the isbi test volume
    "weightmap": 1 + 2 * 2,  # the labelled splits: isbi train; ctc 01, 02
    "weightmap_figure": 3,  # one per experiment
    "augment_figure": 3,
    "train": (3 + 1) + 2 * 2,  # isbi: 3 folds and all slices; ctc: one per training sequence
    "predict_isbi_fold": 3,  # each fold's held-out block
    "predict_isbi_test": 1,  # the all-slices model on the test volume: the submission
    "predict_ctc": 2 * 2,  # trained on one sequence, predicts the other, per ctc data set
    "evaluate_isbi": 3,  # the folds
    "evaluate_ctc": 2 * 2,  # both directions of each ctc data set
    "export": (3 + 1) + 2 * 2,  # a bioimage.io package of every trained model
    "tables": 1,
    "rule_times": 1,
    "all": 1,
}


def test_paper_dry_run_resolves_every_job_of_the_three_experiments(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert (config["experiments"], config["isbi"], config["seeds"]) == (
        ["isbi2012", "DIC-C2DH-HeLa", "PhC-C2DH-U373"],
        {"folds": 3, "predict_test": True},
        [0],
    ), "config/config.yaml changed: derive PAPER_JOBS anew"
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_stats(result.stdout + result.stderr) == PAPER_JOBS


def test_quick_dry_run_resolves_the_real_experiments_from_the_mirror(shared_data: Path, tmp_path: Path) -> None:
    """config/quick.yaml as the README runs it offline: ISBI folds and both HeLa directions, a smaller network."""
    workdir = copy_workflow(tmp_path)
    result = snakemake(
        workdir,
        "--dry-run",
        "--printshellcmds",
        "--configfile",
        "config/quick.yaml",
        "--config",
        f"mirror={shared_data}",
        "experiments=[isbi2012,DIC-C2DH-HeLa]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    jobs = job_stats(log)
    assert (jobs["train"], jobs["predict_isbi_fold"], jobs["predict_ctc"], jobs["evaluate_ctc"]) == (3 + 2, 3, 2, 2)
    assert "predict_isbi_test" not in jobs  # isbi.predict_test is off: no fourth ISBI model
    commands = [line.removeprefix("Shell command: ") for line in log.splitlines()]
    train_commands = [command for command in commands if command.startswith("unet train ")]
    assert len(train_commands) == 5 and all("--base-channels 16 " in command for command in train_commands)
    fetch_commands = [command for command in commands if command.startswith("unet fetch ")]
    assert len(fetch_commands) == 2 and all(f"--mirror {shared_data}" in command for command in fetch_commands)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model={depth: 0}", r"config: model.depth: 0 is less than the minimum of 1"),
        ("train={iterations: 10, itterations: 5}", r"config: train: .*'itterations' was unexpected"),
        ("colour=blue", r"config: \(top level\): .*'colour' was unexpected"),
        ("experiments=[demo-em,demo-cels]", r"config: experiments \['demo-cels'\] are not keys of `datasets`"),
        ("datasets={demo-em: {protocol: isib}}", r"config: datasets.demo-em.protocol: 'isib' is not one of"),
        (
            "train={input_size: 190}",
            r"config: train.input_size = 190: input size 190 is invalid for a depth-3 "
            r"U-Net .*nearest valid sizes: 188 or 196",
        ),
        (
            "datasets={demo-cells: {predict: {input_size: 104}}}",
            r"config: datasets.demo-cells.predict.input_size = "
            r"104: input size 104 is invalid",
        ),
        ("isbi={folds: 13}", r"config: isbi.folds = 13: more folds than the 12 labelled training slices of demo-em"),
    ],
    ids=[
        "bound",
        "nested-key",
        "top-level-key",
        "experiment",
        "dataset-value",
        "tile-size",
        "dataset-tile-size",
        "folds",
    ],
)
def test_a_wrong_config_key_or_value_stops_the_run_before_any_job(override: str, message: str, tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    # A real run of one cheap job: were the configuration accepted, it would make results/.
    result = snakemake(
        workdir, "--configfile", DEMO_CONFIG, "--cores", "1", "--config", override, "--", "results/raw/demo-em"
    )
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert not (workdir / "results").exists()


def test_nested_command_line_values_are_typed_as_in_a_config_file(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    result = snakemake(
        workdir,
        "--dry-run",
        "--configfile",
        DEMO_CONFIG,
        "--config",
        "model={depth: 2}",
        "seeds=[0,1]",
        "--printshellcmds",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_stats(result.stdout + result.stderr)["train"] == 2 * (DEMO_ISBI_RUNS + 1 + DEMO_CTC_RUNS)
    assert "--depth 2 " in result.stdout
