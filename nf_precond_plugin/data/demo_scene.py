"""A small, deterministic forward-facing scene written in the LLFF layout, for `ns-train` without any data.

The scene (world frame = OpenGL/nerfstudio: x right, y up, the cameras look down −z):

* three fronto-parallel textured rectangles, each the plane z = −depth:
  the astronaut photograph at depth 2.5, the coffee cup at depth 3.5 and, filling every view,
  the cat (chelsea) as a background at depth 6. The photos ship inside the scikit-image wheel
  (``skimage/data/*.png``), so nothing is downloaded.
* ``num_views`` pinhole cameras near the plane z = 0, on a sunflower (golden-angle) spiral of
  diameter ≈ 0.3 with a little seeded jitter in position and a rotation of a degree or two, like a
  handheld forward-facing capture. Focal length f = 1.2 · width pixels, principal point at the
  image centre.

Rendering is analytic, per ray, in numpy. A pixel (row i, column j) has its centre at
(u, v) = (j + ½, i + ½) (nerfstudio's convention), and its ray in camera coordinates is

    d_cam = ((u − cx) / f, −(v − cy) / f, −1),    d_world = R d_cam,    x(t) = o + t · d_world,

so the ray parameter t is the depth along the camera's −z axis. The ray meets the plane z = z_p at
t = (z_p − o_z) / d_world_z; the colour is the bilinear texture lookup at the nearest hit inside
its rectangle. Colours average 2 × 2 sub-pixel rays (anti-aliasing, so the views stay consistent
for a NeRF); depth maps use the pixel-centre ray. Textures are pre-filtered to about two texels
per pixel at their depth.

Files written (LLFF conventions; see ``nerf/llff.py``):

* ``poses_bounds.npy``: (N, 17) float64. Row k = [P_k (3 × 5) row-major, near_k, far_k] with
  P_k = [down | right | back | centre | (H_full, W_full, f_full)]: the camera-to-world rotation in
  LLFF's [down, right, back] column order, i.e. [−y_gl, x_gl, z_gl], and the intrinsics of the
  "full resolution" images, ``factor`` times the size of the stored ones. (near_k, far_k) is the
  range of scene depth seen by view k, padded by 2 %.
* ``images_{factor}/image000.png …``: the N rendered views, ``height × width`` RGB.
* ``ground_truth.npz``: ``camera_to_world`` (N, 3, 4) OpenGL c2w, ``focal`` (pixels, at the
  stored resolution), ``depth`` (N, h, w) depth along −z of the pixel-centre rays, ``width``,
  ``height``. Written with fixed zip timestamps so two generations are byte-identical.

Generation is atomic: everything is written into a hidden temporary sibling directory which is
renamed into place only when complete, so an interrupted run never leaves a half scene.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nf_precond_plugin.errors import UserInputError, reported_as_one_line

DEMO_SCENE_NAME = "demo-llff-v1"
"""Bump the version whenever the generated content changes, so stale caches are not reused."""

FOCAL_PER_WIDTH = 1.2
"""Focal length in pixels per image width: a 45° horizontal field of view."""

CAMERA_SPREAD = 0.3
"""Diameter of the disc the camera centres lie in (world units)."""

BOUNDS_PADDING = 0.02
"""Relative padding of each view's (min, max) depth in poses_bounds.npy."""

SUPERSAMPLES_PER_AXIS = 2
"""Sub-pixel rays per axis averaged into one pixel's colour."""


def demo_scene_dir() -> Path:
    """Where the default demo scene lives: $NF_PRECOND_CACHE, else $XDG_CACHE_HOME/nf-precond, else
    ~/.cache/nf-precond; then ``demo-llff-v1``. Read from the environment at each call."""
    cache = os.environ.get("NF_PRECOND_CACHE")
    if not cache:
        xdg_cache = os.environ.get("XDG_CACHE_HOME")
        cache = str(Path(xdg_cache) / "nf-precond") if xdg_cache else "~/.cache/nf-precond"
    return Path(cache).expanduser() / DEMO_SCENE_NAME


@dataclass(frozen=True)
class TexturedRectangle:
    """The rectangle [x_min, x_max] × [y_min, y_max] of the plane z = −depth, showing ``texture``
    (H_t, W_t, 3) float in [0, 1] with its first row at y_max and its first column at x_min."""

    depth: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float
    texture: np.ndarray


def _load_photo(name: str) -> np.ndarray:
    """A photograph shipped inside the scikit-image wheel, as float RGB in [0, 1]."""
    from skimage import data

    loaders: dict[str, Callable[[], np.ndarray]] = {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
    }
    return loaders[name]().astype(np.float64) / 255.0


def _prefiltered(photo: np.ndarray, world_width: float, depth: float, focal: float) -> np.ndarray:
    """Resize ``photo`` to about two texels per rendered pixel at ``depth`` (anti-aliased), so that
    bilinear lookups do not alias and every view sees the same, band-limited texture."""
    from skimage.transform import resize

    pixels_per_unit = focal / depth
    texels_wide = max(8, math.ceil(2.0 * pixels_per_unit * world_width))
    texels_high = max(8, round(texels_wide * photo.shape[0] / photo.shape[1]))
    if texels_wide >= photo.shape[1]:
        return photo
    return resize(photo, (texels_high, texels_wide), anti_aliasing=True, preserve_range=True)


def _scene_rectangles(focal: float) -> list[TexturedRectangle]:
    """The three planes, front to back. Extents keep each photo's aspect ratio (W/H): astronaut
    1.0, coffee 1.5, chelsea ≈ 1.5; the background is far larger than any view's footprint."""
    layout = [
        # name, depth, x_min, x_max, y_min, y_max
        ("astronaut", 2.5, -0.95, 0.05, -0.35, 0.65),
        ("coffee", 3.5, -0.20, 1.30, -0.90, 0.10),
        ("chelsea", 6.0, -4.50, 4.50, -3.00, 3.00),
    ]
    rectangles = []
    for name, depth, x_min, x_max, y_min, y_max in layout:
        texture = _prefiltered(_load_photo(name), x_max - x_min, depth, focal)
        rectangles.append(TexturedRectangle(depth, x_min, x_max, y_min, y_max, texture))
    return rectangles


def _rotation_xyz(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = R_z(roll) · R_x(pitch) · R_y(yaw), angles in radians."""
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cz, sz = math.cos(roll), math.sin(roll)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_x @ rot_y


def _camera_layout(num_views: int, seed: int) -> np.ndarray:
    """(N, 3, 4) OpenGL camera-to-world poses: a golden-angle spiral of centres in a disc of
    diameter CAMERA_SPREAD at z ≈ 0, with seeded jitter (±1 cm, ±1.5° pitch/yaw, ±1° roll)."""
    rng = np.random.default_rng(seed)
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    poses = np.zeros((num_views, 3, 4))
    for index in range(num_views):
        radius = 0.5 * CAMERA_SPREAD * math.sqrt((index + 0.5) / num_views)
        angle = index * golden_angle
        centre = np.array([radius * math.cos(angle), radius * math.sin(angle), 0.0])
        centre += rng.uniform(-0.01, 0.01, size=3)
        pitch, yaw = np.deg2rad(rng.uniform(-1.5, 1.5, size=2))
        roll = np.deg2rad(rng.uniform(-1.0, 1.0))
        poses[index, :, :3] = _rotation_xyz(pitch, yaw, roll)
        poses[index, :, 3] = centre
    return poses


def _bilinear(texture: np.ndarray, column: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Bilinear lookup at continuous texel coordinates (texel centres at integers), clamped."""
    texels_high, texels_wide = texture.shape[:2]
    column = np.clip(column, 0.0, texels_wide - 1.0)
    row = np.clip(row, 0.0, texels_high - 1.0)
    column0 = np.minimum(np.floor(column).astype(np.int64), texels_wide - 2)
    row0 = np.minimum(np.floor(row).astype(np.int64), texels_high - 2)
    weight_x = (column - column0)[:, None]
    weight_y = (row - row0)[:, None]
    top = texture[row0, column0] * (1 - weight_x) + texture[row0, column0 + 1] * weight_x
    bottom = texture[row0 + 1, column0] * (1 - weight_x) + texture[row0 + 1, column0 + 1] * weight_x
    return top * (1 - weight_y) + bottom * weight_y


def _trace(
    rectangles: Sequence[TexturedRectangle], origin: np.ndarray, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Colours (M, 3) and depths (M,) of the nearest rectangle hit by rays origin + t · directions
    (directions (M, 3) with camera-frame z = −1, so t is depth)."""
    nearest_depth = np.full(len(directions), np.inf)
    colour = np.zeros((len(directions), 3))
    for rectangle in rectangles:
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = (-rectangle.depth - origin[2]) / directions[:, 2]
        hit = origin[None, :] + depth[:, None] * directions
        inside = (
            (depth > 0)
            & (depth < nearest_depth)
            & (hit[:, 0] >= rectangle.x_min)
            & (hit[:, 0] <= rectangle.x_max)
            & (hit[:, 1] >= rectangle.y_min)
            & (hit[:, 1] <= rectangle.y_max)
        )
        texels_high, texels_wide = rectangle.texture.shape[:2]
        column = (hit[inside, 0] - rectangle.x_min) / (rectangle.x_max - rectangle.x_min) * texels_wide - 0.5
        row = (rectangle.y_max - hit[inside, 1]) / (rectangle.y_max - rectangle.y_min) * texels_high - 0.5
        colour[inside] = _bilinear(rectangle.texture, column, row)
        nearest_depth[inside] = depth[inside]
    if not np.all(np.isfinite(nearest_depth)):
        raise RuntimeError("demo scene: a ray missed every plane; the background is too small for this camera")
    return colour, nearest_depth


def _pixel_rays(
    camera_to_world: np.ndarray, width: int, height: int, focal: float, offsets: Sequence[float]
) -> np.ndarray:
    """World-frame ray directions (height, width, len(offsets)², 3) through sub-pixel positions
    (j + a, i + b) for a, b in ``offsets``; camera-frame z component −1."""
    columns = np.arange(width)[None, :, None, None] + np.asarray(offsets)[None, None, :, None]
    rows = np.arange(height)[:, None, None, None] + np.asarray(offsets)[None, None, None, :]
    columns, rows = np.broadcast_arrays(columns, rows)
    camera_directions = np.stack(
        [(columns - width / 2.0) / focal, -(rows - height / 2.0) / focal, -np.ones(columns.shape)], axis=-1
    ).reshape(height, width, len(offsets) ** 2, 3)
    return camera_directions @ camera_to_world[:, :3].T


def render_view(
    rectangles: Sequence[TexturedRectangle], camera_to_world: np.ndarray, width: int, height: int, focal: float
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(image (h, w, 3) float in [0, 1], pixel-centre depth (h, w), (min, max) depth over all rays)."""
    origin = camera_to_world[:, 3]
    step = 1.0 / SUPERSAMPLES_PER_AXIS
    sub_offsets = [step * (k + 0.5) for k in range(SUPERSAMPLES_PER_AXIS)]
    sub_rays = _pixel_rays(camera_to_world, width, height, focal, sub_offsets)
    sub_colour, sub_depth = _trace(rectangles, origin, sub_rays.reshape(-1, 3))
    image = sub_colour.reshape(height, width, -1, 3).mean(axis=2)
    centre_rays = _pixel_rays(camera_to_world, width, height, focal, [0.5])
    _, centre_depth = _trace(rectangles, origin, centre_rays.reshape(-1, 3))
    depth_range = (float(min(sub_depth.min(), centre_depth.min())), float(max(sub_depth.max(), centre_depth.max())))
    return image, centre_depth.reshape(height, width), depth_range


def opengl_to_llff_rotation(camera_to_world: np.ndarray) -> np.ndarray:
    """Reorder OpenGL c2w columns [right, up, back, centre] into LLFF's [down, right, back, centre]."""
    return np.stack(
        [-camera_to_world[..., 1], camera_to_world[..., 0], camera_to_world[..., 2], camera_to_world[..., 3]], axis=-1
    )


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a float [0, 1] RGB image as an 8-bit PNG (a module function so tests can fail it)."""
    import imageio.v3 as iio

    iio.imwrite(path, np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), extension=".png")


def _write_npz_deterministically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with a fixed zip timestamp: np.savez stamps the current time, which
    would make two otherwise identical generations differ byte for byte."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def _write_scene(target: Path, *, num_views: int, width: int, height: int, factor: int, seed: int) -> None:
    """Render and write every file of the scene into the (existing, empty) directory ``target``."""
    focal = FOCAL_PER_WIDTH * width
    rectangles = _scene_rectangles(focal)
    camera_to_worlds = _camera_layout(num_views, seed)
    image_dir = target / f"images_{factor}"
    image_dir.mkdir()
    depths = np.zeros((num_views, height, width), dtype=np.float32)
    rows = np.zeros((num_views, 17))
    full_resolution_hwf = np.array([factor * height, factor * width, factor * focal], dtype=np.float64)
    for index, camera_to_world in enumerate(camera_to_worlds):
        image, depth, (min_depth, max_depth) = render_view(rectangles, camera_to_world, width, height, focal)
        write_image(image_dir / f"image{index:03d}.png", image)
        depths[index] = depth
        llff_pose = np.concatenate([opengl_to_llff_rotation(camera_to_world), full_resolution_hwf[:, None]], axis=1)
        bounds = [(1.0 - BOUNDS_PADDING) * min_depth, (1.0 + BOUNDS_PADDING) * max_depth]
        rows[index] = np.concatenate([llff_pose.ravel(), bounds])
    with open(target / "poses_bounds.npy", "wb") as file:
        np.save(file, rows)
    _write_npz_deterministically(
        target / "ground_truth.npz",
        {
            "camera_to_world": camera_to_worlds,
            "focal": np.float64(focal),
            "depth": depths,
            "width": np.int64(width),
            "height": np.int64(height),
        },
    )


def generate_demo_scene(
    out_dir: Path, *, num_views: int = 20, width: int = 80, height: int = 60, factor: int = 8, seed: int = 0
) -> Path:
    """Write the demo scene (LLFF layout) to ``out_dir`` atomically and return ``out_dir``.

    ``out_dir`` must not exist or be an empty directory. The files are written into a temporary
    sibling directory that is renamed to ``out_dir`` only once complete; on any failure it is removed.
    """
    out_dir = Path(out_dir).expanduser()
    if num_views < 2 or width < 2 or height < 2 or factor < 1:
        raise UserInputError(
            f"demo scene {out_dir}: need num_views ≥ 2, width, height ≥ 2 and factor ≥ 1, "
            f"got {num_views}, {width}, {height}, {factor}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(f"demo scene {out_dir}: already exists and is not an empty directory; remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename; mkdir honours the umask.
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_scene(staging, num_views=num_views, width=width, height=height, factor=factor, seed=seed)
        if out_dir.is_dir():  # empty (checked above): rename cannot replace a directory portably
            out_dir.rmdir()
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def is_complete_scene(path: Path) -> bool:
    """A generated scene is complete iff it exists: generation renames it into place last."""
    return (path / "poses_bounds.npy").is_file()


def ensure_demo_scene(path: Path | None = None) -> Path:
    """Return ``path`` (default: :func:`demo_scene_dir`), generating the demo scene there if missing.

    Safe against a concurrent generator: if another process renames its scene into place first,
    ours is discarded and theirs is used.
    """
    path = Path(path).expanduser() if path is not None else demo_scene_dir()
    if is_complete_scene(path):
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserInputError(
            f"demo scene {path}: exists but is not a complete demo scene (no poses_bounds.npy); remove it"
        )
    try:
        return generate_demo_scene(path)
    except (OSError, UserInputError):
        if is_complete_scene(path):  # another process won the race
            return path
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nf_precond_plugin.data.demo_scene OUT_DIR``: write the demo scene to OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to create (must not exist, or be empty)")
    parser.add_argument("--num-views", type=int, default=20)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--factor", type=int, default=8, help="images go to images_{factor}/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with reported_as_one_line("demo_scene"):
        out_dir = generate_demo_scene(
            args.out_dir,
            num_views=args.num_views,
            width=args.width,
            height=args.height,
            factor=args.factor,
            seed=args.seed,
        )
    print(out_dir)


if __name__ == "__main__":
    main()
