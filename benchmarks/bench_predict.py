"""Prediction speed: ms per 512 x 512 slice with test-time augmentation none / flips / d4.

Baseline, measured in the same run: the bare forward passes over the same number
of tiles of the same size (the same operations, from random inputs already on the
device, without mirroring, tiling, soft-max, averaging, stitching or transfers).
Their ratio is the overhead of the overlap-tile machinery. The achieved TFLOP/s
of the whole prediction puts the figure next to the hardware's limit.

    python benchmarks/bench_predict.py --device cuda            # the paper network (goal on one H100: d4 < 15 ms)
    python benchmarks/bench_predict.py --base-channels 8 --repeats 1 --slices 1   # a quick CPU run
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

from benchmarks.common import median_seconds, parser, report  # noqa: E402
from unet.device import PRECISIONS, uses_bf16  # noqa: E402
from unet.model import UNet, forward_flops  # noqa: E402
from unet.overlap_tile import TTA, predict_probabilities, tile_layout  # noqa: E402

SIDE = 512


def bare_forward(model: UNet, tiles: int, tile: int, batch_size: int, device: torch.device, bf16: bool):
    """A function running the network over `tiles` random tiles in batches, as the prediction does."""
    inputs = torch.rand(tiles, 1, tile, tile, device=device).contiguous(memory_format=torch.channels_last)

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
    model = UNet(base_channels=args.base_channels).eval().to(device, memory_format=torch.channels_last)
    images = np.random.default_rng(0).random((args.slices, SIDE, SIDE), dtype=np.float32)
    bf16 = uses_bf16(args.precision, device)
    rows = []
    for input_size in args.input_size:
        layout = tile_layout((SIDE, SIDE), input_size, model.depth, device)
        tiles_per_variant = math.prod(layout.counts)
        flops = forward_flops(model, layout.tile)
        for tta in args.tta:
            tiles = len(TTA[tta]) * tiles_per_variant * args.slices

            predict = functools.partial(
                predict_probabilities,
                model,
                images,
                input_size=input_size,
                batch_size=args.batch_size,
                tta=tta,
                device=device,
                precision=args.precision,
            )
            seconds = median_seconds(predict, repeats=args.repeats, device=args.device) / args.slices
            bare = (
                median_seconds(
                    bare_forward(model, tiles, layout.tile, args.batch_size, device, bf16),
                    repeats=args.repeats,
                    device=args.device,
                )
                / args.slices
            )
            tflops = flops * tiles / args.slices / seconds / 1e12
            rows.append(
                [
                    tta,
                    len(TTA[tta]),
                    f"{layout.counts[0]}x{layout.counts[1]} of {layout.tile}",
                    1000 * seconds,
                    1000 * bare,
                    seconds / bare,
                    tflops,
                ]
            )
    precision = "bf16" if bf16 else "fp32"
    report(
        "predict",
        ["tta", "variants", "tiles per variant", "ms per slice", "bare forward ms", "overhead ratio", "TFLOP/s"],
        rows,
        device=args.device,
        record=args.record,
        command=" ".join(sys.argv),
        notes=f"512 x 512 slices, base_channels {args.base_channels}, batch_size {args.batch_size}, {precision}, "
        f"{args.slices} slices per call, median of {args.repeats}. Goal on one H100 with the paper network: "
        f"d4 under 15 ms per slice. Load average at the end: {os.getloadavg()[0]:.1f}.",
    )


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
    arguments.add_argument("--precision", choices=PRECISIONS, default="auto")
    arguments.add_argument("--slices", type=int, default=4, help="512 x 512 slices per prediction call")
    return arguments


if __name__ == "__main__":
    main()
