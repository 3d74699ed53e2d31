"""Prediction speed: ms per 512 x 512 slice with test-time augmentation none / flips / d4.

Baseline, measured in the same run: the bare forward passes over the same number
of tiles of the same size (the same operations, from random inputs already on the
device, without mirroring, tiling, soft-max, averaging, stitching or transfers).
Their ratio is the overhead of the overlap-tile machinery. The achieved TFLOP/s
of the whole prediction puts the figure next to the hardware's limit: large matmuls in
fp32 and in bf16, measured in the same run; each row is given as a fraction of the
matmul rate of its own precision and of the best precision's.

    python benchmarks/bench_predict.py --device cuda            # the paper network (goal on one H100: d4 < 15 ms)
    python benchmarks/bench_predict.py --base-channels 8 --repeats 1 --slices 1   # a quick CPU run
    python benchmarks/bench_predict.py --tta d4 --input-size 572 --slices 1 --precisions fp32 bf16
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import matmul_rates, median_seconds, parser, precision_note, report  # noqa: E402
from unet.device import memory_format, native_bf16  # noqa: E402
from unet.model import UNet, forward_flops  # noqa: E402
from unet.overlap_tile import TTA, predict_probabilities, tile_layout  # noqa: E402

SIDE = 512


def bare_forward(model: UNet, tiles: int, tile: int, batch_size: int, device: torch.device, bf16: bool):
    """A function running the network over `tiles` random tiles in batches, as the prediction does."""
    inputs = torch.rand(tiles, 1, tile, tile, device=device).contiguous(memory_format=memory_format(device))

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for batch in inputs.split(batch_size):
                model(batch)

    return forward


def main() -> None:
    args = arguments().parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = UNet(base_channels=args.base_channels).eval().to(device, memory_format=memory_format(device))
    images = np.random.default_rng(0).random((args.slices, SIDE, SIDE), dtype=np.float32)
    precisions = args.precisions or ["fp32", *(["bf16"] if native_bf16(device) else [])]
    limits = matmul_rates(args.device, 8192 if device.type == "cuda" else 2048, args.repeats)
    best = max(limits.values())
    rows = [
        ["matmul (the limit)", name, "-", "-", "-", "-", "-", rate / 1e12, 1.0, rate / best]
        for name, rate in limits.items()
    ]
    for precision in precisions:
        for input_size in args.input_size:
            for tta in args.tta:
                row = measure(model, images, device, precision, input_size, tta, args)
                flops_per_second = row[-1] * 1e12
                rows.append(row + [flops_per_second / limits[precision], flops_per_second / best])
    report(
        "predict",
        [
            "what",
            "precision",
            "tta",
            "tiles per variant",
            "ms per slice",
            "bare forward ms",
            "overhead ratio",
            "TFLOP/s",
            "x own matmul",
            "x best matmul",
        ],
        rows,
        device=args.device,
        record=args.record,
        command=" ".join(sys.argv),
        notes=f"512 x 512 slices, base_channels {args.base_channels}, batch_size {args.batch_size}, "
        f"{args.slices} slices per call, median of {args.repeats}, {precision_note(args.device)}. Goal on one "
        f"H100 with the paper network: d4 under 15 ms per slice. Load average at the end: {os.getloadavg()[0]:.1f}.",
    )


def measure(
    model: UNet, images: np.ndarray, device: torch.device, precision: str, input_size: int, tta: str, args
) -> list:
    """One row: the prediction of `images` and the bare forward passes over its tiles, per slice."""
    layout = tile_layout((SIDE, SIDE), input_size, model.depth, device)
    tiles = len(TTA[tta]) * math.prod(layout.counts) * args.slices
    predict = functools.partial(
        predict_probabilities,
        model,
        images,
        input_size=input_size,
        batch_size=args.batch_size,
        tta=tta,
        device=device,
        precision=precision,
    )
    seconds = median_seconds(predict, repeats=args.repeats, device=args.device) / args.slices
    forward = bare_forward(model, tiles, layout.tile, args.batch_size, device, precision == "bf16")
    bare = median_seconds(forward, repeats=args.repeats, device=args.device) / args.slices
    tflops = forward_flops(model, layout.tile) * tiles / args.slices / seconds / 1e12
    counts = f"{layout.counts[0]}x{layout.counts[1]} of {layout.tile}"
    return ["prediction", precision, tta, counts, 1000 * seconds, 1000 * bare, seconds / bare, tflops]


def arguments():
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--base-channels", type=int, default=64, help="network width (paper: 64)")
    arguments.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=[572, 700],
        help="largest tile sides to compare (700 covers a 512 x 512 slice in one tile)",
    )
    arguments.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    arguments.add_argument("--tta", nargs="+", choices=sorted(TTA), default=["none", "flips", "d4"])
    arguments.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        help="default: fp32, and bf16 where the device has it natively",
    )
    arguments.add_argument("--slices", type=int, default=4, help="512 x 512 slices per prediction call")
    return arguments


if __name__ == "__main__":
    main()
