"""What nerfstudio's viewer shows first, for this plugin's models (``ns-viewer`` and ``ns-train --vis viewer``).

nerfstudio 1.1.5 leaves three things to the model. Each browser that connects gets them from
:class:`ViewerStart`, a ``ViewerControl`` the model holds (nerfstudio's viewer finds every
``ViewerControl`` of the pipeline and hands it the viewer):

* **The camera.** viser starts every browser at its own default pose, which for a forward-facing
  scene looks at the field from behind the cameras, where it is a blur. Here the first camera
  update of a browser moves its camera to the first training view: that view's position,
  orientation and vertical field of view, orbiting about a point on its axis at the scene's middle
  depth (√(near · far)). The training cameras' frustums are hidden then ("Show Train Cams" brings
  them back): the first one's image, a 100-pixel thumbnail just in front of the camera, would
  cover the render.
* **A finished model.** ``ns-viewer`` builds the viewer without a trainer, yet shows "Pause
  Training", and "Step: 0" until the first training step that never comes; without a trainer
  both training buttons are hidden and the step shown is the checkpoint's.
* **Resolution on a CPU.** While the camera moves, nerfstudio renders what 1/30 s of its measured
  rays per second allows, at least 30 pixels high: on a CPU that is the 40 × 30 preview. When the
  camera rests it renders at "Max res" (512); the slider starts at ``CPU_MAX_RES`` instead when the
  model runs on the CPU. The demo's model on two CPU cores (≈ 2,500 rays/s): 320 × 249 in ≈ 30 s,
  where 512 × 398 took ≈ 80 s. The slider still goes up to 2048.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from nerfstudio.viewer.viewer_elements import ViewerControl

if TYPE_CHECKING:
    import viser
    from nerfstudio.viewer.viewer import Viewer

CPU_MAX_RES = 320
"""The viewer's "Max res" (pixels, the longer side) when the model runs on the CPU."""


def training_view_pose(camera_to_world: np.ndarray, look_distance: float) -> dict[str, np.ndarray]:
    """viser's camera state (position, look-at point, up direction; nerfstudio units) of a camera
    with this OpenGL camera-to-world (3 × 4: right, up, back, centre)."""
    centre = camera_to_world[:, 3]
    forward = -camera_to_world[:, 2] / np.linalg.norm(camera_to_world[:, 2])
    up = camera_to_world[:, 1] / np.linalg.norm(camera_to_world[:, 1])
    return {"position": centre, "look_at": centre + look_distance * forward, "up_direction": up}


class ViewerStart(ViewerControl):
    """Points each newly connected browser at the first training view (see the module docstring).

    A browser may connect before nerfstudio has drawn the training cameras (``init_scene``) or, in
    ns-viewer, set the checkpoint's step (``update_scene``): both are wrapped on the viewer
    instance, so what is due then is done when they run."""

    def _setup(self, viewer: Viewer) -> None:
        super()._setup(viewer)
        self._placed = False
        if viewer.pipeline.model.device.type == "cpu":
            viewer.control_panel._max_res.value = min(viewer.control_panel.max_res, CPU_MAX_RES)
        if viewer.trainer is None:  # ns-viewer: a finished checkpoint, nothing to pause or resume
            viewer.pause_train.visible = False
            viewer.resume_train.visible = False
            update_scene = viewer.update_scene

            def update_scene_and_step(step: int, num_rays_per_batch: int | None = None) -> None:
                update_scene(step, num_rays_per_batch)
                viewer.update_step(step)  # nerfstudio's update_scene skips it with no browser connected

            viewer.update_scene = update_scene_and_step
        init_scene = viewer.init_scene

        def init_scene_then_hide(*args, **kwargs) -> None:
            init_scene(*args, **kwargs)
            if self._placed:
                self._hide_training_cameras()

        viewer.init_scene = init_scene_then_hide
        self.viser_server.on_client_connect(self._on_connect)

    def _on_connect(self, client: viser.ClientHandle) -> None:
        placed = False

        # viser knows a browser's camera only after its first update; place it then, once.
        @client.camera.on_update
        def _(_camera) -> None:
            nonlocal placed
            if not placed:
                placed = True
                self._place_camera(client)

    def _hide_training_cameras(self) -> None:
        viewer = self.viewer
        if getattr(viewer, "camera_handles", None) and viewer.hide_images.visible:
            viewer.set_camera_visibility(False)
            viewer.toggle_cameravis_button()

    def _place_camera(self, client: viser.ClientHandle) -> None:
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        dataset = getattr(self.viewer.pipeline.datamanager, "train_dataset", None)
        if dataset is None or len(dataset.cameras) == 0:
            return
        camera = dataset.cameras[0]
        near_far = getattr(self.viewer.pipeline.model, "near_far", None)
        look_distance = math.sqrt(near_far[0] * near_far[1]) if near_far else 1.0
        pose = training_view_pose(camera.camera_to_worlds.cpu().numpy().astype(np.float64), look_distance)
        fov = 2.0 * math.atan(float(camera.cy) / float(camera.fy))
        self._placed = True
        self._hide_training_cameras()
        with client.atomic():
            client.camera.up_direction = pose["up_direction"]
            client.camera.position = pose["position"] * VISER_NERFSTUDIO_SCALE_RATIO
            client.camera.look_at = pose["look_at"] * VISER_NERFSTUDIO_SCALE_RATIO
            client.camera.fov = fov
