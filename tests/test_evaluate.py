"""`unet evaluate`: real TIFFs in and out, the CTC's own py-ctcmetrics as the SEG oracle, clear errors, the rules."""

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unet import metrics
from unet.cli import main
from unet.io import read_split, write_tiff
from unet.prepare import prepare

from helpers import copy_workflow, snakemake, unet

ISBI_KEYS = ("warping_error", "rand_error", "rand_error_unrestricted", "pixel_error", "vrand", "vinfo")


def run_in_process(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def isbi_files(shared_data, tmp_path_factory):
    """Four real label pages (0/255) and a noisy probability stack for pages 1-2, as the pipeline writes them."""
    folder = tmp_path_factory.mktemp("isbi")
    labels = tifffile.imread(shared_data / "isbi2012" / "train-labels.tif")[4:8, 200:296, 100:196]
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter((labels[1:3] > 0).astype(np.float32), (0, 1.5, 1.5))
    prob = np.clip(prob + rng.normal(0, 0.25, prob.shape), 0, 1).astype(np.float32)
    write_tiff(folder / "labels.tif", labels, axes="ZYX")
    write_tiff(folder / "probabilities.tif", prob, axes="ZYX")
    return folder, prob, labels


def test_isbi_json_holds_every_metric_as_the_library_computes_it(isbi_files):
    folder, prob, labels = isbi_files
    out = folder / "scores" / "seed0.json"
    done = unet(
        "evaluate",
        "isbi",
        folder / "probabilities.tif",
        folder / "labels.tif",
        "--slices",
        "1-2",
        "--json",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text()) == printed
    expected = metrics.isbi_metrics(prob, labels[1:3])
    for key in ISBI_KEYS:
        assert set(printed[key]) >= {"value", "threshold", "per_threshold"}
        assert printed[key]["value"] == pytest.approx(expected[key]["value"], abs=1e-15)
        assert printed[key]["threshold"] == expected[key]["threshold"]
        assert printed[key]["per_threshold"] == {
            str(th): pytest.approx(v, abs=1e-15) for th, v in expected[key]["per_threshold"].items()
        }
    assert len(printed["warping_error"]["per_threshold"]) == 10 and len(printed["pixel_error"]["per_threshold"]) == 11
    assert printed["meta"]["slices"] == [1, 2] and printed["meta"]["rand_normalisation"] == "n2"


def test_isbi_table_and_the_older_rand_normalisation(isbi_files):
    folder, prob, labels = isbi_files
    code, table, _ = run_in_process(
        "isbi", folder / "probabilities.tif", folder / "labels.tif", "--slices", "1,2", "--rand-normalisation", "pairs"
    )
    assert code == 0
    assert "warping error" in table and "V_info after thinning" in table and "per threshold" in table
    pairs = metrics.rand_error(prob, labels[1:3], "pairs")
    row = next(line for line in table.splitlines() if line.startswith("Rand error (foreground"))
    assert row.split()[-2] == f"{pairs['value']:.6g}" and float(row.split()[-1]) == pairs["threshold"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slices", "0-2"], r"probabilities.tif: has 2 pages but 3 label pages are selected"),
        (["--slices", "3-4"], r"labels.tif: has 4 pages, --slices asks for \[4\]"),
        ([], r"probabilities.tif: has 2 pages but 4 label pages are selected"),
    ],
)
def test_isbi_page_selection_errors_name_the_file(isbi_files, args, message):
    folder, _, _ = isbi_files
    code, _, err = run_in_process("isbi", folder / "probabilities.tif", folder / "labels.tif", *args)
    assert code == 2 and err.startswith("unet evaluate: error:") and re.search(message, err)


def test_isbi_bad_values_and_shapes_are_refused(isbi_files, tmp_path):
    folder, prob, labels = isbi_files
    write_tiff(tmp_path / "high.tif", prob * 2, axes="ZYX")
    code, _, err = run_in_process("isbi", tmp_path / "high.tif", folder / "labels.tif", "--slices", "1-2")
    assert code == 2 and "high.tif" in err and "[0, 1]" in err
    write_tiff(tmp_path / "small.tif", prob[:, :90, :90], axes="ZYX")
    code, _, err = run_in_process("isbi", tmp_path / "small.tif", folder / "labels.tif", "--slices", "1-2")
    assert code == 2 and "small.tif" in err and "(90, 90)" in err
    write_tiff(tmp_path / "bytes.tif", (prob * 255).astype(np.uint8), axes="ZYX")
    code, _, err = run_in_process("isbi", tmp_path / "bytes.tif", folder / "labels.tif", "--slices", "1-2")
    assert code == 2 and "uint8" in err
    code, _, err = run_in_process("isbi", tmp_path / "missing.tif", folder / "labels.tif")
    assert code == 2 and "missing.tif: no such file" in err
    assert not list(tmp_path.glob("*.json"))


# Cell Tracking Challenge


def perturb(mask: np.ndarray, how: str) -> np.ndarray:
    """A plausible segmentation error applied to a ground-truth instance mask."""
    ids = [i for i in np.unique(mask) if i]
    out = mask.copy()
    if how == "eroded":
        out = np.where(ndimage.grey_erosion(mask, size=5) == mask, mask, 0)
    elif how == "dilated":
        grown = ndimage.grey_dilation(mask, size=7)
        out = np.where(mask == 0, grown, mask)
    elif how == "shifted":
        out = np.roll(mask, (9, -6), axis=(0, 1))
    elif how == "merged":
        out[np.isin(mask, ids[:3])] = ids[0]
    elif how == "split":
        for i in ids[:4]:
            rows = np.nonzero(mask == i)[0]
            out[(mask == i) & (np.arange(mask.shape[0])[:, None] > np.median(rows))] = 1000 + i
    elif how == "dropped":
        out[np.isin(mask, ids[::3])] = 0
        out[5:40, 5:40] = 999  # and a false positive
    return out.astype(np.uint16)


@pytest.fixture(scope="module")
def hela(shared_data, tmp_path_factory):
    """A copy of the real HeLa 01_GT and a result folder with a mask for every frame, perturbed on annotated ones."""
    source = shared_data / "ctc" / "DIC-C2DH-HeLa" / "01_GT"
    root = tmp_path_factory.mktemp("hela")
    gt, res = root / "01_GT", root / "01_RES"
    (gt / "TRA").mkdir(parents=True)
    res.mkdir()
    os.symlink(source / "SEG", gt / "SEG")
    for path in (source / "TRA").iterdir():
        os.symlink(path, gt / "TRA" / path.name)
    hows = ["eroded", "dilated", "shifted", "merged", "split", "dropped"]
    annotated = sorted(int(p.stem[-3:]) for p in (source / "SEG").glob("man_seg*.tif"))
    empty = np.zeros((512, 512), np.uint16)
    for frame in range(len(list((source / "TRA").glob("man_track*.tif")))):
        if frame in annotated:
            mask = perturb(tifffile.imread(source / "SEG" / f"man_seg{frame:03d}.tif"), hows[frame % len(hows)])
        else:
            mask = empty
        write_tiff(res / f"mask{frame:03d}.tif", mask)
    return gt, res, annotated


def test_seg_equals_py_ctcmetrics_on_real_hela_ground_truth(hela, capsys):
    from ctc_metrics import evaluate_sequence

    gt, res, annotated = hela
    oracle = evaluate_sequence(res=str(res), gt=str(gt), metrics=["SEG"], threads=1)["SEG"]
    capsys.readouterr()
    code, printed, err = run_in_process("ctc", res, gt, "--json")
    assert code == 0, err
    scores = json.loads(printed)
    assert scores["seg"]["value"] == pytest.approx(oracle, abs=1e-9)
    assert 0.2 < oracle < 0.95  # the perturbations matter, and are not all-destroying
    assert [row["frame"] for row in scores["frames"]] == annotated
    assert 0 < scores["iou"]["value"] < 1 and scores["seg"]["matched"] < scores["seg"]["objects"]


def test_ctc_table_and_a_missing_result_frame(hela, tmp_path):
    gt, res, annotated = hela
    code, table, _ = run_in_process("ctc", res, gt)
    assert code == 0 and table.startswith("Cell Tracking Challenge") and "SEG" in table
    partial = tmp_path / "01_RES"
    partial.mkdir()
    for path in res.glob("mask*.tif"):
        if path.name != f"mask{annotated[2]:03d}.tif":
            os.symlink(path, partial / path.name)
    code, _, err = run_in_process("ctc", partial, gt, "--out", tmp_path / "seg.json")
    assert code == 2 and f"annotated frame(s) [{annotated[2]}]" in err and f"mask{annotated[2]:03d}.tif" in err
    assert not (tmp_path / "seg.json").exists()
    code, _, err = run_in_process("ctc", res, tmp_path)
    assert code == 2 and "SEG: no such folder" in err


def test_the_iou_leaves_out_the_cells_that_the_ground_truth_shows_without_a_mask(shared_data, tmp_path):
    """Real HeLa 01: a result that finds every cell, the unannotated ones included, is perfect outside them."""
    raw = shared_data / "ctc" / "DIC-C2DH-HeLa"
    prepare("DIC-C2DH-HeLa", raw, tmp_path / "data", splits=["01"])
    split = read_split(tmp_path / "data" / "01")
    res = tmp_path / "01_RES"
    res.mkdir()
    for frame, label, unannotated in zip(split.labelled, split.labels, split.unannotated):
        write_tiff(res / f"mask{frame:03d}.tif", np.where(unannotated, label.max() + 1, label).astype(np.uint16))
    plain = json.loads(run_in_process("ctc", res, raw / "01_GT", "--json")[1])
    outside = json.loads(
        run_in_process("ctc", res, raw / "01_GT", "--unannotated", tmp_path / "data" / "01", "--json")[1]
    )
    frame_67 = split.labelled.index(67)
    assert plain["frames"][frame_67]["iou"] < 0.5 and plain["iou"]["value"] < 0.95
    assert outside["iou"]["value"] == 1.0 and [row["iou"] for row in outside["frames"]] == [1.0] * 9
    assert outside["seg"] == plain["seg"] == {**plain["seg"], "value": 1.0}  # SEG counts annotated cells only
    assert outside["meta"]["iou_leaves_out"].endswith("unannotated.tif")


# The rules


def test_rules_pass_the_evaluate_settings_as_flags(tmp_path):
    """A dry run of the real workflow up to two score files: the config section becomes the CLI's flags."""
    workdir = copy_workflow(tmp_path)
    done = snakemake(
        workdir,
        "-n",
        "-p",
        "--config",
        "evaluate={rand_normalisation: pairs, warping_radius: 12}",
        "--",
        "results/scores/isbi2012/fold1/seed0.json",
        "results/scores/DIC-C2DH-HeLa/02/seed0.json",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert (
        "unet evaluate isbi results/predictions/isbi2012/fold1/seed0/probabilities.tif "
        "results/data/isbi2012/train/labels.tif --fold 1 --folds 3 --rand-normalisation pairs --warping-radius 12"
    ) in done.stdout
    assert (
        "unet evaluate ctc results/predictions/DIC-C2DH-HeLa/02/seed0/01_RES results/raw/DIC-C2DH-HeLa/01_GT"
    ) in done.stdout
