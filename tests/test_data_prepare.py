"""`unet prepare` on the real copies in ../shared/data, and its errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from unet.io import DataError, read_split
from unet.prepare import prepare

from helpers import unet

HELA_GT = {"01": [2, 5, 21, 31, 33, 34, 39, 54, 67], "02": [6, 7, 14, 27, 34, 38, 42, 61, 67]}


def test_isbi2012_train_has_30_slices_with_binary_labels_and_test_has_none(shared_data, tmp_path):
    raw = shared_data / "isbi2012"
    prepare("isbi2012", raw, tmp_path)
    train, test = read_split(tmp_path / "train"), read_split(tmp_path / "test")
    assert train.kind == "binary" and train.images.shape == (30, 512, 512) and train.images.dtype == np.uint8
    assert train.frames == train.labelled == list(range(30))
    official = tifffile.imread(raw / "train-labels.tif")
    np.testing.assert_array_equal(train.labels, (official == 255).astype(np.uint8))  # 1 = cell
    assert 0.15 < 1 - train.labels.mean() < 0.3, "membranes are about a fifth of the pixels"
    np.testing.assert_array_equal(test.images, tifffile.imread(raw / "test-volume.tif"))
    assert test.labels is None and test.labelled == []


def test_hela_gt_frames_are_each_matched_to_their_raw_frame(shared_data, tmp_path):
    raw = shared_data / "ctc" / "DIC-C2DH-HeLa"
    prepare("DIC-C2DH-HeLa", raw, tmp_path)
    for sequence, annotated in HELA_GT.items():
        split = read_split(tmp_path / sequence)
        assert split.kind == "instance" and split.frames == list(range(84))
        assert split.images.shape == (84, 512, 512) and split.labels.dtype == np.uint16
        assert split.labelled == annotated
        for frame, label, image in zip(split.labelled, split.labels, split.labelled_images()):
            np.testing.assert_array_equal(label, tifffile.imread(raw / f"{sequence}_GT/SEG/man_seg{frame:03d}.tif"))
            np.testing.assert_array_equal(image, tifffile.imread(raw / sequence / f"t{frame:03d}.tif"))
            assert label.max() > 0, "every annotated frame shows cells"


def test_bad_isbi_labels_are_named_with_their_values(shared_data, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    volume = tifffile.imread(shared_data / "isbi2012" / "train-volume.tif")[:2]
    tifffile.imwrite(raw / "train-volume.tif", volume)
    tifffile.imwrite(raw / "train-labels.tif", (volume > 128).astype(np.uint8))  # 0/1 instead of 0/255
    with pytest.raises(
        DataError, match=r"train-labels.tif: expected 255 = cell and 0 = membrane, found values \[0, 1\]"
    ):
        prepare("isbi2012", raw, tmp_path / "data", splits=["train"])
    tifffile.imwrite(raw / "train-labels.tif", np.zeros((3, 512, 512), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match=r"train-labels.tif: shape \(3, 512, 512\) differs from train-volume.tif"):
        prepare("isbi2012", raw, tmp_path / "data", splits=["train"])
    assert not (tmp_path / "data" / "train" / "frames.json").exists()


def test_a_ctc_gt_frame_without_its_raw_frame_or_of_another_size_is_named(tmp_path):
    raw = tmp_path / "raw"
    for sequence in ("01", "02"):
        (raw / sequence).mkdir(parents=True)
        (raw / f"{sequence}_GT" / "SEG").mkdir(parents=True)
        for t in range(3):
            tifffile.imwrite(raw / sequence / f"t{t:03d}.tif", np.full((16, 16), t, np.uint8))
    tifffile.imwrite(raw / "01_GT/SEG/man_seg007.tif", np.ones((16, 16), np.uint16))
    with pytest.raises(DataError, match=r"man_seg007.tif: frame 7 has no raw frame"):
        prepare("cells", raw, tmp_path / "data", protocol="ctc", splits=["01"])
    (raw / "01_GT/SEG/man_seg007.tif").unlink()
    tifffile.imwrite(raw / "01_GT/SEG/man_seg001.tif", np.ones((8, 16), np.uint16))
    with pytest.raises(DataError, match=r"man_seg001.tif: \(8, 16\) uint16 differs from the other frames \(\(16, 16\)"):
        prepare("cells", raw, tmp_path / "data", protocol="ctc", splits=["01"])
    with pytest.raises(DataError, match=r"02_GT/SEG: no annotated frames"):
        prepare("cells", raw, tmp_path / "data", protocol="ctc", splits=["02"])
    # The challenge's test sequences have no labels, and are prepared as such.
    prepare("cells", raw, tmp_path / "test", protocol="ctc", part="test")
    assert read_split(tmp_path / "test" / "02").labels is None


def test_protocol_and_split_errors_name_the_problem(shared_data, tmp_path):
    with pytest.raises(DataError, match="not in the catalogue.*give its protocol"):
        prepare("mystery", shared_data / "isbi2012", tmp_path)
    with pytest.raises(DataError, match=r"isbi2012: split '01' is not one of the isbi splits"):
        prepare("isbi2012", shared_data / "isbi2012", tmp_path, splits=["01"])
    with pytest.raises(DataError, match="the catalogue's protocol is 'isbi', not 'ctc'"):
        prepare("isbi2012", shared_data / "isbi2012", tmp_path, protocol="ctc")


def test_the_prepare_command_writes_the_requested_split(shared_data, tmp_path):
    result = unet("prepare", "isbi2012", "--raw", shared_data / "isbi2012", "--out", tmp_path, "--splits", "test")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test"]
    assert read_split(tmp_path / "test").images.shape == (30, 512, 512)


def _cells(raw, masks: dict[int, np.ndarray]):
    """A CTC sequence 01 of three 16 x 16 frames with the given SEG masks."""
    (raw / "01").mkdir(parents=True)
    (raw / "01_GT" / "SEG").mkdir(parents=True)
    for t in range(3):
        tifffile.imwrite(raw / "01" / f"t{t:03d}.tif", np.full((16, 16), t, np.uint8))
    for t, mask in masks.items():
        tifffile.imwrite(raw / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", mask)


def test_a_float_mask_among_integer_ones_is_named_itself(tmp_path):
    _cells(
        tmp_path / "raw",
        {0: np.ones((16, 16), np.float32), 1: np.ones((16, 16), np.uint16), 2: np.ones((16, 16), np.uint16)},
    )
    with pytest.raises(DataError, match=r"man_seg000.tif: instance labels must be non-negative integers .* float32"):
        prepare("cells", tmp_path / "raw", tmp_path / "data", protocol="ctc", splits=["01"])


def test_a_nan_pixel_is_refused_where_it_enters_naming_the_file_and_the_pixel(shared_data, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(shared_data / "isbi2012", raw)
    volume = tifffile.imread(raw / "train-volume.tif").astype(np.float32)
    volume[3, 17, 42] = np.nan
    tifffile.imwrite(raw / "train-volume.tif", volume)
    with pytest.raises(
        DataError,
        match=r"train-volume.tif: 1 pixels are NaN or infinite \(the first at frame 3, "
        r"pixel \(17, 42\): nan\)",
    ):
        prepare("isbi2012", raw, tmp_path / "data", splits=["train"])
    # A prepared split edited by hand is refused when read, by every stage that reads it.
    prepare("isbi2012", shared_data / "isbi2012", tmp_path / "data", splits=["train"])
    images = tmp_path / "data" / "train" / "images.tif"
    tifffile.imwrite(images, volume)
    result = unet("weightmap", tmp_path / "data" / "train", tmp_path / "weights")
    assert result.returncode == 2 and f"{images}: 1 pixels are NaN" in result.stderr


def test_a_bad_split_leaves_the_splits_prepared_before_as_they_were(shared_data, tmp_path):
    """Without --splits, every split is read before any is written: a bad test volume does not rewrite train."""
    raw = tmp_path / "raw"
    shutil.copytree(shared_data / "isbi2012", raw)
    prepare("isbi2012", raw, tmp_path / "data")
    before = {path.name: path.read_bytes() for path in (tmp_path / "data" / "train").iterdir()}
    labels = tifffile.imread(raw / "train-labels.tif")
    tifffile.imwrite(raw / "train-labels.tif", 255 - labels)  # another source's labels, still valid
    (raw / "test-volume.tif").write_bytes(b"not a TIFF")
    with pytest.raises(DataError, match="test-volume.tif"):
        prepare("isbi2012", raw, tmp_path / "data")
    assert {path.name: path.read_bytes() for path in (tmp_path / "data" / "train").iterdir()} == before
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["test", "train"]


def test_a_ctc_sequence_with_a_missing_frame_or_garbage_tracks_is_refused_naming_the_file(tmp_path):
    raw = tmp_path / "raw"
    cells = np.zeros((16, 16), np.uint16)
    cells[2:6, 2:6], cells[9:14, 9:14] = 1, 2
    _cells(raw, {0: np.where(cells == 1, 1, 0).astype(np.uint16)})  # cell 2 is not annotated
    tracking = raw / "01_GT" / "TRA"
    tracking.mkdir()
    for t in range(3):
        tifffile.imwrite(tracking / f"man_track{t:03d}.tif", cells)
    (tracking / "man_track.txt").write_text("1 0 2 0\n2 0 2 0\n")
    prepare("cells", raw, tmp_path / "data", protocol="ctc", splits=["01"])  # a whole sequence prepares
    assert read_split(tmp_path / "data" / "01").unannotated[0, 10, 10]

    def refused(message: str) -> None:
        with pytest.raises(DataError, match=message):
            prepare("cells", raw, tmp_path / "data", protocol="ctc", splits=["01"])

    for text, line in [("1 0 2\n", "1 0 2"), ("1 0 2 0\n2 2 1 0\n", "2 2 1 0"), ("cells: 2\n", "cells: 2")]:
        (tracking / "man_track.txt").write_text(text)
        refused(f"^{tracking / 'man_track.txt'}: line \\d '{line}' is not a track `L B E P`")
    (tracking / "man_track.txt").write_text("1 0 2 0\n2 1 2 1\n3 0 2 4\n")
    refused(r"man_track.txt: parent tracks \[4\] are not listed")
    (tracking / "man_track.txt").write_text("1 0 2 0\n2 1 2 1\n")  # the file of another sequence: cell 2 from frame 1
    refused(f"^{tracking / 'man_track000.tif'}: marker 2 is not a track at frame 0: in man_track.txt it spans frames 1")
    (tracking / "man_track.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    result = unet("prepare", "cells", "--protocol", "ctc", "--raw", raw, "--out", tmp_path / "data", "--splits", "01")
    assert (result.returncode, result.stderr) == (
        2,
        f"unet prepare: error: {tracking / 'man_track.txt'}: not a text file of tracks `L B E P`\n",
    )
    (tracking / "man_track.txt").write_text("1 0 2 0\n2 0 2 0\n")
    (tracking / "man_track000.tif").unlink()
    refused(f"^{tracking / 'man_track000.tif'}: no such file: the tracking markers of annotated frame 0")
    (raw / "01" / "t001.tif").unlink()
    refused(f"^{raw / '01' / 't001.tif'}: no such file, but the sequence runs from frame 0 to 2 \\(1 missing\\)")
    assert read_split(tmp_path / "data" / "01").frames == [0, 1, 2]  # the split prepared before is kept
