"""The weight-averaging experiment of config/README.md (`train`): one `unet train` run that also keeps the uniform
mean of the weights over the last fractions F of its iterations (`unet.train.WeightAverage`), and writes each
beside the run's last model, as RUN/model-average-F.pt (the metadata of RUN/model.pt, the mean's weights):

    python benchmarks/averaging.py --average-last 0.1 0.25 0.5 -- --data DATA/02 --weights WEIGHTS/02 \\
        --val-data DATA/01 --out RUN --iterations 6000 ...

The averages do not change the run: they draw no random numbers and leave the weights alone, so RUN/model.pt is
the model `unet train` alone makes. Score every file with `unet predict --model` and `unet evaluate`.
A fresh run only (a RUN with a checkpoint is refused): the averages are not checkpointed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import torch  # noqa: E402

import unet.train  # noqa: E402
from unet.cli import main as unet_main  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--average-last", type=float, nargs="+", required=True, metavar="F")
    parser.add_argument("train_arguments", nargs=argparse.REMAINDER)
    chosen = parser.parse_args()
    train_arguments = [a for a in chosen.train_arguments if a != "--"]
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--iterations", type=int, required=True)
    run.add_argument("--out", type=Path, required=True)
    iterations, out = vars(run.parse_known_args(train_arguments)[0]).values()
    if (out / unet.train.CHECKPOINT).exists():
        parser.error(f"{out / unet.train.CHECKPOINT} exists: the averages need a fresh run, from its first step")
    averages: dict[float, unet.train.WeightAverage] = {}
    step, iteration = unet.train.Trainer.step, [0]

    def step_and_average(trainer, *args, **kwargs):
        loss = step(trainer, *args, **kwargs)
        iteration[0] += 1
        for fraction in chosen.average_last:
            if fraction not in averages:
                first = unet.train.first_averaged(iterations, fraction)
                averages[fraction] = unet.train.WeightAverage(trainer.model, first)
            averages[fraction].update(iteration[0], trainer.model)
        return loss

    unet.train.Trainer.step = step_and_average
    status = unet_main(["train", *train_arguments])
    if status == 0:
        for fraction, average in averages.items():
            write_average(out, fraction, average)
    return status


def write_average(out: Path, fraction: float, average: unet.train.WeightAverage) -> None:
    saved = torch.load(out / unet.train.MODEL, map_location="cpu", weights_only=True)
    saved["state_dict"] = {name: value.cpu().clone() for name, value in average.mean.items()}
    saved["metadata"]["average"] = {"first": average.first, "count": average.count}
    torch.save(saved, out / f"model-average-{fraction:g}.pt")
    print(f"averaging: {out}/model-average-{fraction:g}.pt, iterations {average.first}-{iterations_of(average)}")


def iterations_of(average: unet.train.WeightAverage) -> int:
    return average.first + average.count - 1


if __name__ == "__main__":
    sys.exit(main())
