"""The whole DAG: the demo configuration end to end (tables, submission, result masks, logs,
report), a dry run of the paper configuration, and the configuration checks that stop a run
before its first job. Each runs in a copy of the workflow's files, without results."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from unet.io import read_split
from unet.synthetic import synthesize_cells

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
    # About 3 minutes alone; the time limit is for a hang, on a machine that runs the other tests beside it.
    result = snakemake(workdir, "--configfile", DEMO_CONFIG, "--cores", "2", timeout=1800)
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
        "Tables": [f"results/tables/table{n}.{ext}" for n in (1, 2) for ext in ("csv", "html")],
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


@pytest.mark.slow
def test_demo_report_shows_the_tables_numbers_in_a_real_browser(demo: Run) -> None:
    """The report is a web page: open it in headless Chromium, go to Tables, view each table, and find our numbers
    (and the paper's) in what the browser rendered."""
    report = demo.results / "report.html"
    if not report.is_file():
        result = snakemake(demo.workdir, "--configfile", DEMO_CONFIG, "--report", "results/report.html")
        assert result.returncode == 0, result.stderr[-3000:]
    table1 = pd.read_csv(demo.results / "tables" / "table1.csv").set_index("group")
    table2 = pd.read_csv(demo.results / "tables" / "table2.csv").set_index("method")
    expected = {
        "Table 1 (ISBI 2012)": [
            f"{table1.loc['ours (demo-em)', 'warping_error']:.6f}",
            "0.000353",
            f"{table1.loc['ours (demo-em)', 'rand_error']:.4f}",
        ],
        "Table 2 (cell tracking)": [f"{table2.loc['ours', 'demo-cells SEG']:.4f}", "0.7756"],
    }
    with headless_chromium() as browser:
        for label, numbers in expected.items():
            text = rendered_table(browser, report, label)
            assert all(number in text for number in numbers), (label, numbers, text[:2000])
            assert "Provenance of ours" in text and "commit" in text


def rendered_table(browser, report: Path, label: str) -> str:
    """The text the report shows when one clicks Tables, then the eye button of the table named `label`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report.as_uri())
    wait = WebDriverWait(browser, 30)
    wait.until(expected_conditions.element_to_be_clickable((By.XPATH, "//span[text()='Tables']"))).click()
    row = wait.until(expected_conditions.presence_of_element_located((By.XPATH, f"//td[text()='{label}']/..")))
    row.find_element(By.XPATH, ".//a[@iconname='eye']").click()
    frame = wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "iframe")))
    browser.switch_to.frame(frame)
    text = (
        wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "table")))
        .find_element(By.XPATH, "/html/body")
        .text
    )
    browser.switch_to.default_content()
    return text


@contextlib.contextmanager
def headless_chromium():
    """Debian's Chromium through its ChromeDriver (.ci/run installs both), without any network of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    try:
        yield browser
    finally:
        browser.quit()


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
    "predict_fold": 3,  # each fold's held-out block
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
    assert (jobs["train"], jobs["predict_fold"], jobs["predict_ctc"], jobs["evaluate_ctc"]) == (3 + 2, 3, 2, 2)
    assert "predict_isbi_test" not in jobs  # isbi.predict_test is off: no fourth ISBI model
    commands = [line.removeprefix("Shell command: ").removeprefix("unet gpu -- ") for line in log.splitlines()]
    train_commands = [command for command in commands if command.startswith("unet train ")]
    assert len(train_commands) == 5 and all("--base-channels 16 " in command for command in train_commands)
    # ISBI 2012's own peak learning rate; HeLa keeps the profile's.
    rates = {
        (re.search(r"--data results/data/([\w-]+)/", command)[1], re.search(r"--learning-rate (\S+)", command)[1])
        for command in train_commands
    }
    assert rates == {("isbi2012", "0.01"), ("DIC-C2DH-HeLa", "0.003")}
    # HeLa's models make their instances at a cell probability of 0.65 (ISBI 2012 scores every threshold).
    thresholds = {
        re.search(r"--predict-threshold (\S+)", command)[1] for command in train_commands if "HeLa" in command
    }
    assert thresholds == {"0.65"}
    # The prediction rule passes the data set's settings itself: quick.yaml's threshold merged with tta flips.
    hela_predictions = [command for command in commands if command.startswith("unet predict ") and "HeLa" in command]
    assert len(hela_predictions) == 2
    assert {(re.search(r"--tta (\S+)", c)[1], re.search(r"--threshold (\S+)", c)[1]) for c in hela_predictions} == {
        ("flips", "0.65")
    }
    fetch_commands = [command for command in commands if command.startswith("unet fetch ")]
    assert len(fetch_commands) == 2 and all(f"--mirror {shared_data}" in command for command in fetch_commands)
    # One thread per prediction (Snakemake prints no `threads:` then), so predictions share the cores with trainings.
    predict_jobs = re.findall(r"rule (predict_\w+):\n((?:    .*\n)*)", log)
    assert len(predict_jobs) == 5 and not any("threads:" in job for _, job in predict_jobs)
    # Longest training first (HeLa: 6,000 iterations, ISBI: 3,000), after the data jobs they wait for.
    found = re.findall(r"rule (\w+):\n(?:    .*\n)*?    wildcards: dataset=([\w-]+).*\n    priority: (\d+)", log)
    assert {(rule, dataset, int(priority)) for rule, dataset, priority in found} >= {
        ("train", "DIC-C2DH-HeLa", 100),
        ("train", "isbi2012", 50),
        ("prepare", "DIC-C2DH-HeLa", 1000),
        ("weightmap", "isbi2012", 1000),
    }


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


def test_the_ctc_test_sequences_are_segmented_into_result_folders_for_submission(tmp_path: Path) -> None:
    """ctc.predict_test: the test sequences from the mirror's ctc-test/ folder, segmented by the mean of both
    training sequences' models, one mask per frame as the challenge wants them."""
    mirror = tmp_path / "mirror"
    synthesize_cells(mirror / "ctc" / "MyCells", seed=3, size=64, frames=3, annotated=2, cell_count=3, cell_size=24)
    synthesize_cells(
        mirror / "ctc-test" / "MyCells", seed=4, size=64, frames=4, annotated=1, cell_count=3, cell_size=24
    )
    workdir = copy_workflow(tmp_path / "work")
    overrides = {
        "experiments": ["MyCells"],
        "mirror": str(mirror),
        "datasets": {"MyCells": {"protocol": "ctc", "source": "http://example.org/MyCells.zip"}},
        "ctc": {"predict_test": True},
        "model": {"base_channels": 2, "depth": 2},
        "train": {
            "iterations": 4,
            "input_size": 60,
            "warmup": 0,
            "checkpoint_every": 2,
            "log_every": 2,
            "val_every": 2,
        },
        "predict": {"input_size": 76},
    }
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    targets = [f"results/predictions/MyCells-test/seed0/{sequence}_RES" for sequence in ("01", "02")]
    result = snakemake(workdir, "--cores", "2", "--configfile", "overrides.yaml", "--", *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_stats(result.stdout + result.stderr)
    assert (jobs["fetch_test"], jobs["prepare_ctc_test"], jobs["train"], jobs["predict_ctc_test"]) == (1, 2, 2, 2)
    for target in targets:
        masks = sorted((workdir / target).glob("*.tif"))
        assert [path.name for path in masks] == [f"mask{t:03d}.tif" for t in range(4)]
        assert all(tifffile.imread(path).dtype == np.uint16 for path in masks)
