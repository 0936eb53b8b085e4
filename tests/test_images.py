"""Image targets: the embedded default, the paper's DIV2K lion, and pixel coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nf_precond_plugin.data.images import load_target_image, pixel_coordinates, to_rgb_float
from nf_precond_plugin.errors import UserInputError


def test_pixel_coordinates_are_centres_in_minus_one_one():
    coords = pixel_coordinates(2, 4)
    expected_x = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    torch.testing.assert_close(coords[:4, 0], expected_x)
    torch.testing.assert_close(coords[:4, 1], torch.full((4,), -0.5))
    torch.testing.assert_close(coords[4:, 1], torch.full((4,), 0.5))


def test_uint8_and_uint16_scale_to_unit_range_and_gray_becomes_rgb():
    gray16 = np.array([[0, 65535]], dtype=np.uint16)
    rgb = to_rgb_float(gray16, "x")
    assert rgb.shape == (1, 2, 3)
    np.testing.assert_allclose(rgb[0, :, 0], [0.0, 1.0])
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 1] = 51
    np.testing.assert_allclose(to_rgb_float(rgba, "x")[..., 1], 0.2)
    with pytest.raises(UserInputError, match="x: expected"):
        to_rgb_float(np.zeros((2, 2, 5)), "x")


def test_embedded_default_needs_no_file():
    image, source = load_target_image(None, 64)
    assert image.shape == (64, 64, 3) and "astronaut" in source
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@pytest.mark.shared_data
def test_div2k_lion_resizes_to_the_papers_256(shared_data):
    import imageio.v3 as iio

    path = shared_data / "div2k" / "test_data" / "14.png"
    raw = iio.imread(path)
    assert raw.shape == (512, 512, 3)
    image, source = load_target_image(path, 256)
    assert image.shape == (256, 256, 3) and source == str(path)
    # anti-aliased 2× downsampling ≈ the mean of each 2×2 block (an independent computation)
    blocks = raw.astype(np.float64).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3)) / 255.0
    assert np.abs(image.numpy() - blocks).mean() < 0.02
