"""Training checkpoints: everything a stopped run needs to continue as if it had never stopped.

`checkpoint.pt` (written atomically) holds the model, the optimiser, the random states (torch,
CUDA, augmenter), the weight average where the run keeps one, the iteration, the log so far
with the loss of the unfinished log interval, the elapsed time and the settings. A run started
again with the same settings resumes from it; on the CPU the result is bit-identical to an
uninterrupted run. With other settings it starts over and says which differ. It holds only
tensors and plain values: it loads with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unet.io import DataError, atomic_path

CHECKPOINT = "checkpoint.pt"
# What `save_checkpoint` writes and `resume` reads (older checkpoints lack `pending` and `average`).
# Settings added since checkpoints were first written, with the value that reproduces the runs before them: a
# checkpoint that lacks one was written by such a run, which a run of today with that value continues.
ADDED_SETTINGS = {"train": {"average_last": 0.0}}
CHECKPOINT_KEYS = ("iteration", "settings", "config", "state_dict", "optimizer", "rng", "augmenter", "log", "elapsed_s")


@dataclass
class Resumed:
    """Where a run continues: the iteration done, the log rows so far, the unfinished interval, the time spent."""

    iteration: int = 0
    rows: list[dict] = field(default_factory=list)
    pending: dict = field(default_factory=dict)
    elapsed_s: float = 0.0


def save_checkpoint(
    path: Path,
    *,
    iteration: int,
    model,
    optimizer,
    augmenter,
    average,
    device: torch.device,
    settings: dict,
    rows: list[dict],
    pending: dict,
    elapsed_s: float,
) -> None:
    # Through a Python file, so that a failed write keeps its OSError (a full disk), which `atomic_path` reports.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(
            {
                "iteration": iteration,
                "settings": settings,
                "config": dict(model.config),
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(device),
                "augmenter": augmenter.state_dict(),
                "average": average.state_dict() if average else None,
                "log": rows,
                "pending": pending,
                "elapsed_s": elapsed_s,
            },
            handle,
        )


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None if there is none; an unreadable one is an error naming it."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path}: not a readable checkpoint ({error}); delete it to start over") from error
    if not (isinstance(checkpoint, dict) and set(CHECKPOINT_KEYS) <= set(checkpoint)):  # not ours to resume or replace
        held = (
            f"the keys {sorted(map(str, checkpoint))[:5]}"
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise DataError(
            f"{path}: not a checkpoint of `unet train` (it holds {held}); move it away, or train into another --out"
        )
    return checkpoint


def resume(path: Path, settings: dict, model, optimizer, augmenter, device: torch.device, average=None) -> Resumed:
    """Restore the state of the checkpoint at `path` if it was written with the same `settings`, the weight
    `average` too where the run keeps one (`unet.train.WeightAverage`)."""
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        return Resumed()
    changed = _differences(_with_added_settings(checkpoint["settings"]), settings)
    if changed:
        print(
            f"unet train: {path} was written with other settings ({'; '.join(changed)}); starting over", file=sys.stderr
        )
        return Resumed()
    model.load_state_dict(checkpoint["state_dict"])
    restore_optimizer(optimizer, checkpoint["optimizer"])
    augmenter.load_state_dict(checkpoint["augmenter"])
    if average is not None:
        average.load_state_dict(checkpoint["average"])
    _set_rng_state(checkpoint["rng"], device)
    print(f"unet train: resuming from {path} at iteration {checkpoint['iteration']}", file=sys.stderr)
    return Resumed(checkpoint["iteration"], checkpoint["log"], checkpoint.get("pending", {}), checkpoint["elapsed_s"])


# What `optimizer` chose for this run's device, which a checkpoint from another device must not override.
_IMPLEMENTATION_KEYS = ("lr", "fused", "foreach", "capturable", "differentiable")


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimiser state, keeping this run's implementation (`fused`, `foreach`, the learning-rate
    tensor) and giving each momentum buffer the memory layout of its parameter.

    A run may resume on another device or memory format (`unet.train.RUN_CONTROL`): a CUDA run's fused SGD
    and channels_last buffers, restored as saved into a contiguous CPU run, would make the fused update read
    each buffer in the wrong order, silently.
    """
    own = [{key: group[key] for key in _IMPLEMENTATION_KEYS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, implementation in zip(optimizer.param_groups, own):
        group.update(implementation)
        for parameter in group["params"]:
            parameter_state = optimizer.state.get(parameter, {})
            if parameter_state.get("momentum_buffer") is not None:
                buffer = parameter_state["momentum_buffer"]
                parameter_state["momentum_buffer"] = torch.empty_like(parameter).copy_(buffer)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _with_added_settings(saved: dict) -> dict:
    """`saved` with the `ADDED_SETTINGS` it lacks, at the values its run had in effect."""
    return saved | {
        section: {**added, **saved[section]}
        for section, added in ADDED_SETTINGS.items()
        if isinstance(saved.get(section), dict)
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found
