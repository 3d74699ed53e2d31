"""Seconds for every ISBI 2012 metric on the 30 training slices at all thresholds, against plain Python.

    python benchmarks/bench_metrics.py [--repeats 3] [--reference-slices 1] [--record]

The probability maps are the real labels blurred, noised and given a few broken
membranes and stray blobs (fixed seed), so that every metric has work to do.
`unet.metrics.isbi_metrics` runs on all 30 slices at the challenge's thresholds
(11, and 10 for the warping error). The baseline is `reference_metrics.py`, a
plain-Python implementation of the same algorithms, too slow for the full job:
it runs on the first `--reference-slices` slices at `--reference-thresholds`,
and so does `unet.metrics` once more for a like-for-like ratio. The full-job
figure for plain Python is that per-(slice, threshold) time scaled up.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import common
import numpy as np
from scipy import ndimage

import reference_metrics as reference

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's package; the tests' data location
from unet import metrics  # noqa: E402
from unet.io import read_stack  # noqa: E402

from helpers import SHARED_DATA  # noqa: E402


def realistic_probabilities(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Blurred, noisy cell probabilities with broken membranes (merges) and stray membrane blobs (splits, holes)."""
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter((labels > 0).astype(np.float32), (0, 2.0, 2.0))
    yy, xx = np.mgrid[: labels.shape[1], : labels.shape[2]]
    for page in prob:
        for value, count in ((0.9, 6), (0.1, 6)):  # gaps in membranes, blobs of membrane inside cells
            for y, x in rng.integers(0, labels.shape[1], size=(count, 2)):
                page[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = value
    prob += rng.normal(0, 0.15, prob.shape).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(prob, (0, 0.7, 0.7)), 0, 1).astype(np.float32)


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=3)
    parser.add_argument(
        "--labels",
        type=Path,
        default=SHARED_DATA / "isbi2012" / "train-labels.tif",
        help="ISBI 2012 train-labels.tif (default: from $UNET_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument("--reference-slices", type=int, default=1, help="slices the plain-Python baseline runs on")
    parser.add_argument(
        "--reference-thresholds",
        default="0.3,0.5,0.7",
        help="thresholds the plain-Python baseline runs at (all metrics at each)",
    )
    args = parser.parse_args()
    if args.device != "cpu":
        print(f"note: the metrics run on the CPU; --device {args.device} is ignored", file=sys.stderr)

    load = os.getloadavg()[0]
    labels = read_stack(args.labels)
    prob = realistic_probabilities(labels)
    metrics.isbi_metrics(prob[:1, :64, :64], labels[:1, :64, :64])  # load the compiled kernels
    full = common.median_seconds(lambda: metrics.isbi_metrics(prob, labels), repeats=args.repeats, warmup=0)
    full_units = len(labels) * len(metrics.THRESHOLDS)

    ths = [float(t) for t in args.reference_thresholds.split(",")]
    sub_prob, sub_labels = prob[: args.reference_slices], labels[: args.reference_slices]
    sub_units = len(sub_labels) * len(ths)
    ours = common.median_seconds(
        lambda: metrics.isbi_metrics(sub_prob, sub_labels, thresholds=ths, warping_thresholds=ths),
        repeats=args.repeats,
        warmup=0,
    )
    start = time.perf_counter()
    reference.isbi_per_threshold(sub_prob.tolist(), (sub_labels > 0).tolist(), ths, ths)
    plain = time.perf_counter() - start

    rows = [
        ["unet.metrics, all metrics, 30 slices x all thresholds", full, full_units, full / full_units],
        [f"unet.metrics, {len(sub_labels)} slice(s) x {ths}", ours, sub_units, ours / sub_units],
        [f"plain Python (same algorithms), {len(sub_labels)} slice(s) x {ths}", plain, sub_units, plain / sub_units],
        ["plain Python projected to the full job", plain / sub_units * full_units, full_units, plain / sub_units],
        ["speed-up, same work (plain Python / unet.metrics)", plain / ours, "", ""],
    ]
    common.report(
        "metrics",
        ["measurement", "seconds", "slice-thresholds", "seconds each"],
        rows,
        device="cpu",
        record=args.record,
        command="python " + " ".join(sys.argv),
        notes=f"{len(labels)} slices of {labels.shape[1]}x{labels.shape[2]}; median of {args.repeats} "
        "runs for unet.metrics, one run for plain Python. A slice-threshold is one slice scored "
        "by every metric at one threshold (the warping error has 10 thresholds, the others 11). "
        f"Load average {load:.1f} when the run started (a shared machine inflates all figures).",
    )


if __name__ == "__main__":
    main()
