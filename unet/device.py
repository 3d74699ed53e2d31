"""Where the network runs, and in which precision and memory layout it computes there.

`precision: auto` (training and prediction) means the fastest correct choice of the device:
bf16 autocast where the device computes bf16 faster than fp32, fp32 elsewhere.

- CUDA: bf16 where `torch.cuda.is_bf16_supported()` (Ampere and newer: tensor cores).
- CPU: bf16 where the CPU has bf16 dot-product instructions, AVX512-BF16 or AMX-BF16, as torch
  reports them (`torch.cpu.get_capabilities()`, from cpuinfo), *and* a convolution shaped like the
  U-Net's runs clearly faster in bf16 than in fp32 on it (`cpu_bf16_speedup`). The instructions
  alone do not decide: a Zen 5 computes bf16 4.3 times as fast as fp32 with AVX512-BF16, a Xeon with
  AVX512-BF16 but without AMX (a virtual machine that hides AMX) 0.42 times as fast (2048 matmuls,
  2 threads; a training step 0.7 times: `benchmarks/results/train.md`). Without the instructions
  oneDNN emulates bf16, about 10 times slower than fp32 (an AVX2 CPU), and nothing is measured.

Autocast covers the convolutions; the loss, the weight maps, the optimiser's state and every metric
stay fp32 (or fp64) in any case.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import torch

from unet.errors import UsageError
from unet.settings import PRECISIONS

# The CPU features (torch.cpu.get_capabilities) with which a CPU computes bf16 natively.
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
# How much faster than fp32 bf16 must be on a CPU for `auto` to choose it: far from the ratios
# measured (4.3 and 0.42, module docstring), so that timing noise cannot flip the choice, and
# above 1 because autocast costs casts that a convolution alone does not show.
CPU_BF16_MIN_SPEEDUP = 1.25


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
    if device.type == "cpu":
        return native_bf16(device) and cpu_bf16_speedup(torch.get_num_threads()) >= CPU_BF16_MIN_SPEEDUP
    return native_bf16(device)


@functools.cache
def cpu_bf16_speedup(threads: int) -> float:
    """fp32 time over bf16-autocast time of a 3x3 convolution of the U-Net's kind (32 channels, 128 px,
    channels_last) on this CPU with `threads` threads: the best of 5 interleaved runs each, 0.1-0.3 s.
    Measured once per process and thread count."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _convolution_bf16_speedup()
    finally:
        torch.set_num_threads(threads_before)


def _convolution_bf16_speedup() -> float:
    # Its own generator: drawing from torch's global one would change the training that follows.
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 32, 3, 3, generator=generator).to(memory_format=torch.channels_last)
    image = torch.randn(1, 32, 128, 128, generator=generator).to(memory_format=torch.channels_last)
    best = {False: float("inf"), True: float("inf")}
    with torch.inference_mode():
        for run in range(7):
            for bf16 in best:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    start = time.perf_counter()
                    torch.nn.functional.conv2d(image, weight)
                    elapsed = time.perf_counter() - start
                if run >= 2:  # the first runs create oneDNN's kernels
                    best[bf16] = min(best[bf16], elapsed)
    return best[False] / best[True]


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


def auto_precision_evidence(precision: str, device: torch.device) -> dict:
    """What `precision: auto` measured to choose, for `run.json`: the CPU's bf16 speedup, where it was measured."""
    if precision == "auto" and device.type == "cpu" and native_bf16(device):
        return {"cpu_bf16_speedup": round(cpu_bf16_speedup(torch.get_num_threads()), 2)}
    return {}


def precision_used(bf16: bool, device: torch.device) -> str:
    """What the convolutions compute in, for `run.json`: on CUDA, fp32 lets cuDNN use TF32 unless turned off."""
    if bf16:
        return "bf16 autocast"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "fp32 (TF32 convolutions)"
    return "fp32"
