"""The U-Net of Ronneberger, Fischer & Brox (2015), exactly as the paper draws it.

- Contracting path: per level two valid 3x3 convolutions, each followed by a
  ReLU, then 2x2 max-pooling with stride 2; the channels double at each level.
- Expanding path: a 2x2 up-convolution (transposed, stride 2) that halves the
  channels, concatenation with the centre-cropped feature map of the same level,
  two valid 3x3 convolutions with ReLU. No ReLU after the up-convolution: the
  paper attaches the ReLUs to the 3x3 convolutions only.
- A 1x1 convolution to the classes. With the defaults: 23 convolutions,
  31,030,658 parameters, 572x572 in, 388x388 out.
- Dropout "at the end of the contracting path": as in the authors' release,
  after the last two contracting levels (the deepest skip level and the bottom).
- Initialisation: Gaussian with std sqrt(g / N), N the incoming nodes of a
  neuron: in_channels * 3 * 3 for a 3x3 convolution, in_channels for the 2x2
  stride-2 up-convolution (each output pixel sees one input pixel) and for the
  1x1 head. Biases start at zero. The paper's g = 2 (He et al. 2015) keeps the
  signal's scale through a convolution that a ReLU follows, because the ReLU
  halves its second moment. The up-convolutions and the head have no ReLU after
  them; there He et al.'s derivation gives g = 1 (choice): with g = 2 there too,
  each up level doubles the signal's power, and the 16-channel network starts
  with cell-minus-background logits of std 2.7 instead of 0.4, i.e. confidently
  wrong, which large learning rates with momentum 0.99 turn into a dead network
  (config/README.md, `train`, gives the runs).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from unet.errors import UsageError
from unet.settings import ModelSettings
from unet.sizes import output_size


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3),
            nn.ReLU(inplace=True),
        )


def _center_crop(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    top = (features.shape[-2] - size[0]) // 2
    left = (features.shape[-1] - size[1]) // 2
    return features[..., top : top + size[0], left : left + size[1]]


class UNet(nn.Module):
    """The paper's U-Net; `base_channels` and `depth` scale it down for CPU runs and tests."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = ModelSettings.base_channels,
        depth: int = ModelSettings.depth,
        dropout: float = ModelSettings.dropout,
    ):
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise UsageError(
                f"depth and base_channels must be positive, got depth={depth}, base_channels={base_channels}"
            )
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            base_channels=base_channels,
            depth=depth,
            dropout=dropout,
        )
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(_DoubleConv(channels, width))
            channels = width
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.up.append(_DoubleConv(2 * width, width))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout(dropout)
        self.depth = depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian weights of std sqrt(g / fan-in): g = 2 before a ReLU, 1 for the up-convolutions and the head."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                fan_in, gain = module.in_channels, 1.0  # stride == kernel: one input pixel per output pixel
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                gain = 1.0 if module is self.head else 2.0
            else:
                continue
            nn.init.normal_(module.weight, std=math.sqrt(gain / fan_in))
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output_size(x.shape[-2], self.depth)  # clear errors for invalid tiles
        output_size(x.shape[-1], self.depth)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level >= self.depth - 1:  # the last two contracting levels
                x = self.dropout(x)
            if level < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = upconv(x)
            x = block(torch.cat([_center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.head(x)


def forward_flops(model: torch.nn.Module, input_size: int, batch_size: int = 1) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), from the convolutions' shapes.

    Counted by torch's `FlopCounterMode` on a copy of the network on the meta
    device, so it costs no arithmetic; pooling, ReLU and concatenation are not
    counted. The paper's network at 572x572: about 301 GFLOP.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = _unwrap(model).config
    with torch.device("meta"):
        meta_model = UNet(**config)
        tile = torch.zeros(batch_size, config["in_channels"], input_size, input_size)
    with FlopCounterMode(display=False) as counter:
        meta_model(tile)
    return counter.get_total_flops()


def save_model(path, model: UNet, **metadata) -> None:
    """Save weights with the model's configuration (and any metadata) atomically.

    The file holds only tensors and plain Python values, so `load_model` can read
    it with `weights_only=True`.
    """
    from unet.io import atomic_path

    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a Python file keeps a failed write's OSError
        torch.save({"config": dict(_unwrap(model).config), "state_dict": state, "metadata": metadata}, handle)


def load_model(path, device: str | torch.device = "cpu") -> UNet:
    """The `UNet` saved by `save_model` (or a training checkpoint), in eval mode on `device`."""
    return load_model_and_metadata(path, device)[0]


def load_metadata(path) -> dict:
    """The metadata `save_model` stored beside the weights (`unet train`: settings, input scaling, ...); keys
    that older files lack are absent, and a file without any gives {}."""
    return dict(_read_model_file(path).get("metadata") or {})


def load_model_and_metadata(path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """`load_model` and `load_metadata` from one reading of the file."""
    saved = _read_model_file(path)
    return _network(path, saved).to(device).eval(), dict(saved.get("metadata") or {})


def _network(path, saved: dict) -> UNet:
    """The network of a model file; a `DataError` naming the file if its weights do not fit its configuration or
    are not all finite (a diverged training, a damaged file: its predictions would be NaN, with exit status 0)."""
    from unet.io import DataError

    try:
        model = UNet(**saved["config"])
        model.load_state_dict(saved["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:  # unknown keys, bad values, missing or misshapen tensors
        problem = next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()), "")
        raise DataError(f"{path}: its weights do not fit its configuration {saved['config']} ({problem})") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            count = int((~tensor.isfinite()).sum())
            raise DataError(
                f"{path}: {count} weights of {name} are NaN or infinite; the training that wrote it diverged, "
                "or the file is damaged"
            )
    return model


def _read_model_file(path) -> dict:
    from unet.io import DataError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such model file") from None
    except Exception as error:
        raise DataError(f"{path}: not a readable model file ({error})") from error
    if not isinstance(saved, dict) or "config" not in saved or "state_dict" not in saved:
        raise DataError(f"{path}: not a U-Net model file (expected keys 'config' and 'state_dict')")
    return saved


def _unwrap(model: torch.nn.Module) -> UNet:
    # torch.compile wraps the module; the weights live in the original.
    return getattr(model, "_orig_mod", model)
