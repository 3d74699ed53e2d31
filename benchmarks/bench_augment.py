"""Augmented training samples per second (572x572 input tile, 388x388 target and weight) from the
ISBI 2012 training slices: this package's Augmenter on the CPU, and on the GPU with --device cuda,
against `elasticdeform` (CPU, C) applying the same flip, rotation, 3x3 elastic grid and gray-value
change to the same tile, timed in the same run.

    python benchmarks/bench_augment.py [--device cuda] [--batch-size 32] [--samples 20] [--record]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import common  # noqa: E402

from unet.augment import Augmenter, SampleParameters  # noqa: E402
from unet.io import normalize_intensity  # noqa: E402
from unet.weightmap import weight_maps  # noqa: E402

from helpers import SHARED_DATA  # noqa: E402

try:
    import elasticdeform
except ImportError as error:  # the PyPI wheel of 0.5.1 is built against NumPy 1 and fails to import with NumPy 2
    sys.exit(
        f"bench_augment: elasticdeform is needed as the baseline ({error}); with NumPy 2 build it from source: "
        "pip install --no-binary elasticdeform --force-reinstall --no-deps elasticdeform"
    )


def elasticdeform_samples(augmenter: Augmenter, images, targets, weights, drawn: SampleParameters) -> None:
    """The peer: per sample, cut the input tile with mirrored context, then let elasticdeform flip, rotate and
    deform it (image cubic, target and weight nearest, cropped to the output window) and vary its gray values."""
    size, margin, out = augmenter.input_size, augmenter.margin, augmenter.output_size
    pad = size
    padded = [np.pad(stack, ((0, 0), (pad, pad), (pad, pad)), mode="reflect") for stack in (images, targets, weights)]
    crop = (slice(margin, margin + out),) * 2
    for b in range(len(drawn.index)):
        top, left = (drawn.corner[b].numpy() - margin + pad).tolist()
        image, target, weight = (stack[int(drawn.index[b]), top : top + size, left : left + size] for stack in padded)
        if drawn.flip[b]:
            image, target, weight = image[:, ::-1], target[:, ::-1], weight[:, ::-1]
        displacement = drawn.displacement[b].numpy()
        angle = math.degrees(drawn.angle[b].item())
        image = elasticdeform.deform_grid(image, displacement, order=3, mode="mirror", rotate=angle)
        elasticdeform.deform_grid([target, weight], displacement, order=0, mode="mirror", rotate=angle, crop=crop)
        mean = image.mean()
        image = mean + drawn.contrast[b].item() * (image - mean) + drawn.brightness[b].item()


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA,
        help="the real data copies (default: $UNET_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument("--samples", type=int, default=20, help="samples per timed CPU run (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size on --device cuda (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default %(default)s: elasticdeform runs on one core)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = normalize_intensity(tifffile.imread(args.data / "isbi2012" / "train-volume.tif"))
    labels = (tifffile.imread(args.data / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
    targets, weights = weight_maps(labels, "binary")
    cpu = Augmenter(images, targets, weights, seed=0)
    drawn = cpu.draw(args.samples)

    def per_second(function, count: int, device: str = "cpu") -> float:
        return count / common.median_seconds(function, repeats=args.repeats, device=device)

    peer = per_second(lambda: elasticdeform_samples(cpu, images, targets, weights, drawn), args.samples)
    rows = [["elasticdeform 0.5 (baseline), CPU", 1, peer, "1.0x"]]
    ours = per_second(lambda: [cpu.sample(1) for _ in range(args.samples)], args.samples)
    rows.append([f"Augmenter, CPU, {args.threads} thread(s)", 1, ours, f"{ours / peer:.1f}x"])
    if args.device != "cpu":
        device = Augmenter(images, targets, weights, seed=0, device=args.device)
        on_device = per_second(lambda: device.sample(args.batch_size), args.batch_size, device=args.device)
        rows.append([f"Augmenter, {args.device}", args.batch_size, on_device, f"{on_device / peer:.1f}x"])
    common.report(
        "augment",
        ["implementation", "batch", "samples/s", "vs elasticdeform"],
        rows,
        device=args.device,
        record=args.record,
        command="python " + " ".join(sys.argv),
        notes=f"{len(images)} ISBI slices 512x512, input tile {cpu.input_size}, output {cpu.output_size}; "
        "the CPU rows share the machine's cores. elasticdeform interpolates the coarse grid with "
        "cubic B-splines and the image with a prefiltered cubic spline, ours with bicubic "
        "convolution: same work, slightly different kernels.",
    )


if __name__ == "__main__":
    main()
