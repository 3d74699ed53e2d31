"""Overlap-tile prediction: exact stitching, test-time augmentation, the challenges' output files, the CLI, the rule."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet.cli import main as unet_main
from unet.errors import UsageError
from unet.io import MARKER, OutputError, Split, normalize_intensity, read_stack, write_split
from unet.model import UNet, save_model
from unet.overlap_tile import TTA, predict_probabilities, tile_layout
from unet.predict import instance_masks, write_ctc_masks, write_submission
from unet.sizes import InvalidSizeError, border, valid_input_size_at_least

from helpers import copy_workflow, snakemake, unet


def tiny_unet(depth: int = 3, seed: int = 0) -> UNet:
    """A random-weight network whose probabilities spread over [0, 1] (a larger head), so that errors show."""
    torch.manual_seed(seed)
    model = UNet(base_channels=2, depth=depth).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)
    return model


def whole_image_probability(model: UNet, images: np.ndarray) -> np.ndarray:
    """The reference: mirror the whole image as the tiler does, one forward pass, crop to the image."""
    single_tile = valid_input_size_at_least(max(images.shape[1:]) + 2 * border(model.depth), model.depth)
    layout = tile_layout(images.shape[1:], single_tile, model.depth)
    assert layout.counts == (1, 1), "the reference must be a single pass"
    mirrored = np.pad(images, ((0, 0), *layout.padding(images.shape[1:])), mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(mirrored))[:, None])
    return torch.softmax(logits, dim=1)[:, 1, : images.shape[1], : images.shape[2]].numpy()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 50, 70), dtype=np.float32)


def test_transforms_round_trip_and_form_the_group_of_the_square():
    image = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 5, 7)
    for transform in TTA["d4"]:
        assert torch.equal(transform.invert(transform.apply(image)), image)
    square = torch.arange(16.0).reshape(4, 4)
    d4 = {tuple(t.apply(square).flatten().tolist()) for t in TTA["d4"]}
    assert len(d4) == 8
    assert {tuple(a.apply(b.apply(square)).flatten().tolist()) for a in TTA["d4"] for b in TTA["d4"]} == d4
    flips = [t.apply(square) for t in TTA["flips"]]
    expected = [square, square.flip(-1), square.flip(-2), square.flip(-2).flip(-1)]
    assert all(torch.equal(a, b) for a, b in zip(flips, expected))
    assert len(TTA["none"]) == 1


def test_tiles_step_on_the_pooling_grid_and_cover_the_image():
    layout = tile_layout((512, 512), 572, depth=4)  # the paper's tile cannot cover 512 once: 2 x 2 smaller tiles
    assert (layout.tile, layout.output, layout.stride, layout.counts) == (444, 260, 256, (2, 2))
    assert tile_layout((512, 512), 700, depth=4).counts == (1, 1)
    for shape in [(1, 1), (3, 200), (512, 700), (1000, 37)]:
        layout = tile_layout(shape, 572, depth=4)
        assert layout.stride % 16 == 0 and layout.tile <= 572
        assert all((n - 1) * layout.stride + layout.output >= size for n, size in zip(layout.counts, shape))
    with pytest.raises(InvalidSizeError, match="556 or 572"):
        tile_layout((512, 512), 570, depth=4)
    with pytest.raises(UsageError, match="use at least 204"):
        tile_layout((512, 512), 188, depth=4)  # output 4 px: too small to step by 16


def predict_fp32(model, images, **options) -> np.ndarray:
    """`predict_probabilities` in fp32, as `whole_image_probability` computes: exactness tests compare fp32 with
    fp32 (`precision: auto` chooses bf16 on a CPU that computes it faster)."""
    return predict_probabilities(model, images, precision="fp32", **options)


def test_stitched_tiles_equal_one_pass_over_the_whole_mirrored_image(images):
    model = tiny_unet()
    assert tile_layout(images.shape[1:], 100, model.depth).counts == (6, 9)
    reference = whole_image_probability(model, images)
    assert reference.std() > 0.1  # the network's output varies: a seam would show
    for input_size, batch_size in [(100, 5), (100, 1000), (300, 8)]:
        tiled = predict_fp32(model, images, input_size=input_size, batch_size=batch_size, tta="none")
        assert tiled.dtype == np.float32 and tiled.shape == images.shape
        np.testing.assert_allclose(tiled, reference, atol=1e-5, rtol=0)


def test_tiles_abutting_at_their_output_side_would_leave_seams(images):
    """Why the tiles step by a multiple of 2**depth: the network is equivariant only to such shifts."""
    model = tiny_unet()
    mirrored = np.pad(images[:1], ((0, 0), (44, 44), (44, 44)), mode="reflect")
    whole = whole_image_probability(model, mirrored[:, 44:-44, 44:-44])
    for offset, agrees in [(8, True), (12, False)]:  # 12 = the output side of a 100-pixel tile
        tile = torch.from_numpy(np.ascontiguousarray(mirrored[:, offset : offset + 100, :100]))[:, None]
        with torch.no_grad():
            probability = torch.softmax(model(tile), dim=1)[:, 1].numpy()
        difference = np.abs(probability - whole[:, offset : offset + 12, :12]).max()
        assert (difference < 1e-5) == agrees, difference


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_is_the_mean_of_rotating_the_image_predicting_and_rotating_back(tta):
    model = tiny_unet()
    image = np.random.default_rng(1).random((1, 37, 53), dtype=np.float32)  # non-square, sides off the grid
    variants = [(k, flip) for k in ((0, 2) if tta == "flips" else range(4)) for flip in (False, True)]
    total = 0
    for k, flip in variants:  # numpy's own rotations, independent of unet.predict.Transform
        transformed = np.rot90(np.flip(image, -1) if flip else image, k, axes=(1, 2))
        predicted = whole_image_probability(model, np.ascontiguousarray(transformed))
        restored = np.rot90(predicted, -k, axes=(1, 2))
        total = total + (np.flip(restored, -1) if flip else restored)
    tiled = predict_fp32(model, image, input_size=100, batch_size=13, tta=tta)
    np.testing.assert_allclose(tiled, total / len(variants), atol=1e-5, rtol=0)
    assert np.abs(tiled - predict_fp32(model, image, input_size=100, tta="none")).max() > 0.01


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 90), (17, 16)])
def test_images_smaller_than_a_tile(shape):
    model = tiny_unet(depth=4)
    image = np.random.default_rng(2).random((1, *shape), dtype=np.float32)
    plain = predict_fp32(model, image, tta="none")
    np.testing.assert_allclose(plain, whole_image_probability(model, image), atol=1e-5, rtol=0)
    averaged = predict_fp32(model, image, tta="d4")
    assert averaged.shape == image.shape and 0 <= averaged.min() and averaged.max() <= 1


def test_prediction_leaves_a_training_model_in_training_mode(images):
    model = tiny_unet().train()
    first = predict_probabilities(model, images[:1], input_size=300, tta="none")
    assert model.training
    np.testing.assert_array_equal(first, predict_probabilities(model, images[:1], input_size=300, tta="none"))


def test_every_forward_pass_of_a_prediction_sees_one_input_shape(images):
    """cuDNN's autotuner tunes anew for each input shape: the last, partial batch is padded (by less than a tile
    per batch on the CPU), and the result stays exact."""
    model = tiny_unet()
    shapes = []
    model.register_forward_pre_hook(lambda _, inputs: shapes.append(tuple(inputs[0].shape)))
    tiles = len(images) * math.prod(tile_layout(images.shape[1:], 100, model.depth).counts)
    assert tiles % 10 and (tiles // len(images)) % 10  # batches of 10 would leave partial ones
    predicted = predict_fp32(model, images, input_size=100, batch_size=10, tta="none")
    assert len(set(shapes)) == 1, set(shapes)
    padding = len(shapes) * shapes[0][0] - tiles
    assert shapes[0][0] <= 10 and 0 < padding < len(shapes)
    np.testing.assert_allclose(predicted, whole_image_probability(model, images), atol=1e-5, rtol=0)


def test_autotuned_cuda_devices_share_few_tile_sides_across_image_sizes(monkeypatch):
    """With cuDNN autotuning on, tile sides step down from input_size by 4 * 2**depth, never adding a tile; on the
    CPU, tiles stay as small as possible."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    shapes = [tuple(side) for side in np.random.default_rng(0).integers(40, 2500, size=(200, 2))]
    tiles = set()
    for shape in shapes:
        smallest, few = tile_layout(shape, 572, 4, "cpu"), tile_layout(shape, 572, 4, "cuda")
        assert few.counts == smallest.counts and smallest.tile <= few.tile <= 572
        assert (572 - few.tile) % 64 == 0
        tiles.add(few.tile)
    assert len(tiles) <= 7 and len({tile_layout(shape, 572, 4).tile for shape in shapes}) > 2 * len(tiles)
    assert tile_layout((512, 512), 572, 4, "cuda").tile == 444  # the challenges' images keep their tiles
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert tile_layout((300, 300), 572, 4, "cuda") == tile_layout((300, 300), 572, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prediction_of_images_of_many_sizes_runs_few_shapes(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    model = tiny_unet(depth=4).cuda()
    shapes = set()
    model.register_forward_pre_hook(lambda _, inputs: shapes.add(tuple(inputs[0].shape)))
    for side in range(40, 1200, 37):
        image = np.random.default_rng(side).random((1, side, side + 11), dtype=np.float32)
        predict_probabilities(model, image, batch_size=8, tta="flips")
    assert {shape[0] for shape in shapes} == {8} and len(shapes) <= 7, shapes


def test_prediction_memory_is_bounded_by_the_batch_not_the_image():
    """A 4096 x 4096 image with four test-time variants, in a fresh process: the peak memory grows by the output,
    its sum in progress and a batch of tiles, far less than holding the tiles of every variant."""
    batch_size = 2
    result = subprocess.run(
        [sys.executable, Path(__file__).with_name("prediction_memory.py"), "4096", "1012", str(batch_size), "flips"],
        # Allocations from 64 KiB up are mapped and returned at once, so resident memory follows what is in use.
        env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    tile_bytes = 4 * measured["tile"] ** 2
    # The output and the image's sum; per tile of a batch, its input, two logits and their soft-max (each at most a
    # tile); 16 MiB for the allocator and the index vectors.
    bound = 2 * measured["image_bytes"] + 5 * batch_size * tile_bytes + 16 * 2**20
    assert bound < len(TTA["flips"]) * measured["image_bytes"]  # less than the inputs of all variants at once
    assert measured["growth"] < bound, (measured, bound)
    assert measured["error"] < 1e-6  # and every pixel was predicted


def test_instance_masks_label_components_and_drop_small_ones():
    probabilities = np.zeros((2, 20, 20), dtype=np.float32)
    probabilities[0, 1:7, 1:7] = 0.9  # 36 px
    probabilities[0, 10:12, 10:12] = 0.8  # 4 px: removed with min_area 5
    probabilities[0, 15:18, 15:18] = 0.5  # exactly 0.5 is not cell (arg-max: the first class wins ties)
    probabilities[1, 2:8, 2:8] = 1.0
    probabilities[1, 8:14, 8:14] = 1.0  # touches the first square at one corner only
    masks = instance_masks(probabilities, min_area=5)
    assert masks.dtype == np.uint16
    assert sorted(np.unique(masks[0])) == [0, 1] and (masks[0] == 1).sum() == 36
    assert masks.max(axis=(1, 2)).tolist() == [1, 1]  # 8-connected: the corner joins the squares
    four = instance_masks(probabilities, min_area=5, connectivity=4)
    assert sorted(np.unique(four[1])) == [0, 1, 2]
    assert instance_masks(probabilities, min_area=37)[0].max() == 0


def test_a_higher_instance_threshold_opens_a_weak_border():
    """Two cells joined by pixels the network is unsure of (0.6): one instance at the arg-max, two at 0.65."""
    probabilities = np.zeros((1, 10, 20), dtype=np.float32)
    probabilities[0, 2:8, 2:9] = 0.9
    probabilities[0, 2:8, 11:18] = 0.9
    probabilities[0, 2:8, 9:11] = 0.6
    assert instance_masks(probabilities).max() == 1
    two = instance_masks(probabilities, threshold=0.65)
    assert two.max() == 2 and (two > 0).sum() == 2 * 42


def test_ctc_result_folder_has_a_mask_for_every_frame(tmp_path):
    masks = np.arange(12, dtype=np.uint16)[:, None, None] * np.ones((1, 4, 5), dtype=np.uint16)
    res = tmp_path / "02_RES"
    res.mkdir()  # empty: Snakemake makes it
    write_ctc_masks(res, masks, list(range(12)))
    assert sorted(p.name for p in res.iterdir()) == [MARKER] + [f"mask{t:03d}.tif" for t in range(12)]
    assert tifffile.imread(res / "mask011.tif").dtype == np.uint16
    assert tifffile.imread(res / "mask007.tif").max() == 7
    write_ctc_masks(res, masks[:2], [999, 1000])  # replaces the folder it wrote
    assert sorted(p.name for p in res.iterdir()) == [MARKER, "mask0999.tif", "mask1000.tif"]
    (res / "notes.txt").write_text("a user's")
    with pytest.raises(OutputError, match=rf"^{res}: exists and holds what unet did not write there \(notes.txt\)"):
        write_ctc_masks(res, masks, list(range(12)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_RES"]  # no staging folders left


def test_ctc_result_folder_is_untouched_when_writing_fails(tmp_path, monkeypatch):
    res = tmp_path / "01_RES"
    write_ctc_masks(res, np.ones((2, 4, 4), dtype=np.uint16), [0, 1])
    import unet.predict

    def fail_on_the_second_frame(path, array, **kwargs):
        if Path(path).name == "mask001.tif":
            raise OSError("disk full")
        tifffile.imwrite(path, array)

    monkeypatch.setattr(unet.predict, "write_tiff", fail_on_the_second_frame)
    with pytest.raises(OSError, match="disk full"):
        write_ctc_masks(res, np.full((2, 4, 4), 7, dtype=np.uint16), [0, 1])
    assert tifffile.imread(res / "mask000.tif").max() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_RES"]
    with pytest.raises(UsageError, match="uint16"):
        write_ctc_masks(res, np.ones((2, 4, 4), dtype=np.int32), [0, 1])


def test_the_challenges_evaluator_accepts_the_result_folder(shared_data, tmp_path):
    """Real DIC-HeLa silver truth as probabilities, through instance_masks and the writer, scored by py-ctcmetrics."""
    from ctc_metrics import evaluate_sequence

    sequence = shared_data / "ctc" / "DIC-C2DH-HeLa"
    silver = np.stack([tifffile.imread(p) for p in sorted((sequence / "01_ST" / "SEG").glob("man_seg*.tif"))])
    assert len(silver) == len(list((sequence / "01").glob("t*.tif")))  # every frame
    write_ctc_masks(tmp_path / "01_RES", instance_masks((silver > 0).astype(np.float32), 20), list(range(len(silver))))
    seg = evaluate_sequence(res=str(tmp_path / "01_RES"), gt=str(sequence / "01_GT"), metrics=["SEG"], threads=1)["SEG"]
    assert 0.5 < seg < 1  # touching cells merge without the network's separation borders


def test_submission_stack_properties(tmp_path):
    probabilities = np.random.default_rng(3).random((30, 8, 8), dtype=np.float32)
    write_submission(tmp_path / "submission.tif", probabilities)
    with tifffile.TiffFile(tmp_path / "submission.tif") as tif:
        assert len(tif.pages) == 30 and tif.pages[0].dtype == np.float32 and tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), probabilities)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        write_submission(tmp_path / "bad.tif", probabilities * 2)
    with pytest.raises(UsageError, match="float32"):
        write_submission(tmp_path / "bad.tif", probabilities.astype(np.float64))
    assert not (tmp_path / "bad.tif").exists()


@pytest.fixture(scope="module")
def isbi_split(shared_data, tmp_path_factory):
    """A prepared split of six real ISBI training slices, cropped to 64 x 48, and a tiny saved model."""
    root = tmp_path_factory.mktemp("isbi")
    images = tifffile.imread(shared_data / "isbi2012" / "train-volume.tif")[:6, :64, :48]
    labels = (tifffile.imread(shared_data / "isbi2012" / "train-labels.tif")[:6, :64, :48] > 0).astype(np.uint8)
    frames = list(range(6))
    write_split(root / "train", Split("isbi2012", "train", "binary", images, frames, labels, frames))
    save_model(root / "model.pt", tiny_unet(depth=2))
    return root


def predict_split(root: Path, out: Path, *extra: str) -> list[str]:
    """`unet predict` arguments for the tiny model and training split of `isbi_split`."""
    return ["predict", "--model", str(root / "model.pt"), "--data", str(root / "train"), "--out", str(out), *extra]


def test_cli_predicts_the_held_out_fold(isbi_split, tmp_path):
    out = tmp_path / "probabilities.tif"
    finished = unet(
        "predict",
        "--model",
        isbi_split / "model.pt",
        "--data",
        isbi_split / "train",
        "--out",
        out,
        "--fold",
        "1",
        "--folds",
        "3",
        "--tta",
        "flips",
        "--input-size",
        "76",
        "--batch-size",
        "3",
        "--device",
        "cpu",
    )
    assert finished.returncode == 0, finished.stderr
    assert "frames 2-3" in finished.stderr
    images = tifffile.imread(isbi_split / "train" / "images.tif")[[2, 3]]
    expected = predict_probabilities(tiny_unet(depth=2), normalize_intensity(images), input_size=76, tta="flips")
    np.testing.assert_allclose(read_stack(out), expected, atol=1e-6, rtol=0)


def test_cli_writes_the_submission_for_the_real_isbi_test_volume(shared_data, tmp_path):
    model = tmp_path / "model.pt"
    save_model(model, tiny_unet(depth=2))
    unet(
        "prepare",
        "isbi2012",
        "--raw",
        shared_data / "isbi2012",
        "--out",
        tmp_path / "data",
        "--splits",
        "test",
        check=True,
    )
    argv = [
        "predict",
        "--model",
        model,
        "--data",
        tmp_path / "data" / "test",
        "--out",
        tmp_path / "p.tif",
        "--submission",
        tmp_path / "submission.tif",
        "--tta",
        "none",
        "--device",
        "cpu",
    ]
    assert unet_main(list(map(str, argv))) == 0
    submission = tifffile.imread(tmp_path / "submission.tif")
    assert submission.shape == (30, 512, 512) and submission.dtype == np.float32
    assert 0 <= submission.min() and submission.max() <= 1
    np.testing.assert_array_equal(submission, tifffile.imread(tmp_path / "p.tif"))


def test_cli_writes_ctc_masks_for_every_frame(isbi_split, tmp_path):
    extra = ["--instances", str(tmp_path / "02_RES"), "--min-area", "3", "--tta", "none", "--device", "cpu"]
    assert unet_main(predict_split(isbi_split, tmp_path / "p.tif", *extra)) == 0
    masks = np.stack([tifffile.imread(tmp_path / "02_RES" / f"mask{t:03d}.tif") for t in range(6)])
    np.testing.assert_array_equal(masks, instance_masks(tifffile.imread(tmp_path / "p.tif"), 3))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--frames", "0-1", "--instances", "RES"], "needs a mask for every frame"),
        (["--frames", "4-9"], r"train: frames 6-9 are not among its frames 0-5"),
        (["--input-size", "78"], "input size 78 is invalid .* 76 or 80"),
        (["--fold", "1"], "--fold and --folds go together"),
        (["--tta", "d8"], "invalid choice: 'd8'"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_cli_rejects_bad_requests_clearly(isbi_split, tmp_path, capsys, extra, message):
    argv = predict_split(isbi_split, tmp_path / "p.tif", *[str(tmp_path / a) if a == "RES" else a for a in extra])
    try:
        code = unet_main(argv)
    except SystemExit as exit:  # argparse rejects unknown choices itself
        code = exit.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "p.tif").exists()


def test_rules_pass_the_merged_predict_settings(tmp_path):
    """Dry-run the real workflow up to four predictions: the per data set overrides reach the CLI."""
    workdir = copy_workflow(tmp_path)
    targets = [
        "results/predictions/isbi2012/fold1/seed0/probabilities.tif",
        "results/predictions/isbi2012/all/seed0/submission.tif",
        "results/predictions/PhC-C2DH-U373/01/seed0/02_RES",
        "results/predictions/DIC-C2DH-HeLa/02/seed0/01_RES",
    ]
    finished = snakemake(workdir, "-n", "-p", "--", *targets)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    commands = [line for line in finished.stdout.splitlines() if "unet predict " in line]
    fold, test, phc, hela = (
        next(c for c in commands if key in c) for key in ("fold1/", "all/", "PhC-C2DH-U373/01/", "DIC-C2DH-HeLa/02/")
    )
    assert "--data results/data/isbi2012/train " in fold and "--fold 1 --folds 3" in fold and "--tta d4" in fold
    assert (
        "--data results/data/isbi2012/test " in test
        and "--submission results/predictions/isbi2012/all/seed0/submission.tif" in test
    )
    assert "--data results/data/PhC-C2DH-U373/02 " in phc and "--tta flips" in phc and "--min-area 500" in phc
    assert "--instances results/predictions/PhC-C2DH-U373/01/seed0/02_RES" in phc
    assert "--data results/data/DIC-C2DH-HeLa/01 " in hela and "--tta flips" in hela
