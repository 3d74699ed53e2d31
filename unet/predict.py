"""`unet predict`: segment images with trained U-Nets, by the overlap-tile strategy (`unet.overlap_tile`).

Two uses:

- The pipeline: `--data SPLIT_DIR` predicts a prepared split (or its frames of a
  cross-validation fold) into one probability stack, and for the challenges also the
  ISBI 2012 submission stack (`--submission`) or the Cell Tracking Challenge result
  folder (`--instances RES_DIR`, a mask for every frame).
- Your own images: `--images PATH...` (TIFF stacks or images, PNG images, or folders of
  them) into an output folder, per input file `NAME_probabilities.tif` (float32) and, for
  a model trained on cells, `NAME_masks.tif` (uint16 instances), each with the input's
  shape and ImageJ axes. An RGB or multichannel input needs `--channel`.

Several `--model` files average their probabilities (an ensemble: the folds, or the
models of both cell sequences). The prediction settings a model was trained for (its
data set's test-time augmentation, `min_area`, connectivity, threshold) and its input scaling
come with it (model.pt metadata); flags override them.

Instances: connected components of the pixels whose cell probability exceeds `threshold`
(by default 0.5: the class that wins, the release's arg-max), 8-connected by default
(MATLAB's default for `bwlabel`/`bwareaopen`, which the release's MATLAB post-processing
presumably used: unverified), components smaller than `min_area` pixels removed (the
release: 500 px for PhC-U373).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from unet.device import resolve_device
from unet.errors import UsageError
from unet.io import (
    NORMALIZATION_PERCENTILES,
    OUTPUT_FOLDER,
    OUTPUT_TREE,
    DataError,
    Split,
    atomic_directory,
    claim_outputs,
    format_frames,
    image_files,
    normalize_intensity,
    parse_frames,
    per_extent,
    read_image_file,
    read_split,
    write_tiff,
)
from unet.model import load_model_and_metadata
from unet.overlap_tile import TTA, predict_probabilities, tile_layout
from unet.pipeline import add_fold_arguments, fold_of, held_out_frames
from unet.settings import MODEL_PREDICT_KEYS, PredictSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments


@dataclass
class Models:
    """One or more trained networks on a device, with what their first model.pt says about its data."""

    networks: list[torch.nn.Module]
    paths: list[Path]
    label_kind: str | None  # "binary" (EM) or "instance" (cells); None for a model from before it was saved
    predict: dict  # the prediction settings of its data set (MODEL_PREDICT_KEYS), as far as saved
    percentiles: tuple[float, float]

    @property
    def depth(self) -> int:
        return self.networks[0].depth


def load_models(paths: list[str | os.PathLike], device: torch.device) -> Models:
    """The models of `paths`; they must agree on depth and input scaling to be averaged."""
    networks, metadata = [], []
    for path in map(Path, paths):
        network, saved = load_model_and_metadata(path, device)
        networks.append(network)
        metadata.append(saved)
    percentiles = [tuple(m.get("normalization", {}).get("percentiles", NORMALIZATION_PERCENTILES)) for m in metadata]
    for path, network, scaling in zip(paths[1:], networks[1:], percentiles[1:]):
        if network.depth != networks[0].depth or scaling != percentiles[0]:
            raise DataError(
                f"{path}: depth {network.depth} and input scaling {scaling} differ from {paths[0]}'s "
                f"({networks[0].depth}, {percentiles[0]}): these models cannot be averaged"
            )
    first = metadata[0]
    return Models(networks, list(map(Path, paths)), first.get("label_kind"), first.get("predict", {}), percentiles[0])


def predict_images(
    models: Models,
    images: np.ndarray,
    settings: PredictSettings,
    device: torch.device,
    progress: bool = False,
    sizes: list[tuple[int, int]] | None = None,
) -> np.ndarray:
    """The mean cell probability of the models for raw (N, H, W) images, scaled as the models were trained. With
    `sizes` (a padded stack, `unet.io`), each image is scaled and predicted at its true extent, as its own file
    would be; the padding's probability is 0."""
    scaled = normalize_intensity(images, models.percentiles, sizes)
    total = np.zeros(scaled.shape, np.float32)
    for network in models.networks:
        predict = functools.partial(
            predict_probabilities,
            network,
            input_size=settings.input_size,
            batch_size=settings.batch_size,
            tta=settings.tta,
            device=device,
            precision=settings.precision,
            progress=progress,
        )
        total += per_extent(predict, scaled, sizes)
    return total / len(models.networks)


def instance_masks(
    probabilities: np.ndarray,
    min_area: int = PredictSettings.min_area,
    *,
    connectivity: int = PredictSettings.connectivity,
    threshold: float = PredictSettings.threshold,
) -> np.ndarray:
    """Instance labels (N, H, W) uint16: connected components of `probabilities > threshold`, small ones removed.

    Components with fewer than `min_area` pixels become background; the others
    are numbered 1, 2, ... per image in scan order.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3:
        raise UsageError(f"probabilities must be a (N, H, W) stack, found shape {probabilities.shape}")
    if connectivity not in (4, 8):
        raise UsageError(f"connectivity must be 4 or 8, found {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    masks = np.zeros(probabilities.shape, dtype=np.uint16)
    for index, probability in enumerate(probabilities):
        labels, count = ndimage.label(probability > threshold, structure=structure)
        keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_area
        keep[0] = False
        if keep.sum() > np.iinfo(np.uint16).max:
            raise UsageError(f"image {index}: {keep.sum()} objects do not fit uint16 instance labels")
        masks[index] = (np.cumsum(keep) * keep)[labels]
    return masks


def settings_instances(probabilities: np.ndarray, settings: PredictSettings) -> np.ndarray:
    """`instance_masks` with the `min_area`, connectivity and threshold of `settings`."""
    return instance_masks(
        probabilities, settings.min_area, connectivity=settings.connectivity, threshold=settings.threshold
    )


def instances_made(settings: PredictSettings) -> str:
    """How `settings_instances` makes instances, in words, for the log."""
    return (
        f"{settings.connectivity}-connected components of cell probability > {settings.threshold:g}"
        f" of at least {settings.min_area} px"
    )


def write_submission(path: str | os.PathLike, probabilities: np.ndarray) -> None:
    """The ISBI 2012 submission: a float32 stack in [0, 1], 1 = certainly not membrane (our cell probability)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.dtype != np.float32:
        raise UsageError(
            f"a submission is a float32 (N, H, W) stack, found {probabilities.dtype} {probabilities.shape}"
        )
    if probabilities.size and not (0.0 <= probabilities.min() and probabilities.max() <= 1.0):
        raise UsageError(f"submission values must lie in [0, 1], found [{probabilities.min()}, {probabilities.max()}]")
    write_tiff(path, probabilities, axes="ZYX")  # the test volume's sections


def write_ctc_masks(res_dir: str | os.PathLike, masks: np.ndarray, frames: list[int]) -> None:
    """Write `res_dir/maskTTT.tif` (uint16) per frame, the Cell Tracking Challenge result layout.

    Frame ids are zero-padded to 3 digits (4 if one reaches 1000), like the
    challenge's `tTTT.tif`. The folder is written beside `res_dir` and renamed
    into place when complete; it replaces a folder that it wrote before (`unet.io.atomic_directory`).
    """
    res_dir = Path(res_dir)
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.uint16:
        raise UsageError(f"masks must be a uint16 (N, H, W) stack, found {masks.dtype} {masks.shape}")
    if len(frames) != len(masks) or len(set(frames)) != len(frames) or min(frames, default=0) < 0:
        raise UsageError(f"need one distinct non-negative frame id per mask: {len(masks)} masks, frames {frames}")
    digits = 4 if max(frames, default=0) >= 1000 else 3
    with atomic_directory(res_dir) as staging:
        for frame, mask in zip(frames, masks):
            write_tiff(staging / f"mask{frame:0{digits}d}.tif", mask, imagej=False)


# --- the command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DATA_SPLIT_DIR", help="a prepared split (results/data/{dataset}/{split})")
    source.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="your own images: TIFF stacks or images, PNG images, or folders of them",
    )
    parser.add_argument(
        "--model",
        required=True,
        nargs="+",
        metavar="MODEL_PT",
        help="model(s) written by `unet train`; several average their probabilities",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="with --data: the float32 probability stack (N, H, W); with --images: a folder for "
        "NAME_probabilities.tif (and NAME_masks.tif) per input file",
    )
    parser.add_argument("--frames", metavar="SPEC", help="with --data: frame ids to predict, e.g. 0-9,20-29")
    add_fold_arguments(parser, "with --data: predict")
    parser.add_argument("--submission", metavar="FILE", help="with --data: also the ISBI 2012 submission stack")
    parser.add_argument(
        "--instances",
        metavar="RES_DIR",
        help="with --data: also Cell Tracking Challenge instance masks RES_DIR/maskTTT.tif, every frame",
    )
    parser.add_argument(
        "--masks",
        action=argparse.BooleanOptionalAction,
        help="with --images: also write instance masks (default: for a model trained on cells)",
    )
    parser.add_argument(
        "--channel", type=int, metavar="C", help="with --images: the channel of RGB or multichannel images to segment"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (GPU if available), cpu, cuda, cuda:1 (default: %(default)s)",
    )
    add_settings_arguments(parser, PredictSettings, keys=_MACHINE_KEYS)
    add_settings_arguments(
        parser,
        PredictSettings,
        keys=MODEL_PREDICT_KEYS,
        unset="the model's",
        title="prediction settings of the model's data (saved in model.pt)",
    )


_MACHINE_KEYS = tuple(
    field.name for field in dataclasses.fields(PredictSettings) if field.name not in MODEL_PREDICT_KEYS
)


def run(args: argparse.Namespace) -> int:
    from_arguments(PredictSettings, args)  # bad flags before any model is read
    with claim_outputs(*_outputs(args), inputs=_inputs(args)):
        device = resolve_device(args.device)
        torch.backends.cudnn.benchmark = True  # few input shapes (unet.overlap_tile): cuDNN picks its fastest kernels
        models = load_models(args.model, device)
        saved = PredictSettings.from_mapping(models.predict, f"{models.paths[0]}: its saved predict")
        settings = from_arguments(PredictSettings, args, defaults=saved)
        if args.data:
            _predict_split(args, models, settings, device)
        else:
            _predict_image_files(args, models, settings, device)
    return 0


def _inputs(args: argparse.Namespace) -> list[Path]:
    """What the outputs may not replace: the models, the images, a split and its files (its images.tif...)."""
    split = [Path(args.data), *Path(args.data).glob("*")] if args.data else []
    return [*map(Path, args.model), *map(Path, args.images or []), *split]


def _outputs(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """The outputs to claim (`unet.io.claim_outputs`): with --images a folder of files named after the inputs,
    which may not be an input folder (a second run would segment the first's results)."""
    if args.images:
        return [(args.out, OUTPUT_FOLDER)]
    return [(args.out, "tiff"), (args.submission, "tiff"), (args.instances, OUTPUT_TREE)]


def _predict_split(args: argparse.Namespace, models: Models, settings: PredictSettings, device) -> None:
    if args.masks is not None or args.channel is not None:
        raise UsageError("--masks and --channel go with --images; with --data use --instances")
    split = read_split(args.data, labels=False)
    images, frames, every_frame, sizes = _split_frames(args, split)
    if args.instances and not every_frame:
        raise UsageError(
            "--instances writes a Cell Tracking Challenge result folder, which needs a mask for every "
            "frame of the sequence: do not select frames with --frames or --fold"
        )
    start = time.perf_counter()
    probabilities = predict_images(models, images, settings, device, progress=len(images) > 1, sizes=sizes)
    seconds = time.perf_counter() - start
    write_tiff(args.out, probabilities, axes=split.axes)
    if args.submission:
        write_submission(args.submission, probabilities)
    if args.instances:
        masks = settings_instances(probabilities, settings)
        write_ctc_masks(args.instances, masks, frames)
        print(f"unet predict: {args.instances}: {instances_made(settings)}", file=sys.stderr)
    _report(frames, images.shape, settings, models, device, seconds)


def _predict_image_files(args: argparse.Namespace, models: Models, settings: PredictSettings, device) -> None:
    """Each input file's probabilities (and masks) into the folder `--out`, named after the file."""
    if args.frames or fold_of(args) or args.submission or args.instances:
        raise UsageError("--frames, --fold, --submission and --instances go with a prepared split (--data)")
    paths = image_files(args.images)
    stems = [path.stem for path in paths]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        raise DataError(f"several inputs are named {twice}: their outputs would overwrite each other")
    masks = args.masks if args.masks is not None else models.label_kind == "instance"
    out = Path(args.out)
    for path in paths:
        image = read_image_file(path, args.channel)
        probabilities = predict_images(models, image.images, settings, device, progress=len(image.images) > 1)
        _write_image_results(
            out / path.stem,
            image.axes,
            probabilities,
            settings_instances(probabilities, settings) if masks else None,
        )
        print(f"unet predict: {path} -> {out / path.stem}_probabilities.tif", file=sys.stderr)
    if masks:
        print(f"unet predict: masks: {instances_made(settings)}", file=sys.stderr)


def _write_image_results(stem: Path, axes: str, probabilities: np.ndarray, masks: np.ndarray | None) -> None:
    def shaped(stack: np.ndarray) -> np.ndarray:
        return stack[0] if axes == "YX" else stack

    write_tiff(f"{stem}_probabilities.tif", shaped(probabilities), axes=axes)
    if masks is not None:
        write_tiff(f"{stem}_masks.tif", shaped(masks), axes=axes)


def _split_frames(args: argparse.Namespace, split: Split) -> tuple[np.ndarray, list[int], bool, list[tuple[int, int]]]:
    """The raw images of the frames to predict, their ids, whether they are every frame of the split, and their
    true sizes."""
    fold = fold_of(args)
    if fold and args.frames:
        raise UsageError("select frames with --frames or with --fold, not both")
    if fold:
        frames = held_out_frames(split.labelled, fold[1], fold[0])
    elif args.frames:
        frames = parse_frames(args.frames)
    else:
        frames = split.frames
    index = {frame: i for i, frame in enumerate(split.frames)}
    missing = [frame for frame in frames if frame not in index]
    if missing:
        raise DataError(
            f"{args.data}: frames {format_frames(sorted(missing))} are not among its frames "
            f"{format_frames(sorted(split.frames))}"
        )
    rows = [index[frame] for frame in frames]
    sizes = split.true_sizes()
    return split.images[rows], frames, sorted(frames) == sorted(split.frames), [sizes[row] for row in rows]


def _report(frames, shape, settings: PredictSettings, models: Models, device, seconds: float) -> None:
    layout = tile_layout(shape[1:], settings.input_size, models.depth, device)
    ensemble = f", mean of {len(models.networks)} models" if len(models.networks) > 1 else ""
    print(
        f"unet predict: frames {format_frames(frames)} ({len(frames)} of {shape[1]}x{shape[2]}) on {device}, "
        f"tta {settings.tta} ({len(TTA[settings.tta])} variants{ensemble}), {layout.counts[0]}x{layout.counts[1]} "
        f"tiles of {layout.tile} px: {1000 * seconds / len(frames):.1f} ms per frame",
        file=sys.stderr,
    )
