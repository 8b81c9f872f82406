"""Load a dataset folder (SPEC section 1) into tensors, once.

```
<path>/ref/<i>_rgba.png           i = 0..T-1, square frames of the input video
<path>/zero123/<i>_rgba/<k>.png   k = 0..V-1 (V = 6), the anchor views of frame i
```

Every image becomes premultiplied-then-composited-on-white RGB ``rgb * a + (1 - a)`` and a soft
alpha ``a`` in [0, 1] (the sample's anchors store background as alpha 1/255: kept as is).

Resizing: antialiased bilinear (a triangle filter as wide as the scale factor) applied to the
composited RGB and the alpha. Both are linear filters of (premultiplied RGB, alpha), so this is
exactly "resize premultiplied RGBA, then composite on white": the colour stored under transparent
pixels (grey in the sample anchors) cannot bleed into the edges, and unlike Lanczos the filter
has no negative lobes, so there is no ringing halo and values stay in [0, 1].

Frames with no alpha (RGB, L, P without transparency, 16-bit grey) are matted with
:func:`matting.matte_rembg`; offline that raises :class:`errors.ModelUnavailable`.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stag4d.data import matting
from stag4d.errors import DataError, ModelUnavailable
from stag4d.files import map_on_threads
from stag4d.settings import REQUIRED, setting

RESAMPLE_MODES = ("antialias", "released")
RELEASED_LOAD_SIZE = 800  # the released loader resizes every image to its GUI size (H = W = 800) first
LOAD_THREADS = 8  # images decoded at once (at most one per CPU core)
MIN_FRAME_SIZE = 8  # pixels: anything smaller holds no object worth training on
EMPTY_ALPHA = 1.0 / 255.0  # a frame whose largest alpha is below this shows nothing
FRAME_NAME = re.compile(r"^(\d+)_rgba\.png$")
ANCHOR_NAME = re.compile(r"^(\d+)\.png$")
PREPARE_HINT = "scripts/prepare_video.py"
GEN_MV_HINT = "scripts/gen_mv.py"


@dataclass
class DataConfig:
    """The dataset of a run and which of its frames and views are trained on."""

    path: str = setting(REQUIRED, "dataset folder: ref/<i>_rgba.png (and zero123/<i>_rgba/<k>.png)")
    num_frames: Optional[int] = setting(None, "T: train on the first T frames; null = every frame in ref/", ge=1)
    ref_size: int = setting(512, "reference frames are resized to this and rendered at it", ge=1)
    anchor_size: int = setting(256, "anchor views are loaded (and, in anchored mode, rendered) at this size", ge=1)
    holdout_views: List[int] = setting([], "anchor indices never trained on (kept for evaluation)", ge=0)
    holdout_frames: List[int] = setting([], "frame indices never trained on (kept for evaluation)", ge=0)
    resample: str = setting("antialias", "antialias: premultiplied, antialiased bilinear straight to the size "
                            "(ours); released: cv2 INTER_AREA to 800 px on straight RGBA, then bilinear",
                            choices=RESAMPLE_MODES)
    wait_for: str = setting("", "a file to wait for before the data is read, e.g. gen_mv's --json record (written "
                            "once every view is on disk): the diffusion model loads and compiles meanwhile, so "
                            "main.py can start beside gen_mv; \"\" = read the data at once")
    wait_timeout: float = setting(3600.0, "seconds to wait for wait_for before giving up", gt=0)


@dataclass
class FrameData:
    """The frames of one dataset, on one device.

    Attributes:
        ref_rgb: [T, 3, S, S] float32 reference frames composited on white.
        ref_mask: [T, 1, S, S] float32 soft alpha in [0, 1].
        anchor_rgb: [T, V, 3, A, A] float32 anchor views on white, or None.
        anchor_mask: [T, V, 1, A, A] float32 soft alpha, or None.
        frame_ids: the frame index i of each of the T frames (0..T-1).
        path: the dataset folder.
    """

    ref_rgb: torch.Tensor
    ref_mask: torch.Tensor
    anchor_rgb: torch.Tensor | None
    anchor_mask: torch.Tensor | None
    frame_ids: list[int]
    path: str

    @property
    def num_frames(self) -> int:
        return self.ref_rgb.shape[0]


def load_frames(
    path: str,
    ref_size: int = 512,
    anchor_size: int = 256,
    num_frames: int | None = None,
    require_anchors: bool = True,
    device: torch.device | str = "cpu",
    num_anchor_views: int = 6,
    resample: str = "antialias",
) -> FrameData:
    """Read, check, composite and resize the frames (and anchors) of the dataset at ``path``.

    Args:
        num_frames: take the first T frames (config ``num_frames``, the released ``size``); None
            takes all of ref/.
        require_anchors: raise when zero123/ is missing. When False and zero123/ is missing the
            anchors are None; when zero123/ exists it is checked and loaded either way.

    Raises:
        errors.DataError: missing or malformed files (one line naming the file and the fix).
        errors.ModelUnavailable: an RGB frame needs matting and rembg's model is unavailable.
    """
    frames = list_ref_frames(path)
    if num_frames is not None:
        if num_frames < 1 or num_frames > len(frames):
            raise DataError(
                f"num_frames={num_frames} but {os.path.join(path, 'ref')} has {len(frames)} frames: "
                f"set num_frames to 1..{len(frames)}, or null to use all of them"
            )
        frames = frames[:num_frames]
    frame_ids = [i for i, _ in frames]

    anchor_files = list_anchor_files(path, frame_ids, num_anchor_views, require_anchors)

    rgba = [torch.from_numpy(image) for image in read_rgba_files([file for _, file in frames])]
    check_frames([file for _, file in frames], rgba, ref_size)
    resize = composite_and_resize if resample == "antialias" else composite_and_resize_released
    ref = [resize(image, ref_size) for image in rgba]
    ref_rgb = torch.stack([rgb for rgb, _ in ref])
    ref_mask = torch.stack([alpha for _, alpha in ref])

    anchor_rgb = anchor_mask = None
    if anchor_files is not None:
        images = iter(read_rgba_files([file for per_frame in anchor_files for file in per_frame]))
        views = [[resize(torch.from_numpy(next(images)), anchor_size) for _ in per_frame] for per_frame in anchor_files]
        anchor_rgb = torch.stack([torch.stack([rgb for rgb, _ in per_frame]) for per_frame in views])
        anchor_mask = torch.stack([torch.stack([alpha for _, alpha in per_frame]) for per_frame in views])
        anchor_rgb, anchor_mask = anchor_rgb.to(device), anchor_mask.to(device)

    return FrameData(ref_rgb.to(device), ref_mask.to(device), anchor_rgb, anchor_mask, frame_ids, path)


def check_frames(files: list[str], rgba: list[torch.Tensor], ref_size: int) -> None:
    """The frames of one video must share one size, be large enough and show something.

    Raises:
        DataError: mixed sizes, frames under MIN_FRAME_SIZE pixels, or every frame transparent.
    Warns (stderr) when frames are upscaled to ``ref_size`` or some frames are empty.
    """
    sizes = [tuple(image.shape[:2]) for image in rgba]
    if len(set(sizes)) > 1:
        other = next(k for k, size in enumerate(sizes) if size != sizes[0])
        raise DataError(f"frames differ in size ({files[0]}: {sizes[0][1]}x{sizes[0][0]}, {files[other]}: "
                        f"{sizes[other][1]}x{sizes[other][0]}): crop the whole video with one box, e.g. with "
                        f"{PREPARE_HINT}")
    size = sizes[0][0]
    if size < MIN_FRAME_SIZE:
        raise DataError(f"{files[0]} is {size}x{size} pixels, too small to train on (at least {MIN_FRAME_SIZE}): "
                        f"use the original frames, e.g. with {PREPARE_HINT}")
    if size < ref_size:
        print(f"warning: frames of {files[0]}'s folder are {size}x{size}, upscaled to ref_size={ref_size} "
              f"(blurry targets); set ref_size={size} to train at their size", file=sys.stderr)
    empty = [file for file, image in zip(files, rgba) if float(image[..., 3].max()) < EMPTY_ALPHA]
    if len(empty) == len(files):
        raise DataError(f"every frame is fully transparent ({files[0]} ...): the alpha channels hold no object; "
                        f"re-matte the video (e.g. {PREPARE_HINT} --matting rembg)")
    if empty:
        print(f"warning: {len(empty)} frame(s) are fully transparent ({empty[0]} ...): they teach the model "
              "that the object vanishes there", file=sys.stderr)


def list_ref_frames(path: str) -> list[tuple[int, str]]:
    """(i, file) of the reference frames, sorted numerically and checked to be 0..T-1."""
    if not os.path.isdir(path):
        raise DataError(
            f"dataset folder {path} does not exist: give the folder that holds ref/ "
            f"(make one from a video with {PREPARE_HINT})"
        )
    ref_dir = os.path.join(path, "ref")
    if not os.path.isdir(ref_dir):
        raise DataError(
            f"{ref_dir} is missing: put the frames in ref/ as <i>_rgba.png, or make them from a video "
            f"with {PREPARE_HINT}"
        )
    frames = []
    for name in _visible_entries(ref_dir):
        match = FRAME_NAME.match(name)
        if match is None:
            raise DataError(
                f"{os.path.join(ref_dir, name)} is not named <i>_rgba.png (e.g. 0_rgba.png): "
                "rename it or move it out of ref/"
            )
        frames.append((int(match.group(1)), os.path.join(ref_dir, name)))
    if not frames:
        raise DataError(f"{ref_dir} has no frames: add <i>_rgba.png files, or make them with {PREPARE_HINT}")
    frames.sort()
    _check_consecutive([i for i, _ in frames], ref_dir, "{}_rgba.png")
    return frames


def list_anchor_files(
    path: str, frame_ids: list[int], num_views: int, required: bool
) -> list[list[str]] | None:
    """Anchor files [T][V] of the given frames, or None when not required and zero123/ is absent."""
    anchor_root = os.path.join(path, "zero123")
    if not os.path.isdir(anchor_root):
        if not required:
            return None
        raise DataError(
            f"{anchor_root} is missing: generate the anchor views of every frame with {GEN_MV_HINT} (or, for SDS "
            "conditioned on the reference alone, set reference_only_sds=true)"
        )
    files = []
    for i in frame_ids:
        folder = os.path.join(anchor_root, f"{i}_rgba")
        if not os.path.isdir(folder):
            raise DataError(f"{folder} is missing: generate the anchor views of frame {i} with {GEN_MV_HINT}")
        views = []
        for name in _visible_entries(folder):
            match = ANCHOR_NAME.match(name)
            if match is None:
                raise DataError(
                    f"{os.path.join(folder, name)} is not an anchor view <k>.png: remove it, "
                    f"or regenerate the anchors with {GEN_MV_HINT}"
                )
            views.append(int(match.group(1)))
        if sorted(views) != list(range(num_views)):
            raise DataError(
                f"{folder} has {len(views)} anchor views {sorted(views)}, expected {num_views} "
                f"(0.png..{num_views - 1}.png): regenerate them with {GEN_MV_HINT}"
            )
        files.append([os.path.join(folder, f"{k}.png") for k in range(num_views)])
    return files


def read_rgba(file: str) -> np.ndarray:
    """Read an image as float32 RGBA [H, W, 4] in [0, 1]; alpha from matting when it has none.

    Grey, grey+alpha, palette and 16-bit images are converted. Non-square images are refused.
    """
    return _with_alpha(file, *_decode(file))


def read_rgba_files(files: list[str]) -> list[np.ndarray]:
    """:func:`read_rgba` of every file, in order. The decoding runs on up to ``LOAD_THREADS``
    threads (PIL releases the GIL there); matting, for images without alpha, stays in this thread,
    so a missing rembg model fails once, at the first such image."""
    decoded = list(map_on_threads(_decode, files, threads=LOAD_THREADS, name="load_frames"))
    return [_with_alpha(file, rgb, alpha) for file, (rgb, alpha) in zip(files, decoded)]


def _decode(file: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """float32 RGB [H, W, 3] and alpha [H, W] (None when the image has none) of a square image."""
    try:
        with Image.open(file) as image:
            image.verify()  # chunk CRCs and structure
        with Image.open(file) as image:
            image.load()  # decodes the pixels: catches truncated data
            rgb, alpha = _to_float_rgb_alpha(image)
    except FileNotFoundError:
        raise DataError(f"{file} is missing: check the dataset folder") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{file} cannot be read as an image ({' '.join(str(err).split())}): re-export it as PNG"
        ) from None
    height, width = rgb.shape[:2]
    if height != width:
        raise DataError(
            f"{file} is {width}x{height}, not square: crop the frames to a square with {PREPARE_HINT}"
        )
    return rgb, alpha


def _with_alpha(file: str, rgb: np.ndarray, alpha: Optional[np.ndarray]) -> np.ndarray:
    """RGBA [H, W, 4] from a decoded image; rembg's matte when it has no alpha."""
    if alpha is None:
        rgb8 = np.round(rgb * 255.0).astype(np.uint8)
        try:
            alpha = matting.matte_rembg(rgb8)
        except ModelUnavailable as err:
            raise ModelUnavailable(
                f"{file} has no alpha channel, so its background must be removed, but {err}"
            ) from None
    return np.concatenate([rgb, alpha[..., None].astype(np.float32)], axis=-1)


def load_image(file: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [3, size, size] on white, alpha [1, size, size]) of one image file."""
    return composite_and_resize(torch.from_numpy(read_rgba(file)), size)


def composite_and_resize(rgba: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite RGBA [H, W, 4] (straight alpha, [0, 1]) on white and resize to ``size``.

    Returns (rgb [3, size, size], alpha [1, size, size]). See the module docstring for why
    resizing the composite equals resizing premultiplied RGBA.
    """
    chw = rgba.permute(2, 0, 1).float()
    rgb, alpha = chw[:3], chw[3:]
    on_white = rgb * alpha + (1.0 - alpha)
    stacked = torch.cat([on_white, alpha])[None]  # [1, 4, H, W]
    if stacked.shape[-1] != size or stacked.shape[-2] != size:
        stacked = F.interpolate(stacked, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    stacked = stacked[0].clamp(0.0, 1.0).contiguous()
    return stacked[:3], stacked[3:]


def composite_and_resize_released(rgba: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The released loader's resampling: the 8-bit straight-alpha RGBA resized to 800 px with
    ``cv2.INTER_AREA``, composited on white, then bilinearly (no antialiasing) to ``size``.

    Returns (rgb [3, size, size], alpha [1, size, size]), as :func:`composite_and_resize`.
    """
    import cv2  # opencv: only this released path needs it

    rgba8 = (rgba.float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    big = cv2.resize(rgba8, (RELEASED_LOAD_SIZE, RELEASED_LOAD_SIZE), interpolation=cv2.INTER_AREA)
    chw = torch.from_numpy(big.astype(np.float32) / 255.0).permute(2, 0, 1)
    alpha = chw[3:]
    on_white = chw[:3] * alpha + (1.0 - alpha)
    stacked = F.interpolate(torch.cat([on_white, alpha])[None], size=(size, size), mode="bilinear",
                            align_corners=False)[0]
    return stacked[:3].contiguous(), stacked[3:].contiguous()


def _to_float_rgb_alpha(image) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb [H, W, 3], alpha [H, W] or None) float32 in [0, 1] from a PIL image of any mode."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grey (PIL has no 16-bit colour modes: it reduces those to 8 bits itself). Mode
        # "I" is 32-bit: take it as 16-bit data unless every value fits in 8 bits.
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if mode == "I" and values.max(initial=0) <= 255 else 65535.0
        grey = np.clip(values / scale, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3]
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, None


def _check_consecutive(ids: list[int], folder: str, pattern: str) -> None:
    """Sorted frame numbers must be exactly 0..T-1: name the first duplicated or missing one."""
    for position, i in enumerate(ids):
        if position > 0 and i == ids[position - 1]:
            raise DataError(
                f"{os.path.join(folder, pattern.format(i))} appears twice (numbers with leading zeros?): "
                "keep one file per frame number"
            )
        if i != position:  # sorted and unique so far, so `position` is the first number missing
            raise DataError(
                f"{os.path.join(folder, pattern.format(position))} is missing: frames must be numbered "
                f"0..T-1 without gaps (renumber them, or re-extract them with {PREPARE_HINT})"
            )


def _visible_entries(folder: str) -> list[str]:
    """Entries of a folder, without hidden files (.DS_Store, editor swap files)."""
    try:
        names = os.listdir(folder)
    except PermissionError:
        raise DataError(f"{folder} cannot be read (permission denied): make it readable (chmod)") from None
    return sorted(name for name in names if not name.startswith("."))
