"""Helpers of the web viewer tests: a tiny model that visibly moves, its data set, a fake browser
that speaks viser's websocket protocol, and a headless Chromium for the real-browser tests."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

import cam_utils
from gs_renderer import GaussianModel4D
from stag4d.files import torch_save
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.rasterizer.sh import SH_C0
from stag4d.training import runs
from stag4d.viewer.webclient import CHROMIUM_ARGS, find_chromium  # noqa: F401 (re-exported for the tests)
from stag4d.viewer.webclient import HeadlessClient as FakeBrowser  # noqa: F401 (the tests' fake browser)

BLOB_RADIUS = 0.18  # world units: a ball of coloured Gaussians at the origin at t = 0
MOVE_RATE = 0.2  # the time planes go from 1 to 1 + MOVE_RATE over the clip
MOVE_GAIN = 0.45  # x(t) = MOVE_GAIN * ((1 + MOVE_RATE * t)^3 - 1): +0.15 at t = 0.5, +0.28 at t = 7/8


def blob_shift(time: float) -> float:
    """How far (world x) the moving model's ball is at normalized ``time``."""
    return MOVE_GAIN * ((1.0 + MOVE_RATE * time) ** 3 - 1.0)


def moving_model(num: int = 400, seed: int = 0, time_cells: int = 8) -> GaussianModel4D:
    """A ball of ``num`` coloured Gaussians that slides along +x with time (a rigid translation:
    every plane is constant in space, so the deformation is the same function of t everywhere)."""
    g = torch.Generator().manual_seed(seed)
    cfg = DeformationConfig(kplanes_features=4, kplanes_resolution=[4, 4, 4, time_cells], multires=[1], net_width=8,
                            time_mapping="full")
    model = GaussianModel4D(sh_degree=0, deformation=cfg)
    direction = torch.randn(num, 3, generator=g)
    radius = BLOB_RADIUS * torch.rand(num, 1, generator=g) ** (1.0 / 3.0)
    means = direction / direction.norm(dim=1, keepdim=True) * radius
    colours = 0.15 + 0.7 * torch.rand(num, 3, generator=g)
    model.set_gaussians(means, ((colours - 0.5) / SH_C0).unsqueeze(1), torch.zeros(num, 0, 3),
                        torch.full((num, 3), math.log(0.03)), torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(num, 1),
                        torch.full((num,), 3.0))
    field = model.deformation
    with torch.no_grad():
        for planes in field.grid.spatial_planes:
            planes.fill_(1.0)
        for planes in field.grid.time_planes:
            t = torch.linspace(0.0, 1.0, planes.shape[2]).view(1, 1, -1, 1)
            planes.copy_((1.0 + MOVE_RATE * t).expand_as(planes))
        for layer in (field.feature_out, field.position_head[1], field.position_head[3], field.scale_head[3],
                      field.rotation_head[3]):
            layer.weight.zero_()
            layer.bias.zero_()
        # feature (1 + r t)^3 -> hidden unit 0 -> x offset gain * (feature - 1)
        field.feature_out.weight[0, 0] = 1.0
        field.position_head[1].weight[0, 0] = 1.0
        field.position_head[3].weight[0, 0] = MOVE_GAIN
        field.position_head[3].bias[0] = -MOVE_GAIN
    return model


def save_run(model: GaussianModel4D, folder: str) -> None:
    """What a trainer's save leaves: the model files, then (last) the checkpoint marking it complete."""
    model.save(folder)
    torch_save({"format": 1}, os.path.join(folder, runs.CHECKPOINT_FILE))


def ball_rgba(size: int, time: float) -> np.ndarray:
    """RGBA uint8 [size, size, 4]: the ball seen from the reference camera, shifted by blob_shift(t)."""
    focal = cam_utils.fov_to_focal(cam_utils.DEFAULT_FOVY, size)
    centre_u = size / 2 + focal * blob_shift(time) / cam_utils.DEFAULT_RADIUS
    radius_px = focal * BLOB_RADIUS / cam_utils.DEFAULT_RADIUS
    v, u = np.mgrid[0:size, 0:size] + 0.5
    alpha = np.clip(radius_px + 0.5 - np.hypot(u - centre_u, v - size / 2), 0.0, 1.0)
    rgb = np.broadcast_to(np.array([0.9, 0.5, 0.2]), (size, size, 3))
    return (np.concatenate([rgb, alpha[..., None]], axis=-1) * 255).round().astype(np.uint8)


def make_ball_dataset(root: str, num_frames: int = 8, size: int = 32, anchor_size: int = 32, views: int = 6) -> str:
    """ref/<i>_rgba.png (and same-looking anchors) of the moving ball."""
    os.makedirs(os.path.join(root, "ref"), exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(ball_rgba(size, i / num_frames)).save(os.path.join(root, "ref", f"{i}_rgba.png"))
        folder = os.path.join(root, "zero123", f"{i}_rgba")
        os.makedirs(folder, exist_ok=True)
        for k in range(views):
            Image.fromarray(ball_rgba(anchor_size, i / num_frames)).save(os.path.join(folder, f"{k}.png"))
    return root


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             during: Optional[Callable[[], Any]] = None) -> Any:
    """Poll ``condition`` (calling ``during`` between polls) until it is truthy; its value. Fails after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(condition, '__name__', condition)}")
        if during is not None:
            during()
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------
# a real browser

def page_rects(page: Any, selector: str) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every element matching ``selector`` (CSS pixels)."""
    boxes = page.evaluate("""(selector) => Array.from(document.querySelectorAll(selector)).map(el => {
        const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""", selector)
    return [tuple(int(round(v)) for v in box) for box in boxes]


def canvas_pixels(page: Any, covered: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A screenshot of the page as float RGB [H, W, 3] with the panels drawn over the canvas
    (``covered`` boxes) set to NaN, so that only the 3D view is compared."""
    from io import BytesIO

    shot = np.asarray(Image.open(BytesIO(page.screenshot())).convert("RGB"), dtype=np.float32)
    for left, top, right, bottom in covered:
        shot[max(0, top):max(0, bottom), max(0, left):max(0, right)] = np.nan
    return shot


def object_mask(shot: np.ndarray, background: float = 250.0, central: bool = False) -> np.ndarray:
    """Pixels of the view that are not the white background (NaN = covered: not object).

    ``central``: only in the middle half of the width and the middle 70% of the height, where
    the test objects are (the page also draws an axes gizmo in a corner)."""
    darkest = np.nan_to_num(shot, nan=255.0).min(axis=-1)
    mask = darkest < background
    if central:
        height, width = mask.shape
        keep = np.zeros_like(mask)
        keep[int(0.15 * height):int(0.85 * height), width // 4:3 * width // 4] = True
        mask &= keep
    return mask


__all__ = ["BLOB_RADIUS", "CHROMIUM_ARGS", "FakeBrowser", "blob_shift", "canvas_pixels", "find_chromium",
           "make_ball_dataset", "moving_model", "object_mask", "page_rects", "save_run", "wait_for"]
