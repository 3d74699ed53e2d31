"""The report's figures: drawn without a display, written atomically, freed when done."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from unet.io import atomic_path


@contextlib.contextmanager
def figure(
    path: str | Path,
    rows: int = 1,
    columns: int = 1,
    *,
    size: tuple[float, float] | None = None,
    title: str = "",
    dpi: int = 100,
    hide_image_axes: bool = True,
    layout: str = "constrained",
    **subplots,
) -> Iterator[tuple]:
    """Yield `(figure, axes)` (axes as a rows x columns array); when the block succeeds, hide the axes of image
    panels, add the title and write the PNG to `path` atomically. The figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawing, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout=layout, **subplots)
    try:
        yield drawing, axes
        if hide_image_axes:
            for axis in drawing.axes:
                if axis.images:  # image panels, not colour bars or plots
                    axis.set_axis_off()
        if title:
            drawing.suptitle(title)
        with atomic_path(path) as tmp:
            drawing.savefig(tmp, dpi=dpi)
    finally:
        plt.close(drawing)


def show_weights(drawing, axis, weights, title: str) -> None:
    """A weight map panel: the paper's Fig. 3d colours, with a colour bar; masked pixels (no weight) in gray."""
    from matplotlib import colormaps

    colours = colormaps["jet"].with_extremes(bad=(0.6, 0.6, 0.6))
    shown = axis.imshow(weights, cmap=colours)
    axis.set_title(title)
    drawing.colorbar(shown, ax=axis, fraction=0.046)
