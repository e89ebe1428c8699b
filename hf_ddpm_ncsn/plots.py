"""Line plots drawn with PIL (loss curves, ELBO terms): no plotting library is needed for a PNG this simple."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


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
    """Save a PNG with one line per series of (x, y) points.

    Args:
        series (`dict[str, Sequence[tuple[float, float]]]`): label -> points.
        path (`str` or `os.PathLike`): PNG to write.
        title, xlabel, ylabel (`str`): texts.
        log_y (`bool`, defaults to `False`): log10 y axis (non-positive values are clipped to the smallest positive).
    """
    points = {label: np.asarray(values, dtype=np.float64).reshape(-1, 2) for label, values in series.items()}
    xs = np.concatenate([p[:, 0] for p in points.values()])
    ys = np.concatenate([p[:, 1] for p in points.values()])
    finite = ys[np.isfinite(ys)]
    if log_y:
        floor = finite[finite > 0].min() if (finite > 0).any() else 1e-12
        transform = lambda y: np.log10(np.maximum(y, floor))  # noqa: E731
        low, high = math.floor(transform(finite).min()), math.ceil(transform(finite).max())
        high = max(high, low + 1)
        y_ticks = [float(v) for v in range(low, high + 1)]
        y_label = lambda v: f"1e{int(v)}"  # noqa: E731
    else:
        transform = lambda y: y  # noqa: E731
        low, high = float(finite.min()), float(finite.max())
        high = high if high > low else low + 1.0
        y_ticks = _ticks(low, high)
        y_label = lambda v: f"{v:.3g}"  # noqa: E731
    x_low, x_high = float(xs.min()), float(xs.max())
    x_high = x_high if x_high > x_low else x_low + 1.0
    left, right, top, bottom = 80, width - 20, 40, height - 50
    font = ImageFont.load_default(size=13)
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * (x - x_low) / (x_high - x_low), bottom - (bottom - top) * (y - low) / (
            high - low
        )

    for v in y_ticks:
        y = to_pixel(x_low, v)[1]
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), y_label(v), fill="black", font=font, anchor="rm")
    integer_x = bool(np.all(xs == np.round(xs)))
    for v in _ticks(x_low, x_high, 6):
        v = round(v) if integer_x else v
        x = to_pixel(v, low)[0]
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x, bottom + 8), f"{v:.4g}", fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, (label, p) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        keep = np.isfinite(p[:, 1])
        line = [to_pixel(x, y) for x, y in zip(p[keep, 0], transform(p[keep, 1]), strict=True)]
        draw.line(line + line[-1:], fill=colour, width=2)  # a repeated point keeps one-point series drawable
        if len(points) > 1:
            draw.text((right - 10, top + 10 + 16 * i), label, fill=colour, font=font, anchor="rt")
    draw.text((width / 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text((width / 2, height - 18), xlabel, fill="black", font=font, anchor="mt")
    draw.text((14, (top + bottom) / 2), ylabel, fill="black", font=font, anchor="lm")
    image.save(path)


def image_grid(images: Sequence[PIL.Image.Image], min_cell: int = 32, gap: int = 2) -> PIL.Image.Image:
    """A square-ish grid of same-size images on a grey background, small images upscaled (nearest neighbour) to
    at least `min_cell` pixels and separated by `gap` pixels, so that 8x8 samples stay legible."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    scale = max(1, math.ceil(min_cell / min(width, height)))
    cell_w, cell_h = width * scale, height * scale
    grid = PIL.Image.new(
        images[0].mode, (cols * cell_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap), color=128
    )
    for i, image in enumerate(images):
        tile = image.resize((cell_w, cell_h), PIL.Image.Resampling.NEAREST)
        grid.paste(tile, (gap + (i % cols) * (cell_w + gap), gap + (i // cols) * (cell_h + gap)))
    return grid
