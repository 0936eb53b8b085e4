"""GARF-style radiance field: Gaussian-activated MLPs on raw coordinates, no positional encoding.

    x̂ = 2·(x − aabb_min)/(aabb_max − aabb_min) − 1            (scene box → [−1, 1]³)
    [s, f] = MLP_pos(x̂),  φ(z) = exp(−z²/2σ²), input re-injected at the middle layer
    σ_density = softplus(s),  rgb = sigmoid(MLP_dir([f, d]))

Every operation is plain torch, so the double backward of a Hessian-vector product flows through
it (tiny-cuda-nn networks have none).
"""

from __future__ import annotations

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

from nf_precond_plugin.fields import CoordinateMLP


class GaussianRadianceField(Field):
    """Density from positions, colour from a geometry feature and the view direction."""

    def __init__(
        self,
        aabb: Tensor,
        num_layers: int = 8,
        hidden_dim: int = 256,
        geo_feat_dim: int = 256,
        num_layers_color: int = 1,
        hidden_dim_color: int = 128,
        sigma: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"Invalid num_layers: {num_layers} (expected >= 1)")
        self.register_buffer("aabb", aabb.detach().clone().float())
        # num_layers hidden Gaussian layers, then one linear head; like NeRF's skip, the input
        # re-enters just past the middle.
        skip = (num_layers // 2 + 1,) if num_layers >= 4 else ()
        self.position_mlp = CoordinateMLP(
            3, 1 + geo_feat_dim, hidden_dim, num_layers + 1, activation="gaussian", sigma=sigma, skip_layers=skip
        )
        self.color_mlp = CoordinateMLP(
            geo_feat_dim + 3, 3, hidden_dim_color, num_layers_color + 1, activation="gaussian", sigma=sigma
        )
        self.density_activation = nn.Softplus()

    def normalized_positions(self, positions: Tensor) -> Tensor:
        return SceneBox.get_normalized_positions(positions, self.aabb) * 2.0 - 1.0

    def get_density(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor]:
        positions = self.normalized_positions(ray_samples.frustums.get_positions())
        raw = self.position_mlp(positions)
        density = self.density_activation(raw[..., :1])
        return density, raw[..., 1:]

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Tensor | None = None
    ) -> dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        directions = ray_samples.frustums.directions
        rgb = torch.sigmoid(self.color_mlp(torch.cat([density_embedding, directions], dim=-1)))
        return {FieldHeadNames.RGB: rgb}
