"""The embedded demo scene: deterministic, offline, LLFF-formatted, and geometrically consistent.

Oracles: the files against the ground truth written beside them (axis map, hwf, bounds), and the
images against each other through the ground-truth poses and depths (a pixel re-projected into
another view shows the same colour), which holds only if renderer, poses and depths agree.
"""

from __future__ import annotations

import socket
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from nf_precond_plugin.data import demo_scene
from nf_precond_plugin.data.demo_scene import ensure_demo_scene, generate_demo_scene
from nf_precond_plugin.errors import UserInputError

NUM_VIEWS, WIDTH, HEIGHT, FACTOR = 20, 80, 60, 8
PLANE_DEPTHS = (2.5, 3.5, 6.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_scene(tmp_path_factory.mktemp("demo") / "scene")


def load_ground_truth(scene: Path) -> dict[str, np.ndarray]:
    with np.load(scene / "ground_truth.npz") as archive:
        return {name: archive[name] for name in archive.files}


def load_images(scene: Path) -> np.ndarray:
    return np.stack([iio.imread(path) for path in sorted((scene / f"images_{FACTOR}").iterdir())])


def pixel_centre_rays(camera_to_world: np.ndarray, focal: float) -> np.ndarray:
    """(H, W, 3) world directions with camera-frame z = −1 (so the ray parameter is depth)."""
    columns, rows = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    camera = np.stack([(columns - WIDTH / 2) / focal, -(rows - HEIGHT / 2) / focal, -np.ones_like(rows)], -1)
    return camera @ camera_to_world[:, :3].T


def test_generation_is_byte_identical_and_offline(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo scene must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    again = generate_demo_scene(tmp_path / "again")
    first_files = sorted(path.relative_to(scene) for path in scene.rglob("*") if path.is_file())
    second_files = sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    assert first_files == second_files
    for relative in first_files:
        assert (scene / relative).read_bytes() == (again / relative).read_bytes(), relative


def test_layout_sizes_and_hwf(scene: Path):
    names = sorted(path.name for path in (scene / f"images_{FACTOR}").iterdir())
    assert names == [f"image{index:03d}.png" for index in range(NUM_VIEWS)]
    images = load_images(scene)
    assert images.shape == (NUM_VIEWS, HEIGHT, WIDTH, 3) and images.dtype == np.uint8

    poses_bounds = np.load(scene / "poses_bounds.npy")
    truth = load_ground_truth(scene)
    assert poses_bounds.shape == (NUM_VIEWS, 17)
    assert truth["camera_to_world"].shape == (NUM_VIEWS, 3, 4)
    assert truth["depth"].shape == (NUM_VIEWS, HEIGHT, WIDTH)
    assert (int(truth["width"]), int(truth["height"])) == (WIDTH, HEIGHT)
    hwf = poses_bounds[:, :15].reshape(-1, 3, 5)[:, :, 4]
    expected_hwf = [FACTOR * HEIGHT, FACTOR * WIDTH, FACTOR * float(truth["focal"])]
    np.testing.assert_allclose(hwf, np.tile(expected_hwf, (NUM_VIEWS, 1)))


def test_poses_are_the_ground_truth_in_llff_axes(scene: Path):
    llff = np.load(scene / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    opengl = load_ground_truth(scene)["camera_to_world"]
    # LLFF columns are [down, right, back]; OpenGL's are [right, up, back].
    np.testing.assert_allclose(llff[:, :, 0], -opengl[:, :, 1])
    np.testing.assert_allclose(llff[:, :, 1], opengl[:, :, 0])
    np.testing.assert_allclose(llff[:, :, 2], opengl[:, :, 2])
    np.testing.assert_allclose(llff[:, :, 3], opengl[:, :, 3])
    rotations = opengl[:, :, :3]
    identities = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations.transpose(0, 2, 1) @ rotations, identities, atol=1e-12)
    # A handheld forward-facing capture: centres within ~0.3 of each other, looking down −z.
    centres = opengl[:, :, 3]
    assert np.ptp(centres[:, 0]) < 0.35 and np.ptp(centres[:, 1]) < 0.35 and np.ptp(centres[:, 2]) < 0.05
    assert np.all(rotations[:, 2, 2] > 0.99)  # the back axis is ≈ +z, so the view direction is ≈ −z
    assert len({tuple(np.round(centre, 6)) for centre in centres}) == NUM_VIEWS


def test_depths_lie_on_the_planes_and_inside_the_bounds(scene: Path):
    truth = load_ground_truth(scene)
    bounds = np.load(scene / "poses_bounds.npy")[:, 15:17]
    depth = truth["depth"]
    assert np.all(bounds[:, 0] <= depth.reshape(NUM_VIEWS, -1).min(axis=1))
    assert np.all(bounds[:, 1] >= depth.reshape(NUM_VIEWS, -1).max(axis=1))
    assert np.all(bounds[:, 0] >= 0.9 * depth.reshape(NUM_VIEWS, -1).min(axis=1))  # tight, not just valid
    assert np.all(bounds[:, 1] <= 1.1 * depth.reshape(NUM_VIEWS, -1).max(axis=1))
    seen = set()
    for pose, view_depth in zip(truth["camera_to_world"], depth):
        points = pose[:, 3] + view_depth[..., None] * pixel_centre_rays(pose, float(truth["focal"]))
        distance_to_planes = np.abs(points[..., 2, None] + np.asarray(PLANE_DEPTHS))
        assert distance_to_planes.min(axis=-1).max() < 1e-4
        seen.update(np.argmin(distance_to_planes, axis=-1).ravel().tolist())
    assert seen == {0, 1, 2}


def test_views_are_textured_and_consistent_through_the_ground_truth(scene: Path):
    truth = load_ground_truth(scene)
    images = load_images(scene).astype(np.float64) / 255.0
    assert np.all(images.reshape(NUM_VIEWS, -1).std(axis=1) > 0.1)
    focal = float(truth["focal"])
    source, target = 0, NUM_VIEWS - 1
    source_pose, target_pose = truth["camera_to_world"][source], truth["camera_to_world"][target]
    points = source_pose[:, 3] + truth["depth"][source][..., None] * pixel_centre_rays(source_pose, focal)
    # Project into the target view with the pinhole model (rows grow downwards).
    in_camera = (points - target_pose[:, 3]) @ target_pose[:, :3]
    column = WIDTH / 2 + focal * in_camera[..., 0] / -in_camera[..., 2] - 0.5
    row = HEIGHT / 2 - focal * in_camera[..., 1] / -in_camera[..., 2] - 0.5
    nearest_column, nearest_row = np.round(column).astype(int), np.round(row).astype(int)
    visible = (nearest_column >= 0) & (nearest_column < WIDTH) & (nearest_row >= 0) & (nearest_row < HEIGHT)
    assert visible.mean() > 0.8
    reprojected = np.abs(images[target][nearest_row[visible], nearest_column[visible]] - images[source][visible])
    unmoved = np.abs(images[target][visible] - images[source][visible])
    # Parallax: the views differ pixel for pixel, but agree once re-projected through depth and poses.
    assert np.median(unmoved) > 3 * np.median(reprojected)
    assert np.median(reprojected) < 0.03
    assert np.abs(column - np.arange(WIDTH)[None, :]).max() > 1.0  # the near plane moves by over a pixel


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    written = []

    def failing_writer(path: Path, image: np.ndarray) -> None:
        if len(written) == 3:
            raise OSError("disk full (simulated)")
        written.append(path)
        iio.imwrite(path, (image * 255).astype(np.uint8), extension=".png")

    monkeypatch.setattr(demo_scene, "write_image", failing_writer)
    with pytest.raises(OSError, match="simulated"):
        generate_demo_scene(tmp_path / "scene")
    assert len(written) == 3 and not any(path.exists() for path in written)
    assert list(tmp_path.iterdir()) == []


def test_ensure_generates_once_and_refuses_a_foreign_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NF_PRECOND_CACHE", str(tmp_path / "cache"))
    path = ensure_demo_scene()
    assert path == tmp_path / "cache" / "demo-llff-v1" and (path / "poses_bounds.npy").is_file()
    reference = tmp_path / "reference"
    reference.mkdir()
    assert path.stat().st_mode == reference.stat().st_mode  # permissions as any new directory's
    assert [entry.name for entry in path.parent.iterdir()] == ["demo-llff-v1"]  # no staging leftovers

    def must_not_regenerate(*args, **kwargs):
        raise AssertionError("an existing scene must be reused")

    monkeypatch.setattr(demo_scene, "generate_demo_scene", must_not_regenerate)
    assert ensure_demo_scene() == path

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a scene")
    with pytest.raises(UserInputError, match=str(foreign)):
        ensure_demo_scene(foreign)
    assert (foreign / "notes.txt").read_text() == "not a scene"


def test_generate_refuses_a_non_empty_directory_and_cli_writes_a_scene(tmp_path: Path, capsys: pytest.CaptureFixture):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(UserInputError, match="not an empty directory"):
        generate_demo_scene(occupied)

    out = tmp_path / "small"
    demo_scene.main([str(out), "--num-views", "3", "--width", "16", "--height", "12", "--factor", "4"])
    assert capsys.readouterr().out.strip() == str(out)
    assert np.load(out / "poses_bounds.npy").shape == (3, 17)
    assert iio.imread(out / "images_4" / "image002.png").shape == (12, 16, 3)
