"""`unet evaluate`: score predictions with the challenges' own metrics.

    unet evaluate isbi PROBABILITIES.tif LABELS.tif [--slices SPEC] [--json] [--out FILE]
    unet evaluate ctc RES_DIR GT_DIR [--unannotated SPLIT_DIR] [--json] [--out FILE]
    unet evaluate split PROBABILITIES.tif DATA_SPLIT_DIR [--fold K --folds N] [--json] [--out FILE]

`isbi` compares a float32 cell-probability stack with the matching pages of a
binary label stack (cell > 0) and reports the ISBI 2012 metrics exactly as
Fiji's evaluation computes them (`unet.metrics`). `ctc` compares a Cell
Tracking Challenge result folder (`maskTTT.tif`, uint16 instances) with the
official ground truth folder `XX_GT` on every frame annotated in `XX_GT/SEG`
and reports SEG and the foreground IoU (with `--unannotated`, outside the cells
that the ground truth shows but leaves without a mask). `split` compares a probability stack
(`unet predict --data SPLIT_DIR`, a fold's) with the labels of a prepared split
(a folder data set's), each frame at its true size, with the metrics its kind
of labels calls for: the ISBI 2012 metrics for binary labels; for instance
labels those of the cells separated as the training target separates them, and
SEG and the foreground IoU (outside its unannotated pixels) of the instances that
`unet predict` makes. Without `--json` a table is printed; `--out` writes the
JSON atomically (also when printing the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from unet import metrics
from unet.errors import UsageError
from unet.figures import figure
from unet.io import (
    UNANNOTATED,
    DataError,
    Split,
    claim_outputs,
    crops,
    format_frames,
    numbered_files,
    parse_frames,
    read_split,
    read_stack,
    read_tiff,
    select_labelled,
    write_json,
)
from unet.pipeline import FOLDER, add_fold_arguments, fold_of, held_out_frames
from unet.settings import INSTANCE_KEYS, EvaluateSettings, PredictSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments
from unet.weightmap import label_objects

ISBI_KEYS = ("warping_error", "rand_error", "rand_error_unrestricted", "pixel_error", "vrand", "vinfo")
ISBI_NAMES = {
    "warping_error": "warping error (splits + mergers)",
    "rand_error": "Rand error (foreground-restricted)",
    "rand_error_unrestricted": "Rand error (standard index)",
    "pixel_error": "pixel error (1 - F-score)",
    "vrand": "V_rand after thinning",
    "vinfo": "V_info after thinning",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")

    isbi = protocols.add_parser(
        "isbi",
        help="ISBI 2012: warping, Rand and pixel error, V_rand and V_info (Fiji's definitions)",
        description="Score a cell-probability stack against binary labels with the ISBI 2012 metrics.",
    )
    isbi.add_argument(
        "probabilities",
        type=Path,
        metavar="PROBABILITIES.tif",
        help="float32 (N, H, W) stack, 1 = cell, values in [0, 1]",
    )
    isbi.add_argument("labels", type=Path, metavar="LABELS.tif", help="label stack, cell > 0 (0/1 or 0/255)")
    isbi.add_argument(
        "--slices",
        metavar="SPEC",
        help="pages of LABELS (0-based, e.g. 0-9) that the probability stack covers, in its order (default: all pages)",
    )
    add_fold_arguments(isbi, "score the label pages of")
    add_settings_arguments(isbi, EvaluateSettings)
    _add_output_arguments(isbi)

    ctc = protocols.add_parser(
        "ctc",
        help="Cell Tracking Challenge: SEG and foreground IoU on the annotated frames",
        description="Score a CTC result folder against the official ground truth (XX_GT/SEG).",
    )
    ctc.add_argument("res_dir", type=Path, metavar="RES_DIR", help="folder with maskTTT.tif (or maskTTTT.tif)")
    ctc.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="the official XX_GT folder (with SEG/man_segTTT.tif)")
    ctc.add_argument(
        "--unannotated",
        type=Path,
        metavar="SPLIT_DIR",
        help="the prepared split of the same sequence (`unet prepare`): the IoU leaves out the cells that its "
        "unannotated.tif marks (shown by the tracking markers, without a mask in GT_DIR/SEG)",
    )
    _add_output_arguments(ctc)

    split = protocols.add_parser(
        "split",
        help="a prepared split's labelled frames (a folder data set's): the metrics its kind of labels calls for",
        description="Score a probability stack (unet predict --data) against the labels of a prepared split, each "
        "frame at its true size: binary labels with the ISBI 2012 metrics; instance labels also with SEG and the "
        "foreground IoU.",
    )
    split.add_argument(
        "probabilities", type=Path, metavar="PROBABILITIES.tif", help="float32 (N, H, W) stack, 1 = cell, in [0, 1]"
    )
    split.add_argument("data", type=Path, metavar="DATA_SPLIT_DIR", help="the prepared split it predicted")
    add_fold_arguments(split, "score the labelled frames held out by")
    add_settings_arguments(split, EvaluateSettings)
    add_settings_arguments(
        split, PredictSettings, keys=INSTANCE_KEYS, title="instances of a prediction, as `unet predict` makes them"
    )
    _add_output_arguments(split)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--figure",
        type=Path,
        metavar="PNG",
        help="also draw the prediction against the ground truth for the first scored frames",
    )
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the scores as JSON to FILE (atomically)")


def run(args: argparse.Namespace) -> int:
    with claim_outputs((args.out, "json"), (args.figure, "png")):
        scores, table = {"isbi": evaluate_isbi, "ctc": evaluate_ctc, "split": evaluate_split}[args.protocol](args)
        if args.out is not None:
            write_json(args.out, scores)
    print(json.dumps(scores, indent=2) if args.json else table)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# ISBI 2012


def evaluate_isbi(args: argparse.Namespace) -> tuple[dict, str]:
    settings = from_arguments(EvaluateSettings, args)
    prob, labels, slices = read_isbi_pair(args.probabilities, args.labels, args.slices, fold_of(args))
    scores = _finite_or_null(
        metrics.isbi_metrics(
            prob, labels, rand_normalisation=settings.rand_normalisation, radius=settings.warping_radius
        )
    )
    scores["meta"] = {
        "probabilities": str(args.probabilities),
        "labels": str(args.labels),
        "slices": slices,
        "rand_normalisation": settings.rand_normalisation,
        "warping_radius": settings.warping_radius,
    }
    if args.figure:
        plot_isbi_overlay(args.figure, prob, labels, slices)
    return scores, isbi_table(scores)


def read_isbi_pair(
    prob_path: Path, labels_path: Path, spec: str | None = None, fold: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The probability stack and the label pages it covers (`spec`, or the pages held out by `fold` =
    (fold, folds)); bad input raises `DataError` naming the file."""
    if spec and fold:
        raise UsageError("select label pages with --slices or with --fold, not both")
    prob, labels = read_stack(prob_path), read_stack(labels_path)
    if fold:
        spec = format_frames(held_out_frames(list(range(len(labels))), fold[1], fold[0]))
    slices = parse_frames(spec) if spec else list(range(len(labels)))
    outside = [s for s in slices if not 0 <= s < len(labels)]
    if outside:
        raise DataError(f"{labels_path}: has {len(labels)} pages, --slices asks for {outside}")
    if len(prob) != len(slices):
        raise DataError(
            f"{prob_path}: has {len(prob)} pages but {len(slices)} label pages are selected "
            f"({'--slices ' + spec if spec else 'all of ' + str(labels_path)})"
        )
    labels = labels[slices]
    _check_probabilities(prob, prob_path, labels.shape[1:], labels_path)
    return prob, labels, slices


def _check_probabilities(prob: np.ndarray, prob_path: Path, page: tuple[int, ...], labels_path: Path) -> None:
    """Pages of the labels' size, float cell probabilities in [0, 1]; else a `DataError` naming the file."""
    if prob.shape[1:] != page:
        raise DataError(f"{prob_path}: pages are {prob.shape[1:]} but {labels_path} pages are {page}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise DataError(f"{prob_path}: expected float cell probabilities in [0, 1], found dtype {prob.dtype}")
    low, high = float(np.min(prob)), float(np.max(prob))
    if not (0.0 <= low and high <= 1.0):
        raise DataError(f"{prob_path}: probabilities must lie in [0, 1] (1 = cell), found values from {low} to {high}")


def isbi_table(scores: dict) -> str:
    meta = scores.get("meta", {})
    lines = [
        f"ISBI 2012 metrics (Fiji's definitions), {len(meta.get('slices', meta.get('frames', [])))} slices",
        "",
        f"{'metric':<38} {'best':>10}  threshold",
    ]
    for key in ISBI_KEYS:
        lines.append(f"{ISBI_NAMES[key]:<38} {_number(scores[key]['value']):>10}  {scores[key]['threshold']}")
    thresholds = list(scores["rand_error"]["per_threshold"])
    lines += ["", "per threshold:", f"{'threshold':>9} " + " ".join(f"{key:>12.12}" for key in ISBI_KEYS)]
    for th in thresholds:
        values = [scores[key]["per_threshold"].get(th) for key in ISBI_KEYS]
        lines.append(f"{th:>9} " + " ".join(f"{_number(v):>12}" for v in values))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Cell Tracking Challenge


def evaluate_ctc(args: argparse.Namespace) -> tuple[dict, str]:
    frames, res_masks, gt_masks = read_ctc_pair(args.res_dir, args.gt_dir)
    ignored = read_unannotated(args.unannotated, frames) if args.unannotated else None
    scores = instance_scores(frames, res_masks, gt_masks, ignored)
    scores["meta"] = {
        "res_dir": str(args.res_dir),
        "gt_dir": str(args.gt_dir),
        "iou_leaves_out": str(args.unannotated / UNANNOTATED) if args.unannotated else None,
    }
    scores = _finite_or_null(scores)
    if args.figure:
        plot_ctc_overlay(args.figure, frames, res_masks, gt_masks)
    return scores, ctc_table(scores)


def instance_scores(frames: list[int], res_masks, gt_masks, ignored=None) -> dict:
    """{"seg", "iou", "frames"}: SEG and the foreground IoU (outside the pixels `ignored`, unannotated cells) of
    instance masks, in all and per frame."""
    seg, iou = metrics.ctc_seg(res_masks, gt_masks), metrics.foreground_iou(res_masks, gt_masks, ignored)
    per_frame = [
        {"frame": frame, **seg_frame, "iou": iou_frame}
        for frame, seg_frame, iou_frame in zip(frames, seg.pop("per_frame"), iou.pop("per_frame"))
    ]
    return {"seg": seg, "iou": iou, "frames": per_frame}


def read_ctc_pair(res_dir: Path, gt_dir: Path) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(annotated frame ids, result masks, ground-truth masks) for every frame annotated in GT_DIR/SEG."""
    if not Path(gt_dir, "SEG").is_dir():
        raise DataError(f"{gt_dir / 'SEG'}: no such folder")
    if not Path(res_dir).is_dir():
        raise DataError(f"{res_dir}: no such folder")
    annotated = numbered_files(gt_dir / "SEG", "man_seg")
    if not annotated:
        raise DataError(f"{gt_dir / 'SEG'}: no annotated frames (man_segTTT.tif)")
    results = numbered_files(res_dir, "mask")
    missing = [frame for frame in annotated if frame not in results]
    if missing:
        raise DataError(
            f"{res_dir}: no result mask for annotated frame(s) {missing} "
            f"(expected e.g. {res_dir / f'mask{missing[0]:03d}.tif'})"
        )
    frames = sorted(annotated)
    gt_masks = [_mask(annotated[frame]) for frame in frames]
    res_masks = [_mask(results[frame]) for frame in frames]
    for frame, res, gt in zip(frames, res_masks, gt_masks):
        if res.shape != gt.shape:
            raise DataError(f"{results[frame]}: shape {res.shape} differs from {annotated[frame]} {gt.shape}")
    return frames, res_masks, gt_masks


def read_unannotated(split_dir: Path, frames: list[int]) -> list[np.ndarray]:
    """The unannotated cells (`unannotated.tif` of a prepared split) of each of `frames`, all False where the split
    has none; a frame the split does not label is a `DataError`."""
    split = read_split(split_dir)
    missing = [frame for frame in frames if frame not in split.labelled]
    if missing:
        raise DataError(f"{split_dir}: frames {missing} are not among its labelled frames {split.labelled}")
    rows = [split.labelled.index(frame) for frame in frames]
    return (
        [np.zeros(split.labels.shape[1:], bool)] * len(rows)
        if split.unannotated is None
        else list(split.unannotated[rows])
    )


def _mask(path: Path) -> np.ndarray:
    mask = read_tiff(path)
    if mask.ndim != 2:
        raise DataError(f"{path}: expected a 2D instance mask, found shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{path}: expected integer instance ids (uint16), found dtype {mask.dtype}")
    return mask


def ctc_table(scores: dict) -> str:
    seg, iou = scores["seg"], scores["iou"]
    lines = [
        f"Cell Tracking Challenge segmentation, {len(scores['frames'])} annotated frames",
        "",
        f"SEG             {_number(seg['value'])}  ({seg['matched']} of {seg['objects']} objects matched)",
        f"foreground IoU  {_number(iou['value'])}",
        "",
        f"{'frame':>5} {'objects':>7} {'matched':>7} {'SEG':>8} {'IoU':>8}",
    ]
    for row in scores["frames"]:
        lines.append(
            f"{row['frame']:>5} {row['objects']:>7} {row['matched']:>7} "
            f"{_number(row['seg']):>8} {_number(row['iou']):>8}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# A prepared split (a folder data set's folds)


def evaluate_split(args: argparse.Namespace) -> tuple[dict, str]:
    from unet.predict import settings_instances  # here: it imports torch, which the other scores do without

    settings = from_arguments(EvaluateSettings, args)
    instances = from_arguments(PredictSettings, args, keys=INSTANCE_KEYS)
    fold = fold_of(args)
    split, frames, probabilities, labels, unannotated = read_split_pair(args.probabilities, args.data, fold)
    # The cells of instance labels as the training target has them: touching cells separated.
    cells = [label_objects(label, split.kind)[0] > 0 for label in labels]
    scores = metrics.isbi_metrics(
        probabilities, cells, rand_normalisation=settings.rand_normalisation, radius=settings.warping_radius
    )
    meta = {
        "probabilities": str(args.probabilities),
        "data": str(args.data),
        "protocol": FOLDER if split.folder is not None else None,
        "kind": split.kind,
        "frames": frames,
        "fold": fold[0] if fold else None,
        "folds": fold[1] if fold else None,
        **dataclasses.asdict(settings),
    }
    if split.kind == "instance":
        masks = [settings_instances(p[None], instances)[0] for p in probabilities]
        scores |= instance_scores(frames, masks, labels, unannotated)
        meta |= {key: getattr(instances, key) for key in INSTANCE_KEYS}
        if args.figure:
            plot_ctc_overlay(args.figure, frames, masks, labels)
    elif args.figure:
        plot_isbi_overlay(args.figure, probabilities, labels, frames, title="frame")
    scores = _finite_or_null(scores | {"meta": meta})
    table = isbi_table(scores)
    return scores, f"{table}\n\n{ctc_table(scores)}" if split.kind == "instance" else table


def read_split_pair(
    prob_path: Path, data_dir: Path, fold: tuple[int, int] | None
) -> tuple[Split, list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """The split, the labelled frames scored (all, or those `fold` = (fold, folds) holds out), and their
    probabilities, labels and unannotated pixels (None without), each at its frame's true size; bad input raises
    `DataError` naming the file."""
    split = read_split(data_dir)
    if split.labels is None:
        raise DataError(f"{data_dir}: the split has no labelled frames to score")
    frames = held_out_frames(split.labelled, fold[1], fold[0]) if fold else split.labelled
    _, rows = select_labelled(split, data_dir, frames)
    prob = read_stack(prob_path)
    if len(prob) != len(frames):
        selected = f"fold {fold[0]} of {fold[1]}" if fold else "all labelled frames"
        raise DataError(f"{prob_path}: has {len(prob)} pages but {data_dir} has {len(frames)} frames ({selected})")
    _check_probabilities(prob, prob_path, split.labels.shape[1:], data_dir / "labels.tif")
    sizes = split.labelled_sizes(rows)
    unannotated = crops(split.unannotated[rows], sizes) if split.unannotated is not None else None
    return split, frames, crops(prob, sizes), crops(split.labels[rows], sizes), unannotated


# ---------------------------------------------------------------------------------------------------------------------
# Figures for the report


def plot_isbi_overlay(
    path: Path, prob, labels, slices: list[int], count: int = 2, *, title: str = "label page"
) -> None:
    """Per slice (of a stack or a list): the cell probability, and the errors at p > 0.5: membrane predicted
    inside a cell (red), membrane missed (cyan)."""
    rows = min(count, len(prob))
    with figure(path, rows, 2, size=(10, 5 * rows), layout="tight") as (_, axes):
        for row, (p, label, page) in enumerate(zip(prob[:rows], labels[:rows], slices)):
            axes[row, 0].imshow(p, cmap="gray", vmin=0, vmax=1)
            axes[row, 0].set_title(f"{title} {page}: cell probability")
            truth, predicted = label > 0, p > 0.5
            errors = np.zeros(p.shape + (3,))
            errors[truth & predicted] = 0.6
            errors[truth & ~predicted] = (1.0, 0.0, 0.0)
            errors[~truth & predicted] = (0.0, 1.0, 1.0)
            axes[row, 1].imshow(errors)
            axes[row, 1].set_title("cells (gray), false membrane (red), missed membrane (cyan)")


def plot_ctc_overlay(
    path: Path, frames: list[int], res_masks: list[np.ndarray], gt_masks: list[np.ndarray], count: int = 2
) -> None:
    """Per annotated frame: the result instances in colour with the ground-truth outlines in white."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    rows = min(count, len(frames))
    with figure(path, rows, 1, size=(5, 5 * rows), layout="tight") as (_, axes):
        for row, (frame, res, gt) in enumerate(zip(frames[:rows], res_masks[:rows], gt_masks[:rows])):
            picture = label2rgb(res, bg_label=0)
            picture[find_boundaries(gt, mode="inner")] = 1.0
            axes[row, 0].imshow(picture)
            axes[row, 0].set_title(f"frame {frame}: result instances, ground-truth outlines (white)")


# ---------------------------------------------------------------------------------------------------------------------


def _finite_or_null(obj):
    """The scores as strict JSON: NaN (an undefined score) becomes null."""
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}"
