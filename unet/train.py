"""Training the U-Net: weighted soft-max cross-entropy, SGD with momentum 0.99, one tile per batch.

- Loss (paper, section 3): a pixel-wise soft-max over the two class maps, then the
  cross-entropy weighted per pixel by the precomputed weight map w(x). Our reduction
  is the MEAN of w(x) * CE over the output pixels (and the batch); the paper writes
  a sum over the 388x388 output pixels, i.e. ours times 150,544. With SGD this is
  only a rescaling of the learning rate (see config/README.md).
- Optimiser (paper): SGD, momentum 0.99, batch size 1 (one 572x572 tile). The
  learning rate, its schedule and the iterations are not published: ours are
  configurable, with the defaults chosen and explained in config/README.md.
- Data: the augmentation stage (`unet.augment.Augmenter`) samples the tiles on the
  training device, so a step never waits for the host.
- On a GPU: bf16 autocast, channels_last, cudnn autotuning, optional torch.compile;
  the loss is only read back every `log_every` iterations. On the CPU the same code
  runs in fp32, and a resumed run is bit-identical to an uninterrupted one.
- Checkpoints (`checkpoint.pt`, atomic) every `checkpoint_every` iterations hold the
  model, the optimiser, the random states (torch, CUDA, augmenter), the iteration,
  the log so far and the settings; a restarted run with the same settings resumes
  from it, one with other settings starts over. It holds only tensors and plain
  values: it loads with `weights_only=True`.
- Outputs in MODEL_DIR: `model.pt` (`unet.model.save_model`, with metadata),
  `checkpoint.pt`, `log.csv` (iteration, loss, learning rate, elapsed seconds,
  samples/s, held-out pixel error) and `loss.png`.
- A NaN or infinite loss stops the run with an error that names the iterations;
  the last checkpoint, written only from finite losses and weights, is kept.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from unet.augment import Augmenter
from unet.device import resolve_device
from unet.figures import figure
from unet.io import (
    DataError,
    TrainingSet,
    add_fold_arguments,
    atomic_path,
    fold_of,
    format_frames,
    held_out_frames,
    load_training_set,
    parse_frames,
    read_json,
)
from unet.model import UNet, save_model
from unet.predict import predict_probabilities
from unet.settings import AugmentSettings, ModelSettings, TrainSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
LOG = "log.csv"
FIGURE = "loss.png"
LOG_COLUMNS = ("iteration", "loss", "learning_rate", "elapsed_s", "samples_per_s", "val_pixel_error")
POLY_EXPONENT = 0.9  # nnU-Net's polynomial decay


# Settings that change how a run is carried out or reported, not its result: a run may
# resume from a checkpoint written with other values of these.
RUN_CONTROL = ("checkpoint_every", "log_every", "val_every", "device", "channels_last", "compile")


class DivergedError(ValueError):
    """The loss became NaN or infinite: the settings do not train on this data."""


# --- settings and the command line -------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DATA_SPLIT_DIR",
        help="prepared split (images.tif, labels.tif, frames.json)",
    )
    parser.add_argument(
        "--weights",
        required=True,
        type=Path,
        metavar="WEIGHT_DIR",
        help="target.tif and weights.tif of that split (unet weightmap)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="MODEL_DIR",
        help="where model.pt, checkpoint.pt, log.csv and loss.png go",
    )
    parser.add_argument(
        "--frames", metavar="SPEC", help="labelled frame ids to train on, e.g. 0-19 (default: all but --val-frames)"
    )
    parser.add_argument(
        "--val-frames", metavar="SPEC", help="labelled frame ids for the periodic held-out pixel error (default: none)"
    )
    add_fold_arguments(parser, "hold out (and validate on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, dropout and augmentation")
    for settings_class in (ModelSettings, AugmentSettings, TrainSettings):
        add_settings_arguments(parser, settings_class)


def run(args: argparse.Namespace) -> int:
    settings = {  # checked before any data is read
        "model_settings": from_arguments(ModelSettings, args),
        "augment": from_arguments(AugmentSettings, args),
        "settings": from_arguments(TrainSettings, args),
    }
    frames, val_frames = (parse_frames(spec) if spec else None for spec in (args.frames, args.val_frames))
    fold = fold_of(args)
    if fold:
        if frames or val_frames:
            raise ValueError("select frames with --frames/--val-frames or with --fold, not both")
        labelled = read_json(Path(args.data) / "frames.json")["labelled"]
        val_frames = held_out_frames(labelled, fold[1], fold[0])
        frames = [frame for frame in labelled if frame not in val_frames]
    train(load_data(args.data, args.weights, frames, val_frames), args.out, seed=args.seed, **settings)
    return 0


# --- data ---------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The frames to train on and those held out (None without `--val-frames`), from one prepared split."""

    train: TrainingSet
    held_out: TrainingSet | None
    weight_dir: Path


def load_data(
    data_dir: Path, weight_dir: Path, frames: list[int] | None = None, val_frames: list[int] | None = None
) -> TrainingData:
    """Read a prepared split and its weight maps, check the maps, select the frames.

    `frames` defaults to every labelled frame that is not in `val_frames`.
    """
    val_frames = list(val_frames or [])
    if frames is None:
        frames = [frame for frame in read_json(Path(data_dir) / "frames.json")["labelled"] if frame not in val_frames]
    both = sorted(set(frames) & set(val_frames))
    if both:
        raise ValueError(f"frames {format_frames(both)} are both trained on and held out (--frames, --val-frames)")
    train = load_training_set(data_dir, weight_dir, frames)
    held_out = load_training_set(data_dir, weight_dir, val_frames) if val_frames else None
    for training in filter(None, (train, held_out)):
        _check_targets_and_weights(training, Path(weight_dir))
    return TrainingData(train, held_out, Path(weight_dir))


def _check_targets_and_weights(training: TrainingSet, weight_dir: Path) -> None:
    targets, weights = training.targets, training.weights
    if targets.dtype != np.uint8 or not set(np.unique(targets).tolist()) <= {0, 1}:
        raise DataError(
            f"{weight_dir / 'target.tif'}: expected uint8 classes 0 and 1, found {targets.dtype} "
            f"values {np.unique(targets)[:10].tolist()}"
        )
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        index, row, column = np.argwhere(bad)[0]
        raise DataError(
            f"{weight_dir / 'weights.tif'}: {int(bad.sum())} weights are negative, NaN or infinite "
            f"(first in frame {training.frames[index]} at pixel ({row}, {column}): "
            f"{weights[index, row, column]})"
        )


# --- the step -----------------------------------------------------------------------


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the output pixels of w(x) times the soft-max cross-entropy, computed in fp32."""
    return (F.cross_entropy(logits.float(), target, reduction="none") * weight).mean()


def _forward_loss(model: torch.nn.Module, image, target, weight) -> torch.Tensor:
    return weighted_cross_entropy(model(image), target, weight)


def learning_rate_at(step: int, settings: TrainSettings) -> float:
    """The learning rate of the 0-based `step`: linear warm-up, then constant or polynomial decay."""
    rate = settings.learning_rate
    if settings.lr_schedule == "poly":
        rate *= (1 - step / settings.iterations) ** POLY_EXPONENT
    if step < settings.warmup:
        rate *= (step + 1) / settings.warmup
    return rate


class Trainer:
    """The model, its optimiser and one training step on a device, tuned for the GPU.

    `step` returns the loss as a device tensor and never synchronises with the host.
    """

    def __init__(self, model: UNet, settings: TrainSettings, device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if cuda and settings.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, fused=cuda or None
        )
        self.precision = "bf16" if cuda and settings.precision == "bf16" else "fp32"  # bf16 only on CUDA
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        self.forward_loss = torch.compile(_forward_loss) if settings.compile else _forward_loss
        if cuda:
            torch.backends.cudnn.benchmark = True

    def step(
        self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, learning_rate: float
    ) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.forward_loss(self.model, image.contiguous(memory_format=self.memory_format), target, weight)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def held_out_pixel_error(self, held_out: TrainingSet, input_size: int) -> float:
        """Fraction of the held-out pixels whose cell probability is on the wrong side of 0.5.

        Whole frames, by the overlap-tile prediction (`unet.predict`, no test-time augmentation).
        """
        probabilities = predict_probabilities(
            self.model, held_out.images, input_size=input_size, tta="none", precision=self.precision
        )
        self.model.to(memory_format=self.memory_format)  # prediction leaves it channels-last
        return float(((probabilities > 0.5) != held_out.targets).mean())

    def parameters_finite(self) -> bool:
        return bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())


# --- checkpoints ----------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    path: Path,
    *,
    iteration: int,
    trainer: Trainer,
    augmenter: Augmenter,
    settings: dict,
    log: list[dict],
    elapsed: float,
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "iteration": iteration,
                "settings": settings,
                "config": dict(trainer.model.config),
                "state_dict": trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "rng": _rng_state(trainer.device),
                "augmenter": augmenter.state_dict(),
                "log": log,
                "elapsed_s": elapsed,
            },
            tmp,
        )


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None if there is none; an unreadable one is an error naming it."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path}: not a readable checkpoint ({error}); delete it to start over") from error


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


# --- the loop -------------------------------------------------------------------------


class _Log:
    """Rows of log.csv: the mean loss since the last row, read back from the device only here."""

    def __init__(self, rows: list[dict], elapsed: float, batch_size: int):
        self.rows = rows
        self.batch_size = batch_size
        self.elapsed_before = elapsed
        self.start = time.perf_counter()
        self.since = self.start
        self.loss_sum = None
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.count += 1

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def row(self, iteration: int, learning_rate: float) -> dict:
        """Close the interval since the last row; `DivergedError` if any loss in it was not finite."""
        loss = self.loss_sum.item() / self.count  # one host synchronisation per row
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
            "val_pixel_error": None,
        }
        self.rows.append(row)
        self.loss_sum, self.count = None, 0
        return row

    def restart_interval(self) -> None:
        """Start timing the next interval now (after validation or a checkpoint)."""
        self.since = time.perf_counter()


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def plot_loss(path: Path, rows: list[dict]) -> None:
    with figure(path, size=(6, 4), dpi=120, layout="tight") as (_, axes):
        _draw_loss(axes[0, 0], rows)


def _draw_loss(axis, rows: list[dict]) -> None:
    axis.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], color="C0", label="training loss")
    axis.set_xlabel("iteration")
    axis.set_ylabel("weighted cross-entropy (mean over pixels)")
    axis.set_yscale("log")
    validated = [r for r in rows if r["val_pixel_error"] is not None]
    if validated:
        right = axis.twinx()
        right.plot(
            [r["iteration"] for r in validated],
            [r["val_pixel_error"] for r in validated],
            "o-",
            color="C1",
            label="held-out pixel error",
        )
        right.set_ylabel("held-out pixel error", color="C1")
    axis.set_title("training loss")


def train(
    data: TrainingData,
    out_dir: Path,
    *,
    model_settings: ModelSettings,
    augment: AugmentSettings,
    settings: TrainSettings,
    seed: int = 0,
) -> UNet:
    """Train (or resume, or finish) a run in `out_dir`; returns the trained model."""
    out_dir = Path(out_dir)
    device = resolve_device(settings.device)
    run_settings = {
        "model": dataclasses.asdict(model_settings),
        "augment": dataclasses.asdict(augment),
        "train": {k: v for k, v in dataclasses.asdict(settings).items() if k not in RUN_CONTROL},
        "seed": seed,
        "frames": data.train.frames,
        "val_frames": data.held_out.frames if data.held_out else [],
    }
    torch.manual_seed(seed)
    trainer = Trainer(UNet(**dataclasses.asdict(model_settings)), settings, device)
    augmenter = Augmenter(
        *data.train[:3],
        input_size=settings.input_size,
        config=augment,
        device=device,
        seed=seed,
        depth=model_settings.depth,
    )
    _remove_leftovers(out_dir)
    start, log = _resume(out_dir / CHECKPOINT, run_settings, trainer, augmenter, settings.batch_size)
    last_checkpoint = start or None

    progress = _progress_bar(settings.iterations, start)
    for iteration in range(start + 1, settings.iterations + 1):
        learning_rate = learning_rate_at(iteration - 1, settings)
        log.add(trainer.step(*augmenter.sample(settings.batch_size), learning_rate))
        progress.update()
        final = iteration == settings.iterations
        due_checkpoint = iteration % settings.checkpoint_every == 0 or final
        due_val = data.held_out is not None and (iteration % settings.val_every == 0 or final)
        if not (iteration % settings.log_every == 0 or due_checkpoint or due_val):
            continue
        try:
            row = log.row(iteration, learning_rate)
            if due_checkpoint and not trainer.parameters_finite():
                raise DivergedError(f"the weights became NaN or infinite by iteration {iteration}")
        except DivergedError as error:
            progress.close()
            kept = (
                f"the last good checkpoint (iteration {last_checkpoint}) is kept in {out_dir / CHECKPOINT}"
                if last_checkpoint
                else "no checkpoint had been written yet"
            )
            raise DivergedError(
                f"{error}; training stopped, {kept}. Lower --learning-rate "
                f"or check the weight maps in {data.weight_dir}"
            ) from None
        if due_val:
            row["val_pixel_error"] = trainer.held_out_pixel_error(data.held_out, settings.input_size)
        progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        if due_checkpoint:
            save_checkpoint(
                out_dir / CHECKPOINT,
                iteration=iteration,
                trainer=trainer,
                augmenter=augmenter,
                settings=run_settings,
                log=log.rows,
                elapsed=log.elapsed(),
            )
            last_checkpoint = iteration
        write_log(out_dir / LOG, log.rows)
        log.restart_interval()
    progress.close()

    write_log(out_dir / LOG, log.rows)
    plot_loss(out_dir / FIGURE, log.rows)
    save_model(
        out_dir / MODEL,
        trainer.model,
        iterations=settings.iterations,
        seed=seed,
        settings=run_settings,
        final_loss=log.rows[-1]["loss"] if log.rows else None,
        elapsed_s=log.elapsed(),
        device=str(device),
        torch=str(torch.__version__),
    )
    return trainer.model


def _remove_leftovers(out_dir: Path) -> None:
    """Delete the temporary files (`atomic_path`'s `.NAME.*`) of writes that a killed run left unfinished."""
    for name in (CHECKPOINT, MODEL, LOG, FIGURE):
        for leftover in out_dir.glob(f".{name}.*"):
            leftover.unlink()


def _resume(
    path: Path, run_settings: dict, trainer: Trainer, augmenter: Augmenter, batch_size: int
) -> tuple[int, _Log]:
    """Restore the state of the checkpoint at `path` if it was written with the same settings."""
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return 0, _Log([], 0.0, batch_size)
    changed = _differences(checkpoint["settings"], run_settings)
    if changed:
        print(
            f"unet train: {path} was written with other settings ({'; '.join(changed)}); starting over", file=sys.stderr
        )
        return 0, _Log([], 0.0, batch_size)
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    augmenter.load_state_dict(checkpoint["augmenter"])
    _set_rng_state(checkpoint["rng"], trainer.device)
    print(f"unet train: resuming from {path} at iteration {checkpoint['iteration']}", file=sys.stderr)
    return checkpoint["iteration"], _Log(checkpoint["log"], checkpoint["elapsed_s"], batch_size)


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 60,
        file=sys.stderr,
    )
