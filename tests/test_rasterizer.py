"""CPU tests of the differentiable rasterizer (torch backend) and of the backend dispatch."""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from cam_utils import Camera, project_points
from stag4d.errors import UserError
from stag4d.rasterizer import GaussianBatch, GaussianParams, concat_sets, ndc_grad_norm, render, resolve_backend
from stag4d.rasterizer.render import render_batch
from stag4d.rasterizer.sh import SH_C0
from stag4d.rasterizer.torch_backend import (
    ALPHA_MAX,
    ALPHA_MIN,
    Pinhole,
    pixel_boxes,
    plan_bands,
    project_gaussians,
    render_torch,
    row_spans,
)

F64 = torch.float64


def random_scene(n: int, seed: int, sh_degree: int | None = 1, dtype=F64, spread: float = 0.35,
                 scale: tuple[float, float] = (0.08, 0.2)) -> GaussianParams:
    """N random Gaussians near the origin (seen by Camera.orbit(0, 0, 2))."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * spread
    log_scales = torch.log(scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opacity_logits = torch.randn(n, generator=gen)
    if sh_degree is None:
        return GaussianParams(means.to(dtype), log_scales.to(dtype), quats.to(dtype), opacity_logits.to(dtype),
                              colors=torch.rand(n, 3, generator=gen).to(dtype))
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen) * 0.4
    return GaussianParams(means.to(dtype), log_scales.to(dtype), quats.to(dtype), opacity_logits.to(dtype),
                          sh=sh.to(dtype))


def with_field(gaussians: GaussianParams, **fields) -> GaussianParams:
    values = dict(means=gaussians.means, log_scales=gaussians.log_scales, quats=gaussians.quats,
                  opacity_logits=gaussians.opacity_logits, sh=gaussians.sh, colors=gaussians.colors)
    values.update(fields)
    return GaussianParams(**values)


def naive_render(gaussians: GaussianParams, camera: Camera, background: torch.Tensor):
    """Per-pixel Python loop over all drawn Gaussians sorted by depth: the rules, written plainly."""
    cam = Pinhole.from_camera(camera, gaussians.means.dtype, gaussians.means.device)
    with torch.no_grad():
        proj = project_gaussians(gaussians, cam)
        if gaussians.sh is None:
            colors = gaussians.colors[proj.ids]
        else:
            dirs = gaussians.means[proj.ids] - camera.camera_center.to(F64)
            from stag4d.rasterizer.sh import eval_sh
            colors = (eval_sh(gaussians.sh[proj.ids], dirs) + 0.5).clamp_min(0)
    order = sorted(range(len(proj.ids)), key=lambda i: (float(proj.depths[i]), int(proj.ids[i])))
    image = torch.zeros(3, camera.height, camera.width, dtype=F64)
    alpha_img = torch.zeros(1, camera.height, camera.width, dtype=F64)
    depth_img = torch.zeros(1, camera.height, camera.width, dtype=F64)
    for v in range(camera.height):
        for u in range(camera.width):
            transmittance, rgb, depth = 1.0, torch.zeros(3, dtype=F64), 0.0
            for i in order:
                dx = float(proj.means2d[i, 0]) - (u + 0.5)
                dy = float(proj.means2d[i, 1]) - (v + 0.5)
                a, b, c = (float(x) for x in proj.conics[i])
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(ALPHA_MAX, float(proj.opacities[i]) * math.exp(-sigma))
                if sigma < 0 or alpha < ALPHA_MIN:
                    continue
                if transmittance * (1 - alpha) <= 1e-4:
                    break
                rgb += alpha * transmittance * colors[i]
                depth += alpha * transmittance * float(proj.depths[i])
                transmittance *= 1 - alpha
            image[:, v, u] = rgb + transmittance * background
            alpha_img[0, v, u] = 1 - transmittance
            depth_img[0, v, u] = depth
    return image, alpha_img, depth_img


# ---------------------------------------------------------------- gradients (finite differences)

GRAD_FIELDS = ["means", "log_scales", "quats", "opacity_logits", "sh", "colors", "background"]


@pytest.mark.parametrize("field", GRAD_FIELDS)
def test_gradcheck_every_input(field):
    sh_degree = None if field == "colors" else 1
    gaussians = random_scene(3, seed=1, sh_degree=sh_degree, scale=(0.1, 0.2))
    camera = Camera.orbit(10.0, 20.0, 2.0, size=8)
    background = torch.tensor([0.2, 0.5, 0.8], dtype=F64)

    def rendered(x):
        g, bg = gaussians, background
        if field == "background":
            bg = x
        else:
            g = with_field(gaussians, **{field: x})
        out = render(g, camera, bg, backend="torch")
        return torch.cat([out.image.flatten(), out.alpha.flatten(), out.depth.flatten()])

    x = (background if field == "background" else getattr(gaussians, field)).clone().requires_grad_(True)
    assert rendered(x).abs().sum() > 0
    assert torch.autograd.gradcheck(rendered, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_sh_degree3_and_anisotropic_means():
    gaussians = random_scene(2, seed=5, sh_degree=3, scale=(0.05, 0.25))
    camera = Camera.orbit(-20.0, 45.0, 2.0, size=8)
    background = torch.zeros(3, dtype=F64)

    def rendered(means, sh):
        out = render(with_field(gaussians, means=means, sh=sh), camera, background, backend="torch")
        return out.image

    inputs = (gaussians.means.clone().requires_grad_(True), gaussians.sh.clone().requires_grad_(True))
    # fast mode: checks random directional derivatives (102 inputs would take a minute otherwise)
    assert torch.autograd.gradcheck(rendered, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_means2d_grad_is_pixel_gradient():
    # A Gaussian at the image centre: moving it along world x moves it along u by fx / z
    # (the projected covariance is stationary there), so dL/dx = dL/du * fx / z.
    gaussians = GaussianParams(
        means=torch.tensor([[0.0, 0.0, 0.0]], dtype=F64, requires_grad=True),
        log_scales=torch.full((1, 3), math.log(0.1), dtype=F64),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64),
        opacity_logits=torch.tensor([0.5], dtype=F64),
        colors=torch.tensor([[1.0, 0.2, 0.1]], dtype=F64),
    )
    camera = Camera.orbit(0.0, 0.0, 2.0, size=32)
    out = render(gaussians, camera, torch.zeros(3, dtype=F64), backend="torch")
    weights = torch.linspace(0, 1, 32, dtype=F64).reshape(1, 1, 32)  # loss not symmetric in u
    (out.image * weights).sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (1, 2)
    fx = camera.focal[0]
    torch.testing.assert_close(gaussians.means.grad[0, 0], out.means2d.grad[0, 0] * fx / 2.0, rtol=1e-6, atol=1e-9)
    assert abs(float(out.means2d.grad[0, 0])) > 1e-3
    expected = (out.means2d.grad * torch.tensor([16.0, 16.0], dtype=F64)).norm(dim=-1)
    torch.testing.assert_close(ndc_grad_norm(out.means2d.grad, 32, 32), expected)


def test_means2d_grad_accumulates_over_views_and_zero_for_culled():
    gaussians = random_scene(6, seed=3, dtype=torch.float32)
    behind = torch.tensor([[0.0, 0.0, 3.0]])  # behind the azimuth-0 camera at z = 2
    gaussians = with_field(gaussians, means=torch.cat([gaussians.means, behind]),
                           log_scales=torch.cat([gaussians.log_scales, gaussians.log_scales[:1]]),
                           quats=torch.cat([gaussians.quats, gaussians.quats[:1]]),
                           opacity_logits=torch.cat([gaussians.opacity_logits, gaussians.opacity_logits[:1]]),
                           sh=torch.cat([gaussians.sh, gaussians.sh[:1]]))
    gaussians.means.requires_grad_(True)
    out = render(gaussians, Camera.orbit(0, 0, 2.0, size=16), torch.ones(3), backend="torch")
    out.image.sum().backward()
    assert out.radii[-1] == 0 and not out.visible[-1]
    assert torch.all(out.means2d.grad[-1] == 0)
    assert out.visible[:-1].all() and (out.means2d.grad[:-1].norm(dim=-1) > 0).all()


# ---------------------------------------------------------------- forward: exact rules

@pytest.mark.parametrize("sh_degree", [None, 0, 2])
def test_matches_naive_per_pixel_loop(sh_degree):
    gaussians = random_scene(12, seed=7, sh_degree=sh_degree, spread=0.6, scale=(0.03, 0.25))
    # make some opaque, so that transmittance termination and the 0.999 clamp are exercised
    gaussians = with_field(gaussians, opacity_logits=gaussians.opacity_logits + 4.0 * (torch.arange(12) % 3 == 0))
    camera = Camera.orbit(-15.0, 30.0, 2.0, size=12).with_size(14, 12)
    background = torch.tensor([0.1, 0.9, 0.4], dtype=F64)
    out = render(gaussians, camera, background, backend="torch")
    image, alpha, depth = naive_render(gaussians, camera, background)
    torch.testing.assert_close(out.image, image, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.alpha, alpha, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.depth, depth, rtol=1e-9, atol=1e-10)


def test_single_isotropic_gaussian_analytic_image():
    size, scale, opacity = 33, 0.05, 0.7
    gaussians = GaussianParams(
        means=torch.zeros(1, 3, dtype=F64), log_scales=torch.full((1, 3), math.log(scale), dtype=F64),
        quats=torch.tensor([[0.3, -0.5, 0.2, 0.8]], dtype=F64),  # isotropic: rotation does not matter
        opacity_logits=torch.logit(torch.tensor([opacity], dtype=F64)),
        colors=torch.tensor([[1.0, 0.5, 0.25]], dtype=F64),
    )
    camera = Camera.orbit(0.0, 0.0, 2.0, size=size)
    background = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    out = render(gaussians, camera, background, backend="torch")

    fx = size / (2 * math.tan(math.radians(camera.fovy) / 2))
    variance = (fx * scale / 2.0) ** 2 + 0.3  # J Sigma J^T at depth 2, plus the low-pass
    centre = (torch.arange(size, dtype=F64) + 0.5) - size / 2
    r2 = centre.reshape(1, -1) ** 2 + centre.reshape(-1, 1) ** 2
    alpha = opacity * torch.exp(-0.5 * r2 / variance)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out.alpha[0], alpha, rtol=1e-10, atol=1e-12)
    expected = alpha * gaussians.colors[0].reshape(3, 1, 1) + (1 - alpha) * background.reshape(3, 1, 1)
    torch.testing.assert_close(out.image, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.depth[0], 2.0 * alpha, rtol=1e-10, atol=1e-12)
    extend = math.sqrt(2 * math.log(255 * opacity))
    assert int(out.radii[0]) == math.ceil(extend * math.sqrt(variance))


def test_opaque_wall_alpha_is_one():
    # Eight layers of semi-transparent (opacity 0.6) Gaussians on a grid filling the view. With
    # alphas <= 0.6 the exclusive transmittance stop leaves T <= 1e-4 / 0.4 at every pixel. (With
    # alphas at the 0.999 clamp, the stop can leave up to T = 0.1: gsplat's rule, kept.)
    side = torch.linspace(-1.2, 1.2, 13, dtype=F64)
    yy, xx = torch.meshgrid(side, side, indexing="ij")
    layer = torch.stack([xx.flatten(), yy.flatten(), torch.zeros(169, dtype=F64)], dim=-1)
    means = torch.cat([layer + torch.tensor([0.03 * k, 0.05 * k, -0.1 * k], dtype=F64) for k in range(8)])
    n = means.shape[0]
    gaussians = GaussianParams(means, torch.full((n, 3), math.log(0.15), dtype=F64),
                               torch.tensor([[1.0, 0, 0, 0]], dtype=F64).repeat(n, 1),
                               torch.logit(torch.full((n,), 0.6, dtype=F64)), colors=torch.full((n, 3), 0.3, dtype=F64))
    out = render(gaussians, Camera.orbit(0.0, 0.0, 2.0, size=24), torch.ones(3, dtype=F64), backend="torch")
    assert out.alpha.min() > 1 - 1e-3
    torch.testing.assert_close(out.image, torch.full_like(out.image, 0.3), atol=1e-3 * 0.7, rtol=0)


def test_background_where_nothing_is_drawn():
    gaussians = GaussianParams(
        means=torch.tensor([[0.3, 0.3, 0.0]], dtype=F64), log_scales=torch.full((1, 3), math.log(0.03), dtype=F64),
        quats=torch.tensor([[1.0, 0, 0, 0]], dtype=F64), opacity_logits=torch.tensor([3.0], dtype=F64),
        colors=torch.tensor([[1.0, 0.0, 0.0]], dtype=F64))
    background = torch.tensor([0.25, 0.5, 0.75], dtype=F64)
    out = render(gaussians, Camera.orbit(0.0, 0.0, 2.0, size=32), background, backend="torch")
    empty = out.alpha[0] == 0
    assert empty.sum() > 800 and (~empty).sum() > 4  # drawn in the upper right, empty elsewhere
    assert torch.equal(out.image[:, empty], background.reshape(3, 1).expand(3, int(empty.sum())))
    assert torch.all(out.depth[0][empty] == 0)

    nothing = GaussianParams(torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.zeros(0, 4, dtype=F64),
                             torch.zeros(0, dtype=F64), colors=torch.zeros(0, 3, dtype=F64))
    out = render(nothing, Camera.orbit(0.0, 0.0, 2.0, size=8), background, backend="torch")
    assert torch.equal(out.image, background.reshape(3, 1, 1).expand(3, 8, 8))
    assert out.radii.shape == (0,) and out.means2d.shape == (0, 2)


def _red_and_blue(red_z: float, blue_z: float, red_first: bool) -> torch.Tensor:
    """Image [3, 16, 16] of an opaque red and an opaque blue Gaussian on the axis of the camera at z = 2."""
    items = [([0.0, 0.0, red_z], [1.0, 0.0, 0.0]), ([0.0, 0.0, blue_z], [0.0, 0.0, 1.0])]
    if not red_first:
        items.reverse()
    gaussians = GaussianParams(
        torch.tensor([m for m, _ in items], dtype=F64), torch.full((2, 3), math.log(0.2), dtype=F64),
        torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64), torch.full((2,), 8.0, dtype=F64),
        colors=torch.tensor([c for _, c in items], dtype=F64))
    return render(gaussians, Camera.orbit(0.0, 0.0, 2.0, size=16), torch.zeros(3, dtype=F64), backend="torch").image


@pytest.mark.parametrize("red_first", [True, False])
def test_near_gaussian_hides_far_one_regardless_of_order(red_first):
    red_near = _red_and_blue(0.5, -0.5, red_first)[:, 8, 8]
    blue_near = _red_and_blue(-0.5, 0.5, red_first)[:, 8, 8]
    assert red_near[0] > 0.9 and red_near[2] < 0.05
    assert blue_near[2] > 0.9 and blue_near[0] < 0.05
    torch.testing.assert_close(_red_and_blue(0.5, -0.5, not red_first), _red_and_blue(0.5, -0.5, red_first))


def test_known_world_point_lands_on_hand_computed_pixel():
    size = 64
    camera = Camera.orbit(0.0, 0.0, 2.0, size=size)
    point = torch.tensor([[0.1, 0.2, 0.0]], dtype=F64)
    # OpenCV camera of the azimuth-0 orbit: x = world x, y = -world y, z = 2 - world z
    fx = size / (2 * math.tan(math.radians(49.1) / 2))
    u, v = fx * 0.1 / 2 + size / 2, fx * -0.2 / 2 + size / 2
    projected, depth = project_points(camera, point)
    torch.testing.assert_close(projected[0], torch.tensor([u, v], dtype=F64), rtol=0, atol=1e-4)
    assert abs(float(depth[0]) - 2.0) < 1e-6

    gaussians = GaussianParams(point, torch.full((1, 3), math.log(0.01), dtype=F64),
                               torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.tensor([5.0], dtype=F64),
                               colors=torch.ones(1, 3, dtype=F64))
    out = render(gaussians, camera, torch.zeros(3, dtype=F64), backend="torch")
    torch.testing.assert_close(out.means2d[0], projected[0], rtol=0, atol=1e-4)
    brightest = int(torch.argmax(out.alpha[0]))
    assert (brightest // size, brightest % size) == (math.floor(v), math.floor(u))
    assert v < size / 2  # world +y (up) is toward the top of the image


def test_sh_degree0_equals_rgb_path():
    gaussians = random_scene(20, seed=11, sh_degree=0, spread=0.5)
    colors = (0.5 + SH_C0 * gaussians.sh[:, 0]).clamp_min(0)
    as_rgb = with_field(gaussians, sh=None, colors=colors)
    camera = Camera.orbit(-30.0, 100.0, 2.0, size=20)
    background = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    a = render(gaussians, camera, background, backend="torch")
    b = render(as_rgb, camera, background, backend="torch")
    assert torch.equal(a.image, b.image) and torch.equal(a.alpha, b.alpha) and torch.equal(a.depth, b.depth)


def test_sh_view_dependence_uses_camera_to_gaussian_direction():
    # degree-1 coefficient 2 multiplies +C1 * z of the unit direction camera -> Gaussian;
    # from a camera on +z looking at the origin that direction is -z: the colour drops.
    sh = torch.zeros(1, 4, 3, dtype=F64)
    sh[0, 2] = 0.5
    gaussians = GaussianParams(torch.zeros(1, 3, dtype=F64), torch.full((1, 3), math.log(0.1), dtype=F64),
                               torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.tensor([20.0], dtype=F64), sh=sh)
    front = render(gaussians, Camera.orbit(0.0, 0.0, 2.0, size=9), torch.zeros(3, dtype=F64), backend="torch")
    back = render(gaussians, Camera.orbit(0.0, 180.0, 2.0, size=9), torch.zeros(3, dtype=F64), backend="torch")
    alpha = float(front.alpha[0, 4, 4])
    c1 = 0.4886025119029199
    torch.testing.assert_close(front.image[:, 4, 4], torch.full((3,), (0.5 - 0.5 * c1) * alpha, dtype=F64))
    torch.testing.assert_close(back.image[:, 4, 4], torch.full((3,), (0.5 + 0.5 * c1) * alpha, dtype=F64))


def test_float32_matches_float64():
    g64 = random_scene(200, seed=2, spread=0.5, scale=(0.01, 0.05))
    g32 = GaussianParams(*(t.float() for t in (g64.means, g64.log_scales, g64.quats, g64.opacity_logits)),
                         sh=g64.sh.float())
    camera = Camera.orbit(0.0, 0.0, 2.0, size=48)
    a = render(g64, camera, torch.ones(3, dtype=F64), backend="torch")
    b = render(g32, camera, torch.ones(3), backend="torch")
    assert b.image.dtype == torch.float32
    torch.testing.assert_close(b.image.double(), a.image, atol=2e-4, rtol=0)


def test_row_spans_cover_every_pixel_with_visible_alpha():
    # thin, rotated, partly off-screen Gaussians: every (Gaussian, pixel) with alpha >= 1/255 in
    # its box (all that gsplat's tiles could draw) must be in the row spans
    gaussians = random_scene(300, seed=9, dtype=torch.float32, spread=0.9, scale=(0.002, 0.12))
    camera = Camera.orbit(5.0, 15.0, 2.0, size=48).with_size(48, 40)
    cam = Pinhole.from_camera(camera, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        proj = project_gaussians(gaussians, cam)
        boxes = pixel_boxes(proj.means2d, proj.radii, 48, 40)
        spans = row_spans(proj.means2d, proj.conics, proj.opacities, boxes)
    in_span = set()
    for g, v, u_lo, u_hi in spans.tolist():
        in_span.update((g, v, u) for u in range(u_lo, u_hi + 1))
    visible_pairs, pixels = 0, 0
    for g in range(len(proj.ids)):
        u0, u1, v0, v1 = boxes[g].tolist()
        pixels += max(0, u1 - u0 + 1) * max(0, v1 - v0 + 1)
        for v in range(v0, v1 + 1):
            for u in range(u0, u1 + 1):
                dx = float(proj.means2d[g, 0]) - (u + 0.5)
                dy = float(proj.means2d[g, 1]) - (v + 0.5)
                a, b, c = proj.conics[g].tolist()
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                if float(proj.opacities[g]) * math.exp(-sigma) >= ALPHA_MIN:
                    visible_pairs += 1
                    assert (g, v, u) in in_span, (g, v, u)
    assert visible_pairs > 1000 and len(in_span) < 0.95 * pixels  # spans are tighter than boxes
    assert len(in_span) < 1.05 * visible_pairs


def test_bands_with_checkpointing_equal_one_pass():
    gaussians = random_scene(150, seed=4, dtype=torch.float32, spread=0.5, scale=(0.01, 0.06))
    camera = Camera.orbit(10.0, -40.0, 2.0, size=40)
    background = torch.tensor([0.3, 0.2, 0.1])
    with torch.no_grad():
        proj = project_gaussians(gaussians, Pinhole.from_camera(camera, torch.float32, torch.device("cpu")))
        spans = row_spans(proj.means2d, proj.conics, proj.opacities, pixel_boxes(proj.means2d, proj.radii, 40, 40))
    assert 4 <= len(plan_bands(spans, 40, 1000)) <= 20
    results = []
    for budget in (1 << 30, 1000):  # one band; several checkpointed bands
        params = [t.clone().requires_grad_(True) for t in
                  (gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh)]
        out = render_torch(GaussianParams(*params[:4], sh=params[4]), camera, background, pair_budget=budget)
        (out.image.square().sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
        results.append((out, params))
    (one, p_one), (banded, p_banded) = results
    torch.testing.assert_close(banded.image, one.image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(banded.depth, one.depth, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(banded.means2d.grad, one.means2d.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(p_banded, p_one):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_render_without_autograd():
    gaussians = random_scene(10, seed=8, dtype=torch.float32)
    with torch.no_grad():
        out = render(gaussians, Camera.orbit(0.0, 0.0, 2.0, size=16), torch.ones(3), backend="torch")
    assert out.image.shape == (3, 16, 16) and not out.image.requires_grad and out.means2d.grad is None


def test_render_batch_torch_equals_separate_renders():
    gaussians = [random_scene(30, seed=s, dtype=torch.float32) for s in range(3)]
    cameras = [Camera.orbit(0.0, 0.0, 2.0, size=16), Camera.orbit(-30.0, 90.0, 2.0, size=16),
               Camera.orbit(20.0, 200.0, 2.0, size=12)]
    backgrounds = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.2, 0.1]])
    batch = render_batch(gaussians, cameras, backgrounds, backend="torch")
    for g, c, bg, out in zip(gaussians, cameras, backgrounds, batch):
        single = render(g, c, bg, backend="torch")
        assert torch.equal(out.image, single.image) and torch.equal(out.radii, single.radii)


def _three_sets(sh_degree: int | None = 1) -> GaussianBatch:
    """A GaussianBatch of 3 sets of 30 Gaussians sharing opacity and colour, as the deformation makes."""
    scenes = [random_scene(30, seed=s, sh_degree=sh_degree, dtype=torch.float32) for s in range(3)]
    return GaussianBatch(means=torch.stack([g.means for g in scenes]),
                         log_scales=torch.stack([g.log_scales for g in scenes]),
                         quats=torch.stack([g.quats for g in scenes]), opacity_logits=scenes[0].opacity_logits,
                         sh=scenes[0].sh, colors=scenes[0].colors)


def test_gaussian_batch_is_the_sequence_of_its_sets():
    batch = _three_sets()
    assert len(batch) == 3 and batch.sets == 3 and batch.num == 30 and batch.sh_degree == 1
    for b, g in enumerate(batch):
        assert torch.equal(g.means, batch.means[b]) and torch.equal(g.quats, batch.quats[b])
        assert g.opacity_logits is batch.opacity_logits and g.sh is batch.sh  # shared, not copied
    assert torch.equal(batch[-1].log_scales, batch.log_scales[2])
    with pytest.raises(IndexError):
        batch[3]
    tail = batch[1:]
    assert isinstance(tail, GaussianBatch) and len(tail) == 2 and torch.equal(tail[0].means, batch.means[1])
    twice = batch.repeated(2)  # item i is set i % 3, without a copy
    assert len(twice) == 6 and twice.means is batch.means
    assert [torch.equal(twice[i].means, batch.means[i % 3]) for i in range(6)] == [True] * 6
    assert [len(s) for s in (twice[4:], twice[:2])] == [2, 2]  # a repeated batch slices into a list
    assert concat_sets(batch, batch).repeats == 2
    assert isinstance(concat_sets(batch, tail), list) and len(concat_sets(batch, tail)) == 5
    per_set_opacity = GaussianBatch(batch.means, batch.log_scales, batch.quats, torch.zeros(3, 30), sh=batch.sh)
    assert per_set_opacity[2].opacity_logits.shape == (30,)


@pytest.mark.parametrize("field,shape", [("log_scales", (3, 30, 2)), ("quats", (2, 30, 4)),
                                         ("opacity_logits", (30, 3)), ("means", (30, 3))])
def test_gaussian_batch_names_a_wrong_shape(field, shape):
    batch = _three_sets(sh_degree=None)
    values = dict(means=batch.means, log_scales=batch.log_scales, quats=batch.quats,
                  opacity_logits=batch.opacity_logits, colors=batch.colors)
    values[field] = torch.zeros(shape)
    with pytest.raises(ValueError, match=field):
        GaussianBatch(**values)


def test_render_batch_of_a_gaussian_batch_equals_its_sets_rendered_one_by_one():
    batch = _three_sets().repeated(2)
    cameras = [Camera.orbit(-10.0 * i, 50.0 * i, 2.0, size=16) for i in range(6)]
    backgrounds = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    outputs = render_batch(batch, cameras, backgrounds, backend="torch")
    for i, out in enumerate(outputs):
        single = render(batch[i % 3], cameras[i], backgrounds[i], backend="torch")
        assert torch.equal(out.image, single.image) and torch.equal(out.radii, single.radii)
    with pytest.raises(ValueError, match="render_batch needs"):
        render_batch(batch, cameras[:5], backgrounds[:5], backend="torch")


# ---------------------------------------------------------------- dispatch, inputs, imports

def test_resolve_backend_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="rasterizer.render"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(UserError, match="gsplat"):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(UserError, match="unknown"):
        resolve_backend("opengl", "cpu")
    messages = [r.getMessage() for r in caplog.records if "rasterizer backend" in r.getMessage()]
    assert len(messages) <= 1  # logged once per process (0 if an earlier test already logged it)


def test_bad_shapes_are_reported():
    gaussians = random_scene(4, seed=0)
    broken = with_field(gaussians, quats=gaussians.quats[:, :3])
    with pytest.raises(ValueError, match="quats"):
        render(broken, Camera.orbit(0, 0, 2.0, size=8), torch.ones(3, dtype=F64), backend="torch")


def test_import_is_light():
    code = ("import sys, stag4d.rasterizer; heavy = [m for m in ('diffusers', 'transformers', 'dearpygui', 'rembg', "
            "'torchmetrics', 'gsplat') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gsplat_intrinsics_match_camera_convention():
    from stag4d.rasterizer.gsplat_backend import _intrinsics

    cameras = [Camera.orbit(0.0, 0.0, 2.0, size=64), Camera.orbit(10.0, 30.0, 2.0, size=32).with_size(48, 32)]
    assert torch.equal(_intrinsics(cameras, torch.device("cpu")), torch.stack([c.intrinsics for c in cameras]))


def test_gsplat_means2d_views_get_grads_and_do_not_leak():
    import weakref

    from stag4d.rasterizer.gsplat_backend import _split_means2d

    leaf = torch.randn(2, 5, 2, requires_grad=True)
    base = leaf * 1.0  # stands for gsplat's meta["means2d"] [C, N, 2]
    views = _split_means2d(base, 2)
    for _ in range(2):  # accumulates over backward passes, like retain_grad
        (base * torch.arange(20.0).reshape(2, 5, 2)).sum().backward(retain_graph=True)
    torch.testing.assert_close(views[1].grad, 2 * torch.arange(10.0, 20.0).reshape(5, 2))
    # no reference cycle through the autograd graph: dropping the outputs frees them at once
    refs = [weakref.ref(base)] + [weakref.ref(v) for v in views]
    del base, views
    assert all(r() is None for r in refs)
