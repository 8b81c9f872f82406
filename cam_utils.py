"""Cameras: one convention for the whole project (SPEC section 2).

* ``orbit_camera`` returns a camera-to-world pose in OpenGL convention (camera looks down its
  -z axis, y up). A NEGATIVE elevation puts the camera ABOVE the object; azimuth 0 is the +z axis.
* The rasterizers take world-to-camera in OpenCV convention (x right, y down, z forward), built
  once here by :class:`Camera`. Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)`` and the
  principal point is the image centre ``(W / 2, H / 2)``.
* The six anchor poses of Zero123++ come from one table (:data:`ZERO123PP_V11_ANCHORS`), which the
  config may replace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Sequence

import numpy as np
import torch

from stag4d.settings import ConfigError, setting

# (azimuth, elevation offset) in degrees, in orbit_camera terms: negative elevation is above.
ZERO123PP_V11_ANCHORS: tuple[tuple[float, float], ...] = (
    (30.0, -30.0),
    (90.0, 20.0),
    (150.0, -30.0),
    (210.0, 20.0),
    (270.0, -30.0),
    (330.0, 20.0),
)

DEFAULT_RADIUS = 2.0
DEFAULT_FOVY = 49.1
DEFAULT_NEAR = 0.01
DEFAULT_FAR = 100.0


@dataclass
class CameraConfig:
    """The cameras of a run (SPEC 2): the input view on an orbit around the origin, and the anchors."""

    radius: float = setting(DEFAULT_RADIUS, "distance of every camera from the origin", gt=0)
    fovy: float = setting(DEFAULT_FOVY, "vertical field of view, degrees", gt=0, lt=180)
    elevation: float = setting(0.0, "elevation of the input view, degrees (negative = above the object)", gt=-80, lt=80)
    anchor_views: List[List[float]] = setting([list(row) for row in ZERO123PP_V11_ANCHORS],
                                              "[azimuth, elevation offset] of each anchor view (Zero123++ v1.1)",
                                              min_items=1)

    def check(self) -> None:
        if any(len(row) != 2 for row in self.anchor_views):
            raise ConfigError("anchor_views must be a list of [azimuth, elevation] pairs, e.g. [[30,-30],[90,20]]")

    @property
    def anchor_table(self) -> tuple[tuple[float, float], ...]:
        return anchor_table(self.anchor_views)

    def orbit(self, d_elevation: float, azimuth: float, size: int, time: float = 0.0,
              device: torch.device | str = "cpu") -> "Camera":
        """A camera at ``elevation + d_elevation`` and ``azimuth`` on this orbit."""
        return Camera.orbit(self.elevation + d_elevation, azimuth, self.radius, self.fovy, size, time, device)

    def reference(self, size: int, device: torch.device | str = "cpu") -> "Camera":
        """The input-view camera (azimuth 0)."""
        return reference_camera(self.elevation, self.radius, self.fovy, size, device=device)

    def anchors(self, size: int, device: torch.device | str = "cpu") -> list["Camera"]:
        """One camera per anchor view."""
        return anchor_cameras(self.elevation, self.radius, self.fovy, size, table=self.anchor_views, device=device)


def fov_to_focal(fov_deg: float, pixels: int) -> float:
    """Focal length in pixels for a field of view (degrees) spanning ``pixels``."""
    return pixels / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def focal_to_fov(focal: float, pixels: int) -> float:
    """Field of view in degrees for a focal length in pixels spanning ``pixels``."""
    return math.degrees(2.0 * math.atan(pixels / (2.0 * focal)))


def orbit_position(elevation: float, azimuth: float, radius: float) -> np.ndarray:
    """Camera centre [3] on the orbit: x = r cos(e) sin(a), y = -r sin(e), z = r cos(e) cos(a)."""
    e, a = math.radians(elevation), math.radians(azimuth)
    return np.array(
        [radius * math.cos(e) * math.sin(a), -radius * math.sin(e), radius * math.cos(e) * math.cos(a)],
        dtype=np.float64,
    )


def look_at(campos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation [3, 3] whose columns are the OpenGL camera axes (x right, y up, z backward).

    The camera looks from ``campos`` at ``target``; world +y is up. Straight above or below the
    target (where +y is the viewing direction) the right axis falls back to world +x.
    """
    back = campos - target
    back = back / np.linalg.norm(back)
    up_world = np.array([0.0, 1.0, 0.0])
    right = np.cross(up_world, back)
    if np.linalg.norm(right) < 1e-8:
        right = np.array([1.0, 0.0, 0.0])
    right = right / np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back], axis=1)


def orbit_camera(
    elevation: float, azimuth: float, radius: float = 1.0, target: Sequence[float] | None = None
) -> np.ndarray:
    """Camera-to-world pose [4, 4] (OpenGL) on an orbit around ``target`` (default the origin).

    Degrees; negative elevation is above the object, azimuth 0 looks from +z.
    """
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    campos = orbit_position(elevation, azimuth, radius) + target
    pose = np.eye(4)
    pose[:3, :3] = look_at(campos, target)
    pose[:3, 3] = campos
    return pose


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Flip the camera's y and z axes: OpenGL camera-to-world [4, 4] -> OpenCV camera-to-world.

    The same flip maps OpenCV back to OpenGL, so the function is its own inverse.
    """
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[:3, 1:3] *= -1.0
    return out


opencv_to_opengl = opengl_to_opencv


def camera_centres(world_to_camera: torch.Tensor) -> torch.Tensor:
    """Camera positions [..., 3] in world coordinates from rigid world-to-camera matrices [..., 4, 4].

    -R^T t in closed form (no matrix inverse: on CUDA that makes the host wait for the GPU).
    """
    rotation, translation = world_to_camera[..., :3, :3], world_to_camera[..., :3, 3:]
    return -(rotation.transpose(-1, -2) @ translation).squeeze(-1)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera for rendering.

    Attributes:
        world_to_camera: [4, 4] float32 tensor, OpenCV convention.
        fovy: vertical field of view, degrees.
        width, height: image size in pixels.
        time: normalized time of the frame this camera sees (``t = i / T``).
        near, far: clipping depths.
    """

    world_to_camera: torch.Tensor
    fovy: float
    width: int
    height: int
    time: float = 0.0
    near: float = DEFAULT_NEAR
    far: float = DEFAULT_FAR

    @staticmethod
    def from_c2w_opengl(
        c2w: np.ndarray,
        fovy: float,
        width: int,
        height: int,
        time: float = 0.0,
        near: float = DEFAULT_NEAR,
        far: float = DEFAULT_FAR,
        device: torch.device | str = "cpu",
    ) -> "Camera":
        w2c = np.linalg.inv(opengl_to_opencv(c2w))
        return Camera(torch.tensor(w2c, dtype=torch.float32, device=device), fovy, width, height, time, near, far)

    @staticmethod
    def orbit(
        elevation: float,
        azimuth: float,
        radius: float = DEFAULT_RADIUS,
        fovy: float = DEFAULT_FOVY,
        size: int = 512,
        time: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> "Camera":
        """Square camera on the orbit of :func:`orbit_camera`."""
        return Camera.from_c2w_opengl(orbit_camera(elevation, azimuth, radius), fovy, size, size, time, device=device)

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) in pixels; square pixels."""
        fy = fov_to_focal(self.fovy, self.height)
        return fy, fy

    @property
    def fovx(self) -> float:
        return focal_to_fov(self.focal[0], self.width)

    @property
    def intrinsics(self) -> torch.Tensor:
        """K [3, 3] float32 on the camera's device."""
        fx, fy = self.focal
        k = torch.tensor(
            [[fx, 0.0, self.width / 2.0], [0.0, fy, self.height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32
        )
        return k.to(self.world_to_camera.device)

    @property
    def camera_center(self) -> torch.Tensor:
        """Camera position in world coordinates [3]."""
        return camera_centres(self.world_to_camera)

    @property
    def device(self) -> torch.device:
        return self.world_to_camera.device

    def with_time(self, time: float) -> "Camera":
        return replace(self, time=time)

    def with_size(self, width: int, height: int | None = None) -> "Camera":
        return replace(self, width=width, height=height if height is not None else width)

    def to(self, device: torch.device | str) -> "Camera":
        return replace(self, world_to_camera=self.world_to_camera.to(device))


def project_points(camera: Camera, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points [N, 3] to pixel coordinates [N, 2] (continuous) and depths [N]."""
    w2c = camera.world_to_camera.to(points)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = cam[:, 2]
    fx, fy = camera.focal
    u = fx * cam[:, 0] / depth + camera.width / 2.0
    v = fy * cam[:, 1] / depth + camera.height / 2.0
    return torch.stack([u, v], dim=-1), depth


def anchor_table(table: Sequence[Sequence[float]] | None = None) -> tuple[tuple[float, float], ...]:
    """Validated (azimuth, elevation offset) table; ``None`` gives Zero123++ v1.1's."""
    if table is None:
        return ZERO123PP_V11_ANCHORS
    rows = tuple((float(row[0]), float(row[1])) for row in table)
    if not rows:
        raise ValueError("anchor table is empty: give (azimuth, elevation) pairs, e.g. [[30, -30], [90, 20], ...]")
    return rows


def reference_camera(
    elevation: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
    size: int = 512,
    time: float = 0.0,
    device: torch.device | str = "cpu",
) -> Camera:
    """The input-view camera: azimuth 0 at the configured elevation."""
    return Camera.orbit(elevation, 0.0, radius, fovy, size, time, device)


def anchor_cameras(
    elevation: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fovy: float = DEFAULT_FOVY,
    size: int = 320,
    time: float = 0.0,
    table: Sequence[Sequence[float]] | None = None,
    device: torch.device | str = "cpu",
) -> list[Camera]:
    """The anchor cameras, one per row of the anchor table, relative to the configured elevation."""
    return [
        Camera.orbit(elevation + d_elev, azim, radius, fovy, size, time, device)
        for azim, d_elev in anchor_table(table)
    ]


def tile_box(k: int, tile: int = 320) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of tile ``k`` in a Zero123++ grid (2 columns x 3 rows)."""
    row, col = divmod(k, 2)
    return row * tile, col * tile, (row + 1) * tile, (col + 1) * tile


class OrbitCamera:
    """Interactive camera for the viewer: orbit, pan and zoom around a centre.

    Keeps the pose as a rotation matrix (OpenGL axes) so that repeated orbits do not gimbal-lock.
    """

    def __init__(self, width: int, height: int, radius: float = DEFAULT_RADIUS, fovy: float = DEFAULT_FOVY,
                 elevation: float = 0.0, azimuth: float = 0.0):
        self.width, self.height = width, height
        self.radius = radius
        self.fovy = fovy
        self.center = np.zeros(3)
        self.rotation = orbit_camera(elevation, azimuth, 1.0)[:3, :3]

    @property
    def pose(self) -> np.ndarray:
        """Camera-to-world [4, 4], OpenGL."""
        pose = np.eye(4)
        pose[:3, :3] = self.rotation
        pose[:3, 3] = self.center + self.rotation[:, 2] * self.radius
        return pose

    @property
    def view(self) -> np.ndarray:
        """World-to-camera [4, 4], OpenGL."""
        return np.linalg.inv(self.pose)

    def orbit(self, dx: float, dy: float, degrees_per_pixel: float = 0.1) -> None:
        """Rotate around the vertical world axis by ``dx`` and around the camera's right axis by ``dy``."""
        yaw = _axis_angle(np.array([0.0, 1.0, 0.0]), -math.radians(dx * degrees_per_pixel))
        pitch = _axis_angle(self.rotation[:, 0], -math.radians(dy * degrees_per_pixel))
        self.rotation = yaw @ pitch @ self.rotation

    def scale(self, delta: float) -> None:
        """Zoom: positive ``delta`` moves closer."""
        self.radius *= 1.1 ** (-delta)

    def pan(self, dx: float, dy: float, units_per_pixel: float = 0.0005) -> None:
        """Move the centre in the image plane (right and up in the camera frame)."""
        shift = units_per_pixel * self.radius * np.array([-dx, dy, 0.0])
        self.center = self.center + self.rotation @ shift

    def camera(self, time: float = 0.0, device: torch.device | str = "cpu") -> Camera:
        return Camera.from_c2w_opengl(self.pose, self.fovy, self.width, self.height, time, device=device)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix [3, 3] (Rodrigues) about a unit ``axis`` by ``angle`` radians."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)
