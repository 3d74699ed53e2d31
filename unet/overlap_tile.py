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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from unet.device import uses_bf16
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

    def _flipped_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, flip in ((-2, self.flip_y), (-1, self.flip_x)) if flip)


_FLIPS = tuple(Transform(False, flip_y, flip_x) for flip_y in (False, True) for flip_x in (False, True))
TTA = {
    "none": (Transform(),),
    "flips": _FLIPS,
    "d4": _FLIPS + tuple(Transform(True, t.flip_y, t.flip_x) for t in _FLIPS),
}


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


def tile_layout(shape: tuple[int, int], input_size: int, depth: int) -> TileLayout:
    """The tiles for an image of `shape`: the fewest tiles of at most `input_size`, each as small as that allows.

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
    tiles (variants of tiles included) go through the network per forward pass.
    The model is put in eval mode for the call and moved to `device` (default:
    where it is) in channels-last layout. `precision`: `bf16` autocast, `fp32`, or
    `auto` (bf16 on CUDA devices that support it, fp32 elsewhere). `progress`: a progress bar over the images
    on stderr.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or 0 in images.shape:
        raise UsageError(f"images must be a non-empty (N, H, W) stack, found shape {images.shape}")
    if tta not in TTA:
        raise UsageError(f"tta must be one of {sorted(TTA)}, found {tta!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, found {batch_size}")
    transforms = TTA[tta]
    layout = tile_layout(images.shape[1:], input_size, model.depth)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))
    cuda = device.type == "cuda"
    # Pinned host memory lets the copies in both directions run without stalling the device queue.
    source = torch.from_numpy(images)
    source = source.pin_memory() if cuda else source
    result = torch.empty(images.shape, dtype=torch.float32, pin_memory=cuda)
    tiler = _Tiler(layout, images.shape[1:], device)
    images_per_chunk = max(1, batch_size // (len(transforms) * math.prod(layout.counts)))
    was_training = model.training
    model.eval().to(device, memory_format=torch.channels_last)
    try:
        with (
            torch.inference_mode(),
            autocast,
            progress_bar(len(images), desc="predict", unit="image", shown=progress) as bar,
        ):
            for start in range(0, len(images), images_per_chunk):
                chunk = source[start : start + images_per_chunk].to(device, non_blocking=True)
                result[start : start + len(chunk)].copy_(
                    _predict_chunk(model, chunk, tiler, transforms, batch_size), non_blocking=True
                )
                bar.update(len(chunk))
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    return result.numpy()


class _Tiler:
    """Mirror-pads images of one shape (or its transpose), cuts the tiles and stitches their outputs."""

    def __init__(self, layout: TileLayout, shape: tuple[int, int], device: torch.device):
        self.layout = layout
        # Gather indices for both orientations, made once: uploading them per chunk would wait for the device.
        self.indices = {
            transposed: self._mirror_indices(shape[::-1] if transposed else shape, transposed, device)
            for transposed in (False, True)
        }

    def _mirror_indices(self, shape: tuple[int, int], transposed: bool, device: torch.device) -> list[torch.Tensor]:
        padding = self._layout(transposed).padding(shape)
        return [
            torch.as_tensor(np.pad(np.arange(size), pad, mode="reflect"), device=device)
            for size, pad in zip(shape, padding)
        ]

    def _layout(self, transposed: bool) -> TileLayout:
        return replace(self.layout, counts=self.layout.counts[::-1]) if transposed else self.layout

    def tiles(self, images: torch.Tensor, transposed: bool) -> torch.Tensor:
        """(k, H, W) images -> (k * tiles, tile, tile) mirrored input tiles, row by row."""
        rows, cols = self.indices[transposed]
        tile, stride = self.layout.tile, self.layout.stride
        mirrored = images.index_select(1, rows).index_select(2, cols)
        return mirrored.unfold(1, tile, stride).unfold(2, tile, stride).reshape(-1, tile, tile)

    def stitch(self, outputs: torch.Tensor, shape: tuple[int, int], transposed: bool) -> torch.Tensor:
        """(k * tiles, out, out) tile outputs -> (k, *shape) image."""
        rows, cols = self._layout(transposed).counts
        out, stride = self.layout.output, self.layout.stride
        outputs = outputs.view(-1, rows, cols, out, out)
        image = outputs.new_empty((len(outputs), (rows - 1) * stride + out, (cols - 1) * stride + out))
        for i in range(rows):
            for j in range(cols):  # overlapping pixels are identical: the later tile may overwrite them
                image[:, i * stride : i * stride + out, j * stride : j * stride + out] = outputs[:, i, j]
        return image[:, : shape[0], : shape[1]]


def _predict_chunk(model, images: torch.Tensor, tiler: _Tiler, transforms, batch_size: int) -> torch.Tensor:
    """Mean cell probability over `transforms` of (k, H, W) images: each variant is transformed, mirrored,
    tiled, predicted, stitched and transformed back; the tiles of all variants share the forward passes."""
    variants = [transform.apply(images) for transform in transforms]
    inputs = torch.cat([tiler.tiles(v, t.transpose) for t, v in zip(transforms, variants)])
    inputs = inputs[:, None].contiguous(memory_format=torch.channels_last)
    out = tiler.layout.output
    probabilities = torch.empty((len(inputs), out, out), dtype=torch.float32, device=inputs.device)
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start : start + batch_size]).float()
        probabilities[start : start + len(logits)] = torch.softmax(logits, dim=1)[:, 1]
    mean = torch.zeros(images.shape, dtype=torch.float32, device=images.device)
    for transform, variant, outputs in zip(transforms, variants, probabilities.chunk(len(transforms))):
        mean += transform.invert(tiler.stitch(outputs, variant.shape[1:], transform.transpose))
    return mean / len(transforms)
