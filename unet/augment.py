"""Training samples for the valid-convolution U-Net: elastic deformation, rotation, flips, shifts and
gray-value variation, batched with torch on the training device.

The paper (section 3.1) names shift, rotation, gray-value variation and, above all, elastic
deformation: random displacement vectors on a coarse 3x3 grid, drawn from a Gaussian with 10 px
standard deviation, turned into per-pixel displacements by bicubic interpolation. Here:

- Geometry. For each sample, one sampling grid maps every pixel of the input tile to the image
  position it is read from: tile offsets from the tile centre are mirrored (columns, if the flip is
  drawn), rotated by the drawn angle, moved to the drawn tile centre, and displaced by the dense
  elastic field. Affine and elastic parts are composed into this one grid, so each array is
  interpolated exactly once.
- Elastic field. `elastic_grid` x `elastic_grid` control points span the input tile (corners
  included); each carries a displacement whose two components (row, column) are drawn
  independently from N(0, elastic_std^2) pixels; the dense field is their bicubic interpolation
  (`F.interpolate(mode="bicubic", align_corners=True)`, which passes through the control values).
- Shift. The random crop position is the shift: the output window's top-left corner is uniform
  over the integer positions that keep the window inside the image (or, for an image smaller than
  the window, that keep the image inside the window). In a stack of padded images (`sizes`, a
  folder data set's, `unet.io`) the image is its true extent, so no step is spent on padding.
- Rotation. Uniform in [-rotation, rotation] degrees; the default 180 (any orientation) is our
  choice, as the paper gives no range: neither EM sections nor cultured cells have a preferred
  direction, and with one composed grid any angle costs the same as a multiple of 90 degrees.
  Together with the flip, every orientation and its mirror image is drawn.
- Mirroring. Context beyond the image border is mirrored (`padding_mode="reflection"`,
  reflected about the border pixels like `numpy.pad(mode="reflect")`, repeatedly if needed), as
  the overlap-tile strategy does at prediction time: no empty corners, images smaller than the
  tile work.
- Interpolation. The image is bicubic (thin membranes stay sharp); the target and the weight map
  are read together, by nearest neighbour, from the same source pixel: a target never takes a new
  label value, and every (target, weight) pair is one that exists in the precomputed maps (a
  blended weight would mix the class-balance weights of both classes at cell borders).
- Gray values (our choice; the paper gives no numbers): per sample, the tile's contrast around its
  mean is scaled by a factor uniform in [1 - gray_contrast, 1 + gray_contrast] and an offset
  uniform in [-gray_brightness, gray_brightness] is added (inputs are normalised so that each
  image's 1st and 99th percentiles are 0 and 1, `unet.io.normalize_intensity`; values are not clipped).
- Randomness. Every random number comes from one CPU `torch.Generator` seeded with `seed`; the few
  numbers per sample move to the device afterwards, so the same seed gives the same samples on any
  device, and `state_dict()` / `load_state_dict()` resume the stream exactly. All parameters are
  drawn even when their magnitude is zero, so changing one magnitude leaves the others' draws alone.
  They move in one asynchronous copy per batch (`SampleParameters.to`): a training step never waits
  for the host.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch.nn import functional as F

from unet.device import resolve_device
from unet.errors import UsageError
from unet.figures import figure, show_weights
from unet.io import load_training_set
from unet.settings import AugmentSettings, ModelSettings, TrainSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments
from unet.sizes import output_size


@dataclass(frozen=True)
class SampleParameters:
    """The random draws of one batch (CPU tensors from the generator; `to` moves them)."""

    index: torch.Tensor  # (B,) int64: which image
    corner: torch.Tensor  # (B, 2) int64: row, column of the output window's top-left pixel in the image
    angle: torch.Tensor  # (B,) float32, radians
    flip: torch.Tensor  # (B,) bool: mirror the tile's columns before rotating
    displacement: torch.Tensor  # (B, 2, g, g) float32 pixels (row, column) at the coarse control points
    contrast: torch.Tensor  # (B,) float32 factor
    brightness: torch.Tensor  # (B,) float32 offset

    def to(self, device: torch.device) -> SampleParameters:
        """The parameters on `device` in one asynchronous copy: their bytes packed into one buffer, pinned for CUDA.

        (A pageable copy per tensor would make the host wait for the device's queue, once per tensor.)
        """
        tensors = [getattr(self, item.name) for item in fields(self)]
        if all(tensor.device == device for tensor in tensors):
            return self
        sizes = [-(-tensor.nbytes // _ALIGNMENT) * _ALIGNMENT for tensor in tensors]  # each part aligned for its dtype
        packed = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=device.type == "cuda")
        for part, tensor in zip(packed.split(sizes), tensors):
            part[: tensor.nbytes].copy_(tensor.contiguous().view(-1).view(torch.uint8))
        moved = packed.to(device, non_blocking=True).split(sizes)
        return SampleParameters(
            *(part[: tensor.nbytes].view(tensor.dtype).view(tensor.shape) for part, tensor in zip(moved, tensors))
        )


_ALIGNMENT = 8  # bytes: the largest element size among the parameters (int64)


class Augmenter:
    """Random augmented training pairs: input tiles with the target and weight of their output window.

    `images` float32 (N, H, W) normalised (`unet.io.normalize_intensity`), `targets` uint8 (N, H, W), `weights` float32
    (N, H, W); numpy arrays or tensors; `sizes`: each image's true (height, width) in a padded stack (default:
    the whole stack). `sample(batch_size)` returns, on `device`, the image
    (B, 1, input_size, input_size) float32, the target (B, out, out) int64 and the weight
    (B, out, out) float32, out = `unet.sizes.output_size(input_size, depth)`.
    """

    def __init__(
        self,
        images,
        targets,
        weights,
        input_size: int = TrainSettings.input_size,
        config: AugmentSettings | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        depth: int = ModelSettings.depth,
        sizes: list[tuple[int, int]] | None = None,
    ):
        images, targets, weights = _stacks(images, targets, weights)
        self.config = config or AugmentSettings()
        self.input_size = input_size
        self.output_size = output_size(input_size, depth)
        self.margin = (input_size - self.output_size) // 2
        self.count, self.height, self.width = images.shape
        self._sizes = [tuple(size) for size in sizes] if sizes is not None else [(self.height, self.width)] * self.count
        self._images = images[:, None].to(device)
        self.device = self._images.device  # with its index ("cuda:0"), as the moved parameters will report it
        # Target and weight are sampled together so that both come from the same source pixel.
        self._target_weight = torch.stack([targets.float(), weights], dim=1).to(self.device)
        self._generator = torch.Generator().manual_seed(int(seed))
        # Offsets of the tile's rows (and columns) from the tile centre.
        self._offsets = (torch.arange(input_size, dtype=torch.float32) - (input_size - 1) / 2).to(self.device)
        self._bicubic = _bicubic_matrix(self.config.elastic_grid, input_size).to(self.device)
        # grid_sample's coordinates: -1 and 1 are the centres of the first and last pixel (column, row).
        self._to_grid = torch.tensor([2 / (self.width - 1), 2 / (self.height - 1)]).to(self.device)

    def sample(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.apply(self.draw(batch_size))

    def draw(self, batch_size: int) -> SampleParameters:
        """Draw the random parameters of `batch_size` samples (always the same draws, whatever the magnitudes)."""
        generator, config, n = self._generator, self.config, batch_size

        def symmetric(magnitude: float) -> torch.Tensor:
            return (2 * torch.rand(n, generator=generator) - 1) * magnitude

        index = torch.randint(self.count, (n,), generator=generator)
        sizes = [self._sizes[i] for i in index.tolist()]
        corner = torch.stack([self._random_corner([size[axis] for size in sizes]) for axis in (0, 1)], dim=1)
        angle = symmetric(math.radians(config.rotation))
        flip = (torch.rand(n, generator=generator) < 0.5) & config.flip
        grid = config.elastic_grid
        displacement = torch.randn(n, 2, grid, grid, generator=generator) * config.elastic_std
        contrast = 1 + symmetric(config.gray_contrast)
        brightness = symmetric(config.gray_brightness)
        return SampleParameters(index, corner, angle, flip, displacement, contrast, brightness)

    def apply(self, parameters: SampleParameters) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image tiles, targets and weights for drawn parameters, on the device."""
        parameters = parameters.to(self.device)
        coordinates = self.source_coordinates(parameters)
        image = self.read(self._images[parameters.index], coordinates, mode="bicubic")
        inner = slice(self.margin, self.margin + self.output_size)
        target_weight = self.read(self._target_weight[parameters.index], coordinates[:, inner, inner], mode="nearest")
        return self._vary_gray_values(image, parameters), target_weight[:, 0].round().long(), target_weight[:, 1]

    def source_coordinates(self, parameters: SampleParameters) -> torch.Tensor:
        """(B, S, S, 2): the image position (column, row) that each input tile pixel is read from."""
        parameters = parameters.to(self.device)
        cos, sin = torch.cos(parameters.angle), torch.sin(parameters.angle)
        column_sign = 1 - 2 * parameters.flip.float()
        # Rotation after mirroring the columns, acting on (row, column) offsets from the tile centre:
        # image = centre + [[cos, -sin * sign], [sin, cos * sign]] @ offset + elastic displacement.
        centre = parameters.corner.float() - self.margin + (self.input_size - 1) / 2
        rows, columns = self._offsets[None, :, None], self._offsets[None, None, :]

        def per_sample(value: torch.Tensor) -> torch.Tensor:
            return value[:, None, None]

        row = per_sample(centre[:, 0]) + per_sample(cos) * rows - per_sample(sin * column_sign) * columns
        column = per_sample(centre[:, 1]) + per_sample(sin) * rows + per_sample(cos * column_sign) * columns
        if self.config.elastic_std > 0:
            displacement = self.dense_displacement(parameters.displacement)
            row, column = row + displacement[:, 0], column + displacement[:, 1]
        return torch.stack([column, row], dim=-1)

    def dense_displacement(self, coarse: torch.Tensor) -> torch.Tensor:
        """(B, 2, S, S) per-pixel (row, column) displacements: bicubic interpolation of the (B, 2, g, g) controls."""
        return self._bicubic @ coarse.to(self.device) @ self._bicubic.T

    def read(self, stacks: torch.Tensor, coordinates: torch.Tensor, *, mode: str) -> torch.Tensor:
        """Read (B, C, H, W) `stacks` of the images' size at (B, h, w, 2) pixel positions (column, row), mirroring
        beyond the border."""
        grid = coordinates * self._to_grid - 1
        return F.grid_sample(stacks, grid, mode=mode, padding_mode="reflection", align_corners=True)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._generator.set_state(state["generator"])

    def _random_corner(self, extents: list[int]) -> torch.Tensor:
        """Per sample, along one axis: the window inside the image's extent if it fits, otherwise the image inside
        the window. One draw per sample, in order: the same numbers as one draw of the batch when all are equal."""
        bounds = [sorted((0, extent - self.output_size)) for extent in extents]
        return torch.cat([torch.randint(low, high + 1, (1,), generator=self._generator) for low, high in bounds])

    def _vary_gray_values(self, image: torch.Tensor, parameters: SampleParameters) -> torch.Tensor:
        if not (self.config.gray_contrast or self.config.gray_brightness):
            return image  # exactly the interpolated tile at zero strength
        mean = image.mean(dim=(-2, -1), keepdim=True)
        contrast = parameters.contrast[:, None, None, None]
        brightness = parameters.brightness[:, None, None, None]
        return mean + contrast * (image - mean) + brightness


def _bicubic_matrix(points: int, size: int) -> torch.Tensor:
    """(size, points): bicubic interpolation (torch's, corners aligned) from `points` control values to `size`.

    Bicubic interpolation is separable, so the dense field is `matrix @ coarse @ matrix.T`: the same
    values as `F.interpolate(coarse, mode="bicubic", align_corners=True)`, in a fraction of the time.
    """
    basis = torch.eye(points).reshape(points, 1, points, 1)
    return F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=True)[:, 0, :, 0].T


def _stacks(images, targets, weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stacks = {
        "images": torch.as_tensor(images).float(),
        "targets": torch.as_tensor(targets),
        "weights": torch.as_tensor(weights).float(),
    }
    shapes = {name: tuple(stack.shape) for name, stack in stacks.items()}
    if stacks["images"].ndim != 3 or len(set(shapes.values())) != 1:
        raise UsageError(f"augment: images, targets and weights must be (N, H, W) stacks of one shape, found {shapes}")
    count, height, width = shapes["images"]
    if count == 0 or height < 2 or width < 2:
        raise UsageError(f"augment: need at least one image of at least 2x2 pixels, found shape {shapes['images']}")
    return stacks["images"], stacks["targets"], stacks["weights"]


def deformed_grid(augmenter: Augmenter, parameters: SampleParameters, *, spacing: int = 32) -> torch.Tensor:
    """(B, S, S): a grid of lines every `spacing` image pixels, seen through each sample's transformation."""
    rows = torch.arange(augmenter.height)[:, None] % spacing < 2
    columns = torch.arange(augmenter.width)[None, :] % spacing < 2
    lines = (rows | columns).float().to(augmenter.device)
    batch = len(parameters.index)
    coordinates = augmenter.source_coordinates(parameters)
    return augmenter.read(lines.expand(batch, 1, -1, -1), coordinates, mode="bilinear")[:, 0]


def plot_augmentation(augmenter: Augmenter, path: str | Path, *, samples: int = 3, title: str = "") -> None:
    """The report's figure: per sample, the deformed grid, the input tile with its output window, target, weight."""
    parameters = augmenter.draw(samples)
    grids = deformed_grid(augmenter, parameters).cpu().numpy()
    image, target, weight = (tensor.cpu().numpy() for tensor in augmenter.apply(parameters))
    with figure(path, samples, 4, size=(13, 3.3 * samples), title=title, dpi=90) as (drawing, axes):
        for row, sample_axes in enumerate(axes):
            _draw_sample(
                drawing, sample_axes, augmenter, parameters, row, grids[row], image[row, 0], target[row], weight[row]
            )


def _draw_sample(
    drawing, axes, augmenter: Augmenter, parameters: SampleParameters, row: int, grid, image, target, weight
) -> None:
    from matplotlib import patches

    angle = math.degrees(parameters.angle[row].item())
    flip = ", flipped" if parameters.flip[row] else ""
    axes[0].imshow(grid, cmap="gray_r")
    axes[0].set_title(f"32 px grid: {angle:.0f} deg{flip}")
    axes[1].imshow(image, cmap="gray")
    inner = (augmenter.margin - 0.5, augmenter.margin - 0.5)
    axes[1].add_patch(
        patches.Rectangle(
            inner, augmenter.output_size, augmenter.output_size, fill=False, edgecolor="yellow", linewidth=1.5
        )
    )
    axes[1].set_title(f"input tile {augmenter.input_size} px")
    axes[2].imshow(target, cmap="gray", vmin=0, vmax=1)
    axes[2].set_title(f"target {augmenter.output_size} px")
    show_weights(drawing, axes[3], weight, "loss weight")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA_SPLIT_DIR", type=Path, help="prepared split with labels")
    parser.add_argument("weights", metavar="WEIGHT_DIR", type=Path, help="its `unet weightmap` output")
    parser.add_argument("--figure", metavar="PNG", type=Path, required=True, help="where the figure goes")
    parser.add_argument("--samples", type=int, default=3, help="augmented samples shown (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--input-size",
        type=int,
        default=TrainSettings.input_size,
        help="input tile side, as `train.input_size` (default %(default)s)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=ModelSettings.depth,
        help="U-Net depth, for the output size, as `model.depth` (default %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    add_settings_arguments(parser, AugmentSettings)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    training = load_training_set(args.data, args.weights)
    augmenter = Augmenter(
        training.images,
        training.targets,
        training.weights,
        input_size=args.input_size,
        config=from_arguments(AugmentSettings, args),
        device=device,
        seed=args.seed,
        depth=args.depth,
        sizes=training.sizes,
    )
    plot_augmentation(
        augmenter,
        args.figure,
        samples=args.samples,
        title=f"{args.data}: augmented training samples (seed {args.seed})",
    )
    return 0
