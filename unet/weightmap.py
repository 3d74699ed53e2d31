"""Training targets and the paper's loss weight maps, precomputed once per prepared split.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma = 5 px (paper)

- Objects. Binary labels (ISBI): the 4-connected regions of cell pixels (the connectivity of the
  challenge's Rand error). Instance labels (CTC): the instances after separation: a cell pixel
  within `separation` px (Euclidean) of a pixel of another cell becomes background (a morphological
  separation border, as in the paper's Fig. 3c; 6 px wide where two cells touch with the default
  3 px; 1.5 px, the 8 neighbours, makes it 2 px wide).
- Target: 1 on object pixels, 0 on background and separation borders.
- d1, d2: for a pixel x, d_i(x) is the Euclidean distance from x to the nearest pixel of object i
  (`scipy.ndimage.distance_transform_edt`; 1 for a background pixel touching the object); d1 and d2
  are the smallest and second-smallest over all objects (infinite with fewer than two objects). The
  border term goes to background pixels only, separation borders included: in the paper's Fig. 3d
  the cell interiors carry the class weight alone.
- w_c, per image: w_c(x) = n / (2 n_c(x)), n the image's weighted pixel count and n_c that of x's
  class in the target, so that both classes carry the same total weight and w_c averages to 1; an
  image with a single class gets w_c = 1.
- Unannotated cells (the paper's "partially annotated" images; `unet.prepare` finds them from the
  challenge's tracking markers): their pixels, and those within `ignore_margin` px of them (choice:
  5 px, as their extents come from the silver truth or a disc), get weight 0 and do not count in n,
  unless they belong to an annotated object.
- Padding (a folder data set's smaller images, `unet.io`): each map is computed on its frame's true
  extent, and the padding gets weight 0 (not as an unannotated region, whose margin would reach into
  the image).
- Outputs: `target.tif`, `weights.tif` and `weightmap.json`, which records the split they were
  computed from and a digest of its labels (`unet.io.write_weight_maps`): training refuses the maps
  of other labels, and maps without the record (written before it existed).

Fast and exact to `TOLERANCE`: the border term is below `TOLERANCE` wherever d1 + d2 exceeds
`reach = sigma * sqrt(2 ln(w0 / TOLERANCE))` (28.4 px with the defaults), so each object's distance
transform is needed only within `reach` of its bounding box: a small window instead of the whole
image. Where an object's window does not reach a pixel, that object is further than `reach` from
it; if it would have been the pixel's first or second nearest, the true term and the computed one
are both below `TOLERANCE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
from scipy import ndimage

from unet.errors import UsageError
from unet.figures import figure, show_weights
from unet.io import OUTPUT_FOLDER, DataError, claim_outputs, read_split, write_weight_maps
from unet.settings import WeightmapSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments

TOLERANCE = 1e-6  # border terms below this are left out
IGNORED_COLOUR = (0.6, 0.6, 0.6)  # the figure's unannotated cells


class WeightMap(NamedTuple):
    target: np.ndarray  # uint8 (H, W): 1 = cell, 0 = background and separation borders
    weights: np.ndarray  # float32 (H, W)
    separation: np.ndarray  # bool (H, W): cell pixels turned into background to split touching cells
    ignored: np.ndarray  # bool (H, W): no weight (unannotated cells and their margin)


def weight_map(
    label: np.ndarray,
    kind: str,
    *,
    w0: float = WeightmapSettings.w0,
    sigma: float = WeightmapSettings.sigma,
    unannotated: np.ndarray | None = None,
    ignore_margin: int = WeightmapSettings.ignore_margin,
    separation: float = WeightmapSettings.separation,
) -> WeightMap:
    """Target and loss weights of one labelled frame; `kind` is `binary` (cell > 0) or `instance` (ids);
    `unannotated`: bool, the cells it shows without a mask (no weight, with `ignore_margin` px around them);
    `separation`: how far from another cell an instance's pixels become background."""
    objects, border = label_objects(label, kind, separation)
    target = (objects > 0).astype(np.uint8)
    ignored = ignored_pixels(unannotated, label, ignore_margin)
    weights = class_weights(target, ~ignored) + border_weights(objects, w0=w0, sigma=sigma)
    weights[ignored] = 0
    return WeightMap(target, weights.astype(np.float32), border, ignored)


def ignored_pixels(unannotated: np.ndarray | None, label: np.ndarray, margin: int) -> np.ndarray:
    """The pixels of no weight: within `margin` px (Euclidean) of an unannotated cell, outside annotated objects."""
    if unannotated is None or not unannotated.any():
        return np.zeros(label.shape, dtype=bool)
    near = ndimage.distance_transform_edt(~unannotated) <= margin
    return near & (label == 0)


def label_objects(
    label: np.ndarray, kind: str, separation: float = WeightmapSettings.separation
) -> tuple[np.ndarray, np.ndarray]:
    """(objects, separation): int32 object ids (0 = background) and the separation border mask."""
    if label.ndim != 2:
        raise UsageError(f"weightmap: expected a 2D label image, found shape {label.shape}")
    if kind == "binary":
        objects, _ = ndimage.label(label > 0)  # default structure: 4-connectivity
        return objects.astype(np.int32), np.zeros(label.shape, dtype=bool)
    if kind == "instance":
        return separate_instances(label, separation)
    raise UsageError(f"weightmap: kind must be 'binary' or 'instance', found {kind!r}")


def separate_instances(
    instances: np.ndarray, separation: float = WeightmapSettings.separation
) -> tuple[np.ndarray, np.ndarray]:
    """Make background of every cell pixel within `separation` px (Euclidean) of another cell."""
    instances = instances.astype(np.int32)
    near = disc(separation)
    larger_neighbour = ndimage.maximum_filter(instances, footprint=near, mode="nearest") > instances
    cells_only = np.where(instances > 0, instances, np.iinfo(np.int32).max)
    smaller_neighbour = ndimage.minimum_filter(cells_only, footprint=near, mode="nearest") < instances
    border = (instances > 0) & (larger_neighbour | smaller_neighbour)
    return np.where(border, 0, instances), border


def disc(radius: float) -> np.ndarray:
    """The footprint of the pixels within `radius` (Euclidean) of the centre; 1.5 gives the 3 x 3 square."""
    reach = int(radius)
    rows, columns = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return rows**2 + columns**2 <= radius**2


def class_weights(target: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """w_c = n / (2 n_c) per pixel of class c over the `counted` pixels (default: all; see the module docstring);
    1 everywhere for a single class."""
    counts = np.bincount(target[counted] if counted is not None else target.ravel(), minlength=2)[:2]
    if counts.min() == 0:
        return np.ones(target.shape, dtype=np.float32)
    return (counts.sum() / (2 * counts)).astype(np.float32)[target]


def border_reach(w0: float, sigma: float) -> float:
    """The d1 + d2 beyond which the border term is below `TOLERANCE`."""
    return sigma * math.sqrt(2 * math.log(w0 / TOLERANCE)) if w0 > TOLERANCE else 0.0


def border_weights(
    objects: np.ndarray, *, w0: float = WeightmapSettings.w0, sigma: float = WeightmapSettings.sigma
) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels, 0 on objects; exact to `TOLERANCE`."""
    if w0 < 0 or sigma <= 0:
        raise UsageError(f"weightmap: need w0 >= 0 and sigma > 0, found w0={w0}, sigma={sigma}")
    reach = math.ceil(border_reach(w0, sigma))
    boxes = ndimage.find_objects(objects)
    # (first row, end row, first column, end column) per object id - 1; an id without pixels gets an empty box.
    bounds = np.array(
        [(b[0].start, b[0].stop, b[1].start, b[1].stop) if b else (0, 0, 0, 0) for b in boxes], dtype=np.int64
    ).reshape(-1, 4)
    nearest, second = _two_nearest_squared(np.ascontiguousarray(objects, dtype=np.int32), bounds, reach)
    border = w0 * np.exp(-((np.sqrt(nearest) + np.sqrt(second)) ** 2) / (2 * sigma**2))
    border[objects > 0] = 0
    return border.astype(np.float32)


@numba.njit(cache=True)
def _two_nearest_squared(objects, bounds, reach):  # pragma: no cover - compiled
    """Per pixel, the two smallest squared distances to objects 1..K, each object's exact squared Euclidean
    distance transform computed only within `reach` of its bounding box (infinity beyond).

    Per object: a vertical pass gives each window pixel the squared distance to the object's nearest
    pixel in its column; a horizontal pass takes the lower envelope of the parabolas
    (column offset)^2 + vertical^2 (Felzenszwalb & Huttenlocher 2012), exactly as a full distance
    transform would, since the window holds the whole object.
    """
    height, width = objects.shape
    nearest = np.full((height, width), np.inf)
    second = np.full((height, width), np.inf)
    vertical = np.empty((height, width))
    last = np.empty(width, dtype=np.int64)
    sites = np.empty(width, dtype=np.int64)
    boundaries = np.empty(width + 1)
    for index in range(bounds.shape[0]):
        label = index + 1
        top, bottom = max(bounds[index, 0] - reach, 0), min(bounds[index, 1] + reach, height)
        left, right = max(bounds[index, 2] - reach, 0), min(bounds[index, 3] + reach, width)
        if bounds[index, 1] == 0:
            continue
        # Row by row (memory order), down and then up, remembering each column's last object pixel.
        last[left:right] = -1
        for row in range(top, bottom):
            for column in range(left, right):
                if objects[row, column] == label:
                    last[column] = row
                vertical[row, column] = np.inf if last[column] < 0 else float((row - last[column]) ** 2)
        last[left:right] = -1
        for row in range(bottom - 1, top - 1, -1):
            for column in range(left, right):
                if objects[row, column] == label:
                    last[column] = row
                if last[column] >= 0:
                    vertical[row, column] = min(vertical[row, column], float((last[column] - row) ** 2))
        for row in range(top, bottom):
            # Lower envelope of the parabolas of the columns that have an object pixel:
            # sites[i] is a parabola's column, boundaries[i] where it starts to be the lowest.
            count = 0
            for column in range(left, right):
                f = vertical[row, column]
                if f == np.inf:
                    continue
                crossing = -np.inf
                while count > 0:
                    previous = sites[count - 1]
                    crossing = ((f + column * column) - (vertical[row, previous] + previous * previous)) / (
                        2.0 * (column - previous)
                    )
                    if crossing > boundaries[count - 1]:
                        break
                    count -= 1
                if count == 0:
                    crossing = -np.inf
                sites[count] = column
                boundaries[count] = crossing
                count += 1
            if count == 0:
                continue
            k = 0
            for column in range(left, right):
                while k + 1 < count and boundaries[k + 1] < column:
                    k += 1
                site = sites[k]
                distance = (column - site) ** 2 + vertical[row, site]
                if distance < second[row, column]:
                    if distance < nearest[row, column]:
                        second[row, column] = nearest[row, column]
                        nearest[row, column] = distance
                    else:
                        second[row, column] = distance
    return nearest, second


def weight_maps(
    labels: np.ndarray,
    kind: str,
    *,
    w0: float = WeightmapSettings.w0,
    sigma: float = WeightmapSettings.sigma,
    unannotated: np.ndarray | None = None,
    ignore_margin: int = WeightmapSettings.ignore_margin,
    separation: float = WeightmapSettings.separation,
    sizes: list[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(targets uint8, weights float32), (M, H, W) each, for a (M, H, W) label stack (and its unannotated cells).
    With `sizes` (a padded stack, `unet.io`), each map is computed on its frame's true extent, and the padding
    gets target 0 and weight 0."""
    masks = unannotated if unannotated is not None else [None] * len(labels)
    extents = sizes if sizes is not None else [labels.shape[1:]] * len(labels)
    targets, weights = np.zeros(labels.shape, np.uint8), np.zeros(labels.shape, np.float32)
    for row, (label, mask, (height, width)) in enumerate(zip(labels, masks, extents)):
        true_extent = np.s_[:height, :width]
        maps = weight_map(
            label[true_extent],
            kind,
            w0=w0,
            sigma=sigma,
            unannotated=None if mask is None else mask[true_extent],
            ignore_margin=ignore_margin,
            separation=separation,
        )
        targets[row][true_extent], weights[row][true_extent] = maps.target, maps.weights
    return targets, weights


def plot_weight_map(
    image: np.ndarray, label: np.ndarray, kind: str, maps: WeightMap, path: str | Path, *, title: str = ""
) -> None:
    """The report's version of the paper's Fig. 3: image, ground truth, target with separation border, weights."""
    with figure(path, 1, 4, size=(17, 4.6), title=title, dpi=110) as (drawing, panels):
        _draw_weight_map(drawing, panels[0], image, label, kind, maps)


def _draw_weight_map(drawing, axes, image: np.ndarray, label: np.ndarray, kind: str, maps: WeightMap) -> None:
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("a: image")
    objects, _ = label_objects(label, kind)
    shown = label if kind == "instance" else objects  # ids, for distinct colours per cell
    colours = np.random.default_rng(0).random((int(shown.max()) + 1, 3)) * 0.8 + 0.2
    colours[0] = 0
    axes[1].imshow(colours[shown])
    axes[1].set_title("b: ground truth objects")
    target_rgb = np.repeat(maps.target[..., None].astype(np.float32), 3, axis=-1)
    target_rgb[maps.separation] = (1.0, 0.2, 0.2)
    target_rgb[maps.ignored] = IGNORED_COLOUR
    axes[2].imshow(target_rgb)
    axes[2].set_title(f"c: target\nseparation border in red ({int(maps.separation.sum())} px)")
    ignored = f"\nno weight (gray): unannotated cells, {int(maps.ignored.sum())} px" if maps.ignored.any() else ""
    show_weights(drawing, axes[3], np.ma.masked_array(maps.weights, maps.ignored), f"d: loss weight w(x){ignored}")


def _figure_frame(split) -> int:
    """The figure's default frame: the first with the most unannotated pixels (to show them), else the first."""
    if split.unannotated is None or not split.unannotated.any():
        return split.labelled[0]
    return split.labelled[int(np.argmax(split.unannotated.sum(axis=(1, 2))))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA_SPLIT_DIR", type=Path, help="prepared split (results/data/...)")
    parser.add_argument(
        "out",
        metavar="OUT_DIR",
        type=Path,
        nargs="?",
        help="where target.tif, weights.tif and weightmap.json (the labels they are of) go; without it only "
        "--figure is drawn",
    )
    parser.add_argument("--figure", metavar="PNG", type=Path, help="draw the paper's Fig. 3 for one labelled frame")
    parser.add_argument(
        "--figure-frame",
        type=int,
        help="frame id for --figure (default: the labelled frame with the most unannotated cells, else the first)",
    )
    add_settings_arguments(parser, WeightmapSettings)


def run(args: argparse.Namespace) -> int:
    settings = from_arguments(WeightmapSettings, args)
    if args.out is None and args.figure is None:
        raise UsageError("nothing to do: give OUT_DIR, --figure, or both")
    with claim_outputs((args.out, OUTPUT_FOLDER), (args.figure, "png"), inputs=[args.data]):
        _write_weight_maps(args, settings)
    return 0


def _write_weight_maps(args: argparse.Namespace, settings: WeightmapSettings) -> None:
    split = read_split(args.data)
    if split.labels is None:
        raise DataError(f"{args.data}: the split has no labelled frames, so it has no weight maps")
    options = dataclasses.asdict(settings)
    if args.out is not None:
        targets, weights = weight_maps(
            split.labels, split.kind, unannotated=split.unannotated, sizes=split.labelled_sizes(), **options
        )
        write_weight_maps(args.out, split, targets, weights, data_dir=args.data, settings=options)
    if args.figure is not None:
        frame = _figure_frame(split) if args.figure_frame is None else args.figure_frame
        if frame not in split.labelled:
            raise DataError(f"{args.data}: --figure-frame {frame} is not labelled (labelled: {split.labelled})")
        row = split.labelled.index(frame)
        height, width = split.labelled_sizes()[row]  # the frame without its padding
        label = split.labels[row, :height, :width]
        unannotated = split.unannotated[row, :height, :width] if split.unannotated is not None else None
        maps = weight_map(label, split.kind, unannotated=unannotated, **options)
        title = f"{split.dataset} {split.split}, frame {frame}: w0 = {settings.w0:g}, sigma = {settings.sigma:g} px"
        image = split.labelled_images()[row, :height, :width]
        plot_weight_map(image, label, split.kind, maps, args.figure, title=title)
