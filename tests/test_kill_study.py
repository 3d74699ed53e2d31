"""benchmarks/kill_study.py, the kill -9 study of the writing commands: it runs on real commands, and each of its
checks finds what it is for (a partial output, a touched user file, a rerun that differs, a leftover)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from unet.io import write_json, write_tiff

from helpers import REPO

sys.path.insert(0, str(REPO))

from benchmarks.kill_study import (  # noqa: E402
    NOTES,
    Command,
    Reference,
    digest,
    failed,
    kill_trial,
    partial_outputs,
    reference_run,
    row,
    run_study,
)

# A careless writer: it appends to the user's notes, writes its output in place over a second (each run
# different), and leaves a temporary file behind.
CARELESS = Command(
    (
        sys.executable,
        "-c",
        textwrap.dedent(
            """
            import pathlib, time
            with open("notes.txt", "a") as notes:
                notes.write("scribbled\\n")
            pathlib.Path(".out.txt.tmp").write_text("mine")
            with open("out.txt", "w") as out:
                for _ in range(40):
                    out.write(f"{time.time_ns()}\\n")
                    out.flush()
                    time.sleep(0.025)
            """
        ),
    ),
    inputs=(),
    outputs=("out.txt",),
)


def test_the_study_of_fetch_prepare_and_weightmap_finds_every_kill_clean(tmp_path):
    results = run_study(["fetch", "prepare", "weightmap"], repeats=2, seed=0, work=tmp_path)
    for name, (reference, trials) in results.items():
        assert all(reference.digests.values()), f"{name}: the reference run lacks an output"
        assert [failed(trial) for trial in trials] == [False, False], (name, trials)
        assert row(name, reference, trials)[2] == 2
        assert all(trial.rerun_status == 0 and trial.rerun_equal for trial in trials)


def test_the_study_of_fetch_over_its_previous_output_finds_every_kill_clean(tmp_path):
    """The kills land while fetch replaces the data set an earlier run put there (a folder swapped whole)."""
    reference, trials = run_study(["fetch"], repeats=2, seed=0, work=tmp_path, over_previous=True)["fetch"]
    assert (reference.folder / "raw" / "train-volume.tif").is_file()
    assert [failed(trial) for trial in trials] == [False, False], trials


def test_a_careless_command_killed_mid_write_is_counted_partial_touching_unequal_and_leaving_files(tmp_path):
    (tmp_path / "inputs").mkdir()
    reference = Reference(digests={"out.txt": "what a first run wrote"}, entries={NOTES, "out.txt"}, seconds=1.0)
    trial = kill_trial(tmp_path / "inputs", CARELESS, reference, tmp_path / "trial", kill_at=0.5)
    assert trial.killed and trial.outputs_after_kill == ["out.txt"]
    assert trial.partial == ["out.txt"]
    assert trial.touched == [NOTES]
    assert trial.left_by_kill == [".out.txt.tmp"] and trial.left_by_rerun == [".out.txt.tmp"]
    assert trial.rerun_status == 0 and not trial.rerun_equal
    assert failed(trial)
    assert row("careless", reference, [trial])[2:] == [1, 1, 1, 1, 1, 0, 1]


def test_a_command_whose_uninterrupted_runs_differ_has_no_reference(tmp_path):
    (tmp_path / "inputs").mkdir()
    untouching = Command((*CARELESS.argv[:2], CARELESS.argv[2].replace('"notes.txt"', '"other.txt"')), (), ("out.txt",))
    with pytest.raises(RuntimeError, match="two uninterrupted runs differ"):
        reference_run(tmp_path / "inputs", untouching, tmp_path)


def test_a_truncated_or_foreign_output_under_its_final_name_is_partial(tmp_path):
    command = Command(("true",), inputs=(), outputs=("a.tif", "scores.json", "log.json"), progress=("log.json",))
    write_tiff(tmp_path / "a.tif", np.arange(64 * 64 * 4, dtype=np.float32).reshape(4, 64, 64), axes="ZYX")
    write_json(tmp_path / "scores.json", {"iou": 0.5})
    write_json(tmp_path / "log.json", {"iteration": 40})
    reference = {output: digest(tmp_path / output) for output in command.outputs}
    assert partial_outputs(tmp_path, command, reference) == []

    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "a.tif").write_bytes(data[: len(data) // 2])
    write_json(tmp_path / "scores.json", {"iou": 0.25})  # complete, but another result
    write_json(tmp_path / "log.json", {"iteration": 20})  # an earlier state of a file rewritten as the run goes
    assert partial_outputs(tmp_path, command, reference) == ["a.tif", "scores.json"]

    (tmp_path / "log.json").write_text('{"iteration": 2')
    (tmp_path / "a.tif").unlink()  # absent: what a kill before the write leaves
    assert partial_outputs(tmp_path, command, reference) == ["scores.json", "log.json"]


def test_digests_leave_out_timings_and_the_name_torch_gives_its_records(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"iteration": 3, "elapsed_s": 1.5, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}
    torch.save(state, tmp_path / "a.pt")
    torch.save({**state, "elapsed_s": 9.0}, tmp_path / "b.pt")  # torch names the zip records after the file
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert digest(tmp_path / "a.pt") == digest(tmp_path / "b.pt")
    torch.save({**state, "state_dict": {"w": torch.arange(6.0).reshape(3, 2)}}, tmp_path / "c.pt")
    assert digest(tmp_path / "c.pt") != digest(tmp_path / "a.pt")


def test_the_study_s_commands_are_the_issue_s_seven():
    from benchmarks.kill_study import COMMANDS

    assert set(COMMANDS) == {"train", "predict", "evaluate", "export", "fetch", "prepare", "weightmap"}
