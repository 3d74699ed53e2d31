"""The data rules in a real Snakemake run: the mirror for the real data sets, the generator for the demo ones."""

from __future__ import annotations

import os

from unet.io import read_split

from helpers import CONFIG, REPO, snakemake


def test_fetch_synthesize_and_prepare_rules_write_the_canonical_splits(shared_data, tmp_path):
    targets = [
        "results/data/isbi2012/train/frames.json",
        "results/data/DIC-C2DH-HeLa/02/frames.json",
        "results/data/demo-em/test/frames.json",
        "results/data/demo-cells/01/frames.json",
    ]
    result = snakemake(
        tmp_path,
        "-s",
        REPO / "Snakefile",
        "--configfile",
        CONFIG,
        "--cores",
        "2",
        "--quiet",
        "--config",
        f"mirror={shared_data}",
        "experiments=[isbi2012,DIC-C2DH-HeLa]",
        "--",
        *targets,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_split(tmp_path / "results/data/isbi2012/train").images.shape == (30, 512, 512)
    assert read_split(tmp_path / "results/data/DIC-C2DH-HeLa/02").labelled[0] == 6
    assert read_split(tmp_path / "results/data/demo-em/test").labels is None
    assert len(read_split(tmp_path / "results/data/demo-cells/01").labelled) == 4
    for rule, name in [("fetch", "isbi2012"), ("synthesize", "demo-cells"), ("prepare", "DIC-C2DH-HeLa-02")]:
        assert (tmp_path / f"results/logs/{rule}/{name}.log").is_file()
        assert (tmp_path / f"results/benchmarks/{rule}/{name}.tsv").is_file()


def test_jobs_run_the_package_that_the_workflow_read(tmp_path):
    """Another `unet` package ahead on the path (an older install, another checkout) does not run the jobs:
    they run the workflow's own, whose commit run.json records."""
    decoy = tmp_path / "elsewhere" / "unet"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise ImportError("another unet package ran the job")\n')
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = "results/data/demo-em/test/frames.json"
    result = snakemake(
        workdir,
        "-s",
        REPO / "Snakefile",
        "--configfile",
        CONFIG,
        "--cores",
        "1",
        "--quiet",
        "--",
        target,
        env={**os.environ, "PYTHONPATH": str(decoy.parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_split(workdir / "results/data/demo-em/test").images.ndim == 3
