"""A user's files are never lost (issue 18): a command replaces only what it wrote, one process writes an output
at a time, Ctrl-C keeps the training, and a bad or unwritable output fails before any work, in one line."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_train import TINY, write_synthetic

from unet.cli import main
from unet.io import MARKER, Split, write_split
from unet.model import UNet, save_model

from helpers import unet

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL_EM = ["--size", "32", "--train-slices", "1", "--test-slices", "1"]


@pytest.fixture
def model(tmp_path) -> Path:
    save_model(tmp_path / "model.pt", UNet(base_channels=2, depth=2))
    return tmp_path / "model.pt"


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "x.tif", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    return folder


def users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("three years of work")
    return path


def hidden(folder: Path) -> list[str]:
    """Temporaries, staging folders and locks left in `folder`."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def refused(status: int, stderr: str, *parts: str) -> None:
    """Exit status 2 and one line on stderr, holding each of `parts`."""
    assert status == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for part in parts:
        assert part in stderr, stderr


# --- 1. no clobbering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "synthesize", "fetch"])
def test_a_folder_of_the_users_is_never_replaced(command, model, shared_data, tmp_path, capsys):
    out = users_folder(tmp_path / "d")
    arguments = {
        "export": ["export", str(model), str(out)],
        "synthesize": ["synthesize", "em", str(out), *SMALL_EM],
        "fetch": ["fetch", "isbi2012", "--mirror", str(shared_data), "--out", str(out), "--no-progress"],
    }[command]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert f"{out}: exists and holds what unet did not write there (thesis.txt)" in error
    assert (out / "thesis.txt").read_text() == "three years of work"
    assert sorted(path.name for path in out.iterdir()) == ["thesis.txt"] and hidden(tmp_path) == []


def test_a_file_is_not_turned_into_a_folder(model, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["export", str(model), str(notes)]) == 2
    assert f"{notes}: is a file, and the output is a folder" in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_the_current_folder_and_a_folder_holding_the_input_are_refused(model, tmp_path, monkeypatch, capsys):
    assert main(["export", str(model), str(tmp_path)]) == 2
    assert f"holds the input {model}" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["export", "model.pt", "."]) == 2
    assert ".: is the current folder or holds it" in capsys.readouterr().err
    assert model.is_file() and hidden(tmp_path) == []
    assert not [name for name in hidden(tmp_path.parent) if ".old." in name]  # what a failed rename of . left


def test_a_folder_unet_wrote_is_replaced_until_a_file_of_the_users_joins_it(tmp_path, capsys):
    out = tmp_path / "demo"
    for seed in ("1", "2"):
        assert main(["synthesize", "em", str(out), *SMALL_EM, "--seed", seed]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        MARKER,
        "test-volume.tif",
        "train-labels.tif",
        "train-volume.tif",
    ]
    (out / "mine.txt").write_text("added by hand")
    assert main(["synthesize", "em", str(out), *SMALL_EM]) == 2
    assert "(mine.txt)" in capsys.readouterr().err
    assert (out / "mine.txt").is_file()


def test_a_file_is_replaced_only_by_its_own_kind(model, tmp_path, capsys):
    data = tmp_path / "split"
    images = np.random.default_rng(0).integers(0, 255, (1, 40, 40), dtype=np.uint8)
    write_split(data, Split("demo", "test", "binary", images, [0]))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    predict = ["predict", "--model", str(model), "--data", str(data), "--device", "cpu", "--out"]
    assert main([*predict, str(notes)]) == 2
    assert f"{notes}: exists and is not a TIFF file" in capsys.readouterr().err
    assert notes.read_text() == "my notes"
    assert main([*predict, str(data / "images.tif")]) == 2  # an input
    assert main([*predict, str(tmp_path / "probabilities.tif")]) == 0
    assert main([*predict, str(tmp_path / "probabilities.tif")]) == 0  # an earlier result is replaced


# --- 2. one process per output ----------------------------------------------------------------------------


def wait_for(condition, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_second_training_in_the_same_folder_is_refused_and_a_kill_releases_it(tmp_path, capsys):
    data, weights = write_synthetic(tmp_path / "data", tmp_path / "weights", frames=2, size=48)
    out = tmp_path / "run"
    train = ["train", "--data", str(data), "--weights", str(weights), "--out", str(out), *TINY, "--device", "cpu"]
    first = subprocess.Popen(
        [sys.executable, "-m", "unet.cli", *train, "--iterations", "100000"], stderr=subprocess.DEVNULL, env=ONE_THREAD
    )
    try:
        wait_for(lambda: (out / ".unet.lock").is_file() and (out / ".unet.lock").read_text(), first)
        status = main([*train, "--iterations", "2", "--seed", "1"])  # this test's process: another one
        refused(status, capsys.readouterr().err, f"{out}: another unet process (PID {first.pid}) is writing it")
        assert not (out / "model.pt").exists()
    finally:
        first.kill()
        first.wait()
    assert main([*train, "--iterations", "2"]) == 0  # the OS released the killed run's lock
    assert (out / "model.pt").is_file() and not (out / ".unet.lock").exists()


def test_predicting_into_a_folder_that_another_process_writes_is_refused(model, images, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from unet.io import output_lock\nwith output_lock({str(out)!r}, inside=True):\n"
            "    print('held', flush=True)\n    input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        result = unet("predict", "--model", model, "--images", images, "--out", out, "--device", "cpu")
        refused(result.returncode, result.stderr, f"{out}: another unet process (PID {holder.pid}) is writing it")
    finally:
        holder.communicate("")
    assert not out.exists()  # the holder's folder, empty, went with it


# --- 4. outputs checked before any work, write errors in one line --------------------------------------------


def test_outputs_that_cannot_be_written_fail_before_any_work(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    data, weights = write_synthetic(tmp_path / "data", tmp_path / "weights", frames=2, size=48)
    status = main(["train", "--data", str(data), "--weights", str(weights), "--out", str(notes), *TINY])
    refused(status, capsys.readouterr().err, f"{notes}: is a file, not a folder")  # before training's first line
    scores = str(tmp_path / "missing.tif")  # the output is checked before the inputs are read
    status = main(["evaluate", "isbi", scores, scores, "--out", str(notes / "scores.json")])
    refused(status, capsys.readouterr().err, f"{notes / 'scores.json'}: {notes} is a file, not a folder")
    assert notes.read_text() == "my notes"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs")
def test_a_folder_that_not_even_root_can_write_in_is_refused_in_one_line(model, images, capsys):
    """Tests run as root, whom a chmod does not stop: sysfs refuses new files to everyone."""
    status = main(["predict", "--model", str(model), "--images", str(images), "--out", "/sys/kernel"])
    refused(status, capsys.readouterr().err, "/sys/kernel: cannot be written: ")


def limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes beyond it fail with EFBIG

    return apply


def test_a_checkpoint_that_does_not_fit_stops_in_one_line_naming_it_and_leaves_no_partial_file(tmp_path):
    """A file that cannot grow (here a file size limit; a full disk fails the same way, inside torch.save)."""
    data, weights = write_synthetic(tmp_path / "data", tmp_path / "weights", frames=2, size=48)
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "unet.cli", "train", "--data", data, "--weights", weights, "--out", out, *TINY]
        + ["--iterations", "10", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        preexec_fn=limit_file_size(20_000),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"unet train: error: {out / 'checkpoint.pt'}: cannot be written: file too large for this file system "
        "or the file size limit (ulimit -f)"
    )
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["log.csv"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 kB file system (a tmpfs), where mounting is allowed: too small for a checkpoint of the TINY network."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", disk], check=True)


def test_a_full_disk_is_named_in_one_line_and_refused_before_work_once_full(tiny_disk, tmp_path, capsys):
    data, weights = write_synthetic(tmp_path / "data", tmp_path / "weights", frames=2, size=48)

    def train(out: Path) -> int:
        arguments = ["--data", str(data), "--weights", str(weights), "--out", str(out), "--iterations", "10"]
        return main(["train", *arguments, *TINY, "--device", "cpu"])

    assert train(tiny_disk / "run") == 2  # its checkpoint does not fit
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"unet train: error: {tiny_disk / 'run' / 'checkpoint.pt'}: cannot be written: no space left on the device"
    )
    assert sorted(path.name for path in (tiny_disk / "run").iterdir()) == ["log.csv"]
    with pytest.raises(OSError, match="No space left"):  # now fill it up
        (tiny_disk / "filler").write_bytes(bytes(1 << 20))
    status = train(tiny_disk / "other")
    refused(status, capsys.readouterr().err, f"{tiny_disk / 'other'}: cannot be written: no space left on the device")
    assert not (tiny_disk / "other").exists()


# --- 5. predicting a folder into itself ------------------------------------------------------------------


def test_predicting_a_folder_into_itself_is_refused(model, images, capsys):
    status = main(["predict", "--model", str(model), "--images", str(images), "--out", str(images)])
    refused(status, capsys.readouterr().err, f"{images}: is also an input of this command")
    assert sorted(path.name for path in images.iterdir()) == ["x.tif"]
