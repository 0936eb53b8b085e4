"""Images as neural-field targets: RGB in [0, 1] on pixel-centre coordinates in [−1, 1]².

A target is square: a non-square image is cropped to its centre square before it is resized (a
field fitted on [−1, 1]² would otherwise learn a stretched copy). The crop is reported, never
silent. Square images, such as the paper's DIV2K photographs, are only resized.

Every way a file can be unusable (missing, a directory, unreadable, empty, not an image, no pixels,
NaN/inf colours) is a one-line ``UserInputError`` that names the file and says what was expected.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nf_precond_plugin.errors import UserInputError

EMBEDDED_IMAGE_NAME = "scikit-image astronaut (embedded default)"
IMAGE_FORMATS = "PNG, JPEG, TIFF, BMP, GIF, WebP, …"
"""What the error messages list as decodable (imageio reads more)."""

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF", "a PDF document"),
    (b"glTF", "a binary glTF mesh"),
    (b"ply", "a PLY mesh"),
    (b"OFF", "an OFF mesh"),
)
# Parser messages that say nothing to a user: Python's own exceptions raised deep inside a parser,
# and messages that only repeat "this is not a valid file".
_UNHELPFUL_REASONS = (
    "not a ply file",
    "incorrect header",
    "values to unpack",
    "at least one array",
    "could not find a backend",
    "cannot identify image file",
    "invalid literal",
    "could not convert",
    "out of range",
    "out of bounds",
    "cannot reshape",
    "has no attribute",
    "unsupported operand",
    "codec can't decode",
)
_INTERNAL_TYPES = (IndexError, KeyError, AttributeError, TypeError, UnicodeError, ZeroDivisionError)


def file_content(head: bytes) -> str | None:
    """What the first bytes of a file show, for error messages ("looks like a PNG image", "is
    text"), or None when they show nothing recognisable."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"looks like {kind}"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as error:
            if error.start < len(head) - 3:  # not merely a multi-byte character cut at the end
                return None
        return "is text"
    return None


def parser_reason(error: BaseException) -> str | None:
    """A parser's error message when it can help a user, else None."""
    message = " ".join(str(error).split())
    if isinstance(error, _INTERNAL_TYPES) or not message or len(message) > 160:
        return None
    if any(internal in message.lower() for internal in _UNHELPFUL_REASONS):
        return None
    return message


def read_file_head(path: Path, what: str, expected: str) -> bytes:
    """The first bytes of ``path``, after the checks every input file gets (one-line errors):
    it exists, is a regular file, can be read and is not empty. ``what`` names the kind of file
    ("image", "mesh"); ``expected`` says what it should hold."""
    a_file = f"{'an' if what[0] in 'aeiou' else 'a'} {what} file"
    if not path.exists():
        raise UserInputError(f"{path}: no such {what} file")
    if path.is_dir():
        raise UserInputError(f"{path}: expected {a_file} ({expected}), found a directory")
    if not path.is_file():
        raise UserInputError(f"{path}: expected {a_file} ({expected}), found a special file")
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise UserInputError(f"{path}: cannot read the {what} file ({error.strerror or error})") from None
    if not head:
        raise UserInputError(f"{path}: the file is empty (0 bytes); expected {a_file} ({expected})")
    return head


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence the decoders' own warnings and log lines (tifffile logs "contains no pages" on
    stderr, for one): a file they cannot use is reported once, as a UserInputError."""
    loggers = [logging.getLogger(name) for name in ("tifffile", "imageio", "PIL")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def embedded_image() -> np.ndarray:
    """scikit-image's astronaut photograph, shipped inside its wheel: no download."""
    from skimage import data

    return data.astronaut()


def read_image(path: Path | str) -> np.ndarray:
    """Read any image imageio can decode as an (H, W, C) uint8/float array, with one-line errors."""
    import imageio.v3 as iio

    path = Path(path)
    head = read_file_head(path, "image", IMAGE_FORMATS)
    try:
        with _quiet_decoders():
            return np.asarray(iio.imread(path))
    except Exception as error:  # imageio raises many types for undecodable files
        content, reason = file_content(head), parser_reason(error)
        found = "".join(f"; {part}" for part in (content and f"the file {content}", reason) if part)
        raise UserInputError(f"{path}: not an image imageio can decode (expected {IMAGE_FORMATS}{found})") from None


def to_rgb_float(image: np.ndarray, source: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]. Grayscale is replicated to RGB; alpha is dropped.

    An image without pixels, or with NaN or infinite colour values, is refused: a target with them
    could not be fitted (NaN reaches the loss; clipping would silently turn +inf into white).
    """
    if image.size == 0:
        raise UserInputError(f"{source}: the image has no pixels (shape {image.shape}); expected at least 1×1")
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
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise UserInputError(
            f"{source}: {bad} of {finite.size} colour values are NaN or infinite; expected finite colours in [0, 1]"
        )
    return image.astype(np.float32).clip(0.0, 1.0)


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, …) image (the image itself when it is square).

    An odd difference leaves the extra row or column on the bottom or right side.
    """
    height, width = image.shape[:2]
    if height == width:
        return image
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size × size with anti-aliasing (the paper resizes DIV2K 512² to 256²)."""
    from skimage.transform import resize

    if size < 1:
        raise UserInputError(f"--size: expected a positive side length, got {size}")
    if image.shape[:2] == (size, size):
        return image
    return resize(image, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)


@dataclass(frozen=True)
class TargetImage:
    """A (size, size, 3) float32 target, where it came from, and the size of the original."""

    target: torch.Tensor
    source: str
    width: int
    height: int

    @property
    def crop(self) -> str | None:
        """The crop, "centre S×S of W×H", when the original was not square; None when it was."""
        if self.width == self.height:
            return None
        side = min(self.width, self.height)
        return f"centre {side}×{side} of {self.width}×{self.height}"

    @property
    def note(self) -> str | None:
        """One sentence for the user when the original was cropped, else None."""
        if self.crop is None:
            return None
        side, size = min(self.width, self.height), self.target.shape[0]
        resized = f", resized to {size}×{size}" if side != size else ""
        return f"{self.source} is {self.width}×{self.height}; training on its centre {side}×{side} square{resized}"


def load_target(path: Path | str | None, size: int) -> TargetImage:
    """The square target of ``path`` (None: the embedded default): centre-cropped, then resized."""
    if path is None:
        raw, source = embedded_image(), EMBEDDED_IMAGE_NAME
    else:
        raw, source = read_image(path), str(path)
    image = to_rgb_float(raw, source)
    height, width = image.shape[:2]
    target = torch.from_numpy(resize_square(centre_square(image), size).copy())
    return TargetImage(target, source, width, height)


def load_target_image(path: Path | str | None, size: int) -> tuple[torch.Tensor, str]:
    """The (size, size, 3) float32 target and a description of where it came from
    (:func:`load_target` without the crop information)."""
    loaded = load_target(path, size)
    return loaded.target, loaded.source


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """(H·W, 2) pixel-centre coordinates (x, y) in [−1, 1], row-major like the image."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
