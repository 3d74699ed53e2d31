"""Your own annotated images (protocol folder, unet/folder.py): a folder of image/mask pairs read into the
canonical prepared split, every bad input it refuses, images of different sizes through every stage, the
configuration, the tables, and the worked example of the README: DIC-HeLa frames saved as a folder of PNG files
train and score exactly as the same frames in the Cell Tracking Challenge layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
from PIL import Image
from skimage import io as skimage_io

from unet.augment import Augmenter
from unet.cli import main
from unet.evaluate import instance_scores
from unet.folder import ORDER_SEED, read_folder_split
from unet.io import DataError, normalize_intensity, read_split, write_tiff
from unet.metrics import isbi_metrics
from unet.model import UNet, load_model, save_model
from unet.pipeline import ConfigError, check_config, deep_merge, held_out_frames
from unet.predict import instance_masks, write_ctc_masks
from unet.prepare import prepare
from unet.tables import write_tables
from unet.train import HeldOut, held_out_scores
from unet.weightmap import weight_map

from helpers import CONFIG, DEMO_CONFIG, SCHEMA, copy_workflow, job_stats, snakemake

HELA = "ctc/DIC-C2DH-HeLa"
HELA_01_ANNOTATED = [2, 5, 21, 31, 33, 34, 39, 54, 67]
# A depth-2 network of width 4: a training step takes milliseconds.
TINY = ["--base-channels", "4", "--depth", "2", "--input-size", "92", "--warmup", "0", "--device", "cpu"]


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    skimage_io.imsave(path, array, check_contrast=False)
    return path


def tif(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def hela_crops(shared_data: Path, shapes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, instance mask) of the first annotated HeLa 01 frames, their centres cropped to `shapes`."""
    pairs = []
    for frame, (height, width) in zip(HELA_01_ANNOTATED, shapes):
        image = tifffile.imread(shared_data / HELA / "01" / f"t{frame:03d}.tif")
        mask = tifffile.imread(shared_data / HELA / "01_GT" / "SEG" / f"man_seg{frame:03d}.tif")
        centre = np.s_[(512 - height) // 2 : (512 + height) // 2, (512 - width) // 2 : (512 + width) // 2]
        pairs.append((image[centre], mask[centre]))
    return pairs


def small_folder(root: Path, count: int = 3) -> Path:
    """A valid folder of `count` 40x48 images with instance masks of three squares each."""
    rng = np.random.default_rng(0)
    for k in range(count):
        mask = np.zeros((40, 48), np.uint16)
        for cell, (row, column) in enumerate([(4, 4), (20, 8), (8, 28)], start=1):
            mask[row : row + 10, column : column + 12] = cell
        png(root / "images" / f"im{k}.png", (rng.random((40, 48)) * 200 + 40 * (mask > 0)).astype(np.uint8))
        png(root / "masks" / f"im{k}.png", mask)
    return root


def tiny_model(path: Path, label_kind: str = "instance") -> UNet:
    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)  # probabilities spread over [0, 1]
    save_model(path, model, label_kind=label_kind, predict={"tta": "none"}, normalization={"percentiles": [1, 99]})
    return model


# --- the reader -------------------------------------------------------------------------------------------


def test_pairs_of_any_name_suffix_format_and_size_become_one_padded_split(shared_data, tmp_path):
    shapes = [(96, 128), (80, 100), (110, 90), (70, 128)]
    crops = hela_crops(shared_data, shapes)
    names = [("a.png", "a_mask.png"), ("b.tif", "b_masks.tif"), ("c.tiff", "c.png"), ("d.png", "d_label.tif")]
    folder = tmp_path / "my-cells"
    for (image_name, mask_name), (image, mask) in zip(names, crops):
        (png if image_name.endswith("png") else tif)(folder / "images" / image_name, image)
        (png if mask_name.endswith("png") else tif)(folder / "masks" / mask_name, mask)
    (folder / "images" / ".DS_Store").write_text("hidden files are left out")
    assert (
        main(
            [
                "prepare",
                "my-cells",
                "--protocol",
                "folder",
                "--raw",
                str(folder),
                "--out",
                str(tmp_path / "d"),
                "--folds",
                "4",
            ]
        )
        == 0
    )

    split = read_split(tmp_path / "d" / "train")
    order = [int(i) for i in np.random.default_rng(ORDER_SEED).permutation(4)]
    assert split.kind == "instance" and split.frames == split.labelled == order
    assert split.images.shape == (4, 110, 128) and split.images.dtype == np.uint8 and split.labels.dtype == np.uint16
    assert split.sizes == [shapes[frame] for frame in order]
    for row, frame in enumerate(order):
        (image, mask), (height, width) = crops[frame], shapes[frame]
        np.testing.assert_array_equal(split.images[row, :height, :width], image)
        np.testing.assert_array_equal(
            split.images[row], np.pad(image, [(0, 110 - height), (0, 128 - width)], "reflect")
        )
        np.testing.assert_array_equal(split.labels[row, :height, :width], mask)
        assert not split.labels[row, height:].any() and not split.labels[row, :, width:].any()
    recorded = json.loads((tmp_path / "d" / "train" / "frames.json").read_text())["folder"]
    assert recorded["images"] == [f"images/{image}" for image, _ in names]
    assert recorded["masks"] == [f"masks/{mask}" for _, mask in names]
    assert recorded["order_seed"] == ORDER_SEED and recorded["mask_values"] is None


def test_binary_masks_of_any_two_values_match_the_isbi_layouts_labels(shared_data, tmp_path):
    """ISBI slices with 0/255 PNG masks (and slices with 1/2 masks) prepare to the ISBI layout's labels."""
    prepare("isbi2012", shared_data / "isbi2012", tmp_path / "isbi", splits=["train"])
    isbi = read_split(tmp_path / "isbi" / "train")
    for k in range(3):
        png(tmp_path / "em" / "images" / f"section-{k}.png", isbi.images[k, :128, :160])
        png(tmp_path / "em" / "masks" / f"section-{k}_mask.png", isbi.labels[k, :128, :160] * np.uint8(255))
        png(tmp_path / "ones" / "images" / f"s{k}.png", isbi.images[k, :128, :160])
        tif(tmp_path / "ones" / "labels" / f"s{k}.tif", isbi.labels[k, :128, :160] + np.uint8(1))
    for name in ("em", "ones"):
        split = read_folder_split(name, tmp_path / name, folds=3)
        assert split.kind == "binary" and split.labels.dtype == np.uint8
        assert split.folder["mask_values"] == ([0, 255] if name == "em" else [1, 2])
        for row, frame in enumerate(split.frames):
            np.testing.assert_array_equal(split.images[row], isbi.images[frame, :128, :160])
            np.testing.assert_array_equal(split.labels[row], isbi.labels[frame, :128, :160])


def test_masks_saved_as_rgb_gray_or_palette_keep_their_values_and_ignore_label_marks_no_weight(tmp_path):
    folder = small_folder(tmp_path / "f", count=3)
    mask = np.asarray(Image.open(folder / "masks" / "im0.png"))
    (folder / "masks" / "im0.png").unlink()
    png(folder / "masks" / "im0_labels.png", np.repeat(mask[..., None].astype(np.uint8), 3, axis=2))  # gray as RGB
    palette = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(folder / "masks" / "im1.png")  # the ids as palette indices: their colours are not ids
    ignored = mask.copy()
    ignored[30:, 30:] = 9  # not annotated
    png(folder / "masks" / "im2.png", ignored)
    split = read_folder_split("f", folder, folds=2, ignore_label=9)
    assert split.kind == "instance"
    for row, frame in enumerate(split.frames):
        expected = np.where(ignored == 9, 0, mask) if frame == 2 else mask
        np.testing.assert_array_equal(split.labels[row], expected)
        np.testing.assert_array_equal(split.unannotated[row], (ignored == 9) if frame == 2 else False)
    row = split.frames.index(2)
    maps = weight_map(split.labels[row], "instance", unannotated=split.unannotated[row], ignore_margin=2)
    assert not maps.weights[30:, 30:].any() and maps.weights[:26].all()


def bad_input(case: str, folder: Path) -> tuple[str, str]:
    """Break the valid folder `folder` in one way: (the file the error must name, what it must say)."""
    images, masks = folder / "images", folder / "masks"
    if case == "image without mask":
        (masks / "im1.png").unlink()
        return str(images / "im1.png"), "an image without a mask: expected"
    if case == "mask without image":
        shutil.copy(masks / "im1.png", masks / "other_mask.png")
        return str(masks / "other_mask.png"), "a mask without an image"
    if case == "mask of another size":
        png(masks / "im2.png", np.zeros((40, 40), np.uint16) + np.eye(40, dtype=np.uint16))
        return str(masks / "im2.png"), "40x40 px, but its image"
    if case == "three values that are not instance ids":
        rng = np.random.default_rng(1)
        png(masks / "im1.png", rng.choice(np.array([0, 128, 255], np.uint8), (40, 48)))
        return str(masks / "im1.png"), "are neither a binary mask (two values) nor instance ids"
    if case == "float mask with fractions":
        (masks / "im0.png").unlink()
        tif(masks / "im0.tif", np.full((40, 48), 0.5, np.float32))
        return str(masks / "im0.tif"), "a float mask with fractions"
    if case == "every mask all background":
        for path in masks.iterdir():
            png(path, np.zeros((40, 48), np.uint8))
        return str(masks), "every pixel of every mask is the value 0: nothing to learn from"
    if case == "fewer images than folds":
        (images / "im2.png").unlink()
        (masks / "im2.png").unlink()
        return str(folder), "2 image/mask pairs, fewer than the 3 cross-validation folds"
    if case == "NaN pixel":
        nan = np.ones((40, 48), np.float32)
        nan[5, 7] = np.nan
        (images / "im0.png").unlink()
        tif(images / "im0.tif", nan)
        return str(images / "im0.tif"), "1 pixels are NaN or infinite (the first at pixel (5, 7)"
    if case == "a file that is not an image":
        (images / "notes.txt").write_text("taken on Tuesday")
        return str(images / "notes.txt"), "not a TIFF or PNG image"
    if case == "a PNG that is not one":
        (images / "im0.png").write_text("not a picture")
        return str(images / "im0.png"), "not a readable PNG"
    raise AssertionError(case)


BAD_INPUTS = [
    "image without mask",
    "mask without image",
    "mask of another size",
    "three values that are not instance ids",
    "float mask with fractions",
    "every mask all background",
    "fewer images than folds",
    "NaN pixel",
    "a file that is not an image",
    "a PNG that is not one",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_stops_prepare_before_anything_is_written_naming_the_file(case, tmp_path):
    folder = small_folder(tmp_path / "f")
    named, message = bad_input(case, folder)
    with pytest.raises(DataError) as error:
        prepare("f", folder, tmp_path / "out", protocol="folder", folder_options={"folds": 3})
    assert named in str(error.value) and message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_command_prints_one_line_and_exits_2(tmp_path, capsys):
    folder = small_folder(tmp_path / "f")
    named, _ = bad_input("three values that are not instance ids", folder)
    code = main(
        ["prepare", "f", "--protocol", "folder", "--raw", str(folder), "--out", str(tmp_path / "o"), "--folds", "3"]
    )
    assert code == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and printed.startswith(f"unet prepare: error: {named}: values [0, 128, 255]")
    assert re.search(r"value (128|255) covers \d+ separate regions, the largest holding \d+% of its pixels", printed)
    assert "Save binary masks with two values, or instance masks with one id per object" in printed


def test_in_a_binary_data_set_the_one_mask_of_three_values_is_named(tmp_path):
    folder = small_folder(tmp_path / "f")
    for k in range(3):
        png(
            folder / "masks" / f"im{k}.png",
            (np.asarray(Image.open(folder / "masks" / f"im{k}.png")) > 0) * np.uint8(255),
        )
    named, _ = bad_input("three values that are not instance ids", folder)
    with pytest.raises(DataError, match=f"^{named}: values"):
        read_folder_split("f", folder, folds=3)


# --- images of different sizes through every stage ------------------------------------------------------------


@pytest.fixture(scope="module")
def padded(shared_data, tmp_path_factory):
    """A prepared folder split of three HeLa crops of different sizes, and its weight maps."""
    root = tmp_path_factory.mktemp("padded")
    # Paddings of 8 px, less than the 20 px of context a depth-2 network needs, and of 44 and 60 px.
    shapes = [(116, 140), (124, 132), (80, 80)]
    for k, (image, mask) in enumerate(hela_crops(shared_data, shapes)):
        png(root / "cells" / "images" / f"c{k}.png", image)
        png(root / "cells" / "masks" / f"c{k}.png", mask)
    prepare("cells", root / "cells", root / "data", protocol="folder", folder_options={"folds": 3})
    assert main(["weightmap", str(root / "data" / "train"), str(root / "weights")]) == 0
    return root


def test_weights_scaling_and_prediction_see_each_frames_true_extent(padded, tmp_path):
    """A padded frame gets the weight map, the input scaling and the prediction of its own file."""
    split = read_split(padded / "data" / "train")
    weights = tifffile.imread(padded / "weights" / "weights.tif")
    scaled = normalize_intensity(split.images, sizes=split.sizes)
    for row, (height, width) in enumerate(split.sizes):
        alone = weight_map(split.labels[row, :height, :width], "instance")
        np.testing.assert_array_equal(weights[row, :height, :width], alone.weights)
        assert not weights[row, height:].any() and not weights[row, :, width:].any()
        np.testing.assert_array_equal(
            scaled[row, :height, :width], normalize_intensity(split.images[row, :height, :width])
        )
    tiny_model(tmp_path / "model.pt")
    common = ["--model", str(tmp_path / "model.pt"), "--device", "cpu", "--input-size", "140"]
    assert main(["predict", "--data", str(padded / "data" / "train"), "--out", str(tmp_path / "p.tif"), *common]) == 0
    assert main(["predict", "--images", str(padded / "cells" / "images"), "--out", str(tmp_path / "own"), *common]) == 0
    stack = tifffile.imread(tmp_path / "p.tif")
    for row, (frame, (height, width)) in enumerate(zip(split.frames, split.sizes)):
        alone = tifffile.imread(tmp_path / "own" / f"c{frame}_probabilities.tif")
        np.testing.assert_allclose(stack[row, :height, :width], alone, atol=1e-6)
        assert not stack[row, height:].any() and not stack[row, :, width:].any()


def test_training_tiles_come_from_each_images_true_extent_and_equal_sizes_draw_as_before():
    images = np.zeros((2, 300, 300), np.float32)
    targets, weights = np.zeros(images.shape, np.uint8), np.ones(images.shape, np.float32)
    augmenter = Augmenter(images, targets, weights, input_size=92, depth=2, sizes=[(300, 300), (40, 120)], seed=1)
    drawn = augmenter.draw(400)
    corners = {0: drawn.corner[drawn.index == 0], 1: drawn.corner[drawn.index == 1]}
    out = augmenter.output_size  # 52: the window fits the second image's width, not its height
    assert corners[1][:, 0].min() >= 40 - out and corners[1][:, 0].max() <= 0
    assert corners[1][:, 1].min() >= 0 and corners[1][:, 1].max() <= 120 - out
    assert corners[0].max() > 120 and corners[0].max() <= 300 - out
    # Equal sizes: the draws of the code before sizes existed (one draw of the batch per axis).
    same = Augmenter(images, targets, weights, input_size=92, depth=2, sizes=[(300, 300)] * 2, seed=5)
    generator = torch.Generator().manual_seed(5)
    index = torch.randint(2, (8,), generator=generator)
    rows, columns = (torch.randint(0, 300 - out + 1, (8,), generator=generator) for _ in range(2))
    drawn = same.draw(8)
    assert torch.equal(drawn.index, index) and torch.equal(drawn.corner, torch.stack([rows, columns], dim=1))
    assert torch.equal(drawn.angle, Augmenter(images, targets, weights, 92, depth=2, seed=5).draw(8).angle)


def test_held_out_scores_of_a_padded_frame_are_those_of_the_frame_alone(padded):
    split = read_split(padded / "data" / "train")
    model = tiny_model(padded / "scores-model.pt")
    row = split.sizes.index((116, 140))  # padded by 8 rows: the stack's mirror at 124 would reach into its context
    height, width = split.sizes[row]
    labels = split.labels[[row]]
    scaled = normalize_intensity(split.images[[row]], sizes=[split.sizes[row]])
    in_stack = HeldOut(scaled, labels, "instance", [0], "padded", sizes=[split.sizes[row]])
    alone = HeldOut(scaled[:, :height, :width], labels[:, :height, :width], "instance", [0], "alone")
    assert held_out_scores(model, in_stack, 140) == held_out_scores(model, alone, 140)


def test_isbi_metrics_take_slices_of_different_sizes(shared_data):
    labels = tifffile.imread(shared_data / "isbi2012" / "train-labels.tif", key=[0, 1]) > 0
    prob = np.clip(labels + np.random.default_rng(0).normal(0, 0.3, labels.shape), 0, 1).astype(np.float32)
    slices = [(prob[0, :96, :128], labels[0, :96, :128]), (prob[1, :64, :80], labels[1, :64, :80])]
    ragged = isbi_metrics(
        [p for p, _ in slices], [truth for _, truth in slices], thresholds=[0.5], warping_thresholds=[0.5]
    )
    # The same slices in a stack, padded with membrane that the proposal also calls membrane: the pixel and the
    # foreground-restricted Rand errors leave such pixels out, and the warping counts do not change.
    stack_prob, stack_labels = np.zeros((2, 96, 128), np.float32), np.zeros((2, 96, 128), bool)
    for k, (p, truth) in enumerate(slices):
        stack_prob[k, : p.shape[0], : p.shape[1]], stack_labels[k, : p.shape[0], : p.shape[1]] = p, truth
    stacked = isbi_metrics(stack_prob, stack_labels, thresholds=[0.5], warping_thresholds=[0.5])
    for key in ("pixel_error", "rand_error"):
        assert ragged[key]["value"] == stacked[key]["value"]
    assert ragged["warping_error"]["counts"] == stacked["warping_error"]["counts"]
    pixels = sum(p.size for p, _ in slices)
    assert ragged["warping_error"]["value"] * pixels == pytest.approx(
        stacked["warping_error"]["value"] * stack_prob.size
    )
    same = isbi_metrics(list(prob[:, :64, :64]), list(labels[:, :64, :64]))
    assert same == isbi_metrics(prob[:, :64, :64], labels[:, :64, :64])


def test_evaluate_split_scores_a_fold_at_true_sizes_with_the_metrics_of_the_mask_kind(padded, tmp_path, capsys):
    split = read_split(padded / "data" / "train")
    held_out = held_out_frames(split.labelled, 3, 1)
    rows = [split.frames.index(frame) for frame in held_out]
    rng = np.random.default_rng(0)
    prob = np.clip((split.labels[rows] > 0) + rng.normal(0, 0.4, split.labels[rows].shape), 0, 1).astype(np.float32)
    write_tiff(tmp_path / "p.tif", prob, axes="TYX")
    args = ["evaluate", "split", str(tmp_path / "p.tif"), str(padded / "data" / "train"), "--fold", "1", "--folds", "3"]
    instances = ["--min-area", "5", "--threshold", "0.6"]
    assert main([*args, *instances, "--out", str(tmp_path / "s.json"), "--figure", str(tmp_path / "o.png")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    crops = [(prob[k, :h, :w], split.labels[row, :h, :w]) for k, row in enumerate(rows) for h, w in [split.sizes[row]]]
    masks = [instance_masks(p[None], 5, threshold=0.6)[0] for p, _ in crops]
    expected = instance_scores(held_out, masks, [label for _, label in crops])
    assert scores["seg"]["value"] == pytest.approx(expected["seg"]["value"]) and 0 < scores["seg"]["value"] < 1
    assert scores["iou"]["value"] == pytest.approx(expected["iou"]["value"])
    assert {"warping_error", "rand_error", "pixel_error", "vrand", "vinfo"} <= set(scores)
    assert scores["meta"]["protocol"] == "folder" and scores["meta"]["frames"] == held_out
    assert (scores["meta"]["min_area"], scores["meta"]["threshold"]) == (5, 0.6)
    assert (tmp_path / "o.png").stat().st_size > 0 and "SEG" in capsys.readouterr().out
    # Another fold's page count is an error naming the file.
    assert main([*args[:4], "--fold", "0", "--folds", "2"]) == 2
    assert f"{tmp_path / 'p.tif'}: has 1 pages but" in capsys.readouterr().err


# --- configuration, workflow and tables ------------------------------------------------------------------------


def folder_config(folder: Path, **spec) -> dict:
    config = deep_merge(yaml.safe_load(CONFIG.read_text()), yaml.safe_load(DEMO_CONFIG.read_text()))
    config["datasets"]["my-cells"] = {"protocol": "folder", "source": str(folder), **spec}
    config["experiments"] = ["my-cells"]
    return config


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "missing"}, r"^config: datasets.my-cells.source: missing: no such folder"),
        ({"folds": 4}, r"^config: datasets.my-cells.folds = 4: more folds than the 3 images in .*images"),
        ({}, r"^config: datasets.my-cells.folds \(default\) = 5: more folds than the 3 images"),
        ({"folds": 1}, r"^config: datasets.my-cells.folds: 1 is less than the minimum of 2"),
        ({"ignore_label": -1}, r"^config: datasets.my-cells.ignore_label: -1 is less than the minimum of 0"),
        ({"checksums": {}}, r"^config: datasets.my-cells.checksums: a key of protocol isbi and ctc data sets only"),
        ({"source": "synthetic"}, r"^config: datasets.my-cells.source = 'synthetic': a folder data set's source"),
    ],
)
def test_the_configuration_check_catches_bad_folder_keys_before_any_job(spec, message, tmp_path):
    config = folder_config(small_folder(tmp_path / "f"), **spec)
    with pytest.raises(ConfigError, match=message):
        check_config(config, SCHEMA)
    config = folder_config(small_folder(tmp_path / "f"), folds=3)
    check_config(config, SCHEMA)
    config["datasets"]["demo-em"]["folds"] = 3
    with pytest.raises(ConfigError, match=r"^config: datasets.demo-em.folds: a key of protocol folder .*isbi.folds"):
        check_config(config, SCHEMA)


def test_the_workflow_prepares_scores_tables_and_exports_a_folder_data_set(tmp_path):
    workdir = copy_workflow(tmp_path / "work")
    small_folder(workdir / "my cells", count=4)
    overrides = {
        "experiments": ["my-cells"],
        "datasets": {"my-cells": {"protocol": "folder", "source": "my cells", "folds": 2}},
        "model": {"base_channels": 2, "depth": 2},
        "train": {"iterations": 2, "input_size": 60, "warmup": 0, "checkpoint_every": 2, "val_every": 2},
        "predict": {"input_size": 76, "tta": "none"},
    }
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    common = ["--configfile", "config/demo.yaml", "overrides.yaml"]
    planned = snakemake(workdir, "--dry-run", *common)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert job_stats(planned.stdout + planned.stderr) == {
        "prepare": 1,  # from the folder where it is: nothing is fetched
        "weightmap": 1,
        "weightmap_figure": 1,
        "augment_figure": 1,
        "train": 2 + 1,  # the folds, and the model on all images
        "predict_fold": 2,
        "evaluate_folder": 2,
        "export": 2 + 1,
        "tables": 1,
        "rule_times": 1,
        "all": 1,
    }
    # The scored chain for real (the worked example below exports a folder model as the rule `export` does).
    result = snakemake(workdir, "--cores", "2", *common, "--", "results/tables/table2.md")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ours | - | - | " in (workdir / "results/tables/table2.md").read_text()
    table = pd.read_csv(workdir / "results/tables/table2.csv")
    assert table["my-cells n"].iloc[-1] == 2 and 0 <= table["my-cells SEG"].iloc[-1] <= 1


def test_a_folder_data_sets_scores_sit_beside_its_name_in_the_table_of_its_mask_kind(tmp_path):
    def score(dataset, run, values, protocol="folder"):
        path = tmp_path / "scores" / dataset / run / "seed0.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**values, "meta": {"protocol": protocol}}))
        return path

    isbi = {key: {"value": 0.1} for key in ("warping_error", "rand_error", "pixel_error", "vrand", "vinfo")}
    files = [score("my-em", f"fold{k}", isbi) for k in range(2)]
    files += [
        score("my-cells", f"fold{k}", isbi | {"seg": {"value": 0.5 + k / 10}, "iou": {"value": 0.8}}) for k in range(3)
    ]
    write_tables(files, tmp_path / "tables")
    table1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    assert list(table1.group[table1.group.str.startswith("ours")]) == ["ours (my-em)"]  # my-cells is in Table 2
    assert table1.source.iloc[-1] == "cross-validation folds of its own images"
    table2 = pd.read_csv(tmp_path / "tables" / "table2.csv")
    assert table2["my-cells SEG"].iloc[-1] == pytest.approx(0.6) and table2["my-cells n"].iloc[-1] == 3
    assert table2["my-cells SEG"].iloc[:-1].isna().all()  # no paper value
    for name, dataset in (("table1", "my-em"), ("table2", "my-cells")):
        assert (
            f"{dataset}: your own annotated images (protocol folder)"
            in (tmp_path / "tables" / f"{name}.md").read_text()
        )


# --- the worked example ------------------------------------------------------------------------------------------


def test_hela_frames_as_png_files_train_and_score_as_in_the_ctc_layout(shared_data, tmp_path):
    """The README's worked example, small: the nine annotated frames of DIC-HeLa 01 saved as PNG images with
    uint16 PNG instance masks under other names (65535 marks the cells the ground truth leaves unannotated), in a
    3-fold cross-validation. Fold 0 trained and scored from the folder equals the same frames and settings
    trained and scored in the Cell Tracking Challenge layout: the same prepared frames, the same weights, the
    same trained network and the same SEG. `unet predict` and `unet export` take the model as it is."""
    prepare("DIC-C2DH-HeLa", shared_data / HELA, tmp_path / "ctc", splits=["01"])
    ctc = read_split(tmp_path / "ctc" / "01")
    folder = tmp_path / "hela-pngs"
    for frame, image, label, unannotated in zip(ctc.labelled, ctc.labelled_images(), ctc.labels, ctc.unannotated):
        png(folder / "images" / f"hela-01-t{frame:03d}.png", image)
        png(folder / "masks" / f"hela-01-t{frame:03d}_masks.png", np.where(unannotated, 65535, label).astype(np.uint16))
    prepare(
        "hela-pngs", folder, tmp_path / "mine", protocol="folder", folder_options={"folds": 3, "ignore_label": 65535}
    )
    mine = read_split(tmp_path / "mine" / "train")
    as_ctc = [ctc.labelled[frame] for frame in mine.frames]  # folder frame ids number the files in name order
    ctc_rows = [ctc.labelled.index(frame) for frame in as_ctc]
    np.testing.assert_array_equal(mine.images, ctc.labelled_images()[ctc_rows])
    np.testing.assert_array_equal(mine.labels, ctc.labels[ctc_rows])
    np.testing.assert_array_equal(mine.unannotated, ctc.unannotated[ctc_rows])
    for name in ("mine", "ctc"):
        split_dir = tmp_path / name / ("train" if name == "mine" else "01")
        assert main(["weightmap", str(split_dir), str(tmp_path / f"{name}-weights")]) == 0
    weights = {name: tifffile.imread(tmp_path / f"{name}-weights" / "weights.tif") for name in ("mine", "ctc")}
    np.testing.assert_array_equal(weights["mine"], weights["ctc"][ctc_rows])
    assert (weights["mine"][mine.unannotated] == 0).all() and mine.unannotated.any()

    held_out = held_out_frames(mine.labelled, 3, 0)
    trained = [frame for frame in mine.labelled if frame not in held_out]
    ctc_ids = {frame: ctc.labelled[frame] for frame in mine.labelled}
    settings = [*TINY, "--iterations", "6", "--val-every", "6", "--log-every", "3", "--seed", "3"]
    runs = {
        "mine": ["--data", str(tmp_path / "mine/train"), "--fold", "0", "--folds", "3"],
        "ctc": [
            "--data",
            str(tmp_path / "ctc/01"),
            "--frames",
            ",".join(str(ctc_ids[f]) for f in trained),
            "--val-frames",
            ",".join(str(ctc_ids[f]) for f in held_out),
        ],  # fmt: skip
    }
    for name, selection in runs.items():
        out = tmp_path / f"{name}-model"
        assert (
            main(["train", *selection, "--weights", str(tmp_path / f"{name}-weights"), "--out", str(out), *settings])
            == 0
        )
        prediction = ["--fold", "0", "--folds", "3"] if name == "mine" else ["--frames", runs["ctc"][5]]
        assert main(["predict", "--model", str(out / "model.pt"), "--data", selection[1], *prediction,
                     "--out", str(tmp_path / f"{name}.tif"), "--tta", "none", "--device", "cpu"]) == 0  # fmt: skip
    for parameter, same in zip(*(load_model(tmp_path / f"{name}-model/model.pt").parameters() for name in runs)):
        assert torch.equal(parameter, same)

    assert main(["evaluate", "split", str(tmp_path / "mine.tif"), str(tmp_path / "mine/train"), "--fold", "0",
                 "--folds", "3", "--out", str(tmp_path / "mine.json")]) == 0  # fmt: skip
    # The CTC layout's own scoring: result masks against the official ground truth of the held-out frames.
    gt = tmp_path / "01_GT"
    (gt / "SEG").mkdir(parents=True)
    for frame in held_out:
        shutil.copy(shared_data / HELA / "01_GT/SEG" / f"man_seg{ctc_ids[frame]:03d}.tif", gt / "SEG")
    masks = instance_masks(tifffile.imread(tmp_path / "ctc.tif"))
    write_ctc_masks(tmp_path / "01_RES", masks, [ctc_ids[frame] for frame in held_out])
    assert main(["evaluate", "ctc", str(tmp_path / "01_RES"), str(gt), "--out", str(tmp_path / "ctc.json")]) == 0
    seg = {name: json.loads((tmp_path / f"{name}.json").read_text())["seg"]["value"] for name in runs}
    assert abs(seg["mine"] - seg["ctc"]) <= 0.02, seg

    model = tmp_path / "mine-model" / "model.pt"
    image = folder / "images" / f"hela-01-t{ctc_ids[held_out[0]]:03d}.png"
    assert main(["predict", "--model", str(model), "--images", str(image), "--out", str(tmp_path / "own"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert tifffile.imread(tmp_path / "own" / f"{image.stem}_masks.tif").shape == (512, 512)
    package = tmp_path / "hela-pngs.zip"
    images = str(tmp_path / "mine/train/images.tif")
    assert main(["export", str(model), str(package), "--image", images, "--dataset", "hela-pngs"]) == 0
    assert package.stat().st_size > 0
