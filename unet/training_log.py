"""What a training run reports: `log.csv` and `loss.png`, the training loss beside held-out scores.

Each row closes an interval of iterations: the mean loss over it (read back from the device
only here, once per row), the learning rate, the time, the throughput, and, when the run has
held-out frames and the row is due for them, the held-out foreground IoU and, for cell data,
the held-out SEG (`unet.train.held_out_scores`).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from unet.errors import UsageError
from unet.figures import figure
from unet.io import atomic_path

LOG = "log.csv"
FIGURE = "loss.png"
COLUMNS = ("iteration", "loss", "learning_rate", "elapsed_s", "samples_per_s", "val_iou", "val_seg")
SCORES = {"val_iou": "held-out foreground IoU", "val_seg": "held-out SEG"}


class DivergedError(UsageError):
    """The loss became NaN or infinite: the settings do not train on this data."""


class TrainingLog:
    """The rows so far and the loss of the interval since the last row (`pending` carries it over a resume)."""

    def __init__(self, rows: list[dict], pending: dict, elapsed_s: float, batch_size: int):
        self.rows = rows
        self.batch_size = batch_size
        self.elapsed_before = elapsed_s
        self.start = self.since = time.perf_counter()
        self.loss_sum = pending.get("loss_sum")
        self.count = pending.get("count", 0)

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.count += 1

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def pending(self) -> dict:
        """The unfinished interval, as plain values for a checkpoint."""
        loss_sum = None if self.loss_sum is None else float(self.loss_sum)
        return {"loss_sum": loss_sum, "count": self.count}

    def row(self, iteration: int, learning_rate: float) -> dict:
        """Close the interval since the last row; `DivergedError` if any loss in it was not finite."""
        loss = float(self.loss_sum) / self.count  # one host synchronisation per row
        now = time.perf_counter()
        if not math.isfinite(loss):
            first = iteration - self.count + 1
            when = f"at iteration {iteration}" if first == iteration else f"between iterations {first} and {iteration}"
            raise DivergedError(f"the loss became {loss} {when} (learning rate {learning_rate:.3g})")
        row = {
            "iteration": iteration,
            "loss": loss,
            "learning_rate": learning_rate,
            "elapsed_s": round(self.elapsed(), 3),
            "samples_per_s": self.count * self.batch_size / max(now - self.since, 1e-9),
        }
        self.rows.append(row)
        self.loss_sum, self.count = None, 0
        return row

    def restart_interval(self) -> None:
        """Start timing the next interval now (after held-out scores or a checkpoint)."""
        self.since = time.perf_counter()


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in COLUMNS} for row in rows)


def constant_output_loss(targets: np.ndarray, weights: np.ndarray) -> float:
    """The loss of the best output that ignores the image: the plateau before a network learns.

    Under the weighted mean of the cross-entropy that output is p(cell) = f, the cells' share of
    the weight, everywhere, and its loss the entropy of f. The separation borders carry most of
    the weight, so f is not the cells' share of the pixels (ISBI 2012: 0.29, not 0.79), and a
    network that has not learned yet predicts no cells at all.
    """
    weights = weights.astype(np.float64)
    cells = float(weights[targets > 0].sum() / max(weights.sum(), np.finfo(np.float64).tiny))
    return -sum(share * math.log(share) for share in (cells, 1 - cells) if share > 0)


def plot_loss(path: Path, rows: list[dict], constant_loss: float | None = None) -> None:
    """The training loss (log scale) beside `constant_loss`, and on the right axis the held-out scores."""
    with figure(path, size=(6.5, 4), dpi=120, layout="tight") as (_, axes):
        axis = axes[0, 0]
        axis.plot([row["iteration"] for row in rows], [row["loss"] for row in rows], color="C0", label="training loss")
        if constant_loss:
            axis.axhline(constant_loss, color="0.5", linestyle="--", label="a constant output (not learning)")
            axis.legend(loc="upper right")
        axis.set_xlabel("iteration")
        axis.set_ylabel("training loss (weighted cross-entropy)", color="C0")
        axis.set_yscale("log")
        scored = {key: [row for row in rows if row.get(key) is not None] for key in SCORES}
        if any(scored.values()):
            right = axis.twinx()
            for colour, (key, name) in zip(("C1", "C2"), SCORES.items()):
                if scored[key]:
                    iterations = [row["iteration"] for row in scored[key]]
                    right.plot(iterations, [row[key] for row in scored[key]], "o-", color=colour, label=name)
            right.set_ylim(0, 1)
            right.set_ylabel("held-out score (higher is better)")
            right.legend(loc="lower left")
        axis.set_title("training loss and held-out scores")
