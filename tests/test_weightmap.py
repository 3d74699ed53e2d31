"""Weight maps: the fast implementation against a naive reference on real ISBI and HeLa labels, the
definitions on hand-made geometry, and the `unet weightmap` command on real prepared splits."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import tifffile
from matplotlib import image as mpimg
from scipy import ndimage
from skimage.measure import label as connected_components

from unet.errors import UsageError
from unet.io import (
    NORMALIZATION_PERCENTILES,
    WEIGHT_RECORD,
    DataError,
    Split,
    load_training_set,
    read_json,
    read_split,
    read_tiff,
    write_split,
    write_weight_maps,
)
from unet.weightmap import TOLERANCE, border_reach, class_weights, separate_instances, weight_map, weight_maps

from helpers import copy_workflow, snakemake, unet

HELA_FRAMES = {"01": [2, 21], "02": [6]}


def naive_weight_map(
    label: np.ndarray, kind: str, w0: float = 10.0, sigma: float = 5.0, separation: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """The definitions computed the obvious way, independently of the package: one full-image distance
    transform per object. Returns (target, weights)."""
    if kind == "binary":
        objects = connected_components(label > 0, connectivity=1)
    else:
        objects = label.astype(np.int64).copy()
        for instance in np.unique(label[label > 0]):
            others = (label > 0) & (label != instance)
            touching = (label == instance) & (ndimage.distance_transform_edt(~others) <= separation)
            objects[touching] = 0
    target = (objects > 0).astype(np.uint8)
    nearest = np.full(label.shape, np.inf)
    second = np.full(label.shape, np.inf)
    for instance in np.unique(objects[objects > 0]):
        distance = ndimage.distance_transform_edt(objects != instance)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    border = np.where(target == 0, w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2)), 0.0)
    cells, total = target.sum(), target.size
    balance = np.where(target == 1, total / (2 * cells), total / (2 * (total - cells)))
    return target, balance + border


def isbi_labels(shared_data, slices) -> np.ndarray:
    return (tifffile.imread(shared_data / "isbi2012" / "train-labels.tif", key=slices) > 0).astype(np.uint8)


def hela(shared_data, sequence: str, frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    root = shared_data / "ctc" / "DIC-C2DH-HeLa"
    images = np.stack([tifffile.imread(root / sequence / f"t{f:03d}.tif") for f in frames])
    labels = np.stack([tifffile.imread(root / f"{sequence}_GT" / "SEG" / f"man_seg{f:03d}.tif") for f in frames])
    return images, labels


# The naive reference takes about 2 s per ISBI slice, so the tests compare two slices (first and
# last); benchmarks/bench_weightmap.py compares all 30.
@pytest.mark.parametrize("slice_index", [0, 29])
def test_fast_matches_the_naive_reference_on_real_isbi_labels(shared_data, slice_index):
    label = isbi_labels(shared_data, slice_index)
    expected_target, expected = naive_weight_map(label, "binary")
    maps = weight_map(label, "binary")
    np.testing.assert_array_equal(maps.target, expected_target)
    np.testing.assert_allclose(maps.weights, expected, atol=1e-4, rtol=0)
    assert maps.weights.max() > 10  # many membrane pixels lie between two close cells


@pytest.mark.parametrize("sequence", ["01", "02"])
def test_fast_matches_the_naive_reference_on_real_hela_labels(shared_data, sequence):
    _, labels = hela(shared_data, sequence, HELA_FRAMES[sequence])
    for label in labels:
        expected_target, expected = naive_weight_map(label, "instance")
        maps = weight_map(label, "instance")
        np.testing.assert_array_equal(maps.target, expected_target)
        np.testing.assert_allclose(maps.weights, expected, atol=1e-4, rtol=0)
        assert maps.separation.sum() > 0  # HeLa cells touch: the separation is exercised


def test_two_squares_with_a_gap_get_the_formula_exactly():
    label = np.zeros((20, 30), dtype=np.uint8)
    label[5:15, 5:12] = 1  # columns 5..11
    label[5:15, 14:21] = 1  # columns 14..20: a 2-px gap at columns 12, 13
    maps = weight_map(label, "binary", w0=10.0, sigma=5.0)
    total, cells = label.size, label.sum()
    background, cell = total / (2 * (total - cells)), total / (2 * cells)
    # Gap pixel at column 12: 1 px from the left square, 2 px from the right one.
    assert maps.weights[10, 12] == pytest.approx(background + 10 * math.exp(-((1 + 2) ** 2) / 50), rel=1e-6)
    # Cell pixels carry the class weight alone; a far corner has a negligible border term.
    assert maps.weights[10, 8] == pytest.approx(cell, rel=1e-6)
    d1, d2 = math.hypot(5, 5), math.hypot(14, 5)  # corner (0, 0) to the squares' nearest pixels
    assert maps.weights[0, 0] == pytest.approx(background + 10 * math.exp(-((d1 + d2) ** 2) / 50), abs=1e-6)


def test_touching_instances_are_split_by_a_background_border():
    instances = np.zeros((12, 16), dtype=np.uint16)
    instances[2:10, 2:8] = 7
    instances[2:10, 8:14] = 3  # touches 7 along a full edge
    instances[10:12, 14:16] = 9  # touches 3 at one corner only (8-neighbourhood)
    objects, separation = separate_instances(instances, 1.5)
    assert separation[2:10, 7].all() and separation[2:10, 8].all()  # one column on each side
    assert separation[9, 13] and separation[10, 14]  # the diagonal contact
    assert separation.sum() == 8 + 8 + 2
    assert not separation[instances == 0].any() and (objects[separation] == 0).all()
    maps = weight_map(instances, "instance", separation=1.5)
    assert (maps.target[separation] == 0).all()
    assert maps.weights[5, 7] > 9  # separation pixels get the high border weight


def test_a_wider_separation_takes_the_cell_pixels_within_that_distance_of_another_cell():
    instances = np.zeros((12, 20), dtype=np.uint16)
    instances[1:11, 2:10] = 1
    instances[1:11, 10:18] = 2  # touching along the column boundary 9 | 10
    _, separation = separate_instances(instances, 3.0)
    assert separation[5, 7:13].all() and not separation[5, 6] and not separation[5, 13]  # 3 columns a side
    assert separation[1, 7] and not separation[0, 7]  # the disc reaches 3 px along the row, not beyond a cell
    np.testing.assert_array_equal(separation, separate_instances(instances)[1])  # the default
    _, neighbours = separate_instances(instances, 1.5)
    assert neighbours[5, 9:11].all() and neighbours[:, 8].sum() == 0  # the 8 neighbours: one column a side


def test_class_weights_balance_the_classes_per_image():
    target = np.zeros((10, 10), dtype=np.uint8)
    target[:2] = 1  # 20 % cells
    weights = class_weights(target)
    assert weights[target == 1].sum() == pytest.approx(weights[target == 0].sum())
    assert weights.mean() == pytest.approx(1.0)
    assert (class_weights(np.ones((4, 4), dtype=np.uint8)) == 1).all()


def test_fewer_than_two_objects_have_no_border_term():
    single = np.zeros((16, 16), dtype=np.uint8)
    single[4:8, 4:8] = 1
    np.testing.assert_array_equal(weight_map(single, "binary").weights, class_weights(single))
    empty = np.zeros((16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(weight_map(empty, "binary").weights, np.ones((16, 16), dtype=np.float32))


def test_the_reach_bounds_the_neglected_terms():
    reach = border_reach(10.0, 5.0)
    assert 10.0 * math.exp(-(reach**2) / 50) == pytest.approx(TOLERANCE)
    assert border_reach(TOLERANCE / 2, 5.0) == 0
    label = np.zeros((8, 8), dtype=np.uint8)
    label[:, :3] = label[:, 5:] = 1
    weights = weight_map(label, "binary", w0=TOLERANCE / 2).weights  # a border term too small to compute
    assert weights.max() == pytest.approx(64 / (2 * 16)) and weights.min() == pytest.approx(64 / (2 * 48))


def test_bad_arguments_are_named():
    with pytest.raises(UsageError, match="kind"):
        weight_map(np.zeros((4, 4), dtype=np.uint8), "semantic")
    with pytest.raises(UsageError, match="sigma"):
        weight_map(np.zeros((4, 4), dtype=np.uint8), "binary", sigma=0)


@pytest.fixture(scope="module")
def hela_split(shared_data, tmp_path_factory):
    """A prepared HeLa split from the real files: three frames, two of them labelled."""
    images, labels = hela(shared_data, "01", [2, 21])
    extra = tifffile.imread(shared_data / "ctc" / "DIC-C2DH-HeLa" / "01" / "t003.tif")[None]
    directory = tmp_path_factory.mktemp("data") / "DIC-C2DH-HeLa" / "01"
    write_split(
        directory,
        Split(
            "DIC-C2DH-HeLa",
            "01",
            "instance",
            np.concatenate([images[:1], extra, images[1:]]),
            [2, 3, 21],
            labels,
            [2, 21],
        ),
    )
    return directory, labels


def test_cli_writes_targets_weights_and_the_figure(hela_split, tmp_path):
    directory, labels = hela_split
    out, figure = tmp_path / "weights", tmp_path / "weightmap.png"
    flags = ("--w0", 8, "--sigma", 4, "--separation", 2.5)
    unet("weightmap", directory, out, *flags, "--figure", figure, "--figure-frame", 21, check=True)
    target, weights = read_tiff(out / "target.tif"), read_tiff(out / "weights.tif")
    assert target.dtype == np.uint8 and weights.dtype == np.float32 and target.shape == labels.shape
    expected_target, expected_weights = weight_maps(labels, "instance", w0=8, sigma=4, separation=2.5)
    assert not np.array_equal(expected_target, weight_maps(labels, "instance", w0=8, sigma=4)[0])
    np.testing.assert_array_equal(target, expected_target)
    np.testing.assert_array_equal(weights, expected_weights)
    assert mpimg.imread(figure).shape[1] > 1000  # a 4-panel figure was drawn

    training = load_training_set(directory, out, frames=[21])
    assert training.frames == [21] and training.images.dtype == np.float32
    np.testing.assert_allclose(np.percentile(training.images, NORMALIZATION_PERCENTILES), (0, 1), atol=1e-5)
    np.testing.assert_array_equal(training.targets[0], expected_target[1])


def test_cli_draws_only_the_figure_without_out_dir(hela_split, tmp_path):
    directory, _ = hela_split
    unet("weightmap", directory, "--figure", tmp_path / "figure.png", check=True)
    assert (tmp_path / "figure.png").is_file() and not (tmp_path / "target.tif").exists()


def test_cli_refuses_splits_without_labels_and_unlabelled_figure_frames(hela_split, tmp_path):
    directory, _ = hela_split
    unlabelled = tmp_path / "test"
    write_split(unlabelled, Split("isbi2012", "test", "binary", np.zeros((2, 8, 8), dtype=np.uint8), [0, 1]))
    result = unet("weightmap", unlabelled, tmp_path / "out")
    assert result.returncode == 2 and str(unlabelled) in result.stderr and "no labelled frames" in result.stderr
    assert not (tmp_path / "out").exists()
    result = unet("weightmap", directory, "--figure", tmp_path / "f.png", "--figure-frame", 3)
    assert result.returncode == 2 and "--figure-frame 3 is not labelled" in result.stderr


def test_training_refuses_the_weight_maps_of_other_labels_naming_both_folders(hela_split, tmp_path):
    directory, labels = hela_split
    weights = tmp_path / "weights"
    unet("weightmap", directory, weights, check=True)
    assert read_json(weights / WEIGHT_RECORD)["data"] == str(directory)
    other = read_split(directory)
    other.labels = np.where(other.labels == 1, 0, other.labels)  # the same shape, one cell less
    write_split(tmp_path / "other", other)
    tiny = ["--iterations", "1", "--base-channels", "2", "--depth", "2", "--input-size", "60", "--warmup", "0"]
    model = tmp_path / "model"
    result = unet("train", "--data", tmp_path / "other", "--weights", weights, "--out", model, *tiny, timeout=300)
    assert (result.returncode, result.stderr) == (
        2,
        f"unet train: error: {weights}: weight maps of {directory}, not of the labels of {tmp_path / 'other'}; "
        f"compute them for it: unet weightmap {tmp_path / 'other'} {weights}\n",
    )
    assert not model.exists()
    write_split(tmp_path / "01", other)
    write_weight_maps(tmp_path / "01-weights", other, labels, labels, data_dir=tmp_path / "01", settings={})
    write_split(tmp_path / "01", read_split(directory))  # the split prepared again, from other labels
    with pytest.raises(
        DataError, match=f"^{tmp_path / '01-weights'}: weight maps of {tmp_path / '01'} as it was before"
    ):
        load_training_set(tmp_path / "01", tmp_path / "01-weights")
    (weights / WEIGHT_RECORD).unlink()  # as maps written before the record existed
    with pytest.raises(DataError, match=f"^{weights}: no weightmap.json says which labels these weight maps are of"):
        load_training_set(directory, weights)
    write_weight_maps(weights, read_split(directory), labels[:1], labels[:1], data_dir=directory, settings={})
    with pytest.raises(DataError, match="target.tif: shape"):
        load_training_set(directory, weights)


def test_snakemake_rules_make_the_weights_and_both_figures(hela_split, tmp_path):
    """The rules of workflow/rules/weightmap.smk on a real prepared HeLa split, in a copy of the workflow."""
    directory, labels = hela_split
    copy_workflow(tmp_path)
    shutil.copytree(directory, tmp_path / "results" / "data" / "DIC-C2DH-HeLa" / "01")
    weights = tmp_path / "results" / "weights" / "DIC-C2DH-HeLa" / "01" / "weights.tif"
    figures = [tmp_path / "results" / "figures" / f"{kind}-DIC-C2DH-HeLa.png" for kind in ("weightmap", "augment")]
    (tmp_path / "override.yaml").write_text("weightmap: {w0: 12.0}\n")  # the rules pass the config on
    targets = [path.relative_to(tmp_path) for path in [weights, *figures]]
    result = snakemake(
        tmp_path,
        "--cores",
        "1",
        "--configfile",
        "override.yaml",
        "--allowed-rules",
        "weightmap",
        "weightmap_figure",
        "augment_figure",
        "--",
        *targets,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(read_tiff(weights), weight_maps(labels, "instance", w0=12.0)[1])
    assert all(mpimg.imread(figure).shape[0] > 300 for figure in figures)
