"""The challenges' metrics: ISBI 2012 and the Cell Tracking Challenge SEG.

ISBI 2012, as the challenge's evaluation computes them in Fiji (the package
`trainableSegmentation.metrics` of the Trainable Segmentation plugin, current
sources), step by step where the order of steps decides the result:

- `prob`: cell probabilities (N, H, W) in [0, 1], 1 = cell; held as float32
  like the 32-bit TIFF Fiji reads, and widened to float64 before every
  comparison with a threshold (Fiji compares float pixels with double
  thresholds). Cell where p > th.
- `labels`: the ground truth (N, H, W), cell where > 0 (0/1 or 0/255).
- Slices of different sizes (a folder data set's images, `unet.folder`): `prob` and `labels` may be
  lists of 2D slices, paired by position; the counts add up over them as over a stack's slices.
- Thresholds as Fiji builds them, by adding 0.1 in double precision
  (0.30000000000000004, ..., 0.9999999999999999): 0.0..1.0 for the pixel and
  Rand errors and V_rand/V_info, 0.0..0.9 for the warping error. Results key
  them by their rounded value (0.3, ...).
- Each metric returns {"value", "threshold", "per_threshold": {th: value}}:
  the best value over the thresholds (the first threshold reaching it) and every
  per-threshold value.

Errors built from F-scores use Fiji's ClassificationStatistics: precision = 1
when there are no false positives, recall = 1 when there are no false
negatives, F = 0 when both are 0. Pair counts are exact integers here; Fiji
forms the N^2 counts from fractions, so its values may differ in the last
bits (relative 1e-15).

Cell Tracking Challenge: `ctc_seg` is the official SEG measure,
`foreground_iou` the plain pixel-level IoU; both compare instance masks frame
by frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unet import _warping
from unet.errors import UsageError

RAND_NORMALISATIONS = ("n2", "pairs")
WARPING_RADIUS = 20
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def fiji_thresholds(first: float, last: float, step: float = 0.1) -> list[float]:
    """Fiji's `for (th = first; th <= last; th += step)`: accumulated in double precision, rounding included."""
    thresholds, th = [], first
    while th <= last:
        thresholds.append(th)
        th += step
    return thresholds


THRESHOLDS = fiji_thresholds(0.0, 1.0)  # pixel error, Rand errors, V_rand, V_info
WARPING_THRESHOLDS = fiji_thresholds(0.0, 0.9)


# ---------------------------------------------------------------------------------------------------------------------
# ISBI 2012


def isbi_metrics(
    prob,
    labels,
    *,
    rand_normalisation: str = "n2",
    radius: int = WARPING_RADIUS,
    thresholds: Sequence[float] = THRESHOLDS,
    warping_thresholds: Sequence[float] = WARPING_THRESHOLDS,
) -> dict:
    """All ISBI 2012 metrics, sharing the work they have in common.

    Keys: `warping_error`, `rand_error` (foreground-restricted, the challenge's),
    `rand_error_unrestricted` (the standard Rand index Fiji's
    `getRandIndexMaximalFScore` computes since January 2015), `pixel_error`,
    `vrand`, `vinfo`. The thresholds default to the challenge's.
    """
    prob, cells = _checked(prob, labels)
    normalisation = _normalisation_key(rand_normalisation)
    rand = _rand_f_scores(prob, cells, thresholds)
    thinned = _thinned_scores(prob, cells, thresholds)
    return {
        "warping_error": _warping_error(prob, cells, radius, warping_thresholds),
        "rand_error": _lowest(1.0 - rand[normalisation], thresholds),
        "rand_error_unrestricted": _lowest(1.0 - rand["unrestricted"], thresholds),
        "pixel_error": _lowest(1.0 - _pixel_f_scores(prob, cells, thresholds), thresholds),
        "vrand": _highest(thinned["vrand"], thresholds),
        "vinfo": _highest(thinned["vinfo"], thresholds),
    }


def pixel_error(prob, labels) -> dict:
    """1 - F-score of cell pixels, TP/FP/FN summed over all slices (Fiji `PixelError.getPixelErrorMaximalFScore`).

    It is not the fraction of wrong pixels.
    """
    prob, cells = _checked(prob, labels)
    return _lowest(1.0 - _pixel_f_scores(prob, cells, THRESHOLDS), THRESHOLDS)


def rand_error(prob, labels, normalisation: str = "n2") -> dict:
    """The challenge's Rand error: 1 - F-score of the foreground-restricted Rand index.

    Both images are split into 4-connected cell components; pixels that are
    membrane in the ground truth are left out, proposal-membrane pixels count as
    singletons; counts are summed over slices before the F-score. With a_i the
    ground-truth object sizes, b_j the proposal object sizes (within the ground
    truth's cells), c_ij their overlaps and c_0 the ground-truth cell pixels the
    proposal calls membrane:

    - "n2" (Fiji `getForegroundRestrictedRandIndexMaximalFScore`, since January
      2015; default): TP = sum c_ij^2 + c_0, precision = TP / (sum b_j^2 + c_0),
      recall = TP / sum a_i^2.
    - "pairs" (Fiji's `getRandIndexMaximalFScore` until January 2015): the same
      with unordered pairs, TP = sum C(c_ij, 2), precision = TP / sum C(b_j, 2),
      recall = TP / sum C(a_i, 2).

    Which normalisation scored the leaderboard of March 2015 (the paper's
    Table 1) is not known; "n2" is current Fiji.
    """
    prob, cells = _checked(prob, labels)
    f_scores = _rand_f_scores(prob, cells, THRESHOLDS)[_normalisation_key(normalisation)]
    return _lowest(1.0 - f_scores, THRESHOLDS)


def rand_error_unrestricted(prob, labels) -> dict:
    """1 - F-score of the standard Rand index (Fiji's `getRandIndexMaximalFScore` since January 2015).

    All pixels count; each image's membrane pixels form one cluster, each
    4-connected cell component another; unordered pairs summed over slices.
    """
    prob, cells = _checked(prob, labels)
    return _lowest(1.0 - _rand_f_scores(prob, cells, THRESHOLDS)["unrestricted"], THRESHOLDS)


def warping_error(prob, labels, radius: int = WARPING_RADIUS) -> dict:
    """Fiji's minimum splits-and-mergers warping error (`getMinimumSplitsAndMergersErrorValue(0, 0.9, 0.1, false, 20)`).

    Per threshold and slice the binary ground truth is warped towards the
    binarised proposal by simple-point flips (4-connected cells, 8-connected
    membranes; the image is framed by membrane): in passes, the current
    mismatches are visited by decreasing |p - th| (rounded to float32 as Fiji
    does; ties in column-major order, Fiji's list order) and each one that is a
    simple point of the current warped image is flipped; passes repeat until no
    mismatch is left or one pass flips nothing. This is the current Fiji order
    (an exact float comparison, revised in June 2015; the older comparator
    truncated differences below 1e-4). The remaining mismatches are classified
    from the 4-connected components of the warped ground truth
    (`_warping.count_splits_and_mergers`); only splits and mergers count.

    Value: (split + merger pixels) / (all pixels of all slices), minimum over
    0.0..0.9. The result also holds `counts`: {th: {"splits", "mergers"}}.
    """
    prob, cells = _checked(prob, labels)
    return _warping_error(prob, cells, radius, WARPING_THRESHOLDS)


def vrand_vinfo(prob, labels) -> dict:
    """{"vrand", "vinfo"}: the 2013+ leaderboard's scores after border thinning (higher is better).

    Per threshold and slice the proposal's membranes are thinned to 1-pixel
    lines by Fiji's classic watershed (`WatershedTransform2D`, 4-connected, the
    binary proposal with membrane = 255 as relief); line pixels count as
    singletons, ground-truth membrane pixels are left out.

    - V_info (Fiji `VariationOfInformation.getMaximalVInfoAfterThinning`): the
      F-score of I(A;B)/H(A) and I(A;B)/H(B) (A ground truth, B proposal; 0 and
      1 when H(A) = 0, 1 and 0 when H(B) = 0).
    - V_rand: sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2), i.e. the F-score of
      the N^2 Rand precision and recall with the same singleton terms as
      `rand_error`. Fiji's `RandError.getMaximalVRandAfterThinning` was not in
      the sources we could read; this follows Arganda-Carreras et
      al. 2015, with the thinning, singletons and per-slice averaging of the
      V_info code beside it.

    Both are averaged over slices (a slice whose score is undefined makes its
    threshold's value NaN, skipped when choosing the best, as Fiji's comparison
    skips it); the best is the maximum over 0.0..1.0.
    """
    prob, cells = _checked(prob, labels)
    thinned = _thinned_scores(prob, cells, THRESHOLDS)
    return {"vrand": _highest(thinned["vrand"], THRESHOLDS), "vinfo": _highest(thinned["vinfo"], THRESHOLDS)}


def _checked(prob, labels) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (N, H, W) probabilities, bool (N, H, W) cells) after checking shapes and values; for lists of
    slices (which may differ in size), lists of float32 and bool 2D slices."""
    if isinstance(prob, (list, tuple)):
        if len(prob) != len(labels):
            raise UsageError(f"{len(prob)} probability slices but {len(labels)} label slices")
        pairs = [_checked(p, truth) for p, truth in zip(prob, labels)]
        return [p[0] for p, _ in pairs], [cells[0] for _, cells in pairs]
    prob, labels = np.asarray(prob), np.asarray(labels)
    if prob.ndim == 2:
        prob = prob[None]
    if labels.ndim == 2:
        labels = labels[None]
    if prob.ndim != 3:
        raise UsageError(f"probabilities must be a (N, H, W) stack or one image, found shape {prob.shape}")
    if prob.shape != labels.shape:
        raise UsageError(f"probabilities have shape {prob.shape} but labels have shape {labels.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise UsageError(f"probabilities must be floating point in [0, 1], found dtype {prob.dtype}")
    prob = prob.astype(np.float32, copy=False)
    low, high = float(np.min(prob)), float(np.max(prob))
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise UsageError(f"probabilities must lie in [0, 1] (1 = cell), found values from {low} to {high}")
    return prob, labels > 0


def _slices(prob, cells):
    """Per slice: the ground truth's 4-connected components and the probabilities widened to float64.

    Cell where p > th is then compared in double precision, as Fiji compares its
    float pixels with double thresholds.
    """
    for truth_cells, p in zip(cells, prob):
        yield _components(truth_cells), p.astype(np.float64)


def _components(cells: np.ndarray) -> np.ndarray:
    return ndimage.label(cells, _FOUR_CONNECTED)[0]


def _normalisation_key(normalisation: str) -> str:
    if normalisation not in RAND_NORMALISATIONS:
        raise UsageError(f"Rand normalisation must be one of {RAND_NORMALISATIONS}, found {normalisation!r}")
    return normalisation


def _f_score(tp, fp, fn):
    """Fiji's ClassificationStatistics F-score, elementwise over thresholds."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(fp == 0, 1.0, tp / (tp + fp))
        recall = np.where(fn == 0, 1.0, tp / (tp + fn))
        f_score = 2 * precision * recall / (precision + recall)
    return np.where(precision + recall > 0, f_score, 0.0)


def _pixel_f_scores(prob, cells, thresholds) -> np.ndarray:
    """F-score of the cell pixels at each threshold, counts summed over all slices."""
    # Pixel i is a cell at threshold k exactly when k < level[i], the number of thresholds below p[i].
    level = np.searchsorted(np.asarray(thresholds), _flat(prob).astype(np.float64), side="left")
    truth = _flat(cells)
    at_least = lambda counts: np.cumsum(counts[::-1])[::-1][1:]  # noqa: E731  pixels with level > k
    n_levels = len(thresholds) + 1
    tp = at_least(np.bincount(level[truth], minlength=n_levels))
    fp = at_least(np.bincount(level[~truth], minlength=n_levels))
    fn = int(truth.sum()) - tp
    return _f_score(tp, fp, fn)


def _flat(slices) -> np.ndarray:
    """The pixels of a stack, or of a list of slices, in one flat array."""
    return slices.ravel() if isinstance(slices, np.ndarray) else np.concatenate([s.ravel() for s in slices])


def _rand_f_scores(prob, cells, thresholds) -> dict[str, np.ndarray]:
    """F-scores per threshold of the foreground-restricted ("n2", "pairs") and standard ("unrestricted") Rand index."""
    names = ("n2", "pairs", "unrestricted")
    totals = {name: np.zeros((len(thresholds), 3), dtype=np.int64) for name in names}  # tp, fp, fn
    for truth, p in _slices(prob, cells):
        for k, th in enumerate(thresholds):
            for name, counts in _rand_counts(truth, _components(p > th)).items():
                totals[name][k] += counts
    return {name: _f_score(*totals[name].T) for name in names}


def _rand_counts(truth: np.ndarray, proposal: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """(TP, FP, FN) of one slice for the three Rand variants, from the contingency table of the two labelings."""
    table = _contingency(truth, proposal)  # rows: truth ids (0 = membrane), columns: proposal ids (0 = membrane)
    inside = table[1:]  # ground-truth cells only
    overlaps = inside[:, 1:]
    truth_sizes = inside.sum(axis=1)
    proposal_sizes = overlaps.sum(axis=0)
    pairs = lambda a: int(np.sum(a.astype(np.int64) * (a - 1)) // 2)  # noqa: E731
    tp, tp_all = pairs(overlaps), pairs(table)
    return {
        "n2": _rand_counts_n2(table),
        "pairs": (tp, pairs(proposal_sizes) - tp, pairs(truth_sizes) - tp),
        "unrestricted": (tp_all, pairs(table.sum(axis=0)) - tp_all, pairs(table.sum(axis=1)) - tp_all),
    }


def _rand_counts_n2(table: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) with N^2 normalisation; proposal-membrane pixels inside ground-truth cells are singletons."""
    inside = table[1:].astype(np.int64)
    singletons = int(inside[:, 0].sum())
    tp = int(np.sum(inside[:, 1:] ** 2)) + singletons
    return tp, int(np.sum(inside[:, 1:].sum(axis=0) ** 2)) + singletons - tp, int(np.sum(inside.sum(axis=1) ** 2)) - tp


def _contingency(truth: np.ndarray, proposal: np.ndarray) -> np.ndarray:
    """Pixel counts per (truth id, proposal id); ids are 0..max of each labeling."""
    n_proposal = int(proposal.max()) + 1
    index = truth.ravel().astype(np.int64) * n_proposal + proposal.ravel()
    return np.bincount(index, minlength=(int(truth.max()) + 1) * n_proposal).reshape(-1, n_proposal)


def _thinned_scores(prob, cells, thresholds) -> dict[str, np.ndarray]:
    """Per-threshold slice averages of V_rand and V_info after watershed thinning of the proposal."""
    scores = {"vrand": np.zeros(len(thresholds)), "vinfo": np.zeros(len(thresholds))}
    for truth, p in _slices(prob, cells):
        for k, th in enumerate(thresholds):
            table = _contingency(truth, thin_borders(p > th))
            scores["vrand"][k] += _vrand(table)
            scores["vinfo"][k] += _vinfo(table)
    return {name: values / len(prob) for name, values in scores.items()}


def thin_borders(cells: np.ndarray) -> np.ndarray:
    """Fiji's border thinning: watershed (4-connected) of the binary proposal with membrane = 255 as relief.

    Returns int32 regions (> 0) separated by 1-pixel lines (0). A proposal
    without any cell becomes one region, as in Fiji.
    """
    relief = np.where(cells, 0, 255).astype(np.uint8)
    return _warping.watershed_lines(relief)


def _vrand(table: np.ndarray) -> float:
    """F-score of the N^2 Rand precision and recall of one slice (NaN when the ground truth has no cell)."""
    tp, fp, fn = _rand_counts_n2(table)
    return float(_f_score(tp, fp, fn)) if table[1:].any() else math.nan


def _vinfo(table: np.ndarray) -> float:
    """Fiji's `foregroundRestrictedFscore` of one slice: F-score of I/H(A) and I/H(B), NaN when undefined."""
    inside = table[1:].astype(np.float64)
    n = inside.sum()
    if n == 0:
        return math.nan
    singletons = inside[:, 0].sum() / n  # each contributes (1/n) log(1/n)
    sum_a = _sum_plogp(inside.sum(axis=1) / n)
    sum_b = _sum_plogp(inside[:, 1:].sum(axis=0) / n) - singletons * math.log(n)
    sum_ab = _sum_plogp(inside[:, 1:] / n) - singletons * math.log(n)
    h_a, h_b = -sum_a, -sum_b
    h_a_given_b, h_b_given_a = sum_b - sum_ab, sum_a - sum_ab
    if h_b == 0:
        precision, recall = 1.0, 0.0
    elif h_a == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = (h_a - h_a_given_b) / h_a, (h_b - h_b_given_a) / h_b
    return 2 * precision * recall / (precision + recall) if precision + recall else math.nan


def _sum_plogp(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(np.sum(p * np.log(p)))


def _warping_error(prob, cells, radius, thresholds) -> dict:
    counts = np.zeros((len(thresholds), 2), dtype=np.int64)  # splits, mergers
    for truth_cells, p in zip(cells, prob):
        for k, th in enumerate(thresholds):
            counts[k] += warped_splits_and_mergers(truth_cells, p, th, radius)
    result = _lowest(counts.sum(axis=1) / sum(truth.size for truth in cells), thresholds)
    result["counts"] = {_key(th): {"splits": int(s), "mergers": int(m)} for th, (s, m) in zip(thresholds, counts)}
    return result


def warp_ground_truth(truth_cells: np.ndarray, prob_slice: np.ndarray, th: float) -> tuple[np.ndarray, np.ndarray]:
    """Warp one binary ground-truth slice towards the proposal binarised at `th`.

    Returns (warped uint8 0/1 image, (rows, columns) of the mismatches left).
    """
    truth_cells = np.asarray(truth_cells, dtype=bool)
    p = np.asarray(prob_slice, dtype=np.float32).astype(np.float64)
    height, width = truth_cells.shape
    proposal = p > th
    # Fiji lists the mismatches column by column (x outer, y inner), then stable-sorts them by decreasing
    # (float) |p - th|. Non-negative float32 values order as their bit patterns: two stable radix passes
    # over 16-bit halves of the complemented bits give that order.
    column_major = np.flatnonzero((truth_cells != proposal).T)  # x * height + y
    ys, xs = column_major % height, column_major // height
    key = ~np.abs(p[ys, xs] - th).astype(np.float32).view(np.uint32)
    by_low = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    order = by_low[np.argsort((key[by_low] >> 16).astype(np.uint16), kind="stable")]
    source = np.pad(truth_cells.astype(np.uint8), 1)
    target = np.pad(proposal.astype(np.uint8), 1)
    flat = (ys[order] + 1) * (width + 2) + xs[order] + 1
    left = _warping.warp(source, target, flat.astype(np.int64), _warping.SIMPLE_POINT_TABLE)
    return source[1:-1, 1:-1], np.stack([left // (width + 2) - 1, left % (width + 2) - 1])


def warped_splits_and_mergers(
    truth_cells: np.ndarray, prob_slice: np.ndarray, th: float, radius: int = WARPING_RADIUS
) -> tuple[int, int]:
    """(split pixels, merger pixels) left after warping one ground-truth slice to the proposal at `th`."""
    warped, (rows, columns) = warp_ground_truth(truth_cells, prob_slice, th)
    return _warping.count_splits_and_mergers(warped, _components(warped), rows, columns, radius)


def _key(th: float) -> float:
    """A threshold as results report it: Fiji's accumulated double, rounded (0.30000000000000004 -> 0.3)."""
    return round(th, 6)


def _best(values: np.ndarray, thresholds: Sequence[float], pick) -> dict:
    """{"value", "threshold", "per_threshold"}: the first threshold with the best value (NaN values never win)."""
    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    per_threshold = {_key(th): float(v) for th, v in zip(thresholds, values)}
    if not valid.any():
        return {"value": math.nan, "threshold": None, "per_threshold": per_threshold}
    best = int(np.flatnonzero(values == pick(values[valid]))[0])
    return {"value": float(values[best]), "threshold": _key(thresholds[best]), "per_threshold": per_threshold}


def _lowest(values, thresholds) -> dict:
    return _best(values, thresholds, np.min)


def _highest(values, thresholds) -> dict:
    return _best(values, thresholds, np.max)


# ---------------------------------------------------------------------------------------------------------------------
# Cell Tracking Challenge


def ctc_seg(res_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> dict:
    """The Cell Tracking Challenge SEG measure over aligned frames of instance masks (0 = background).

    Each ground-truth object R is matched by the result object S with
    |R n S| > 0.5 |R| (at most one can qualify) and scores |R n S| / |R u S|,
    or 0 without a match; SEG is the mean over all ground-truth objects of all
    frames. False positives are not penalised.

    Returns {"value", "objects", "matched", "per_frame": [{"objects", "matched", "seg"}]}.
    """
    per_frame, total, n_objects, n_matched = [], 0.0, 0, 0
    for res, gt in _aligned_masks(res_masks, gt_masks):
        jaccards = _matched_jaccards(res, gt)
        matched = int(np.count_nonzero(jaccards))
        per_frame.append(
            {
                "objects": int(jaccards.size),
                "matched": matched,
                "seg": float(jaccards.mean()) if jaccards.size else math.nan,
            }
        )
        total, n_objects, n_matched = total + float(jaccards.sum()), n_objects + jaccards.size, n_matched + matched
    return {
        "value": total / n_objects if n_objects else math.nan,
        "objects": int(n_objects),
        "matched": n_matched,
        "per_frame": per_frame,
    }


def _matched_jaccards(res: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Jaccard index of each ground-truth object with its match (0 without one), in increasing id order."""
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    res_ids, res_index = np.unique(res, return_inverse=True)
    table = np.bincount(gt_index.ravel() * res_ids.size + res_index.ravel(), minlength=gt_ids.size * res_ids.size)
    table = table.reshape(gt_ids.size, res_ids.size)
    gt_sizes, res_sizes = table.sum(axis=1)[gt_ids != 0], table.sum(axis=0)[res_ids != 0]
    overlaps = table[gt_ids != 0][:, res_ids != 0]
    if overlaps.shape[1] == 0:
        return np.zeros(len(gt_sizes))
    best = overlaps.argmax(axis=1)  # the only candidate with more than half of the object, if there is one
    overlap = overlaps[np.arange(len(best)), best]
    return np.where(2 * overlap > gt_sizes, overlap / (gt_sizes + res_sizes[best] - overlap), 0.0)


def foreground_iou(
    res_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray], ignored: Sequence[np.ndarray] | None = None
) -> dict:
    """Pixel-level IoU of foreground (any object) against ground-truth foreground, pooled over all frames.

    A different, usually higher number than SEG; unlike SEG it penalises objects the ground truth does not
    annotate, so the pixels `ignored` (bool, per frame: cells shown but left unannotated, `unannotated.tif`)
    are left out. Returns {"value", "per_frame": [iou]}.
    """
    per_frame, intersection, union = [], 0, 0
    ignored = [None] * len(gt_masks) if ignored is None else ignored
    for (res, gt), left_out in zip(_aligned_masks(res_masks, gt_masks), ignored, strict=True):
        scored = np.ones(gt.shape, bool) if left_out is None else ~np.asarray(left_out, bool)
        res, gt = (res > 0) & scored, (gt > 0) & scored
        i, u = int(np.count_nonzero(res & gt)), int(np.count_nonzero(res | gt))
        per_frame.append(i / u if u else math.nan)
        intersection, union = intersection + i, union + u
    return {"value": intersection / union if union else math.nan, "per_frame": per_frame}


def _aligned_masks(res_masks, gt_masks):
    if len(res_masks) != len(gt_masks):
        raise UsageError(f"{len(res_masks)} result masks for {len(gt_masks)} ground-truth masks")
    for k, (res, gt) in enumerate(zip(res_masks, gt_masks)):
        res, gt = np.asarray(res), np.asarray(gt)
        if res.shape != gt.shape:
            raise UsageError(f"frame {k}: result mask has shape {res.shape} but ground truth {gt.shape}")
        for name, mask in (("result", res), ("ground-truth", gt)):
            if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
                raise UsageError(f"frame {k}: {name} mask must hold integer instance ids, found dtype {mask.dtype}")
        yield res, gt
