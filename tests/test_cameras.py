import math

import numpy as np
import pytest
import torch

from cam_utils import (
    ZERO123PP_V11_ANCHORS,
    Camera,
    OrbitCamera,
    anchor_cameras,
    fov_to_focal,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_camera,
    project_points,
    reference_camera,
    tile_box,
)


def test_orbit_positions_follow_spec():
    # azimuth 0 is +z; negative elevation is above (+y); azimuth 90 is +x.
    np.testing.assert_allclose(orbit_camera(0, 0, 2)[:3, 3], [0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(orbit_camera(-90 + 1e-9, 0, 2)[:3, 3], [0, 2, 0], atol=1e-6)
    np.testing.assert_allclose(orbit_camera(0, 90, 2)[:3, 3], [2, 0, 0], atol=1e-12)
    p = orbit_camera(-30, 45, 3)[:3, 3]
    e, a = math.radians(-30), math.radians(45)
    np.testing.assert_allclose(p, [3 * math.cos(e) * math.sin(a), -3 * math.sin(e), 3 * math.cos(e) * math.cos(a)])


def test_orbit_camera_looks_at_origin_with_opengl_axes():
    for elev, azim in [(0, 0), (-30, 30), (20, 90), (-30, 150), (20, 210), (-60, -100)]:
        pose = orbit_camera(elev, azim, 2)
        rot = pose[:3, :3]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        forward = -rot[:, 2]  # OpenGL looks down -z
        np.testing.assert_allclose(forward, -pose[:3, 3] / np.linalg.norm(pose[:3, 3]), atol=1e-12)
        assert rot[1, 1] > 0  # camera up has a positive world-y part (no roll)


def test_opengl_opencv_round_trip():
    pose = orbit_camera(-20, 70, 2.5)
    cv = opengl_to_opencv(pose)
    np.testing.assert_allclose(opencv_to_opengl(cv), pose)
    np.testing.assert_allclose(cv[:3, 0], pose[:3, 0])
    np.testing.assert_allclose(cv[:3, 1], -pose[:3, 1])
    np.testing.assert_allclose(cv[:3, 2], -pose[:3, 2])


def _hand_projection(elev, azim, radius, fovy, size, point):
    """Project by hand: build the OpenCV axes from the orbit formulae directly."""
    e, a = math.radians(elev), math.radians(azim)
    c = np.array([radius * math.cos(e) * math.sin(a), -radius * math.sin(e), radius * math.cos(e) * math.cos(a)])
    z = -c / np.linalg.norm(c)  # OpenCV forward: towards the origin
    x = np.cross(z, [0.0, 1.0, 0.0])  # right = forward x up... for a y-up world, right = forward x world_up
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # down
    d = np.asarray(point, dtype=np.float64) - c
    xc, yc, zc = d @ x, d @ y, d @ z
    f = size / 2 / math.tan(math.radians(fovy) / 2)
    return np.array([f * xc / zc + size / 2, f * yc / zc + size / 2]), zc


@pytest.mark.parametrize("point", [[0.0, 0.0, 0.0], [0.3, 0.2, -0.1], [-0.25, -0.4, 0.35]])
def test_reference_and_anchor_projections_match_hand_computation(point):
    cams = [(0.0, 0.0, reference_camera(0.0, size=512))]
    cams += [(d_elev, azim, cam) for (azim, d_elev), cam in zip(ZERO123PP_V11_ANCHORS, anchor_cameras(0.0, size=320))]
    for elev, azim, cam in cams:
        uv, depth = project_points(cam, torch.tensor([point], dtype=torch.float64))
        expected_uv, expected_depth = _hand_projection(elev, azim, 2.0, 49.1, cam.width, point)
        np.testing.assert_allclose(uv[0].numpy(), expected_uv, atol=1e-4)
        assert depth[0].item() == pytest.approx(expected_depth, abs=1e-5)


def test_reference_view_orientation():
    cam = reference_camera(0.0, size=512)
    uv, depth = project_points(cam, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    np.testing.assert_allclose(uv[0].numpy(), [256, 256], atol=1e-4)
    assert uv[1, 0] > 256  # world +x is to the right in the input view
    assert uv[2, 1] < 256  # world +y is up (smaller row)
    assert depth[0].item() == pytest.approx(2.0)
    f = fov_to_focal(49.1, 512)
    assert uv[1, 0].item() == pytest.approx(256 + f * 0.5 / 2.0, rel=1e-5)


def test_anchor_above_and_below():
    cams = anchor_cameras(0.0)
    assert cams[0].camera_center[1] > 0  # -30 elevation: above
    assert cams[1].camera_center[1] < 0  # +20: below
    for cam in cams:
        assert cam.camera_center.norm().item() == pytest.approx(2.0, rel=1e-5)


def test_anchor_table_is_configurable():
    cams = anchor_cameras(10.0, table=[[0, 0], [180, 0]])
    assert len(cams) == 2
    np.testing.assert_allclose(
        cams[1].camera_center.numpy(), orbit_camera(10.0, 180, 2.0)[:3, 3], atol=1e-5
    )


def test_intrinsics_and_tiles():
    cam = Camera.orbit(0, 0, size=256)
    k = cam.intrinsics
    assert k[0, 2] == 128 and k[1, 2] == 128
    assert k[0, 0].item() == pytest.approx(fov_to_focal(49.1, 256))
    assert cam.fovx == pytest.approx(49.1)
    assert tile_box(0) == (0, 0, 320, 320)
    assert tile_box(1) == (0, 320, 320, 640)
    assert tile_box(5) == (640, 320, 960, 640)


def test_orbit_camera_interaction():
    oc = OrbitCamera(64, 64, radius=2.0)
    np.testing.assert_allclose(oc.pose, orbit_camera(0, 0, 2.0), atol=1e-12)
    oc.orbit(900, 0)  # 90 degrees of yaw
    pos = oc.pose[:3, 3]
    assert np.linalg.norm(pos) == pytest.approx(2.0)
    assert abs(pos[1]) < 1e-9 and abs(abs(pos[0]) - 2.0) < 1e-6
    oc.scale(1.0)
    assert oc.radius < 2.0
    before = oc.center.copy()
    oc.pan(10, 0)
    assert np.linalg.norm(oc.center - before) > 0
    cam = oc.camera(time=0.5)
    assert cam.time == 0.5 and cam.width == 64
