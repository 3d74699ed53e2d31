"""Training speed: steps/s of the paper's U-Net on 572x572 tiles, against the device's matmul limit.

Rows, per network width:
- step: one SGD step (forward, weighted loss, backward, update) on a batch already on the
  device, exactly `unet.train.Trainer.step`;
- step + augmentation: the same with `unet.augment.Augmenter` sampling each batch on the
  device from 30 images of 512x512, as `unet train` does.
The achieved FLOP/s count three times the forward FLOPs (`unet.model.forward_flops`, about
301 GFLOP per 572 tile at full width) per tile; the baseline is a large matmul measured in the
same run (bf16 on CUDA, fp32 on the CPU), and the ratio is the fraction of that limit.

    python benchmarks/bench_train.py                       # CPU: widths 64 and 16, few steps
    python benchmarks/bench_train.py --device cuda --precision bf16 --channels-last --compile
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from unet.augment import Augmenter  # noqa: E402
from unet.model import UNet, forward_flops  # noqa: E402
from unet.settings import AugmentSettings  # noqa: E402
from unet.sizes import output_size  # noqa: E402
from unet.train import Trainer, TrainSettings  # noqa: E402

GOAL = "goal on one H100: at least 250 steps/s at full width, 572 px, batch 1"


def matmul_flops_per_second(device: str, dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a size x size matmul: the practical peak of the device for dense arithmetic."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    calls = 20 if device.startswith("cuda") else 1
    seconds = common.median_seconds(lambda: [a @ b for _ in range(calls)], repeats=repeats, device=device)
    return 2 * size**3 * calls / seconds


def steps_per_second(trainer: Trainer, batch, steps: int, repeats: int, device: str) -> float:
    """Median steps/s over `repeats` runs of `steps` steps; `batch` is a callable giving (image, target, weight)."""

    def run() -> None:
        for _ in range(steps):
            trainer.step(*batch(), 1e-4)

    return steps / common.median_seconds(run, repeats=repeats, device=device)


def synthetic_batch(batch_size: int, input_size: int, depth: int, device: str):
    out = output_size(input_size, depth)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch_size, 1, input_size, input_size, generator=generator).to(device)
    target = torch.randint(0, 2, (batch_size, out, out), generator=generator).to(device)
    weight = (1 + 9 * torch.rand(batch_size, out, out, generator=generator)).to(device)
    return image, target, weight


def augmenter(input_size: int, depth: int, device: str) -> Augmenter:
    rng = np.random.default_rng(0)
    images = rng.random((30, 512, 512), dtype=np.float32)
    targets = (rng.random((30, 512, 512)) < 0.8).astype(np.uint8)
    weights = (1 + 9 * rng.random((30, 512, 512))).astype(np.float32)
    return Augmenter(
        images, targets, weights, input_size=input_size, config=AugmentSettings(), device=device, depth=depth
    )


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast dtype on CUDA")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass and loss")
    parser.add_argument("--input-size", type=int, default=572)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--widths", type=int, nargs="+", help="base channels (default: 64 on CUDA, 64 16 on the CPU)")
    parser.add_argument("--steps", type=int, help="steps per timed repetition (default: 50 on CUDA, 1 on the CPU)")
    parser.add_argument("--matmul-size", type=int, help="side of the baseline matmul (default: 8192 CUDA, 2048 CPU)")
    parser.set_defaults(repeats=None)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    widths = args.widths or ([64] if cuda else [64, 16])
    steps = args.steps or (50 if cuda else 1)
    repeats = args.repeats or (5 if cuda else 3)
    settings = TrainSettings(
        input_size=args.input_size,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        device=args.device,
    )
    dtype = torch.bfloat16 if cuda and args.precision == "bf16" else torch.float32
    dtype_name = "bf16 autocast" if dtype == torch.bfloat16 else "fp32"
    peak = matmul_flops_per_second(args.device, dtype, args.matmul_size or (8192 if cuda else 2048), repeats)

    rows = [("matmul (the limit)", "-", "-", str(dtype).removeprefix("torch."), "-", peak / 1e12, 1.0)]
    sampler = augmenter(args.input_size, args.depth, args.device)
    fixed = synthetic_batch(args.batch_size, args.input_size, args.depth, args.device)
    for width in widths:
        torch.manual_seed(0)
        trainer = Trainer(UNet(base_channels=width, depth=args.depth), settings, torch.device(args.device))
        flops_per_step = 3 * forward_flops(trainer.model, args.input_size, args.batch_size)
        for what, batch in (("step", lambda: fixed), ("step + augmentation", lambda: sampler.sample(args.batch_size))):
            started = time.perf_counter()
            rate = steps_per_second(trainer, batch, steps, repeats, args.device)
            print(f"{what}, width {width}: {rate:.4g} steps/s ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            achieved = rate * flops_per_step
            rows.append((what, width, args.input_size, dtype_name, rate, achieved / 1e12, achieved / peak))
    common.report(
        "train",
        ["what", "width", "tile", "dtype", "steps/s", "TFLOP/s", "x matmul"],
        rows,
        device=args.device,
        record=args.record,
        command="python " + shlex.join(sys.argv),
        notes=(
            f"batch {args.batch_size}, depth {args.depth}, channels_last {args.channels_last}, compile "
            f"{args.compile}, {steps} steps x {repeats} repeats (median), torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads. A step counts 3x the forward FLOPs "
            f"({forward_flops(UNet(), 572) / 1e9:.0f} GFLOP forward at full width, 572 px). {GOAL}."
        ),
    )


if __name__ == "__main__":
    main()
