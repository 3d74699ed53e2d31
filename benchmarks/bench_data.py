"""Data stage: download throughput and preparation time, each beside the I/O limit measured in the same run.

- fetch: `unet.fetch.download` (HTTP from a server on 127.0.0.1 in another process,
  SHA-256 on the fly, write, rename) against reading and hashing the same bytes
  straight from the (cached) file: the most a verified download could reach.
- prepare: `unet.prepare.prepare` of the real ISBI 2012 and DIC-C2DH-HeLa copies
  against copying the files it reads (read + write of the same bytes).

    python benchmarks/bench_data.py [--megabytes 256] [--repeats 5] [--record]
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from benchmarks.common import median_seconds, parser, report  # noqa: E402
from unet.fetch import Remote, download, required_files  # noqa: E402
from unet.prepare import prepare  # noqa: E402

from helpers import SHARED_DATA as SHARED  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`python -m http.server` in its own process, so that serving does not compete for our GIL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the benchmark's HTTP server did not start")


def read_and_hash(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def bench_fetch(work: Path, megabytes: int, repeats: int) -> list[list[object]]:
    payload = work / "served" / "payload.bin"
    payload.parent.mkdir()
    with open(payload, "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
    digest = read_and_hash(payload)
    server, url = start_server(payload.parent)
    try:
        remote = Remote(f"{url}/payload.bin", "payload.bin", (f"sha256:{digest}",))
        target = work / "downloaded.bin"
        fetch_s = median_seconds(lambda: download("bench", remote, target, progress=False), repeats=repeats)
    finally:
        server.terminate()
        server.wait()
    limit_s = median_seconds(lambda: read_and_hash(payload), repeats=repeats)
    return [
        ["fetch: download + sha256 + write (127.0.0.1)", fetch_s, megabytes / fetch_s, fetch_s / limit_s],
        ["limit: read + sha256 of the same bytes", limit_s, megabytes / limit_s, 1.0],
    ]


def copy_files(files: list[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, target / f"{i}{path.suffix}")


def bench_prepare(work: Path, repeats: int) -> list[list[object]]:
    rows = []
    for name, raw, protocol in [
        ("isbi2012", SHARED / "isbi2012", "isbi"),
        ("DIC-C2DH-HeLa", SHARED / "ctc" / "DIC-C2DH-HeLa", "ctc"),
    ]:
        inputs = [p for p in required_files(raw, protocol) if p.suffix == ".tif" and "TRA" not in p.parts]
        megabytes = sum(p.stat().st_size for p in inputs) / 2**20
        prepare_s = median_seconds(functools.partial(prepare, name, raw, work / "prepared" / name), repeats=repeats)
        copy_s = median_seconds(functools.partial(copy_files, inputs, work / "copied" / name), repeats=repeats)
        rows += [
            [f"prepare {name}", prepare_s, megabytes / prepare_s, prepare_s / copy_s],
            [f"limit: copy its {len(inputs)} input files", copy_s, megabytes / copy_s, 1.0],
        ]
    return rows


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--megabytes", type=int, default=256, help="size of the downloaded payload")
    args = arguments.parse_args()
    if not (SHARED / "isbi2012" / "train-volume.tif").is_file():
        sys.exit(f"real data not found at {SHARED}; set UNET_SHARED_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_fetch(Path(tmp), args.megabytes, args.repeats) + bench_prepare(Path(tmp), args.repeats)
    report(
        "data",
        ["what", "median s", "MB/s", "ratio to limit"],
        rows,
        device="cpu",
        record=args.record,
        command=" ".join(["python", *sys.argv]),
        notes="ratio = our time / the I/O limit's time (1 = as fast as the hardware allows).",
    )


if __name__ == "__main__":
    main()
