"""Augmentation on real ISBI and HeLa data: identity at zero strength, label values, the elastic field's
statistics, exact rotations and flips, mirrored context, reproducibility and resume."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile
import torch
from matplotlib import image as mpimg
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from unet.augment import Augmenter, SampleParameters, deformed_grid, plot_augmentation
from unet.errors import UsageError
from unet.io import Split, normalize_intensity, write_split, write_weight_maps
from unet.settings import AugmentSettings
from unet.sizes import InvalidSizeError

from helpers import unet


@pytest.fixture(scope="module")
def isbi(shared_data):
    """Two real ISBI slices, cropped, with their binary targets and a weight map that varies per pixel."""
    images = tifffile.imread(shared_data / "isbi2012" / "train-volume.tif", key=[0, 1])[:, :200, :180]
    targets = tifffile.imread(shared_data / "isbi2012" / "train-labels.tif", key=[0, 1])[:, :200, :180] > 0
    weights = (np.random.default_rng(0).random(images.shape) + 2 * ~targets).astype(np.float32)
    return normalize_intensity(images), targets.astype(np.uint8), weights


def reflected_crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """image[top:top+size, left:left+size] with mirrored context, as numpy.pad(mode="reflect")."""
    pad = size + max(image.shape)
    padded = np.pad(image, pad, mode="reflect")
    return padded[top + pad : top + pad + size, left + pad : left + pad + size]


def parameters(augmenter: Augmenter, **overrides) -> SampleParameters:
    """One sample's parameters: image 0, window at (7, 5), no rotation, flip, deformation or gray change."""
    values = dict(
        index=torch.tensor([0]),
        corner=torch.tensor([[7, 5]]),
        angle=torch.tensor([0.0]),
        flip=torch.tensor([False]),
        displacement=torch.zeros(1, 2, 3, 3),
        contrast=torch.tensor([1.0]),
        brightness=torch.tensor([0.0]),
    )
    values.update(overrides)
    return SampleParameters(**values)


def test_zero_strength_is_a_plain_crop_with_mirrored_context(isbi):
    images, targets, weights = isbi
    augmenter = Augmenter(images, targets, weights, input_size=188, config=AugmentSettings.identity(), seed=3)
    drawn = augmenter.draw(4)
    image, target, weight = augmenter.apply(drawn)
    assert image.shape == (4, 1, 188, 188) and image.dtype == torch.float32
    assert target.shape == weight.shape == (4, 4, 4) and target.dtype == torch.int64 and weight.dtype == torch.float32
    for b in range(4):
        i, (top, left) = int(drawn.index[b]), drawn.corner[b].tolist()
        # float32 coordinates are exact to ~1e-5 px; bicubic at integer positions returns the pixel.
        np.testing.assert_allclose(image[b, 0].numpy(), reflected_crop(images[i], top - 92, left - 92, 188), atol=1e-4)
        np.testing.assert_array_equal(target[b].numpy(), targets[i, top : top + 4, left : left + 4])
        np.testing.assert_array_equal(weight[b].numpy(), weights[i, top : top + 4, left : left + 4])


def test_images_smaller_than_the_tile_are_mirrored_repeatedly(isbi):
    images, targets, weights = (array[:, :12, :15] for array in isbi)  # smaller than even the 20x20 output
    augmenter = Augmenter(images, targets, weights, input_size=204, config=AugmentSettings.identity(), seed=0)
    drawn = augmenter.draw(3)
    image, target, weight = augmenter.apply(drawn)
    assert target.shape == (3, 20, 20)
    for b in range(3):
        i, (top, left) = int(drawn.index[b]), drawn.corner[b].tolist()
        assert -8 <= top <= 0 and -5 <= left <= 0  # the image lies inside the output window
        np.testing.assert_allclose(image[b, 0].numpy(), reflected_crop(images[i], top - 92, left - 92, 204), atol=1e-4)
        np.testing.assert_array_equal(target[b].numpy(), reflected_crop(targets[i], top, left, 20))
        np.testing.assert_array_equal(weight[b].numpy(), reflected_crop(weights[i], top, left, 20))


def test_label_values_stay_in_the_original_set_and_keep_their_weights(shared_data):
    """Real HeLa instance ids as targets: nearest neighbour never invents a value, and every
    (target, weight) pair comes from one source pixel."""
    instances = tifffile.imread(shared_data / "ctc" / "DIC-C2DH-HeLa" / "01_GT" / "SEG" / "man_seg002.tif")
    image = tifffile.imread(shared_data / "ctc" / "DIC-C2DH-HeLa" / "01" / "t002.tif")
    targets = instances[None, ::2, ::2].astype(np.uint8)
    weights = (np.arange(targets.size, dtype=np.float32).reshape(targets.shape) % 97) / 7 + targets
    augmenter = Augmenter(normalize_intensity(image[None, ::2, ::2]), targets, weights, input_size=204, seed=1)
    _, target, weight = augmenter.sample(6)
    assert set(target.unique().tolist()) <= set(np.unique(targets).tolist())
    assert len(target.unique()) > 3  # several cells were sampled, so the check means something
    source_pairs = set(zip(targets.ravel().tolist(), weights.ravel().tolist()))
    sampled_pairs = set(zip(target.ravel().tolist(), weight.ravel().tolist()))
    assert sampled_pairs <= source_pairs


def test_coarse_displacements_have_the_configured_standard_deviation(isbi):
    augmenter = Augmenter(*isbi, input_size=188, config=AugmentSettings(elastic_std=7.0, elastic_grid=4), seed=0)
    displacement = augmenter.draw(4000).displacement
    assert displacement.shape == (4000, 2, 4, 4)
    # 128,000 draws: the sample standard deviation is within 1% of the true one with overwhelming probability.
    assert displacement.std().item() == pytest.approx(7.0, rel=0.01)
    assert abs(displacement.mean().item()) < 0.1
    assert displacement[:, 0].std().item() == pytest.approx(displacement[:, 1].std().item(), rel=0.03)


def test_dense_field_passes_through_the_coarse_displacements_at_the_control_points(isbi):
    augmenter = Augmenter(*isbi, input_size=188, config=AugmentSettings(rotation=0.0, flip=False), seed=0)
    drawn = augmenter.draw(2)
    coordinates = augmenter.source_coordinates(drawn)  # (B, S, S, 2) as (column, row)
    plain = Augmenter(*isbi, input_size=188, config=AugmentSettings.identity()).source_coordinates(drawn)
    shift = (coordinates - plain).flip(-1)  # (row, column) displacement per tile pixel
    for row_index, row in ((0, 0), (2, 187)):
        for column_index, column in ((0, 0), (2, 187)):
            torch.testing.assert_close(
                shift[:, row, column], drawn.displacement[:, :, row_index, column_index], atol=1e-4, rtol=0
            )
    # The dense field is the paper's bicubic interpolation of the coarse grid.
    bicubic = F.interpolate(drawn.displacement, size=(188, 188), mode="bicubic", align_corners=True)
    torch.testing.assert_close(shift.permute(0, 3, 1, 2), bicubic, atol=1e-4, rtol=0)
    # Between the control points the field is smooth: neighbouring pixels move by well under a pixel.
    assert (shift[:, 1:] - shift[:, :-1]).abs().max() < 1.0


def test_right_angle_rotation_and_flip_are_exact(isbi):
    images, targets, weights = isbi
    augmenter = Augmenter(images, targets, weights, input_size=188, config=AugmentSettings.identity())
    crop = reflected_crop(images[0], 7 - 92, 5 - 92, 188)
    rotated, _, _ = augmenter.apply(parameters(augmenter, angle=torch.tensor([math.pi / 2])))
    np.testing.assert_allclose(rotated[0, 0].numpy(), np.rot90(crop, k=-1), atol=1e-4)
    flipped, target, _ = augmenter.apply(parameters(augmenter, flip=torch.tensor([True])))
    np.testing.assert_allclose(flipped[0, 0].numpy(), crop[:, ::-1], atol=1e-4)
    np.testing.assert_array_equal(target[0].numpy(), targets[0, 7:11, 5:9][:, ::-1])


def test_rotated_tiles_have_no_empty_corners(isbi):
    images, targets, weights = isbi
    lifted = 0.5 + images / 2  # every pixel in [0.5, 1]: zero padding would show as dark corners
    augmenter = Augmenter(lifted, targets, weights, input_size=188, config=AugmentSettings.identity())
    image, _, _ = augmenter.apply(parameters(augmenter, angle=torch.tensor([math.pi / 4])))
    corners = image[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() > 0.4  # bicubic may overshoot a little, never to 0


def test_gray_value_variation_scales_contrast_around_the_mean_and_shifts(isbi):
    augmenter = Augmenter(*isbi, input_size=188, config=AugmentSettings(gray_contrast=0.5, gray_brightness=0.2))
    plain_augmenter = Augmenter(*isbi, input_size=188, config=AugmentSettings.identity())
    plain, _, _ = plain_augmenter.apply(parameters(plain_augmenter))
    varied, _, _ = augmenter.apply(
        parameters(augmenter, contrast=torch.tensor([1.4]), brightness=torch.tensor([-0.15]))
    )
    mean = plain.mean()
    torch.testing.assert_close(varied, mean + 1.4 * (plain - mean) - 0.15, atol=1e-5, rtol=0)
    drawn = augmenter.draw(2000)
    assert 0.5 <= drawn.contrast.min() < 0.55 and 1.45 < drawn.contrast.max() <= 1.5
    assert -0.2 <= drawn.brightness.min() < -0.19 and 0.19 < drawn.brightness.max() <= 0.2


def test_same_seed_same_samples_and_exact_resume(isbi):
    first = Augmenter(*isbi, input_size=188, seed=5)
    second = Augmenter(*isbi, input_size=188, seed=5)
    other = Augmenter(*isbi, input_size=188, seed=6)
    for a, b in zip(first.sample(2), second.sample(2)):
        assert torch.equal(a, b)
    assert not torch.equal(first.sample(1)[0], other.sample(1)[0])

    state = first.state_dict()
    expected = first.sample(3)
    resumed = Augmenter(*isbi, input_size=188, seed=123)
    resumed.load_state_dict(state)
    for a, b in zip(resumed.sample(3), expected):
        assert torch.equal(a, b)


@dataclass
class Transfer:
    operation: str
    non_blocking: bool
    pinned: bool  # every host tensor read is in pinned memory


class _HostTensorsToDevice(TorchDispatchMode):
    """Records each operation that reads a host tensor (not a 0-d scalar, which kernels take by value) into a
    tensor on another device: copies, and indexing with host indices."""

    def __init__(self, transfers: list[Transfer]):
        super().__init__()
        self.transfers = transfers

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host = [t for t in inputs if t.device.type == "cpu" and t.dim() > 0]
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
        if host and any(t.device.type != "cpu" for t in outputs):
            non_blocking = kwargs.get("non_blocking", False) or (
                func is torch.ops.aten.copy_.default and args[2:3] == (True,)
            )
            self.transfers.append(Transfer(str(func), bool(non_blocking), all(t.is_pinned() for t in host)))
        return result


class _HostDataToDevice(TorchFunctionMode):
    """Records tensors made on a device from host data (a list, a number, a NumPy array): `torch.tensor([...],
    device=...)` copies below the dispatch modes' reach."""

    CONSTRUCTORS = (torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor)

    def __init__(self, transfers: list[Transfer]):
        super().__init__()
        self.transfers = transfers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        data = args[1] if func is torch.Tensor.new_tensor else args[0]
        if func in self.CONSTRUCTORS and result.device.type != "cpu" and not isinstance(data, torch.Tensor):
            self.transfers.append(Transfer(func.__name__, False, False))
        return result


@contextlib.contextmanager
def host_to_device_transfers() -> Iterator[list[Transfer]]:
    """The host-to-device transfers made inside the block, as torch carries them out."""
    transfers: list[Transfer] = []
    with _HostDataToDevice(transfers), _HostTensorsToDevice(transfers):
        yield transfers


DEVICES = ["meta", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_reaches_the_device_in_one_asynchronous_copy(isbi, device):
    """The draws come from the CPU generator (the same samples on any device), then move in one non-blocking copy
    from pinned memory: the step's host never waits for the device. `meta` stands in for a GPU on the CPU."""
    augmenter = Augmenter(*isbi, input_size=188, device=device, seed=0)
    with host_to_device_transfers() as transfers:
        torch.tensor([1.0, 2.0], device=device)
        torch.zeros(3).to(device)
        assert [transfer.non_blocking for transfer in transfers] == [False, False]  # the observer sees both kinds
    with host_to_device_transfers() as transfers:
        image, target, weight = augmenter.sample(4)
    assert image.device.type == target.device.type == weight.device.type == device
    assert image.shape == (4, 1, 188, 188) and target.shape == weight.shape == (4, 4, 4)
    assert len(transfers) == 1, transfers
    assert transfers[0].non_blocking
    assert transfers[0].pinned or device != "cuda"  # pinned memory needs CUDA


def test_bad_inputs_are_refused(isbi):
    images, targets, weights = isbi
    with pytest.raises(UsageError, match="one shape"):
        Augmenter(images, targets[:, :-1], weights)
    with pytest.raises(InvalidSizeError):
        Augmenter(images, targets, weights, input_size=190)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_samples_match_the_cpu(isbi):
    """The same seed draws the same parameters on any device; only float rounding may differ."""
    cpu_image, cpu_target, cpu_weight = Augmenter(*isbi, input_size=188, seed=2).sample(4)
    image, target, weight = Augmenter(*isbi, input_size=188, seed=2, device="cuda").sample(4)
    assert image.device.type == target.device.type == weight.device.type == "cuda"
    torch.testing.assert_close(image.cpu(), cpu_image, atol=1e-3, rtol=0)
    # Nearest neighbour may round a coordinate on a pixel boundary the other way, on a rare pixel.
    assert (target.cpu() != cpu_target).float().mean() < 1e-2
    assert (target.cpu() == cpu_target).logical_and(weight.cpu() != cpu_weight).sum() == 0


def test_flips_and_angles_are_drawn_uniformly(isbi):
    drawn = Augmenter(*isbi, input_size=188, seed=4).draw(4000)
    assert 0.46 < drawn.flip.float().mean() < 0.54
    assert drawn.angle.abs().max() <= math.pi and 0.46 < (drawn.angle > 0).float().mean() < 0.54
    assert drawn.angle.abs().mean().item() == pytest.approx(math.pi / 2, rel=0.05)


def test_deformed_grid_figure(isbi, tmp_path):
    """The report's figure: a regular grid seen through the sample's deformation, beside the sample."""
    images, targets, weights = isbi
    plain = Augmenter(images, targets, weights, input_size=188, config=AugmentSettings.identity())
    crop = parameters(plain)
    grid = deformed_grid(plain, crop, spacing=16)[0].numpy()
    assert grid[92 - 7 : 92 - 7 + 2].min() > 0.999  # image rows 0 and 1 (tile rows 85, 86) are a grid line
    between = grid[92 - 7 + 2 : 92 - 7 + 16, 92 - 5 + 8]  # image rows 2..15 at image column 8: blank
    assert between.max() < 1e-3 and grid[92 - 7 + 16].min() > 0.999
    deforming = Augmenter(
        images, targets, weights, input_size=188, config=AugmentSettings(rotation=0, flip=False), seed=0
    )
    warped = deformed_grid(deforming, deforming.draw(1), spacing=16)[0].numpy()
    assert np.abs(warped - grid).mean() > 0.05  # the deformation moved the lines
    assert 0.05 < warped.mean() < 0.4  # still a grid: lines over a blank background
    figure = tmp_path / "augment.png"
    plot_augmentation(deforming, figure, samples=2)
    assert mpimg.imread(figure).shape[0] > 300


def test_cli_draws_the_figure_from_a_prepared_split(isbi, tmp_path):
    images, targets, weights = isbi
    split = Split("isbi2012", "train", "binary", (images * 255).astype(np.uint8), [4, 9], targets, [4, 9])
    write_split(tmp_path / "data", split)
    write_weight_maps(tmp_path / "weights", split, targets, weights, data_dir=tmp_path / "data", settings={})
    figure = tmp_path / "figure.png"
    result = unet(
        "augment",
        tmp_path / "data",
        tmp_path / "weights",
        "--figure",
        figure,
        "--input-size",
        "188",
        "--samples",
        "2",
        "--elastic-std",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert mpimg.imread(figure).shape[0] > 300
