"""Tile sides of the valid-convolution U-Net: which inputs it takes and what it outputs.

Pure arithmetic, without torch, so that the configuration check (`unet.pipeline`) can tell a
wrong `input_size` before any job runs. For the paper's network (depth 4): inputs 16k + 60,
output = input - 184 (572 -> 388).
"""

from __future__ import annotations

from unet.errors import UsageError


class InvalidSizeError(UsageError):
    """A tile size the valid-convolution network cannot take or produce."""


def output_size(input_size: int, depth: int = 4) -> int:
    """Output side for an input tile side; `InvalidSizeError` names the nearest valid inputs."""
    size = input_size
    for level in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            raise InvalidSizeError(
                _invalid_input(input_size, depth, f"level {level + 1} would pool an odd or empty map")
            )
        size //= 2
    size -= 4
    for _ in range(depth):
        size = 2 * size - 4
    if size <= 0:
        raise InvalidSizeError(_invalid_input(input_size, depth, "the output would be empty"))
    return size


def input_size(output_size: int, depth: int = 4) -> int:
    """Input tile side that produces exactly `output_size`; `InvalidSizeError` otherwise."""
    step = 2**depth
    if output_size > 0 and (output_size + border(depth) * 2) % step == _input_offset(depth) % step:
        return output_size + 2 * border(depth)
    lower = max(_smallest_output(depth), output_size - (output_size - _smallest_output(depth)) % step)
    raise InvalidSizeError(
        f"output size {output_size} is not produced by a depth-{depth} U-Net: valid outputs are "
        f"{_smallest_output(depth)} + {step}k, e.g. {lower} or {lower + step}"
    )


def valid_input_size_at_least(size: int, depth: int = 4) -> int:
    """The smallest valid input tile side that is at least `size`."""
    step = 2**depth
    smallest = _smallest_input(depth)
    if size <= smallest:
        return smallest
    return smallest + -(-(size - smallest) // step) * step


def border(depth: int = 4) -> int:
    """Pixels lost per side between input and output: 6 * 2**depth - 4 (92 for the paper's network)."""
    return 6 * 2**depth - 4


def _input_offset(depth: int) -> int:
    # Valid inputs are 2**depth * x + 4 * (2**depth - 1), x the side entering the bottom level.
    return 4 * (2**depth - 1)


def _smallest_input(depth: int) -> int:
    # The bottom map after its two convolutions, b, must leave a positive output: 2**d * b > 4 * (2**d - 1).
    step = 2**depth
    bottom = 4 * (step - 1) // step + 1
    return step * (bottom + 4) + _input_offset(depth)


def _smallest_output(depth: int) -> int:
    return _smallest_input(depth) - 2 * border(depth)


def _invalid_input(size: int, depth: int, why: str) -> str:
    above = valid_input_size_at_least(size, depth)
    below = above - 2**depth
    options = f"{below} or {above}" if below >= _smallest_input(depth) else f"{above}"
    return f"input size {size} is invalid for a depth-{depth} U-Net ({why}); nearest valid sizes: {options}"


def check_prediction_tile(input_size: int, depth: int = 4) -> int:
    """The output side of a prediction tile; `InvalidSizeError` unless it is a valid input whose output spans at
    least one step of the pooling grid (tiles step by multiples of 2**depth, `unet.overlap_tile.tile_layout`)."""
    output = output_size(input_size, depth)
    if output < 2**depth:
        raise InvalidSizeError(
            f"input size {input_size} leaves an output of {output} px, less than the {2**depth} px "
            f"step between tiles; use at least {valid_input_size_at_least(input_size + 1, depth)}"
        )
    return output
