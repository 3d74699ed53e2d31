"""How far a process's peak resident memory grows while predicting one image: run by tests/test_predict.py in a
fresh process, `python prediction_memory.py SIDE INPUT_SIZE BATCH_SIZE TTA`, which prints a JSON object."""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import torch

from unet.overlap_tile import predict_probabilities, tile_layout
from unet.sizes import border


class ScalingNet(torch.nn.Module):
    """A stand-in for a valid-convolution U-Net of `depth` at a tiny cost: the logits of a pixel are two multiples of
    the pixel, on the U-Net's output window."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth
        self.scale = torch.nn.Parameter(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        lost = border(self.depth)
        return tiles[..., lost:-lost, lost:-lost] * self.scale


def main(side: int, input_size: int, batch_size: int, tta: str) -> None:
    """Print how far the process's peak resident memory grows while predicting a (side x side) image, as JSON."""
    model = ScalingNet(depth=2)
    image = np.random.default_rng(0).random((1, side, side), dtype=np.float32)
    predict_probabilities(model, image[:, :300, :300], input_size=input_size, batch_size=batch_size, tta=tta)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    predicted = predict_probabilities(model, image, input_size=input_size, batch_size=batch_size, tta=tta)
    growth = 1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    layout = tile_layout(image.shape[1:], input_size, model.depth)
    error = np.abs(predicted - torch.sigmoid(-2 * torch.from_numpy(image)).numpy()).max()  # soft-max of (x, -x)
    print(json.dumps({"growth": growth, "tile": layout.tile, "image_bytes": image.nbytes, "error": float(error)}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
