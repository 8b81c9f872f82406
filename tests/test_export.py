"""scripts/export.py: the occupancy grid, mesh extraction, the mesh rasterizer, the animated GLB,
.splat and PLY sequences, on a small hand-made model (a shell of flat Gaussians, as a trained
surface is, moved by a smooth deformation field)."""
import json
import math
import os
import struct

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

import cam_utils
from cam_utils import CameraConfig
from gs_renderer import GaussianModel4D
from stag4d.errors import UserError
from stag4d.evaluation.visualize import interpolated_times
from stag4d.export import checks, cli, gltf, mesh, mesh_render, occupancy, splat, texture
from stag4d.export.occupancy import GaussianCloud, GridBox
from stag4d.files import torch_save
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.gaussians.ply import read_gaussian_ply
from stag4d.rasterizer import GaussianParams, render
from stag4d.training import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "stag4d.yaml")
T = 4
SIZE = 64  # check cameras
RADII = (0.3, 0.4, 0.25)


def quats_from_z(normals: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) turning +z onto each unit normal [N, 3]."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    q = torch.cat([1.0 + (z * normals).sum(1, keepdim=True), torch.cross(z, normals, dim=1)], dim=1)
    return torch.nn.functional.normalize(q, dim=1)


def shell_model(seed: int = 0, n: int = 2500, motion: float = 1.0) -> GaussianModel4D:
    """Flat opaque Gaussians (0.03 x 0.03 x 0.006, opacity 0.95) tangent to an ellipsoid of radii
    RADII, each coloured by its direction; the time planes vary smoothly (a sine) so the shape moves
    (about 6% of its size between frames 0 and 2 at ``motion`` 1)."""
    cfg = DeformationConfig(kplanes_features=4, kplanes_resolution=[4, 4, 4, 17], multires=[1], net_width=8,
                            time_mapping="full")
    torch.manual_seed(seed)
    model = GaussianModel4D(sh_degree=0, deformation=cfg)
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    radii = torch.tensor(RADII)
    normals = torch.nn.functional.normalize(directions / radii, dim=1)
    colors = 0.5 + 0.4 * directions  # RGB in [0.1, 0.9]
    model.set_gaussians(directions * radii, ((colors - 0.5) / 0.28209479177387814).unsqueeze(1), torch.zeros(n, 0, 3),
                        torch.log(torch.tensor([0.03, 0.03, 0.006])).repeat(n, 1), quats_from_z(normals),
                        torch.full((n,), math.log(0.95 / 0.05)))
    field = model.deformation
    with torch.no_grad():
        for planes in field.grid.time_planes:
            t = torch.linspace(0.0, 1.0, planes.shape[2]).view(1, 1, -1, 1)
            phase = torch.rand(planes.shape[0], planes.shape[1], 1, planes.shape[3], generator=g) * 2 * math.pi
            planes.copy_(1.0 + 0.8 * torch.sin(2 * math.pi * t + phase))
        field.position_head[-1].weight.mul_(2.0 * motion)
        field.position_head[-1].bias.zero_()
        field.scale_head[-1].weight.mul_(0.1)
        field.scale_head[-1].bias.zero_()
        field.rotation_head[-1].weight.mul_(0.1)
        field.rotation_head[-1].bias.zero_()
    return model


def save_step(model: GaussianModel4D, folder: str) -> None:
    model.save(folder)
    torch_save({"format": 1}, os.path.join(folder, runs.CHECKPOINT_FILE))


@pytest.fixture(scope="module")
def model():
    return shell_model()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, model):
    """logs/run/5: the shell model; logs/faint/1: the same with opacity 0.02 (no surface at 0.9)."""
    root = tmp_path_factory.mktemp("export")
    save_step(model, str(root / "logs" / "run" / "5"))
    faint = shell_model()
    with torch.no_grad():
        faint.opacity_logits.fill_(math.log(0.02 / 0.98))
    save_step(faint, str(root / "logs" / "faint" / "1"))
    return root


def cli_args(root, *extra):
    return ["--config", CONFIG, "save_path=run", f"outdir={root / 'logs'}", f"valid_dir={root / 'valid'}",
            "device=cpu", "backend=torch", f"num_frames={T}", f"ref_size={SIZE}", f"anchor_size={SIZE}", *extra]


# ------------------------------------------------------------------------------------------------
# occupancy grid


def random_cloud(n: int = 40, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    return GaussianCloud(torch.rand(n, 3, generator=g) - 0.5, torch.rand(n, 3, generator=g) * 0.1 + 0.01,
                         torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
                         torch.rand(n, generator=g), torch.rand(n, 3, generator=g))


def test_occupancy_grid_equals_the_full_product():
    cloud = random_cloud()
    box = occupancy.object_box(cloud, 24)
    assert max(box.shape) == 24 + 1 + 4  # 24 cells (25 points) + 2 margin cells each side
    grid, colors = occupancy.occupancy_grid(cloud, box, progress=False)
    lowpass = (occupancy.LOWPASS_CELLS * box.spacing) ** 2
    points = box.points().reshape(-1, 3)
    expected = occupancy.occupancy_at(cloud, points, extra_variance=lowpass)
    assert torch.allclose(grid.reshape(-1), expected, atol=2e-6)
    assert float(expected.max()) > 0.9  # the test sees opaque regions, not only faint tails
    untruncated = occupancy.occupancy_at(cloud, points, cutoff=None, extra_variance=lowpass)
    # each cut tail is below max(1/255, 1.1% of its opacity); a few overlap at some points
    assert (grid.reshape(-1) - untruncated).abs().max() < 0.035
    # tiny chunks (every Gaussian cut into slabs) give the same grid
    small, small_colors = occupancy.occupancy_grid(cloud, box, pair_budget=50, progress=False)
    assert torch.allclose(small, grid, atol=1e-6) and torch.allclose(small_colors, colors, atol=1e-5)
    # the colour grid holds sum alpha_i rgb_i and sum alpha_i: one Gaussian of one colour reads back that colour
    one = GaussianCloud(*(t[:1] for t in (cloud.means, cloud.scales, cloud.quats, cloud.opacities, cloud.colors)))
    _, c = occupancy.occupancy_grid(one, box, progress=False)
    covered = c[..., 3] > 1e-3
    assert torch.allclose(c[covered][:, :3] / c[covered][:, 3:], one.colors.expand(int(covered.sum()), 3), atol=1e-5)


def test_faint_gaussians_reach_less_far():
    opacities = torch.tensor([1.0, 0.5, 0.02, 1 / 255, 0.001])
    reach = occupancy.squared_reach(opacities)
    assert torch.allclose(reach[:3], torch.tensor([9.0, 9.0, 2 * math.log(255 * 0.02)]))
    assert reach[3] == 0 and reach[4] == 0
    assert torch.allclose(opacities[2] * torch.exp(-0.5 * reach[2]), torch.tensor(1 / 255))  # alpha 1/255 at the edge


def test_work_is_cut_into_bounded_chunks():
    lo = torch.tensor([[0, 0, 0], [5, 5, 5], [1, 2, 3]])
    counts = torch.tensor([[10, 4, 5], [1, 1, 1], [0, 3, 3]])  # 200 points, 1 point, none
    gaussian, item_lo, item_counts = occupancy._work_items(lo, counts, pair_budget=45)
    sizes = item_counts.prod(dim=1)
    assert gaussian.tolist() == [0, 0, 0, 0, 0, 1] and sizes.tolist() == [40, 40, 40, 40, 40, 1]
    assert item_lo[:5, 0].tolist() == [0, 2, 4, 6, 8]  # x-slabs of 2 planes of 20 points
    chunks = occupancy._chunks(sizes, 85)
    assert chunks == [(0, 2), (2, 4), (4, 6)]
    assert all(int(sizes[a:b].sum()) <= 85 for a, b in chunks)


def test_object_box_ignores_invisible_gaussians():
    cloud = random_cloud()
    cloud.opacities[0] = 1e-4
    cloud.means[0] = torch.tensor([5.0, 5.0, 5.0])  # a far, invisible Gaussian
    box = occupancy.object_box(cloud, 20)
    assert (box.origin + box.spacing * (np.array(box.shape) - 1) < 1.0).all()
    clipped = occupancy.object_box(random_cloud(), 20, bounds=0.2)
    assert clipped.origin.min() >= -0.2 - 2 * clipped.spacing - 1e-9


# ------------------------------------------------------------------------------------------------
# surface


def sphere_field(radius: float = 0.5) -> tuple[np.ndarray, GridBox]:
    box = GridBox(np.array([-1.0, -1.0, -1.0]), 0.04, (51, 51, 51))
    return 1.0 - box.points().norm(dim=-1).numpy() / (2 * radius), box  # 0.5 on the sphere, larger inside


def test_marching_cubes_finds_the_sphere_with_outward_faces():
    field, box = sphere_field()
    vertices, faces = mesh.marching_cubes(field, box, 0.5)
    surface = mesh.clean(vertices, faces, 0.01)
    assert surface.is_watertight
    assert abs(np.linalg.norm(surface.vertices, axis=1) - 0.5).max() < 0.004
    assert surface.volume == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.01)  # positive: faces point outwards
    small = mesh.decimate(surface, 400)
    assert len(small.faces) <= 400 and small.volume == pytest.approx(surface.volume, rel=0.03)
    assert mesh.decimate(surface, 0) is surface
    with pytest.raises(mesh.EmptySurface):
        mesh.marching_cubes(field, box, 2.0)


def test_clean_drops_small_parts():
    big = trimesh.creation.icosphere(3, radius=0.5)
    speck = trimesh.creation.icosphere(0, radius=0.01)
    speck.apply_translation([2.0, 0, 0])
    both = trimesh.util.concatenate([big, speck])
    assert len(speck.faces) / len(both.faces) < 0.02
    assert len(mesh.clean(both.vertices, both.faces, 0.02).faces) == len(big.faces)
    assert len(mesh.clean(both.vertices, both.faces, 0.0).faces) == len(both.faces)


def test_grid_samples_are_trilinear():
    box = GridBox(np.array([0.5, -1.0, 2.0]), 0.25, (5, 6, 7))
    points = box.points()
    grid = torch.stack([points[..., 0] * 2 + points[..., 1] - points[..., 2], points[..., 2]], dim=-1)
    query = torch.tensor([[0.6, -0.3, 2.9], [1.4, 0.1, 3.3]])
    expected = torch.stack([query[:, 0] * 2 + query[:, 1] - query[:, 2], query[:, 2]], dim=-1)
    assert torch.allclose(mesh.sample_grid(grid, box, query), expected, atol=1e-5)  # linear: exact


def test_surface_of_the_shell(model):
    """The canonical surface hugs the shell of Gaussian centres (just outside it) and takes their colours."""
    cloud = GaussianCloud.from_params(model.gaussians_at(None))
    surface = mesh.extract_surface(cloud, 64, 0.5, 4000, 0.01, progress=False)
    assert 2000 < surface.num_faces <= 4000
    assert trimesh.Trimesh(surface.vertices, surface.faces).is_watertight
    directions = surface.vertices / np.float32(RADII)
    scale = np.linalg.norm(directions, axis=1)  # 1 on the shell
    assert 1.0 < scale.mean() < 1.08 and scale.min() > 0.97
    expected = 0.5 + 0.4 * directions / scale[:, None]  # the Gaussians' colour at that direction
    assert np.abs(surface.colors - expected).mean() < 0.03


def test_skinned_vertices_follow_their_gaussians(model):
    """Weights sum to 1; at the reference time nothing moves; a vertex on a Gaussian's centre is
    carried (almost) exactly as that centre, since that Gaussian's alpha dominates there."""
    with torch.no_grad():
        cloud = GaussianCloud.from_params(model.gaussians_at(0.25))
    vertices = cloud.means[:40].numpy() + np.float32([0.0, 0.0, 0.001])
    skinning = mesh.skin_to_gaussians(vertices, cloud)
    assert skinning.indices.shape == (40, mesh.SKIN_NEIGHBOURS)
    assert torch.allclose(skinning.weights.sum(dim=1), torch.ones(40))
    assert (skinning.indices[:, 0] == torch.arange(40)).all()  # the nearest is the Gaussian itself
    times = [0.0, 0.25, 0.75]
    moved = mesh.carry_with_gaussians(model, vertices, skinning, 0.25, times, chunk_times=2)
    assert np.array_equal(moved[1], vertices)
    with torch.no_grad():
        for k, t in enumerate(times):
            own = model.gaussians_at(t).means[:40].numpy() - cloud.means[:40].numpy()
            assert np.abs(moved[k] - vertices - own).mean() < 0.2 * np.abs(own).mean() + 1e-6


def test_smoothing_the_motion_keeps_smooth_motion_and_removes_jitter():
    sphere = trimesh.creation.icosphere(3, radius=0.5)
    vertices = np.asarray(sphere.vertices, np.float32)
    faces = np.asarray(sphere.faces)
    smooth = np.stack([vertices, vertices + np.float32([0.1, -0.2, 0.05])])  # rigid: unchanged
    assert np.allclose(mesh.smooth_displacements(smooth, faces, 0), smooth, atol=1e-6)
    jitter = np.random.default_rng(0).normal(0, 0.01, vertices.shape).astype(np.float32)
    noisy = np.stack([vertices, smooth[1] + jitter, vertices])
    out = mesh.smooth_displacements(noisy, faces, 2)
    assert np.array_equal(out[2], vertices)  # the reference frame does not move
    remaining = out[1] - smooth[1]
    assert np.abs(remaining).mean() < 0.25 * np.abs(jitter).mean()
    assert np.allclose(remaining.mean(axis=0), jitter.mean(axis=0), atol=2e-3)  # the mean motion stays
    area = trimesh.Trimesh(noisy[1], faces).area / trimesh.Trimesh(out[1], faces).area
    assert area > 1.03 and trimesh.Trimesh(out[1], faces).area == pytest.approx(sphere.area, rel=0.005)


def test_vertices_move_as_gaussian_centres(model):
    """A vertex placed on a Gaussian's canonical centre moves exactly as that centre."""
    times = [0.0, 0.25, 0.6]
    moved = mesh.deform_vertices(model, model.means[:50].detach().numpy(), times, chunk_points=16, chunk_times=2)
    with torch.no_grad():
        for k, t in enumerate(times):
            assert np.allclose(moved[k], model.gaussians_at(t).means[:50].numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# mesh rasterizer


def square(half: float, z: float = 0.0, x: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    vertices = torch.tensor([[-half + x, -half, z], [half + x, -half, z], [half + x, half, z], [-half + x, half, z]])
    return vertices, torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_rasterizer_covers_the_pixel_centres_inside():
    camera = cam_utils.Camera.orbit(0.0, 0.0, 2.0, 49.1, 64)
    vertices, faces = square(0.25, x=0.1)
    out = mesh_render.rasterize(vertices, faces, camera)
    uv, _ = cam_utils.project_points(camera, vertices)
    centres = torch.arange(64) + 0.5
    inside_u = (centres >= uv[:, 0].min()) & (centres <= uv[:, 0].max())
    inside_v = (centres >= uv[:, 1].min()) & (centres <= uv[:, 1].max())
    assert torch.equal(out.mask, inside_v[:, None] & inside_u[None, :])
    assert torch.allclose(out.depth[out.mask], torch.tensor(2.0))
    # world +x is image right, world +y is image up (OpenCV: v grows downwards)
    columns = torch.nonzero(out.mask.any(dim=0)).squeeze(1)
    assert columns.float().mean() > 32


def test_rasterizer_keeps_the_nearest_face_in_any_order():
    camera = cam_utils.Camera.orbit(0.0, 0.0, 2.0, 49.1, 48)
    near_v, near_f = square(0.2, z=0.3)
    far_v, far_f = square(0.3, z=-0.3)
    colors = torch.tensor([[1.0, 0, 0]] * 4 + [[0, 0, 1.0]] * 4)
    for first_near in (True, False):
        parts = [(near_v, near_f), (far_v, far_f)] if first_near else [(far_v, far_f), (near_v, near_f)]
        vertices = torch.cat([parts[0][0], parts[1][0]])
        faces = torch.cat([parts[0][1], parts[1][1] + 4])
        cols = colors if first_near else colors.flip(0)
        out = mesh_render.rasterize(vertices, faces, camera, cols, shading=0.0, pair_budget=37)
        centre = out.image[:, 24, 24]
        assert torch.allclose(centre, torch.tensor([1.0, 0, 0])), first_near
        assert out.depth[24, 24] == pytest.approx(1.7, abs=1e-5)


def test_mesh_silhouette_matches_the_gaussian_rasterizer():
    """A flat disc Gaussian off the image centre, facing the camera: its alpha > 0.5 region is the
    ellipse of radii sigma * sqrt(2 ln(2 o)); a polygon of those radii covers the same pixels, at
    the same place (seen obliquely, the Gaussian rasterizer's affine (EWA) projection of so large a
    Gaussian is itself off by a pixel, so the reference is taken face-on)."""
    camera = cam_utils.Camera.orbit(0.0, 0.0, 2.0, 49.1, 96)
    centre = torch.tensor([0.15, 0.1, -0.05])
    axes = torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.15, 0.0]])  # sigma_x, sigma_y in the z = const plane
    opacity = 0.99
    gaussian = GaussianParams(centre[None], torch.log(torch.tensor([[0.25, 0.15, 1e-4]])),
                              torch.tensor([[1.0, 0, 0, 0]]), torch.logit(torch.tensor([opacity])),
                              colors=torch.ones(1, 3))
    alpha = render(gaussian, camera, torch.ones(3), backend="torch").alpha[0]
    radius = math.sqrt(2 * math.log(2 * opacity))
    angles = torch.linspace(0, 2 * math.pi, 257)[:-1]
    rim = centre + radius * (torch.cos(angles)[:, None] * axes[0] + torch.sin(angles)[:, None] * axes[1])
    vertices = torch.cat([centre[None], rim])
    faces = torch.stack([torch.zeros(256, dtype=torch.long), torch.arange(1, 257), torch.arange(1, 257) % 256 + 1], 1)
    mask = mesh_render.rasterize(vertices, faces, camera).mask
    gaussian_mask = alpha > 0.5
    iou = float((mask & gaussian_mask).sum() / (mask | gaussian_mask).sum())
    assert iou > 0.99 and int(mask.sum()) > 400
    centroid = [torch.nonzero(m).float().mean(dim=0) for m in (mask, gaussian_mask)]
    assert torch.allclose(centroid[0], centroid[1], atol=0.1)  # same place: no flip, no half-pixel offset
    assert centroid[0][1] > 48 and centroid[0][0] < 48  # +x is right, +y is up
    # a shift of the mesh by 2 pixels' worth breaks it: the comparison is sensitive
    shifted = mesh_render.rasterize(vertices + torch.tensor([0.03, 0.0, 0.0]), faces, camera).mask
    assert float((shifted & gaussian_mask).sum() / (shifted | gaussian_mask).sum()) < iou - 0.03


def test_rasterizer_samples_a_texture():
    """A square facing the camera, UVs over the whole texture: each quadrant of the image shows its
    texel (glTF's convention: v = 0 is the top row of the image)."""
    camera = cam_utils.Camera.orbit(0.0, 0.0, 2.0, 49.1, 64)
    vertices, faces = square(0.5)  # counter-clockwise from (-x, -y): bottom-left, bottom-right, top-right, top-left
    uvs = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    image = torch.tensor([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=torch.uint8)
    out = mesh_render.rasterize(vertices, faces, camera, shading=0.0, uvs=uvs, texture=image).image
    corners = {"top-left": out[:, 20, 20], "top-right": out[:, 20, 43], "bottom-left": out[:, 43, 20],
               "bottom-right": out[:, 43, 43]}
    expected = {"top-left": [1, 0, 0], "top-right": [0, 1, 0], "bottom-left": [0, 0, 1], "bottom-right": [1, 1, 1]}
    for name, rgb in corners.items():
        assert torch.allclose(rgb, torch.tensor(expected[name], dtype=torch.float32), atol=0.02), name


# ------------------------------------------------------------------------------------------------
# UV texture


def stripes_field(frequency: float = 12.0) -> mesh.ColorField:
    """A colour grid on [-0.6, 0.6]^3 whose colour varies quickly along x (stripes) and slowly along y."""
    box = GridBox(np.array([-0.6, -0.6, -0.6]), 1.2 / 127, (128, 128, 128))
    points = box.points()
    rgb = torch.stack([0.5 + 0.45 * torch.sin(frequency * points[..., 0]), 0.5 + 0.4 * points[..., 1],
                       torch.full_like(points[..., 0], 0.3)], dim=-1)
    return mesh.ColorField(torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1), box)


def test_baked_texture_holds_the_surface_colours():
    """Unwrapped with xatlas, every vertex keeps its triangle and UVs in [0, 1]; the texture sampled
    at a face's centre (in UV) gives the colour field at the face's centre (in space); on a coarse
    mesh and striped colours that is several times closer than interpolating vertex colours."""
    pytest.importorskip("xatlas")
    sphere = trimesh.creation.icosphere(2, radius=0.5)  # 320 faces, edges about 0.15: coarse for the stripes
    vertices, faces = np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64)
    field = stripes_field()
    layout = texture.unwrap(vertices, faces, 256)
    assert np.array_equal(vertices[layout.vertex_map][layout.faces], vertices[faces])  # the same triangles
    assert layout.uvs.min() >= 0.0 and layout.uvs.max() <= 1.0 and len(layout.vertex_map) > len(vertices)
    image = texture.bake(vertices, layout, field, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    centres = vertices[faces].mean(axis=1)
    truth = field.at(centres)
    uv_centres = torch.as_tensor(layout.uvs[layout.faces].mean(axis=1))
    from_texture = mesh_render.sample_texture(torch.as_tensor(image), uv_centres).numpy()
    from_vertices = field.at(vertices)[faces].mean(axis=1)
    texture_error, vertex_error = np.abs(from_texture - truth).mean(), np.abs(from_vertices - truth).mean()
    assert texture_error < 0.01 and vertex_error > 3 * texture_error
    # every texel is filled (the empty ones from the nearest chart texel): no black seams under filtering
    assert (image.reshape(-1, 3).max(axis=1) > 0).all()


def test_textured_glb_round_trip(tmp_path):
    """TEXCOORD_0 and a PNG base colour texture instead of COLOR_0; pygltflib and trimesh read it back."""
    positions, normals, faces, _ = animated_sphere(3)
    uvs = np.random.default_rng(1).random((positions.shape[1], 2)).astype(np.float32)
    image = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    path = str(tmp_path / "t.glb")
    gltf.write_animated_glb(path, positions, normals, faces, None, fps=10, uvs=uvs, texture=image)
    back = gltf.read_animated_glb(path)
    assert np.array_equal(back.texture, image) and np.array_equal(back.uvs, uvs)
    assert np.allclose(back.positions, positions, atol=1e-6) and back.num_targets == 3
    expected = mesh_render.sample_texture(torch.as_tensor(image), torch.as_tensor(uvs)).numpy()
    assert np.allclose(back.colors, expected)
    document = pygltflib.GLTF2().load_binary(path)
    primitive = document.meshes[0].primitives[0]
    assert primitive.attributes.COLOR_0 is None and primitive.attributes.TEXCOORD_0 is not None
    assert document.images[0].mimeType == "image/png"
    assert document.materials[0].pbrMetallicRoughness.baseColorTexture.index == 0
    loaded = next(iter(trimesh.load(path, process=False).geometry.values()))
    assert np.allclose(loaded.visual.uv[:, 0], uvs[:, 0], atol=1e-6)  # trimesh flips v to its own convention
    assert np.array_equal(np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")), image)
    with pytest.raises(ValueError):
        gltf.write_animated_glb(path, positions, normals, faces, None, fps=10)  # neither colours nor texture


# ------------------------------------------------------------------------------------------------
# GLB


def animated_sphere(frames: int = 5):
    sphere = trimesh.creation.icosphere(2, radius=0.5)
    vertices = np.asarray(sphere.vertices, np.float32)
    faces = np.asarray(sphere.faces, np.int64)
    positions = np.stack([vertices * (1 + 0.1 * i) + np.float32([0.05 * i, 0, 0]) for i in range(frames)])
    normals = mesh.vertex_normals(positions[0], faces)
    colors = np.random.default_rng(0).random((len(vertices), 3)).astype(np.float32)
    return positions, normals, faces, colors


def test_glb_round_trip_and_what_viewers_read(tmp_path):
    positions, normals, faces, colors = animated_sphere(5)
    path = str(tmp_path / "a.glb")
    gltf.write_animated_glb(path, positions, normals, faces, colors, fps=12.5, extras={"times": [0.1]})
    back = gltf.read_animated_glb(path)
    assert back.num_targets == 5 and back.duration == pytest.approx(5 / 12.5)
    assert np.allclose(back.positions, positions, atol=1e-6) and np.array_equal(back.faces, faces)
    assert np.allclose(back.normals, normals, atol=1e-6)  # frame 0's
    assert np.abs(back.colors - colors).max() < 2e-4  # 16-bit linear
    assert back.extras == {"times": [0.1]} and back.interpolation == "linear"

    document = pygltflib.GLTF2().load_binary(path)
    primitive = document.meshes[0].primitives[0]
    assert len(primitive.targets) == 5 and document.meshes[0].weights == [0.0] * 5
    assert document.meshes[0].extras["targetNames"] == [f"frame_{i}" for i in range(5)]
    channel = document.animations[0].channels[0]
    assert (channel.target.node, channel.target.path) == (0, "weights")
    times = document.accessors[document.animations[0].samplers[0].input]
    assert times.max == [pytest.approx(5 / 12.5)] and times.min == [0.0]  # duration = T / fps
    for attributes in primitive.targets:  # glTF requires bounds on morph target positions
        assert document.accessors[attributes["POSITION"]].min is not None
    assert document.extensionsUsed == [gltf.UNLIT]
    assert all(view.byteOffset % 4 == 0 for view in document.bufferViews)

    loaded = trimesh.load(path, process=False)
    geometry = list(loaded.geometry.values())[0]
    assert np.allclose(geometry.vertices, positions[0], atol=1e-6) and np.array_equal(geometry.faces, faces)


def test_glb_playback_follows_the_frames(tmp_path):
    positions, normals, faces, colors = animated_sphere(4)
    for interpolation in ("linear", "step"):
        path = str(tmp_path / f"{interpolation}.glb")
        gltf.write_animated_glb(path, positions, normals, faces, colors, fps=10, interpolation=interpolation)
        back = gltf.read_animated_glb(path)
        assert np.allclose(back.key_times, np.arange(5) / 10)
        for i in range(4):
            assert np.allclose(gltf.positions_at(back, back.key_times[i]), positions[i], atol=1e-6)
        between = gltf.positions_at(back, 0.15)
        expected = 0.5 * (positions[1] + positions[2]) if interpolation == "linear" else positions[1]
        assert np.allclose(between, expected, atol=1e-5)
        assert np.allclose(gltf.positions_at(back, 0.39), positions[3], atol=1e-6)  # the last frame is held


def test_srgb_round_trip():
    values = np.linspace(0, 1, 101)
    assert np.allclose(gltf.linear_to_srgb(gltf.srgb_to_linear(values)), values, atol=1e-9)
    assert gltf.srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.214, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# .splat


def test_splat_layout_and_round_trip(tmp_path, model):
    with torch.no_grad():
        gaussians = model.gaussians_at(0.4)
    path = str(tmp_path / "f.splat")
    assert splat.write_splat(path, gaussians) == 32 * model.num == os.path.getsize(path)
    expected = {"position": gaussians.means.numpy(), "scale": gaussians.log_scales.exp().numpy(),
                "rgb": (0.5 + 0.28209479177387814 * gaussians.sh[:, 0]).clamp(0, 1).numpy(),
                "opacity": gaussians.opacity_logits.detach().sigmoid().numpy(),
                "quat": torch.nn.functional.normalize(gaussians.quats, dim=1).numpy()}
    # the first record by the spec's byte offsets, independently of the numpy dtype
    with open(path, "rb") as f:
        first = struct.unpack("<3f3f4B4B", f.read(32))
    importance = expected["scale"].astype(np.float64).prod(axis=1) * expected["opacity"]
    top = int(np.argmax(importance))  # written first: the largest volume x opacity
    assert np.array_equal(np.float32(first[:3]), expected["position"][top])
    assert np.allclose(first[3:6], expected["scale"][top], rtol=1e-6)
    assert np.abs(np.array(first[6:9]) / 255 - expected["rgb"][top]).max() <= 0.5 / 255 + 1e-6
    assert abs(first[9] / 255 - expected["opacity"][top]) <= 0.5 / 255 + 1e-6
    assert np.abs((np.array(first[10:14]) - 128) / 128 - expected["quat"][top]).max() <= 1 / 128

    read = splat.read_splat(path)
    a, b = np.lexsort(read["position"].T[::-1]), np.lexsort(expected["position"].T[::-1])
    assert np.array_equal(read["position"][a], expected["position"][b])  # float32: exact
    assert np.allclose(read["scale"][a], expected["scale"][b], rtol=1e-6, atol=0)
    assert np.abs(read["rgb"][a] - expected["rgb"][b]).max() <= splat.COLOR_STEP / 2 + 1e-6
    assert np.abs(read["opacity"][a] - expected["opacity"][b]).max() <= splat.COLOR_STEP / 2 + 1e-6
    error = np.abs(read["quat"][a] - expected["quat"][b])
    near_one = expected["quat"][b] > 1 - splat.ROTATION_STEP / 2  # stored as 255: reads back 127/128
    assert error[~near_one].max() <= splat.ROTATION_STEP / 2 + 1e-6 and error.max() <= splat.ROTATION_STEP + 1e-6
    order = np.prod(read["scale"].astype(np.float64), axis=1) * read["opacity"]
    assert (np.diff(order) <= 2.0 / 255 * order[:-1]).all()  # by decreasing importance (up to the 8-bit opacity)


def test_truncated_splat_is_a_one_line_error(tmp_path):
    path = tmp_path / "cut.splat"
    path.write_bytes(b"\0" * 40)
    with pytest.raises(UserError, match="cut.splat: 40 bytes") as err:
        splat.read_splat(str(path))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def glb_run(workspace):
    out = workspace / "out" / "shell.glb"
    cli.main(cli_args(workspace, "format=glb", f"out={out}", "mesh_resolution=64", "max_faces=4000", "fps=8",
                      "check=true"))
    return out


def test_glb_export_loads_with_the_frames_and_fps(glb_run):
    back = gltf.read_animated_glb(str(glb_run))
    assert back.num_targets == T and back.duration == pytest.approx(T / 8)
    assert 1000 < len(back.faces) <= 4000
    assert back.extras["times"] == [i / T for i in range(T)] and back.extras["frames"] == list(range(T))
    assert np.abs(back.positions[2] - back.positions[0]).max() > 0.02  # the frames differ: it moves
    scene = trimesh.load(str(glb_run))
    assert len(list(scene.geometry.values())[0].faces) == len(back.faces)


def test_glb_export_passes_the_quality_checks(glb_run):
    """Silhouette IoU >= 0.85 at the reference and anchor cameras at every frame; the motion check:
    the vertices keep their offset from their nearest Gaussian centre within 2% of the object's
    size and take away most of the drift standing still would leave, where the frame-0 mesh left
    in place fails it; the animated mesh stays within 2% of the surface re-extracted at each frame,
    the reference frame's mesh left in place several times further off. The issue's literal
    vertex-to-nearest-centre distance is reported; on this shell it is about 3% at every frame,
    animated or not (the surface sits about two Gaussian thicknesses outside the centres): it is
    asserted only to be no worse than the mesh left in place."""
    report = json.loads((glb_run.parent / "shell_check.json").read_text())
    iou, motion, fresh = report["silhouette_iou"], report["motion"], report["reextraction"]
    assert iou["cameras"] == ["reference"] + [f"anchor{k}" for k in range(6)]
    assert np.array(iou["per_frame"]).shape == (T, 7)
    assert iou["min"] >= 0.85 and iou["pass"]
    reference = motion["reference_frame"]
    assert reference == T // 2 and motion["per_frame_relative"][reference] == 0.0
    assert motion["pass"] and motion["max_relative"] <= 0.02 and motion["follow_ratio"] <= 0.5
    static = motion["static_mesh"]
    assert not static["pass"] and static["follow_ratio"] == pytest.approx(1.0)
    assert static["max_relative"] > 0.02 and static["max_relative"] > 3 * motion["max_relative"]
    assert fresh["frames"] == list(range(T)) and fresh["max_relative"] <= 0.02
    assert fresh["static_max_relative"] > 3 * fresh["max_relative"]
    literal = report["nearest_centre"]
    animated, static = np.array(literal["per_frame_relative"]), np.array(literal["static_per_frame_relative"])
    assert (animated <= static + 1e-4).all() and static.max() > 1.2 * animated.max()
    assert report["morph_targets"] == T and report["duration"] == pytest.approx(T / 8)
    from PIL import Image

    sheet = np.asarray(Image.open(glb_run.parent / "shell_sheet.png"))
    assert sheet.shape[0] > 4 * cli.SHEET_SIZE and sheet.shape[1] > 3 * cli.SHEET_SIZE


def test_textured_export_passes_the_checks(workspace, glb_run):
    """texture=uv: more vertices (split at the charts' seams), the same surface and motion; the
    colours (unshaded mesh against the Gaussians' colour) at least as close as the vertex colours'."""
    pytest.importorskip("xatlas")
    out = workspace / "out" / "textured.glb"
    cli.main(cli_args(workspace, "format=glb", f"out={out}", "mesh_resolution=64", "max_faces=4000", "fps=8",
                      "texture=uv", "texture_size=256", "check=true"))
    report = json.loads((workspace / "out" / "textured_check.json").read_text())
    vertex = json.loads((glb_run.parent / "shell_check.json").read_text())
    back = gltf.read_animated_glb(str(out))
    assert back.texture.shape == (256, 256, 3) and back.num_targets == T
    assert report["vertices"] > vertex["vertices"] and report["faces"] == vertex["faces"]
    assert report["texture"] == "uv" and report["silhouette_iou"]["pass"] and report["motion"]["pass"]
    assert report["silhouette_iou"]["min"] == pytest.approx(vertex["silhouette_iou"]["min"], abs=1e-3)
    assert report["color_psnr"]["mean"] > 25 and report["color_psnr"]["mean"] > vertex["color_psnr"]["mean"] - 0.2


def test_texture_without_xatlas_is_a_one_line_error(workspace, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "xatlas", None)  # import xatlas raises ImportError
    with pytest.raises(SystemExit):
        cli.main(cli_args(workspace, "format=glb", f"out={workspace / 'out' / 'x.glb'}", "mesh_resolution=32",
                          "texture=uv"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "xatlas" in err and "texture=vertex" in err


def test_a_wrong_mesh_fails_the_silhouette_check(model):
    """The IoU check has teeth: the exported frames compared at the wrong times, or a shrunken mesh, fail."""
    times = [0.0, 0.5]
    cloud = GaussianCloud.from_params(model.gaussians_at(times[0]))
    surface = mesh.extract_surface(cloud, 64, 0.5, 4000, 0.01, progress=False)
    skinning = mesh.skin_to_gaussians(surface.vertices, cloud)
    positions = mesh.carry_with_gaussians(model, surface.vertices, skinning, times[0], times)
    cameras = checks.check_cameras(CameraConfig(), SIZE, SIZE)[:3]
    good = checks.silhouette_ious(model, positions, surface.faces, times, cameras, "torch", progress=False)
    swapped = checks.silhouette_ious(model, positions[::-1].copy(), surface.faces, times, cameras, "torch",
                                     progress=False)
    shrunk = checks.silhouette_ious(model, positions * 0.85, surface.faces, times, cameras, "torch", progress=False)
    assert good.min() >= 0.85 and shrunk.max() < 0.85 and swapped.min() < good.min() - 0.02


def test_drift_measures_motion_not_the_offset():
    """Vertices that keep their offset from their nearest centre drift 0, however far the offset;
    left in place they drift as far as the centres move (follow ratio 1: fail, even for motion
    under 2%); carried half way, half; carried the wrong way, more than standing still."""
    g = np.random.default_rng(0)
    centres0 = g.uniform(-0.5, 0.5, (300, 3))
    motion = np.stack([np.zeros(3), [0.015, 0.0, 0.0], [0.0, -0.01, 0.005]])  # at most 1.5% of the size
    centres = centres0[None] + motion[:, None] + g.normal(0, 1e-4, (3, 300, 3))  # small jitter
    vertices = centres0[:100] + 0.03 * g.normal(size=(100, 3))  # 3% away from the centres
    pair = np.argmin(np.linalg.norm(vertices[:, None] - centres0[None], axis=-1), axis=1)
    carried = vertices[None] + (centres[:, pair] - centres[0, pair])
    drift = checks.drift_distances(centres, carried, 0)
    assert drift["mean"].max() < 1e-9 and checks.follow_ratio(drift) < 1e-6
    assert checks.drift_summary(drift, 0)["pass"]
    still = checks.drift_distances(centres, np.repeat(carried[:1], 3, axis=0), 0)
    assert np.allclose(still["mean"], still["motion"]) and checks.follow_ratio(still) == pytest.approx(1.0)
    summary = checks.drift_summary(still, 0)
    assert summary["max_relative"] < 0.02 and not summary["pass"]  # small motion: only the ratio catches it
    half = checks.drift_distances(centres, 0.5 * (carried + carried[:1]), 0)
    assert checks.follow_ratio(half) == pytest.approx(0.5, abs=0.01)
    backwards = checks.drift_distances(centres, carried[:1] - (carried - carried[:1]), 0)
    assert checks.follow_ratio(backwards) == pytest.approx(2.0, abs=0.02)
    assert not checks.drift_summary(backwards, 0)["pass"]
    # the literal measure cannot tell the carried vertices from the unmoved ones: both sit at the offset
    literal = checks.nearest_centre_distances(centres, carried)
    assert np.allclose(literal["mean"], literal["static"], rtol=0.3)
    assert literal["mean"].min() > 0.02 * literal["size"].max()
    # the reference frame is where the pairs are made: from frame 2, frame 2 drifts 0
    assert checks.drift_distances(centres, np.repeat(carried[:1], 3, axis=0), 2)["mean"][2] == 0.0


def test_drift_of_a_still_object_passes():
    """No motion to follow (the centres stay put): nothing drifts, the ratio is 0, a mesh left in place passes."""
    centres = np.repeat(np.random.default_rng(1).uniform(-0.5, 0.5, (50, 3))[None], 4, axis=0)
    vertices = np.repeat(centres[:1, :20] + 0.01, 4, axis=0)
    drift = checks.drift_distances(centres, vertices, 1)
    assert drift["mean"].max() == 0.0 and checks.follow_ratio(drift) == 0.0 and checks.drift_summary(drift, 1)["pass"]


def test_a_mesh_that_does_not_follow_fails_the_motion_check(model):
    """The carried mesh passes the motion check; the same mesh left in place, or its frames in the
    wrong order (1 and 3 swapped), fails."""
    times = [0.0, 0.25, 0.5, 0.75]
    cloud = GaussianCloud.from_params(model.gaussians_at(times[0]))
    surface = mesh.extract_surface(cloud, 64, 0.5, 4000, 0.01, progress=False)
    skinning = mesh.skin_to_gaussians(surface.vertices, cloud)
    positions = mesh.carry_with_gaussians(model, surface.vertices, skinning, times[0], times)
    centres = checks.visible_centres(model, times, chunk=3)
    good = checks.drift_summary(checks.drift_distances(centres, positions, 0), 0)
    still = checks.drift_summary(checks.drift_distances(centres, np.repeat(positions[:1], 4, axis=0), 0), 0)
    backwards = checks.drift_summary(checks.drift_distances(centres, positions[[0, 3, 2, 1]], 0), 0)
    assert good["pass"] and good["follow_ratio"] < 0.3
    assert not still["pass"] and not backwards["pass"] and backwards["follow_ratio"] > 2 * good["follow_ratio"]


@pytest.mark.parametrize("fmt", ["splat", "ply"])
def test_sequences_and_manifest(workspace, model, fmt):
    out = workspace / "out" / fmt
    (out).mkdir(parents=True, exist_ok=True)
    (out / f"frame_0009.{fmt}").write_bytes(b"old")  # left by an earlier, longer export
    cli.main(cli_args(workspace, f"format={fmt}", f"out={out}", "frames=[0,2,3]", "fps=5", "check=true"))
    info = json.loads((out / "manifest.json").read_text())
    files = [f"frame_{k:04d}.{fmt}" for k in range(3)]
    assert info["format"] == fmt and info["T"] == 3 and info["fps"] == 5 and info["duration"] == pytest.approx(0.6)
    assert info["files"] == files and info["frames"] == [0, 2, 3] and info["run_frames"] == T
    assert info["times"] == [0.0, 0.5, 0.75] and info["num_gaussians"] == model.num
    assert sorted(os.listdir(out)) == sorted(files + ["manifest.json"])
    with torch.no_grad():
        for name, time in zip(files, info["times"]):
            g = model.gaussians_at(time)
            if fmt == "ply":
                read = read_gaussian_ply(str(out / name))
                assert np.array_equal(read.means, g.means.numpy()) and np.array_equal(read.quats, g.quats.numpy())
                assert np.array_equal(read.log_scales, g.log_scales.numpy())
            else:
                read = splat.read_splat(str(out / name))
                assert np.array_equal(np.sort(read["position"], axis=0), np.sort(g.means.numpy(), axis=0))


def test_resampled_times(workspace):
    out = workspace / "out" / "resampled"
    cli.main(cli_args(workspace, "format=splat", f"out={out}", "frames=7"))
    info = json.loads((out / "manifest.json").read_text())
    assert info["T"] == 7 and info["frames"] is None
    assert np.allclose(info["times"], interpolated_times(T, 7)) and info["fps"] == 10  # video_fps


def test_default_output_paths(workspace):
    cfg, opts = cli.load_settings(CONFIG, cli_args(workspace, "format=ply")[2:])
    assert cli.default_out(cfg, "glb") == os.path.join(str(workspace / "valid"), "run", "export", "run.glb")
    assert cli.default_out(cfg, "ply") == os.path.join(str(workspace / "valid"), "run", "export", "ply")
    assert opts.format == "ply" and opts.fps is None and opts.frames is None


@pytest.mark.parametrize("items,message", [
    (["format=obj"], "format=obj is not one of glb, splat, ply"),
    (["frames=0"], "frames=0: give a count"),
    (["frames=[0,0]"], "an index appears twice"),
    (["frames=[a]"], "frames="),
    (["density_threshold=1.5"], "density_threshold=1.5 must be in"),
    (["mesh_resolution=8"], "mesh_resolution=8 must be"),
    (["motion_smoothing=-1"], "motion_smoothing=-1 must be"),
    (["out=x.ply"], "give a path ending in .glb"),
    (["format=splat", "out=x.glb"], "writes a folder of frames"),
    (["fps=-1"], "fps=-1"),
    (["check=maybe"], "check=maybe"),
])
def test_bad_options_are_one_line(items, message):
    with pytest.raises(UserError) as err:
        cli.load_settings(CONFIG, ["save_path=run"] + items)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_exit_with_one_line(workspace, capsys):
    for extra, expected in ((["save_path=absent"], "no complete saved step"),
                            (["frames=[0,9]"], "the run has frames 0..3"),
                            (["save_path=faint", "density_threshold=0.9", "mesh_resolution=16"], "no mesh")):
        args = cli_args(workspace, *extra)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and expected in err[-1], err


def test_field_animation_moves_the_canonical_surface_by_the_field(workspace, model):
    """animation=field: the canonical surface, each vertex at v + d_position(v, t)."""
    out = workspace / "out" / "field.glb"
    cli.main(cli_args(workspace, f"out={out}", "animation=field", "mesh_resolution=32", "max_faces=600"))
    back = gltf.read_animated_glb(str(out))
    assert back.num_targets == T and back.extras["animation"] == "field" and len(back.faces) <= 600
    # the frames differ from each other by the field's displacements of the same canonical points
    canonical = mesh.extract_surface(GaussianCloud.from_params(model.gaussians_at(None)), 32, 0.5, 600, 0.01,
                                     bounds=model.deformation.cfg.bounds, progress=False)
    expected = mesh.deform_vertices(model, canonical.vertices, [i / T for i in range(T)])
    assert np.allclose(back.positions, expected, atol=1e-5)


def test_motion_smoothing_reaches_the_animation(workspace, model):
    """motion_smoothing=0: the vertices exactly where their Gaussians carry them; the default
    (mesh.MOTION_SMOOTHING passes) smooths those displacements over the mesh."""
    times = [i / T for i in range(T)]
    reference = T // 2  # mesh_frame=null: the middle frame
    cloud = GaussianCloud.from_params(model.gaussians_at(times[reference]))
    surface = mesh.extract_surface(cloud, 32, 0.5, 600, 0.01, bounds=model.deformation.cfg.bounds, progress=False)
    carried = mesh.carry_with_gaussians(model, surface.vertices, mesh.skin_to_gaussians(surface.vertices, cloud),
                                        times[reference], times)
    assert cli.make_options().motion_smoothing == mesh.MOTION_SMOOTHING > 0
    exported = {}
    for name, extra in (("raw", ["motion_smoothing=0"]), ("default", [])):
        out = workspace / "out" / f"smoothing_{name}.glb"
        cli.main(cli_args(workspace, f"out={out}", "mesh_resolution=32", "max_faces=600", *extra))
        exported[name] = gltf.read_animated_glb(str(out)).positions
    assert np.allclose(exported["raw"], carried, atol=1e-5)
    smoothed = mesh.smooth_displacements(carried, surface.faces, reference)
    assert np.allclose(exported["default"], smoothed, atol=1e-5)
    assert np.abs(exported["default"] - exported["raw"]).max() > 1e-3
    assert np.array_equal(exported["default"][reference], exported["raw"][reference])


def test_mesh_frame_out_of_range(workspace):
    with pytest.raises(UserError, match=r"mesh_frame=4: the export has frames 0..3"):
        cli.run(*cli.load_settings(CONFIG, cli_args(workspace, "mesh_frame=4")[2:]), progress=False)


def test_launcher_and_console_entry(monkeypatch, capsys):
    import runpy
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["stag4d-export"] == "stag4d.export.cli:main"
    monkeypatch.setattr("sys.argv", ["export.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, "scripts", "export.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "format" in out and "density_threshold" in out
