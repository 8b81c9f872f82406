"""A baked UV texture for the exported mesh, instead of vertex colours.

1. :func:`unwrap`: xatlas cuts the surface into charts and packs them into the unit square
   (``padding`` texels between charts); vertices on a cut are split, so the result maps each new
   vertex to the one it came from (``vertex_map``) and has its own faces with the same triangles.
2. :func:`bake`: every texel whose centre lies in a triangle of the layout gets the colour of the
   surface point under it: the same colour grid that gives the vertex colours (the alpha-weighted
   mean colour of the Gaussians around the point, :class:`.mesh.ColorField`), sampled at each
   texel instead of only at the vertices, so colour detail no longer depends on the face budget.
   The empty texels then take the colour of the nearest filled one, so that bilinear filtering and
   mipmaps at chart borders do not blend in a background colour.

UV coordinates follow glTF: (0, 0) is the top-left corner of the image, v grows downwards, texel
(x, y) covers [x, x + 1] / W by [y, y + 1] / H.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from stag4d.export.mesh import ColorField
from stag4d.export.mesh_render import barycentric, covered_pairs

PADDING = 4  # texels between charts: room for bilinear filtering and a few mip levels


class TextureError(RuntimeError):
    """The texture cannot be made (xatlas missing)."""


@dataclass
class UVLayout:
    """vertex_map [V'] (the surface vertex of each new vertex), faces [F, 3] into the new vertices,
    uvs [V', 2] in [0, 1] (glTF convention)."""

    vertex_map: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = PADDING) -> UVLayout:
    """Charts and packing by xatlas for a ``size`` x ``size`` texture."""
    try:
        import xatlas
    except ImportError:
        raise TextureError("texture=uv needs xatlas (pip install xatlas); or use texture=vertex") from None
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise TextureError(f"xatlas packed the charts into {atlas.atlas_count} images; raise texture_size")
    vertex_map, new_faces, uvs = atlas[0]
    return UVLayout(vertex_map.astype(np.int64), new_faces.astype(np.int64).reshape(-1, 3), uvs.astype(np.float32))


@torch.no_grad()
def texel_points(vertices: np.ndarray, layout: UVLayout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The texels [P] (flat index y * size + x) whose centres lie in a triangle of the layout, and the
    surface points [P, 3] under them (barycentric in UV space)."""
    corners = torch.as_tensor(vertices[layout.vertex_map], dtype=torch.float32)
    tri_uv = torch.as_tensor(layout.uvs * size, dtype=torch.float32)[torch.as_tensor(layout.faces)]  # texel units
    flat_z = torch.ones(tri_uv.shape[:2])  # a flat layout: every triangle "in front", affine barycentrics
    texels, points = [], []
    for pixel, face, _ in covered_pairs(tri_uv, flat_z, 0.0, size, size):
        weights = barycentric(tri_uv, flat_z, face, pixel, size)
        texels.append(pixel)
        points.append((weights.unsqueeze(-1) * corners[torch.as_tensor(layout.faces)[face]]).sum(dim=1))
    return torch.cat(texels).numpy(), torch.cat(points).numpy()


def bake(vertices: np.ndarray, layout: UVLayout, colors: ColorField, size: int) -> np.ndarray:
    """The texture, uint8 [size, size, 3] (display values, as the vertex colours)."""
    texels, points = texel_points(vertices, layout, size)
    image = np.zeros((size * size, 3), dtype=np.float32)
    filled = np.zeros(size * size, dtype=bool)
    # a texel in two triangles (on an edge): either colour, the same point. Points of a flat triangle
    # lie slightly off the curved surface; moving them onto the level set first changed the demo's
    # colour PSNR by 0.01 dB, so they are sampled where they are, as the vertices are.
    image[texels] = colors.at(points)
    filled[texels] = True
    image, filled = image.reshape(size, size, 3), filled.reshape(size, size)
    if filled.any() and not filled.all():
        nearest = ndimage.distance_transform_edt(~filled, return_distances=False, return_indices=True)
        image = image[nearest[0], nearest[1]]
    return np.round(image * 255.0).clip(0, 255).astype(np.uint8)


__all__ = ["PADDING", "TextureError", "UVLayout", "bake", "texel_points", "unwrap"]
