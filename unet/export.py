"""`unet export`: a trained U-Net as a bioimage.io model package, for deepImageJ (Fiji), ilastik, QuPath and napari.

    unet export MODEL.pt OUT.zip [--image TIF] [--dataset NAME] [--cover PNG]

The package follows the bioimage.io model spec 0.5; `bioimageio.spec`'s description classes
build and validate it. OUT ending in `.zip` gets the zip file that the tools import
(`save_bioimageio_package`, which loads the written zip back to validate it); any other OUT
gets a folder of the same files (`save_bioimageio_package_as_folder`), to read or to zip later.
The package holds:

- the weights twice: `pytorch_state_dict` with its architecture `unet_architecture.py`, and
  `torchscript` (what deepImageJ and QuPath run), traced on the CPU in eval mode. Both are
  `SameSizeUNet`: any image in, probabilities of the same size out (it mirrors the image to a
  valid tile, runs the valid-convolution U-Net and crops back: `unet predict --tta none` with
  one tile). `unet` is not on PyPI, so the architecture file carries the code: unet/errors.py,
  unet/sizes.py, unet/settings.py and unet/model.py verbatim, then `SameSizeUNet`.
- one input, `raw` (batch, channel, y, x): one grayscale channel, each side any size (step 1)
  from `smallest_input(depth)` = 2 * halo + 2**depth px (240 for the paper's network): the
  spec wants more than twice the halo, and a tile of min + n px with n a multiple of 2**depth
  keeps a multiple of 2**depth. Tools that pad the halo, as bioimageio.core does, pad it by
  reflection (`pad`: NumPy's `reflect`, the mirroring of `unet predict`). Preprocessing:
  `scale_range` with the percentiles the model was trained with (1st and 99th, per image and
  channel, not clipped), as `unet.io.normalize_intensity` scales.
- one output, `probabilities` (batch, channel, y, x): background and cell, the input's size
  (offset 0), with a `halo` of `halo(depth)` px (112 for the paper's network): how far the
  network looks beyond a pixel, rounded up to its pooling grid, so that tools that tile keep
  only output whose context is the image's, on the pooling grid of the whole image (choice,
  config/README.md).
- test input and output (`test_input.npy`, `test_output.npy`): the centre square of the test
  image (`--image`, a stack's first frame; else a synthetic EM section), at most 512 px, as
  float32, and what the package's own preprocessing and network make of it, which
  `bioimageio test` reproduces.
- a cover (the input beside its cell probability), README.md (the model, its training, the
  sizes it takes), the MIT license, authors and the paper's citation.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from bioimageio.spec.model import v0_5

from unet import errors, sizes
from unet import model as model_module
from unet import settings as settings_module
from unet.io import (
    NORMALIZATION_PERCENTILES,
    OUTPUT_TREE,
    DataError,
    atomic_directory,
    atomic_path,
    check_finite,
    claim_outputs,
    crops,
    format_frames,
    read_split,
    read_stack,
    write_tiff,
)
from unet.model import UNet, load_metadata, load_model
from unet.settings import PredictSettings, SyntheticEmSettings
from unet.sizes import border, valid_input_size_at_least

INPUT, OUTPUT = v0_5.TensorId("raw"), v0_5.TensorId("probabilities")
SPATIAL_AXES = (v0_5.AxisId("y"), v0_5.AxisId("x"))
CLASSES = ("background", "cell")
# The package's files, by role.
FILES = {
    "test_input": "test_input.npy",
    "test_output": "test_output.npy",
    "sample_input": "sample_input.tif",
    "sample_output": "sample_output.tif",
    "weights": "weights.pt",
    "torchscript": "weights.torchscript.pt",
    "architecture": "unet_architecture.py",
    "cover": "cover.png",
    "readme": "README.md",
}
# What `unet_architecture.py` bundles, each module after those it imports.
ARCHITECTURE_MODULES = (errors, sizes, settings_module, model_module)
ARCHITECTURE_HEADER = '''"""The network of a unet-reproduction bioimage.io package: `SameSizeUNet(**kwargs)`.

Written by `unet export`: unet/errors.py, unet/sizes.py, unet/settings.py and unet/model.py verbatim, less their
imports of each other, then `SameSizeUNet` (unet/export.py). Needs only torch.
"""

from __future__ import annotations
'''
AUTHORS = "unet-reproduction contributors"
LICENSE = "MIT"
PAPER = (
    "Ronneberger, O., Fischer, P., Brox, T.: U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241. arXiv:1505.04597"
)
PAPER_DOI = "10.1007/978-3-319-24574-4_28"
TEST_INPUT_SIDE = 512  # at most: the side of the ISBI 2012 and Cell Tracking Challenge frames


class SameSizeUNet(UNet):
    """The U-Net as the package runs it: an image of any size in, the soft-max probabilities of background and
    cell out, of the same size: `unet predict --tta none` with one tile.

    It mirrors the image into the smallest valid tile whose output covers it, the tile starting border(depth) px
    before the image as `unet predict`'s tiles do (NumPy's `reflect`, repeated where the image is smaller than the
    padding), runs the valid-convolution U-Net and crops the output to the image. The padding is tensor arithmetic
    on the input's shape, so that a TorchScript trace follows every size. The entry point of the package's
    `unet_architecture.py`; its weights are those of the `UNet` it extends.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        tile = x.index_select(-2, self._mirrored(x, height)).index_select(-1, self._mirrored(x, width))
        return torch.softmax(super().forward(tile), dim=1)[..., :height, :width]

    def _mirrored(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """For an axis of `x` of `size` px, the index of the image pixel at each position of the tile."""
        before, step, smallest = border(self.depth), 2**self.depth, valid_input_size_at_least(1, self.depth)
        # valid_input_size_at_least(size + 2 * before) without its branch, which a trace would freeze: for
        # size >= 1, size + 2 * before exceeds smallest - step.
        tile = smallest + (size + 2 * before - smallest + step - 1) // step * step
        # arange(tile) - before on x's device: a trace would fix torch.arange's device to the CPU it was traced on.
        position = x.new_ones(tile, dtype=torch.long).cumsum(0) - (before + 1)
        last = torch.full_like(position, size - 1)
        # NumPy's reflect: period 2 * (size - 1), every index 0 for a 1 px axis.
        return last - (position % (2 * last).clamp(min=1) - last).abs()


def halo(depth: int) -> int:
    """The package's output halo: how far the network looks beyond a pixel, border(depth) px and up to 2**depth - 1
    more through its pooling windows, rounded up to the pooling grid (2**depth). Tiles that start on that grid and
    keep their output beyond the halo reproduce the whole image's; so does an image mirrored by the halo first."""
    step = 2**depth
    return -(-(border(depth) + step - 1) // step) * step


def smallest_input(depth: int) -> int:
    """The package's smallest input side: twice the halo and one step of the pooling grid, so that a tile keeps at
    least one step of output (the spec wants at least 1 px beyond the halos)."""
    return 2 * halo(depth) + 2**depth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_PT", help="model written by `unet train`")
    parser.add_argument(
        "out", metavar="OUT", help="the package: a .zip file (what the tools import), or else a folder of its files"
    )
    parser.add_argument(
        "--image",
        metavar="TIF",
        help="an image like those the model is for, as acquired (of a stack, the first frame); its centre becomes "
        "the package's test input (default: a synthetic EM section)",
    )
    parser.add_argument("--dataset", metavar="NAME", help="the data set the model was trained on, for name and docs")
    parser.add_argument("--cover", metavar="PNG", help="also write the package's cover image here")


def run(args: argparse.Namespace) -> int:
    package = (args.out, "zip" if Path(args.out).suffix == ".zip" else OUTPUT_TREE)
    with (
        claim_outputs(package, (args.cover, "png"), inputs=[args.model, args.image]),
        tempfile.TemporaryDirectory(prefix="unet-export.") as staging,
    ):
        model = load_model(args.model)
        metadata = load_metadata(args.model)
        image = read_test_input(args.image, model.depth, input_percentiles(metadata))
        description = describe(model, metadata, image, Path(staging), dataset=args.dataset)
        write_package(description, Path(args.out))
        if args.cover:
            with atomic_path(args.cover) as tmp:
                tmp.write_bytes((Path(staging) / FILES["cover"]).read_bytes())
    print(f"unet export: {args.out}: {description.name}", file=sys.stderr)
    return 0


def input_percentiles(metadata: dict) -> tuple[float, float]:
    """The percentiles that training scaled the images by: newer model files record them."""
    low, high = metadata.get("normalization", {}).get("percentiles", NORMALIZATION_PERCENTILES)
    return float(low), float(high)


def read_test_input(path: str | None, depth: int, percentiles: tuple[float, float]) -> np.ndarray:
    """The package's test input: the centre square of the image (a stack's first frame; of a prepared split's
    `images.tif`, that frame at its true size), at most TEST_INPUT_SIDE px, float32 (1, 1, side, side) with the
    values as acquired. An image smaller than the package's smallest input is mirrored up to it, as the package's
    tools pad it."""
    if path is None:
        image, source = _synthetic_section(), "the synthetic test section"
    else:
        image, source = _first_frame(Path(path)), path
    check_finite(image, source)
    shortfall = [max(0, smallest_input(depth) - extent) for extent in image.shape]
    image = np.pad(image, [(0, missing) for missing in shortfall], mode="reflect" if min(image.shape) > 1 else "edge")
    height, width = image.shape
    side = min(height, width, TEST_INPUT_SIDE)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[None, None, top : top + side, left : left + side].astype(np.float32)
    low, high = np.percentile(crop, percentiles)
    if high <= low:  # scale_range would divide by its eps alone
        raise DataError(f"{source}: the {side}x{side} px centre has no contrast (percentiles {percentiles} coincide)")
    return crop


def _first_frame(path: Path) -> np.ndarray:
    """The first image of a TIFF; of a prepared split's `images.tif` (frames padded to one size), at its true size."""
    if path.name == "images.tif" and (path.parent / "frames.json").is_file():
        split = read_split(path.parent, labels=False)
        return crops(split.images[:1], split.true_sizes()[:1])[0]
    return read_stack(path)[0]


def _synthetic_section() -> np.ndarray:
    from unet.synthetic import em_section  # only for models exported without an image

    image, _ = em_section(np.random.default_rng(0), TEST_INPUT_SIDE, SyntheticEmSettings().cell_size)
    return image


def scale_range(tensor: np.ndarray, kwargs: v0_5.ScaleRangeKwargs) -> np.ndarray:
    """bioimage.io's `scale_range` as bioimageio.core applies it to a (batch, channel, y, x) tensor: per image and
    channel (x - p_min) / (p_max - p_min + eps), the percentiles linearly interpolated. Up to eps this is
    `unet.io.normalize_intensity`, which falls back to min and max where the two percentiles coincide."""
    low, high = np.percentile(tensor, (kwargs.min_percentile, kwargs.max_percentile), axis=(-2, -1), keepdims=True)
    return ((tensor - low) / (high - low + kwargs.eps)).astype(np.float32)


def describe(
    model: UNet, metadata: dict, image: np.ndarray, folder: Path, *, dataset: str | None = None
) -> v0_5.ModelDescr:
    """Write the package's files into `folder` and return their description, which validates them (the test
    tensors against the axes, the files' hashes). `image`: the raw test input (`read_test_input`)."""
    files = {role: folder / name for role, name in FILES.items()}
    network = same_size_unet(model)
    low, high = input_percentiles(metadata)
    scaling = v0_5.ScaleRangeKwargs(axes=list(SPATIAL_AXES), min_percentile=low, max_percentile=high)
    preprocessed = torch.from_numpy(scale_range(image, scaling))
    with torch.no_grad():
        probabilities = network(preprocessed).numpy()
    np.save(files["test_input"], image)
    np.save(files["test_output"], probabilities)
    write_tiff(files["sample_input"], image[0, 0], imagej=False)
    write_tiff(files["sample_output"], probabilities[0], imagej=False)
    torch.save(network.state_dict(), files["weights"])
    torchscript(network, preprocessed).save(files["torchscript"])
    files["architecture"].write_text(architecture_source())
    write_cover(files["cover"], preprocessed[0, 0].numpy(), probabilities[0, 1])
    files["readme"].write_text(readme(model.config, metadata, dataset))
    return v0_5.ModelDescr(
        name=model_name(dataset),
        description=(
            "Cell/background segmentation of 2D grayscale images by the U-Net of Ronneberger, Fischer & Brox "
            f"(MICCAI 2015), reproduced{f' and trained on {dataset}' if dataset else ''}. Outputs per pixel "
            "the soft-max probabilities of background and cell."
        ),
        authors=[v0_5.Author(name=AUTHORS)],
        cite=[v0_5.CiteEntry(text=PAPER, doi=v0_5.Doi(PAPER_DOI))],
        license=v0_5.LicenseId(LICENSE),
        tags=["unet", "segmentation", "cells", "2d", "pytorch", "torchscript", *([dataset.lower()] if dataset else [])],
        documentation=v0_5.FileDescr(source=files["readme"]),
        covers=[v0_5.FileDescr(source=files["cover"])],
        inputs=[input_description(model.depth, scaling, files)],
        outputs=[output_description(model.depth, files)],
        weights=weights_description(model.config, files),
    )


def model_name(dataset: str | None) -> str:
    """The package's name: letters, digits, spaces and `_+-()` only (the spec's rule)."""
    trained_on = f" for {dataset}" if dataset else ""
    return re.sub(r"[^A-Za-z0-9_+\-() ]", "-", f"U-Net{trained_on} (Ronneberger 2015 reproduction)")


def same_size_unet(model: UNet) -> SameSizeUNet:
    """`model` as the package runs it, on the CPU in eval mode."""
    network = SameSizeUNet(**model.config)
    network.load_state_dict(model.state_dict())
    return network.cpu().eval()


def torchscript(network: SameSizeUNet, example: torch.Tensor) -> torch.jit.ScriptModule:
    """`network` traced on `example`. The trace keeps the padding's and the crops' arithmetic on the input's shape,
    so it takes any size; the size check of `UNet.forward` runs only while tracing, hence torch's warnings about
    it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of that check, and torch.jit's deprecation notice
        with torch.no_grad():
            return torch.jit.trace(network, example)


def architecture_source() -> str:
    """The package's `unet_architecture.py`: ARCHITECTURE_MODULES verbatim, less their imports of each other, then
    `SameSizeUNet`. A module-level import of another unet module than those bundled before is a `RuntimeError`."""
    parts = [ARCHITECTURE_HEADER]
    bundled: set[str] = set()
    for module in ARCHITECTURE_MODULES:
        parts.append(f"# ---- {module.__name__.replace('.', '/')}.py ----\n\n{_without_imports(module, bundled)}")
        bundled.add(module.__name__)
    parts.append(f"# ---- {__name__}.SameSizeUNet ----\n\n{inspect.getsource(SameSizeUNet)}")
    return "\n\n".join(parts)


def _without_imports(module, bundled: set[str]) -> str:
    """The source of `module` without its `from __future__` import and its imports of the `bundled` modules."""
    source = inspect.getsource(module)
    dropped: set[int] = set()
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        imported = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        if imported == "__future__" or imported in bundled:
            dropped.update(range(node.lineno, node.end_lineno + 1))
        elif imported.split(".")[0] == "unet":
            raise RuntimeError(f"{module.__name__} imports {imported}, which {FILES['architecture']} does not bundle")
    lines = source.splitlines(keepends=True)
    kept = "".join(line for number, line in enumerate(lines, start=1) if number not in dropped)
    return re.sub(r"\n{4,}", "\n\n\n", kept).strip() + "\n"  # the dropped imports' blank lines


def input_description(depth: int, scaling: v0_5.ScaleRangeKwargs, files: dict[str, Path]) -> v0_5.InputTensorDescr:
    """One grayscale channel; each side any size from smallest_input(depth); halos padded by reflection."""
    size = v0_5.ParameterizedSize(min=smallest_input(depth), step=1)
    return v0_5.InputTensorDescr(
        id=INPUT,
        description="one 2D grayscale image of any size (any intensity range; preprocessing scales it)",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier("gray")]),
            *(v0_5.SpaceInputAxis(id=axis, size=size, concatenable=True) for axis in SPATIAL_AXES),
        ],
        pad=v0_5.ReflectPadding(mode="reflect"),  # the mode given, or spec 0.5.12 writes `pad: {}`: constant 0
        test_tensor=v0_5.FileDescr(source=files["test_input"]),
        sample_tensor=v0_5.FileDescr(source=files["sample_input"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[v0_5.ScaleRangeDescr(kwargs=scaling)],
    )


def output_description(depth: int, files: dict[str, Path]) -> v0_5.OutputTensorDescr:
    """Background and cell probabilities, the input's size, with the halo that tiling tools crop."""
    return v0_5.OutputTensorDescr(
        id=OUTPUT,
        description="soft-max probabilities, the input's size",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in CLASSES]),
            *(
                v0_5.SpaceOutputAxisWithHalo(
                    id=axis, size=v0_5.SizeReference(tensor_id=INPUT, axis_id=axis), halo=halo(depth)
                )
                for axis in SPATIAL_AXES
            ),
        ],
        test_tensor=v0_5.FileDescr(source=files["test_output"]),
        sample_tensor=v0_5.FileDescr(source=files["sample_output"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def weights_description(config: dict, files: dict[str, Path]) -> v0_5.WeightsDescr:
    version = v0_5.Version(torch.__version__.split("+")[0])  # without the build tag, e.g. +cpu
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=files["weights"],
            architecture=v0_5.ArchitectureFromFileDescr(
                source=files["architecture"], callable=v0_5.Identifier(SameSizeUNet.__name__), kwargs=config
            ),
            pytorch_version=version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=files["torchscript"],
            pytorch_version=version,
            parent="pytorch_state_dict",
            comment="traced on the CPU in eval mode",
        ),
    )


def write_cover(path: Path, image: np.ndarray, probability: np.ndarray, min_height: int = 256) -> None:
    """The input (scaled) beside its cell probability, 2:1, an 8-bit gray PNG (the spec asks for under 500 kB)."""
    from PIL import Image

    cover = np.concatenate([np.clip(image, 0, 1), probability], axis=1)
    zoom = max(1, -(-min_height // cover.shape[0]))  # small test images
    Image.fromarray(np.round(np.kron(cover, np.ones((zoom, zoom))) * 255).astype(np.uint8)).save(path)


def write_package(description: v0_5.ModelDescr, out: Path) -> None:
    """Write the package atomically: a zip (loaded back and validated by the library) or a folder."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    if out.suffix == ".zip":
        with atomic_path(out) as tmp:
            save_bioimageio_package(description, output_path=tmp)
    else:
        with atomic_directory(out) as tmp:
            save_bioimageio_package_as_folder(description, output_path=tmp)


def readme(config: dict, metadata: dict, dataset: str | None) -> str:
    """The package's documentation (README.md)."""
    depth = config["depth"]
    smallest, step, context = smallest_input(depth), 2**depth, halo(depth)
    low, high = input_percentiles(metadata)
    training = "\n".join(f"- {key}: {value}" for key, value in training_facts(metadata, dataset).items())
    instances = f"\n{instances_sentence(metadata)}" if metadata.get("label_kind") == "instance" else ""
    return f"""# {model_name(dataset)}

The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015) for 2D cell segmentation, from the
unet-reproduction project: {config["depth"]} poolings, {config["base_channels"]} feature channels at the
first level, valid (unpadded) 3x3 convolutions. It labels each pixel background or cell.

## Input

One 2D grayscale image (a single channel, any intensity range) of any size, like the images it
was trained on: no padding or cropping by hand. The description asks for at least {smallest} px
per side, as the spec wants more than twice the halo (below); bioimageio.core (ilastik, napari)
refuses smaller images, while the network itself takes any size from 1 px. The package scales
the image itself (`scale_range`): per image, the percentiles {low:g} and {high:g} of its
intensities map to 0 and 1, without clipping, as in training. bioimageio.core 0.11 computes them
over the whole image when it tiles, but over the image mirrored by the halo when it does not,
which can shift them by a few gray values.

## Output

Two channels, the soft-max probabilities of background and cell, at the input's size.{instances}
The network uses valid convolutions, as in the paper: the package mirrors the image into the
next valid tile (NumPy's `reflect`, as `unet predict` mirrors), runs the network and crops the
probabilities back to the image.

Tiling: each output axis has a halo of {context} px, how far the network looks beyond a pixel,
rounded up to its pooling grid of {step} px. Tools that split a large image into tiles mirror or
take that much context around each tile and crop it off the tile's output. The tiles reproduce
the untiled probabilities exactly when the part each keeps (a tile of {smallest} + n px keeps
{step} + n) starts and ends on that grid: n a multiple of {step}, and, as bioimageio.core places
the last tile of a row flush with the image's end, image sides that are multiples of {step} px
(512, 1024, 2048, ...). Elsewhere a tile pools on a shifted grid, and its probabilities can
differ from the untiled ones.

`unet predict` also averages the predictions of flipped and rotated copies (test-time
augmentation) and tiles large images itself; this package computes a single pass.

## Training

{training or "- not recorded in the model file"}

## Validation

The package's test input and output (`test_input.npy`, `test_output.npy`) were computed by its
own preprocessing and network; `bioimageio test` reproduces them. The reproduction scores its
models on held-out images with the challenges' metrics (ISBI 2012: warping, Rand and pixel
error; Cell Tracking Challenge: SEG and IoU) in its tables (`results/tables/`).

## Weights

`pytorch_state_dict` (architecture: `unet_architecture.py`, class `SameSizeUNet`, needs only
PyTorch) and `torchscript` (traced on the CPU), the same network and numbers.

## Citation

{PAPER}. doi:{PAPER_DOI}

## License

MIT, {AUTHORS}.
"""


def instances_sentence(metadata: dict) -> str:
    """How `unet predict` makes this cell model's instances: above which cell probability (the model's `threshold`)."""
    # As `unet predict` reads the model's saved settings: a key saved before it existed takes its default.
    threshold = PredictSettings.from_mapping(metadata.get("predict", {}), "the model's saved predict").threshold
    return (
        f"`unet predict` makes instances of the pixels whose cell probability exceeds {threshold:g}\n"
        "(the model's `threshold`; 0.5: the class with the higher probability)."
    )


def training_facts(metadata: dict, dataset: str | None) -> dict[str, object]:
    """What the model file records of its training, by name; absent items left out."""
    settings = metadata.get("settings", {})
    frames = settings.get("frames")
    held_out = settings.get("val_frames")
    loss = metadata.get("final_loss")
    averaged = metadata.get("averaged_iterations")
    facts = {
        "data set": dataset,
        "labels": metadata.get("label_kind"),
        "training frames": format_frames(frames) if frames else None,
        "held-out frames": format_frames(held_out) if held_out else None,
        "iterations": metadata.get("iterations"),
        "weights": f"the mean of the weights after iterations {averaged[0]}-{averaged[1]}" if averaged else None,
        "seed": metadata.get("seed"),
        "training settings": _listed(settings.get("train")),
        "augmentation": _listed(settings.get("augment")),
        "`unet predict` defaults": _listed(metadata.get("predict")),
        "final training loss": f"{loss:.4g}" if loss is not None else None,
        "trained on": " with torch ".join(str(metadata[key]) for key in ("device", "torch") if key in metadata),
    }
    return {key: value for key, value in facts.items() if value not in (None, "")}


def _listed(settings: dict | None) -> str | None:
    return ", ".join(f"{key} {value}" for key, value in settings.items()) if settings else None
