"""The Gaussian NeRF model against independent computations: an exact Hessian, closed-form rendering."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.cameras.rays import RayBundle  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402

from nf_precond_plugin.curvature import hvp  # noqa: E402
from nf_precond_plugin.nerf.model import GaussianNeRFModelConfig  # noqa: E402

NEAR, FAR = 1.2, 6.0


def tiny_model(**overrides):
    settings = dict(num_layers=2, hidden_dim=6, geo_feat_dim=4, hidden_dim_color=4, num_coarse_samples=8)
    settings.update(overrides)
    box = SceneBox(aabb=torch.tensor([[-2.0, -2.0, -7.0], [2.0, 2.0, 0.0]]))
    return GaussianNeRFModelConfig(**settings).setup(
        scene_box=box, num_train_data=4, metadata={"near": NEAR, "far": FAR}
    )


def forward_rays(n: int = 12, dtype: torch.dtype = torch.float32) -> RayBundle:
    generator = torch.Generator().manual_seed(1)
    offsets = torch.randn(n, 3, generator=generator, dtype=dtype) * 0.2
    directions = torch.nn.functional.normalize(offsets + torch.tensor([0.0, 0.0, -1.0], dtype=dtype), dim=-1)
    return RayBundle(
        origins=torch.randn(n, 3, generator=generator, dtype=dtype) * 0.1,
        directions=directions,
        pixel_area=torch.full((n, 1), 1e-4, dtype=dtype),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


@pytest.mark.parametrize("importance", [0, 4])
def test_hessian_vector_product_through_sampling_and_rendering_matches_exact_hessian(importance):
    model = tiny_model(num_importance_samples=importance).double()
    model.eval()  # no stratified jitter: the loss is a fixed function of the parameters
    rays = forward_rays(dtype=torch.float64)
    target = torch.rand(len(rays), 3, dtype=torch.float64)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel()])
    shapes = [p.shape for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        values = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        outputs = torch.func.functional_call(model, values, (rays,))
        return sum(model.get_loss_dict(outputs, {"image": target}).values())

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    probe = torch.randint(0, 2, flat.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    exact = torch.autograd.functional.hessian(loss_of, flat) @ probe

    outputs = model(rays)
    loss = sum(model.get_loss_dict(outputs, {"image": target}).values())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    probes = list(torch.split(probe, [math.prod(s) for s in shapes]))
    products = hvp(list(grads), list(params), [v.view(s) for v, s in zip(probes, shapes)])
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in products]), exact, rtol=1e-6, atol=1e-9)


def test_constant_density_renders_the_closed_form_opacity_colour_and_depth():
    """σ, c constant along a ray: opacity 1 − e^{−σ(far−near)}, colour c·opacity + background, analytic depth."""
    model = tiny_model(num_coarse_samples=256, background_color="black")
    model.eval()
    density, colour_logit = 0.35, torch.tensor([0.3, -1.0, 2.0])
    with torch.no_grad():
        head = model.field.position_mlp.layers[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = math.log(math.expm1(density))  # softplus⁻¹(σ)
        colour_head = model.field.color_mlp.layers[-1]
        colour_head.weight.zero_()
        colour_head.bias.copy_(colour_logit)
    rays = forward_rays()
    outputs = model(rays)
    length = FAR - NEAR  # the collider's near/far are distances along the (unit) ray direction
    opacity = 1.0 - math.exp(-density * length)
    torch.testing.assert_close(outputs["accumulation"], torch.full((len(rays), 1), opacity), rtol=1e-5, atol=1e-6)
    expected_rgb = torch.sigmoid(colour_logit) * opacity
    torch.testing.assert_close(outputs["rgb"], expected_rgb.expand(len(rays), 3), rtol=1e-5, atol=1e-6)
    # E[t] under the density σe^{−σ(t−near)} truncated to [near, far], normalised by the opacity.
    tail = math.exp(-density * length)
    mean_depth = NEAR + (1.0 / density - tail * (length + 1.0 / density)) / opacity
    # Disparity bins are wide near `far`; the quadrature's error there is what the tolerance allows.
    torch.testing.assert_close(outputs["depth"], torch.full((len(rays), 1), mean_depth), rtol=2e-2, atol=0.0)


def test_samples_are_uniform_in_disparity_between_the_dataparser_bounds():
    model = tiny_model(num_coarse_samples=16)
    model.eval()
    rays = model.collider(forward_rays(3))
    samples = model.sampler_disparity(rays)
    starts = samples.frustums.starts[..., 0]
    ends = samples.frustums.ends[..., 0]
    edges = torch.cat([starts, ends[:, -1:]], dim=-1)
    expected = 1.0 / torch.linspace(1.0 / NEAR, 1.0 / FAR, 17)
    torch.testing.assert_close(edges, expected.expand_as(edges), rtol=1e-5, atol=1e-6)


def test_training_mode_jitters_each_disparity_edge_within_half_a_bin():
    """Stratified: edge k sits uniformly in [k − ½, k + ½]/N of the way from 1/near to 1/far (clipped)."""
    bins = 16
    model = tiny_model(num_coarse_samples=bins)
    model.train()
    rays = model.collider(forward_rays(64))
    frustums = model.sampler_disparity(rays).frustums
    edges = torch.cat([frustums.starts[..., 0], frustums.ends[:, -1:, 0]], dim=-1)
    fraction = (1.0 / edges - 1.0 / NEAR) / (1.0 / FAR - 1.0 / NEAR)
    k = torch.arange(bins + 1, dtype=torch.float32)
    low, high = ((k - 0.5) / bins).clamp(0, 1), ((k + 0.5) / bins).clamp(0, 1)
    assert torch.all(fraction >= low - 1e-5) and torch.all(fraction <= high + 1e-5)
    assert fraction[:, 1:-1].std(dim=0).min() > 0.1 / bins  # really jittered, per ray


def test_outputs_have_the_keys_the_viewer_and_ns_render_read():
    model = tiny_model(num_importance_samples=4)
    outputs = model(forward_rays(5))
    for key, width in (("rgb", 3), ("depth", 1), ("accumulation", 1)):
        assert outputs[key].shape == (5, width)
    assert torch.all((outputs["accumulation"] >= 0) & (outputs["accumulation"] <= 1 + 1e-6))


def test_bounds_without_dataparser_metadata_fall_back_to_the_scene_box():
    box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    model = GaussianNeRFModelConfig(num_layers=2, hidden_dim=4, geo_feat_dim=2, hidden_dim_color=2).setup(
        scene_box=box, num_train_data=1, metadata={}
    )
    rays = RayBundle(
        origins=torch.tensor([[0.0, 0.0, 4.0]]),
        directions=torch.tensor([[0.0, 0.0, -1.0]]),
        pixel_area=torch.ones(1, 1),
        camera_indices=torch.zeros(1, 1, dtype=torch.long),
    )
    clipped = model.collider(rays)
    torch.testing.assert_close(clipped.nears, torch.tensor([[2.5]]))
    torch.testing.assert_close(clipped.fars, torch.tensor([[5.5]]))


def test_invalid_bounds_are_refused():
    with pytest.raises(ValueError, match="near/far"):
        tiny_model(near_plane=3.0, far_plane=2.0)


def test_llff_depth_bounds_become_per_ray_distances_that_end_on_the_depth_planes():
    """A corner ray's first and last samples lie on the planes z = −near and z = −far of the camera."""
    from nerfstudio.cameras.cameras import Cameras

    camera = Cameras(
        camera_to_worlds=torch.eye(4)[None, :3, :], fx=20.0, fy=20.0, cx=16.0, cy=12.0, width=32, height=24
    )
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    corner = rays[0, 0]
    model = tiny_model()
    bounded = model.collider(corner)
    near_point = corner.origins + corner.directions * bounded.nears
    far_point = corner.origins + corner.directions * bounded.fars
    torch.testing.assert_close(near_point[..., 2].reshape(1), torch.tensor([-NEAR]))
    torch.testing.assert_close(far_point[..., 2].reshape(1), torch.tensor([-FAR]))
    assert bounded.fars.item() > FAR * 1.1  # the corner is well off-axis: distance > depth


def test_a_crop_box_only_narrows_the_depth_bounds():
    """Rays that arrive with a crop's [t0, t1] (viewer, ns-render) keep t within [near, far] ∩ [t0, t1]."""
    model = tiny_model()
    rays = forward_rays(3)
    rays.nears = torch.tensor([[0.0], [2.0], [7.0]])
    rays.fars = torch.tensor([[3.0], [9.0], [8.0]])
    bounded = model.collider(rays)
    torch.testing.assert_close(bounded.nears, torch.tensor([[NEAR], [2.0], [7.0]]))
    torch.testing.assert_close(bounded.fars, torch.tensor([[3.0], [FAR], [7.0]]))  # an empty range stays empty
    assert torch.isfinite(model(forward_rays(3))["rgb"]).all()
