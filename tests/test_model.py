import pytest
import torch

from unet.model import UNet
from unet.sizes import InvalidSizeError, border, input_size, output_size, valid_input_size_at_least


def test_paper_network_has_the_papers_parameter_count_and_shapes():
    model = UNet()
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    convolutions = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    assert sum(isinstance(m, convolutions) for m in model.modules()) == 23  # the paper's count
    assert output_size(572) == 388
    assert input_size(388) == 572
    assert border() == 92


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_size_helpers_agree_with_the_network(depth):
    model = UNet(base_channels=2, depth=depth).eval()
    size = valid_input_size_at_least(1, depth)
    for candidate in (size, size + 2**depth):
        with torch.no_grad():
            out = model(torch.zeros(1, 1, candidate, candidate))
        assert out.shape[-1] == output_size(candidate, depth)
        assert input_size(out.shape[-1], depth) == candidate
        assert candidate - out.shape[-1] == 2 * border(depth)
    for invalid in range(1, size):
        with pytest.raises(InvalidSizeError):
            output_size(invalid, depth)


def test_invalid_sizes_are_rejected_with_the_nearest_valid_ones():
    with pytest.raises(InvalidSizeError, match="556 or 572"):
        output_size(570)
    with pytest.raises(InvalidSizeError, match="388 or 404"):
        input_size(390)
    with pytest.raises(InvalidSizeError, match="572"):
        UNet(base_channels=2)(torch.zeros(1, 1, 570, 572))


def test_initialisation_follows_he_with_incoming_nodes_and_a_gain_of_one_where_no_relu_follows():
    torch.manual_seed(0)
    model = UNet()
    conv = model.down[1][2]  # 128 -> 128, 3x3: N = 1152, a ReLU follows
    assert conv.weight.std().item() == pytest.approx((2 / 1152) ** 0.5, rel=0.02)
    upconv = model.upconv[0]  # 1024 -> 512, 2x2 stride 2: N = 1024, no ReLU
    assert upconv.weight.std().item() == pytest.approx((1 / 1024) ** 0.5, rel=0.02)
    assert model.up[-1][2].weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.02)
    assert model.head.weight.std().item() == pytest.approx((1 / 64) ** 0.5, rel=0.3)  # only 128 weights
    biases = [m.bias for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(biases) == 23 and all(not b.detach().any() for b in biases)


def test_initial_outputs_are_near_neutral_and_the_signal_keeps_its_scale_through_the_expanding_path():
    """With g = 2 on the up-convolutions and the head too, each up level doubled the signal's power: on this
    noise tile the logit difference had std 3.2 and the last up level 1.9 times the bottom's scale."""
    torch.manual_seed(0)
    model = UNet(base_channels=16, dropout=0.0).eval()
    scale = {}
    for name, module in (("bottom", model.down[-1]), ("last up level", model.up[-1])):
        module.register_forward_hook(lambda _, __, out, name=name: scale.__setitem__(name, out.pow(2).mean().sqrt()))
    tile = torch.rand(2, 1, 380, 380, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tile)
    assert (logits[:, 1] - logits[:, 0]).std() < 2.0
    assert 0.5 < scale["last up level"] / scale["bottom"] < 1.2


def test_saved_model_loads_with_its_configuration(tmp_path):
    from unet.io import DataError
    from unet.model import load_model, save_model

    model = UNet(base_channels=3, depth=2, dropout=0.1)
    save_model(tmp_path / "model.pt", model, iteration=7)
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.config == model.config and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_a_model_file_whose_weights_do_not_fit_its_configuration_or_are_not_finite_is_refused(tmp_path):
    from unet.io import DataError
    from unet.model import load_model, save_model

    save_model(tmp_path / "model.pt", UNet(base_channels=2, depth=2))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save(saved | {"config": saved["config"] | {"base_channels": 3}}, tmp_path / "wider.pt")
    with pytest.raises(DataError, match=r"^\S*wider.pt: its weights do not fit its configuration .*size mismatch"):
        load_model(tmp_path / "wider.pt")
    saved["state_dict"]["up.0.0.weight"][0, 0, 1, 1] = float("nan")
    saved["state_dict"]["head.bias"][1] = float("inf")
    torch.save(saved, tmp_path / "diverged.pt")
    with pytest.raises(DataError, match=r"^\S*diverged.pt: 1 weights of up.0.0.weight are NaN or infinite; the"):
        load_model(tmp_path / "diverged.pt")


def test_forward_flops_counts_the_papers_convolutions():
    from unet.model import forward_flops

    assert forward_flops(UNet(), 572) == pytest.approx(301e9, rel=0.005)  # the figure the issue quotes
    # By hand for depth 1, width 1 at the smallest valid input, 18: each convolution costs
    # 2 * output pixels * output channels * input channels * kernel pixels (the up-convolution's
    # stride equals its kernel, so each output pixel sees one input pixel per input channel).
    tiny = UNet(base_channels=1, depth=1)
    assert valid_input_size_at_least(1, 1) == 18
    down = 16**2 * 9 * 1 + 14**2 * 9 * 1 + 5**2 * 9 * 2 + 3**2 * 9 * 4  # 18 -> 16 -> 14 -> pool 7 -> 5 -> 3
    up = 6**2 * 2 * 1 + 4**2 * 9 * 2 + 2**2 * 9 * 1  # up 3 -> 6, concat to 2 channels, 6 -> 4 -> 2
    head = 2**2 * 2
    assert forward_flops(tiny, 18) == 2 * (down + up + head)
