"""The training-recipe experiments of config/README.md (`train`): `unet train` with the two choices that the
package makes for good selectable again, so that each row of the ablation can be run anew.

- `--init paper`: every convolution Gaussian with std sqrt(2/N), the up-convolutions and the head too (the
  package: sqrt(1/N) for those two, which no ReLU follows; unet/model.py).
- `--loss pixel-mean`: the mean over the output pixels of w(x) CE(x) (the package: the weighted mean,
  sum w CE / sum w; unet/train.py).

Every other flag is `unet train`'s (`unet train --help`), e.g. `--grad-clip 0` for no clipping:

    python benchmarks/recipe.py --init paper --loss pixel-mean --grad-clip 0 --learning-rate 0.003 \\
        --data DATA/02 --weights WEIGHTS/02 --val-data DATA/01 --out RUN --base-channels 16 --input-size 380 ...

The held-out IoU and SEG land in RUN/log.csv, the curves in RUN/loss.png.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from torch import nn  # noqa: E402

import unet.train  # noqa: E402
from unet.cli import main as unet_main  # noqa: E402
from unet.model import UNet  # noqa: E402


def paper_initialisation(model: UNet) -> None:
    """std sqrt(2/N) for every convolution, as the paper states it, biases zero."""
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            fan_in = module.in_channels
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        else:
            continue
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
        nn.init.zeros_(module.bias)


def pixel_mean_cross_entropy(logits, target, weight):
    """The mean over the output pixels of w(x) times the soft-max cross-entropy."""
    return (nn.functional.cross_entropy(logits.float(), target, reduction="none") * weight).mean()


def main() -> int:
    choices = argparse.ArgumentParser(add_help=False)
    choices.add_argument("--init", choices=("paper", "package"), default="package")
    choices.add_argument("--loss", choices=("pixel-mean", "package"), default="package")
    chosen, train_arguments = choices.parse_known_args()
    if chosen.init == "paper":
        UNet.reset_parameters = paper_initialisation
    if chosen.loss == "pixel-mean":
        unet.train.weighted_cross_entropy = pixel_mean_cross_entropy
    return unet_main(["train", *train_arguments])


if __name__ == "__main__":
    sys.exit(main())
