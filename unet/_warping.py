"""Compiled kernels behind `unet.metrics`: simple-point warping, split/merger classification, watershed thinning.

These loops are sequential by nature (each flip changes what the next pixel
sees, each queue step depends on the previous one), so they run under numba;
`unet.metrics` prepares their inputs with NumPy and documents the rules they
follow. Every kernel reproduces the processing order of Fiji's
`trainableSegmentation` code, because that order decides the results.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import ndimage

# Fiji's Neighborhood2DC4 order (x-1, y), (x, y-1), (x+1, y), (x, y+1), as (dy, dx).
_NEIGHBOURS_4 = np.array([[0, -1], [-1, 0], [0, 1], [1, 0]], dtype=np.int64)
_NEIGHBOURS_8 = np.array([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], dtype=np.int64)

# Watershed label states of Fiji's WatershedTransform2D (labels of basins are > 0).
_MASK, _WSHED, _INIT, _INQUEUE = -2, 0, -1, -3
_OUTSIDE = -4  # the frame around the image: matches none of the states


def patch_code(patch: np.ndarray) -> int:
    """The index of a binary 3x3 patch in `SIMPLE_POINT_TABLE`: bit 3*row + column is the pixel at (row, column)."""
    return int(np.dot(np.asarray(patch, dtype=np.int64).ravel(), 1 << np.arange(9)))


def _simple_point_table() -> np.ndarray:
    """table[code] = 1 where flipping the centre of 3x3 patch `code` keeps the topology.

    Simple for (4, 8) connectivity: the foreground (cells) among the 8 neighbours
    forms exactly one 4-connected component 4-adjacent to the centre, and the
    background (membranes) among them exactly one 8-connected component. Fiji
    decides the same with Bertrand & Malandain's 3D formulas on the patch as the
    middle plane of an empty 3x3x3 cube; the two agree on all 512 patches.
    """
    four = ndimage.generate_binary_structure(2, 1)
    table = np.zeros(512, dtype=np.uint8)
    for code in range(512):
        patch = ((code >> np.arange(9)) & 1).reshape(3, 3).astype(bool)
        ring = patch.copy()
        ring[1, 1] = False
        foreground, _ = ndimage.label(ring, four)
        touching = {foreground[1, 0], foreground[0, 1], foreground[1, 2], foreground[2, 1]} - {0}
        background = ~patch
        background[1, 1] = False
        _, n_background = ndimage.label(background, np.ones((3, 3), dtype=bool))
        table[code] = len(touching) == 1 and n_background == 1
    return table


SIMPLE_POINT_TABLE = _simple_point_table()


@njit(cache=True)
def warp(source, target, order, table):
    """Flip mismatching simple points of `source` towards `target` in place; return the mismatches left.

    `source`, `target`: uint8 0/1 images padded by one background pixel on each
    side; `order`: flat indices (into the padded image) of the initial
    mismatches in processing order. Passes over the remaining mismatches repeat
    until none is left or a pass flips nothing (Fiji: until the count stops
    changing). Pixels that match never become mismatches, so each pass visits
    the survivors of the last one in the same relative order, exactly as Fiji's
    re-sorted list of the current mismatches.
    """
    width = source.shape[1]
    flat_source = source.ravel()
    flat_target = target.ravel()
    pending = order.copy()
    n_pending = pending.size
    n_before = -1
    while n_pending > 0 and n_pending != n_before:
        n_before = n_pending
        for k in range(n_pending):
            i = pending[k]
            code = 0
            bit = 0
            for row_start in (i - width - 1, i - 1, i + width - 1):
                for j in range(row_start, row_start + 3):
                    code |= np.int64(flat_source[j]) << bit
                    bit += 1
            if table[code]:
                flat_source[i] = 1 - flat_source[i]
        kept = 0
        for k in range(n_pending):
            i = pending[k]
            if flat_source[i] != flat_target[i]:
                pending[kept] = i
                kept += 1
        n_pending = kept
    return pending[:n_pending]


@njit(cache=True)
def count_splits_and_mergers(warped, components, rows, columns, radius):
    """Fiji's `classifyMismatches2d`, counting only the mismatches it calls SPLIT and MERGE.

    `warped`: uint8 0/1 warped ground truth (unpadded); `components`: its
    4-connected components (0 = background); (`rows`, `columns`): the remaining
    mismatches. The ids among a mismatch's 8 neighbours (those inside the image,
    background 0 included) decide: more than two ids is a merger (background
    centre) or a split (cell centre); exactly two around a cell centre is
    re-checked with the centre set to background inside a (2 radius + 1)^2
    window (the whole image when `radius` < 1 or exceeds the image) and is a
    split when the neighbours then show more than two ids. Returns (splits, mergers).
    """
    height, width = warped.shape
    use_window = 1 <= radius <= width and radius <= height
    splits = 0
    mergers = 0
    ids = np.empty(8, dtype=np.int64)
    for m in range(rows.size):
        y = rows[m]
        x = columns[m]
        n_ids = 0
        for d in range(8):
            v = y + _NEIGHBOURS_8[d, 0]
            u = x + _NEIGHBOURS_8[d, 1]
            if 0 <= v < height and 0 <= u < width:
                label = components[v, u]
                seen = False
                for k in range(n_ids):
                    if ids[k] == label:
                        seen = True
                if not seen:
                    ids[n_ids] = label
                    n_ids += 1
        centre_is_cell = components[y, x] != 0
        if n_ids > 2:
            if centre_is_cell:
                splits += 1
            else:
                mergers += 1
        elif n_ids == 2 and centre_is_cell:
            if use_window:
                ids_after = _ids_around_removed_cell_in_window(warped, y, x, radius)
            else:
                ids_after = _ids_around_removed_cell_in_image(warped, y, x)
            if ids_after > 2:
                splits += 1
    return splits, mergers


@njit(cache=True)
def _ids_around_removed_cell_in_window(warped, y, x, radius):
    """Distinct 4-connected ids (background 0 included) among the 8 neighbours of (y, x) once it is background.

    Only the (2 radius + 1)^2 window around (y, x) is relabelled; pixels of the
    window outside the image are background.
    """
    height, width = warped.shape
    size = 2 * radius + 1
    window = np.zeros((size, size), dtype=np.uint8)
    for a in range(size):
        v = y - radius + a
        if 0 <= v < height:
            for b in range(size):
                u = x - radius + b
                if 0 <= u < width:
                    window[a, b] = warped[v, u]
    window[radius, radius] = 0
    return _ids_around(window, radius, radius)


@njit(cache=True)
def _ids_around_removed_cell_in_image(warped, y, x):
    image = warped.copy()
    image[y, x] = 0
    return _ids_around(image, y, x)


@njit(cache=True)
def _ids_around(image, y, x):
    """Distinct ids among the in-image 8 neighbours of (y, x): background once, each 4-connected cell region once."""
    height, width = image.shape
    region = np.zeros((height, width), dtype=np.int32)
    queue = np.empty(height * width, dtype=np.int64)
    has_background = False
    n_regions = 0
    for d in range(8):
        v = y + _NEIGHBOURS_8[d, 0]
        u = x + _NEIGHBOURS_8[d, 1]
        if not (0 <= v < height and 0 <= u < width):
            continue
        if image[v, u] == 0:
            has_background = True
        elif region[v, u] == 0:
            n_regions += 1
            _flood(image, region, queue, v, u, n_regions)
    return n_regions + (1 if has_background else 0)


@njit(cache=True)
def _flood(image, region, queue, y, x, label):
    """Give `label` to the 4-connected cell region of `image` that holds (y, x)."""
    height, width = image.shape
    region[y, x] = label
    queue[0] = y * width + x
    head, tail = 0, 1
    while head < tail:
        i = queue[head]
        head += 1
        for d in range(4):
            v = i // width + _NEIGHBOURS_4[d, 0]
            u = i % width + _NEIGHBOURS_4[d, 1]
            if 0 <= v < height and 0 <= u < width and image[v, u] != 0 and region[v, u] == 0:
                region[v, u] = label
                queue[tail] = v * width + u
                tail += 1


@njit(cache=True)
def watershed_lines(image):
    """Fiji's WatershedTransform2D (Vincent & Soille flooding, 4-connected) of a uint8 `image`.

    Pixels are flooded level by level, each level in Fiji's order (column by
    column: x outer, y inner); neighbours are visited in Fiji's order (x-1, y),
    (x, y-1), (x+1, y), (x, y+1). Returns int32 basin labels (> 0) with 1-pixel
    watershed lines (0). The `flag` that lets a watershed pixel join a basin
    carries over from pixel to pixel as in the original; it decides where lines
    fall on plateaus.
    """
    # Work on the transpose framed by _OUTSIDE, so that Fiji's column-major order is the memory order
    # and neighbours are flat offsets: (x-1, y), (x, y-1), (x+1, y), (x, y+1) become -stride, -1, +stride, +1.
    columns = image.T
    width, height = columns.shape
    stride = height + 2
    labels = np.full((width + 2) * stride, _OUTSIDE, dtype=np.int32)
    values = np.zeros((width + 2) * stride, dtype=np.uint8)
    for x in range(width):
        for y in range(height):
            labels[(x + 1) * stride + y + 1] = _INIT
            values[(x + 1) * stride + y + 1] = columns[x, y]
    offsets = np.array([-stride, -1, stride, 1], dtype=np.int32)
    order = _sorted_by_value(values, labels)
    queue = np.empty(order.size, dtype=np.int32)
    n_labels = 0
    flag = False
    start = 0
    while start < order.size:
        level = values[order[start]]
        stop = start
        while stop < order.size and values[order[stop]] == level:
            stop += 1
        tail = 0
        for k in range(start, stop):
            i = order[k]
            labels[i] = _MASK
            for d in range(4):
                if labels[i + offsets[d]] >= _WSHED:
                    queue[tail] = i
                    tail += 1
                    labels[i] = _INQUEUE
                    break
        head = 0
        while head < tail:
            i = queue[head]
            head += 1
            for d in range(4):
                neighbour = labels[i + offsets[d]]
                if neighbour > 0:
                    if labels[i] == _INQUEUE or (labels[i] == _WSHED and flag):
                        labels[i] = neighbour
                    elif labels[i] > 0 and labels[i] != neighbour:
                        labels[i] = _WSHED
                        flag = False
                elif neighbour == _WSHED:
                    if labels[i] == _INQUEUE:
                        labels[i] = _WSHED
                        flag = True
                elif neighbour == _MASK:
                    labels[i + offsets[d]] = _INQUEUE
                    queue[tail] = i + offsets[d]
                    tail += 1
        for k in range(start, stop):
            i = order[k]
            if labels[i] != _MASK:
                continue
            n_labels += 1
            labels[i] = n_labels
            queue[0] = i
            head, tail = 0, 1
            while head < tail:
                j = queue[head]
                head += 1
                for d in range(4):
                    if labels[j + offsets[d]] == _MASK:
                        labels[j + offsets[d]] = n_labels
                        queue[tail] = j + offsets[d]
                        tail += 1
        start = stop
    result = np.empty((height, width), dtype=np.int32)
    for x in range(width):
        for y in range(height):
            result[y, x] = max(labels[(x + 1) * stride + y + 1], 0)  # watershed lines (0) and INIT (-1) -> 0
    return result


@njit(cache=True)
def _sorted_by_value(values, labels):
    """Flat indices of the pixels (labels != _OUTSIDE, values 0..255) by value, ties in memory order (stable)."""
    starts = np.zeros(257, dtype=np.int64)
    for i in range(values.size):
        if labels[i] != _OUTSIDE:
            starts[values[i] + 1] += 1
    for level in range(256):
        starts[level + 1] += starts[level]
    order = np.empty(starts[256], dtype=np.int32)
    for i in range(values.size):
        if labels[i] != _OUTSIDE:
            order[starts[values[i]]] = i
            starts[values[i]] += 1
    return order
