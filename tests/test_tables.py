import json
import math

import pandas as pd
import pytest

from unet.io import DataError
from unet.tables import mean_sd, write_tables


def _entry(value):
    return {"value": value, "threshold": 0.5, "per_threshold": {"0.5": value}}


def _isbi(warping, rand, pixel):
    entry = _entry
    return {
        "warping_error": entry(warping),
        "rand_error": entry(rand),
        "pixel_error": entry(pixel),
        "vrand": entry(0.9),
        "vinfo": entry(0.95),
    }


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_tables_put_our_mean_and_sd_beside_the_papers_rows(tmp_path):
    scores = tmp_path / "scores"
    files = [
        _write(scores / "isbi2012" / f"fold{k}" / "seed0.json", _isbi(0.0004 + k * 1e-4, 0.05, 0.06)) for k in range(3)
    ]
    files += [
        _write(scores / "DIC-C2DH-HeLa" / run / "seed0.json", {"seg": {"value": seg}, "iou": {"value": seg + 0.1}})
        for run, seg in (("01", 0.7), ("02", 0.8))
    ]
    write_tables(files, tmp_path / "tables", settings_note="paper profile")

    t1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    ours = t1[t1.group == "ours (isbi2012)"].iloc[0]
    assert ours.n == 3
    assert ours.warping_error == pytest.approx(0.0005)
    assert ours.warping_error_sd == pytest.approx(1e-4)
    assert (t1.group == "u-net").sum() == 1 and t1[t1.group == "u-net"].warping_error.iloc[0] == 0.000353
    md1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "0.000500 ± 0.000100" in md1 and "held-out" in md1 and "paper profile" in md1

    t2 = pd.read_csv(tmp_path / "tables" / "table2.csv")
    ours2 = t2[t2.method == "ours"].iloc[0]
    assert ours2["DIC-C2DH-HeLa SEG"] == pytest.approx(0.75)
    assert ours2["DIC-C2DH-HeLa IoU"] == pytest.approx(0.85)
    assert math.isnan(ours2["PhC-C2DH-U373 SEG"])  # not run: no number invented
    assert t2[t2.method == "u-net (2015)"]["PhC-C2DH-U373 SEG"].iloc[0] == 0.9203
    md2 = (tmp_path / "tables" / "table2.md").read_text()
    assert "0.7500 ± 0.0707" in md2
    assert "(DIC-HeLa: n = 2)" in md2  # the data sets we ran, not PhC-U373


def test_score_files_must_say_what_they_are(tmp_path):
    bad_name = _write(tmp_path / "scores.json", _isbi(0, 0, 0))
    with pytest.raises(DataError, match="named"):
        write_tables([bad_name], tmp_path / "out")
    unknown = _write(tmp_path / "x" / "fold0" / "seed0.json", {"accuracy": 1.0})
    with pytest.raises(DataError, match="neither ISBI"):
        write_tables([unknown], tmp_path / "out")
    a_list = _write(tmp_path / "x" / "fold1" / "seed0.json", [_isbi(0, 0, 0)])
    with pytest.raises(DataError, match=r"fold1/seed0.json: expected a JSON object \{...\}, found \[\{"):
        write_tables([a_list], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mean_sd_of_one_value_has_zero_sd():
    assert mean_sd([0.5]) == (0.5, 0.0)


def test_rule_times_sum_the_jobs_of_each_rule(tmp_path):
    from unet.tables import write_rule_times

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    jobs = [
        ("train", "a", 10.0, 500),
        ("train", "b", 30.0, 700),
        ("prepare", "x", 1.5, 90),
        ("train", "demo/fold0/seed0", 99.0, 1),
        ("prepare", "demo-train", 99.0, 1),
    ]  # an earlier run's
    for rule, job, seconds, rss in jobs:
        path = tmp_path / "benchmarks" / rule / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t{rss}\t0\t0\t0\t0\t0\t0\t0\n")
    write_rule_times(tmp_path / "benchmarks", tmp_path / "out", exclude_datasets=["demo"])
    summary = pd.read_csv(tmp_path / "out" / "rule_times.csv")
    assert summary.rule.tolist() == ["train", "prepare"]
    assert summary.iloc[0].jobs == 2 and summary.iloc[0].total_s == 40 and summary.iloc[0].max_rss_mb == 700
    assert (tmp_path / "out" / "rule_times.png").stat().st_size > 0
    with pytest.raises(DataError, match="no benchmark files"):
        write_rule_times(tmp_path / "empty", tmp_path / "out")


def test_our_rows_carry_what_produced_them(tmp_path):
    """The provenance of each row of ours, from the run.json that training writes beside each model."""
    import subprocess

    from unet.provenance import record

    files, runs = [], []
    for k, device in enumerate(["NVIDIA H200", "NVIDIA H200", "CPU (x86_64, 2 threads)"]):
        files.append(_write(tmp_path / "scores" / "isbi2012" / f"fold{k}" / "seed3.json", _isbi(0.0004, 0.05, 0.06)))
        run = record(device=device, cuda="12.8", cudnn=91000, seed=3, train_wall_s=100.0 + k)
        runs.append(_write(tmp_path / "models" / "isbi2012" / f"fold{k}" / "seed3" / "run.json", run))
    write_tables(files, tmp_path / "tables", run_files=runs)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    ours = pd.read_csv(tmp_path / "tables" / "table1.csv").set_index("group").loc["ours (isbi2012)"]
    assert ours.commit.startswith(head[:12]) and str(ours.seeds) in ("3", "3.0") and ours.train_wall_s == 303.0
    assert ours.device == "CPU (x86_64, 2 threads); NVIDIA H200" and str(ours.cuda) == "12.8"
    assert ours.torch == __import__("torch").__version__
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert f"Provenance of ours (isbi2012): commit {head[:12]}" in md and "train wall s 303.0" in md
    with pytest.raises(DataError, match="run records must be named"):
        write_tables(files, tmp_path / "tables", run_files=[_write(tmp_path / "run.json", {})])
