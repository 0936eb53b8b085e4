"""ns-viewer on the trained checkpoint, looked at in a real browser (Debian's chromium via Playwright).

The oracle is the screenshot: inside the 3D canvas (only where no panel covers it), before the first
render arrives the viewer shows a flat black (or white, before it connects) background with a few
small camera-frustum thumbnails; a render fills the whole canvas with the scene. So a render is
"shown" when (1) at least half the visible canvas pixels are coloured (max − min channel > 24 / 255;
black, white, grey UI and grid lines are not), (2) the pixels vary (not a flat fill), and (3) their
mean chromaticity r : g : b matches the mean of the scene's own images (the demo scene is warm: the
cat background), within 0.05 — grey would be 0.12 away.

The browser's camera must start at the first training view (the plugin's ``ViewerStart``; viser's
default camera looks at the field from behind the cameras): the canvas, reduced to 16 × 12 grey
levels, correlates with that view's image by at least 0.5 (measured: 0.88 at the first training
view, −0.24 from viser's default camera). And for a finished checkpoint the page must not offer
"Pause Training" and must show the checkpoint's step (nerfstudio's ns-viewer shows "Step: 0").
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
OVERALL_TIMEOUT_S = 240
"""Hard limit for the whole test: a watchdog kills the viewer and the browser after it."""
VIEWER_START_TIMEOUT_S = 150
RENDER_TIMEOUT_S = 60
COLOURED_CHROMA = 24
MIN_COLOURED_FRACTION = 0.5
MIN_PIXEL_STD = 10.0
CHROMATICITY_TOLERANCE = 0.05
SAMPLE_STEP_PX = 8
LAYOUT_SIZE = (16, 12)
MIN_VIEW_CORRELATION = 0.5


VISIBLE_CANVAS_POINTS_JS = """(step) => {
    const canvases = Array.from(document.querySelectorAll('canvas'));
    if (canvases.length === 0) return [];
    const area = (c) => { const r = c.getBoundingClientRect(); return r.width * r.height; };
    const main = canvases.reduce((a, b) => (area(b) > area(a) ? b : a));
    const box = main.getBoundingClientRect();
    const points = [];
    for (let y = Math.ceil(box.top) + step / 2; y < box.bottom; y += step) {
        for (let x = Math.ceil(box.left) + step / 2; x < box.right; x += step) {
            const hit = document.elementFromPoint(x, y);
            if (hit && hit.tagName === 'CANVAS') points.push([Math.floor(x), Math.floor(y)]);
        }
    }
    return points;
}"""


def require(reason: str) -> None:
    """Skip for a missing browser prerequisite, but fail under CI, which must run this test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, viewer: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        if viewer.process.poll() is not None:
            pytest.fail(f"ns-viewer exited before serving:\n{viewer.result().describe()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"ns-viewer did not open port {port} in time:\n{viewer.log_path.read_text()[-4000:]}")


def canvas_stats(screenshot: np.ndarray, points: list[list[int]], scene_chromaticity: np.ndarray) -> dict[str, float]:
    if not points:
        return {"points": 0, "coloured": 0.0, "std": 0.0, "chromaticity_error": 1.0}
    xy = np.asarray(points)
    pixels = screenshot[xy[:, 1], xy[:, 0], :3].astype(np.float64)
    mean = pixels.mean(axis=0)
    chromaticity = mean / max(mean.sum(), 1e-9)
    return {
        "points": len(points),
        "coloured": float(((pixels.max(axis=1) - pixels.min(axis=1)) > COLOURED_CHROMA).mean()),
        "std": float(pixels.std(axis=0).max()),
        "mean_rgb": mean.round(1).tolist(),
        "chromaticity_error": float(np.abs(chromaticity - scene_chromaticity).max()),
    }


def layout(image: np.ndarray) -> np.ndarray:
    """The image as LAYOUT_SIZE grey levels, standardised (zero mean, unit variance)."""
    from PIL import Image

    grey = np.asarray(Image.fromarray(image[..., :3]).convert("L").resize(LAYOUT_SIZE, Image.BILINEAR), float)
    return (grey - grey.mean()) / (grey.std() + 1e-9)


def view_correlation(screenshot: np.ndarray, points: list[list[int]], reference: np.ndarray) -> float:
    """Correlation of the visible canvas's layout (the box around ``points``) with the reference
    image's: -1 … 1, 0 without a canvas."""
    if not points:
        return 0.0
    xy = np.asarray(points)
    left, top = xy.min(axis=0)
    right, bottom = xy.max(axis=0) + 1
    if right - left < 16 or bottom - top < 12:
        return 0.0
    return float((layout(screenshot[top:bottom, left:right]) * layout(reference)).mean())


def render_shown(stats: dict[str, float]) -> bool:
    return (
        stats["coloured"] >= MIN_COLOURED_FRACTION
        and stats["std"] >= MIN_PIXEL_STD
        and stats["chromaticity_error"] <= CHROMATICITY_TOLERANCE
    )


def chromium_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]


def kill_browser(processes: list) -> None:
    """SIGKILL what is left of chromium: its process group (Playwright starts the browser as a group
    leader, so helpers started after ``processes`` was taken go too), then each recorded process."""
    import psutil

    for process in processes:
        try:
            if process.is_running() and os.getpgid(process.pid) == process.pid != os.getpgrp():
                os.killpg(process.pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def test_viewer_shows_a_render_of_the_scene_in_chromium(
    trained_run: Path, start_command, tiny_scene: Path, tmp_path: Path
):
    if not CHROMIUM.is_file():
        require(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("playwright is not installed (pip install -e '.[test]')")

    images = np.stack([iio.imread(p)[..., :3] for p in sorted((tiny_scene / "images_8").glob("*.png"))])
    first_training_view = images[1]  # view 0 is held out (holdout_every = 8)
    scene_mean = images.reshape(-1, 3).astype(np.float64).mean(axis=0)
    scene_chromaticity = scene_mean / scene_mean.sum()

    port = free_port()
    viewer = start_command(
        ["ns-viewer", "--load-config", trained_run,
         "--viewer.websocket-port", port, "--viewer.websocket-host", "127.0.0.1"],
        "ns-viewer",
    )  # fmt: skip
    browser: list = []
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        viewer.kill()
        kill_browser(browser)

    timer = threading.Timer(OVERALL_TIMEOUT_S, watchdog)
    timer.start()
    screenshot_path = tmp_path / "viewer.png"
    before_path = tmp_path / "viewer-before-render.png"
    blocked: list[str] = []
    print(f"screenshots: {screenshot_path} (latest), {before_path} (first); viewer log: {viewer.log_path}")
    try:
        started = time.monotonic()
        wait_for_port(port, viewer, started + VIEWER_START_TIMEOUT_S)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=VIEWPORT,
                device_scale_factor=1,
                timeout=60_000,
            )
            browser.extend(chromium_processes())
            try:
                context.set_default_timeout(30_000)
                local = f"http://127.0.0.1:{port}"

                def only_local(route) -> None:  # the client asks for a logo and an analytics script
                    if route.request.url.startswith(local):
                        route.continue_()
                    else:
                        blocked.append(route.request.url)
                        route.abort()

                context.route("**/*", only_local)
                page = context.pages[0] if context.pages else context.new_page()
                page.goto(local, wait_until="load")

                stats: dict[str, float] = {}
                page_text = ""
                correlation = 0.0
                before: dict[str, float] = {}
                shot = None
                render_deadline = time.monotonic() + RENDER_TIMEOUT_S
                while time.monotonic() < render_deadline:
                    png = page.screenshot()
                    screenshot_path.write_bytes(png)
                    shot = iio.imread(png)
                    points = page.evaluate(VISIBLE_CANVAS_POINTS_JS, SAMPLE_STEP_PX)
                    stats = canvas_stats(shot, points, scene_chromaticity)
                    correlation = view_correlation(shot, points, first_training_view)
                    if points and not before:
                        before = stats
                        before_path.write_bytes(png)
                    if render_shown(stats) and correlation >= MIN_VIEW_CORRELATION:
                        break
                    time.sleep(1.0)
                assert shot is not None
                page_text = page.inner_text("body")
                pause_shown = any(button.is_visible() for button in page.get_by_text("Pause Training").all())
            finally:
                context.close()
    finally:
        timer.cancel()
        viewer.kill()
        kill_browser(browser)

    report = (
        f"screenshot {screenshot_path}; canvas stats {stats}; correlation with the first training view "
        f"{correlation:.2f}; first canvas frame {before_path}: {before}; "
        f"scene mean rgb {scene_mean.round(1).tolist()}; blocked requests {blocked}; "
        f"viewer log {viewer.log_path}"
    )
    print(report)
    assert not timed_out.is_set(), f"hard timeout of {OVERALL_TIMEOUT_S} s hit; {report}"
    assert stats.get("points", 0) > 1000, f"the 3D canvas is missing or covered; {report}"
    assert stats["coloured"] >= MIN_COLOURED_FRACTION, f"no render fills the canvas; {report}"
    assert stats["std"] >= MIN_PIXEL_STD, f"the canvas is a flat fill; {report}"
    assert stats["chromaticity_error"] <= CHROMATICITY_TOLERANCE, f"the canvas colours are not the scene's; {report}"
    assert correlation >= MIN_VIEW_CORRELATION, f"the camera does not start at the first training view; {report}"
    step = max(int(path.stem.split("-")[-1]) for path in (trained_run.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert f"Step: {step}" in page_text, f"the checkpoint's step {step} is not shown: {page_text[:400]!r}; {report}"
    assert not pause_shown, f"a finished model offers 'Pause Training'; {report}"
    viewer.result()  # no network attempt by the viewer process (it was killed, so its exit code is moot)
