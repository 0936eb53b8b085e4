"""nerfstudio dataparser for LLFF forward-facing scenes (``poses_bounds.npy`` + ``images_{k}/``).

Input layout (as in LLFF / NeRF's ``nerf_llff_data``)::

    <data>/poses_bounds.npy     (N, 17) float: row k = [P_k (3 × 5) row-major, near_k, far_k]
    <data>/images_8/ | images_4/ | images_{k}/ | images/    N images, sorted by file name

P_k = [c_down | c_right | c_back | t | hwf]: the camera-to-world rotation with columns in LLFF's
[down, right, back] order, the camera centre t, and hwf = (H_full, W_full, focal_full) of the
full-resolution images. (near_k, far_k) bound the scene depth seen by view k.

Conventions and equations, in the order applied (all cameras, before the split):

1. Intrinsics for the stored images of size h × w:
   fx = fy = focal_full · w / W_full (h / H_full must agree within 1 %), cx = w / 2, cy = h / 2.
2. Axes, LLFF → nerfstudio/OpenGL [right, up, back]: C = [c_right, −c_down, c_back, t].
3. Recentre (LLFF's ``recenter_poses``): the average pose A has centre mean_k(t_k),
   z = normalise(Σ_k z_k), up = Σ_k y_k, x = normalise(up × z), y = z × x.
   C_k ← A⁻¹ C_k (homogeneous 4 × 4). The world frame thus moves to the average camera.
4. Scale (nerf-pytorch's ``bd_factor`` = 0.75): s = 1 / (0.75 · min_k near_k);
   t_k ← s · t_k and bounds ← s · bounds, so the nearest bound becomes 1 / 0.75.
   A world point p maps to s · (T p + τ) with [T | τ] = (A⁻¹)[:3]: ``dataparser_transform`` and
   ``dataparser_scale`` in the outputs, as nerfstudio's own dataparsers record them.
5. Ray range (nerf-pytorch's LLFF setting without NDC): near = 0.9 · min(bounds),
   far = 1.0 · max(bounds), in the outputs' ``metadata`` as {"near": float, "far": float}.
   No NDC warp. Note: LLFF bounds are depths along the camera axis, while nerfstudio ray
   parameters are distances along unit directions (≥ depth, by 1 / cos of the off-axis angle).
6. Scene box: the axis-aligned box of all camera centres and all cameras' frustum corners at
   depths near and far (so it contains every point of depth ≤ far in any view's frustum, whether
   the ray range is read as depth or as distance), float32 [[min xyz], [max xyz]].
7. Split: view i is held out ("val" and "test") iff i % holdout_every == 0; the rest is "train".

The default ``data`` is the embedded demo scene (see ``data/demo_scene.py``), generated on first use,
so ``ns-train <method> llff-data`` works without any download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from nf_precond_plugin.data.demo_scene import demo_scene_dir, ensure_demo_scene
from nf_precond_plugin.errors import UserInputError

LLFF_LAYOUT = "an LLFF scene needs poses_bounds.npy (N×17) and images_4/ or images_8/ with N images"
"""The hint every error message ends with."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREFERRED_FACTORS = (8, 4)
"""Without an explicit downscale factor, the first existing images_{k} folder in this order wins;
then any other images_{k} (largest k first), then the full-resolution images/."""

BOUNDS_FACTOR = 0.75
"""nerf-pytorch's bd_factor: after scaling, the smallest near bound is 1 / 0.75."""
NEAR_FACTOR = 0.9
"""Rays start at 0.9 × the smallest scaled bound (nerf-pytorch, LLFF without NDC)."""
FAR_FACTOR = 1.0
"""Rays end at 1.0 × the largest scaled bound."""
INTRINSICS_ASPECT_TOLERANCE = 0.01


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF forward-facing scene (poses_bounds.npy + images_{k}/); defaults to the embedded demo scene."""

    _target: type = field(default_factory=lambda: LLFFDataParser)
    """target class to instantiate"""
    data: Path = field(default_factory=demo_scene_dir)
    """Scene directory with poses_bounds.npy and images_{k}/. The default, the embedded demo
    scene ($NF_PRECOND_CACHE or ~/.cache/nf-precond, then demo-llff-v1), is generated if missing."""
    downscale_factor: int | None = None
    """Use images_{k} for this k (1: images/). None: images_8, else images_4, else what exists."""
    holdout_every: int = 8
    """Every holdout_every-th view (index % holdout_every == 0) is the val/test split."""


@dataclass
class LLFFScene:
    """The parsed scene in nerfstudio's frame, all views (before the split)."""

    camera_to_worlds: np.ndarray  # (N, 3, 4) OpenGL, recentred and scaled
    bounds: np.ndarray  # (N, 2) scaled (near, far) depths
    image_filenames: list[Path]
    width: int
    height: int
    focal: float  # pixels, at the stored image resolution
    transform: np.ndarray  # (3, 4) = inv(average pose)[:3]
    scale: float


def _fail(data: Path, problem: str) -> UserInputError:
    """A one-line error naming the scene path, the problem and what an LLFF scene must contain."""
    return UserInputError(f"LLFF scene {data}: {' '.join(problem.split())}; {LLFF_LAYOUT}")


def _load_poses_bounds(data: Path) -> np.ndarray:
    """(N, 17) float64 from <data>/poses_bounds.npy, validated."""
    path = data / "poses_bounds.npy"
    if not path.is_file():
        raise _fail(data, "poses_bounds.npy not found")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises ValueError/OSError/EOFError/... for bad files
        raise _fail(data, f"poses_bounds.npy is not a readable .npy array ({type(error).__name__}: {error})") from None
    if array.ndim != 2 or array.shape[1] != 17 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.number):
        raise _fail(
            data, f"poses_bounds.npy has shape {array.shape} and dtype {array.dtype}, expected numbers of shape (N, 17)"
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise _fail(data, "poses_bounds.npy contains non-finite values")
    bounds = array[:, 15:17]
    if np.any(bounds <= 0) or np.any(bounds[:, 0] > bounds[:, 1]):
        raise _fail(data, "poses_bounds.npy has depth bounds that are not 0 < near ≤ far")
    hwf = array[:, :15].reshape(-1, 3, 5)[:, :, 4]
    if np.any(hwf <= 0):
        raise _fail(data, "poses_bounds.npy has a non-positive image height, width or focal length")
    return array


def _image_folder(data: Path, downscale_factor: int | None) -> Path:
    """images_{k} (images/ for k = 1) for an explicit factor, else the preferred existing one."""
    if downscale_factor is not None:
        if downscale_factor < 1:
            raise _fail(data, f"downscale_factor must be ≥ 1, got {downscale_factor}")
        folder = data / ("images" if downscale_factor == 1 else f"images_{downscale_factor}")
        if not folder.is_dir():
            raise _fail(data, f"{folder.name}/ not found (downscale_factor={downscale_factor})")
        return folder
    other_factors = sorted(
        (
            int(path.name.split("_", 1)[1])
            for path in data.glob("images_*")
            if path.is_dir() and path.name.split("_", 1)[1].isdigit()
        ),
        reverse=True,
    )
    for factor in (*PREFERRED_FACTORS, *other_factors):
        if (data / f"images_{factor}").is_dir():
            return data / f"images_{factor}"
    if (data / "images").is_dir():
        return data / "images"
    raise _fail(data, "no images_8/, images_4/, images_{k}/ or images/ folder")


def _list_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _image_size(data: Path, path: Path, decode: bool) -> tuple[int, int]:
    """(width, height) from the header; ``decode`` also decodes the pixels to catch corrupt files."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.size
    except Exception as error:  # PIL raises several types for unreadable files
        raise _fail(data, f"image {path.name} is not readable ({type(error).__name__}: {error})") from None


def _check_images(data: Path, folder: Path, filenames: list[Path], num_poses: int) -> tuple[int, int]:
    """The common (width, height) of all images, after checking their count and sizes."""
    if len(filenames) != num_poses:
        raise _fail(data, f"{folder.name}/ has {len(filenames)} images but poses_bounds.npy has {num_poses} poses")
    # Decode the first image fully (a corrupt file fails here, early); headers suffice for the rest.
    sizes = [_image_size(data, path, decode=index == 0) for index, path in enumerate(filenames)]
    for path, (width, height) in zip(filenames, sizes):
        if (width, height) != sizes[0]:
            raise _fail(
                data,
                f"images differ in size: {filenames[0].name} is {sizes[0][0]}×{sizes[0][1]}, "
                f"{path.name} is {width}×{height}",
            )
    return sizes[0]


def _normalise(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def average_pose(camera_to_worlds: np.ndarray) -> np.ndarray:
    """LLFF's poses_avg: the 4 × 4 pose at the mean centre with z = normalise(Σ z_k), up = Σ y_k."""
    centre = camera_to_worlds[:, :3, 3].mean(axis=0)
    z_axis = _normalise(camera_to_worlds[:, :3, 2].sum(axis=0))
    up = camera_to_worlds[:, :3, 1].sum(axis=0)
    x_axis = _normalise(np.cross(up, z_axis))
    y_axis = np.cross(z_axis, x_axis)
    pose = np.eye(4)
    pose[:3, :4] = np.stack([x_axis, y_axis, z_axis, centre], axis=1)
    return pose


def llff_to_opengl(llff_poses: np.ndarray) -> np.ndarray:
    """(N, 3, 4) LLFF [down, right, back, t] → OpenGL [right, up, back, t]."""
    return np.stack([llff_poses[..., 1], -llff_poses[..., 0], llff_poses[..., 2], llff_poses[..., 3]], axis=-1)


def load_llff_scene(data: Path, downscale_factor: int | None = None) -> LLFFScene:
    """Validate and parse an LLFF scene: every view, recentred and scaled (steps 1–4 of the module doc)."""
    data = Path(data)
    if not data.is_dir():
        raise _fail(data, "directory not found" if not data.exists() else "not a directory")
    poses_bounds = _load_poses_bounds(data)
    num_views = len(poses_bounds)
    folder = _image_folder(data, downscale_factor)
    filenames = _list_images(folder)
    width, height = _check_images(data, folder, filenames, num_views)

    llff_poses = poses_bounds[:, :15].reshape(num_views, 3, 5)
    full_height, full_width, full_focal = llff_poses[0, :, 4]
    if abs((height / full_height) / (width / full_width) - 1.0) > INTRINSICS_ASPECT_TOLERANCE:
        raise _fail(
            data,
            f"{folder.name}/ images are {width}×{height} but poses_bounds.npy says the full resolution is "
            f"{full_width:g}×{full_height:g}: not the same aspect ratio",
        )
    focal = float(full_focal * width / full_width)

    camera_to_worlds = llff_to_opengl(llff_poses[:, :, :4])
    homogeneous = np.tile(np.eye(4), (num_views, 1, 1))
    homogeneous[:, :3, :] = camera_to_worlds
    world_from_average = np.linalg.inv(average_pose(camera_to_worlds))
    recentred = (world_from_average @ homogeneous)[:, :3, :]

    bounds = poses_bounds[:, 15:17]
    scale = 1.0 / (BOUNDS_FACTOR * float(bounds.min()))
    recentred[:, :, 3] *= scale
    return LLFFScene(
        camera_to_worlds=recentred,
        bounds=bounds * scale,
        image_filenames=filenames,
        width=int(width),
        height=int(height),
        focal=focal,
        transform=world_from_average[:3, :],
        scale=scale,
    )


def check_llff_scene(data: Path, downscale_factor: int | None = None, option: str = "--data") -> None:
    """Refuse, in one line naming ``option``, a scene the parser would refuse (missing folder, no
    poses_bounds.npy, no images, counts or sizes that disagree), before anything is written or trained."""
    data = Path(data).expanduser()
    try:
        load_llff_scene(data, downscale_factor)
    except UserInputError as error:
        raise UserInputError(str(error).replace(f"LLFF scene {data}:", f"{option} {data}:", 1)) from None


def frustum_box(
    camera_to_worlds: np.ndarray, width: int, height: int, focal: float, depths: tuple[float, ...]
) -> np.ndarray:
    """(2, 3) [min, max] over the camera centres and the image corners' rays at the given depths."""
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    directions = np.stack(
        [(corners[:, 0] - width / 2.0) / focal, -(corners[:, 1] - height / 2.0) / focal, -np.ones(4)], axis=-1
    )  # (4, 3), camera-frame z = −1 so the ray parameter is depth
    points = [camera_to_worlds[:, :, 3]]
    for depth in depths:
        world_directions = np.einsum("nij,cj->nci", camera_to_worlds[:, :, :3], directions)
        points.append((camera_to_worlds[:, None, :, 3] + depth * world_directions).reshape(-1, 3))
    points = np.concatenate(points, axis=0)
    return np.stack([points.min(axis=0), points.max(axis=0)])


def split_indices(num_views: int, holdout_every: int, split: str) -> np.ndarray:
    """Indices of ``split``: val/test are i % holdout_every == 0, train the rest."""
    every_view = np.arange(num_views)
    held_out = every_view % holdout_every == 0
    if split == "train":
        return every_view[~held_out]
    if split in ("val", "test"):
        return every_view[held_out]
    raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")


@dataclass
class LLFFDataParser(DataParser):
    """LLFF forward-facing scenes, recentred and scaled like nerf-pytorch; see the module docstring."""

    config: LLFFDataParserConfig

    def _resolve_data(self) -> Path:
        """The scene directory; the default demo scene is generated when it is missing."""
        data = Path(self.config.data).expanduser()
        if not data.exists() and data.absolute() == demo_scene_dir().absolute():
            ensure_demo_scene(data)
            CONSOLE.print(f"Generated the embedded LLFF demo scene at {data}")
        return data

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: dict | None) -> DataparserOutputs:
        if self.config.holdout_every < 2:
            raise UserInputError(f"holdout_every: expected an integer ≥ 2, got {self.config.holdout_every}")
        data = self._resolve_data()
        scene = load_llff_scene(data, self.config.downscale_factor)
        num_views = len(scene.camera_to_worlds)
        if num_views < 2:
            raise _fail(data, f"only {num_views} view; need at least 2 (one to train on, one to evaluate)")
        indices = split_indices(num_views, self.config.holdout_every, split)

        near = NEAR_FACTOR * float(scene.bounds.min())
        far = FAR_FACTOR * float(scene.bounds.max())
        aabb = frustum_box(scene.camera_to_worlds, scene.width, scene.height, scene.focal, (near, far))

        count = len(indices)
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(scene.camera_to_worlds[indices]).float(),
            fx=torch.full((count, 1), scene.focal, dtype=torch.float32),
            fy=torch.full((count, 1), scene.focal, dtype=torch.float32),
            cx=torch.full((count, 1), scene.width / 2.0, dtype=torch.float32),
            cy=torch.full((count, 1), scene.height / 2.0, dtype=torch.float32),
            width=torch.full((count, 1), scene.width, dtype=torch.int64),
            height=torch.full((count, 1), scene.height, dtype=torch.int64),
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[scene.image_filenames[index] for index in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.from_numpy(aabb).float()),
            metadata={"near": near, "far": far},
            dataparser_transform=torch.from_numpy(scene.transform).float(),
            dataparser_scale=scene.scale,
        )


llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF forward-facing scenes (poses_bounds.npy + images_8/ or images_4/); "
    "defaults to an embedded, generated demo scene",
)
