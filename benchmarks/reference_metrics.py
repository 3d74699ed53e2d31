"""A plain-Python implementation of the ISBI 2012 metrics, step by step as Fiji's code runs them.

The baseline of `bench_metrics.py` and the oracle the tests hold `unet.metrics`
to. It is written independently of the package: nested loops over lists,
Fiji's pass structure (each warping pass re-collects and re-sorts the
mismatches), a breadth-first labelling, the simple-point test by counting
components in the 3x3 neighbourhood, and a dictionary contingency table. Not
part of the package: it is far too slow to run the pipeline on.

Images are lists of rows; `prob[y][x]` is a float32 probability (a Python
float holding a float32 value), `cells[y][x]` a bool.
"""

from __future__ import annotations

import math
import struct
from collections import deque

FOUR = ((0, -1), (-1, 0), (0, 1), (1, 0))  # (dy, dx) in Fiji's Neighborhood2DC4 order
EIGHT = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def thresholds(first, last, step=0.1):
    out, th = [], first
    while th <= last:
        out.append(th)
        th += step
    return out


def to_float32(value):
    return struct.unpack("f", struct.pack("f", value))[0]


def label4(cells):
    """4-connected components of a binary image (lists of rows); 0 = background."""
    height, width = len(cells), len(cells[0])
    labels = [[0] * width for _ in range(height)]
    n = 0
    for y in range(height):
        for x in range(width):
            if cells[y][x] and not labels[y][x]:
                n += 1
                labels[y][x] = n
                queue = deque([(y, x)])
                while queue:
                    v, u = queue.popleft()
                    for dy, dx in FOUR:
                        b, a = v + dy, u + dx
                        if 0 <= b < height and 0 <= a < width and cells[b][a] and not labels[b][a]:
                            labels[b][a] = n
                            queue.append((b, a))
    return labels


def binarise(prob, th):
    return [[p > th for p in row] for row in prob]


def f_score(tp, fp, fn):
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


# Pixel error


def pixel_f_score(probs, cells, th):
    tp = fp = fn = 0
    for prob, truth in zip(probs, cells):
        for prow, trow in zip(prob, truth):
            for p, t in zip(prow, trow):
                if p > th:
                    tp, fp = tp + t, fp + (not t)
                else:
                    fn += t
    return f_score(tp, fp, fn)


# Rand errors


def contingency(a, b):
    table = {}
    for arow, brow in zip(a, b):
        for i, j in zip(arow, brow):
            table[i, j] = table.get((i, j), 0) + 1
    return table


def restricted(table):
    """Ground-truth cells only: their sizes, the proposal's object sizes within them, the overlaps, the singletons."""
    rows, columns, overlaps, singletons = {}, {}, {}, 0
    for (i, j), c in table.items():
        if i == 0:
            continue
        rows[i] = rows.get(i, 0) + c
        if j == 0:
            singletons += c
        else:
            columns[j] = columns.get(j, 0) + c
            overlaps[i, j] = c
    return rows, columns, overlaps, singletons


def rand_counts(truth, proposal, variant):
    """(tp, fp, fn) of one slice; variant "n2", "pairs" or "unrestricted"."""
    table = contingency(truth, proposal)
    rows, columns = {}, {}
    if variant == "unrestricted":
        for (i, j), c in table.items():
            rows[i] = rows.get(i, 0) + c
            columns[j] = columns.get(j, 0) + c
        tp = sum(c * (c - 1) // 2 for c in table.values())
        return (
            tp,
            sum(c * (c - 1) // 2 for c in columns.values()) - tp,
            sum(c * (c - 1) // 2 for c in rows.values()) - tp,
        )
    rows, columns, overlaps, singletons = restricted(table)
    if variant == "n2":
        tp = sum(c * c for c in overlaps.values()) + singletons
        return (tp, sum(c * c for c in columns.values()) + singletons - tp, sum(c * c for c in rows.values()) - tp)
    tp = sum(c * (c - 1) // 2 for c in overlaps.values())
    return (tp, sum(c * (c - 1) // 2 for c in columns.values()) - tp, sum(c * (c - 1) // 2 for c in rows.values()) - tp)


def rand_f_score(probs, cells, th, variant):
    tp = fp = fn = 0
    for prob, truth in zip(probs, cells):
        counts = rand_counts(label4(truth), label4(binarise(prob, th)), variant)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    return f_score(tp, fp, fn)


# Warping error


def is_simple(image, y, x):
    """Fiji's simple-point test for 4-connected cells and 8-connected membranes, by counting in the 3x3 patch."""
    patch = [[image[y + dy][x + dx] for dx in (-1, 0, 1)] for dy in (-1, 0, 1)]
    patch[1][1] = 0
    cell_parts = label4(patch)
    touching = {cell_parts[1 + dy][1 + dx] for dy, dx in FOUR} - {0}
    membrane = [[not patch[b][a] and (b, a) != (1, 1) for a in range(3)] for b in range(3)]
    seen, parts = set(), 0
    for b in range(3):
        for a in range(3):
            if membrane[b][a] and (b, a) not in seen:
                parts += 1
                stack = [(b, a)]
                seen.add((b, a))
                while stack:
                    v, u = stack.pop()
                    for dy, dx in EIGHT:
                        q = (v + dy, u + dx)
                        if 0 <= q[0] < 3 and 0 <= q[1] < 3 and membrane[q[0]][q[1]] and q not in seen:
                            seen.add(q)
                            stack.append(q)
    return len(touching) == 1 and parts == 1


def warp(truth, prob, th):
    """Fiji's simplePointWarp2d: the warped ground truth and the list of mismatches left, (x, y) pairs."""
    height, width = len(truth), len(truth[0])
    source = [[0] * (width + 2)] + [[0] + [int(t) for t in row] + [0] for row in truth] + [[0] * (width + 2)]
    target = [[0] * (width + 2)] + [[0] + [int(p > th) for p in row] + [0] for row in prob] + [[0] * (width + 2)]
    before, mismatches = None, []
    while True:
        current = [(x, y) for x in range(1, width + 1) for y in range(1, height + 1) if source[y][x] != target[y][x]]
        if not current or len(current) == before:
            mismatches = current
            break
        before = len(current)
        current.sort(key=lambda q: -to_float32(abs(prob[q[1] - 1][q[0] - 1] - th)))  # stable, descending
        for x, y in current:
            if is_simple(source, y, x):
                source[y][x] = 1 - source[y][x]
    warped = [row[1:-1] for row in source[1:-1]]
    return warped, [(x - 1, y - 1) for x, y in mismatches]


def neighbour_ids(labels, x, y):
    height, width = len(labels), len(labels[0])
    return {labels[y + dy][x + dx] for dy, dx in EIGHT if 0 <= y + dy < height and 0 <= x + dx < width}


def classify(warped, mismatches, radius):
    """Fiji's classifyMismatches2d; returns (splits, mergers)."""
    height, width = len(warped), len(warped[0])
    components = label4(warped)
    splits = mergers = 0
    for x, y in mismatches:
        ids = neighbour_ids(components, x, y)
        cell = components[y][x] != 0
        if len(ids) > 2:
            splits, mergers = splits + cell, mergers + (not cell)
        elif len(ids) == 2 and cell:
            if 1 <= radius <= width and radius <= height:
                image = [
                    [
                        warped[j][i] if 0 <= j < height and 0 <= i < width else 0
                        for i in range(x - radius, x + radius + 1)
                    ]
                    for j in range(y - radius, y + radius + 1)
                ]
                cx = cy = radius
            else:
                image = [row[:] for row in warped]
                cx, cy = x, y
            image[cy][cx] = 0
            splits += len(neighbour_ids(label4(image), cx, cy)) > 2
    return splits, mergers


def warping_counts(probs, cells, th, radius=20):
    splits = mergers = 0
    for prob, truth in zip(probs, cells):
        warped, mismatches = warp(truth, prob, th)
        s, m = classify(warped, mismatches, radius)
        splits, mergers = splits + s, mergers + m
    return splits, mergers


# V_rand and V_info after thinning


def watershed(relief):
    """Fiji's WatershedTransform2D (4-connected) of a uint8 relief given as lists of rows."""
    MASK, WSHED, INIT, INQUEUE = -2, 0, -1, -3
    height, width = len(relief), len(relief[0])
    pixels = sorted(((relief[y][x], x, y) for x in range(width) for y in range(height)), key=lambda r: r[0])
    labels = [[INIT] * width for _ in range(height)]
    current, flag, start = 0, False, 0

    def neighbours(y, x):
        return [(y + dy, x + dx) for dy, dx in FOUR if 0 <= y + dy < height and 0 <= x + dx < width]

    while start < len(pixels):
        level = pixels[start][0]
        stop = start
        while stop < len(pixels) and pixels[stop][0] == level:
            stop += 1
        fifo = deque()
        for _, x, y in pixels[start:stop]:
            labels[y][x] = MASK
            if any(labels[v][u] >= WSHED for v, u in neighbours(y, x)):
                fifo.append((y, x))
                labels[y][x] = INQUEUE
        while fifo:
            y, x = fifo.popleft()
            for v, u in neighbours(y, x):
                if labels[v][u] > 0:
                    if labels[y][x] == INQUEUE or (labels[y][x] == WSHED and flag):
                        labels[y][x] = labels[v][u]
                    elif labels[y][x] > 0 and labels[y][x] != labels[v][u]:
                        labels[y][x], flag = WSHED, False
                elif labels[v][u] == WSHED:
                    if labels[y][x] == INQUEUE:
                        labels[y][x], flag = WSHED, True
                elif labels[v][u] == MASK:
                    labels[v][u] = INQUEUE
                    fifo.append((v, u))
        for _, x, y in pixels[start:stop]:
            if labels[y][x] == MASK:
                current += 1
                labels[y][x] = current
                fifo = deque([(y, x)])
                while fifo:
                    b, a = fifo.popleft()
                    for v, u in neighbours(b, a):
                        if labels[v][u] == MASK:
                            labels[v][u] = current
                            fifo.append((v, u))
        start = stop
    return [[label if label > 0 else 0 for label in row] for row in labels]  # lines and INIT -> 0


def thinned_scores(prob, truth, th):
    """(V_rand, V_info) of one slice at one threshold."""
    regions = watershed([[0 if p > th else 255 for p in row] for row in prob])
    table = contingency(label4(truth), regions)
    n = sum(c for (i, _), c in table.items() if i)
    if n == 0:
        return math.nan, math.nan
    v_rand = f_score(*rand_counts(label4(truth), regions, "n2"))
    rows, columns, overlaps, singletons = restricted(table)
    joint = list(overlaps.values()) + [1] * singletons
    entropy = lambda sizes: -sum(s / n * math.log(s / n) for s in sizes)  # noqa: E731
    h_a, h_b, h_ab = entropy(rows.values()), entropy(list(columns.values()) + [1] * singletons), entropy(joint)
    if h_b == 0:
        precision, recall = 1.0, 0.0
    elif h_a == 0:
        precision, recall = 0.0, 1.0
    else:
        mutual = h_a + h_b - h_ab
        precision, recall = mutual / h_a, mutual / h_b
    v_info = 2 * precision * recall / (precision + recall) if precision + recall else math.nan
    return v_rand, v_info


RAND_VARIANTS = {"n2": "rand_error", "pairs": "rand_error_pairs", "unrestricted": "rand_error_unrestricted"}


# All of them


def isbi_per_threshold(probs, cells, rand_thresholds, warping_thresholds, radius=20):
    """Per-threshold values of every ISBI metric, keyed like `unet.metrics` (rounded thresholds)."""
    n_pixels = sum(len(t) * len(t[0]) for t in cells)
    out = {
        name: {}
        for name in (
            "pixel_error",
            "rand_error",
            "rand_error_pairs",
            "rand_error_unrestricted",
            "warping_error",
            "vrand",
            "vinfo",
        )
    }
    for th in rand_thresholds:
        key = round(th, 6)
        out["pixel_error"][key] = 1 - pixel_f_score(probs, cells, th)
        for variant, name in RAND_VARIANTS.items():
            out[name][key] = 1 - rand_f_score(probs, cells, th, variant)
        scores = [thinned_scores(p, t, th) for p, t in zip(probs, cells)]
        out["vrand"][key] = sum(s[0] for s in scores) / len(scores)
        out["vinfo"][key] = sum(s[1] for s in scores) / len(scores)
    for th in warping_thresholds:
        out["warping_error"][round(th, 6)] = sum(warping_counts(probs, cells, th, radius)) / n_pixels
    return out
