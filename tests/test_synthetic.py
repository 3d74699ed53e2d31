"""The demo data generator: deterministic per seed, consistent labels, the official layouts, and images a
network can learn from (membranes darker than interiors, touching cells)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unet.fetch import check_layout
from unet.io import read_split
from unet.prepare import prepare
from unet.synthetic import synthesize_cells, synthesize_em

from helpers import unet

SMALL_EM = {"size": 96, "train_slices": 3, "test_slices": 2, "cell_size": 24}
SMALL_CELLS = {"size": 96, "frames": 5, "annotated": 3, "cell_count": 5, "cell_size": 36}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {name: tifffile.imread(folder / name) for name in files(folder) if name.endswith(".tif")}


@pytest.fixture(scope="module")
def em(tmp_path_factory) -> Path:
    return synthesize_em(tmp_path_factory.mktemp("em") / "raw", seed=5, **SMALL_EM)


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return synthesize_cells(tmp_path_factory.mktemp("cells") / "raw", seed=5, **SMALL_CELLS)


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data(em, cells, tmp_path):
    for synthesize, made, options in ((synthesize_em, em, SMALL_EM), (synthesize_cells, cells, SMALL_CELLS)):
        again = synthesize(tmp_path / f"{made.parent.name}-again", seed=5, **options)
        other = synthesize(tmp_path / f"{made.parent.name}-other", seed=6, **options)
        assert files(again).keys() == files(made).keys()
        same, different = pixels(made), pixels(other)
        for name, array in pixels(again).items():
            np.testing.assert_array_equal(array, same[name], err_msg=name)
        assert any(not np.array_equal(array, different[name]) for name, array in same.items())


def test_em_data_is_in_the_isbi_layout_with_binary_labels_and_dark_membranes(em, tmp_path):
    check_layout("demo-em", em, "isbi")
    volume = tifffile.imread(em / "train-volume.tif")
    labels = tifffile.imread(em / "train-labels.tif")
    assert volume.shape == labels.shape == (3, 96, 96) and volume.dtype == labels.dtype == np.uint8
    assert tifffile.imread(em / "test-volume.tif").shape == (2, 96, 96)
    assert set(np.unique(labels).tolist()) == {0, 255}
    membrane = labels == 0
    assert 0.1 < membrane.mean() < 0.35, "membranes cover about a fifth of the section, as in ISBI 2012"
    assert volume[~membrane].mean() - volume[membrane].mean() > 60, "membranes are darker than interiors"
    assert volume[~membrane].std() > 15, "interiors are textured, not flat"
    for section in labels:
        cells, count = ndimage.label(section == 255)
        assert count >= 5, "a section shows many cells separated by membranes"
    prepare("demo-em", em, tmp_path, protocol="isbi")
    split = read_split(tmp_path / "train")
    np.testing.assert_array_equal(split.labels, (labels == 255).astype(np.uint8))


def touching_pairs(label: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of distinct instances that share a pixel edge."""
    pairs = set()
    for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1], label[1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(pair)) for pair in zip(a[touch].tolist(), b[touch].tolist())}
    return pairs


def test_cell_data_is_in_the_ctc_layout_with_consistent_instances_and_tracks(cells, tmp_path):
    check_layout("demo-cells", cells, "ctc")
    for sequence in ("01", "02"):
        gt = cells / f"{sequence}_GT"
        assert sorted(p.name for p in (gt / "SEG").iterdir()) == ["man_seg000.tif", "man_seg002.tif", "man_seg004.tif"]
        tracks = np.loadtxt(gt / "TRA" / "man_track.txt", dtype=int, ndmin=2)
        np.testing.assert_array_equal(tracks, [[i, 0, 4, 0] for i in range(1, 6)])
        touching = 0
        for t in range(5):
            image = tifffile.imread(cells / sequence / f"t{t:03d}.tif")
            track = tifffile.imread(gt / "TRA" / f"man_track{t:03d}.tif")
            assert track.dtype == np.uint16 and image.shape == track.shape == (96, 96)
            assert set(np.unique(track).tolist()) == set(range(6)), "every track is present in every frame"
            if (gt / "SEG" / f"man_seg{t:03d}.tif").exists():
                np.testing.assert_array_equal(tifffile.imread(gt / "SEG" / f"man_seg{t:03d}.tif"), track)
            touching += len(touching_pairs(track))
            assert image[track > 0].mean() > image[track == 0].mean() + 20, "cells are brighter than background"
        assert touching > 0, f"sequence {sequence} has touching cells"
    prepare("demo-cells", cells, tmp_path, protocol="ctc")
    assert read_split(tmp_path / "02").labelled == [0, 2, 4]


def test_py_ctcmetrics_accepts_the_layout_and_scores_the_truth_perfectly(cells, tmp_path):
    from ctc_metrics import evaluate_sequence

    result = tmp_path / "01_RES"
    result.mkdir()
    for track in sorted((cells / "01_GT" / "TRA").glob("man_track*.tif")):
        shutil.copy(track, result / track.name.replace("man_track", "mask"))
    shutil.copy(cells / "01_GT" / "TRA" / "man_track.txt", result / "res_track.txt")
    scores = evaluate_sequence(res=str(result), gt=str(cells / "01_GT"), metrics=["SEG", "TRA"])
    assert scores["SEG"] == pytest.approx(1.0) and scores["TRA"] == pytest.approx(1.0)


def test_the_synthesize_command_and_its_errors(tmp_path):
    options = [
        "--seed",
        "2",
        "--size",
        "64",
        "--frames",
        "2",
        "--annotated",
        "1",
        "--cell-count",
        "2",
        "--cell-size",
        "24",
    ]
    result = unet("synthesize", "cells", tmp_path / "c", *options)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "c" / "01_GT" / "SEG").iterdir()) == ["man_seg000.tif"]
    result = unet("synthesize", "cells", tmp_path / "bad", *options, "--frames", "0")
    assert result.returncode == 2 and "--frames = 0: must be >= 1" in result.stderr
    assert not (tmp_path / "bad").exists()
