"""Image targets: the embedded default, the paper's DIV2K lion, pixel coordinates, the centre-square
crop of non-square images and one-line errors for unusable files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nf_precond_plugin.data.images import (
    centre_square,
    load_target,
    load_target_image,
    pixel_coordinates,
    read_image,
    to_rgb_float,
)
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


# ----------------------------------------------------------------------------------------------
# non-square images: centre square, then resize; square images unchanged
# ----------------------------------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(height: int, width: int, vertical: bool) -> np.ndarray:
    """Red | green | blue bands along the long side, green exactly on the centre square."""
    long, short = max(height, width), min(height, width)
    start = (long - short) // 2
    pattern = np.empty((long, 3), dtype=np.uint8)
    pattern[:start], pattern[start : start + short], pattern[start + short :] = RED, GREEN, BLUE
    if vertical:
        return np.repeat(pattern[:, None], width, axis=1)
    return np.repeat(pattern[None], height, axis=0)


@pytest.mark.parametrize("height, width", [(30, 60), (60, 30), (30, 61)])
def test_non_square_image_trains_on_its_centre_square(tmp_path, height, width):
    import imageio.v3 as iio

    path = tmp_path / "bands.png"
    iio.imwrite(path, _bands(height, width, vertical=height > width))
    green = torch.tensor([0.0, 1.0, 0.0])
    # no resize: exactly the centre square, so one column or row too far would show red or blue
    exact = load_target(path, 30)
    assert exact.target.shape == (30, 30, 3)
    assert torch.equal(exact.target, green.expand(30, 30, 3))
    assert exact.crop == f"centre 30×30 of {width}×{height}"
    assert exact.note == f"{path} is {width}×{height}; training on its centre 30×30 square"
    # resized: anti-aliasing must not pull in colour from outside the crop
    resized = load_target(path, 16)
    torch.testing.assert_close(resized.target[4:12, 4:12], green.expand(8, 8, 3), atol=1e-6, rtol=0)
    assert resized.note.endswith("square, resized to 16×16")


def test_image_task_reports_the_crop_in_describe_and_one_note(tmp_path, capsys):
    import imageio.v3 as iio

    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask

    path = tmp_path / "wide.png"
    iio.imwrite(path, _bands(30, 60, vertical=False))
    task = ImageTask(ImageConfig(image=path, size=16))
    assert task.describe()["crop"] == "centre 30×30 of 60×30"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"note: {path} is 60×30; training on its centre 30×30 square, resized to 16×16"]


def test_square_image_is_only_resized_as_before(tmp_path, capsys):
    import imageio.v3 as iio
    from skimage.transform import resize

    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask

    raw = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = tmp_path / "square.png"
    iio.imwrite(path, raw)
    # the pipeline before the crop existed: uint8 → float32 / 255, then skimage's anti-aliased resize
    as_float = (raw.astype(np.float32) / 255.0).clip(0.0, 1.0)
    before = resize(as_float, (24, 24), anti_aliasing=True, preserve_range=True).astype(np.float32)
    loaded = load_target(path, 24)
    assert loaded.crop is None and loaded.note is None
    np.testing.assert_array_equal(loaded.target.numpy(), before)
    task = ImageTask(ImageConfig(image=path, size=24))
    assert task.describe()["crop"] is None
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# unusable files and pixels: one line naming the file
# ----------------------------------------------------------------------------------------------


def test_no_pixels_and_non_finite_colours_are_refused():
    with pytest.raises(UserInputError, match=r"^x: the image has no pixels"):
        to_rgb_float(np.zeros((0, 5, 3), dtype=np.uint8), "x")
    image = np.full((2, 2, 3), 0.5, dtype=np.float32)
    image[0, 1, 2] = np.nan
    image[1, 1, 0] = -np.inf
    with pytest.raises(UserInputError, match=r"^x: 2 of 12 colour values are NaN or infinite"):
        to_rgb_float(image, "x")
    image[..., :] = 0.5
    image = np.concatenate([image, np.full((2, 2, 1), np.nan, dtype=np.float32)], axis=-1)
    assert np.isfinite(to_rgb_float(image, "x")).all()  # a NaN alpha is dropped, not refused


@pytest.mark.parametrize(
    "name, content, words",
    [
        (
            "text.png",
            b"hello\n",
            "not an image imageio can decode (expected PNG, JPEG, TIFF, BMP, GIF, WebP, …; the file is text)",
        ),
        ("empty.png", b"", "the file is empty (0 bytes); expected an image file"),
        ("array.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", "the file looks like a NumPy .npy array"),
    ],
)
def test_undecodable_files_say_what_was_expected(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserInputError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_centre_square_keeps_the_extra_column_on_the_right():
    image = np.arange(3 * 6).reshape(3, 6)
    np.testing.assert_array_equal(centre_square(image), image[:, 1:4])
    np.testing.assert_array_equal(centre_square(image.T), image.T[1:4])
    square = image[:, :3]
    assert centre_square(square) is square
