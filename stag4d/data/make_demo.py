"""Write the procedural demo dataset: an animated creature made of a few thousand 3D Gaussians.

    python scripts/make_demo.py [--out dataset/demo] [--frames 16] [--size 256] [--seed 0]

The creature (inside a ball of radius ~0.5, like the sample data) has five parts, each a shell of
isotropic Gaussians placed on a surface with a jittered Fibonacci lattice:

* body: an ellipsoid with soft yellow / orange horizontal bands over blue trousers; it breathes
  (squashes and stretches by a few percent);
* head: a sphere with a big goggle eye looking at +z (the input view) and a grey strap around it;
  it bobs up and down and nods;
* two arms: capsules hanging from the shoulders that swing forward and back in opposite phase;
* tail: a tapering tube at the back whose bend sweeps left and right (bending, not rigid);
* feet: two dark flattened spheres (static).

All motion is one smooth cycle over the clip (time ``t = i / T``), with modest amplitudes and no
fine texture, so that a small model trained on CPU can fit it. ``--cycles``, ``--amplitude`` and
``--wobble`` make it faster (more cycles), larger, and less regular (a second, incommensurate
harmonic in the phase): a variant whose frames differ enough that a model must interpolate in time
between them (``--cycles 2.5 --amplitude 1.6 --wobble 0.8``, the fast variant of the tests). The Gaussians are rendered with
the project's own rasterizer (torch backend, CPU) at:

* the reference pose (``cam_utils.reference_camera``) -> ``ref/<i>_rgba.png`` (``--size`` px);
* the six anchor poses (``cam_utils.anchor_cameras``) -> ``zero123/<i>_rgba/<k>.png``
  (``--anchor-size`` px, default 5/8 of ``--size``: 160 at 256);
* held-out poses -> ``eval/<name>/<i>_rgba.png`` (``--eval-size`` px, default the anchor size,
  which keeps the committed dataset under 2 MB) and ``eval/views.json``.

Images are RGBA with straight (un-premultiplied) colour and the rendered alpha, so compositing
them on white gives exactly the render on white. Everything is deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cam_utils import Camera, anchor_cameras, reference_camera
from stag4d.errors import UserError, exit_on_user_error
from stag4d.files import atomic_path, write_text
from stag4d.rasterizer import GaussianParams, render

# Held-out views (absolute elevation in orbit_camera terms: negative is above), between anchors.
EVAL_VIEWS: tuple[tuple[float, float], ...] = ((-15.0, 60.0), (0.0, 180.0), (15.0, 300.0), (-30.0, 240.0))

SPACING = 0.02  # mean distance between neighbouring Gaussians on a surface (world units)
# Isotropic std of a Gaussian in spacings, and opacity: neighbours overlap several times, so the
# one-layer shell is opaque, and each pixel blends several Gaussians (smooth colour, no speckle).
SIGMA_PER_SPACING = 1.0
OPACITY = 0.8
TAIL_LENGTH = 0.3


# --------------------------------------------------------------------------------------------
# the creature at rest: parts in their own frames
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    """Gaussians of one part in its local frame.

    Attributes:
        points: [N, 3] positions.
        colors: [N, 3] RGB in [0, 1].
        sigma: [N] isotropic standard deviations.
    """

    points: np.ndarray
    colors: np.ndarray
    sigma: np.ndarray


def fibonacci_sphere(n: int, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
    """Nearly evenly spread unit vectors [n, 3], jittered by a fraction of the spacing."""
    k = np.arange(n) + 0.5
    y = 1.0 - 2.0 * k / n
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, 1.0))
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    dirs = np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=1)
    dirs += rng.normal(0.0, jitter * math.sqrt(4.0 * math.pi / n), dirs.shape)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def count_for_area(area: float, spacing: float) -> int:
    return max(16, int(round(area / spacing**2)))


def ellipsoid_area(radii: tuple[float, float, float]) -> float:
    """Surface area (Knud Thomsen's approximation, within ~1%)."""
    a, b, c = radii
    p = 1.6075
    return 4.0 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3.0) ** (1.0 / p)


def ellipsoid_shell(radii, rng, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, 3] on an ellipsoid surface and their unit-sphere directions [N, 3]."""
    n = count_for_area(ellipsoid_area(radii), spacing)
    dirs = fibonacci_sphere(n, rng)
    return dirs * np.asarray(radii), dirs


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def mix(a, b, w: np.ndarray) -> np.ndarray:
    """Blend colours a, b [3] by weights w [N] -> [N, 3]."""
    return np.asarray(a)[None] * (1.0 - w[:, None]) + np.asarray(b)[None] * w[:, None]


def make_body(rng, spacing: float) -> Part:
    radii = (0.21, 0.27, 0.19)
    points, dirs = ellipsoid_shell(radii, rng, spacing)
    y = points[:, 1]
    bands = 0.5 + 0.5 * np.cos(2.0 * math.pi * y / 0.24)  # ~2 soft bands over the height
    colors = mix((0.97, 0.82, 0.22), (0.93, 0.52, 0.16), bands)
    trousers = smoothstep(-0.07, -0.19, y)  # 1 below y = -0.19
    colors = mix_rows(colors, np.array([0.20, 0.33, 0.70]), trousers)
    return finish_part(points, colors, spacing)


def make_head(rng, spacing: float) -> Part:
    radius = 0.15
    points, dirs = ellipsoid_shell((radius, radius, radius), rng, spacing)
    colors = np.tile(np.array([0.98, 0.86, 0.45]), (len(points), 1))
    # Strap: a grey band around the head at eye height (dirs y near 0).
    strap = smoothstep(0.32, 0.10, np.abs(dirs[:, 1] - 0.05))
    colors = mix_rows(colors, np.array([0.35, 0.35, 0.38]), strap)
    # Goggle eye looking at +z: metal ring, white, brown iris (angles from the eye axis).
    eye_axis = np.array([0.0, 0.05, 1.0]) / math.hypot(0.05, 1.0)
    angle = np.degrees(np.arccos(np.clip(dirs @ eye_axis, -1.0, 1.0)))
    colors = mix_rows(colors, np.array([0.62, 0.64, 0.68]), smoothstep(40.0, 34.0, angle))
    colors = mix_rows(colors, np.array([0.97, 0.97, 0.95]), smoothstep(31.0, 27.0, angle))
    colors = mix_rows(colors, np.array([0.40, 0.22, 0.10]), smoothstep(15.0, 11.0, angle))
    return finish_part(points, colors, spacing)


def capsule_shell(length: float, radius: float, rng, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, 3] on a capsule hanging down from the origin (axis -y) and s in [0, 1] [N]."""
    n_side = count_for_area(2.0 * math.pi * radius * length, spacing)
    s = (np.arange(n_side) + rng.uniform(0.0, 1.0, n_side)) / n_side
    theta = np.arange(n_side) * math.pi * (3.0 - math.sqrt(5.0)) + rng.normal(0.0, 0.2, n_side)
    side = np.stack([radius * np.cos(theta), -s * length, radius * np.sin(theta)], axis=1)
    cap_dirs = fibonacci_sphere(count_for_area(4.0 * math.pi * radius**2, spacing), rng)
    cap_top = cap_dirs[cap_dirs[:, 1] > 0] * radius
    cap_bottom = cap_dirs[cap_dirs[:, 1] <= 0] * radius + np.array([0.0, -length, 0.0])
    points = np.concatenate([side, cap_top, cap_bottom])
    along = np.clip(-points[:, 1] / length, 0.0, 1.0)
    return points, along


def make_arm(rng, spacing: float) -> Part:
    points, along = capsule_shell(0.2, 0.042, rng, spacing)
    colors = mix((0.18, 0.58, 0.66), (0.12, 0.14, 0.16), smoothstep(0.72, 0.85, along))  # dark glove
    return finish_part(points, colors, spacing)


def make_tail(rng, spacing: float) -> Part:
    """A tapering tube; its points are tube coordinates (arc length, angle around, radius),
    turned into positions by :func:`pose_tail`, which bends the centre line."""
    length, r0, r1 = TAIL_LENGTH, 0.05, 0.022
    n = count_for_area(math.pi * (r0 + r1) * length, spacing) + count_for_area(2.0 * math.pi * r1**2, spacing)
    s = (np.arange(n) + rng.uniform(0.0, 1.0, n)) / n
    theta = np.arange(n) * math.pi * (3.0 - math.sqrt(5.0))
    radius = r0 + (r1 - r0) * s
    points = np.stack([s * length, theta, radius], axis=1)
    colors = mix((0.85, 0.22, 0.25), (0.45, 0.20, 0.65), s)
    return finish_part(points, colors, spacing)


def make_foot(rng, spacing: float) -> Part:
    points, dirs = ellipsoid_shell((0.07, 0.04, 0.09), rng, spacing)
    colors = np.tile(np.array([0.18, 0.16, 0.15]), (len(points), 1))
    return finish_part(points, colors, spacing)


def mix_rows(colors: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    return colors * (1.0 - w[:, None]) + target[None] * w[:, None]


def finish_part(points: np.ndarray, colors: np.ndarray, spacing: float) -> Part:
    sigma = np.full(len(points), SIGMA_PER_SPACING * spacing)
    return Part(points.astype(np.float64), np.clip(colors, 0.0, 1.0), sigma)


@dataclass
class Creature:
    body: Part
    head: Part
    arm: Part
    tail: Part
    foot: Part


def make_creature(seed: int, spacing: float = SPACING) -> Creature:
    """The creature at rest; ``spacing`` (world units between neighbouring Gaussians) sets the count."""
    rng = np.random.default_rng(seed)
    parts = (make_body, make_head, make_arm, make_tail, make_foot)
    return Creature(*(make(rng, spacing) for make in parts))


# --------------------------------------------------------------------------------------------
# the creature at time t
# --------------------------------------------------------------------------------------------


def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


BODY_CENTRE = np.array([0.0, -0.10, 0.0])


@dataclass(frozen=True)
class Motion:
    """How the creature moves over the clip: ``cycles`` per clip, angles and offsets times
    ``amplitude``, and a second harmonic (2.7 times as fast) of ``wobble`` radians in the phase."""

    cycles: float = 1.0
    amplitude: float = 1.0
    wobble: float = 0.0

    def phase(self, t: float) -> float:
        base = 2.0 * math.pi * self.cycles * t
        return base + self.wobble * math.sin(2.7 * base) if self.wobble else base


def pose_body(part: Part, phase: float, amp: float = 1.0) -> np.ndarray:
    breathe = 0.04 * amp * math.sin(phase)
    scale = np.array([1.0 + breathe, 1.0 - 0.75 * breathe, 1.0 + breathe])
    return part.points * scale + BODY_CENTRE


def pose_head(part: Part, phase: float, amp: float = 1.0) -> np.ndarray:
    bob = 0.035 * amp * math.sin(phase)
    nod = 10.0 * amp * math.sin(phase + 0.6)  # degrees about x; positive tips the face down
    centre = np.array([0.0, 0.30 + bob, 0.01])
    return part.points @ rot_x(nod).T + centre


def pose_arm(part: Part, phase: float, side: float, amp: float = 1.0) -> np.ndarray:
    swing = 28.0 * amp * math.sin(phase) * side  # opposite phases for the two arms
    shoulder = np.array([0.205 * side, 0.04, 0.0])
    rotation = rot_z(18.0 * side) @ rot_x(swing)  # splay outward, then swing forward/back
    return part.points @ rotation.T + shoulder


def pose_tail(part: Part, phase: float, amp: float = 1.0) -> np.ndarray:
    """Bend the tube: a circular arc whose total turn sweeps left/right, rising at the tip."""
    length = TAIL_LENGTH
    s, theta, radius = part.points[:, 0] / length, part.points[:, 1], part.points[:, 2]
    bend = math.radians(55.0 * amp * math.sin(phase))  # total turn of the centre line about y
    lift = math.radians(35.0)  # the tail curls up a little, always
    # Centre line: start at the back of the body pointing -z; heading turns linearly with s.
    steps = 64
    grid = np.linspace(0.0, 1.0, steps + 1)
    heading = bend * grid
    pitch = lift * grid
    direction = np.stack(
        [np.sin(heading) * np.cos(pitch), np.sin(pitch), -np.cos(heading) * np.cos(pitch)], axis=1
    )
    centre = np.concatenate([np.zeros((1, 3)), np.cumsum(direction[:-1] * length / steps, axis=0)])
    start = np.array([0.0, -0.24, -0.15])
    index = np.clip(np.round(s * steps).astype(int), 0, steps)
    tangent = direction[index]
    # Frame around the tangent: a side axis in the horizontal plane and the one perpendicular.
    side = np.cross(np.array([0.0, 1.0, 0.0]), tangent)
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    normal = np.cross(tangent, side)
    ring = side * (radius * np.cos(theta))[:, None] + normal * (radius * np.sin(theta))[:, None]
    return start + centre[index] + ring


def pose_foot(part: Part, side: float) -> np.ndarray:
    return part.points + np.array([0.10 * side, -0.39, 0.04])


def creature_gaussians(creature: Creature, t: float, motion: Motion = Motion()) -> dict[str, np.ndarray]:
    """Posed Gaussians at time t in [0, 1): means [N, 3], colors [N, 3], sigma [N]."""
    phase, amp = motion.phase(t), motion.amplitude
    placed = [
        (creature.body, pose_body(creature.body, phase, amp)),
        (creature.head, pose_head(creature.head, phase, amp)),
        (creature.arm, pose_arm(creature.arm, phase, +1.0, amp)),
        (creature.arm, pose_arm(creature.arm, phase, -1.0, amp)),
        (creature.tail, pose_tail(creature.tail, phase, amp)),
        (creature.foot, pose_foot(creature.foot, +1.0)),
        (creature.foot, pose_foot(creature.foot, -1.0)),
    ]
    return {
        "means": np.concatenate([points for _, points in placed]),
        "colors": np.concatenate([part.colors for part, _ in placed]),
        "sigma": np.concatenate([part.sigma for part, _ in placed]),
    }


def to_gaussian_params(gaussians: dict[str, np.ndarray]):
    """numpy Gaussians -> rasterizer GaussianParams (isotropic, identity rotation, RGB colours)."""

    n = len(gaussians["means"])
    opacity_logit = math.log(OPACITY / (1.0 - OPACITY))
    return GaussianParams(
        means=torch.tensor(gaussians["means"], dtype=torch.float32),
        log_scales=torch.tensor(np.log(gaussians["sigma"]), dtype=torch.float32)[:, None].expand(n, 3).contiguous(),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).contiguous(),
        opacity_logits=torch.full((n,), opacity_logit),
        colors=torch.tensor(gaussians["colors"], dtype=torch.float32),
    )


# --------------------------------------------------------------------------------------------
# rendering and writing
# --------------------------------------------------------------------------------------------


def render_rgba(params, camera: Camera) -> np.ndarray:
    """Render on black and un-premultiply: uint8 RGBA [H, W, 4] with straight colour."""

    with torch.no_grad():
        out = render(params, camera, torch.zeros(3), backend="torch")
    alpha = out.alpha[0].clamp(0.0, 1.0)
    premultiplied = out.image.clamp(0.0, 1.0)
    straight = torch.where(alpha > 1e-6, premultiplied / alpha.clamp_min(1e-6), torch.zeros_like(premultiplied))
    rgba = torch.cat([straight.clamp(0.0, 1.0), alpha[None]]).permute(1, 2, 0)
    rgba8 = (rgba * 255.0).round().to(torch.uint8).numpy()
    rgba8[rgba8[..., 3] == 0, :3] = 0  # colour under fully transparent pixels: zeros compress best
    return rgba8


def save_png(path: str, rgba: np.ndarray) -> None:

    with atomic_path(path) as tmp:
        Image.fromarray(rgba).save(tmp, format="PNG", optimize=True)


def view_name(elevation: float, azimuth: float) -> str:
    return f"az{int(round(azimuth)) % 360:03d}_el{int(round(elevation))}"


def make_demo(
    out: str,
    frames: int = 16,
    size: int = 256,
    anchor_size: int | None = None,
    eval_size: int | None = None,
    seed: int = 0,
    eval_views: tuple[tuple[float, float], ...] = EVAL_VIEWS,
    spacing: float = SPACING,
    progress: bool = True,
    motion: Motion = Motion(),
) -> dict:
    """Write the dataset into ``out``; returns its description (also written to demo.json)."""
    if frames < 1 or size < 8:
        raise UserError(f"--frames {frames} --size {size}: need at least 1 frame and 8 pixels")
    if not 0.005 <= spacing <= 0.1:
        raise UserError(f"--spacing {spacing}: use a value in [0.005, 0.1] (default {SPACING})")
    if not (0.0 < motion.cycles <= 8.0 and 0.0 <= motion.amplitude <= 3.0 and 0.0 <= motion.wobble <= 3.0):
        raise UserError(f"--cycles {motion.cycles} --amplitude {motion.amplitude} --wobble {motion.wobble}: use "
                        "cycles in (0, 8], amplitude and wobble in [0, 3]")
    anchor_size = anchor_size or max(8, (size * 5) // 8)
    eval_size = eval_size or anchor_size
    creature = make_creature(seed, spacing)
    views = [{"name": view_name(e, a), "elevation": e, "azimuth": a} for e, a in eval_views]

    jobs = []
    for i in range(frames):
        t = i / frames
        jobs.append((os.path.join(out, "ref", f"{i}_rgba.png"), reference_camera(size=size, time=t)))
        for k, camera in enumerate(anchor_cameras(size=anchor_size, time=t)):
            jobs.append((os.path.join(out, "zero123", f"{i}_rgba", f"{k}.png"), camera))
        for view in views:
            camera = Camera.orbit(view["elevation"], view["azimuth"], size=eval_size, time=t)
            jobs.append((os.path.join(out, "eval", view["name"], f"{i}_rgba.png"), camera))


    params_by_time = {}
    for path, camera in tqdm(jobs, desc="render demo", disable=not progress):
        if camera.time not in params_by_time:
            params_by_time = {camera.time: to_gaussian_params(creature_gaussians(creature, camera.time, motion))}
        save_png(path, render_rgba(params_by_time[camera.time], camera))

    num = len(creature_gaussians(creature, 0.0)["means"])
    write_text(os.path.join(out, "eval", "views.json"), json.dumps({"views": views}, indent=2) + "\n")
    description = {
        "generator": "scripts/make_demo.py",
        "seed": seed,
        "frames": frames,
        "time": "t = i / frames",
        "motion": {"cycles": motion.cycles, "amplitude": motion.amplitude, "wobble": motion.wobble},
        "num_gaussians": num,
        "spacing": spacing,
        "ref_size": size,
        "anchor_size": anchor_size,
        "eval_size": eval_size,
        "camera": {"radius": 2.0, "fovy": 49.1, "reference": {"elevation": 0, "azimuth": 0}},
    }
    write_text(os.path.join(out, "demo.json"), json.dumps(description, indent=2) + "\n")
    return description


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dataset/demo", help="dataset folder to write")
    parser.add_argument("--frames", type=int, default=16, help="number of frames T")
    parser.add_argument("--size", type=int, default=256, help="reference (and eval) image size")
    parser.add_argument("--anchor-size", type=int, default=None, help="anchor image size (default 5/8 of --size)")
    parser.add_argument("--eval-size", type=int, default=None, help="held-out view size (default the anchor size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=SPACING,
                        help="distance between neighbouring Gaussians (smaller: more Gaussians)")
    parser.add_argument("--cycles", type=float, default=1.0, help="motion cycles over the clip")
    parser.add_argument("--amplitude", type=float, default=1.0, help="multiplies every motion's size")
    parser.add_argument("--wobble", type=float, default=0.0,
                        help="radians of a faster second harmonic in the phase (irregular motion)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    info = make_demo(args.out, args.frames, args.size, args.anchor_size, args.eval_size, args.seed,
                     spacing=args.spacing, motion=Motion(args.cycles, args.amplitude, args.wobble))
    print(f"wrote {args.out}: {info['frames']} frames, {info['num_gaussians']} Gaussians")


if __name__ == "__main__":
    main()
