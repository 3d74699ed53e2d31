"""Training the U-Net: weighted soft-max cross-entropy, SGD with momentum 0.99, one tile per batch.

- Loss (paper, section 3): a pixel-wise soft-max over the two class maps, then the
  cross-entropy weighted per pixel by the precomputed weight map w(x). Our reduction
  (choice) is the weighted mean, sum_x w(x) CE(x) / sum_x w(x) over the output pixels
  of the batch; the paper writes the sum. The mean keeps the learning rate independent
  of the tile size and of how much weight a data set's maps carry (ISBI's average 1.75,
  HeLa's 1.09), and pixels of zero weight (unannotated cells) do not dilute it.
- Optimiser (paper): SGD, momentum 0.99, batch size 1 (one 572x572 tile). The
  learning rate, its schedule and the iterations are not published: ours are
  configurable, with the defaults chosen and explained in config/README.md. The
  gradient's global norm is clipped at `grad_clip` (choice: a guard against the
  first steps' large gradients; 0 turns it off).
- Data: the augmentation stage (`unet.augment.Augmenter`) samples the tiles on the
  training device, so a step never waits for the host.
- The kept model (choice, `average_last`): the mean of the weights after each of the last
  `average_last` x `iterations` steps (Polyak averaging, `WeightAverage`); 0 keeps the
  last weights.
- Held-out scores (monitoring only: no model is selected on them): every `val_every`
  iterations the held-out frames (`--val-frames` or `--fold` of the training split, or
  the labelled frames of `--val-data`, e.g. the other CTC sequence) are predicted whole,
  by the overlap-tile prediction without test-time augmentation, with the weights that
  would be kept (the mean, once averaging has begun); the log gets their foreground IoU
  and, for instance labels, their SEG.
- Precision and layout (`unet.device`): `precision: auto` is bf16 autocast where the device computes
  bf16 faster than fp32 (CUDA; CPUs with AMX-BF16, AMD CPUs with AVX512-BF16) and fp32 elsewhere; the
  loss, the weight maps and the optimiser's state stay fp32. `channels_last` where it pays (GPUs,
  AVX-512 CPUs). On a GPU also cudnn autotuning, the fused SGD and optional torch.compile; the loss is
  only read back every `log_every` iterations. On the CPU a resumed run is bit-identical to an
  uninterrupted one.
- Checkpoints (`unet.checkpoint`) every `checkpoint_every` iterations, and at once when
  the process gets SIGTERM or SIGUSR1 (a cluster's time limit or preemption) or SIGINT
  (Ctrl-C): the run then exits with status 128 + the signal's number (130 for Ctrl-C),
  and a run started again resumes. One run at a time holds MODEL_DIR (`unet.io.claim_outputs`):
  a second is refused at once.
  `log.csv` and `loss.png` (`unet.training_log`) are rewritten at every checkpoint.
- Outputs in MODEL_DIR: `model.pt` (`unet.model.save_model`, with the settings, the
  prediction defaults for its users and the input scaling), `run.json` (what produced it:
  `unet.provenance`), `checkpoint.pt`, `log.csv`, `loss.png`.
- A NaN or infinite loss stops the run with an error that names the iterations;
  the last checkpoint, written only from finite losses and weights, is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from unet import metrics, provenance
from unet.augment import Augmenter
from unet.checkpoint import CHECKPOINT, resume, save_checkpoint
from unet.device import memory_format, precision_used, resolve_device, uses_bf16
from unet.errors import UsageError
from unet.gpus import gpu_id
from unet.io import (
    NORMALIZATION_PERCENTILES,
    OUTPUT_FOLDER,
    DataError,
    TrainingSet,
    claim_outputs,
    crops,
    format_frames,
    load_training_set,
    normalize_intensity,
    parse_frames,
    per_extent,
    read_json,
    read_split,
    select_labelled,
    write_json,
)
from unet.model import UNet, save_model
from unet.overlap_tile import predict_probabilities
from unet.pipeline import add_fold_arguments, fold_of, held_out_frames
from unet.predict import instance_masks
from unet.progress import progress_bar
from unet.settings import (
    MODEL_PREDICT_KEYS,
    AugmentSettings,
    ModelSettings,
    PredictSettings,
    TrainSettings,
    from_arguments,
)
from unet.settings import add_arguments as add_settings_arguments
from unet.training_log import FIGURE, LOG, DivergedError, TrainingLog, constant_output_loss, plot_loss, write_log

MODEL = "model.pt"
RUN_RECORD = "run.json"  # what produced the model (unet.provenance), for the tables
POLY_EXPONENT = 0.9  # nnU-Net's polynomial decay
# Settings that change how a run is carried out or reported, not its result: a run may
# resume from a checkpoint written with other values of these.
RUN_CONTROL = ("checkpoint_every", "log_every", "val_every", "device", "channels_last", "compile")
# A cluster's time limit or preemption (SIGTERM), its advance notice (SIGUSR1, `sbatch --signal`), or Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped at a signal after writing a checkpoint; `exit_status` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_status = 128 + signum


# --- the command line -----------------------------------------------------------------------------


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
        "--val-frames",
        metavar="SPEC",
        help="labelled frame ids of --data held out for the periodic held-out scores (default: none)",
    )
    parser.add_argument(
        "--val-data",
        type=Path,
        metavar="SPLIT_DIR",
        help="another prepared split whose labelled frames give the held-out scores, e.g. the "
        "other sequence of a cell data set (monitoring only)",
    )
    add_fold_arguments(parser, "hold out (and score)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, dropout and augmentation")
    for settings_class in (ModelSettings, AugmentSettings, TrainSettings):
        add_settings_arguments(parser, settings_class)
    add_settings_arguments(
        parser,
        PredictSettings,
        keys=MODEL_PREDICT_KEYS,
        prefix="predict",
        title="prediction defaults saved in model.pt for its users (config section `predict`)",
    )


def run(args: argparse.Namespace) -> int:
    settings = {  # checked before any data is read
        "model_settings": from_arguments(ModelSettings, args),
        "augment": from_arguments(AugmentSettings, args),
        "settings": from_arguments(TrainSettings, args),
        "predict": from_arguments(PredictSettings, args, keys=MODEL_PREDICT_KEYS, prefix="predict"),
    }
    with claim_outputs((args.out, OUTPUT_FOLDER)):
        frames, val_frames = _frame_selection(args)
        data = load_data(args.data, args.weights, frames, val_frames, args.val_data)
        train(data, args.out, seed=args.seed, **settings)
    return 0


def _frame_selection(args: argparse.Namespace) -> tuple[list[int] | None, list[int] | None]:
    """(frames to train on, frames held out) from --frames/--val-frames or --fold/--folds."""
    frames, val_frames = (parse_frames(spec) if spec else None for spec in (args.frames, args.val_frames))
    fold = fold_of(args)
    if fold and (frames or val_frames):
        raise UsageError("select frames with --frames/--val-frames or with --fold, not both")
    if (fold or val_frames) and args.val_data:
        raise UsageError("hold out frames of --data (--val-frames, --fold) or give --val-data, not both")
    if fold:
        labelled = read_json(Path(args.data) / "frames.json")["labelled"]
        val_frames = held_out_frames(labelled, fold[1], fold[0])
        frames = [frame for frame in labelled if frame not in val_frames]
    return frames, val_frames


# --- data -----------------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Labelled frames scored during training: normalised images and their labels (binary or instances)."""

    images: np.ndarray
    labels: np.ndarray
    kind: str
    frames: list[int]
    source: str
    unannotated: np.ndarray | None = None  # bool: cells shown but not annotated, left out of the IoU
    sizes: list[tuple[int, int]] | None = None  # true extents in a padded stack (`unet.io`); None: whole frames


@dataclass
class TrainingData:
    """The frames to train on and those held out (None without any), with the folder of the weight maps."""

    train: TrainingSet
    held_out: HeldOut | None
    weight_dir: Path
    kind: str = "binary"


def load_data(
    data_dir: Path,
    weight_dir: Path,
    frames: list[int] | None = None,
    val_frames: list[int] | None = None,
    val_data: Path | None = None,
) -> TrainingData:
    """Read a prepared split and its weight maps, check the maps, select the frames; the held-out frames are
    `val_frames` of the same split or the labelled frames of `val_data`.

    `frames` defaults to every labelled frame that is not in `val_frames`.
    """
    val_frames = list(val_frames or [])
    split = read_split(data_dir)
    if frames is None:
        frames = [frame for frame in split.labelled if frame not in val_frames]
        if not frames and val_frames:
            raise UsageError(
                f"--val-frames {format_frames(val_frames)} holds out every labelled frame of {data_dir}: "
                "none is left to train on"
            )
    both = sorted(set(frames) & set(val_frames))
    if both:
        raise UsageError(f"frames {format_frames(both)} are both trained on and held out (--frames, --val-frames)")
    training = load_training_set(data_dir, weight_dir, frames)
    _check_targets_and_weights(training, Path(weight_dir))
    held_out = None
    if val_frames:
        held_out = load_held_out(data_dir, val_frames)
    elif val_data is not None:
        held_out = load_held_out(val_data)
    return TrainingData(training, held_out, Path(weight_dir), split.kind)


def load_held_out(data_dir: Path, frames: list[int] | None = None) -> HeldOut:
    """The labelled frames (all, or `frames`) of a prepared split, for the held-out scores."""
    split = read_split(data_dir)
    if split.labels is None:
        raise DataError(f"{data_dir}: the split has no labelled frames to hold out")
    chosen, rows = select_labelled(split, data_dir, frames)
    sizes = split.labelled_sizes(rows)
    images = normalize_intensity(split.labelled_images()[rows], sizes=sizes)
    unannotated = split.unannotated[rows] if split.unannotated is not None else None
    return HeldOut(images, split.labels[rows], split.kind, chosen, str(data_dir), unannotated, sizes)


def _check_targets_and_weights(training: TrainingSet, weight_dir: Path) -> None:
    targets, weights = training.targets, training.weights
    if targets.dtype != np.uint8 or targets.max(initial=0) > 1:
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


# --- the step -------------------------------------------------------------------------------------


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weighted mean of the soft-max cross-entropy, sum w(x) CE(x) / sum w(x), computed in fp32.

    A batch whose weights are all zero (a tile inside an unannotated cell) has loss 0.
    """
    cross_entropy = F.cross_entropy(logits.float(), target, reduction="none")
    return (cross_entropy * weight).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


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


def first_averaged(iterations: int, average_last: float) -> int:
    """The first iteration whose weights the kept model averages (`iterations` + 1: none, the last weights kept)."""
    averaged = max(1, round(average_last * iterations)) if average_last else 0
    return iterations - averaged + 1


class WeightAverage:
    """The uniform mean of a model's weights after each step from iteration `first` on (Polyak averaging).

    Kept in fp32 beside the model and updated in place: mean_n = mean_(n-1) + (w_n - mean_(n-1)) / n.
    """

    def __init__(self, model: torch.nn.Module, first: int):
        self.first, self.count = first, 0
        self.mean = {name: value.detach().float().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, iteration: int, model: torch.nn.Module) -> None:
        if iteration < self.first:
            return
        self.count += 1
        weights = [value.float() for value in model.state_dict().values()]
        torch._foreach_lerp_(list(self.mean.values()), weights, 1.0 / self.count)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the mean within the block (if there is one yet) and its own weights again after it."""
        if not self.count:
            yield
            return
        own = {name: value.clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.mean)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"first": self.first, "count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.first, self.count = state["first"], state["count"]
        for name, value in state["mean"].items():
            self.mean[name].copy_(value)


class Trainer:
    """The model, its optimiser and one training step on a device.

    The precision and memory layout are the fastest correct ones for the device (`unet.device`): bf16
    autocast where the device computes bf16 faster, channels_last where it pays. `step` returns the loss as
    a device tensor and never synchronises with the host: the learning rate lives on the device too.
    """

    def __init__(self, model: UNet, settings: TrainSettings, device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        self.bf16 = uses_bf16(settings.precision, device)
        self.precision = precision_used(self.bf16, device)
        self.memory_format = memory_format(device, settings.channels_last)
        self.model = model.to(device, memory_format=self.memory_format).train()
        # A tensor, so that neither a step nor a captured CUDA graph bakes the rate in; float64 on the CPU
        # keeps the update bit-identical to a Python float's.
        self.learning_rate = torch.zeros((), dtype=torch.float32 if cuda else torch.float64, device=device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.learning_rate, momentum=settings.momentum, fused=cuda or None
        )
        self.grad_clip = settings.grad_clip
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.forward_loss = torch.compile(_forward_loss) if settings.compile else _forward_loss
        if cuda:
            torch.backends.cudnn.benchmark = True

    def step(
        self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, learning_rate: float
    ) -> torch.Tensor:
        self.learning_rate.fill_(learning_rate)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.forward_loss(self.model, image.contiguous(memory_format=self.memory_format), target, weight)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach().clone()  # a buffer of its own: a CUDA graph's replay would overwrite the graph's

    def held_out_scores(self, held_out: HeldOut, input_size: int) -> dict[str, float]:
        """The held-out frames' foreground IoU and, for instance labels, SEG (`held_out_scores`)."""
        scores = held_out_scores(self.model, held_out, input_size, precision="bf16" if self.bf16 else "fp32")
        self.model.to(memory_format=self.memory_format)  # prediction may leave it in its own layout
        return scores

    def parameters_finite(self) -> bool:
        return bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())


def held_out_scores(
    model: torch.nn.Module, held_out: HeldOut, input_size: int, precision: str = "auto"
) -> dict[str, float]:
    """Whole held-out frames (each at its true extent) predicted without test-time augmentation: the foreground IoU
    of `probability > 0.5` against the labelled cells (outside the cells left unannotated) and, for instance labels,
    the Cell Tracking Challenge's SEG of the connected components (`unet.predict.instance_masks` at its defaults)."""
    probabilities = per_extent(
        lambda images: predict_probabilities(model, images, input_size=input_size, tta="none", precision=precision),
        held_out.images,
        held_out.sizes,
    )
    probabilities, labels = crops(probabilities, held_out.sizes), crops(held_out.labels, held_out.sizes)
    unannotated = crops(held_out.unannotated, held_out.sizes) if held_out.unannotated is not None else None
    cells = [probability > 0.5 for probability in probabilities]
    scores = {"val_iou": metrics.foreground_iou(cells, [label > 0 for label in labels], unannotated)["value"]}
    if held_out.kind == "instance":
        masks = [instance_masks(probability[None])[0] for probability in probabilities]
        scores["val_seg"] = metrics.ctc_seg(masks, labels)["value"]
    return scores


# --- the loop -------------------------------------------------------------------------------------


def train(
    data: TrainingData,
    out_dir: Path,
    *,
    model_settings: ModelSettings,
    augment: AugmentSettings,
    settings: TrainSettings,
    predict: PredictSettings | None = None,
    seed: int = 0,
) -> UNet:
    """Train (or resume, or finish) a run in `out_dir`; returns the trained model.

    `Interrupted` when SIGTERM, SIGUSR1 or SIGINT stopped it after a checkpoint.
    """
    session = _Session(data, Path(out_dir), model_settings, augment, settings, seed)
    with _stop_signals() as stop, contextlib.closing(session.progress):  # the bar ends before an error's line
        for iteration in range(session.start + 1, settings.iterations + 1):
            learning_rate = learning_rate_at(iteration - 1, settings)
            session.step(iteration, learning_rate)
            session.report(iteration, learning_rate, scores=not stop)  # a stop does not wait for scoring
            if stop:
                session.interrupt(iteration, stop[0])
    return session.finish(predict or PredictSettings())


class _Session:
    """One training run in its folder: the trainer, the sampler, the log and the checkpoints."""

    def __init__(
        self,
        data: TrainingData,
        out_dir: Path,
        model_settings: ModelSettings,
        augment: AugmentSettings,
        settings: TrainSettings,
        seed: int,
    ):
        self.data, self.out_dir, self.settings, self.seed = data, out_dir, settings, seed
        # The commit of the code that runs, read now: the checkout may move on during a long training.
        self.code_version = provenance.code_version()
        self.device = resolve_device(settings.device)
        self.run_settings = {
            "model": dataclasses.asdict(model_settings),
            "augment": dataclasses.asdict(augment),
            "train": {k: v for k, v in dataclasses.asdict(settings).items() if k not in RUN_CONTROL},
            "seed": seed,
            "frames": data.train.frames,
            "val_frames": data.held_out.frames if data.held_out else [],
        }
        torch.manual_seed(seed)
        self.trainer = Trainer(UNet(**dataclasses.asdict(model_settings)), settings, self.device)
        first = first_averaged(settings.iterations, settings.average_last)
        self.average = WeightAverage(self.trainer.model, first) if first <= settings.iterations else None
        self.augmenter = Augmenter(
            *data.train[:3],
            input_size=settings.input_size,
            config=augment,
            device=self.device,
            seed=seed,
            depth=model_settings.depth,
            sizes=data.train.sizes,
        )
        resumed = resume(
            out_dir / CHECKPOINT,
            self.run_settings,
            self.trainer.model,
            self.trainer.optimizer,
            self.augmenter,
            self.device,
            self.average,
        )
        self.start = resumed.iteration
        self.last_checkpoint = resumed.iteration or None
        self.log = TrainingLog(resumed.rows, resumed.pending, resumed.elapsed_s, settings.batch_size)
        self.constant_loss = constant_output_loss(data.train.targets, data.train.weights)
        print(
            f"unet train: a constant output would have loss {self.constant_loss:.3f} on these weight maps; "
            "the network learns once its loss falls below that",
            file=sys.stderr,
        )
        self.progress = progress_bar(settings.iterations, desc="train", unit="it", initial=self.start)

    def step(self, iteration: int, learning_rate: float) -> None:
        self.log.add(self.trainer.step(*self.augmenter.sample(self.settings.batch_size), learning_rate))
        if self.average:
            self.average.update(iteration, self.trainer.model)
        self.progress.update()

    def kept_weights(self) -> contextlib.AbstractContextManager:
        """Within it, the model holds the weights that `finish` keeps: the average once there is one."""
        return self.average.applied(self.trainer.model) if self.average else contextlib.nullcontext()

    def report(self, iteration: int, learning_rate: float, *, scores: bool = True) -> None:
        """At the iterations due for it: a log row, the held-out scores (unless not `scores`), a checkpoint."""
        settings, final = self.settings, iteration == self.settings.iterations
        due_checkpoint = iteration % settings.checkpoint_every == 0 or final
        due_scores = scores and self.data.held_out is not None and (iteration % settings.val_every == 0 or final)
        if not (iteration % settings.log_every == 0 or due_checkpoint or due_scores):
            return
        row = self._row(iteration, learning_rate, check_weights=due_checkpoint)
        if due_scores:
            # Prediction is exact whatever the tile (unet.overlap_tile), but needs an output of 2**depth px or more,
            # which the smallest training tiles lack: the paper's 572 is valid at every depth.
            tile = max(settings.input_size, PredictSettings.input_size)
            with self.kept_weights():
                row.update(self.trainer.held_out_scores(self.data.held_out, tile))
        self.progress.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        if due_checkpoint:
            self.checkpoint(iteration)
        else:
            write_log(self.out_dir / LOG, self.log.rows)
        self.log.restart_interval()

    def _row(self, iteration: int, learning_rate: float, *, check_weights: bool) -> dict:
        try:
            row = self.log.row(iteration, learning_rate)
            if check_weights and not self.trainer.parameters_finite():
                raise DivergedError(f"the weights became NaN or infinite by iteration {iteration}")
        except DivergedError as error:
            self.progress.close()
            kept = (
                f"the last good checkpoint (iteration {self.last_checkpoint}) is kept in {self.out_dir / CHECKPOINT}"
                if self.last_checkpoint
                else "no checkpoint had been written yet"
            )
            raise DivergedError(
                f"{error}; training stopped, {kept}. Lower --learning-rate or check the weight maps "
                f"in {self.data.weight_dir}"
            ) from None
        return row

    def checkpoint(self, iteration: int) -> None:
        """The checkpoint, `log.csv` and `loss.png` as of `iteration`."""
        save_checkpoint(
            self.out_dir / CHECKPOINT,
            iteration=iteration,
            model=self.trainer.model,
            optimizer=self.trainer.optimizer,
            augmenter=self.augmenter,
            average=self.average,
            device=self.device,
            settings=self.run_settings,
            rows=self.log.rows,
            pending=self.log.pending(),
            elapsed_s=self.log.elapsed(),
        )
        self.last_checkpoint = iteration
        write_log(self.out_dir / LOG, self.log.rows)
        if self.log.rows:
            plot_loss(self.out_dir / FIGURE, self.log.rows, self.constant_loss)

    def interrupt(self, iteration: int, signum: int) -> None:
        """Checkpoint at `iteration` and raise `Interrupted`."""
        if self.last_checkpoint != iteration:
            self.checkpoint(iteration)
        self.progress.close()
        name = signal.Signals(signum).name
        raise Interrupted(
            signum,
            f"stopped by {name} at iteration {iteration}; {self.out_dir / CHECKPOINT} holds "
            f"the run: start it again with the same settings to resume",
        )

    def finish(self, predict: PredictSettings) -> UNet:
        self.progress.close()
        write_log(self.out_dir / LOG, self.log.rows)
        plot_loss(self.out_dir / FIGURE, self.log.rows, self.constant_loss)
        run = run_record(
            self.device,
            code=self.code_version,
            precision=self.trainer.precision,
            memory_format="channels_last" if self.trainer.memory_format == torch.channels_last else "contiguous",
            seed=self.seed,
            iterations=self.settings.iterations,
            train_wall_s=round(self.log.elapsed(), 1),
            constant_output_loss=round(self.constant_loss, 4),
        )
        averaged = self.average is not None and self.average.count > 0
        if averaged:
            self.trainer.model.load_state_dict(self.average.mean)
        save_model(
            self.out_dir / MODEL,
            self.trainer.model,
            iterations=self.settings.iterations,
            averaged_iterations=[self.average.first, self.settings.iterations] if averaged else None,
            seed=self.seed,
            settings=self.run_settings,
            label_kind=self.data.kind,
            predict={key: getattr(predict, key) for key in MODEL_PREDICT_KEYS},
            normalization={"percentiles": list(NORMALIZATION_PERCENTILES)},
            final_loss=self.log.rows[-1]["loss"] if self.log.rows else None,
            elapsed_s=self.log.elapsed(),
            device=str(self.device),
            torch=str(torch.__version__),
            provenance=run,
        )
        write_json(self.out_dir / RUN_RECORD, run)
        return self.trainer.model


def run_record(device: torch.device, **extra) -> dict:
    """`unet.provenance.record` with what torch knows: its CUDA and cuDNN builds, the device's name and, on a GPU,
    its id on the machine (`unet.gpus.gpu_id`: which of several it was)."""
    cuda = device.type == "cuda"
    name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu = gpu_id(device.index or 0) if cuda else None
    return provenance.record(device=name, gpu=gpu, cuda=torch.version.cuda, cudnn=cudnn, **extra)


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Yield a list that the `STOP_SIGNALS` append their number to (instead of ending the process)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield received
        return
    previous = {signum: signal.signal(signum, lambda signum, _: received.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
