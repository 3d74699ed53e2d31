"""Where the network runs: the device a `--device` name means, and whether it computes in bf16."""

from __future__ import annotations

import os
import sys

import torch

from unet.errors import UsageError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; a CUDA name on a machine without CUDA is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get("CUDA_VISIBLE_DEVICES"):  # e.g. a GPU of `unet gpu --gpus` that this machine lacks
            print(
                f"unet: torch sees no CUDA device (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}): "
                "computing on the CPU",
                file=sys.stderr,
            )
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device (use auto or cpu)")
    return device


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether `precision` means bf16 autocast on `device` (`auto`: on CUDA devices that support it)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, found {precision!r}")
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"
