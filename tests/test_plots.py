"""The plots (matplotlib) and grids (PIL) used for model cards, evaluation reports and the README."""

import numpy as np
import pytest
import torch
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


def test_image_grid_takes_a_uint8_tensor_as_it_takes_the_images():
    grey = torch.stack([torch.full((1, 8, 8), 255 * (i % 2), dtype=torch.uint8) for i in range(5)])
    grid = image_grid(grey, min_cell=32, gap=2)
    assert grid.mode == "L" and grid.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)
    pixels = np.asarray(grid)
    assert pixels[2 + 16, 2 + 32 + 2 + 16] == 255 and pixels[2 + 16, 2 + 16] == 0  # cells 1 and 0
    assert pixels[0, 0] == 128 and pixels[2 + 32 + 1, 10] == 128  # the gaps
    tiles = [Image.new("L", (8, 8), color=255 * (i % 2)) for i in range(5)]
    assert np.array_equal(pixels, np.asarray(image_grid(tiles, min_cell=32, gap=2)))

    rgb = torch.randint(0, 256, (3, 3, 4, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    grid = np.asarray(image_grid(rgb, min_cell=8, gap=1))  # 2 columns, 2 rows of 12 x 8 cells (scale 2)
    assert grid.shape == (2 * 8 + 3, 2 * 12 + 3, 3)
    for i, image in enumerate(rgb):
        top, left = 1 + (i // 2) * 9, 1 + (i % 2) * 13
        expected = image.permute(1, 2, 0).numpy().repeat(2, axis=0).repeat(2, axis=1)
        assert np.array_equal(grid[top : top + 8, left : left + 12], expected)
    assert (grid[0] == 128).all() and (grid[:, 13] == 128).all()  # the gaps
    with pytest.raises(ValueError, match="uint8 tensor"):
        image_grid(rgb.float())


def _plot_elbo_terms_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "plot_elbo_terms.py"
    spec = importlib.util.spec_from_file_location("plot_elbo_terms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_before_after_script_draws_two_reports_of_different_T_on_one_figure(tmp_path):
    import json

    script = _plot_elbo_terms_script()
    paths = []
    for name, num_timesteps in (("a", 4), ("b", 10)):
        terms = [2.0] + [0.01 * (t + 1) for t in range(num_timesteps - 1)]
        report = {"likelihood": {"terms_mean_per_timestep": terms, "bits_per_dim": sum(terms), "decoder_bpd": 2.0}}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    label, points = script.series_of(json.loads(paths[1].read_text()), "recipe")
    assert label == "recipe (T = 10: 2.45 bits/dim, L_0 = 2.00)"
    assert points[0] == (0.0, 2.0) and points[-1] == pytest.approx((0.9, 0.09))  # x is t / T
    argv = ["--report", str(paths[0]), "--label", "before", "--report", str(paths[1]), "--label", "after"]
    output = script.main(argv + ["--output", str(tmp_path / "out" / "terms.png")])
    with Image.open(output) as image:
        assert image.size == (760, 440) and len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 3
    with pytest.raises(SystemExit):  # one label per report
        script.main(argv[:-2] + ["--output", str(tmp_path / "x.png")])
