"""The image grids: every tile lands at its corner, unchanged, with blank (white) gaps, and the
figures that use them are written for grey and colour sets."""

import numpy as np
import pytest
from PIL import Image

from kip import plots


def test_mosaic_puts_each_tile_at_its_corner_and_leaves_gaps_and_blanks_white():
    rng = np.random.default_rng(0)
    tiles = [[rng.uniform(size=(3, 2)) for _ in range(4)], [rng.uniform(size=(3, 2)), None]]
    canvas, corners = plots.mosaic(tiles, gap=(2, 1), group=2, group_gap=3)
    # columns: 0, 3, then 3 more after the pair: 9, 12; rows 5 apart
    assert corners == [[(0, 0), (0, 3), (0, 9), (0, 12)], [(5, 0), (5, 3)]]
    assert canvas.shape == (5 + 3, 12 + 2)
    covered = np.zeros(canvas.shape, bool)
    for row, row_corners in zip(tiles, corners):
        for tile, (y, x) in zip(row, row_corners):
            if tile is not None:
                np.testing.assert_array_equal(canvas[y:y + 3, x:x + 2], tile)
                covered[y:y + 3, x:x + 2] = True
    assert np.all(canvas[~covered] == 1.0)


def test_mosaic_keeps_colour_channels():
    red = np.zeros((2, 2, 3))
    red[..., 0] = 1.0
    canvas, _ = plots.mosaic([[red, red]])
    assert canvas.shape == (2, 5, 3)
    np.testing.assert_array_equal(canvas[:, :2], red)
    np.testing.assert_array_equal(canvas[:, 2], np.ones((2, 3)))


@pytest.mark.parametrize("channels", [1, 3])
def test_support_grid_and_set_rows_write_an_image(tmp_path, channels):
    rng = np.random.default_rng(1)
    images, start = rng.normal(size=(2, 12, 6, 5, channels))
    labels = np.eye(4)[[0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3]] * 0.7  # 3, 2, 3, 4 per class
    plots.support_grid(str(tmp_path / "support.png"), images, labels, start, "title")
    plots.set_rows(str(tmp_path / "sets.png"), {"a": (images, labels), "b": (start, labels)}, "title")
    for name in ("support.png", "sets.png"):
        with Image.open(tmp_path / name) as png:
            assert png.size[0] > 100 and png.size[1] > 50
