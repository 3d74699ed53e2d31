"""Your own annotated images: a folder of image/mask pairs, read into the canonical prepared split of `unet.io`,
so that every later stage (weight maps, training, prediction, scores, tables, exports) runs as for the paper's
data sets. `unet prepare NAME --protocol folder --raw FOLDER --out OUT` writes it to OUT/train/.

    FOLDER/images/a.tif, b.png, ...       FOLDER/masks/a.tif, b_mask.png, ...   (or FOLDER/labels/)

- Pairs. A mask pairs with the image of its file stem, or of its stem less one of `MASK_SUFFIXES`
  (`b_mask.png` with `b.png` or `b.tif`). Hidden files (`.DS_Store`) are left out; every other entry
  must be a TIFF or PNG image with exactly one partner.
- Images: one 2D image per file, TIFF or PNG, 8 or 16 bit or float, read as `unet predict --images`
  reads them (`unet.io.read_image_file`; `channel` picks a channel of an RGB or multichannel image).
  The stack is uint8 if every image is, else uint16 if every one fits, else float32.
- Masks: one 2D image of whole numbers per file (a gray mask saved as RGB is taken as gray; a palette
  PNG gives its indices). `ignore_label`, if given, marks pixels that are not annotated: they get no
  weight (`unannotated.tif`, as the unannotated cells of the Cell Tracking Challenge data). The other
  values decide the kind for the whole data set, recorded in `frames.json`:
  - binary: at most two values, the larger one the foreground (0/1, 0/255, 1/2, ...);
  - instance: three or more; 0 is background and every other value one object, whose touching
    neighbours get the paper's separating borders (`unet.weightmap`). A value whose pixels fall into
    separate regions, the largest holding under half of them, is a class and not an object: such a
    mask (0/128/255) is refused.
- Sizes. Images of different sizes are padded to the largest height and width by mirroring; each
  frame's true size is recorded (`unet.io`, "sizes"), and the padding has no weight and no score.
- Order. Frame ids number the pairs in file-name order; the stack holds the frames in a random order
  drawn with the fixed seed `ORDER_SEED`, so the contiguous blocks that `unet.pipeline.held_out_frames`
  holds out are a random k-fold split, the same in training, prediction and evaluation.

Every file is read and checked before anything is written; bad input is a `DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet.io import IMAGE_SUFFIXES, DataError, Split, check_finite, mirror_pad, read_image_file, read_tiff_with_axes
from unet.pipeline import FOLDER_FOLDS, LABELLED_SPLITS, folder_layout, visible_entries

MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels")
ORDER_SEED = 0
# An instance id whose largest region holds less than this share of its pixels is a class, not an object.
OBJECT_SHARE = 0.5


def read_folder_split(
    dataset: str,
    source: str | Path,
    *,
    folds: int = FOLDER_FOLDS,
    ignore_label: int | None = None,
    channel: int | None = None,
) -> Split:
    """The labelled split of a folder data set (see the module docstring); `folds`: the cross-validation it is
    for, which needs at least as many images."""
    source = Path(source)
    pairs = pair_files(source)
    if len(pairs) < folds:
        raise DataError(
            f"{source}: {len(pairs)} image/mask pairs, fewer than the {folds} cross-validation folds; "
            "add images or lower the folds"
        )
    images, masks = read_pairs(pairs, channel)
    kind, values = mask_kind(masks, [mask for _, mask in pairs], ignore_label)
    labels = [_labels(mask, kind, values, ignore_label) for mask in masks]
    shape = tuple(max(image.shape[axis] for image in images) for axis in (0, 1))
    order = [int(frame) for frame in np.random.default_rng(ORDER_SEED).permutation(len(pairs))]
    unannotated = None if ignore_label is None else np.stack([_pad(masks[i] == ignore_label, shape) for i in order])
    return Split(
        dataset,
        LABELLED_SPLITS["folder"][0],
        kind,
        np.stack([mirror_pad(images[i], shape) for i in order]).astype(_stack_dtype(images), copy=False),
        order,
        np.stack([_pad(labels[i], shape) for i in order]),
        order,
        unannotated,
        sizes=[images[i].shape for i in order],
        folder={
            "source": str(source),
            # images[f] and masks[f]: the files of frame id f
            "images": [str(image.relative_to(source)) for image, _ in pairs],
            "masks": [str(mask.relative_to(source)) for _, mask in pairs],
            "mask_values": [int(value) for value in values] if kind == "binary" else None,
            "ignore_label": ignore_label,
            "channel": channel,
            "order_seed": ORDER_SEED,
        },
    )


def pair_files(source: Path) -> list[tuple[Path, Path]]:
    """(image, mask) per image, in the images' name order; every entry must be an image with one partner."""
    image_folder, mask_folder = folder_layout(source)
    image_paths, mask_paths = visible_entries(image_folder), visible_entries(mask_folder)
    for path in image_paths + mask_paths:
        if not path.is_file():
            raise DataError(f"{path}: a folder; images and masks lie directly in {path.parent}")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not a TIFF or PNG image ({', '.join(IMAGE_SUFFIXES)}); move it out of the folder")
    images: dict[str, Path] = {}
    for path in image_paths:
        if path.stem in images:
            raise DataError(f"{path}: a second image named {path.stem!r} (also {images[path.stem].name}); rename one")
        images[path.stem] = path
    masks: dict[str, Path] = {}
    for path in mask_paths:
        stem = _image_stem(path.stem, images)
        if stem is None:
            raise DataError(
                f"{path}: a mask without an image: no {path.stem}.* in {image_folder} (a mask is named like its "
                f"image, or like it with one of the suffixes {', '.join(MASK_SUFFIXES)})"
            )
        if stem in masks:
            raise DataError(f"{images[stem]}: two masks, {masks[stem].name} and {path.name}; keep one")
        masks[stem] = path
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(
                f"{path}: an image without a mask: expected {mask_folder / stem}.png or .tif, or the same with one "
                f"of the suffixes {', '.join(MASK_SUFFIXES)} ({stem}{MASK_SUFFIXES[0]}.png)"
            )
    return [(path, masks[stem]) for stem, path in sorted(images.items(), key=lambda item: item[1].name)]


def read_pairs(pairs: list[tuple[Path, Path]], channel: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images and masks of `pairs`, each mask of its image's size."""
    images = [_read_image(image, channel) for image, _ in pairs]
    masks = [_read_mask(mask) for _, mask in pairs]
    for (image_path, mask_path), image, mask in zip(pairs, images, masks):
        if mask.shape != image.shape:
            raise DataError(f"{mask_path}: {_size(mask)} px, but its image {image_path} is {_size(image)} px")
    return images, masks


def _image_stem(mask_stem: str, images: dict[str, Path]) -> str | None:
    """The stem of the image a mask belongs to: its own, or its own less a mask suffix."""
    if mask_stem in images:
        return mask_stem
    for suffix in MASK_SUFFIXES:
        if mask_stem.endswith(suffix) and mask_stem[: -len(suffix)] in images:
            return mask_stem[: -len(suffix)]
    return None


def _read_image(path: Path, channel: int | None) -> np.ndarray:
    image = read_image_file(path, channel)
    if len(image.images) != 1:
        raise DataError(f"{path}: a stack of {len(image.images)} images; give one 2D image per file")
    pixels = image.images[0]
    if pixels.dtype.kind not in "uifb":
        raise DataError(f"{path}: pixels of type {pixels.dtype}; expected 8 or 16 bit integers or floats")
    return pixels


def _read_mask(path: Path) -> np.ndarray:
    """A mask's values as unsigned integers; a `DataError` for anything that is not one 2D image of whole numbers
    from 0."""
    mask = _read_png_mask(path) if path.suffix.lower() == ".png" else _read_tiff_mask(path)
    if mask.ndim != 2:
        raise DataError(f"{path}: a mask of shape {mask.shape}; give one 2D mask per file")
    check_finite(mask, str(path))
    if mask.dtype.kind not in "uifb":
        raise DataError(f"{path}: mask values of type {mask.dtype}; expected whole numbers")
    if mask.dtype.kind == "f":
        fractional = mask != np.round(mask)
        if fractional.any():
            row, column = np.argwhere(fractional)[0]
            raise DataError(
                f"{path}: a float mask with fractions ({int(fractional.sum())} pixels, the first "
                f"{mask[row, column]:g} at pixel ({row}, {column})); masks hold whole numbers: class or instance ids"
            )
    if mask.size and mask.min() < 0:
        raise DataError(f"{path}: negative mask values (down to {mask.min():g}); masks hold ids from 0")
    return mask.astype(np.min_scalar_type(int(mask.max(initial=0))))


def _read_png_mask(path: Path) -> np.ndarray:
    """Pillow keeps the indices of a palette PNG (scikit-image would give the palette's colours)."""
    from PIL import Image

    try:
        with Image.open(path) as png:
            mode, mask = png.mode, np.asarray(png)
    except Exception as error:  # Pillow raises many types for a file it cannot decode
        raise DataError(f"{path}: not a readable PNG ({error})") from error
    if mode in ("LA", "PA", "RGBA"):
        mask = mask[..., :-1]  # the alpha channel
    return _gray(path, mask, -1) if mask.ndim == 3 else mask


def _read_tiff_mask(path: Path) -> np.ndarray:
    mask, axes = read_tiff_with_axes(path)
    channel_axis = next((i for i, axis in enumerate(axes) if axis in "CS"), None)
    return mask if channel_axis is None else _gray(path, mask, channel_axis)


def _gray(path: Path, mask: np.ndarray, channel_axis: int) -> np.ndarray:
    """The one channel of a mask whose channels are equal (a gray mask saved as RGB)."""
    channels = np.moveaxis(mask, channel_axis, 0)
    if any(not np.array_equal(channels[0], other) for other in channels[1:]):
        raise DataError(f"{path}: a mask of {len(channels)} different channels; save it as one gray channel of ids")
    return channels[0]


def mask_kind(masks: list[np.ndarray], paths: list[Path], ignore_label: int | None) -> tuple[str, list[int]]:
    """("binary", [background, foreground]) or ("instance", values) for the data set's masks; a `DataError` for
    masks with nothing to learn or with values that are neither (see the module docstring)."""
    per_mask = [set(np.unique(mask).tolist()) - {ignore_label} for mask in masks]
    values = sorted(set().union(*per_mask))
    if len(values) < 2:
        found = f"the value {values[0]}" if values else f"the ignore_label {ignore_label}"
        raise DataError(
            f"{paths[0].parent}: every pixel of every mask is {found}: nothing to learn from. Masks mark the "
            "objects: two values for binary masks, an id per object for instance masks"
        )
    if len(values) == 2:
        return "binary", values
    # The masks with the most values first: in a binary data set with a stray 0/128/255 mask, that one is named.
    for index in sorted(range(len(masks)), key=lambda i: -len(per_mask[i])):
        _check_instance_ids(masks[index], paths[index], sorted(per_mask[index]), ignore_label)
    return "instance", values


def _check_instance_ids(mask: np.ndarray, path: Path, values: list[int], ignore_label: int | None) -> None:
    from skimage.measure import label as connected_regions

    if values and values[-1] > np.iinfo(np.uint16).max:
        raise DataError(f"{path}: instance id {values[-1]} is above 65535; number the objects from 1")
    ids = np.where(mask == ignore_label, 0, mask) if ignore_label is not None else mask
    regions = connected_regions(ids, background=0, connectivity=2)
    region_sizes = np.bincount(regions.ravel())[1:]
    if not region_sizes.size:
        return
    region_values = np.zeros(len(region_sizes) + 1, dtype=np.int64)
    region_values[regions.ravel()] = ids.ravel()
    value_ids, of_value = np.unique(region_values[1:], return_inverse=True)
    largest = np.zeros(len(value_ids))
    np.maximum.at(largest, of_value, region_sizes)
    share = largest / np.bincount(of_value, weights=region_sizes)
    worst = int(np.argmin(share))
    if share[worst] < OBJECT_SHARE:
        shown = values if len(values) <= 8 else values[:8] + ["..."]
        raise DataError(
            f"{path}: values {shown} are neither a binary mask (two values) nor instance ids: value "
            f"{value_ids[worst]} covers {int(np.bincount(of_value)[worst])} separate regions, the largest holding "
            f"{share[worst]:.0%} of its pixels. Save binary masks with two values, or instance masks with one id "
            "per object"
        )


def _labels(mask: np.ndarray, kind: str, values: list[int], ignore_label: int | None) -> np.ndarray:
    """The canonical labels: binary 1 = foreground (uint8), or instance ids (uint16); not annotated = 0."""
    labels = (mask == values[-1]).astype(np.uint8) if kind == "binary" else mask.astype(np.uint16)
    if ignore_label is not None:
        labels[mask == ignore_label] = 0
    return labels


def _pad(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels padded with 0 (the padding has no weight, so its value teaches nothing)."""
    return np.pad(mask, [(0, target - size) for size, target in zip(mask.shape, shape)])


def _stack_dtype(images: list[np.ndarray]) -> type:
    if all(image.dtype == np.uint8 for image in images):
        return np.uint8
    if all(image.dtype.kind in "ub" and image.max(initial=0) <= np.iinfo(np.uint16).max for image in images):
        return np.uint16
    return np.float32


def _size(array: np.ndarray) -> str:
    return f"{array.shape[0]}x{array.shape[1]}"
