"""Animated GLB: one mesh, one morph target per frame, a weights animation that plays the frames.

Layout (glTF 2.0, written with pygltflib):

* one node with one mesh of one triangle primitive: ``POSITION`` and ``NORMAL`` of frame 0,
  ``COLOR_0`` (RGBA unsigned shorts, normalized; linear values as glTF defines vertex colours, so
  a viewer shows the Gaussians' sRGB colours), ``indices`` (uint32);
* ``targets[i]`` (i = 0..F-1): the ``POSITION`` displacement of frame i from frame 0 (target 0 is
  zero; no per-frame normals: the material is unlit, and they would double the file), named
  ``frame_<i>`` in ``mesh.extras.targetNames`` (the convention three.js and Blender read);
  ``mesh.weights`` all 0, so a viewer without animation shows frame 0;
* one animation ``play``: channel ``weights`` of the node, keyframes at i / fps with weight 1 on
  target i and 0 elsewhere, plus a closing key at F / fps that holds the last frame, so the clip
  lasts F / fps seconds as a video of F frames at ``fps``. ``LINEAR`` interpolation blends
  neighbouring frames (smooth playback at any display rate); ``STEP`` shows each frame for 1/fps;
* the material is unlit (``KHR_materials_unlit``): the Gaussians' colours already hold the
  lighting they were trained with; viewers without the extension fall back to a matte white
  PBR material times the vertex colours;
* with a texture (``texture=uv``): ``TEXCOORD_0`` instead of ``COLOR_0``, and the material's
  ``baseColorTexture`` is a PNG (sRGB, as glTF defines base colour textures) stored in the
  binary chunk, sampled with linear filtering and mipmaps, clamped at the edges.

:func:`read_animated_glb` reads such a file back (pygltflib) into arrays, for the checks and tests.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pygltflib
import torch
from PIL import Image as PILImage
from pygltflib import (
    GLTF2,
    Accessor,
    Animation,
    AnimationChannel,
    AnimationChannelTarget,
    AnimationSampler,
    Asset,
    Attributes,
    Buffer,
    BufferView,
    Image,
    Material,
    Mesh,
    Node,
    PbrMetallicRoughness,
    Primitive,
    Sampler,
    Scene,
    Texture,
    TextureInfo,
)

from stag4d.errors import DataError
from stag4d.export.mesh_render import sample_texture
from stag4d.files import atomic_path

INTERPOLATIONS = ("linear", "step")
UNLIT = "KHR_materials_unlit"
_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_DTYPES = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_INT: np.uint32, pygltflib.UNSIGNED_SHORT: np.uint16,
           pygltflib.UNSIGNED_BYTE: np.uint8}


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), values in [0, 1]."""
    srgb = np.clip(srgb, 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1.0 / 2.4) - 0.055)


def keyframes(num_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Key times [K] (seconds) and weights [K, F]: one-hot on frame i at i / fps, then the last
    frame held until F / fps (K = F + 1)."""
    times = np.arange(num_frames + 1, dtype=np.float64) / fps
    weights = np.zeros((num_frames + 1, num_frames), dtype=np.float32)
    weights[np.arange(num_frames), np.arange(num_frames)] = 1.0
    weights[num_frames, num_frames - 1] = 1.0
    return times.astype(np.float32), weights


class _BinaryBuilder:
    """Accessors over one binary buffer (each view 4-byte aligned, tightly packed)."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.offset = 0
        self.views: list[BufferView] = []
        self.accessors: list[Accessor] = []

    def add(self, array: np.ndarray, kind: str, target: Optional[int] = None, normalized: bool = False,
            bounds: bool = False, name: Optional[str] = None) -> int:
        array = np.ascontiguousarray(array)
        component = {np.dtype(v): k for k, v in _DTYPES.items()}[array.dtype]
        data = array.tobytes()
        self.views.append(BufferView(buffer=0, byteOffset=self.offset, byteLength=len(data), target=target))
        padding = (-len(data)) % 4
        self.chunks.append(data + b"\0" * padding)
        self.offset += len(data) + padding
        rows = array.reshape(len(array), -1)
        accessor = Accessor(bufferView=len(self.views) - 1, byteOffset=0, componentType=component,
                            normalized=normalized or None, count=len(array), type=kind, name=name)
        if bounds:
            accessor.min = rows.min(axis=0).astype(float).tolist()
            accessor.max = rows.max(axis=0).astype(float).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def add_bytes(self, data: bytes) -> int:
        """A buffer view of raw bytes (an image); returns its index."""
        self.views.append(BufferView(buffer=0, byteOffset=self.offset, byteLength=len(data)))
        padding = (-len(data)) % 4
        self.chunks.append(data + b"\0" * padding)
        self.offset += len(data) + padding
        return len(self.views) - 1

    def blob(self) -> bytes:
        return b"".join(self.chunks)


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(image).save(out, format="PNG", optimize=True)
    return out.getvalue()


def build_animated_gltf(positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray],
                        fps: float, interpolation: str = "linear", name: str = "stag4d",
                        extras: Optional[dict] = None, uvs: Optional[np.ndarray] = None,
                        texture: Optional[np.ndarray] = None) -> GLTF2:
    """The glTF document (see the module docstring) of F frames.

    Args:
        positions: [F, V, 3] per frame. normals: [V, 3] of frame 0. faces: [T, 3] vertex indices.
        colors: [V, 3] sRGB in [0, 1] (vertex colours), or None with a texture.
        uvs, texture: [V, 2] texture coordinates and a uint8 sRGB image [H, W, 3] (instead of colours).
        fps: playback rate. interpolation: ``linear`` or ``step``.
        extras: JSON-able values stored in the asset's ``extras`` (times, source run).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}: use one of {INTERPOLATIONS}")
    num_frames = positions.shape[0]
    builder = _BinaryBuilder()
    base_position = positions[0].astype(np.float32)
    base_normal = normals.astype(np.float32)
    if (texture is None) == (colors is None) or (texture is None) != (uvs is None):
        raise ValueError("give either vertex colours or uvs and a texture")
    attributes = Attributes(
        POSITION=builder.add(base_position, "VEC3", pygltflib.ARRAY_BUFFER, bounds=True),
        NORMAL=builder.add(base_normal, "VEC3", pygltflib.ARRAY_BUFFER),
    )
    if texture is None:
        # 16-bit: 8-bit linear values would band the dark sRGB tones (steps of up to 0.05)
        rgba = np.concatenate([np.round(srgb_to_linear(colors) * 65535.0), np.full((len(colors), 1), 65535.0)], axis=1)
        attributes.COLOR_0 = builder.add(rgba.astype(np.uint16), "VEC4", pygltflib.ARRAY_BUFFER, normalized=True)
    else:
        attributes.TEXCOORD_0 = builder.add(uvs.astype(np.float32), "VEC2", pygltflib.ARRAY_BUFFER)
    indices = builder.add(faces.astype(np.uint32).reshape(-1), "SCALAR", pygltflib.ELEMENT_ARRAY_BUFFER, bounds=True)
    targets = []
    for i in range(num_frames):
        targets.append(Attributes(
            POSITION=builder.add((positions[i] - base_position).astype(np.float32), "VEC3", pygltflib.ARRAY_BUFFER,
                                 bounds=True, name=f"frame_{i}_position")))
    key_times, key_weights = keyframes(num_frames, fps)
    time_accessor = builder.add(key_times, "SCALAR", bounds=True, name="keyframe_times")
    weight_accessor = builder.add(key_weights.reshape(-1), "SCALAR", name="keyframe_weights")

    pbr = PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0)
    images, textures, samplers = [], [], []
    if texture is not None:
        images = [Image(bufferView=builder.add_bytes(png_bytes(texture)), mimeType="image/png", name="colors")]
        samplers = [Sampler(magFilter=pygltflib.LINEAR, minFilter=pygltflib.LINEAR_MIPMAP_LINEAR,
                            wrapS=pygltflib.CLAMP_TO_EDGE, wrapT=pygltflib.CLAMP_TO_EDGE)]
        textures = [Texture(sampler=0, source=0)]
        pbr.baseColorTexture = TextureInfo(index=0)
    material = Material(name="gaussian_colors", doubleSided=True, extensions={UNLIT: {}}, pbrMetallicRoughness=pbr)
    primitive = Primitive(attributes=attributes, indices=indices, material=0, mode=pygltflib.TRIANGLES,
                          targets=targets)
    mesh = Mesh(name=name, primitives=[primitive], weights=[0.0] * num_frames,
                extras={"targetNames": [f"frame_{i}" for i in range(num_frames)]})
    animation = Animation(name="play",
                          samplers=[AnimationSampler(input=time_accessor, output=weight_accessor,
                                                     interpolation=interpolation.upper())],
                          channels=[AnimationChannel(sampler=0, target=AnimationChannelTarget(node=0, path="weights"))])
    blob = builder.blob()
    gltf = GLTF2(asset=Asset(generator="stag4d export", version="2.0", extras=extras or {}),
                 scene=0, scenes=[Scene(nodes=[0])], nodes=[Node(mesh=0, name=name)], meshes=[mesh],
                 materials=[material], animations=[animation], accessors=builder.accessors,
                 bufferViews=builder.views, buffers=[Buffer(byteLength=len(blob))], extensionsUsed=[UNLIT],
                 images=images, textures=textures, samplers=samplers)
    gltf.set_binary_blob(blob)
    return gltf


def write_animated_glb(path: str, positions: np.ndarray, normals: np.ndarray, faces: np.ndarray,
                       colors: Optional[np.ndarray], fps: float, interpolation: str = "linear", name: str = "stag4d",
                       extras: Optional[dict] = None, uvs: Optional[np.ndarray] = None,
                       texture: Optional[np.ndarray] = None) -> None:
    """Write :func:`build_animated_gltf`'s document as a binary glTF (.glb) file, atomically."""
    gltf = build_animated_gltf(positions, normals, faces, colors, fps, interpolation, name, extras, uvs, texture)
    with atomic_path(path) as tmp:
        gltf.save_binary(tmp)


@dataclass
class AnimatedMesh:
    """An animated GLB read back.

    Attributes:
        positions [F, V, 3]: base + target i (what a viewer shows at weight 1 on target i);
        normals [V, 3] (frame 0); faces [T, 3]; colors [V, 3] sRGB in [0, 1] (with a texture: the
        texture sampled at the vertices); uvs [V, 2] and texture uint8 [H, W, 3], or None;
        key_times [K] seconds; key_weights [K, F]; interpolation ``linear`` / ``step``;
        num_targets; duration (the last key time); extras (the asset's extras).
    """

    positions: np.ndarray
    normals: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    key_times: np.ndarray
    key_weights: np.ndarray
    interpolation: str
    extras: dict
    uvs: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None

    @property
    def num_targets(self) -> int:
        return self.positions.shape[0]

    @property
    def duration(self) -> float:
        return float(self.key_times.max())


def read_accessor(gltf: GLTF2, index: int) -> np.ndarray:
    """The array [count, components] (or [count]) behind an accessor of a GLB loaded by pygltflib."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    if view.byteStride not in (None, 0):
        raise DataError(f"accessor {index}: interleaved buffer views are not read here")
    components = _COMPONENTS[accessor.type]
    dtype = np.dtype(_DTYPES[accessor.componentType])
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype=dtype, count=accessor.count * components, offset=start)
    return data.reshape(accessor.count, components) if components > 1 else data.copy()


def read_animated_glb(path: str) -> AnimatedMesh:
    """Read a GLB written by :func:`write_animated_glb` (one mesh, one primitive, one animation)."""
    try:
        gltf = GLTF2().load_binary(path)
        primitive = gltf.meshes[0].primitives[0]
        sampler = gltf.animations[0].samplers[0]
    except (OSError, IndexError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not an animated GLB of this exporter ({type(err).__name__}); export it again") from err
    base = read_accessor(gltf, primitive.attributes.POSITION).astype(np.float32)
    base_normal = read_accessor(gltf, primitive.attributes.NORMAL).astype(np.float32)
    targets = [t if isinstance(t, dict) else t.__dict__ for t in primitive.targets]  # pygltflib loads dicts
    positions = np.stack([base + read_accessor(gltf, t["POSITION"]) for t in targets])
    uvs = texture = None
    if primitive.attributes.TEXCOORD_0 is not None:
        uvs = read_accessor(gltf, primitive.attributes.TEXCOORD_0).astype(np.float32)
        source = gltf.textures[gltf.materials[primitive.material].pbrMetallicRoughness.baseColorTexture.index].source
        view = gltf.bufferViews[gltf.images[source].bufferView]
        data = gltf.binary_blob()[view.byteOffset or 0:(view.byteOffset or 0) + view.byteLength]
        texture = np.array(PILImage.open(io.BytesIO(data)).convert("RGB"))
        colors = sample_texture(torch.as_tensor(texture), torch.as_tensor(uvs)).numpy()
    else:
        rgba = read_accessor(gltf, primitive.attributes.COLOR_0)
        scale = float(np.iinfo(rgba.dtype).max) if rgba.dtype != np.float32 else 1.0
        colors = linear_to_srgb(rgba[:, :3].astype(np.float64) / scale).astype(np.float32)
    faces = read_accessor(gltf, primitive.indices).reshape(-1, 3).astype(np.int64)
    key_times = read_accessor(gltf, sampler.input)
    key_weights = read_accessor(gltf, sampler.output).reshape(len(key_times), -1)
    extras = gltf.asset.extras or {}
    return AnimatedMesh(positions, base_normal, faces, colors, key_times, key_weights, sampler.interpolation.lower(),
                        dict(extras), uvs, texture)


def frame_weights(mesh: AnimatedMesh, seconds: float) -> np.ndarray:
    """Morph weights [F] at a playback time, as the glTF animation rules interpolate the keys."""
    times, weights = mesh.key_times, mesh.key_weights
    seconds = float(np.clip(seconds, times[0], times[-1]))
    k = int(np.searchsorted(times, seconds, side="right") - 1)
    if k >= len(times) - 1:
        return weights[-1]
    if mesh.interpolation == "step":
        return weights[k]
    u = (seconds - times[k]) / (times[k + 1] - times[k])
    return (1.0 - u) * weights[k] + u * weights[k + 1]


def positions_at(mesh: AnimatedMesh, seconds: float) -> np.ndarray:
    """Vertex positions [V, 3] a viewer shows at a playback time: base + sum_i w_i target_i."""
    w = frame_weights(mesh, seconds)
    return mesh.positions[0] + np.tensordot(w, mesh.positions - mesh.positions[0], axes=1)


__all__ = [
    "INTERPOLATIONS",
    "AnimatedMesh",
    "build_animated_gltf",
    "frame_weights",
    "keyframes",
    "linear_to_srgb",
    "positions_at",
    "read_accessor",
    "read_animated_glb",
    "srgb_to_linear",
    "write_animated_glb",
]
