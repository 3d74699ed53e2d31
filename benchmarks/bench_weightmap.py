"""Weight maps of the real ISBI 2012 training labels (30 slices) and DIC-HeLa GT frames: the package's
bounded-window method against the naive one (a full distance transform per object, the reference in
tests/test_weightmap.py), timed in the same run, with their largest difference.

    python benchmarks/bench_weightmap.py [--data ../shared/data] [--repeats 3] [--record]
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import common  # noqa: E402
from test_weightmap import naive_weight_map  # noqa: E402

from unet.weightmap import weight_map  # noqa: E402

from helpers import SHARED_DATA  # noqa: E402


def real_labels(data: Path) -> dict[str, tuple[str, np.ndarray]]:
    isbi = (tifffile.imread(data / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
    hela = sorted((data / "ctc" / "DIC-C2DH-HeLa").glob("0?_GT/SEG/man_seg*.tif"))
    return {
        "ISBI 2012 train-labels": ("binary", isbi),
        "DIC-C2DH-HeLa GT SEG": ("instance", np.stack([tifffile.imread(path) for path in hela])),
    }


def fast_maps(labels, kind: str) -> list:
    return [weight_map(label, kind) for label in labels]


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA,
        help="the real data copies (default: $UNET_SHARED_DATA or ../shared/data)",
    )
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("weight maps are computed on the CPU (numpy, scipy, numba); --device must be cpu")
    weight_map(np.eye(8, dtype=np.uint8), "binary")  # compile the kernel before timing
    rows = []
    for name, (kind, labels) in real_labels(args.data).items():
        fast = [weight_map(label, kind).weights for label in labels]
        # The naive method takes about a minute for ISBI: one timed pass, whose maps are also compared.
        start = time.perf_counter()
        naive = [naive_weight_map(label, kind)[1] for label in labels]
        naive_seconds = time.perf_counter() - start
        difference = max(float(np.abs(a - b).max()) for a, b in zip(fast, naive))
        fast_seconds = common.median_seconds(functools.partial(fast_maps, labels, kind), repeats=args.repeats)
        rows.append(
            [
                name,
                len(labels),
                naive_seconds,
                fast_seconds,
                f"{naive_seconds / fast_seconds:.1f}x",
                f"{difference:.1e}",
            ]
        )
    common.report(
        "weightmap",
        ["labels", "frames", "naive s (baseline)", "fast s", "speed-up", "max |fast - naive|"],
        rows,
        device="cpu",
        record=args.record,
        command="python " + " ".join(sys.argv),
        notes="Whole stacks, one process, targets and weights; the fast method's numba kernel is compiled "
        "before timing. Agreement required: 1e-4.",
    )


if __name__ == "__main__":
    main()
