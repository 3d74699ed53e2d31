"""`unet export`: the bioimage.io package of a small random U-Net passes bioimageio.core's own model test, offline;
it takes images of any size and returns `unet predict --tta none`'s probabilities at the same size, in both weight
formats and through bioimageio.core's `predict`, tiled or not; bad input is an error naming the file."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from unet.cli import main as unet_main
from unet.export import FILES, describe, halo, read_test_input, readme, smallest_input, training_facts
from unet.io import (
    MARKER,
    NORMALIZATION_PERCENTILES,
    DataError,
    Split,
    normalize_intensity,
    read_stack,
    write_split,
    write_tiff,
)
from unet.model import UNet, load_model, save_model
from unet.overlap_tile import predict_probabilities
from unet.synthetic import em_section

from helpers import unet

DEPTH = 2
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript")


def tiny_unet() -> UNet:
    """A random-weight network whose probabilities spread over [0, 1] (a larger head), so that errors show."""
    torch.manual_seed(1)  # a seed whose 2-channel network does not leave most pixels at 0.5
    model = UNet(base_channels=2, depth=DEPTH).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A folder with `model.pt`, the test image `image.tif`, and what `unet export` made of them: `package.zip`
    and `cover.png`."""
    folder = tmp_path_factory.mktemp("export")
    save_model(
        folder / "model.pt",
        tiny_unet(),
        normalization={"percentiles": list(NORMALIZATION_PERCENTILES)},
        label_kind="binary",
        iterations=5,
        seed=0,
        settings={"frames": [0, 1, 2], "val_frames": [3], "train": {"learning_rate": 0.01}},
    )
    image, _ = em_section(np.random.default_rng(0), 90, 16.0)
    write_tiff(folder / "image.tif", image)
    unet(
        "export",
        folder / "model.pt",
        folder / "package.zip",
        "--image",
        folder / "image.tif",
        "--dataset",
        "demo-em",
        "--cover",
        folder / "cover.png",
        check=True,
    )
    return folder


@pytest.fixture
def network_use(monkeypatch) -> list:
    """Every network connection or name lookup tried, each refused: the package must be testable offline."""
    tried = []

    def connect(sock, address):
        tried.append(address)
        raise OSError(f"no network in this test: {address}")

    def getaddrinfo(host, *args, **kwargs):
        tried.append(host)
        raise socket.gaierror(f"no network in this test: {host}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return tried


def package_file(package: Path, name: str) -> bytes:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name)


def package_array(package: Path, name: str) -> np.ndarray:
    return np.load(io.BytesIO(package_file(package, name)))


def unet_predict(model_file: Path, scaled: np.ndarray) -> np.ndarray:
    """The cell probability of `unet predict --tta none --precision fp32` for an image already scaled (its
    overlap-tile prediction): the package's consumers compute in fp32, whatever `auto` would choose here."""
    return predict_probabilities(load_model(model_file), scaled[None], tta="none", precision="fp32")[0]


def scaled_like_bioimageio_core(image: np.ndarray) -> np.ndarray:
    """`image` scaled as bioimageio.core 0.11's `predict` scales it when it does not tile: it pads the halo (here by
    reflection) before it computes the sample's percentiles, so they are those of the mirrored image."""
    low, high = np.percentile(np.pad(image, halo(DEPTH), mode="reflect"), NORMALIZATION_PERCENTILES)
    return ((image - low) / (high - low + 1e-6)).astype(np.float32)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # bioimageio.core's call
@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
def test_the_package_passes_bioimageio_cores_model_test_offline(exported, weight_format, network_use):
    from bioimageio.core import test_model

    summary = test_model(exported / "package.zip", weight_format=weight_format)

    assert summary.status == "passed", summary.format()
    tests = {detail.name: detail.status for detail in summary.details}
    assert tests[f"Reproduce test outputs from test inputs ({weight_format})"] == "passed"
    inference = [name for name in tests if name.startswith(f"Run {weight_format} inference for inputs")]
    assert len(inference) == 6  # batch sizes 1 and 2, each at three sizes
    assert network_use == []


def test_the_description_gives_any_size_in_the_same_size_out_and_the_halo(exported):
    from bioimageio.spec import load_model_description

    description = load_model_description(exported / "package.zip")

    (raw,), (probabilities,) = description.inputs, description.outputs
    assert [axis.id for axis in raw.axes] == ["batch", "channel", "y", "x"] == [axis.id for axis in probabilities.axes]
    for axis in raw.axes[2:]:
        assert (axis.size.min, axis.size.step, axis.concatenable) == (smallest_input(DEPTH), 1, True)
    assert raw.pad.mode == "reflect"  # as written to rdf.yaml and read back: the mirroring of `unet predict`
    for axis in probabilities.axes[2:]:
        assert (axis.size.tensor_id, axis.size.axis_id, axis.size.offset) == ("raw", axis.id, 0)
        assert axis.halo == halo(DEPTH) == 24  # 20 px of context and 3 of the pooling windows, on the 4 px grid
    assert probabilities.axes[1].channel_names == ["background", "cell"]
    (scaling,) = [step.kwargs for step in raw.preprocessing if step.id == "scale_range"]
    assert (scaling.min_percentile, scaling.max_percentile, scaling.axes) == (1.0, 99.0, ["y", "x"])
    assert {name for name, entry in description.weights if entry} == set(WEIGHT_FORMATS)
    architecture = description.weights.pytorch_state_dict.architecture
    assert (architecture.callable, architecture.kwargs) == ("SameSizeUNet", load_model(exported / "model.pt").config)
    assert description.license == "MIT" and "demo-em" in description.name
    assert [author.name for author in description.authors] == ["unet-reproduction contributors"]
    assert str(description.cite[0].doi) == "10.1007/978-3-319-24574-4_28"
    readme = package_file(exported / "package.zip", FILES["readme"]).decode()
    assert "of any size" in readme and "halo of 24 px" in readme and "## Validation" in readme


def test_the_test_output_is_what_unet_predict_computes_at_the_images_size(exported):
    """The package's scale_range and network give `unet predict --tta none`'s probabilities, for the whole 90 px
    test image (not a valid tile: 88 and 92 are)."""
    package = exported / "package.zip"
    test_input, test_output = (package_array(package, FILES[name]) for name in ("test_input", "test_output"))
    assert test_input.shape == (1, 1, 90, 90) and test_output.shape == (1, 2, 90, 90)
    expected = unet_predict(exported / "model.pt", normalize_intensity(test_input[0, 0]))
    np.testing.assert_allclose(test_output[0, 1], expected, atol=1e-5)
    np.testing.assert_allclose(test_output.sum(axis=1), 1, atol=1e-6)
    assert np.ptp(test_output[:, 1]) > 0.4  # probabilities that vary, so that the comparison can fail


def test_the_cover_shows_input_and_probability_side_by_side(exported):
    cover = imread(exported / "cover.png")
    assert cover.shape[1] == 2 * cover.shape[0]
    assert (exported / "cover.png").read_bytes() == package_file(exported / "package.zip", FILES["cover"])


# Sizes down to 1 px, odd, flat, tall, and larger than the 90 px example the TorchScript weights were traced on.
ANY_SIZES = [(1, 1), (1, 9), (9, 1), (2, 3), (45, 31), (131, 97)]


# The architecture file runs in a Python that cannot import `unet`, which is not on PyPI.
ARCHITECTURE_SCRIPT = """
import importlib.util, sys
import numpy as np, torch, yaml
sys.modules["unet"] = None  # importing this project fails
weights = yaml.safe_load(open("rdf.yaml"))["weights"]["pytorch_state_dict"]
spec = importlib.util.spec_from_file_location("architecture", weights["architecture"]["source"])
architecture = importlib.util.module_from_spec(spec)
sys.modules["architecture"] = architecture
spec.loader.exec_module(architecture)
network = getattr(architecture, weights["architecture"]["callable"])(**weights["architecture"]["kwargs"])
network.load_state_dict(torch.load(weights["source"], weights_only=True))
network.eval()
with torch.no_grad():
    np.savez("out.npz", *(network(torch.from_numpy(x)[None, None])[0].numpy() for x in np.load("in.npz").values()))
"""


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
def test_the_packaged_network_takes_any_size_and_returns_unet_predicts_probabilities(exported, weight_format, tmp_path):
    """Both weight formats mirror every image into a valid tile (NumPy's reflect, repeated for images smaller than
    the network's context) and crop back, as `unet predict` does: the TorchScript trace follows the input's shape."""
    with zipfile.ZipFile(exported / "package.zip") as archive:
        archive.extractall(tmp_path)
    rng = np.random.default_rng(2)
    images = [rng.random(shape, dtype=np.float32) for shape in ANY_SIZES]
    if weight_format == "torchscript":
        network = torch.jit.load(tmp_path / FILES["torchscript"])
        with torch.no_grad():
            outputs = [network(torch.from_numpy(image)[None, None])[0].numpy() for image in images]
    else:
        np.savez(tmp_path / "in.npz", *images)
        result = subprocess.run(
            [sys.executable, "-c", ARCHITECTURE_SCRIPT], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        outputs = list(np.load(tmp_path / "out.npz").values())

    for image, output in zip(images, outputs):
        assert output.shape == (2, *image.shape)
        np.testing.assert_allclose(output[1], unet_predict(exported / "model.pt", image), atol=1e-5)
    assert np.ptp(outputs[-1][1]) > 0.4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_torchscript_weights_follow_the_inputs_device(exported):
    """A trace keeps the device of a tensor created with an explicit one (`torch.arange(n, device=x.device)`): the
    mirroring's indices would stay on the CPU when a tool runs the weights on a GPU. No GPU here: read the graph."""
    network = torch.jit.load(io.BytesIO(package_file(exported / "package.zip", FILES["torchscript"])))
    assert ": Device = prim::Constant" not in str(network.inlined_graph)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
@pytest.mark.parametrize("shape", [(131, 97), (512, 512)])
def test_bioimageio_cores_predict_returns_unet_predicts_probabilities_at_the_images_size(
    exported, shared_data, shape, weight_format
):
    """A HeLa frame as acquired (uint8), whole and cropped to an odd size, through bioimageio.core's `predict`, which
    pads the halo by reflection, scales, runs the package and crops the halo: `unet predict --tta none`, up to the
    percentiles that core computes over the mirrored image (`scaled_like_bioimageio_core`)."""
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_model_description

    frame = read_stack(shared_data / "ctc" / "DIC-C2DH-HeLa" / "01" / "t000.tif")[0]
    image = frame[100 : 100 + shape[0], 200 : 200 + shape[1]] if shape != frame.shape else frame
    assert image.shape == shape and image.dtype == np.uint8
    pipeline = create_prediction_pipeline(load_model_description(exported / "package.zip"), weight_format=weight_format)

    output = predict(model=pipeline, inputs=image[None, None]).members["probabilities"].data.to_numpy()

    assert output.shape == (1, 2, *shape)
    expected = unet_predict(exported / "model.pt", scaled_like_bioimageio_core(image.astype(np.float32)))
    # Rounding differs by about 1e-6; a halo short of the network's reach errs by about 1e-3 at the image's edges.
    np.testing.assert_allclose(output[0, 1], expected, atol=1e-4)
    assert np.ptp(expected) > 0.4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_bioimageio_cores_tiled_prediction_of_a_large_image_has_no_seams(exported, shared_data):
    """A 2048 x 2048 mosaic of 16 ISBI 2012 sections, through bioimageio.core's `predict` in 16 tiles of 512 px
    plus the halo (block size parameter n: min + n = 52 + 508 = 512 + 2 * 24): the tiles keep multiples of the
    4 px pooling grid, core scales by the whole image's percentiles, and the result is `unet predict --tta none`
    on the whole image, up to its edges."""
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_model_description

    sections = read_stack(shared_data / "isbi2012" / "train-volume.tif")[:16]
    image = sections.reshape(4, 4, 512, 512).transpose(0, 2, 1, 3).reshape(2048, 2048)
    description = load_model_description(exported / "package.zip")
    blocksize_parameter = 512 - 2**DEPTH
    block = description.get_tensor_sizes({("raw", axis): blocksize_parameter for axis in "yx"}, 1).inputs["raw"]
    assert (block["y"], block["x"]) == (512 + 2 * halo(DEPTH),) * 2
    pipeline = create_prediction_pipeline(description, weight_format="torchscript")

    tiled = predict(model=pipeline, inputs=image[None, None], blocksize_parameter=blocksize_parameter)

    probability = tiled.members["probabilities"].data.to_numpy()[0, 1]
    np.testing.assert_allclose(probability, unet_predict(exported / "model.pt", normalize_intensity(image)), atol=1e-3)


def test_an_out_without_zip_suffix_gets_a_folder_that_replaces_the_one_it_wrote_before(exported, tmp_path):
    from bioimageio.spec import load_model_description

    out = tmp_path / "package"
    for _ in range(2):
        assert unet_main(["export", str(exported / "model.pt"), str(out), "--image", str(exported / "image.tif")]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted([*FILES.values(), "rdf.yaml", MARKER])
    description = load_model_description(out / "rdf.yaml")
    assert description.name == "U-Net (Ronneberger 2015 reproduction)"  # no --dataset


@pytest.mark.parametrize("percentiles", [[2.0, 98.0], None])
def test_the_scaling_follows_the_model_files_percentiles(percentiles, tmp_path):
    """Newer model files record their input scaling; older ones scaled with unet.io's percentiles."""
    metadata = {"normalization": {"percentiles": percentiles}} if percentiles else {}
    image = em_section(np.random.default_rng(1), 48, 16.0)[0][None, None].astype(np.float32)
    description = describe(tiny_unet(), metadata, image, tmp_path)
    (scaling,) = [step.kwargs for step in description.inputs[0].preprocessing if step.id == "scale_range"]
    assert (scaling.min_percentile, scaling.max_percentile) == tuple(percentiles or NORMALIZATION_PERCENTILES)


def test_a_file_that_is_not_a_model_is_an_error_naming_it(tmp_path):
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a model")
    result = unet("export", not_a_model, tmp_path / "package.zip")
    assert result.returncode == 2
    assert result.stderr.startswith(f"unet export: error: {not_a_model}: not a readable model file")
    assert not (tmp_path / "package.zip").exists()


def test_a_model_with_nan_weights_is_refused_naming_it(tmp_path):
    model = tiny_unet()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")  # its package would pass `bioimageio test`: NaN in, NaN out
    save_model(tmp_path / "diverged.pt", model)
    result = unet("export", tmp_path / "diverged.pt", tmp_path / "package.zip")
    assert (result.returncode, result.stderr) == (
        2,
        f"unet export: error: {tmp_path / 'diverged.pt'}: 1 weights of head.weight are NaN or infinite; the training "
        "that wrote it diverged, or the file is damaged\n",
    )
    assert not (tmp_path / "package.zip").exists()


def test_a_test_image_without_contrast_is_an_error_naming_it(tmp_path):
    path = tmp_path / "image.tif"
    write_tiff(path, np.zeros((60, 60), np.float32))
    with pytest.raises(DataError, match=f"^{path}: .*no contrast"):
        read_test_input(str(path), DEPTH, NORMALIZATION_PERCENTILES)


def test_a_small_test_image_is_mirrored_up_to_the_smallest_input_and_a_split_frame_taken_at_its_size(tmp_path):
    small = np.arange(30 * 90, dtype=np.uint16).reshape(30, 90)
    write_tiff(tmp_path / "small.tif", small)
    side = min(smallest_input(DEPTH), 90)
    test_input = read_test_input(str(tmp_path / "small.tif"), DEPTH, NORMALIZATION_PERCENTILES)[0, 0]
    mirrored = np.pad(small, [(0, smallest_input(DEPTH) - 30), (0, 0)], mode="reflect")
    left = (90 - side) // 2
    assert np.array_equal(test_input, mirrored[:side, left : left + side])
    # A prepared split pads its frames to one size; the package tests the first frame as acquired.
    padded = np.pad(small, [(0, 40), (0, 10)], mode="reflect")[None]
    write_split(tmp_path / "split", Split("own", "train", "binary", padded, [0], sizes=[(30, 90)]))
    from_split = read_test_input(str(tmp_path / "split" / "images.tif"), DEPTH, NORMALIZATION_PERCENTILES)
    assert np.array_equal(from_split, read_test_input(str(tmp_path / "small.tif"), DEPTH, NORMALIZATION_PERCENTILES))


def test_the_model_card_says_which_iterations_the_kept_weights_average():
    averaged = training_facts({"iterations": 6000, "averaged_iterations": [4501, 6000]}, "DIC-C2DH-HeLa")
    assert averaged["weights"] == "the mean of the weights after iterations 4501-6000"
    assert "weights" not in training_facts({"iterations": 6000}, "DIC-C2DH-HeLa")  # the last weights


def test_the_model_card_gives_the_instance_threshold_the_model_was_trained_for():
    metadata = {"label_kind": "instance", "predict": {"tta": "flips", "threshold": 0.65}}
    assert training_facts(metadata, "DIC-C2DH-HeLa")["`unet predict` defaults"] == "tta flips, threshold 0.65"
    config = {"depth": 2, "base_channels": 4}
    assert "cell probability exceeds 0.65\n" in readme(config, metadata, "DIC-C2DH-HeLa")
    older = readme(config, {"label_kind": "instance"}, "DIC-C2DH-HeLa")  # saved before the setting: the arg-max
    assert "cell probability exceeds 0.5\n" in older
    assert "exceeds" not in readme(config, {"label_kind": "binary"}, "isbi2012")  # membranes: no instances
