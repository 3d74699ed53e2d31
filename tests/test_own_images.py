"""Segmenting your own images with trained models: folders and files in, one result per input file out,
the model's own prediction settings, ensembles, multichannel input, and stacks that open right in Fiji."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from skimage import io as skimage_io

from unet.io import normalize_intensity, read_split
from unet.model import UNet, save_model
from unet.overlap_tile import predict_probabilities
from unet.predict import instance_masks

from helpers import unet

HELA = "ctc/DIC-C2DH-HeLa"


def cell_model(path, seed: int = 0, **metadata):
    """A random depth-2 network saved as a cell model would be (label kind, prediction settings, scaling)."""
    torch.manual_seed(seed)
    model = UNet(base_channels=2, depth=2).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)  # probabilities spread over [0, 1]: masks have several objects
    metadata = {
        "label_kind": "instance",
        "predict": {"tta": "flips", "min_area": 20, "connectivity": 4, "threshold": 0.4},
        "normalization": {"percentiles": [1.0, 99.0]},
        **metadata,
    }
    save_model(path, model, **metadata)
    return model


def imagej(path) -> dict:
    with tifffile.TiffFile(path) as tiff:
        return tiff.imagej_metadata or {}


def test_a_folder_a_stack_and_a_png_each_get_probabilities_and_masks_shaped_like_them(shared_data, tmp_path):
    model = cell_model(tmp_path / "model.pt")
    frames = np.stack([tifffile.imread(shared_data / HELA / "01" / f"t{t:03d}.tif")[:96, :128] for t in range(3)])
    folder = tmp_path / "frames"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", frames[0])
    skimage_io.imsave(folder / "b.png", frames[1], check_contrast=False)
    tifffile.imwrite(tmp_path / "movie.tif", frames, imagej=True, metadata={"axes": "TYX"})
    result = unet(
        "predict",
        "--model",
        tmp_path / "model.pt",
        "--images",
        folder,
        tmp_path / "movie.tif",
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "a_masks.tif",
        "a_probabilities.tif",
        "b_masks.tif",
        "b_probabilities.tif",
        "movie_masks.tif",
        "movie_probabilities.tif",
    ]
    # The model's own settings: its tta (flips), min_area (20), connectivity (4) and threshold (0.4).
    assert "masks: 4-connected components of cell probability > 0.4 of at least 20 px" in result.stderr
    expected = predict_probabilities(model, normalize_intensity(frames), tta="flips")
    movie = tifffile.imread(out / "movie_probabilities.tif")
    assert movie.dtype == np.float32 and movie.shape == frames.shape
    np.testing.assert_allclose(movie, expected, atol=1e-5)
    masks = tifffile.imread(out / "movie_masks.tif")
    assert masks.dtype == np.uint16 and masks.max() > 0
    np.testing.assert_array_equal(masks, instance_masks(movie, 20, connectivity=4, threshold=0.4))
    assert (instance_masks(movie, 20, connectivity=4) > 0).sum() < (masks > 0).sum()  # not the default 0.5
    assert imagej(out / "movie_probabilities.tif")["frames"] == 3 and "channels" not in imagej(out / "movie_masks.tif")
    np.testing.assert_allclose(tifffile.imread(out / "a_probabilities.tif"), expected[0], atol=1e-5)
    np.testing.assert_allclose(tifffile.imread(out / "b_probabilities.tif"), expected[1], atol=1e-5)
    assert tifffile.imread(out / "b_masks.tif").shape == (96, 128)


def test_flags_override_the_models_settings_and_several_models_average(shared_data, tmp_path):
    models = [cell_model(tmp_path / f"m{seed}.pt", seed) for seed in (0, 1)]
    image = tifffile.imread(shared_data / HELA / "02" / "t005.tif")[:100, :90]
    tifffile.imwrite(tmp_path / "cells.tif", image)
    result = unet(
        "predict",
        "--model",
        tmp_path / "m0.pt",
        tmp_path / "m1.pt",
        "--images",
        tmp_path / "cells.tif",
        "--out",
        tmp_path / "out",
        "--tta",
        "none",
        "--no-masks",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    scaled = normalize_intensity(image[None])
    expected = np.mean([predict_probabilities(model, scaled, tta="none") for model in models], axis=0)[0]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "cells_probabilities.tif"), expected, atol=1e-5)
    assert not (tmp_path / "out" / "cells_masks.tif").exists()


def test_an_rgb_image_is_refused_unless_a_channel_is_chosen(tmp_path):
    cell_model(tmp_path / "model.pt")
    rgb = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    skimage_io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    for name in ("rgb.tif", "rgb.png"):
        result = unet(
            "predict",
            "--model",
            tmp_path / "model.pt",
            "--images",
            tmp_path / name,
            "--out",
            tmp_path / "out",
            "--device",
            "cpu",
        )
        assert result.returncode == 2
        assert f"{tmp_path / name}: an RGB image" in result.stderr and "--channel 0 to 2" in result.stderr
    assert not (tmp_path / "out").exists()
    result = unet(
        "predict",
        "--model",
        tmp_path / "model.pt",
        "--images",
        tmp_path / "rgb.tif",
        "--channel",
        "1",
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(tmp_path / "out" / "rgb_probabilities.tif").shape == (64, 48)


def test_bad_inputs_name_the_path(tmp_path):
    cell_model(tmp_path / "model.pt")
    (tmp_path / "empty").mkdir()
    nan = np.ones((20, 20), np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    tifffile.imwrite(tmp_path / "complex.tif", nan + 1j)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    skimage_io.imsave(tmp_path / "whole.png", noise, check_contrast=False)
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:2000])  # a download cut short
    for inputs, message in [
        ([tmp_path / "empty"], "no TIFF or PNG images in this folder"),
        ([tmp_path / "missing.tif"], "no such file or folder"),
        ([tmp_path / "nan.tif"], "1 pixels are NaN or infinite (the first at pixel (3, 4)"),
        ([tmp_path / "complex.tif"], "complex pixels (complex64); save the image's magnitude or real part instead"),
        ([tmp_path / "cut.png"], "not a readable PNG"),
    ]:
        result = unet("predict", "--model", tmp_path / "model.pt", "--images", *inputs, "--out", tmp_path / "out")
        assert result.returncode == 2 and str(inputs[0]) in result.stderr and message in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_model_with_nan_weights_is_refused_before_any_image_is_read(tmp_path):
    model = cell_model(tmp_path / "model.pt")
    with torch.no_grad():
        model.head.bias[1] = float("inf")
    save_model(tmp_path / "diverged.pt", model)
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((20, 20), np.uint8))
    result = unet(
        "predict",
        "--model",
        tmp_path / "model.pt",
        tmp_path / "diverged.pt",
        "--images",
        tmp_path / "image.tif",
        "--out",
        tmp_path / "out",
    )
    assert result.returncode == 2 and result.stderr.startswith(
        f"unet predict: error: {tmp_path / 'diverged.pt'}: 1 weights of head.bias are NaN or infinite"
    )
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_prepared_stacks_and_predictions_open_in_fiji_as_slices_or_frames(shared_data, tmp_path):
    """Fiji reads an ImageJ stack without axes as channels: EM volumes are slices, cell sequences frames."""
    unet(
        "prepare",
        "isbi2012",
        "--raw",
        shared_data / "isbi2012",
        "--out",
        tmp_path / "isbi",
        "--splits",
        "train",
        check=True,
    )
    unet(
        "prepare",
        "DIC-C2DH-HeLa",
        "--raw",
        shared_data / HELA,
        "--out",
        tmp_path / "hela",
        "--splits",
        "01",
        check=True,
    )
    for name in ("images.tif", "labels.tif", "unannotated.tif"):
        assert imagej(tmp_path / "isbi" / "train" / name)["slices"] == 30, name
        assert "channels" not in imagej(tmp_path / "isbi" / "train" / name) and "frames" not in imagej(
            tmp_path / "isbi" / "train" / name
        )
    assert imagej(tmp_path / "hela" / "01" / "images.tif")["frames"] == 84
    assert imagej(tmp_path / "hela" / "01" / "labels.tif")["frames"] == 9
    assert read_split(tmp_path / "hela" / "01").images.shape == (84, 512, 512)
    cell_model(tmp_path / "model.pt")
    unet(
        "predict",
        "--model",
        tmp_path / "model.pt",
        "--data",
        tmp_path / "isbi" / "train",
        "--fold",
        "0",
        "--folds",
        "3",
        "--out",
        tmp_path / "fold0.tif",
        "--tta",
        "none",
        "--device",
        "cpu",
        check=True,
    )
    assert (
        imagej(tmp_path / "fold0.tif")["slices"] == 10 and tifffile.imread(tmp_path / "fold0.tif").dtype == np.float32
    )
    unet("weightmap", tmp_path / "hela" / "01", tmp_path / "weights", check=True)
    assert imagej(tmp_path / "weights" / "weights.tif")["frames"] == 9


def test_a_model_without_prediction_settings_uses_the_defaults(tmp_path):
    """Models saved before they carried their settings: the documented defaults, and no masks for unknown data."""
    torch.manual_seed(0)
    save_model(tmp_path / "old.pt", UNet(base_channels=2, depth=2))
    tifffile.imwrite(tmp_path / "x.tif", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    result = unet(
        "predict",
        "--model",
        tmp_path / "old.pt",
        "--images",
        tmp_path / "x.tif",
        "--out",
        tmp_path / "o",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_probabilities.tif"]


@pytest.mark.parametrize("flag", ["--instances", "--submission"])
def test_challenge_outputs_need_a_prepared_split(tmp_path, flag):
    cell_model(tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((40, 40), np.uint8))
    result = unet(
        "predict",
        "--model",
        tmp_path / "model.pt",
        "--images",
        tmp_path / "x.tif",
        "--out",
        tmp_path / "o",
        flag,
        tmp_path / "r",
    )
    assert result.returncode == 2 and "go with a prepared split (--data)" in result.stderr
