"""Precision and memory layout: what `auto` picks, what bf16 computes in, and resuming across layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet import device as device_module
from unet.augment import Augmenter
from unet.checkpoint import resume, save_checkpoint
from unet.device import channels_last_pays, memory_format, native_bf16, precision_used, resolve_device, uses_bf16
from unet.errors import UsageError
from unet.model import UNet
from unet.settings import AugmentSettings, TrainSettings
from unet.sizes import output_size
from unet.train import Trainer

from helpers import unet

CPU = torch.device("cpu")
TILE, DEPTH = 60, 2


def test_a_device_the_package_does_not_run_on_is_one_line_naming_it(tmp_path):
    for name in ("meta", "mps"):
        with pytest.raises(UsageError, match=f"^--device {name}: not a device of this package"):
            resolve_device(name)
    result = unet(
        "predict", "--model", tmp_path / "model.pt", "--images", tmp_path, "--out", tmp_path / "out", "--device", "tpu"
    )
    assert (result.returncode, result.stderr) == (
        2,
        "unet predict: error: --device tpu: not a device of this package (use auto, cpu, cuda or cuda:N)\n",
    )


@pytest.mark.parametrize(
    ("capabilities", "auto_bf16"),
    [
        ({"cpu_name": "AMD EPYC 9B45", "avx512_bf16": True}, True),  # a Zen 5: 4.3x fp32
        ({"cpu_name": "Intel Xeon", "avx512_bf16": True}, False),  # AMX hidden by a VM: 0.42x fp32
        ({"cpu_name": "Intel Xeon", "avx512_bf16": True, "amx_bf16": True}, True),
        ({"cpu_name": "AMD EPYC 7B13", "avx2": True}, False),  # a Zen 3: bf16 emulated
        ({}, False),
    ],
)
def test_auto_on_a_cpu_is_bf16_where_its_bf16_instructions_are_the_fast_ones(monkeypatch, capabilities, auto_bf16):
    monkeypatch.setattr(device_module, "_cpu_capabilities", lambda: capabilities)
    assert uses_bf16("auto", CPU) is auto_bf16
    assert native_bf16(CPU) is bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    assert uses_bf16("bf16", CPU) and not uses_bf16("fp32", CPU)
    with pytest.raises(UsageError, match="precision must be one of"):
        uses_bf16("fp16", CPU)


def conv_output_dtypes(trainer: Trainer, image: torch.Tensor) -> set[torch.dtype]:
    seen = set()
    hooks = [
        module.register_forward_hook(lambda _, __, output: seen.add(output.dtype))
        for module in trainer.model.modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with trainer.autocast:
        trainer.model(image)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_trainer_computes_convolutions_in_its_precision_and_keeps_loss_weights_and_momentum_fp32(precision):
    torch.manual_seed(0)
    trainer = Trainer(UNet(base_channels=4, depth=DEPTH), TrainSettings(precision=precision), CPU)
    image, target, weight = batch(seed=0)
    assert conv_output_dtypes(trainer, image) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    loss = trainer.step(image, target, weight, 0.01)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    parameters = list(trainer.model.parameters())
    assert {p.dtype for p in parameters} == {torch.float32}
    assert {trainer.optimizer.state[p]["momentum_buffer"].dtype for p in parameters} == {torch.float32}
    assert trainer.precision == precision_used(precision == "bf16", CPU)
    layout = torch.channels_last if channels_last_pays(CPU) else torch.contiguous_format
    assert trainer.memory_format == layout and trainer.model.down[1][0].weight.is_contiguous(memory_format=layout)


def test_channels_last_is_the_layout_where_it_pays():
    avx512 = bool(torch.cpu.get_capabilities().get("avx512_f"))
    assert channels_last_pays(CPU) is avx512  # an AVX2 CPU computes channels_last convolutions 2x slower
    assert memory_format(CPU) == (torch.channels_last if avx512 else torch.contiguous_format)
    assert memory_format(CPU, channels_last=False) == torch.contiguous_format


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = output_size(TILE, DEPTH)
    image = torch.rand(1, 1, TILE, TILE, generator=generator)
    return (
        image,
        torch.randint(0, 2, (1, size, size), generator=generator),
        torch.rand(1, size, size, generator=generator),
    )


def new_trainer(channels_last: bool) -> Trainer:
    torch.manual_seed(0)
    settings = TrainSettings(precision="fp32", channels_last=channels_last, momentum=0.99)
    return Trainer(UNet(base_channels=4, depth=DEPTH, dropout=0.0), settings, CPU)


def train_steps(trainer: Trainer, steps: range) -> None:
    for step in steps:
        trainer.step(*batch(step), 0.05)


def test_a_checkpoint_of_fused_channels_last_sgd_resumes_exactly_in_a_contiguous_run(tmp_path):
    """What a CUDA run's checkpoint holds (fused SGD, channels_last momentum buffers), resumed on a contiguous CPU
    run, continues as if the whole run had been contiguous (the fused update must not read the buffers in the
    channels_last order)."""
    straight = new_trainer(channels_last=False)
    train_steps(straight, range(6))

    first = new_trainer(channels_last=False)  # made channels_last by hand: this CPU may not choose it
    first.memory_format = torch.channels_last
    first.model.to(memory_format=torch.channels_last)
    first.optimizer = torch.optim.SGD(first.model.parameters(), lr=first.learning_rate, momentum=0.99, fused=True)
    train_steps(first, range(3))
    buffers = [first.optimizer.state[p]["momentum_buffer"] for p in first.model.parameters() if p.ndim == 4]
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in buffers)
    assert sum(not b.is_contiguous() for b in buffers) >= len(buffers) - 2  # all but the 1-channel and 1x1 ones
    augmenter = tiny_augmenter()
    settings = {"run": "same"}
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        iteration=3,
        model=first.model,
        optimizer=first.optimizer,
        augmenter=augmenter,
        average=None,
        device=CPU,
        settings=settings,
        rows=[],
        pending={},
        elapsed_s=0.0,
    )

    resumed = new_trainer(channels_last=False)
    assert resume(tmp_path / "checkpoint.pt", settings, resumed.model, resumed.optimizer, augmenter, CPU).iteration == 3
    assert not resumed.optimizer.param_groups[0]["fused"]
    train_steps(resumed, range(3, 6))
    for mine, theirs in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-5)


def tiny_augmenter() -> Augmenter:
    rng = np.random.default_rng(0)
    images = rng.random((2, 64, 64), dtype=np.float32)
    return Augmenter(images, images > 0.5, np.ones_like(images), input_size=TILE, config=AugmentSettings(), depth=DEPTH)
