"""The PIL plots and grids used for model cards, evaluation reports and the README."""

import numpy as np
from PIL import Image

from hf_ddpm_ncsn.plots import image_grid, line_plot


def test_image_grid_upscales_small_images_and_separates_them():
    tiles = [Image.new("L", (8, 8), color=255 * (i % 2)) for i in range(5)]
    grid = image_grid(tiles, min_cell=32, gap=2)
    assert grid.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)  # 5 images: 3 columns, 2 rows
    pixels = np.asarray(grid)
    assert pixels[2 + 16, 2 + 32 + 2 + 16] == 255 and pixels[2 + 16, 2 + 16] == 0  # cells 1 and 0
    assert pixels[0, 0] == 128 and pixels[2 + 32 + 1, 10] == 128  # the gaps


def test_line_plot_writes_a_png_with_several_series(tmp_path):
    path = tmp_path / "plot.png"
    line_plot({"a": [(0, 1.0), (1, 0.1)], "b": [(0, 2.0), (1, float("nan")), (2, 0.0)]}, path, title="t",
              xlabel="x", ylabel="y", log_y=True)  # fmt: skip
    with Image.open(path) as image:
        assert image.size == (760, 440) and image.mode == "RGB"
        assert len(set(image.getdata())) > 3  # lines and text were drawn
