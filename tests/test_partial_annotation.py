"""Partially annotated ground truth (the paper's words): cells that the Cell Tracking Challenge's tracking
markers show but its segmentation ground truth leaves without a mask get no loss weight, on the real HeLa data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unet.io import read_split, read_stack
from unet.prepare import unannotated_cells
from unet.weightmap import class_weights, weight_map

from helpers import unet

# Annotated frames of DIC-HeLa that miss cells: 8 of the 18, 23 cells in all (01/067 has masks for 3 of 18).
MISSING_CELLS = {"01": {34: 1, 39: 1, 67: 15}, "02": {7: 1, 14: 1, 42: 2, 61: 1, 67: 1}}


@pytest.fixture(scope="module")
def hela(shared_data, tmp_path_factory):
    """Both real HeLa sequences prepared and weighted by the commands, as the workflow runs them."""
    root = tmp_path_factory.mktemp("hela")
    raw = shared_data / "ctc" / "DIC-C2DH-HeLa"
    unet("prepare", "DIC-C2DH-HeLa", "--raw", raw, "--out", root / "data", check=True)
    for sequence in ("01", "02"):
        unet("weightmap", root / "data" / sequence, root / "weights" / sequence, check=True)
    return raw, root


@pytest.mark.parametrize("sequence", ["01", "02"])
def test_every_tracked_cell_of_an_annotated_frame_has_a_mask_or_no_weight(hela, sequence):
    raw, root = hela
    split = read_split(root / "data" / sequence)
    weights = read_stack(root / "weights" / sequence / "weights.tif")
    missing = {}
    for row, frame in enumerate(split.labelled):
        markers = tifffile.imread(raw / f"{sequence}_GT" / "TRA" / f"man_track{frame:03d}.tif")
        for marker in np.unique(markers[markers > 0]):
            where = markers == marker
            if (split.labels[row][where] > 0).any():
                continue
            missing[frame] = missing.get(frame, 0) + 1
            assert not weights[row][where].any(), f"{sequence} frame {frame}: cell {marker} is trained as background"
    assert missing == MISSING_CELLS[sequence]
    # Fully annotated frames keep every weight, and annotated cells are never ignored.
    for row, frame in enumerate(split.labelled):
        assert split.unannotated[row].any() == (frame in MISSING_CELLS[sequence])
        assert weights[row][split.labels[row] > 0].min() > 0


def test_extents_come_from_the_silver_truth_else_a_disc_and_never_cover_annotated_cells():
    annotated = np.zeros((40, 40), np.uint16)
    annotated[5:15, 5:15] = 1
    markers = np.zeros_like(annotated)
    markers[8:11, 8:11] = 7  # annotated
    markers[25:28, 5:8] = 8  # unannotated, in the silver truth
    markers[30:32, 30:32] = 9  # unannotated, not in the silver truth
    silver = np.zeros_like(annotated)
    silver[20:35, 2:12] = 3
    silver[4:16, 4:16] = 4  # the annotated cell, larger in the silver truth
    rows, columns = np.mgrid[:40, :40]
    disc = (rows - 30.5) ** 2 + (columns - 30.5) ** 2 <= 3**2  # around marker 9's centre
    in_silver = silver == 3
    np.testing.assert_array_equal(unannotated_cells(annotated, markers, silver, fallback_radius=3), in_silver | disc)
    # Without a silver truth, marker 8 gets a disc too; a disc never covers the annotated cell.
    near_annotated = np.zeros_like(markers)
    near_annotated[16:18, 16:18] = 5
    disc_8 = (rows - 26) ** 2 + (columns - 6) ** 2 <= 4**2
    disc_5 = ((rows - 16.5) ** 2 + (columns - 16.5) ** 2 <= 4**2) & (annotated == 0)
    shown = unannotated_cells(annotated, markers + near_annotated, None, fallback_radius=4)
    np.testing.assert_array_equal(shown, disc_8 | disc_5 | ((rows - 30.5) ** 2 + (columns - 30.5) ** 2 <= 16))
    assert not shown[annotated > 0].any() and disc_5.sum() < ((rows - 16.5) ** 2 + (columns - 16.5) ** 2 <= 16).sum()


def test_ignored_pixels_have_no_weight_and_do_not_count_in_the_class_balance():
    label = np.zeros((30, 30), np.uint16)
    label[2:8, 2:8] = 1
    unannotated = np.zeros((30, 30), bool)
    unannotated[20:25, 20:25] = True
    maps = weight_map(label, "instance", unannotated=unannotated, ignore_margin=2)
    # The 5 x 5 cell grown by 2 px (Euclidean): 9 x 9 less the 3 pixels per corner further than 2 px.
    assert maps.ignored.sum() == 81 - 4 * 3
    assert not maps.weights[maps.ignored].any() and (maps.weights[~maps.ignored] > 0).all()
    assert maps.ignored[18, 22] and not maps.ignored[17, 22]  # 2 px above the cell, not 3
    np.testing.assert_array_equal(maps.weights[2:8, 2:8], class_weights(maps.target, ~maps.ignored)[2:8, 2:8])
    counted = ~maps.ignored
    cells, background = (maps.target[counted] == 1).sum(), (maps.target[counted] == 0).sum()
    assert maps.weights[4, 4] == pytest.approx((cells + background) / (2 * cells))
