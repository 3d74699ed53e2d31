"""Where the network runs, and in which precision and memory layout it computes there.

`precision: auto` (training and prediction) means the fastest correct choice of the device:
bf16 autocast where the device computes bf16 faster than fp32, fp32 elsewhere.

- CUDA: bf16 where `torch.cuda.is_bf16_supported()` (Ampere and newer: tensor cores).
- CPU: bf16 where the CPU computes bf16 dot products faster than fp32 ones, as torch reports its
  features (`torch.cpu.get_capabilities()`, from cpuinfo): with AMX-BF16 (Intel's tile units), or with
  AVX512-BF16 on an AMD CPU (bf16 matmuls 4.3 times as fast as fp32 on a Zen 5, 3.2 times on a
  Zen 4). AVX512-BF16 on an Intel CPU without AMX (Cooper Lake, or a virtual machine that hides
  AMX) is slower than fp32: 0.42 times its matmul rate and 0.7 times its training step on such a Xeon
  (`benchmarks/results/train.md`).
  Without the instructions oneDNN emulates bf16, about 10 times slower than fp32 (an AVX2 CPU).
  A rule, not a timing: the same machine always makes the same choice, and so the same numbers (a
  timed probe, tried first, flipped under a loaded test suite).

Autocast covers the convolutions; the loss, the weight maps, the optimiser's state and every metric
stay fp32 (or fp64) in any case.
"""

from __future__ import annotations

import os
import sys

import torch

from unet.errors import UsageError
from unet.settings import PRECISIONS

# The CPU features (torch.cpu.get_capabilities) with which a CPU computes bf16 natively.
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
# AVX512-BF16 pays on these vendors' CPUs (the module docstring); AMX-BF16 pays on any.
BF16_AVX512_VENDORS = ("AMD",)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; a CUDA name this machine cannot honour is an error."""
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
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: not a device of this package (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UsageError(f"--device {name}: this machine has no CUDA device (use auto or cpu)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has bf16 instructions (not necessarily faster than fp32: `bf16_pays`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(_cpu_capabilities().get(feature, False) for feature in NATIVE_BF16_CPU_FEATURES)
    return False


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is faster than fp32 on `device`: `precision: auto`'s choice."""
    if device.type != "cpu":
        return native_bf16(device)
    capabilities = _cpu_capabilities()
    vendor = str(capabilities.get("cpu_name", "")).split(" ")[0]
    return bool(capabilities.get("amx_bf16")) or (
        bool(capabilities.get("avx512_bf16")) and vendor in BF16_AVX512_VENDORS
    )


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether `precision` means bf16 autocast on `device` (`auto`: where it is faster, `bf16_pays`).

    An explicit `bf16` is honoured on any CPU (emulated where it is not native: slow, but the same numbers);
    on a CUDA device without bf16 it is an error.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, found {precision!r}")
    if precision == "auto":
        return bf16_pays(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UsageError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support (use auto or fp32)")
    return precision == "bf16"


def channels_last_pays(device: torch.device) -> bool:
    """Whether channels_last is the faster memory layout for the U-Net's convolutions on `device`: on GPUs
    (tensor cores), and on CPUs with AVX-512, where oneDNN's channels_last kernels are 1.3 times as fast as the
    contiguous ones at paper width (a Zen 5). On an AVX2 CPU they are 2 times slower there (a Zen 1,
    `benchmarks/results/train.md`), so the contiguous layout stays."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(_cpu_capabilities().get("avx512_f", False))


def memory_format(device: torch.device, channels_last: bool = True) -> torch.memory_format:
    """The layout for the network on `device`: channels_last where asked and where it pays, else contiguous."""
    return torch.channels_last if channels_last and channels_last_pays(device) else torch.contiguous_format


def _cpu_capabilities() -> dict:
    """The CPU's instruction set features as torch reports them (cpuinfo); torch before 2.8: none known."""
    return dict(getattr(torch.cpu, "get_capabilities", dict)())


def precision_used(bf16: bool, device: torch.device) -> str:
    """What the convolutions compute in, for `run.json`: on CUDA, fp32 lets cuDNN use TF32 unless turned off."""
    if bf16:
        return "bf16 autocast"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "fp32 (TF32 convolutions)"
    return "fp32"
