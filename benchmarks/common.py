"""What every benchmark shares: timing, the device's name, the commit, and the results files.

A benchmark prints its figure next to a baseline measured in the same run, as a
ratio, and with `--record` appends that table to `benchmarks/results/<stage>.md`
with the date, the commit and the device.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# $UNET_BENCHMARK_RESULTS: another folder for the results files (`benchmarks/gpu.sh selftest` records into one).
RESULTS = Path(os.environ.get("UNET_BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="torch device for the stage's own implementation (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions; the median is reported")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/results/<stage>.md")
    return parser


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median_seconds(function: Callable[[], object], *, repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of `function` over `repeats` calls after `warmup` calls, device work included."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rates(device: str, size: int, repeats: int, precisions=("fp32", "bf16")) -> dict[str, float]:
    """FLOP/s of a size x size matmul per precision: the device's practical limit for dense arithmetic in each.

    Where the device has no native bf16 (an AVX2 CPU), oneDNN emulates it 50 times slower than fp32: its rate
    is measured at 512 px, which takes a second instead of minutes.
    """
    import torch

    from unet.device import native_bf16

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    calls = 20 if str(device).startswith("cuda") else 1
    rates = {}
    for precision in precisions:
        side = size if precision == "fp32" or native_bf16(torch.device(device)) else min(size, 512)
        a, b = (torch.randn(side, side, device=device, dtype=dtypes[precision]) for _ in range(2))
        seconds = median_seconds(lambda: [a @ b for _ in range(calls)], repeats=repeats, device=device)  # noqa: B023
        rates[precision] = 2 * side**3 * calls / seconds
    return rates


def precision_note(device: str) -> str:
    """Whether the device has bf16 instructions, and what `precision: auto` chooses on it (they can differ)."""
    import torch

    from unet.device import bf16_pays, native_bf16

    torch_device = torch.device(device)
    return f"native bf16: {native_bf16(torch_device)}, precision auto: {'bf16' if bf16_pays(torch_device) else 'fp32'}"


def device_name(device: str) -> str:
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({_cpu_count()} cores)"


def commit() -> str:
    """The code the benchmark measured: the short commit ("+dirty" with uncommitted changes) when the run began
    (this module's import), not when its record is written; where the checkout changed meanwhile, both."""
    now = _short_commit()
    return _COMMIT_AT_START if now == _COMMIT_AT_START else f"{_COMMIT_AT_START} (by the end of the run: {now})"


def _short_commit() -> str:
    """The checkout's short commit now (`unet.provenance.code_version`: git or $UNET_COMMIT)."""
    from unet.provenance import code_version

    version = code_version()
    if version["commit"] is None:
        return "unknown"
    return version["commit"][:7] + ("+dirty" if version["dirty"] else "")


_COMMIT_AT_START = _short_commit()


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def report(
    stage: str,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    device: str,
    record: bool,
    command: str,
    notes: str = "",
) -> None:
    """Print the table; with `record`, append it with its context to benchmarks/results/<stage>.md."""
    text = table(header, rows)
    print(text)
    if not record:
        return
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry = f"\n## {stamp}, commit {commit()}, {device_name(device)}\n\n`{command}`\n\n{text}\n" + (
        f"\n{notes}\n" if notes else ""
    )
    with open(RESULTS / f"{stage}.md", "a") as handle:
        handle.write(entry)


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
