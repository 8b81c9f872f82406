"""A small z-buffer triangle rasterizer (torch) to look at exported meshes with our cameras.

For the export checks and previews only (no gradients). Vertices are projected with the same
pinhole as the Gaussians (:func:`cam_utils.project_points`: pixel centres at +0.5, principal point
at the image centre). A pixel is covered by a triangle when its centre lies inside the projected
triangle or on its edges (both windings: no back-face culling, so the silhouette does not depend
on the faces' orientation). Depth is interpolated perspective-correctly (1/z is linear in screen
space) and the nearest triangle wins. Triangles with a vertex behind the near plane are dropped
(our orbit cameras never cut the object).

Work is done on (triangle, pixel) pairs of each triangle's pixel bounding box, in chunks of at
most ``pair_budget`` pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cam_utils import Camera, project_points

PAIR_BUDGET = 1 << 22


@dataclass
class MeshRender:
    """mask [H, W] bool; depth [H, W] camera z (inf where empty); face [H, W] int64 (-1 where
    empty); image [3, H, W] colours over the background (shaded, when colours were given)."""

    mask: Tensor
    depth: Tensor
    face: Tensor
    image: Tensor | None = None


def _edge(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def covered_pairs(tri_uv: Tensor, tri_z: Tensor, near: float, width: int, height: int,
                  pair_budget: int = PAIR_BUDGET):
    """Yield (pixel [P], face [P], depth [P]) of the covered (triangle, pixel) pairs, chunk by chunk
    (the same values in the same order on every call)."""
    device = tri_uv.device
    front = (tri_z > near).all(dim=1)
    # pixel x is covered when its centre x + 0.5 is inside: x in [ceil(min - 0.5), floor(max - 0.5)]
    lo = torch.ceil(tri_uv.amin(dim=1) - 0.5).long().clamp(min=0)
    hi = torch.floor(tri_uv.amax(dim=1) - 0.5).long()
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], device=device))
    span = (hi - lo + 1).clamp(min=0)
    area = _edge(tri_uv[:, 0, 0], tri_uv[:, 0, 1], tri_uv[:, 1, 0], tri_uv[:, 1, 1], tri_uv[:, 2, 0], tri_uv[:, 2, 1])
    counts = span[:, 0] * span[:, 1] * front * (area != 0)
    ids = torch.nonzero(counts > 0).squeeze(1)
    sizes = counts[ids]
    bounds = torch.cumsum(sizes, 0)
    start = 0
    while start < len(ids):
        base = int(bounds[start - 1]) if start else 0
        end = max(start + 1, int(torch.searchsorted(bounds, base + pair_budget, right=True)))
        n = sizes[start:end]
        item = torch.repeat_interleave(torch.arange(end - start, device=device), n)
        local = torch.arange(int(n.sum()), device=device) - (torch.cumsum(n, 0) - n)[item]
        f = ids[start:end][item]
        px = lo[f, 0] + local % span[f, 0]
        py = lo[f, 1] + local // span[f, 0]
        cx, cy = px.float() + 0.5, py.float() + 0.5
        t = tri_uv[f]
        w0 = _edge(t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1], cx, cy)
        w1 = _edge(t[:, 2, 0], t[:, 2, 1], t[:, 0, 0], t[:, 0, 1], cx, cy)
        w2 = _edge(t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], cx, cy)
        inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
        b = torch.stack([w0, w1, w2], dim=1)[inside] / area[f][inside].unsqueeze(1)
        depth = 1.0 / (b / tri_z[f][inside]).sum(dim=1)  # 1/z is linear in screen space
        yield (py * width + px)[inside], f[inside], depth
        start = end


@torch.no_grad()
def rasterize(vertices: Tensor, faces: Tensor, camera: Camera, colors: Tensor | None = None,
              background: tuple[float, float, float] = (1.0, 1.0, 1.0), shading: float = 0.35,
              pair_budget: int = PAIR_BUDGET, uvs: Tensor | None = None, texture: Tensor | None = None
              ) -> MeshRender:
    """Render a triangle mesh seen by ``camera``.

    Args:
        vertices: [V, 3] world positions. faces: [F, 3] vertex indices.
        colors: [V, 3] RGB in [0, 1] or None (no image, unless a texture is given).
        uvs, texture: [V, 2] texture coordinates (glTF's: (0, 0) top-left) and a uint8 texture
            [H, W, 3]: colours sampled from it (bilinear, perspective-correct UVs) instead of ``colors``.
        shading: ``image = color * (1 - shading + shading * |cos|)`` with the angle between the
            face normal and the viewing ray (a headlight, so that the shape reads), 0 = flat colours.
    """
    device = vertices.device
    vertices = vertices.float()
    faces = faces.long().to(device)
    width, height = camera.width, camera.height
    uv, z = project_points(camera.to(device), vertices)
    tri_uv, tri_z = uv[faces], z[faces]  # [F, 3, 2], [F, 3]
    best_depth = torch.full((height * width,), float("inf"), device=device)
    for pixel, _, depth in covered_pairs(tri_uv, tri_z, camera.near, width, height, pair_budget):
        best_depth.scatter_reduce_(0, pixel, depth, reduce="amin")
    # second pass: the face whose depth is the final minimum (the same arithmetic, so equal bits)
    best_face = torch.full((height * width,), -1, dtype=torch.long, device=device)
    for pixel, face, depth in covered_pairs(tri_uv, tri_z, camera.near, width, height, pair_budget):
        winner = depth == best_depth[pixel]
        best_face.scatter_reduce_(0, pixel[winner], face[winner], reduce="amax")
    out = MeshRender(best_face.view(height, width) >= 0, best_depth.view(height, width), best_face.view(height, width))
    if colors is not None or texture is not None:
        image = torch.tensor(background, dtype=torch.float32, device=device).view(3, 1).repeat(1, height * width)
        pixels = torch.nonzero(best_face >= 0).squeeze(1)
        face = best_face[pixels]
        bary = barycentric(tri_uv, tri_z, face, pixels, width)
        if texture is not None:
            texel = (bary.unsqueeze(-1) * uvs.float().to(device)[faces[face]]).sum(dim=1)
            rgb = sample_texture(texture.to(device), texel)
        else:
            rgb = (bary.unsqueeze(-1) * colors.float().to(device)[faces[face]]).sum(dim=1)
        if shading > 0:
            tri = vertices[faces[face]]
            normal = torch.nn.functional.normalize(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1),
                                                   dim=1)
            ray = torch.nn.functional.normalize(tri.mean(dim=1) - camera.camera_center.to(device), dim=1)
            rgb = rgb * (1.0 - shading + shading * (normal * ray).sum(dim=1).abs().unsqueeze(1))
        image[:, pixels] = rgb.clamp(0.0, 1.0).T
        out.image = image.view(3, height, width)
    return out


def barycentric(tri_uv: Tensor, tri_z: Tensor, face: Tensor, pixels: Tensor, width: int) -> Tensor:
    """Perspective-correct barycentric weights [P, 3] of ``face`` at the pixels' centres."""
    cx = (pixels % width).float() + 0.5
    cy = (pixels // width).float() + 0.5
    t = tri_uv[face]
    area = _edge(t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1])
    b = torch.stack([_edge(t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1], cx, cy),
                     _edge(t[:, 2, 0], t[:, 2, 1], t[:, 0, 0], t[:, 0, 1], cx, cy),
                     _edge(t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], cx, cy)], dim=1) / area.unsqueeze(1)
    perspective = b / tri_z[face]
    return perspective / perspective.sum(dim=1, keepdim=True)


def sample_texture(texture: Tensor, uvs: Tensor) -> Tensor:
    """Bilinear samples [P, 3] in [0, 1] of a uint8 texture [H, W, 3] at UVs [P, 2] (glTF's
    convention, texel centres at (i + 0.5) / size; edges clamped)."""
    image = texture.permute(2, 0, 1).unsqueeze(0).float() / 255.0
    grid = uvs.float().view(1, -1, 1, 2) * 2.0 - 1.0
    out = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(3, -1).T


__all__ = ["MeshRender", "barycentric", "covered_pairs", "rasterize", "sample_texture"]
