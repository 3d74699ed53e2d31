"""The data rules in a real Snakemake run: the mirror for the real data sets, the generator for the demo ones."""

from __future__ import annotations

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
