"""Training: loss, schedule, frame selection, a real overfit, SIGKILL-resume equivalence, NaN handling, the rule."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

from unet import provenance
from unet.augment import Augmenter
from unet.cli import main
from unet.device import uses_bf16
from unet.errors import UsageError
from unet.io import DataError, Split, write_split, write_tiff, write_weight_maps
from unet.model import load_model
from unet.settings import AugmentSettings, ModelSettings, TrainSettings
from unet.train import (
    Trainer,
    WeightAverage,
    first_averaged,
    held_out_scores,
    learning_rate_at,
    load_data,
    load_held_out,
    train,
    weighted_cross_entropy,
)
from unet.training_log import constant_output_loss

from helpers import copy_workflow, snakemake, unet

# One thread per training: the networks are tiny, and on a shared machine several OpenMP
# threads per process wait on each other far longer than they compute.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# A depth-2 network of width 4 on 60 px tiles (20 px output): a step takes milliseconds.
TINY = ["--base-channels", "4", "--depth", "2", "--input-size", "60", "--warmup", "0", "--log-every", "5"]


def write_synthetic(data: Path, weights: Path, frames: int = 6, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """A prepared binary split of bright disks on noise in `data`; targets = labels, unit weights in `weights`."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:size, :size]
    labels = np.zeros((frames, size, size), np.uint8)
    for label in labels:
        for _ in range(4):
            row, column = rng.integers(8, size - 8, 2)
            label[(rows - row) ** 2 + (columns - column) ** 2 < rng.integers(5, 10) ** 2] = 1
    images = np.clip(60 + 120 * labels + rng.normal(0, 20, labels.shape), 0, 255).astype(np.uint8)
    split = Split("demo", "train", "binary", images, list(range(frames)), labels, list(range(frames)))
    write_split(data, split)
    write_weight_maps(weights, split, labels, np.ones(labels.shape, np.float32), data_dir=data, settings={})
    return data, weights


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def synthetic(tmp_path) -> tuple[Path, Path]:
    return write_synthetic(tmp_path / "data", tmp_path / "weights")


def unet_train(data: Path, weights: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "unet.cli", *train_arguments(data, weights, out, *flags)]


def train_arguments(data: Path, weights: Path, out: Path, *flags: str) -> list[str]:
    """The arguments of `unet train` on a tiny network."""
    return ["train", "--data", str(data), "--weights", str(weights), "--out", str(out), *TINY, *flags]


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# A run to interrupt: 100 iterations, a checkpoint every 10, held-out scores every 7.
INTERRUPTED_RUN = [
    *("--iterations", "100", "--checkpoint-every", "10", "--frames", "0-4", "--val-frames", "5"),
    *("--val-every", "7", "--seed", "5", "--device", "cpu"),
]


def assert_same_run(straight: Path, resumed: Path) -> None:
    """The same final weights and the same logged losses, the interval a stop cut included."""
    expected, found = weights_of(straight / "model.pt"), weights_of(resumed / "model.pt")
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected), "resumed weights differ"
    logs = [read_log(run / "log.csv") for run in (straight, resumed)]
    assert [(row["iteration"], row["loss"]) for row in logs[0]] == [(row["iteration"], row["loss"]) for row in logs[1]]


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# --- pure functions ---------------------------------------------------------------------


def test_weighted_cross_entropy_is_the_weighted_mean_of_the_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 5, generator=generator)
    target = torch.randint(0, 2, (2, 5, 5), generator=generator)
    weight = torch.rand(2, 5, 5, generator=generator) * 10
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    expected = (-log_p * weight).sum() / weight.sum()
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected.item())
    # Scaling the weights changes nothing; pixels of zero weight count for nothing, not as zeros in a mean.
    assert weighted_cross_entropy(logits, target, 7 * weight).item() == pytest.approx(expected.item())
    ignored = weight.clone()
    ignored[0] = 0
    only_second = (-log_p[1] * weight[1]).sum() / weight[1].sum()
    assert weighted_cross_entropy(logits, target, ignored).item() == pytest.approx(only_second.item())
    assert weighted_cross_entropy(logits, target, torch.zeros_like(weight)).item() == 0
    assert weighted_cross_entropy(logits.bfloat16(), target, weight).dtype == torch.float32


def test_the_plateau_is_the_loss_of_the_best_constant_output_under_the_weights():
    """The loss.png reference line: no output that ignores the image does better, and the weights move
    it off ln 2 (here most weight lies on the background, as on ISBI's membranes)."""
    rng = np.random.default_rng(0)
    targets = (rng.random((3, 20, 20)) < 0.8).astype(np.uint8)
    weights = np.where(targets > 0, 1.0, 12.0) * rng.random(targets.shape)
    plateau = constant_output_loss(targets, weights)
    assert plateau < math.log(2) - 0.05

    def loss_of_constant(p_cell: float) -> float:
        logits = torch.tensor([0.0, math.log(p_cell / (1 - p_cell))]).view(1, 2, 1, 1).expand(3, 2, 20, 20)
        return weighted_cross_entropy(logits, torch.from_numpy(targets).long(), torch.from_numpy(weights)).item()

    share = weights[targets > 0].sum() / weights.sum()
    assert loss_of_constant(share) == pytest.approx(plateau, rel=1e-5)
    assert all(loss_of_constant(p) > plateau for p in (share - 0.05, share + 0.05, 0.5, 0.8))


def test_learning_rate_warms_up_linearly_then_decays_polynomially():
    settings = TrainSettings(iterations=1000, learning_rate=0.01, warmup=10, lr_schedule="poly")
    assert learning_rate_at(0, settings) == pytest.approx(0.01 * 0.1 * (1 - 0 / 1000) ** 0.9)
    assert learning_rate_at(9, settings) == pytest.approx(0.01 * (1 - 9 / 1000) ** 0.9)
    assert learning_rate_at(500, settings) == pytest.approx(0.01 * 0.5**0.9)
    assert 0 < learning_rate_at(999, settings) < 1e-4
    constant = TrainSettings(iterations=1000, learning_rate=0.01, warmup=0, lr_schedule="constant")
    assert {learning_rate_at(step, constant) for step in (0, 500, 999)} == {0.01}


def test_the_averaged_iterations_are_the_last_fraction_and_at_least_one():
    assert first_averaged(1000, 0.0) == 1001  # none: the last weights are kept
    assert first_averaged(1000, 0.25) == 751
    assert first_averaged(1000, 1.0) == 1
    assert first_averaged(1000, 0.0001) == 1000


def test_the_weight_average_is_the_mean_of_the_weights_after_each_averaged_step():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, first=2)
    seen = []
    for iteration in range(1, 5):
        with torch.no_grad():
            model.weight.normal_()
        average.update(iteration, model)
        seen.append(model.weight.detach().clone())
    assert average.count == 3
    torch.testing.assert_close(average.mean["weight"], torch.stack(seen[1:]).mean(0))
    own = model.weight.detach().clone()
    with average.applied(model):
        torch.testing.assert_close(model.weight.detach(), average.mean["weight"])
    assert torch.equal(model.weight, own)


def test_an_averaging_run_keeps_the_mean_of_its_last_weights_and_scores_it(synthetic, tmp_path, monkeypatch):
    """`average_last` 0.25 of 12 iterations: model.pt holds the mean of the weights after steps 10-12, and the
    held-out score of the last row is that model's."""
    data, weights = synthetic
    out, snapshots = tmp_path / "model", []
    step = Trainer.step

    def step_and_keep(trainer, *args):
        loss = step(trainer, *args)
        snapshots.append({name: value.detach().clone() for name, value in trainer.model.state_dict().items()})
        return loss

    monkeypatch.setattr(Trainer, "step", step_and_keep)
    flags = [
        "--iterations",
        "12",
        "--average-last",
        "0.25",
        "--frames",
        "0-3",
        "--val-frames",
        "4-5",
        "--val-every",
        "6",
    ]
    assert main(train_arguments(data, weights, out, *flags, "--seed", "1", "--device", "cpu")) == 0

    kept = torch.load(out / "model.pt", weights_only=True)
    assert kept["metadata"]["averaged_iterations"] == [10, 12]
    for name, value in kept["state_dict"].items():
        torch.testing.assert_close(value, torch.stack([snapshot[name] for snapshot in snapshots[9:]]).mean(0))
    last_weights = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]  # the run's own, to resume
    assert all(torch.equal(last_weights[name], snapshots[-1][name]) for name in last_weights)
    held_out = load_held_out(data, [4, 5])
    model = load_model(out / "model.pt")
    precision = "bf16" if uses_bf16("auto", torch.device("cpu")) else "fp32"
    expected = held_out_scores(model, held_out, 572, precision=precision)["val_iou"]
    assert float(read_log(out / "log.csv")[-1]["val_iou"]) == pytest.approx(expected, abs=1e-6)


def test_fold_flags_train_on_the_other_blocks_and_validate_on_the_held_out_one(synthetic, tmp_path):
    data, weights = synthetic  # six labelled frames: fold 1 of 3 holds out frames 2 and 3
    unet(
        *train_arguments(
            data, weights, tmp_path / "fold1", "--fold", "1", "--folds", "3", "--iterations", "2", "--val-every", "2"
        ),
        check=True,
    )
    settings = torch.load(tmp_path / "fold1" / "model.pt", weights_only=True)["metadata"]["settings"]
    assert settings["frames"] == [0, 1, 4, 5] and settings["val_frames"] == [2, 3]
    both = unet(*train_arguments(data, weights, tmp_path / "both", "--fold", "1", "--folds", "3", "--frames", "0-1"))
    assert both.returncode == 2 and "not both" in both.stderr


# --- data checks ------------------------------------------------------------------------


def test_bad_weight_maps_and_frames_are_rejected_naming_the_file(synthetic, capsys):
    data, weights = synthetic
    assert load_data(data, weights, [0, 1], [2]).train.frames == [0, 1]
    assert load_data(data, weights, val_frames=[2, 3]).train.frames == [0, 1, 4, 5]  # the rest by default
    with pytest.raises(UsageError, match="both trained on and held out"):
        load_data(data, weights, [0, 1], [1])
    with pytest.raises(DataError, match=r"frames \[7, 8\] are not labelled"):
        load_data(data, weights, [7, 8])
    with pytest.raises(UsageError, match=r"^--val-frames 0-5 holds out every labelled frame of \S*data: none is left"):
        load_data(data, weights, val_frames=list(range(6)))
    poisoned = np.ones((6, 64, 64), np.float32)
    poisoned[2, 3, 4] = np.nan
    write_tiff(weights / "weights.tif", poisoned, axes="ZYX")
    with pytest.raises(DataError, match=r"weights.tif: 1 weights are negative, NaN or infinite .first in frame 2 "):
        load_data(data, weights)
    write_tiff(weights / "weights.tif", np.ones((5, 64, 64), np.float32), axes="ZYX")
    assert main(["train", "--data", str(data), "--weights", str(weights), "--out", str(data.parent / "m")]) == 2
    assert "weights.tif: shape (5, 64, 64) does not match the labels" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--weights", str(weights), "--out", "m", "--momentum", "1"]) == 2
    assert "--momentum = 1.0: must be < 1" in capsys.readouterr().err


def test_a_checkpoint_file_of_another_program_is_refused_and_kept(synthetic, tmp_path, capsys):
    data, weights = synthetic
    out = tmp_path / "model"
    out.mkdir()
    torch.save({"model": torch.zeros(2)}, out / "checkpoint.pt")
    assert main(train_arguments(data, weights, out, "--iterations", "2")) == 2
    assert capsys.readouterr().err == (
        f"unet train: error: {out / 'checkpoint.pt'}: not a checkpoint of `unet train` (it holds the keys "
        "['model']); move it away, or train into another --out\n"
    )
    assert list(torch.load(out / "checkpoint.pt", weights_only=True)) == ["model"]


# --- training -----------------------------------------------------------------------------


def test_a_small_network_overfits_one_synthetic_image(synthetic, tmp_path):
    data_dir, weights = synthetic
    data = load_data(data_dir, weights, frames=[0])
    data.held_out = load_held_out(data_dir, [0])  # the scores of the training image itself
    train(
        data,
        tmp_path / "model",
        model_settings=ModelSettings(base_channels=16, depth=2, dropout=0.0),
        augment=AugmentSettings.identity(),
        settings=TrainSettings(
            # 250, not 150: at 150 the channels_last layout (AVX-512 CPUs) ended at IoU 0.946, the contiguous at
            # 0.997 (summation order alone differs); at 250 both are above 0.99.
            iterations=250,
            learning_rate=0.01,
            lr_schedule="constant",
            warmup=20,
            input_size=92,
            log_every=25,
            val_every=250,
            device="cpu",
        ),
    )
    log = read_log(tmp_path / "model" / "log.csv")
    first, last = float(log[0]["loss"]), float(log[-1]["loss"])
    # The weighted loss starts near ln 2 = 0.69 and must fall below 0.05 (about 95 % of pixels
    # confidently right); the foreground IoU of the image itself must exceed 0.95.
    assert first > 0.3 and last < 0.05, (first, last)
    assert float(log[-1]["val_iou"]) > 0.95 and log[-1]["val_seg"] == ""  # binary labels: no SEG


def test_outputs_log_and_reinvocation(synthetic, tmp_path, capsys):
    data, weights = synthetic
    out = tmp_path / "model"
    flags = [
        "--frames",
        "0-3",
        "--val-frames",
        "4-5",
        "--iterations",
        "12",
        "--checkpoint-every",
        "6",
        "--val-every",
        "6",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]
    args = ["train", "--data", str(data), "--weights", str(weights), "--out", str(out), *TINY, *flags]
    assert main(args) == 0
    log = read_log(out / "log.csv")
    assert list(log[0]) == ["iteration", "loss", "learning_rate", "elapsed_s", "samples_per_s", "val_iou", "val_seg"]
    assert [row["iteration"] for row in log] == ["5", "6", "10", "12"]
    assert [row["val_iou"] != "" for row in log] == [False, True, False, True]
    assert all(0 <= float(row["val_iou"]) <= 1 for row in log if row["val_iou"])
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(out / "model.pt")
    assert model.config["base_channels"] == 4 and model.config["depth"] == 2
    metadata = torch.load(out / "model.pt", weights_only=True)["metadata"]
    assert metadata["iterations"] == 12 and metadata["seed"] == 3
    assert metadata["settings"]["frames"] == [0, 1, 2, 3] and metadata["settings"]["val_frames"] == [4, 5]
    # What a user of the model needs to predict as it was trained: the data's kind, prediction defaults, scaling.
    assert metadata["label_kind"] == "binary" and metadata["normalization"] == {"percentiles": [1.0, 99.0]}
    assert metadata["predict"] == {"tta": "d4", "min_area": 0, "connectivity": 8, "threshold": 0.5}
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == 12
    # run.json says which precision ran.
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == ("bf16 autocast" if uses_bf16("auto", torch.device("cpu")) else "fp32")
    before = weights_of(out / "model.pt")

    # A finished run invoked again trains no further and rewrites the same model.
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(before.values(), weights_of(out / "model.pt").values()))
    assert read_log(out / "log.csv") == log

    # Other settings do not resume a checkpoint that is not theirs: the run starts over.
    assert main([*args, "--iterations", "6"]) == 0
    err = capsys.readouterr().err
    assert "other settings (train.iterations: 12 -> 6); starting over" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 6


def test_a_checkpoint_from_before_weight_averaging_resumes_as_a_run_without_it(synthetic, tmp_path, capsys):
    """Checkpoints written before `average_last` existed lack it and the average: their runs kept the last weights,
    which `average_last` 0 continues; another value starts over."""
    data, weights = synthetic
    out = tmp_path / "model"
    args = train_arguments(data, weights, out, "--iterations", "12", "--checkpoint-every", "6", "--device", "cpu")
    assert main(args) == 0
    before = weights_of(out / "model.pt")
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    del checkpoint["settings"]["train"]["average_last"], checkpoint["average"]
    torch.save(checkpoint, out / "checkpoint.pt")
    capsys.readouterr()

    assert main(args) == 0
    assert f"resuming from {out / 'checkpoint.pt'} at iteration 12" in capsys.readouterr().err
    assert all(torch.equal(before[k], found) for k, found in weights_of(out / "model.pt").items())
    assert main([*args, "--average-last", "0.5"]) == 0
    assert "(train.average_last: 0.0 -> 0.5); starting over" in capsys.readouterr().err


def test_run_json_names_the_commit_that_started_the_run_not_the_one_checked_out_at_its_end(
    synthetic, tmp_path, monkeypatch
):
    data, weights = synthetic
    checkout = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(provenance, "code_version", lambda *args: dict(checkout))
    sample = Augmenter.sample

    def sample_then_move_the_checkout_on(self, *args, **kwargs):
        checkout.update(commit="b" * 40, dirty=True)  # a commit made while the run trains
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(Augmenter, "sample", sample_then_move_the_checkout_on)
    out = tmp_path / "model"
    flags = ["--frames", "0-3", "--iterations", "2", "--device", "cpu"]
    assert main(["train", "--data", str(data), "--weights", str(weights), "--out", str(out), *TINY, *flags]) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["commit"], run["dirty"]) == ("a" * 40, False)


def test_a_run_killed_with_sigkill_resumes_to_the_same_final_weights(synthetic, tmp_path):
    data, weights = synthetic
    flags = [*INTERRUPTED_RUN, "--average-last", "0.95"]  # from iteration 6: the kill interrupts the average too
    assert main(train_arguments(data, weights, tmp_path / "straight", *flags)) == 0  # in this process

    out = tmp_path / "killed"
    process = subprocess.Popen(unet_train(data, weights, out, *flags), stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model.pt").exists()
    interrupted_at = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < interrupted_at < 100

    (out / ".checkpoint.pt.k1ll3d.pt").write_bytes(b"half a checkpoint")  # as a kill during a write leaves it
    resumed = unet(*train_arguments(data, weights, out, *flags), check=True, env=ONE_THREAD)
    assert f"resuming from {out / 'checkpoint.pt'} at iteration {interrupted_at}" in resumed.stderr
    assert not list(out.glob(".checkpoint.pt.*"))
    assert_same_run(tmp_path / "straight", out)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_run_stopped_by_a_signal_checkpoints_where_it_is_and_resumes_identically(synthetic, tmp_path, stop):
    """A time limit or a preemption (SIGTERM), `sbatch --signal` ahead of it (SIGUSR1), or Ctrl-C (SIGINT): the
    run writes a checkpoint at the iteration it reached, says so in one line, exits with 128 + the signal (130 for
    Ctrl-C), and a new start continues exactly."""
    data, weights = synthetic
    flags = [*INTERRUPTED_RUN, "--log-every", "4"]
    assert main(train_arguments(data, weights, tmp_path / "straight", *flags)) == 0

    out = tmp_path / "stopped"
    process = subprocess.Popen(
        unet_train(data, weights, out, *flags), stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.01)
    process.send_signal(stop)
    stderr = process.communicate()[1]
    assert process.returncode == 128 + stop, stderr
    stopped_at = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert 10 <= stopped_at < 100
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"unet train: stopped by {signal.Signals(stop).name} at iteration {stopped_at};")
    )
    assert "Traceback" not in stderr
    assert not (out / "model.pt").exists() and (out / "loss.png").is_file()  # the figure of the run so far

    resumed = unet(*train_arguments(data, weights, out, *flags), check=True, env=ONE_THREAD)
    assert f"resuming from {out / 'checkpoint.pt'} at iteration {stopped_at}" in resumed.stderr
    assert_same_run(tmp_path / "straight", out)


def test_cell_runs_score_the_held_out_sequence_with_seg(tmp_path):
    """--val-data: the labelled frames of another split (the other CTC sequence) give the held-out IoU and SEG."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:64, :64]
    labels = np.zeros((2, 64, 64), np.uint16)
    for frame in labels:
        for cell, (row, column) in enumerate(rng.integers(12, 52, (3, 2)), start=1):
            frame[(rows - row) ** 2 + (columns - column) ** 2 < 64] = cell
    images = np.clip(60 + 120 * (labels > 0) + rng.normal(0, 20, labels.shape), 0, 255).astype(np.uint8)
    splits = {
        sequence: Split("cells", sequence, "instance", images, [0, 1], labels, [0, 1]) for sequence in ("01", "02")
    }
    for sequence, split in splits.items():
        write_split(tmp_path / sequence, split)
    targets, weights = (labels > 0).astype(np.uint8), np.ones(labels.shape, np.float32)
    write_weight_maps(tmp_path / "weights", splits["01"], targets, weights, data_dir=tmp_path / "01", settings={})
    out = tmp_path / "model"
    unet(
        *train_arguments(
            tmp_path / "01",
            tmp_path / "weights",
            out,
            "--val-data",
            tmp_path / "02",
            "--iterations",
            "10",
            "--val-every",
            "5",
            "--device",
            "cpu",
        ),
        check=True,
        env=ONE_THREAD,
    )
    scored = [row for row in read_log(out / "log.csv") if row["val_iou"]]
    assert [row["iteration"] for row in scored] == ["5", "10"]
    assert all(0 <= float(row["val_seg"]) <= 1 for row in scored)
    assert torch.load(out / "model.pt", weights_only=True)["metadata"]["label_kind"] == "instance"
    both = unet(
        *train_arguments(tmp_path / "01", tmp_path / "weights", out, "--val-data", tmp_path / "02", "--val-frames", "1")
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_an_infinite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    data, weights = write_synthetic(tmp_path / "data", tmp_path / "weights")
    # Poison frame 4's weight map with a finite but huge value: the mean loss over a window of it overflows.
    poisoned = np.ones((6, 64, 64), np.float32)
    poisoned[4] = 3e38
    write_tiff(weights / "weights.tif", poisoned, axes="ZYX")
    seed, first_poisoned = first_draw_of_frame(4, data, weights)
    out = tmp_path / "model"
    result = unet(
        *train_arguments(
            data,
            weights,
            out,
            "--iterations",
            "100",
            "--checkpoint-every",
            "1",
            "--log-every",
            "1",
            "--seed",
            str(seed),
            "--device",
            "cpu",
        ),
        env=ONE_THREAD,
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    # (the weighted mean of huge weights: inf / inf)
    assert message.startswith(f"unet train: error: the loss became nan at iteration {first_poisoned} ")
    assert f"last good checkpoint (iteration {first_poisoned - 1}) is kept in {out / 'checkpoint.pt'}" in message
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == first_poisoned - 1
    assert all(tensor.isfinite().all() for tensor in checkpoint["state_dict"].values())
    load_model(out / "checkpoint.pt")  # the checkpoint is a loadable model too
    assert not (out / "model.pt").exists()


def first_draw_of_frame(frame: int, data: Path, weights: Path) -> tuple[int, int]:
    """A seed whose augmentation first draws `frame` at an iteration > 2, and that iteration (1-based)."""
    training = load_data(data, weights).train
    for seed in range(100):
        augmenter = Augmenter(*training[:3], input_size=60, depth=2, seed=seed)
        draws = [int(augmenter.draw(1).index) for _ in range(50)]
        if frame in draws and draws.index(frame) >= 2:
            return seed, draws.index(frame) + 1
    raise AssertionError("no suitable seed")


# --- the Snakemake rule -----------------------------------------------------------------


def test_the_rule_trains_a_fold_with_its_frames_and_the_config_settings(tmp_path):
    # The real workflow up to one model: the demo's EM data synthesised, prepared and weighted in the same run,
    # so the frames of the fold are unknown while Snakemake builds the DAG and must be read when the job runs.
    workdir = copy_workflow(tmp_path)
    target = "results/models/demo-em/fold1/seed2/model.pt"
    result = snakemake(
        workdir,
        "--cores",
        "1",
        "--configfile",
        "config/demo.yaml",
        "--config",
        "model={base_channels: 4, depth: 2}",
        "seeds=[2]",
        "train={iterations: 4, input_size: 60, warmup: 0, checkpoint_every: 2, log_every: 2, val_every: 2}",
        "--",
        target,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = torch.load(workdir / target, weights_only=True)["metadata"]
    assert metadata["seed"] == 2 and metadata["iterations"] == 4
    # 12 demo slices in 3 folds: fold 1 holds out slices 4-7.
    assert metadata["settings"]["frames"] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert metadata["settings"]["val_frames"] == [4, 5, 6, 7]
    assert metadata["settings"]["augment"] == yaml.safe_load((workdir / "config/config.yaml").read_text())["augment"]
    for name in ("log.csv", "loss.png", "checkpoint.pt"):
        assert (workdir / "results/models/demo-em/fold1/seed2" / name).is_file()
    assert (workdir / "results/logs/train/demo-em/fold1/seed2.log").is_file()
