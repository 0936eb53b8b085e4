"""Occupancy data: loading/normalisation, inside/outside labels, the SAPE point mix, IoU, marching
cubes and previews. Oracles are independent: an analytic sphere (and the icosphere's own inscribed
radius), solid angles known in closed form, hand-counted IoU, mesh volume by the divergence theorem."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nf_precond_plugin.data import meshes
from nf_precond_plugin.data.meshes import (
    OccupancyLabeler,
    heldout_points,
    load_mesh,
    normalise_mesh,
    sample_occupancy_points,
    sample_surface,
    winding_numbers,
    winding_numbers_exact,
)
from nf_precond_plugin.data.occupancy_readout import extract_mesh, iou, render_preview
from nf_precond_plugin.errors import UserInputError

HAS_IGL = importlib.util.find_spec("igl") is not None


def unit_sphere_mesh() -> trimesh.Trimesh:
    return normalise_mesh(trimesh.creation.icosphere(subdivisions=4))


def inscribed_radius(mesh: trimesh.Trimesh) -> float:
    """Distance from the origin to the nearest face plane of a convex, origin-centred polyhedron."""
    return float(np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles[:, 0])).min())


def sphere_test_points(rng: np.random.Generator, count: int) -> np.ndarray:
    """Uniform points in the cube plus points concentrated in the shells either side of the surface."""
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = np.concatenate([rng.uniform(0.80, 0.94, count // 2), rng.uniform(0.951, 1.10, count - count // 2)])
    return np.concatenate([rng.uniform(-1, 1, (count, 3)), directions * radii[:, None]])


def assert_labels_match_sphere(mesh: trimesh.Trimesh, labeler: OccupancyLabeler, points: np.ndarray) -> None:
    radius = np.linalg.norm(points, axis=1)
    # Inside the inscribed sphere ⇒ inside the polyhedron; beyond the circumscribed one (0.95) ⇒
    # outside. The thin shell between, where the polyhedron and the sphere differ, is skipped.
    clear = (radius < inscribed_radius(mesh)) | (radius > 0.95)
    labels = labeler(points)
    assert labels.dtype == bool and labels.shape == (len(points),)
    np.testing.assert_array_equal(labels[clear], radius[clear] < 0.95)
    assert clear.mean() > 0.95


# ----------------------------------------------------------------------------------------------
# normalisation and loading
# ----------------------------------------------------------------------------------------------


def test_normalisation_centres_the_bounding_box_and_puts_the_farthest_vertex_at_095():
    raw = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    raw.apply_translation((10.0, -3.0, 7.0))
    # an unreferenced far-away vertex must neither move the centre nor set the scale
    raw = trimesh.Trimesh(np.vstack([raw.vertices, [[100.0, 100.0, 100.0]]]), raw.faces, process=False)
    mesh = normalise_mesh(raw)
    # box corners at (10 ± 2, −3 ± 1, 7 ± 0.5): centre (10, −3, 7), half-diagonal √(4 + 1 + 0.25)
    half_diagonal = math.sqrt(4 + 1 + 0.25)
    assert len(mesh.vertices) == 8
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 0.95, rtol=1e-12)
    np.testing.assert_allclose(np.abs(mesh.vertices).max(axis=0), np.array([2.0, 1.0, 0.5]) * 0.95 / half_diagonal)
    np.testing.assert_allclose(mesh.volume, 4 * 2 * 1 * (0.95 / half_diagonal) ** 3, rtol=1e-12)


def test_load_mesh_normalises_a_file_and_names_it(tmp_path):
    path = tmp_path / "box.off"
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    box.apply_translation((5.0, 0.0, 0.0))
    box.export(path)
    mesh, source = load_mesh(path)
    assert source == str(path)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 0.95)
    np.testing.assert_allclose(mesh.bounds, [[-0.95 / math.sqrt(3)] * 3, [0.95 / math.sqrt(3)] * 3])
    assert mesh.is_watertight


def test_embedded_default_needs_no_file_and_is_watertight():
    mesh, source = load_mesh(None)
    assert mesh.is_watertight and len(mesh.faces) > 1000
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 0.95)
    expected = "bunny" if importlib.util.find_spec("pymeshlab") is not None else "torus-knot"
    assert expected in source and "embedded" in source


def test_torus_knot_fallback_when_pymeshlab_is_absent(monkeypatch):
    monkeypatch.setattr(meshes, "bunny_path", lambda: None)
    mesh, source = load_mesh(None)
    assert "torus-knot" in source
    assert mesh.is_watertight and mesh.volume > 0
    # a knotted tube is not simply connected: its genus is 1 (Euler characteristic 0)
    assert mesh.euler_number == 0


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


BAD_FILES = {
    "corrupt.off": b"OFF\ngarbage\x00\x01 not a mesh",
    "truncated.off": "OFF\n3 1 0\n0 0 0\n1 0\n",
    "vertices_only.off": "OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n",
    "vertices_only.ply": (
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 0 0\n0 1 0\n"
    ),
    "empty_scene.stl": "hello",
    "unknown.xyzzy": "1 2 3",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_mesh_files_raise_one_line_errors_naming_the_path(tmp_path, name):
    path = _write(tmp_path / name, BAD_FILES[name])
    with pytest.raises(UserInputError) as caught:
        load_mesh(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "image.off",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "not a readable OFF mesh (expected an 'OFF' header, then vertex and face counts; "
            "the file looks like a PNG image)",
        ),
        ("empty.off", b"", "the file is empty (0 bytes); expected a mesh file (obj, ply, off, stl, glb, …)"),
        ("vertices_only.off", b"OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n", "holds 3 vertices but no faces"),
        ("hello.obj", b"hello\n", "not a readable OBJ mesh (expected 'v x y z' vertex lines and 'f i j k' face"),
        ("mesh.png", b"OFF\n", "not a mesh format trimesh reads (expected obj, ply, off, stl, glb, …; found .png)"),
        ("point.obj", b"v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "degenerate mesh, all its vertices coincide"),
        ("line.obj", b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate mesh, every triangle has zero area"),
    ],
)
def test_unusable_mesh_files_say_what_was_expected(tmp_path, name, content, expected):
    path = _write(tmp_path / name, content)
    with pytest.raises(UserInputError) as caught:
        load_mesh(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "unpack" not in message and "Error" not in message


def test_missing_path_and_directory_raise_user_input_errors(tmp_path):
    missing = tmp_path / "nope.obj"
    with pytest.raises(UserInputError, match="no such mesh file") as caught:
        load_mesh(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(UserInputError, match="found a directory") as caught:
        load_mesh(tmp_path)
    assert str(tmp_path) in str(caught.value)


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------


def test_containment_labels_match_the_analytic_sphere():
    mesh = unit_sphere_mesh()
    assert mesh.is_watertight
    labeler = OccupancyLabeler(mesh)
    assert labeler.method.startswith("containment")
    assert_labels_match_sphere(mesh, labeler, sphere_test_points(np.random.default_rng(1), 3000))


@pytest.mark.parametrize(
    "backend", ["exact", pytest.param("libigl", marks=pytest.mark.skipif(not HAS_IGL, reason="igl not installed"))]
)
def test_winding_number_labels_match_the_analytic_sphere(backend):
    mesh = unit_sphere_mesh()
    labeler = OccupancyLabeler(mesh, use="winding_numbers", winding_backend=backend)
    assert labeler.method.startswith("generalised winding numbers")
    assert_labels_match_sphere(mesh, labeler, sphere_test_points(np.random.default_rng(2), 1000))


def test_exact_winding_number_equals_closed_form_solid_angles():
    cube = trimesh.creation.box(extents=(2.0, 2.0, 2.0))  # outward-oriented
    assert cube.volume > 0
    # from the centre, each face subtends 4π/6; a point outside sees a total of zero
    np.testing.assert_allclose(winding_numbers_exact(cube.vertices, cube.faces, np.zeros((1, 3))), [1.0], atol=1e-6)
    top = cube.faces[cube.triangles_center[:, 2] > 0.99]
    np.testing.assert_allclose(winding_numbers_exact(cube.vertices, top, np.zeros((1, 3))), [1 / 6], atol=1e-6)
    np.testing.assert_allclose(winding_numbers_exact(cube.vertices, cube.faces, [[3.0, 0.2, -0.1]]), [0.0], atol=1e-6)
    # inverted orientation flips the sign
    np.testing.assert_allclose(
        winding_numbers_exact(cube.vertices, cube.faces[:, ::-1], [[0.1, 0.2, 0.3]]), [-1.0], atol=1e-6
    )
    # a single triangle (0,0,0), (1,0,0), (0,1,0) seen from (0,0,1): its solid angle is the area of
    # the spherical triangle of the directions to its corners, by Girard's theorem the angle excess
    directions = np.array([[1.0, 0, -1], [0, 1.0, -1], [0, 0, -1.0]])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def angle(a, b, c):  # the spherical triangle's angle at a
        u = np.cross(a, b)
        v = np.cross(a, c)
        return math.acos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    a, b, c = directions
    excess = angle(a, b, c) + angle(b, c, a) + angle(c, a, b) - math.pi
    triangle_vertices = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    w = winding_numbers_exact(triangle_vertices, np.array([[0, 1, 2]]), [[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(np.abs(w), [excess / (4 * math.pi)], rtol=1e-5)


def test_non_watertight_mesh_warns_and_uses_winding_numbers():
    sphere = unit_sphere_mesh()
    keep = np.ones(len(sphere.faces), dtype=bool)
    keep[[0, 700, 1500, 2600, 4000]] = False
    holed = trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)
    assert not holed.is_watertight
    with pytest.warns(UserWarning, match="not watertight"):
        labeler = OccupancyLabeler(holed)
    assert labeler.method.startswith("generalised winding numbers")
    points = sphere_test_points(np.random.default_rng(3), 1000)
    radius = np.linalg.norm(points, axis=1)
    clear = (radius < 0.9) | (radius > 1.0)
    np.testing.assert_array_equal(labeler(points)[clear], radius[clear] < 0.95)
    # the exact path too, and an inside-out copy (|w| > ½)
    inverted = trimesh.Trimesh(holed.vertices, holed.faces[:, ::-1], process=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mesh in (holed, inverted):
            exact = OccupancyLabeler(mesh, winding_backend="exact")
            np.testing.assert_array_equal(exact(points)[clear], radius[clear] < 0.95)


def test_watertight_mesh_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OccupancyLabeler(unit_sphere_mesh())


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------


def test_surface_samples_are_uniform_by_area():
    # two triangles of area 0.5 and 1.5, in different planes
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 1, 5]], dtype=float)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2], [3, 4, 5]], process=False)
    points = sample_surface(mesh, 40_000, np.random.default_rng(0))
    on_big = points[:, 2] > 2.5
    assert abs(on_big.mean() - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 40_000)
    small = points[~on_big]
    assert (small[:, 0] >= -1e-12).all() and (small[:, 1] >= -1e-12).all() and (small[:, :2].sum(1) <= 1 + 1e-12).all()
    # uniform on the triangle x, y ≥ 0, x + y ≤ 1: E[x] = 1/3
    assert abs(small[:, 0].mean() - 1 / 3) < 0.01


def test_occupancy_points_follow_the_sape_mix():
    mesh = unit_sphere_mesh()
    count = 30_001
    points = sample_occupancy_points(mesh, count, np.random.default_rng(5), shuffle=False)
    assert points.shape == (count, 3) and points.dtype == np.float32
    assert np.abs(points).max() <= 1.0
    third = count // 3
    near, far, uniform = points[:third], points[third : 2 * third], points[2 * third :]
    assert len(uniform) == 10_001
    # the uniform third: U(−1, 1) has mean 0 and variance 1/3 in each coordinate
    n = len(uniform)
    assert np.all(np.abs(uniform.mean(axis=0)) < 4 * math.sqrt(1 / 3 / n))
    assert np.all(np.abs(uniform.var(axis=0) - 1 / 3) < 4 * math.sqrt(4 / 45 / n))
    # near-surface thirds: the signed radial offset from the sphere (radius 0.95, polyhedral error
    # < 0.002) is ≈ the normal component of the isotropic noise, N(0, σ²)
    offset_near = np.linalg.norm(near, axis=1) - 0.95
    assert np.abs(offset_near).max() < 5 * 0.01 + 0.002
    assert abs(offset_near.std() - 0.01) < 0.001
    offset_far = np.linalg.norm(far, axis=1) - 0.95
    assert np.abs(offset_far).max() < 5 * 0.1 + 0.01
    assert 0.085 < offset_far.std() < 0.11  # clipping to the cube trims a little of the outer tail
    # shuffling permutes the same points
    shuffled = sample_occupancy_points(mesh, count, np.random.default_rng(5))
    assert not np.array_equal(shuffled, points)
    np.testing.assert_array_equal(np.unique(shuffled, axis=0), np.unique(points, axis=0))


def test_heldout_points_are_half_uniform_half_near_surface():
    mesh = unit_sphere_mesh()
    points = heldout_points(mesh, 20_000, np.random.default_rng(6))
    assert points.shape == (20_000, 3) and points.dtype == np.float32
    uniform, near = points[:10_000], points[10_000:]
    assert np.all(np.abs(uniform.var(axis=0) - 1 / 3) < 4 * math.sqrt(4 / 45 / 10_000))
    assert np.abs(np.linalg.norm(near, axis=1) - 0.95).max() < 5 * 0.01 + 0.002


# ----------------------------------------------------------------------------------------------
# IoU
# ----------------------------------------------------------------------------------------------


def test_iou_hand_computed():
    a = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    assert iou(a, b) == pytest.approx(2 / 4)  # ∩ = {0, 4}, ∪ = {0, 1, 2, 4}
    assert iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(0.5)
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # empty union: defined as 1
    with pytest.raises(ValueError):
        iou(a, b[:3])


# ----------------------------------------------------------------------------------------------
# marching cubes
# ----------------------------------------------------------------------------------------------


def test_marching_cubes_recovers_an_analytic_sphere():
    resolution = 64
    spacing = 2 / (resolution - 1)
    calls = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return 0.5 - x.norm(dim=-1, keepdim=True)  # (N, 1) is accepted

    mesh = extract_mesh(logits, resolution=resolution, chunk=50_000)
    assert max(size for size, _ in calls) <= 50_000 and not any(grad for _, grad in calls)
    assert sum(size for size, _ in calls) == resolution**3
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.5).max() < spacing
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.03)  # positive: outward faces


def test_marching_cubes_maps_axes_back_to_world_coordinates():
    centre = torch.tensor([0.3, -0.2, 0.1])
    mesh = extract_mesh(lambda x: 0.4 - (x - centre).norm(dim=-1), resolution=48)
    np.testing.assert_allclose(mesh.center_mass, centre.numpy(), atol=2 / 47)
    np.testing.assert_allclose(mesh.bounds, [centre.numpy() - 0.4, centre.numpy() + 0.4], atol=2 / 47)


def test_marching_cubes_without_a_crossing_gives_an_empty_mesh_and_cut_surfaces_are_closed():
    for value in (-1.0, 1.0):
        empty = extract_mesh(lambda x, v=value: torch.full((x.shape[0],), v), resolution=16)
        assert len(empty.faces) == 0 and len(empty.vertices) == 0
    cut = extract_mesh(lambda x: 1.4 - x.norm(dim=-1), resolution=32)  # ball of radius 1.4 ∩ cube
    assert cut.is_watertight and np.abs(cut.vertices).max() <= 1.0
    assert 6.0 < cut.volume <= 8.0


def test_marching_cubes_tolerates_non_finite_logits():
    def logits(x):
        out = 0.5 - x.norm(dim=-1)
        out[0] = float("nan")
        return out

    with pytest.warns(UserWarning, match="non-finite"):
        mesh = extract_mesh(logits, resolution=24)
    assert len(mesh.faces) > 0


# ----------------------------------------------------------------------------------------------
# previews
# ----------------------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(iio.imread(path))


def test_render_preview_writes_pngs_for_a_sphere_and_an_empty_mesh(tmp_path):
    path = render_preview(unit_sphere_mesh(), tmp_path / "sub" / "sphere.png", size=96, title="sphere")
    image = _read_png(path)
    assert image.shape[:2] == (96, 192)
    rgb = image[..., :3].astype(float)
    # the sphere covers the middle of each view, shaded and not white; the corners are background
    assert rgb[48, 48].max() < 250 and rgb[48, 144].max() < 250
    assert rgb[-2, 1].min() > 250 and rgb[-2, -2].min() > 250
    empty = _read_png(render_preview(trimesh.Trimesh(), tmp_path / "empty.png", size=96))
    assert empty.shape[:2] == (96, 192)
    assert (empty[..., :3] < 128).any()  # the words "empty mesh"


# ----------------------------------------------------------------------------------------------
# the real armadillo
# ----------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_armadillo_labels_by_containment_agree_with_winding_numbers_and_volume(shared_data):
    path = shared_data / "meshes" / "armadillo.off"
    mesh, source = load_mesh(path)
    assert source == str(path)
    assert len(mesh.faces) == 52_000 and mesh.is_watertight
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1).max(), 0.95)
    labeler = OccupancyLabeler(mesh)
    assert labeler.method == "containment (embree ray tests)"
    rng = np.random.default_rng(7)
    # inside fraction of uniform points ≈ volume / 8 (volume by the divergence theorem, not rays)
    uniform = rng.uniform(-1, 1, (20_000, 3))
    expected = mesh.volume / 8
    assert 0.01 < expected < 0.2
    assert abs(labeler(uniform).mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000)
    # containment vs winding numbers on points from the training mix (exact torch sum: fewer points)
    count = 2000 if HAS_IGL else 300
    points = sample_occupancy_points(mesh, count, rng)
    with_rays = labeler(points)
    with_winding = np.abs(winding_numbers(mesh, points)) > 0.5
    assert (with_rays == with_winding).mean() > 0.995
