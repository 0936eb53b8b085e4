"""The Gaussian NeRF model: disparity-stratified samples, an optional PDF pass, volume rendering.

Samples t_i are stratified in inverse depth between the near and far bounds
(1/t = (1−u)/near + u/far, u jittered per bin) — forward-facing scenes need detail close to the
camera. With ``num_importance_samples`` > 0 a second pass draws samples from the first pass's
weights (treated as constants) and the same field renders both, mip-NeRF style, so a single
network carries the curvature estimate. Colour, depth and opacity follow the usual quadrature
    w_i = T_i (1 − exp(−σ_i δ_i)),  T_i = exp(−Σ_{j<i} σ_j δ_j),  C = Σ w_i c_i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.configs.config_utils import to_immutable_dict
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import LinearDisparitySampler, PDFSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider, SceneCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps, misc
from torch import Tensor
from torch.nn import Parameter

from nf_precond_plugin.nerf.field import GaussianRadianceField
from nf_precond_plugin.nerf.metrics import image_metrics
from nf_precond_plugin.nerf.viewer import ViewerStart


class DepthBoundsCollider(SceneCollider):
    """Every ray spans the depths [near, far] along the camera axis, in training and evaluation alike.

    LLFF's bounds are depths (z), while nerfstudio measures t along unit directions, so a ray at
    angle θ off-axis gets t ∈ [near, far]/cos θ; nerfstudio's cameras store 1/cos θ as the ray
    metadata "directions_norm". (nerfstudio's NearFarCollider would also start evaluation rays at
    t = 0, where disparity sampling puts its first bin at infinity.)
    """

    def __init__(self, near_plane: float, far_plane: float) -> None:
        super().__init__()
        self.near_plane = near_plane
        self.far_plane = far_plane

    def forward(self, ray_bundle: RayBundle) -> RayBundle:
        # A crop box (viewer, ns-render) arrives as nears/fars already set; nerfstudio's collider
        # would then skip the bounds, and disparity sampling from t = 0 gives infinite positions.
        crop_nears, crop_fars = ray_bundle.nears, ray_bundle.fars
        ray_bundle = self.set_nears_and_fars(ray_bundle)
        if crop_nears is not None and crop_fars is not None:
            ray_bundle.nears = torch.maximum(ray_bundle.nears, crop_nears)
            ray_bundle.fars = torch.maximum(torch.minimum(ray_bundle.fars, crop_fars), ray_bundle.nears)
        return ray_bundle

    def set_nears_and_fars(self, ray_bundle: RayBundle) -> RayBundle:
        stretch = ray_bundle.metadata.get("directions_norm") if ray_bundle.metadata else None
        if stretch is None:
            stretch = torch.ones_like(ray_bundle.origins[..., :1])
        ray_bundle.nears = stretch * self.near_plane
        ray_bundle.fars = stretch * self.far_plane
        return ray_bundle


@dataclass
class GaussianNeRFModelConfig(ModelConfig):
    """A GARF-style NeRF: Gaussian activations on raw coordinates, no positional encoding."""

    _target: type = field(default_factory=lambda: GaussianNeRFModel)
    num_layers: int = 8
    """Hidden Gaussian layers of the position MLP (the paper: 8)."""
    hidden_dim: int = 256
    """Width of the position MLP (the paper: 256)."""
    geo_feat_dim: int = 256
    """Width of the geometry feature passed to the colour branch."""
    num_layers_color: int = 1
    """Hidden Gaussian layers of the view-direction branch."""
    hidden_dim_color: int = 128
    """Width of the view-direction branch."""
    sigma: float = 0.1
    """Width σ of the Gaussian activation exp(−z²/2σ²)."""
    num_coarse_samples: int = 64
    """Samples per ray, stratified in disparity."""
    num_importance_samples: int = 0
    """Extra samples per ray drawn from the first pass's weights (0: no PDF pass)."""
    near_plane: float | None = None
    """Near bound; None takes the dataparser's (llff-data) or clips rays to the scene box."""
    far_plane: float | None = None
    """Far bound; None takes the dataparser's (llff-data) or clips rays to the scene box."""
    background_color: Literal["random", "last_sample", "black", "white"] = "last_sample"
    """Colour behind the last sample ('last_sample' suits forward-facing scenes, 'white' Blender)."""
    enable_collider: bool = True
    collider_params: dict[str, float] | None = None
    """Unused: near/far come from ``near_plane``/``far_plane`` or the dataparser."""
    loss_coefficients: dict[str, float] = to_immutable_dict({"rgb_loss_coarse": 1.0, "rgb_loss": 1.0})
    eval_num_rays_per_chunk: int = 2048


class GaussianNeRFModel(Model):
    config: GaussianNeRFModelConfig

    def populate_modules(self) -> None:
        # The base class would build a collider from collider_params; ours depends on the data.
        self.field = GaussianRadianceField(
            self.scene_box.aabb,
            num_layers=self.config.num_layers,
            hidden_dim=self.config.hidden_dim,
            geo_feat_dim=self.config.geo_feat_dim,
            num_layers_color=self.config.num_layers_color,
            hidden_dim_color=self.config.hidden_dim_color,
            sigma=self.config.sigma,
        )
        self.near_far = self._near_far()
        if self.near_far is not None:
            self.collider = DepthBoundsCollider(*self.near_far)
        else:
            self.collider = AABBBoxCollider(self.scene_box, near_plane=0.05)
        self.sampler_disparity = LinearDisparitySampler(num_samples=self.config.num_coarse_samples)
        self.sampler_pdf = (
            PDFSampler(num_samples=self.config.num_importance_samples, include_original=True)
            if self.config.num_importance_samples > 0
            else None
        )
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.rgb_loss = MSELoss()
        # nerfstudio's viewer hands the viewer to every ViewerControl it finds on the pipeline: this one
        # starts each browser at the first training view (see nerf/viewer.py).
        self.viewer_start = ViewerStart()

    def _near_far(self) -> tuple[float, float] | None:
        metadata = self.kwargs.get("metadata") or {}
        near = self.config.near_plane if self.config.near_plane is not None else metadata.get("near")
        far = self.config.far_plane if self.config.far_plane is not None else metadata.get("far")
        if near is None or far is None:
            return None
        if not 0.0 < float(near) < float(far):
            raise ValueError(f"invalid near/far planes ({near}, {far}): expected 0 < near < far")
        return float(near), float(far)

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {"fields": list(self.field.parameters())}

    def _render(self, ray_samples: RaySamples) -> tuple[dict[str, Tensor], Tensor]:
        field_outputs = self.field(ray_samples)
        weights = ray_samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
        outputs = {
            "rgb": self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, ray_samples),
        }
        return outputs, weights

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:
        ray_samples = self.sampler_disparity(ray_bundle)
        outputs, weights = self._render(ray_samples)
        if self.sampler_pdf is None:
            return outputs
        # Resampling positions are constants: no gradient (and no Hessian) flows through them.
        fine_samples = self.sampler_pdf(ray_bundle, ray_samples, weights.detach())
        fine_outputs, _ = self._render(fine_samples)
        fine_outputs.update({f"{key}_coarse": value for key, value in outputs.items()})
        return fine_outputs

    def get_metrics_dict(self, outputs, batch) -> dict[str, Tensor]:
        image = batch["image"].to(self.device)
        pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=image
        )
        mse = torch.mean((pred.detach() - gt) ** 2)
        return {"psnr": -10.0 * torch.log10(mse)}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, Tensor]:
        image = batch["image"].to(self.device)
        loss_dict = {}
        for suffix in ("", "_coarse"):
            if f"rgb{suffix}" not in outputs:
                continue
            pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
                pred_image=outputs[f"rgb{suffix}"], pred_accumulation=outputs[f"accumulation{suffix}"], gt_image=image
            )
            loss_dict[f"rgb_loss{suffix}"] = self.rgb_loss(gt, pred)
        return misc.scale_dict(loss_dict, self.config.loss_coefficients)

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        rgb = outputs["rgb"]
        metrics = {key: value for key, value in image_metrics(rgb, image).items() if value is not None}
        near, far = self.near_far if self.near_far is not None else (None, None)
        depth = colormaps.apply_depth_colormap(
            outputs["depth"], accumulation=outputs["accumulation"], near_plane=near, far_plane=far
        )
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": depth,
        }
        return metrics, images
