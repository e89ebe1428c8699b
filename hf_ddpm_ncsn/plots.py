"""Line plots (loss curves, ELBO terms) drawn with matplotlib, and grids of sample images, all saved atomically.

The plots use matplotlib's object API (`matplotlib.figure.Figure` on a `FigureCanvasAgg`), never `pyplot`: no
backend is selected and no global figure state is touched, so a user's interactive matplotlib session is left as
it was.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from .sharing.atomic import atomic_write_bytes

_DPI = 100
_LOG_FLOOR = 1e-12  # the smallest value of a log axis when no value is positive


def save_png(image: PIL.Image.Image, path: str | os.PathLike) -> None:
    """Save an image as a PNG through `hf_ddpm_ncsn.sharing.atomic`: a reader (or a crash) never meets half a file.

    Args:
        image (`PIL.Image.Image`): the image.
        path (`str` or `os.PathLike`): the file to write; its folder must exist.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    width: int = 760,
    height: int = 440,
) -> None:
    """Save an RGB PNG of `width` x `height` pixels with one line per series of (x, y) points.

    Points whose y is not finite (NaN, infinities) are skipped; with several series a legend names them.

    Args:
        series (`dict[str, Sequence[tuple[float, float]]]`): label -> points.
        path (`str` or `os.PathLike`): PNG to write.
        title, xlabel, ylabel (`str`): texts.
        log_y (`bool`, defaults to `False`): log10 y axis (non-positive values are clipped to the smallest positive).
        width, height (`int`, defaults to 760 and 440): size of the image in pixels.
    """
    # imported here: matplotlib is only needed for plots, not by the pipelines that import this module for grids
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = {label: _finite_points(values) for label, values in series.items()}
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    floor = _smallest_positive(points.values()) if log_y else None
    for label, xy in points.items():
        y = xy[:, 1] if floor is None else np.maximum(xy[:, 1], floor)
        axes.plot(xy[:, 0], y, label=label, linewidth=1.5, marker="o" if len(xy) == 1 else None)
    if log_y:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, color=(0.88, 0.88, 0.88))
    if len(points) > 1:
        axes.legend()
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    save_png(PIL.Image.fromarray(rgba[..., :3]), path)  # RGB: the white background is opaque anyway


def _finite_points(values: Sequence[tuple[float, float]]) -> np.ndarray:
    """(N, 2) float64 points without those whose y is not finite."""
    xy = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    return xy[np.isfinite(xy[:, 1])]


def _smallest_positive(arrays: Sequence[np.ndarray]) -> float:
    ys = np.concatenate([xy[:, 1] for xy in arrays]) if arrays else np.empty(0)
    positive = ys[ys > 0]
    return float(positive.min()) if len(positive) else _LOG_FLOOR


def image_grid(images: Sequence[PIL.Image.Image] | torch.Tensor, min_cell: int = 32, gap: int = 2) -> PIL.Image.Image:
    """A square-ish grid of same-size images on a grey background, small images upscaled (nearest neighbour) to
    at least `min_cell` pixels and separated by `gap` pixels, so that 8x8 samples stay legible.

    Args:
        images (`Sequence[PIL.Image.Image]` or `torch.Tensor`): PIL images, or a uint8 tensor (N, C, H, W) with
            1 (grey) or 3 (RGB) channels.
        min_cell (`int`, defaults to 32): the smallest side of a cell, in pixels.
        gap (`int`, defaults to 2): pixels between two cells and around the grid.
    """
    if isinstance(images, torch.Tensor):
        images = _tensor_to_images(images)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    scale = max(1, math.ceil(min_cell / min(width, height)))
    cell_w, cell_h = width * scale, height * scale
    grey = (128,) * len(images[0].getbands())  # one value per band: a bare 128 would be dark red in RGB
    size = (cols * cell_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap)
    grid = PIL.Image.new(images[0].mode, size, color=grey if len(grey) > 1 else grey[0])
    for i, image in enumerate(images):
        tile = image.resize((cell_w, cell_h), PIL.Image.Resampling.NEAREST)
        grid.paste(tile, (gap + (i % cols) * (cell_w + gap), gap + (i // cols) * (cell_h + gap)))
    return grid


def _tensor_to_images(images: torch.Tensor) -> list[PIL.Image.Image]:
    """uint8 (N, C, H, W) images as PIL images ("L" for one channel, "RGB" for three)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"image_grid takes a non-empty uint8 tensor (N, C, H, W) with C = 1 or 3, got {images.dtype} of shape "
            f"{tuple(images.shape)}"
        )
    arrays = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array) for array in arrays]
