"""`unet export`: the bioimage.io package of a small random U-Net passes bioimageio.core's own model test, offline;
its description gives the network's tile sizes, scaling and outputs; bad input is an error naming the file."""

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
from unet.export import FILES, describe, read_test_input
from unet.io import NORMALIZATION_PERCENTILES, DataError, normalize_intensity, write_tiff
from unet.model import UNet, load_model, save_model
from unet.sizes import border, valid_input_size_at_least
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


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # bioimageio.core's call
@pytest.mark.parametrize("weight_format", WEIGHT_FORMATS)
def test_the_package_passes_bioimageio_cores_model_test_offline(exported, weight_format, network_use):
    from bioimageio.core import test_model

    summary = test_model(exported / "package.zip", weight_format=weight_format)

    assert summary.status == "passed", summary.format()
    tests = {detail.name: detail.status for detail in summary.details}
    assert tests[f"Reproduce test outputs from test inputs ({weight_format})"] == "passed"
    inference = [name for name in tests if name.startswith(f"Run {weight_format} inference for inputs")]
    assert len(inference) == 6  # batch sizes 1 and 2, each at three valid tile sizes
    assert network_use == []


def test_the_description_gives_the_networks_tile_sizes_scaling_and_outputs(exported):
    from bioimageio.spec import load_model_description

    description = load_model_description(exported / "package.zip")

    (raw,), (probabilities,) = description.inputs, description.outputs
    assert [axis.id for axis in raw.axes] == ["batch", "channel", "y", "x"] == [axis.id for axis in probabilities.axes]
    for axis in raw.axes[2:]:
        assert (axis.size.min, axis.size.step) == (valid_input_size_at_least(1, DEPTH), 2**DEPTH)
    for axis in probabilities.axes[2:]:
        # The network crops its own border (valid convolutions): an offset, and no halo for tools to crop as well.
        assert (axis.size.tensor_id, axis.size.axis_id, axis.size.offset) == ("raw", axis.id, -2 * border(DEPTH))
        assert not hasattr(axis, "halo")
    assert probabilities.axes[1].channel_names == ["background", "cell"]
    (scaling,) = [step.kwargs for step in raw.preprocessing if step.id == "scale_range"]
    assert (scaling.min_percentile, scaling.max_percentile, scaling.axes) == (1.0, 99.0, ["y", "x"])
    assert {name for name, entry in description.weights if entry} == set(WEIGHT_FORMATS)
    architecture = description.weights.pytorch_state_dict.architecture
    assert (architecture.callable, architecture.kwargs) == ("SoftmaxUNet", load_model(exported / "model.pt").config)
    assert description.license == "MIT" and "demo-em" in description.name
    assert [author.name for author in description.authors] == ["unet-reproduction contributors"]
    assert str(description.cite[0].doi) == "10.1007/978-3-319-24574-4_28"
    readme = package_file(exported / "package.zip", FILES["readme"]).decode()
    assert "Valid tile sides: 44 + 4n px" in readme and "## Validation" in readme


def test_the_test_output_is_what_the_pipeline_computes(exported):
    """The package's scale_range and soft-max network give what `unet predict` computes in one pass."""
    package = exported / "package.zip"
    test_input, test_output = (package_array(package, FILES[name]) for name in ("test_input", "test_output"))
    assert test_input.shape == (1, 1, 88, 88)  # the largest valid input side within the 90 px image
    scaled = torch.from_numpy(normalize_intensity(test_input[0]))[None]
    with torch.no_grad():
        expected = torch.softmax(load_model(exported / "model.pt")(scaled), dim=1).numpy()
    np.testing.assert_allclose(test_output, expected, atol=1e-5)
    assert np.ptp(test_output[:, 1]) > 0.4  # probabilities that vary, so that the comparison can fail


def test_the_cover_shows_input_and_probability_side_by_side(exported):
    cover = imread(exported / "cover.png")
    assert cover.shape[1] == 2 * cover.shape[0]
    assert (exported / "cover.png").read_bytes() == package_file(exported / "package.zip", FILES["cover"])


def test_the_architecture_file_needs_only_torch(exported, tmp_path):
    """`unet` is not on PyPI: the architecture file must build the network without it."""
    with zipfile.ZipFile(exported / "package.zip") as archive:
        archive.extractall(tmp_path)
    script = """
import importlib.util, sys
import torch, yaml
sys.modules["unet"] = None  # importing this project fails
weights = yaml.safe_load(open("rdf.yaml"))["weights"]["pytorch_state_dict"]
spec = importlib.util.spec_from_file_location("architecture", weights["architecture"]["source"])
architecture = importlib.util.module_from_spec(spec)
sys.modules["architecture"] = architecture
spec.loader.exec_module(architecture)
network = getattr(architecture, weights["architecture"]["callable"])(**weights["architecture"]["kwargs"])
network.load_state_dict(torch.load(weights["source"], weights_only=True))
print(tuple(network.eval()(torch.zeros(1, 1, 48, 48)).shape))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((1, 2, 48 - 2 * border(DEPTH), 48 - 2 * border(DEPTH)))


def test_an_out_without_zip_suffix_gets_a_folder_that_replaces_the_old_one(exported, tmp_path):
    from bioimageio.spec import load_model_description

    out = tmp_path / "package"
    (out / "stale").mkdir(parents=True)
    assert unet_main(["export", str(exported / "model.pt"), str(out), "--image", str(exported / "image.tif")]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted([*FILES.values(), "rdf.yaml"])
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


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (np.full((30, 90), 7, np.uint8), "smaller than this U-Net's smallest input"),
        (np.zeros((60, 60), np.float32), "no contrast"),
    ],
)
def test_a_test_image_the_package_cannot_use_is_an_error_naming_it(image, problem, tmp_path):
    path = tmp_path / "image.tif"
    write_tiff(path, image)
    with pytest.raises(DataError, match=f"^{path}: .*{problem}"):
        read_test_input(str(path), DEPTH, NORMALIZATION_PERCENTILES)
