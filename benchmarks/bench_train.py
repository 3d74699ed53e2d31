"""Training speed: steps/s of the paper's U-Net on 572x572 tiles, against the device's dense limit per precision.

Rows, per network width, precision (fp32, bf16 autocast) and memory layout (contiguous, channels_last):
- step: one SGD step (forward, weighted loss, backward, update) on a batch already on the
  device, exactly `unet.train.Trainer.step`;
- step + augmentation: the same with `unet.augment.Augmenter` sampling each batch on the
  device from 30 images of 512x512, as `unet train` does.
The achieved FLOP/s count three times the forward FLOPs (`unet.model.forward_flops`, about
301 GFLOP per 572 tile at full width) per tile. The baselines are large matmuls in fp32 and in
bf16, measured in the same run: each step is given as a fraction of the matmul rate of its own
precision and of the best precision's (the device's real limit).

    python benchmarks/bench_train.py                       # CPU: widths 64 and 16, fp32 (+ bf16 where native)
    python benchmarks/bench_train.py --precisions fp32 bf16 --widths 16   # bf16 also where it is emulated
    python benchmarks/bench_train.py --device cuda --compile
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
from unet.device import native_bf16  # noqa: E402
from unet.model import UNet, forward_flops  # noqa: E402
from unet.settings import AugmentSettings  # noqa: E402
from unet.sizes import output_size  # noqa: E402
from unet.train import Trainer, TrainSettings  # noqa: E402

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
GOAL = "goal on one H100: at least 250 steps/s at full width, 572 px, batch 1"


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
    args = arguments().parse_args()
    cuda = args.device.startswith("cuda")
    device = torch.device(args.device)
    widths = args.widths or ([64] if cuda else [64, 16])
    steps = args.steps or (50 if cuda else 1)
    repeats = args.repeats or (5 if cuda else 3)
    precisions = args.precisions or ["fp32", *(["bf16"] if native_bf16(device) else [])]
    limits = common.matmul_rates(args.device, args.matmul_size or (8192 if cuda else 2048), repeats)
    best = max(limits.values())
    rows = [
        (f"matmul {name} (the limit)", "-", "-", name, "-", "-", rate / 1e12, 1.0, rate / best)
        for name, rate in limits.items()
    ]
    sampler = augmenter(args.input_size, args.depth, args.device)
    fixed = synthetic_batch(args.batch_size, args.input_size, args.depth, args.device)
    for width in widths:
        for precision in precisions:
            for layout in args.layouts:
                settings = TrainSettings(
                    input_size=args.input_size,
                    batch_size=args.batch_size,
                    precision=precision,
                    channels_last=layout == "channels_last",
                    compile=args.compile,
                    device=args.device,
                )
                torch.manual_seed(0)
                trainer = Trainer(UNet(base_channels=width, depth=args.depth), settings, device)
                # Both layouts on any device, also where the Trainer would not choose channels_last.
                trainer.memory_format = LAYOUTS[layout]
                trainer.model.to(memory_format=trainer.memory_format)
                flops_per_step = 3 * forward_flops(trainer.model, args.input_size, args.batch_size)
                batches = (("step", lambda: fixed), ("step + augmentation", lambda: sampler.sample(args.batch_size)))
                for what, batch in batches:
                    started = time.perf_counter()
                    rate = steps_per_second(trainer, batch, steps, repeats, args.device)
                    took = time.perf_counter() - started
                    print(
                        f"{what}, width {width}, {precision}, {layout}: {rate:.4g} steps/s ({took:.0f} s)",
                        file=sys.stderr,
                    )
                    achieved = rate * flops_per_step
                    own = achieved / limits[precision]
                    rows.append(
                        (what, width, args.input_size, precision, layout, rate, achieved / 1e12, own, achieved / best)
                    )
    common.report(
        "train",
        ["what", "width", "tile", "precision", "layout", "steps/s", "TFLOP/s", "x own matmul", "x best matmul"],
        rows,
        device=args.device,
        record=args.record,
        command="python " + shlex.join(sys.argv),
        notes=(
            f"batch {args.batch_size}, depth {args.depth}, compile {args.compile}, {steps} steps x {repeats} repeats "
            f"(median), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
            f"{common.precision_note(args.device)}. A step counts 3x the forward FLOPs "
            f"({forward_flops(UNet(), 572) / 1e9:.0f} GFLOP forward at full width, 572 px). {GOAL}."
        ),
    )


def arguments():
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        help="default: fp32, and bf16 where the device has it natively",
    )
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass and loss")
    parser.add_argument("--input-size", type=int, default=572)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--widths", type=int, nargs="+", help="base channels (default: 64 on CUDA, 64 16 on the CPU)")
    parser.add_argument("--steps", type=int, help="steps per timed repetition (default: 50 on CUDA, 1 on the CPU)")
    parser.add_argument("--matmul-size", type=int, help="side of the baseline matmuls (default: 8192 CUDA, 2048 CPU)")
    parser.set_defaults(repeats=None)
    return parser


if __name__ == "__main__":
    main()
