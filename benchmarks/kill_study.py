"""kill -9 at a random moment of each writing command: no partial output, no user file touched, the same rerun.

For each command (fetch, prepare, weightmap, train, predict, evaluate, export) the study prepares tiny real
inputs (the embedded demo data: a local mirror for `unet fetch`, a 8-channel network trained for a few
iterations), runs the command twice uninterrupted (the reference result and its duration; the two must
agree), then REPEATS times, each in a fresh copy of the user's folder:

1. starts the command as a real process (one thread) and SIGKILLs it at a moment drawn uniformly from
   [0, the reference duration], import time included;
2. checks that every output is either absent or complete, and for a final output the reference's (a
   training's checkpoint, log and figure, which it rewrites as it goes, need only be complete);
3. checks that no file of the user's folder that existed before (the inputs, a notes file beside the
   outputs) was changed, removed or even rewritten with the same bytes (mtime);
4. runs the same command again: it must exit 0 with the reference's result (training resumes from its last
   checkpoint and must end with the same weights and logged losses) and leave nothing the reference run did
   not leave (no temporary of the kill).

With --over-previous, the user's folder also holds the outputs of an earlier identical run, and each kill lands
in a run that replaces them: an output is then the previous one, the new one (the same) or absent.

    python benchmarks/kill_study.py                            # all commands, 20 kills each (about 10 min)
    python benchmarks/kill_study.py --commands train fetch --repeats 5 --out kills.json
    python benchmarks/kill_study.py --over-previous
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from unet.provenance import python_path_first  # noqa: E402

# One thread per process: the inputs are tiny, and the study runs beside other work on 2 cores.
ENVIRONMENT = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONPATH": python_path_first(REPO),
}
UNET = (sys.executable, "-m", "unet.cli")
# A file of the user's beside the outputs: no command may touch it.
NOTES = "notes.txt"
# Fields that time a run, not its result: left out of the digests (log.csv columns, run.json and model.pt keys).
TIMINGS = frozenset({"elapsed_s", "samples_per_s", "train_wall_s"})

# The tiny network of the study: 8 channels, depth 2, 60 px tiles; a step takes milliseconds.
TINY_NETWORK = ("--base-channels", "8", "--depth", "2", "--input-size", "60", "--warmup", "0", "--device", "cpu")


def train_arguments(out: str, iterations: int) -> tuple[str, ...]:
    """A training that checkpoints (and draws its loss figure, a third of its time) every 10 iterations."""
    return ("train", "--data", "data/train", "--weights", "weights", "--out", out, *TINY_NETWORK, "--seed", "0") + (
        *("--iterations", str(iterations), "--checkpoint-every", "10", "--log-every", "5"),
    )


@dataclass(frozen=True)
class Command:
    """A command run in the user's folder: its arguments (after `python`), the inputs it reads (prepared by
    `FIXTURES`), the outputs it writes and, among them, those it rewrites while it runs (`progress`: a kill
    may leave an earlier complete version, not the reference's)."""

    argv: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    progress: tuple[str, ...] = ()


COMMANDS = {
    "fetch": Command(
        (*UNET, "fetch", "demo-em", "--protocol", "isbi", "--mirror", "mirror", "--out", "raw", "--no-progress"),
        inputs=("mirror",),
        outputs=("raw",),
    ),
    "prepare": Command(
        (*UNET, "prepare", "demo-em", "--protocol", "isbi", "--raw", "raw", "--out", "data"),
        inputs=("raw",),
        outputs=("data/train", "data/test"),
    ),
    "weightmap": Command(
        (*UNET, "weightmap", "data/train", "weights", "--figure", "fig3.png"),
        inputs=("data",),
        # weightmap.json: the record of what the maps were computed from (where the package writes one).
        outputs=("weights/target.tif", "weights/weights.tif", "weights/weightmap.json", "fig3.png"),
    ),
    "train": Command(
        (*UNET, *train_arguments("model", iterations=40)),
        inputs=("data", "weights"),
        outputs=("model/model.pt", "model/run.json", "model/checkpoint.pt", "model/log.csv", "model/loss.png"),
        progress=("model/checkpoint.pt", "model/log.csv", "model/loss.png"),
    ),
    "predict": Command(
        (*UNET, "predict", "--data", "data/train", "--model", "trained/model.pt", "--out", "probabilities.tif")
        + ("--submission", "submission.tif", "--device", "cpu", "--input-size", "60"),
        inputs=("data", "trained"),
        outputs=("probabilities.tif", "submission.tif"),
    ),
    "evaluate": Command(
        (*UNET, "evaluate", "isbi", "probabilities.tif", "data/train/labels.tif")
        + ("--out", "scores.json", "--figure", "overlay.png"),
        inputs=("data", "probabilities.tif"),
        outputs=("scores.json", "overlay.png"),
    ),
    "export": Command(
        (*UNET, "export", "trained/model.pt", "package.zip", "--image", "demo/test-volume.tif", "--cover", "cover.png"),
        inputs=("trained", "demo"),
        outputs=("package.zip", "cover.png"),
    ),
}


# --- the inputs: the demo data through the pipeline, once ------------------------------------------------------


def _demo(root: Path) -> None:
    """The demo EM data in the official layout: small, for the commands that compute."""
    _unet(root, "synthesize", "em", "demo", "--size", "128", "--train-slices", "8", "--test-slices", "2")


def _mirror(root: Path) -> None:
    """A local mirror laid out like ../shared/data, with the SHA256SUMS that `unet fetch` checks copies against:
    the demo tiled to 1024 px and 24 sections (55 MB), so that copying it takes most of a fetch (and of a
    prepare), not the imports."""
    from unet.io import read_tiff, write_tiff

    folder = root / "mirror" / "demo-em"
    for path in sorted((root / "demo").glob("*.tif")):
        write_tiff(folder / path.name, np.tile(read_tiff(path), (3, 8, 8)), axes="ZYX")
    sums = [f"{_sha256(path.read_bytes())}  {path.relative_to(folder.parent)}" for path in sorted(folder.iterdir())]
    (root / "mirror" / "SHA256SUMS").write_text("\n".join(sums) + "\n")


# Each input and how it is made from those before it, in pipeline order.
FIXTURES: dict[str, Callable[[Path], None]] = {
    "demo": _demo,
    "mirror": _mirror,
    "raw": lambda root: _run(root, COMMANDS["fetch"]),
    "data": lambda root: _unet(root, "prepare", "demo-em", "--protocol", "isbi", "--raw", "demo", "--out", "data"),
    "weights": lambda root: _run(root, COMMANDS["weightmap"]),
    "trained": lambda root: _unet(root, *train_arguments("trained", iterations=10)),
    "probabilities.tif": lambda root: _run(root, COMMANDS["predict"]),
}


def make_inputs(root: Path, commands: Iterable[str]) -> Path:
    """The inputs of `commands` in `root`: every input up to the last they need, in pipeline order."""
    needed = {name for command in commands for name in COMMANDS[command].inputs}
    last = max((list(FIXTURES).index(name) for name in needed), default=-1)
    root.mkdir(parents=True, exist_ok=True)
    for name in list(FIXTURES)[: last + 1]:
        FIXTURES[name](root)
    return root


def _unet(cwd: Path, *args: str) -> None:
    _run(cwd, Command((*UNET, *args), inputs=(), outputs=()))


def _run(cwd: Path, command: Command, timeout: float = 600) -> float:
    """Run `command` in `cwd` to its end; its duration in seconds. A failure raises with its stderr."""
    start = time.perf_counter()
    result = subprocess.run(command.argv, cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command.argv)} failed in {cwd}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


# --- what a folder holds: the user's files, the outputs' digests ----------------------------------------------


def user_files(folder: Path, command: Command) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` but `command`'s outputs: relative path -> (size, mtime, sha256)."""
    found = {}
    outputs = [folder / output for output in command.outputs]
    for path in _walk(folder):
        if path.is_file() and not path.is_symlink() and not any(path.is_relative_to(output) for output in outputs):
            status = path.stat()
            found[str(path.relative_to(folder))] = (status.st_size, status.st_mtime_ns, _sha256(path.read_bytes()))
    return found


def touched(folder: Path, command: Command, before: dict[str, tuple[int, int, str]]) -> list[str]:
    """The files of `before` that are no longer as they were: changed, removed or rewritten."""
    now = user_files(folder, command)
    return sorted(name for name, state in before.items() if now.get(name) != state)


def entries(folder: Path) -> set[str]:
    """Every file and folder under `folder`, relative: what a run leaves."""
    return {str(path.relative_to(folder)) for path in _walk(folder)}


def _walk(folder: Path) -> Iterable[Path]:
    for directory, names, files in os.walk(folder):
        for name in names + files:
            yield Path(directory) / name


def digest(path: Path) -> str:
    """The content of an output, as its command promises to reproduce it; raises if it is not complete.

    Files are read as their readers read them (a truncated TIFF, PNG, JSON, zip or torch file raises).
    Timings are left out, and the torch files' zip records, which torch names after the (temporary) file.
    """
    if path.is_dir():
        parts = [f"{entry.relative_to(path)}:{digest(entry)}" for entry in sorted(_walk(path)) if entry.is_file()]
        return _sha256("\n".join(parts).encode())
    reader = READERS.get(path.suffix, lambda path: path.read_bytes())
    return _sha256(repr(reader(path)).encode())


def _tiff(path: Path) -> str:
    from unet.io import read_tiff  # the package's reader: a damaged or truncated TIFF is an error

    read_tiff(path)
    return _sha256(path.read_bytes())


def _png(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
    return _sha256(path.read_bytes())


def _json(path: Path) -> object:
    return _without_timings(json.loads(path.read_text()))


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [_without_timings(row) for row in csv.DictReader(handle)]


def _torch(path: Path) -> object:
    import torch

    return _without_timings(_plain(torch.load(path, map_location="cpu", weights_only=True)))


def _zip(path: Path) -> list[tuple[str, str]]:
    """The members and their bytes; not the zip's own record of when each was written."""
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"{path}: a damaged member")
        return [(name, _sha256(archive.read(name))) for name in sorted(archive.namelist())]


READERS: dict[str, Callable[[Path], object]] = {
    ".tif": _tiff,
    ".png": _png,
    ".json": _json,
    ".csv": _csv,
    ".pt": _torch,
    ".zip": _zip,
}


def _plain(value: object) -> object:
    """`value` with tensors as digests of their dtype, shape and bytes."""
    import torch

    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        return f"{value.dtype}{tuple(value.shape)}:{_sha256(value.flatten().view(torch.uint8).numpy().tobytes())}"
    return value


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digests(folder: Path, command: Command) -> dict[str, str | None]:
    """Output -> its digest, None if absent; raises if one is incomplete."""
    return {output: digest(folder / output) if (folder / output).exists() else None for output in command.outputs}


def partial_outputs(folder: Path, command: Command, reference: dict[str, str | None]) -> list[str]:
    """The outputs present under their final names that are incomplete, or (not `progress`) not the reference's."""
    partial = []
    for output in command.outputs:
        path = folder / output
        if not path.exists():
            continue
        try:
            found = digest(path)
        except Exception:  # any reader's error: the file is not complete
            partial.append(output)
            continue
        if output not in command.progress and found != reference[output]:
            partial.append(output)
    return partial


# --- the study ----------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """What an uninterrupted run gives: its outputs' digests, what it leaves in the folder, how long it takes, and
    the folder of a first run (its outputs are the previous ones of a run `over_previous`)."""

    digests: dict[str, str | None]
    entries: set[str]
    seconds: float
    folder: Path | None = None


@dataclass
class Trial:
    kill_at_s: float
    killed: bool  # False: the command ended before the kill
    outputs_after_kill: list[str] = field(default_factory=list)  # complete or not
    left_by_kill: list[str] = field(default_factory=list)  # what an uninterrupted run does not leave
    partial: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    rerun_status: int | None = None
    rerun_equal: bool = False
    left_by_rerun: list[str] = field(default_factory=list)
    rerun_error: str = ""


def user_folder(inputs: Path, command: Command, folder: Path, previous: Path | None = None) -> Path:
    """A fresh copy of the user's folder: the command's inputs, a notes file beside its outputs and, from a
    `previous` run's folder, its outputs (which the command then replaces)."""
    folder.mkdir(parents=True)
    for output in command.outputs if previous is not None else ():
        (folder / output).parent.mkdir(parents=True, exist_ok=True)
        if (previous / output).is_dir():
            shutil.copytree(previous / output, folder / output)
        else:
            shutil.copy2(previous / output, folder / output)
    for name in command.inputs:
        source = inputs / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy2(source, folder / name)
    (folder / NOTES).write_text("the user's own notes: no command may touch them\n")
    return folder


def reference_run(inputs: Path, command: Command, work: Path, over_previous: bool = False) -> Reference:
    """Two uninterrupted runs, which must give the same result, or a rerun could not be compared with it. The
    second is timed (the first pays for compiling and caching); `over_previous`, it replaces the first's outputs."""
    runs: list[Reference] = []
    for attempt in ("first", "second"):
        previous = runs[0].folder if runs and over_previous else None
        folder = user_folder(inputs, command, work / f"reference-{attempt}", previous)
        before = user_files(folder, command)
        seconds = _run(folder, command)
        changed = touched(folder, command, before)
        if changed:
            raise RuntimeError(f"{folder}: an uninterrupted run changed the user's files {changed}")
        runs.append(Reference(digests(folder, command), entries(folder), seconds, folder))
    if runs[0].digests != runs[1].digests or runs[0].entries != runs[1].entries:
        raise RuntimeError(f"{' '.join(command.argv)}: two uninterrupted runs differ: {runs}")
    return replace(runs[1], folder=runs[0].folder)


def kill_trial(
    inputs: Path, command: Command, reference: Reference, folder: Path, kill_at: float, over_previous: bool = False
) -> Trial:
    """Run `command` in a fresh user folder (`over_previous`: holding the reference's outputs), SIGKILL it after
    `kill_at` seconds, check, rerun, check."""
    folder = user_folder(inputs, command, folder, reference.folder if over_previous else None)
    before = user_files(folder, command)
    process = subprocess.Popen(
        command.argv,
        cwd=folder,
        env=ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a child it started dies with it
    )
    try:
        process.wait(timeout=kill_at)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed = True
    trial = Trial(kill_at_s=round(kill_at, 3), killed=killed)
    trial.outputs_after_kill = [output for output in command.outputs if (folder / output).exists()]
    trial.left_by_kill = sorted(entries(folder) - reference.entries)
    trial.partial = partial_outputs(folder, command, reference.digests)
    trial.touched = touched(folder, command, before)

    rerun = subprocess.run(
        command.argv, cwd=folder, env=ENVIRONMENT, capture_output=True, text=True, timeout=60 + 10 * reference.seconds
    )
    trial.rerun_status = rerun.returncode
    trial.touched = sorted(set(trial.touched) | set(touched(folder, command, before)))
    trial.left_by_rerun = sorted(entries(folder) - reference.entries)
    if rerun.returncode != 0:
        trial.rerun_error = rerun.stderr[-2000:]
        return trial
    try:
        trial.rerun_equal = digests(folder, command) == reference.digests
    except Exception as error:  # an incomplete output after a successful rerun
        trial.rerun_error = f"{type(error).__name__}: {error}"
    return trial


def study(
    command: Command,
    inputs: Path,
    work: Path,
    repeats: int,
    rng: random.Random,
    over_previous: bool = False,
    keep: bool = False,
) -> tuple[Reference, list[Trial]]:
    """The reference run of `command`, then `repeats` kill trials; the folder of a trial that passed is removed
    (a fetch's holds 110 MB) unless `keep`."""
    reference = reference_run(inputs, command, work, over_previous)
    trials = []
    for repeat in range(repeats):
        folder = work / f"kill-{repeat:02d}"
        kill_at = rng.uniform(0, reference.seconds)
        trials.append(kill_trial(inputs, command, reference, folder, kill_at, over_previous))
        if not keep and not failed(trials[-1]):
            shutil.rmtree(folder)
    return reference, trials


HEADER = [
    "command",
    "run s",
    "kills",
    "killed mid-run",
    "left temporaries",
    "partial outputs",
    "user files touched",
    "reruns equal",
    "left after rerun",
]


def row(name: str, reference: Reference, trials: list[Trial]) -> list[object]:
    """The counts of trials: killed before the command ended, while it had temporaries (it was writing), with a
    partial output, with a touched user file, whose rerun gave the reference, whose rerun left something."""
    return [
        name,
        reference.seconds,
        len(trials),
        sum(trial.killed for trial in trials),
        sum(bool(trial.left_by_kill) for trial in trials),
        sum(bool(trial.partial) for trial in trials),
        sum(bool(trial.touched) for trial in trials),
        sum(trial.rerun_equal for trial in trials),
        sum(bool(trial.left_by_rerun) for trial in trials),
    ]


def run_study(
    commands: list[str], repeats: int, seed: int, work: Path, over_previous: bool = False, keep: bool = False
) -> dict[str, tuple[Reference, list[Trial]]]:
    """The study of `commands` in `work`: per command, its reference and its trials. Each command draws its kill
    moments from its own generator, so they do not depend on which other commands are studied."""
    inputs = make_inputs(work / "inputs", commands)
    results = {}
    for name in commands:
        start = time.perf_counter()
        rng = random.Random(f"{seed}:{name}")
        results[name] = study(COMMANDS[name], inputs, work / name, repeats, rng, over_previous, keep)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=20)
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", type=Path, help="also write the record here: FILE.json (every trial) or FILE.md")
    parser.add_argument(
        "--over-previous",
        action="store_true",
        help="kill each command while it replaces the outputs of an earlier identical run (default: a fresh folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("the study runs the commands on the CPU; --device must be cpu")
    work = Path(tempfile.mkdtemp(prefix="kill-study-"))
    try:
        results = run_study(args.commands, args.repeats, args.seed, work, args.over_previous, args.keep)
    finally:
        if args.keep:
            print(f"work folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    label = " over its previous output" if args.over_previous else ""
    rows = [row(name + label, *result) for name, result in results.items()]
    command = "python " + " ".join(["benchmarks/kill_study.py", *(sys.argv[1:] if argv is None else argv)])
    notes = NOTES_TEXT.format(repeats=args.repeats, seed=args.seed) + (OVER_PREVIOUS_TEXT if args.over_previous else "")
    common.report("kill-study", HEADER, rows, device="cpu", record=args.record, command=command, notes=notes)
    if args.out:
        write_record(args.out, command, rows, results, notes)
    failures = [trial for _, trials in results.values() for trial in trials if failed(trial)]
    for trial in failures:
        print(f"failed: {trial}", file=sys.stderr)
    return 1 if failures else 0


NOTES_TEXT = (
    "{repeats} SIGKILLs per command at moments drawn uniformly from [0, run s] (seed {seed}), each in a fresh copy "
    "of the user's folder, one thread per process. Killed mid-run: before the command ended. Left temporaries: "
    "the kill left files an uninterrupted run does not (it was writing). Partial outputs: an output under its "
    "final name that is incomplete or not the reference's. User files touched: a file of the folder from before "
    "the run changed or rewritten. Reruns equal: the same command again exits 0 with the reference's outputs."
)

OVER_PREVIOUS_TEXT = " Each folder also held the outputs of an earlier identical run, which the killed run replaced."


def failed(trial: Trial) -> bool:
    return bool(trial.partial or trial.touched or trial.left_by_rerun) or not trial.rerun_equal


def write_record(path: Path, command: str, rows: list[list[object]], results: dict, notes: str) -> None:
    """The table with its context as markdown (FILE.md), or with every trial as JSON."""
    context = {"command": command, "commit": common.commit(), "device": common.device_name("cpu")}
    if path.suffix == ".md":
        text = f"`{command}`, commit {context['commit']}, {context['device']}\n\n{common.table(HEADER, rows)}\n"
        path.write_text(text + f"\n{notes}\n")
        return
    record = {
        **context,
        "table": [dict(zip(HEADER, values)) for values in rows],
        "trials": {name: [asdict(trial) for trial in trials] for name, (_, trials) in results.items()},
    }
    path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
