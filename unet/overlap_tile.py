"""Overlap-tile prediction with test-time augmentation (paper, sections 2 and 3).

The valid-convolution U-Net predicts the centre of each input tile; the context
it needs at the image border is filled by mirroring the image. Decisions:

- Mirroring is NumPy's ``reflect`` (the edge pixel is not repeated), as in the
  authors' release (its MATLAB tiled forward pass: ``padded(1:from-1,:) =
  padded(from+pad:-1:from+1,:)``). Where the padding exceeds the image (tiny
  images) the reflection repeats; the release filled zeros there.
- Exact stitching. The network is translation-equivariant only for shifts by
  multiples of ``2**depth`` (its max-pooling grid); a tile's output side is
  not such a multiple (388 = 16 * 24 + 4), so tiles that abut at their output
  side, as in the release, pool on shifted grids and leave seams. Our tiles step
  by the output side rounded down to a multiple of ``2**depth`` (384 for 388) and
  the few overlapping output pixels agree. The stitched result therefore equals
  the network applied once to the whole mirrored image, and it does not depend
  on the tile size: ``input_size`` is the largest tile (a memory and speed knob);
  tiles shrink to the smallest valid size that covers the image with the
  fewest tiles.
- Test-time augmentation averages soft-max probabilities (not logits) over a set
  of rotations and flips, each undone on the output before averaging: ``d4``,
  the 8 rotations and reflections of the square (the paper averages "7 rotated
  versions" of EM data, unnamed; we take the identity and the other 7), ``flips``
  (identity, left-right, up-down, both: the release's set for the cell data),
  or ``none``. Each variant is computed as "rotate the image, predict, rotate
  back" (its own mirroring and tiling); the tiles are square, so the tiles of all
  variants share the same forward passes.
- Memory. Tiles go through the network ``batch_size`` at a time and each tile's
  output is added to its image's sum at once, so memory holds one batch of tiles,
  the images in progress and their sums, whatever the image size or the number of
  variants. Tiles are read from the image through index vectors (the mirroring and
  the variant's flips folded in), not from mirrored or rotated copies.
- Shapes. Every forward pass of a call gets the same number of tiles (the last
  batch is padded). cuDNN's autotuner (``torch.backends.cudnn.benchmark``) tunes
  its kernels anew for every input shape, for about as long as dozens of batches
  take: on a CUDA device with autotuning on, every batch has ``batch_size`` tiles
  and tile sides are rounded up to ``input_size - k * 4 * 2**depth`` (572, 508,
  444, ... for the paper's network), so that a folder of images of many sizes costs
  a few tunings. Elsewhere the padding is less than one tile per batch (the tiles
  are split into equal batches) and tiles stay as small as possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from unet.device import memory_format, uses_bf16
from unet.errors import UsageError
from unet.progress import progress_bar
from unet.settings import PredictSettings
from unet.sizes import border, check_prediction_tile, output_size, valid_input_size_at_least


@dataclass(frozen=True)
class Transform:
    """One element of the symmetry group of the square: an optional transpose, then optional flips."""

    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Transform the last two axes."""
        if self.transpose:
            images = images.transpose(-2, -1)
        return images.flip(self._flipped_axes()) if self._flipped_axes() else images

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Undo `apply` (every part is its own inverse; the order reverses)."""
        if self._flipped_axes():
            images = images.flip(self._flipped_axes())
        return images.transpose(-2, -1) if self.transpose else images

    def source_window(self, rows: slice, columns: slice, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The window of an image of `shape` that the window (`rows`, `columns`) of its transformed version shows
        (`invert` puts that window's pixels in the image's order)."""
        height, width = shape[::-1] if self.transpose else shape
        if self.flip_y:
            rows = slice(height - rows.stop, height - rows.start)
        if self.flip_x:
            columns = slice(width - columns.stop, width - columns.start)
        return (columns, rows) if self.transpose else (rows, columns)

    def _flipped_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, flip in ((-2, self.flip_y), (-1, self.flip_x)) if flip)


_FLIPS = tuple(Transform(False, flip_y, flip_x) for flip_y in (False, True) for flip_x in (False, True))
TTA = {
    "none": (Transform(),),
    "flips": _FLIPS,
    "d4": _FLIPS + tuple(Transform(True, t.flip_y, t.flip_x) for t in _FLIPS),
}


# With cuDNN autotuning, tile sides step down from input_size by LADDER multiples of 2**depth: few shapes to tune.
LADDER = 4


def _autotuned(device: torch.device) -> bool:
    return device.type == "cuda" and torch.backends.cudnn.benchmark


@dataclass(frozen=True)
class TileLayout:
    """Square tiles of side `tile` at offsets `stride * (i, j)` of the mirrored image; `counts` per axis."""

    tile: int
    output: int
    stride: int
    counts: tuple[int, int]
    border: int

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple((count - 1) * self.stride + self.tile for count in self.counts)

    def padding(self, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Mirrored pixels (before, after) per axis for an image of `shape`."""
        return tuple((self.border, padded - size - self.border) for size, padded in zip(shape, self.padded_shape))


def tile_layout(
    shape: tuple[int, int], input_size: int, depth: int, device: str | torch.device | None = None
) -> TileLayout:
    """The tiles for an image of `shape`: the fewest tiles of at most `input_size`, each as small as that allows,
    or, on a CUDA `device` with cuDNN autotuning on, the next side of `input_size - k * LADDER * 2**depth`.

    `InvalidSizeError` (a `ValueError`) names the nearest valid sizes when `input_size` is not a valid tile.
    """
    step = 2**depth

    def stride(tile: int) -> int:
        return output_size(tile, depth) // step * step

    def tiles_needed(tile: int, length: int) -> float:
        uncovered = max(0, length - output_size(tile, depth))
        if not uncovered:
            return 1
        return 1 + math.ceil(uncovered / stride(tile)) if stride(tile) else math.inf

    def smallest_tile(length: int) -> int:
        count = tiles_needed(input_size, length)
        if count == math.inf:  # the image needs several tiles, which must step by a multiple of 2**depth
            check_prediction_tile(input_size, depth)
        tile = valid_input_size_at_least(1, depth)
        while tiles_needed(tile, length) > count or not stride(tile):
            tile += step
        return tile

    tile = max(smallest_tile(length) for length in shape)
    if device is not None and _autotuned(torch.device(device)) and tile < input_size:
        rung = LADDER * step
        tile = input_size - (input_size - tile) // rung * rung
    counts = tuple(tiles_needed(tile, length) for length in shape)
    return TileLayout(tile, output_size(tile, depth), stride(tile), counts, border(depth))


def predict_probabilities(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    input_size: int = PredictSettings.input_size,
    batch_size: int = PredictSettings.batch_size,
    tta: str = PredictSettings.tta,
    device: str | torch.device | None = None,
    precision: str = PredictSettings.precision,
    progress: bool = False,
) -> np.ndarray:
    """The cell probability (soft-max channel 1) of each image of a (N, H, W) stack, float32 (N, H, W).

    `images` are normalised already (`unet.io.normalize_intensity`). `batch_size`
    tiles (variants of tiles included) go through the network per forward pass
    (fewer when the whole stack has fewer). The model is put in eval mode for the
    call and moved to `device` (default: where it is) in its faster layout (`unet.device.memory_format`).
    `precision`: `bf16` autocast, `fp32`, or `auto` (bf16 where the device computes
    it faster than fp32, `unet.device.uses_bf16`). `progress`: a progress bar over the images on stderr.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or 0 in images.shape:
        raise UsageError(f"images must be a non-empty (N, H, W) stack, found shape {images.shape}")
    if tta not in TTA:
        raise UsageError(f"tta must be one of {sorted(TTA)}, found {tta!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, found {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layout = tile_layout(images.shape[1:], input_size, model.depth, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))
    cuda = device.type == "cuda"
    # Pinned host memory lets the copies in both directions run without stalling the device queue.
    source = torch.from_numpy(images)
    source = source.pin_memory() if cuda else source
    result = torch.empty(images.shape, dtype=torch.float32, pin_memory=cuda)
    tiler = _Tiler(layout, images.shape[1:], TTA[tta], device)
    was_training = model.training
    model.eval().to(device, memory_format=memory_format(device))
    try:
        with (
            torch.inference_mode(),
            autocast,
            progress_bar(len(images), desc="predict", unit="image", shown=progress) as bar,
        ):
            _predict_stack(model, source, result, tiler, batch_size, bar)
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    return result.numpy()


class _Tiler:
    """The tiles of every variant (test-time transform) of images of one shape, and where their outputs go.

    A variant's tile is read from the image through index vectors, one per axis, in which its mirroring and
    flips are folded (its transpose is a view), so no mirrored or transformed copy of an image is made. Each
    pixel of a variant's output comes from one tile, the last that covers it (neighbouring tiles overlap by
    a few identical pixels), and is added, transformed back, to the image's sum.
    """

    def __init__(self, layout: TileLayout, shape: tuple[int, int], transforms, device: torch.device):
        self.layout, self.shape, self.transforms = layout, shape, transforms
        self.tiles_per_image = len(transforms) * math.prod(layout.counts)
        # Made once: uploading them per tile would wait for the device.
        self.indices = [self._source_indices(transform, device) for transform in transforms]

    def _source_indices(self, transform: Transform, device: torch.device) -> list[torch.Tensor]:
        """Per axis of the variant's mirrored extension: the row (column) of the image, transposed for a
        transposing variant, that each of its pixels shows."""
        shape = self.shape[::-1] if transform.transpose else self.shape
        flips = (transform.flip_y, transform.flip_x)
        indices = []
        for size, padding, flip in zip(shape, self._layout(transform).padding(shape), flips):
            index = np.pad(np.arange(size), padding, mode="reflect")
            indices.append(torch.as_tensor(size - 1 - index if flip else index, device=device))
        return indices

    def _layout(self, transform: Transform) -> TileLayout:
        counts = self.layout.counts
        return replace(self.layout, counts=counts[::-1]) if transform.transpose else self.layout

    def tile(self, number: int) -> tuple[int, int, int, int]:
        """The `number`th tile of the stack: (image, variant, tile row, tile column), image by image, variant by
        variant."""
        image, rest = divmod(number, self.tiles_per_image)
        variant, position = divmod(rest, math.prod(self.layout.counts))
        columns = self._layout(self.transforms[variant]).counts[1]
        return (image, variant, *divmod(position, columns))

    def cut(self, image: torch.Tensor, variant: int, row: int, column: int) -> torch.Tensor:
        """(tile, tile): the input tile at (`row`, `column`) of the variant of the (H, W) image."""
        tile, stride = self.layout.tile, self.layout.stride
        rows, columns = (
            index[start : start + tile] for index, start in zip(self.indices[variant], (row * stride, column * stride))
        )
        if self.transforms[variant].transpose:  # read the image's rows, as rows: a gather along a strided axis is slow
            return image.index_select(0, columns).index_select(1, rows).T
        return image.index_select(0, rows).index_select(1, columns)

    def add(self, total: torch.Tensor, output: torch.Tensor, variant: int, row: int, column: int) -> None:
        """Add the pixels that the (out, out) `output` of that tile is the last to cover to the image's `total`."""
        transform = self.transforms[variant]
        counts = self._layout(transform).counts
        shape = self.shape[::-1] if transform.transpose else self.shape
        window = []
        for index, count, size in zip((row, column), counts, shape):
            start = index * self.layout.stride
            extent = self.layout.stride if index < count - 1 else self.layout.output
            window.append(slice(start, min(start + extent, size)))
        rows, columns = window
        pixels = output[: rows.stop - rows.start, : columns.stop - columns.start]
        total[transform.source_window(rows, columns, self.shape)] += transform.invert(pixels)


def _predict_stack(
    model: torch.nn.Module, source: torch.Tensor, result: torch.Tensor, tiler: _Tiler, batch_size: int, bar
) -> None:
    """Write into `result` the mean cell probability over the variants of each (H, W) image of `source`.

    The tiles of the stack go through the network in batches of one size (the last is padded). An image is moved
    to the device with its first tile; its sum is written to `result` after its last.
    """
    device = tiler.indices[0][0].device
    count = len(source) * tiler.tiles_per_image
    # Autotuned: batch_size tiles whatever the image. Elsewhere: equal batches, padded by less than a tile each.
    batch = batch_size if _autotuned(device) else math.ceil(count / math.ceil(count / batch_size))
    inputs = torch.zeros((batch, 1, tiler.layout.tile, tiler.layout.tile), device=device)
    inputs = inputs.contiguous(memory_format=memory_format(inputs.device))
    in_progress: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image -> (the image on the device, its sum)
    for start in range(0, count, batch):
        tiles = [tiler.tile(number) for number in range(start, min(start + batch, count))]
        for slot, (image, *where) in enumerate(tiles):
            if image not in in_progress:
                in_progress[image] = (
                    source[image].to(device, non_blocking=True),
                    torch.zeros(tiler.shape, dtype=torch.float32, device=device),
                )
            inputs[slot, 0] = tiler.cut(in_progress[image][0], *where)
        probabilities = torch.softmax(model(inputs).float(), dim=1)[:, 1]  # a padded batch's extra slots unused
        for (image, *where), output in zip(tiles, probabilities):
            tiler.add(in_progress[image][1], output, *where)
        for image in [image for image in in_progress if (image + 1) * tiler.tiles_per_image <= start + len(tiles)]:
            _, total = in_progress.pop(image)
            result[image].copy_(total.div_(len(tiler.transforms)), non_blocking=True)
            bar.update(1)
