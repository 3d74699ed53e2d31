"""The metrics against hand-made cases with known answers, Fiji's arithmetic, skimage and a plain-Python oracle."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from unet import _warping, metrics
from unet.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_metrics as reference  # noqa: E402  the plain-Python oracle, shared with the benchmark

CELL = 81  # each cell of the scene is 9 x 9
PAIRS = lambda n: n * (n - 1) // 2  # noqa: E731


def scene() -> np.ndarray:
    """24 x 30 ground truth: four 9x9 cells A B / C D behind 2-pixel membranes, a wide membrane band on the right."""
    cells = np.zeros((24, 30), dtype=np.uint8)
    for rows in (slice(2, 11), slice(13, 22)):
        for cols in (slice(2, 11), slice(13, 22)):
            cells[rows, cols] = 1
    return cells


def as_prob(proposal: np.ndarray) -> np.ndarray:
    return proposal.astype(np.float32)


def all_values(result: dict) -> set:
    return set(result["per_threshold"].values())


@pytest.fixture(scope="module")
def isbi_labels(shared_data):
    return tifffile.imread(shared_data / "isbi2012" / "train-labels.tif")


def noisy_prob(labels: np.ndarray, seed: int, noise: float = 0.25) -> np.ndarray:
    """A realistic-looking probability map: the labels blurred and noised."""
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter((labels > 0).astype(np.float32), (0, 1.5, 1.5))
    return np.clip(prob + rng.normal(0, noise, prob.shape), 0, 1).astype(np.float32)


# Fiji's thresholds and comparisons


def test_thresholds_accumulate_in_double_precision_like_fiji():
    assert metrics.THRESHOLDS[3] == 0.30000000000000004 and metrics.THRESHOLDS[8] == 0.7999999999999999
    assert metrics.THRESHOLDS[-1] == 0.9999999999999999 and len(metrics.THRESHOLDS) == 11
    assert metrics.WARPING_THRESHOLDS[-1] == 0.8999999999999999 and len(metrics.WARPING_THRESHOLDS) == 10


def test_probabilities_are_widened_before_they_meet_a_threshold():
    truth = np.array([[0, 1, 1, 1]], dtype=np.uint8)
    # float32(0.8) = 0.800000011... > 0.7999999999999999 (in float32 the two would be equal: not a cell)
    prob = np.array([[0.0, 0.8, 0.8, 0.8]], dtype=np.float32)
    per_threshold = metrics.pixel_error(prob, truth)["per_threshold"]
    assert per_threshold[0.8] == 0.0
    assert per_threshold[1.0] == 1.0  # no cell left: recall 0, F-score 0


def test_simple_point_table_matches_yokoi_connectivity_number():
    """Independent check: for 4-connected cells a point is simple iff Yokoi's N4 = 1 (and it is not isolated)."""
    for code in range(512):
        patch = ((code >> np.arange(9)) & 1).reshape(3, 3)
        ring = [patch[1, 2], patch[0, 2], patch[0, 1], patch[0, 0], patch[1, 0], patch[2, 0], patch[2, 1], patch[2, 2]]
        n4 = sum(ring[k] - ring[k] * ring[(k + 1) % 8] * ring[(k + 2) % 8] for k in (0, 2, 4, 6))
        assert _warping.SIMPLE_POINT_TABLE[_warping.patch_code(patch)] == (n4 == 1), patch


# Hand-made cases with known answers


def test_a_perfect_prediction_scores_perfectly():
    truth = scene()
    scores = metrics.isbi_metrics(as_prob(truth), truth * 255)
    for key in ("warping_error", "rand_error", "rand_error_unrestricted", "pixel_error"):
        assert scores[key]["value"] == 0.0 and scores[key]["threshold"] == 0.0, key
    assert scores["vrand"]["value"] == 1.0 and scores["vinfo"]["value"] == 1.0


def test_a_perfect_prediction_of_real_labels_scores_perfectly(isbi_labels):
    truth = isbi_labels[:2, 100:196, 200:296]
    scores = metrics.isbi_metrics((truth / 255).astype(np.float32), truth)
    assert scores["warping_error"]["value"] == 0.0 and scores["rand_error"]["value"] == 0.0
    assert scores["pixel_error"]["value"] == 0.0 and scores["vrand"]["value"] == 1.0
    assert scores["vinfo"]["value"] == pytest.approx(1.0, abs=1e-12)


def test_one_merge():
    truth = scene()
    proposal = truth.copy()
    proposal[6, 11:13] = 1  # a 1-pixel bridge through the membrane between A and B
    scores = metrics.isbi_metrics(as_prob(proposal), truth)
    # Warping: one bridge pixel becomes part of A, the other would join A and B: one merger pixel.
    assert all_values(scores["warping_error"]) == {1 / truth.size}
    assert scores["warping_error"]["counts"][0.5] == {"splits": 0, "mergers": 1}
    assert scores["pixel_error"]["value"] == pytest.approx(1 - 648 / 650)
    # N^2: TP = 4 * 81^2, FP = 2 * 81^2 (A x B), FN = 0: precision 2/3, recall 1, F = 0.8.
    assert scores["rand_error"]["value"] == pytest.approx(0.2)
    pairs_tp, pairs_fp = 4 * PAIRS(CELL), PAIRS(2 * CELL) - 2 * PAIRS(CELL)
    assert metrics.rand_error(as_prob(proposal), truth, "pairs")["value"] == pytest.approx(
        1 - 2 * pairs_tp / (2 * pairs_tp + pairs_fp)
    )
    # Standard index over all pixels: 250 membrane pixels in both, the 2 bridge pixels membrane only in the truth.
    membrane = truth.size - 4 * CELL
    tp = PAIRS(membrane - 2) + PAIRS(2) + 4 * PAIRS(CELL)
    fp = PAIRS(membrane - 2) + PAIRS(2 * CELL + 2) + 2 * PAIRS(CELL) - tp
    fn = PAIRS(membrane) + 4 * PAIRS(CELL) - tp
    assert scores["rand_error_unrestricted"]["value"] == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn))
    # After thinning A+B is one region: V_rand as the N^2 Rand F-score; V_info: I = H(B) = 1.5 log 2, H(A) = 2 log 2.
    assert scores["vrand"]["value"] == pytest.approx(0.8)
    assert scores["vinfo"]["value"] == pytest.approx(2 * 0.75 / 1.75)


def test_one_split():
    truth = scene()
    proposal = truth.copy()
    proposal[2:11, 6] = 0  # a membrane cut through A: two 4 x 9 halves
    scores = metrics.isbi_metrics(as_prob(proposal), truth)
    # Warping: the cut is removed pixel by pixel until the last would split A: one split pixel.
    assert all_values(scores["warping_error"]) == {1 / truth.size}
    assert scores["warping_error"]["counts"][0.0] == {"splits": 1, "mergers": 0}
    assert scores["pixel_error"]["value"] == pytest.approx(9 / (2 * 315 + 9))
    # N^2: the 9 cut pixels are singletons; TP = 2 * 36^2 + 9 + 3 * 81^2, FP = 0, FN = 81^2 - 2 * 36^2 - 9.
    tp, fn = 2 * 36**2 + 9 + 3 * CELL**2, CELL**2 - 2 * 36**2 - 9
    assert scores["rand_error"]["value"] == pytest.approx(1 - 2 * tp / (2 * tp + fn))
    # Thinning keeps the cut as a watershed line, so V_rand sees the same singletons.
    assert scores["vrand"]["value"] == pytest.approx(2 * tp / (2 * tp + fn))
    # V_info: the proposal refines the truth, so precision 1 and recall H(A) / H(B).
    n = 4 * CELL
    h_a = math.log(4)
    h_b = -sum(s / n * math.log(s / n) for s in [36, 36] + [1] * 9 + [CELL] * 3)
    assert scores["vinfo"]["value"] == pytest.approx(2 * (h_a / h_b) / (1 + h_a / h_b))


def test_a_hole():
    truth = scene()
    proposal = truth.copy()
    proposal[5:7, 5:7] = 0  # a 2 x 2 membrane blob inside A
    scores = metrics.isbi_metrics(as_prob(proposal), truth)
    assert all_values(scores["warping_error"]) == {0.0}  # a hole is neither a split nor a merger
    assert scores["pixel_error"]["value"] == pytest.approx(4 / (2 * 320 + 4))
    tp, fn = 77**2 + 4 + 3 * CELL**2, CELL**2 - 77**2 - 4
    assert scores["rand_error"]["value"] == pytest.approx(1 - 2 * tp / (2 * tp + fn))
    assert scores["vrand"]["value"] == 1.0 and scores["vinfo"]["value"] == pytest.approx(1.0)  # thinning fills it


def test_an_added_object():
    truth = scene()
    proposal = truth.copy()
    proposal[11:13, 25:27] = 1  # a 2 x 2 cell inside the wide membrane band
    scores = metrics.isbi_metrics(as_prob(proposal), truth)
    assert all_values(scores["warping_error"]) == {0.0}
    assert scores["rand_error"]["value"] == 0.0  # ground-truth membrane is left out
    assert scores["rand_error_unrestricted"]["value"] > 0.0
    assert scores["pixel_error"]["value"] == pytest.approx(4 / (2 * 4 * CELL + 4))
    assert scores["vrand"]["value"] == 1.0 and scores["vinfo"]["value"] == pytest.approx(1.0)


def test_best_values_take_the_first_best_threshold():
    truth = scene()
    prob = np.where(truth > 0, 0.65, 0.35).astype(np.float32)
    prob[6, 11:13] = 0.45  # the bridge is a cell at thresholds below 0.45: perfect at 0.5 and 0.6 only
    scores = metrics.isbi_metrics(prob, truth)
    assert scores["warping_error"]["per_threshold"][0.4] == 1 / truth.size
    assert scores["warping_error"]["threshold"] == 0.5 and scores["warping_error"]["value"] == 0.0
    assert scores["rand_error"]["per_threshold"][0.4] == pytest.approx(0.2)
    assert scores["rand_error"]["threshold"] == 0.5 and scores["rand_error"]["value"] == 0.0


# Cross-checks


def singletons_relabelled(proposal_labels: np.ndarray) -> np.ndarray:
    """Proposal labels with every 0 pixel given its own id, i.e. the singletons of Fiji's definitions."""
    out = proposal_labels.astype(np.int64).copy()
    zeros = out == 0
    out[zeros] = out.max() + 1 + np.arange(np.count_nonzero(zeros))
    return out


def test_pairs_rand_error_equals_skimage_adapted_rand_error_with_singletons(isbi_labels):
    """skimage's adapted Rand error is the pair-counting one; it treats label 0 of the test image as one object.

    The two coincide when the proposal's membrane pixels inside ground-truth
    cells are given unique labels (Fiji's singletons) and the slices get
    disjoint ids (Fiji sums pair counts over slices).
    """
    truth = isbi_labels[3:5, :96, :96]
    prob = noisy_prob(truth, seed=3)
    ours = metrics.rand_error(prob, truth, "pairs")["per_threshold"]
    for th in metrics.THRESHOLDS[1:-1]:
        gt_stack, test_stack, offset = [], [], 0
        for t, p in zip(truth, prob):
            gt = ndimage.label(t > 0, ndimage.generate_binary_structure(2, 1))[0].astype(np.int64)
            test = singletons_relabelled(ndimage.label(p.astype(np.float64) > th)[0])
            gt_stack.append(np.where(gt > 0, gt + offset, 0))
            test_stack.append(test + offset)
            offset += int(max(gt.max(), test.max())) + 1
        are, _, _ = adapted_rand_error(np.stack(gt_stack), np.stack(test_stack), ignore_labels=(0,))
        assert ours[round(th, 6)] == pytest.approx(are, abs=1e-12), th


def test_vinfo_matches_skimage_conditional_entropies(isbi_labels):
    """With the thinned proposal's lines as singletons, skimage's H(A|B), H(B|A) give the same V_info."""
    truth = isbi_labels[7, :96, :96]
    prob = noisy_prob(truth[None], seed=4)[0]
    gt = ndimage.label(truth > 0, ndimage.generate_binary_structure(2, 1))[0]
    for th in (0.3, 0.5, 0.7):
        thinned = singletons_relabelled(metrics.thin_borders(prob.astype(np.float64) > th))
        # skimage returns [H(image1 | image0), H(image0 | image1)]
        h_b_given_a, h_a_given_b = variation_of_information(gt, thinned, ignore_labels=(0,))
        h_a = variation_of_information(gt, np.zeros_like(gt), ignore_labels=(0,))[1]
        mutual = h_a - h_a_given_b
        precision, recall = mutual / h_a, mutual / (h_b_given_a + mutual)
        ours = metrics.vrand_vinfo(prob, truth)["vinfo"]["per_threshold"][th]
        assert ours == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)


@pytest.mark.parametrize("radius", [20, 64])  # 64 exceeds the crop: Fiji then relabels the whole image
def test_warping_kernel_equals_the_plain_python_reference_on_real_crops(isbi_labels, radius):
    truth = isbi_labels[[2, 11, 23], 150:210, 260:320] > 0
    prob = noisy_prob(truth, seed=5, noise=0.3)
    for t, p in zip(truth, prob):
        for th in (0.2, 0.5, 0.8):
            warped, (rows, columns) = metrics.warp_ground_truth(t, p, th)
            expected, left = reference.warp(t.tolist(), p.tolist(), th)
            assert warped.tolist() == expected
            assert sorted(zip(columns.tolist(), rows.tolist())) == sorted(left)
            assert metrics.warped_splits_and_mergers(t, p, th, radius) == reference.classify(expected, left, radius)


def test_all_metrics_equal_the_plain_python_reference(isbi_labels):
    truth = isbi_labels[[5, 19], 300:340, 60:100]
    prob = noisy_prob(truth, seed=6, noise=0.3)
    ours = metrics.isbi_metrics(prob, truth)
    theirs = reference.isbi_per_threshold(
        prob.tolist(), (truth > 0).tolist(), metrics.THRESHOLDS, metrics.WARPING_THRESHOLDS
    )
    for key in ("warping_error", "rand_error", "rand_error_unrestricted", "pixel_error", "vrand", "vinfo"):
        for th, value in theirs[key].items():
            assert ours[key]["per_threshold"][th] == pytest.approx(value, abs=1e-12, nan_ok=True), (key, th)
    pairs = metrics.rand_error(prob, truth, "pairs")["per_threshold"]
    assert pairs == pytest.approx(theirs["rand_error_pairs"], abs=1e-12)


# Bad input


@pytest.mark.parametrize(
    ("prob", "labels", "message"),
    [
        (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 9), np.uint8), "shape"),
        (np.full((1, 8, 8), 1.5, np.float32), np.zeros((1, 8, 8), np.uint8), r"\[0, 1\]"),
        (np.full((1, 8, 8), np.nan, np.float32), np.zeros((1, 8, 8), np.uint8), r"\[0, 1\]"),
        (np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8), "floating point"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(prob, labels, message):
    with pytest.raises(UsageError, match=message):
        metrics.isbi_metrics(prob, labels)
    with pytest.raises(UsageError, match="normalisation"):
        metrics.rand_error(np.zeros((8, 8), np.float32), np.zeros((8, 8)), "n3")


# Cell Tracking Challenge


def ctc_scene():
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8] = 1  # 36 px
    gt[2:8, 12:18] = 2  # 36 px
    gt[12:18, 2:10] = 3  # 48 px
    return gt


def test_seg_of_hand_made_cases():
    gt = ctc_scene()
    assert metrics.ctc_seg([gt], [gt])["value"] == 1.0
    res = gt.copy()
    res[12:18, 2:6] = 0  # object 3 covered exactly half: not > 50 %, no match
    res[2:8, 2:8] = 0
    res[2:8, 2:6] = 7  # object 1: 24 of 36 covered, Jaccard 24 / 36
    res[0:2, 12:18] = 2  # object 2 grown by 12 pixels: Jaccard 36 / 48
    res[15:20, 15:20] = 9  # a false positive costs nothing
    seg = metrics.ctc_seg([res], [gt])
    assert seg["value"] == pytest.approx((24 / 36 + 36 / 48 + 0) / 3)
    assert (seg["objects"], seg["matched"]) == (3, 2)
    merged = np.where(gt > 0, 5, 0).astype(np.uint16)  # one result object (120 px) covering all three
    assert metrics.ctc_seg([merged], [gt])["value"] == pytest.approx((36 + 36 + 48) / 120 / 3)
    iou = metrics.foreground_iou([res], [gt])["value"]
    inter = np.count_nonzero((res > 0) & (gt > 0))
    assert iou == pytest.approx(inter / np.count_nonzero((res > 0) | (gt > 0)))


def test_seg_averages_over_all_objects_of_all_frames():
    gt = ctc_scene()
    empty = np.zeros_like(gt)
    seg = metrics.ctc_seg([gt, empty], [gt, gt])
    assert seg["value"] == 0.5 and [f["seg"] for f in seg["per_frame"]] == [1.0, 0.0]
    with pytest.raises(UsageError, match="integer"):
        metrics.ctc_seg([gt.astype(np.float32)], [gt])
