"""The LLFF dataparser against independent oracles.

* Synthetic scenes built here from chosen OpenGL poses (converted to LLFF's [down, right, back]
  columns by hand): a known 3-D point, projected with the ground-truth pinhole model, must lie on
  the ray nerfstudio generates for that pixel once the point is moved by the recorded
  dataparser transform and scale; symmetric rigs whose average pose is the identity must come back
  unchanged apart from the scale.
* The demo scene: rays from the parsed cameras hit the planes at the ground-truth depths.
* The real fern capture (../shared/data): counts, intrinsics, scale and relative poses recomputed
  from the raw poses_bounds.npy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from PIL import Image

from nf_precond_plugin.data.demo_scene import generate_demo_scene
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.nerf.llff import LLFFDataParserConfig, llff_dataparser

torch.set_num_threads(1)

# nerfstudio 1.1.5 indexes with lists inside Cameras.generate_rays; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence for multidimensional indexing:UserWarning")

# Synthetic scene: 40 × 30 images in images_4, "full resolution" 160 × 120 with focal 150.
SMALL_WIDTH, SMALL_HEIGHT, FULL_SCALE, FULL_FOCAL = 40, 30, 4, 150.0
SMALL_FOCAL = FULL_FOCAL / FULL_SCALE


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues' formula."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def write_llff_scene(
    root: Path,
    camera_to_worlds: np.ndarray,
    bounds: np.ndarray,
    *,
    folder: str = "images_4",
    image_size: tuple[int, int] = (SMALL_WIDTH, SMALL_HEIGHT),
    hwf: tuple[float, float, float] = (SMALL_HEIGHT * FULL_SCALE, SMALL_WIDTH * FULL_SCALE, FULL_FOCAL),
) -> Path:
    """Write poses_bounds.npy from OpenGL c2w poses, plus one tiny image per pose."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for pose, (near, far) in zip(camera_to_worlds, bounds):
        right, up, back, centre = pose[:, 0], pose[:, 1], pose[:, 2], pose[:, 3]
        llff = np.stack([-up, right, back, centre, np.asarray(hwf, dtype=np.float64)], axis=1)  # [down, right, back]
        rows.append(np.concatenate([llff.ravel(), [near, far]]))
    np.save(root / "poses_bounds.npy", np.asarray(rows))
    (root / folder).mkdir()
    for index in range(len(camera_to_worlds)):
        pixels = np.full((image_size[1], image_size[0], 3), (index * 37) % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder / f"IMG_{index:04d}.PNG")
    return root


def general_rig(num_views: int = 10) -> np.ndarray:
    """Forward-facing cameras in an arbitrary world frame: rotated, translated, not centred."""
    rng = np.random.default_rng(3)
    world_rotation = rotation([0.3, -1.0, 0.5], 70.0)
    world_offset = np.array([5.0, -2.0, 11.0])
    poses = np.zeros((num_views, 3, 4))
    for index in range(num_views):
        local = rotation(rng.normal(size=3), rng.uniform(2.0, 12.0))
        centre = np.array([rng.uniform(-1, 1), rng.uniform(-0.7, 0.7), rng.uniform(-0.2, 0.2)])
        poses[index, :, :3] = world_rotation @ local
        poses[index, :, 3] = world_rotation @ centre + world_offset
    return poses


def symmetric_rig() -> np.ndarray:
    """Pairs (R_y(θ), c) and (R_y(−θ), −c): their LLFF average pose is exactly the identity."""
    poses = []
    for angle, centre in [(4.0, [0.3, 0.1, 0.05]), (9.0, [-0.2, 0.25, -0.1]), (2.0, [0.0, -0.3, 0.2])]:
        for sign in (1, -1):
            pose = np.zeros((3, 4))
            pose[:, :3] = rotation([0, 1, 0], sign * angle)
            pose[:, 3] = sign * np.asarray(centre)
            poses.append(pose)
    return np.asarray(poses)


def parse(data: Path, split: str = "train", **config) -> DataparserOutputs:
    return LLFFDataParserConfig(data=data, **config).setup().get_dataparser_outputs(split=split)


def ray_for_pixel(cameras: Cameras, camera: int, column: float, row: float) -> tuple[np.ndarray, np.ndarray]:
    """nerfstudio's ray (origin, unit direction) through the continuous pixel position (column, row)."""
    bundle = cameras.generate_rays(camera_indices=torch.tensor([[camera]]), coords=torch.tensor([[row, column]]))
    return bundle.origins[0].double().numpy(), bundle.directions[0].double().numpy()


def to_parsed_frame(outputs: DataparserOutputs, point: np.ndarray) -> np.ndarray:
    transform = outputs.dataparser_transform.double().numpy()
    return outputs.dataparser_scale * (transform[:, :3] @ point + transform[:, 3])


def all_cameras(data: Path, **config) -> tuple[DataparserOutputs, DataparserOutputs, np.ndarray]:
    train, test = parse(data, "train", **config), parse(data, "test", **config)
    poses = torch.cat([train.cameras.camera_to_worlds, test.cameras.camera_to_worlds]).double().numpy()
    return train, test, poses


# --- synthetic scenes with known poses ---------------------------------------------------------


def test_known_points_lie_on_the_rays_of_their_projections(tmp_path: Path):
    poses = general_rig()
    bounds = np.tile([2.0, 9.0], (len(poses), 1))
    data = write_llff_scene(tmp_path / "rig", poses, bounds)
    rng = np.random.default_rng(0)
    for split, indices in [("train", [1, 2, 3, 4, 5, 6, 7, 9]), ("test", [0, 8])]:
        outputs = parse(data, split)
        assert outputs.cameras.shape[0] == len(indices)
        for camera, view in enumerate(indices):
            pose = poses[view]
            # A point in front of the ground-truth camera, then its pinhole projection (rows down).
            in_camera = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.4), -1.0]) * rng.uniform(2.5, 8.0)
            point = pose[:, :3] @ in_camera + pose[:, 3]
            column = SMALL_WIDTH / 2 + SMALL_FOCAL * in_camera[0] / -in_camera[2]
            row = SMALL_HEIGHT / 2 - SMALL_FOCAL * in_camera[1] / -in_camera[2]
            origin, direction = ray_for_pixel(outputs.cameras, camera, column, row)
            target = to_parsed_frame(outputs, point)
            along = (target - origin) @ direction
            np.testing.assert_allclose(origin + along * direction, target, atol=1e-4)
            np.testing.assert_allclose(along, outputs.dataparser_scale * np.linalg.norm(in_camera), rtol=1e-5)


def test_recentring_scale_intrinsics_and_split(tmp_path: Path):
    poses = general_rig()
    bounds = np.column_stack([np.linspace(2.0, 3.0, len(poses)), np.linspace(8.0, 9.5, len(poses))])
    data = write_llff_scene(tmp_path / "rig", poses, bounds)
    train, test, parsed = all_cameras(data)
    assert [path.name for path in test.image_filenames] == ["IMG_0000.PNG", "IMG_0008.PNG"]
    assert len(train.image_filenames) == 8 and "IMG_0008.PNG" not in {p.name for p in train.image_filenames}

    scale = 1 / (0.75 * 2.0)
    assert train.dataparser_scale == pytest.approx(scale) and test.dataparser_scale == pytest.approx(scale)
    assert train.metadata == {"near": pytest.approx(0.9 * 2.0 * scale), "far": pytest.approx(9.5 * scale)}
    assert all(type(value) is float for value in train.metadata.values())
    for outputs in (train, test):
        cameras = outputs.cameras
        assert torch.all(cameras.fx == SMALL_FOCAL) and torch.all(cameras.fy == SMALL_FOCAL)
        assert torch.all(cameras.cx == SMALL_WIDTH / 2) and torch.all(cameras.cy == SMALL_HEIGHT / 2)
        assert torch.all(cameras.width == SMALL_WIDTH) and torch.all(cameras.height == SMALL_HEIGHT)
        assert cameras.camera_to_worlds.dtype == torch.float32

    # Recentred: the LLFF average of the parsed poses is the identity.
    np.testing.assert_allclose(parsed[:, :, 3].mean(axis=0), 0.0, atol=1e-6)
    z_sum = parsed[:, :, 2].sum(axis=0)
    np.testing.assert_allclose(z_sum / np.linalg.norm(z_sum), [0, 0, 1], atol=1e-6)
    up_sum = parsed[:, :, 1].sum(axis=0)
    assert abs(up_sum[0]) < 1e-5 and up_sum[1] > 0
    # Rigid: relative poses are the ground truth's, with translations scaled.
    original_order = [1, 2, 3, 4, 5, 6, 7, 9, 0, 8]
    for a, b in [(0, 1), (2, 9), (5, 8)]:
        expected = np.linalg.solve(homogeneous(poses[original_order[a]]), homogeneous(poses[original_order[b]]))
        got = np.linalg.solve(homogeneous(parsed[a]), homogeneous(parsed[b]))
        np.testing.assert_allclose(got[:3, :3], expected[:3, :3], atol=1e-5)
        np.testing.assert_allclose(got[:3, 3], scale * expected[:3, 3], atol=1e-5)
    # nerfstudio's own inverse recovers the input poses.
    recovered = test.transform_poses_to_original_space(test.cameras.camera_to_worlds, camera_convention="opengl")
    np.testing.assert_allclose(recovered.double().numpy(), poses[[0, 8]], atol=1e-4)


def homogeneous(pose: np.ndarray) -> np.ndarray:
    return np.vstack([pose, [0, 0, 0, 1]])


def test_rig_with_identity_average_is_only_scaled(tmp_path: Path):
    poses = symmetric_rig()
    bounds = np.tile([1.5, 6.0], (len(poses), 1))
    data = write_llff_scene(tmp_path / "symmetric", poses, bounds)
    train, test, parsed = all_cameras(data, holdout_every=3)
    order = [1, 2, 4, 5, 0, 3]
    expected = poses[order].copy()
    expected[:, :, 3] *= 1 / (0.75 * 1.5)
    np.testing.assert_allclose(parsed, expected, atol=1e-6)
    np.testing.assert_allclose(train.dataparser_transform.numpy(), np.eye(4)[:3], atol=1e-6)


def test_scene_box_holds_the_cameras_and_every_sample_between_near_and_far(tmp_path: Path):
    poses = general_rig()
    data = write_llff_scene(tmp_path / "rig", poses, np.tile([2.0, 9.0], (len(poses), 1)))
    for split in ("train", "test"):
        outputs = parse(data, split)
        aabb = outputs.scene_box.aabb.double().numpy()
        near, far = outputs.metadata["near"], outputs.metadata["far"]
        bundle = outputs.cameras.generate_rays(camera_indices=torch.arange(len(outputs.cameras))[:, None])
        origins, directions = bundle.origins.double().numpy(), bundle.directions.double().numpy()
        forward = -outputs.cameras.camera_to_worlds[:, :, 2].double().numpy()  # (n, 3)
        cosine = np.einsum("hwnc,nc->hwn", directions, forward)[..., None]
        # Both readings of the range: distance along the unit ray (nerfstudio), depth along the axis (LLFF).
        for t in (near, far, near / cosine, far / cosine):
            points = origins + t * directions
            assert np.all(points >= aabb[0] - 1e-5) and np.all(points <= aabb[1] + 1e-5)
        assert np.all(origins >= aabb[0]) and np.all(origins <= aabb[1])
    assert torch.equal(parse(data, "train").scene_box.aabb, parse(data, "val").scene_box.aabb)


# --- the demo scene ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_scene(tmp_path_factory.mktemp("llff-demo") / "scene")


def test_demo_scene_rays_hit_the_ground_truth_depths(demo: Path):
    with np.load(demo / "ground_truth.npz") as truth:
        depth, true_poses = truth["depth"], truth["camera_to_world"]
    outputs = parse(demo, "test")
    assert [path.name for path in outputs.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    transform = np.vstack([outputs.dataparser_transform.double().numpy(), [0, 0, 0, 1]])
    scale = outputs.dataparser_scale
    bundle = outputs.cameras.generate_rays(camera_indices=torch.arange(3)[:, None])  # pixel centres
    for camera, view in enumerate([0, 8, 16]):
        origins = bundle.origins[:, :, camera].double().numpy()
        directions = bundle.directions[:, :, camera].double().numpy()
        axis = -outputs.cameras.camera_to_worlds[camera, :, 2].double().numpy()
        along = scale * depth[view][..., None] / (directions @ axis)[..., None]  # depth → ray distance
        points = origins + along * directions
        # Back to the scene's own frame: the points lie on its planes z = −2.5, −3.5, −6.
        original = (points / scale - transform[:3, 3]) @ np.linalg.inv(transform[:3, :3]).T
        distance = np.abs(original[..., 2, None] + np.array([2.5, 3.5, 6.0])).min(axis=-1)
        assert distance.max() < 1e-4
        true_centre = scale * (transform[:3, :3] @ true_poses[view][:, 3] + transform[:3, 3])
        np.testing.assert_allclose(origins[0, 0], true_centre, atol=1e-5)
    assert outputs.metadata["near"] <= scale * depth.min() and outputs.metadata["far"] >= scale * depth.max()
    # nerfstudio's own dataset reads the listed images at the cameras' size.
    from nerfstudio.data.datasets.base_dataset import InputDataset

    assert InputDataset(outputs)[1]["image"].shape == (depth.shape[1], depth.shape[2], 3)


def test_default_data_is_the_generated_demo_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("NF_PRECOND_CACHE", str(tmp_path / "cache"))
    config = LLFFDataParserConfig()
    assert config.data == tmp_path / "cache" / "demo-llff-v1" and not config.data.exists()
    outputs = config.setup().get_dataparser_outputs(split="train")
    assert (config.data / "poses_bounds.npy").is_file() and len(outputs.image_filenames) == 17
    assert str(config.data) in capsys.readouterr().out.replace("\n", "")
    # Only the default is generated: any other missing path is an error.
    with pytest.raises(UserInputError, match="directory not found"):
        parse(tmp_path / "cache" / "demo-llff-v2")


def test_registered_with_nerfstudio():
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    configs, descriptions = discover_dataparsers()
    assert isinstance(configs.get("llff-data"), LLFFDataParserConfig), "run `pip install -e .` to register entry points"
    assert configs["llff-data"] is llff_dataparser.config and descriptions["llff-data"]


# --- errors ----------------------------------------------------------------------------------------


def _valid(root: Path) -> Path:
    return write_llff_scene(root, symmetric_rig(), np.tile([1.5, 6.0], (6, 1)))


def _replace_poses_bounds(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        np.save(root / "poses_bounds.npy", transform(np.load(root / "poses_bounds.npy")))

    return mutate


def _with_nan(array: np.ndarray) -> np.ndarray:
    array[2, 3] = np.nan
    return array


def _with_zero_bound(array: np.ndarray) -> np.ndarray:
    array[1, 15] = 0.0
    return array


def _resize_one_image(root: Path) -> None:
    Image.new("RGB", (SMALL_WIDTH + 2, SMALL_HEIGHT)).save(root / "images_4" / "IMG_0003.PNG")


BAD_SCENES: dict[str, tuple[Callable[[Path], None] | None, dict, str]] = {
    # case: (mutation of a valid scene, or None for a missing directory; config; expected message part)
    "missing directory": (None, {}, "directory not found"),
    "no poses_bounds.npy": (lambda root: (root / "poses_bounds.npy").unlink(), {}, "poses_bounds.npy not found"),
    "unreadable npy": (lambda root: (root / "poses_bounds.npy").write_bytes(b"not numpy"), {}, "not a readable"),
    "wrong shape": (_replace_poses_bounds(lambda a: a[:, :15]), {}, "shape (6, 15)"),
    "non-finite": (_replace_poses_bounds(_with_nan), {}, "non-finite"),
    "bound not positive": (_replace_poses_bounds(_with_zero_bound), {}, "near ≤ far"),
    "no image folder": (lambda root: (root / "images_4").rename(root / "pictures"), {}, "no images_8/"),
    "missing explicit factor": (lambda root: None, {"downscale_factor": 8}, "images_8/ not found"),
    "too few images": (lambda root: (root / "images_4" / "IMG_0005.PNG").unlink(), {}, "has 5 images"),
    "sizes differ": (_resize_one_image, {}, "differ in size"),
    "corrupt first image": (
        lambda root: (root / "images_4" / "IMG_0000.PNG").write_bytes(b"\x89PNG junk"),
        {},
        "IMG_0000.PNG is not readable",
    ),
    "aspect mismatch": (
        _replace_poses_bounds(lambda a: np.concatenate([a[:, :4], a[:, 4:5] * 2, a[:, 5:]], axis=1)),
        {},
        "aspect ratio",
    ),
    "single view": (
        lambda root: (
            _replace_poses_bounds(lambda a: a[:1])(root),
            [path.unlink() for path in sorted((root / "images_4").iterdir())[1:]],
        ),
        {},
        "need at least 2",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SCENES))
def test_bad_scenes_give_one_line_errors_naming_the_path(tmp_path: Path, case: str):
    mutate, config, expected = BAD_SCENES[case]
    root = tmp_path / "scene"
    if mutate is not None:
        _valid(root)
        mutate(root)
    with pytest.raises(UserInputError) as raised:
        parse(root, **config)
    message = str(raised.value)
    assert "\n" not in message
    assert f"LLFF scene {root}:" in message and expected in message
    assert "an LLFF scene needs poses_bounds.npy" in message


def test_valid_base_scene_parses(tmp_path: Path):
    """The error cases above start from this scene, so each failure is due to its one mutation."""
    assert len(parse(_valid(tmp_path / "scene")).image_filenames) == 5


# --- the real fern capture -------------------------------------------------------------------------


@pytest.fixture
def fern(shared_data: Path) -> Path:
    return shared_data / "nerf_llff_data" / "fern"


@pytest.mark.shared_data
def test_fern(fern: Path):
    raw = np.load(fern / "poses_bounds.npy")
    raw_hwf = raw[0, :15].reshape(3, 5)[:, 4]  # (H, W, focal) at 3024 × 4032
    train, test, parsed = all_cameras(fern)
    assert len(train.image_filenames) == 17 and len(test.image_filenames) == 3
    assert [path.name for path in test.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    assert all(path.parent.name == "images_8" for path in train.image_filenames)

    assert torch.all(train.cameras.width == 504) and torch.all(train.cameras.height == 378)
    expected_focal = raw_hwf[2] * 504 / raw_hwf[1]
    assert expected_focal == pytest.approx(3260.526 / 8, rel=1e-5)
    assert torch.allclose(train.cameras.fx, torch.tensor(expected_focal, dtype=torch.float32))
    assert torch.allclose(test.cameras.fy, torch.tensor(expected_focal, dtype=torch.float32))
    assert torch.all(train.cameras.cx == 252) and torch.all(train.cameras.cy == 189)

    rotations = parsed[:, :, :3]
    np.testing.assert_allclose(rotations.transpose(0, 2, 1) @ rotations, np.tile(np.eye(3), (20, 1, 1)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    np.testing.assert_allclose(parsed[:, :, 3].mean(axis=0), 0.0, atol=1e-5)
    assert np.all(rotations[:, 2, 2] > 0.95)  # every view looks roughly down −z

    scale = 1 / (0.75 * raw[:, 15:17].min())
    assert train.dataparser_scale == pytest.approx(scale)
    assert raw[:, 15:17].min() * train.dataparser_scale == pytest.approx(1 / 0.75)
    assert train.metadata["near"] == pytest.approx(0.9 / 0.75)
    assert train.metadata["far"] == pytest.approx(raw[:, 15:17].max() * scale)

    # Relative poses from the raw file, converted by hand from [down, right, back] to [right, up, back].
    raw_poses = raw[:, :15].reshape(-1, 3, 5)
    opengl = np.stack([raw_poses[:, :, 1], -raw_poses[:, :, 0], raw_poses[:, :, 2], raw_poses[:, :, 3]], axis=-1)
    order = [i for i in range(20) if i % 8] + [0, 8, 16]
    for a, b in [(0, 16), (3, 18), (17, 19)]:
        expected = np.linalg.solve(homogeneous(opengl[order[a]]), homogeneous(opengl[order[b]]))
        got = np.linalg.solve(homogeneous(parsed[a]), homogeneous(parsed[b]))
        np.testing.assert_allclose(got[:3, :3], expected[:3, :3], atol=1e-5)
        np.testing.assert_allclose(got[:3, 3], scale * expected[:3, 3], atol=1e-5)

    aabb = train.scene_box.aabb.double().numpy()
    assert np.all(parsed[:, :, 3] >= aabb[0]) and np.all(parsed[:, :, 3] <= aabb[1])
    assert aabb[0, 2] < -train.metadata["far"] * 0.99  # reaches the far bound down −z
