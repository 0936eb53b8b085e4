"""Images as neural-field targets: RGB in [0, 1] on pixel-centre coordinates in [−1, 1]²."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nf_precond_plugin.errors import UserInputError

EMBEDDED_IMAGE_NAME = "scikit-image astronaut (embedded default)"


def embedded_image() -> np.ndarray:
    """scikit-image's astronaut photograph, shipped inside its wheel: no download."""
    from skimage import data

    return data.astronaut()


def read_image(path: Path | str) -> np.ndarray:
    """Read any image imageio can decode as an (H, W, C) uint8/float array, with one-line errors."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: no such image file")
    if not path.is_file():
        raise UserInputError(f"{path}: expected an image file, found a directory")
    try:
        return np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many types for undecodable files
        raise UserInputError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None


def to_rgb_float(image: np.ndarray, source: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]. Grayscale is replicated to RGB; alpha is dropped."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise UserInputError(f"{source}: expected an H×W grayscale or RGB(A) image, got shape {image.shape}")
    if image.shape[-1] in (1, 2):  # gray, or gray + alpha
        image = np.repeat(image[..., :1], 3, axis=-1)
    image = image[..., :3]
    if np.issubdtype(image.dtype, np.integer):
        scale = float(np.iinfo(image.dtype).max)
        return (image.astype(np.float32) / scale).clip(0.0, 1.0)
    return image.astype(np.float32).clip(0.0, 1.0)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size × size with anti-aliasing (the paper resizes DIV2K 512² to 256²)."""
    from skimage.transform import resize

    if size < 1:
        raise UserInputError(f"--size: expected a positive side length, got {size}")
    if image.shape[:2] == (size, size):
        return image
    return resize(image, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)


def load_target_image(path: Path | str | None, size: int) -> tuple[torch.Tensor, str]:
    """The (size, size, 3) float32 target and a description of where it came from."""
    if path is None:
        raw, source = embedded_image(), EMBEDDED_IMAGE_NAME
    else:
        raw, source = read_image(path), str(path)
    return torch.from_numpy(resize_square(to_rgb_float(raw, source), size).copy()), source


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """(H·W, 2) pixel-centre coordinates (x, y) in [−1, 1], row-major like the image."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
