"""Turn a video (MP4 / GIF / WebM / ...) or a folder of images into a dataset's ref/ frames.

    python scripts/prepare_video.py INPUT --name NAME [--frames 32] [--size 512]
        [--matting rembg|color|none] [--out-root dataset] [--overwrite]

1. decode the input (imageio; videos through its ffmpeg plugin, GIFs through Pillow) and take
   ``--frames`` frames evenly spread over it;
2. give frames without alpha a matte: ``rembg`` (what the released code uses; needs its model),
   ``color`` (offline; object on a plain background) or ``none`` (keep alpha / fully opaque);
3. crop EVERY frame with ONE square box around the union of the object masks over time (so the
   camera does not jump between frames), with a margin so that the object fills the frame as in
   the sample data (:data:`OBJECT_FRACTION`), padding with transparent pixels where the box leaves
   the image;
4. resize (premultiplied alpha, antialiased) to ``--size`` and write
   ``<out-root>/<NAME>/ref/<i>_rgba.png`` atomically.

It then prints the next two commands (multi-view anchors, training).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from stag4d.data import matting as matting_module
from stag4d.errors import DataError, UserError, exit_on_user_error
from stag4d.files import map_on_threads, save_image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".mpg", ".mpeg")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MATTINGS = ("rembg", "color", "none")

# Longer side of the object's box (the union of its masks over all frames) as a fraction of the
# output frame. Measured on the sample data (../shared/data/minions, 32 frames of 720x720): the
# union of the alpha > 0.5 masks spans 457 x 487 pixels, 0.676 of the frame (single frames
# 0.61-0.66). Zero123 / Zero123++ were trained on objects framed like this, so new videos get the
# same framing.
OBJECT_FRACTION = 0.68
MASK_THRESHOLD = 0.5
WRITE_THREADS = 8  # frames cropped, resized and written at once (at most one per CPU core)


@dataclass
class Frame:
    """One decoded frame: uint8 RGB [H, W, 3] and its alpha [H, W] float32 in [0, 1] or None."""

    rgb: np.ndarray
    alpha: Optional[np.ndarray]


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _natural_key(path: str) -> list:
    """Sort key: 'frame10.png' after 'frame9.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", os.path.basename(path))]


def _split_alpha(image: np.ndarray) -> Frame:
    """uint8 [H, W], [H, W, 3] or [H, W, 4] -> Frame; a fully opaque alpha counts as no alpha."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        raise DataError(f"frames of type {image.dtype} are not supported: give 8-bit images or video")
    if image.shape[-1] == 4:
        alpha = image[..., 3]
        rgb = np.ascontiguousarray(image[..., :3])
        if alpha.min() == 255:
            return Frame(rgb, None)
        return Frame(rgb, alpha.astype(np.float32) / 255.0)
    return Frame(np.ascontiguousarray(image[..., :3]), None)


def _read_pil(file: str) -> np.ndarray:

    with Image.open(file) as image:
        image.load()
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:160] + "...") if len(text) > 160 else text or type(err).__name__


class FrameSource:
    """The frames of an input (video file, GIF or folder of images): count, then read some."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise DataError(f"{path} does not exist: give a video file (MP4, GIF, WebM) or a folder of images")
        if os.path.isdir(path):
            self.kind = "folder"
            self.files = sorted(
                (f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS)),
                key=_natural_key,
            )
            if not self.files:
                raise DataError(
                    f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}): give a folder of frames or a video file"
                )
        else:
            ext = os.path.splitext(path)[1].lower()
            if ext in GIF_EXTENSIONS:
                self.kind = "gif"
            elif ext in VIDEO_EXTENSIONS:
                self.kind = "video"
            else:
                raise DataError(
                    f"{path}: unknown file type '{ext}': give a video ({', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)}) "
                    "or a folder of images"
                )

    def count(self) -> int:
        """Number of frames in the input."""
        try:
            if self.kind == "folder":
                return len(self.files)
            if self.kind == "gif":

                with Image.open(self.path) as image:
                    return int(getattr(image, "n_frames", 1))

            reader = imageio.get_reader(self.path, format="ffmpeg")
            try:
                return int(reader.count_frames())
            finally:
                reader.close()
        except UserError:
            raise
        except Exception as err:
            raise self._unreadable(err) from None

    def read(self, indices: Sequence[int]) -> list[Frame]:
        """The frames at ``indices`` (sorted, unique), decoded in one pass."""
        wanted = set(int(i) for i in indices)
        try:
            if self.kind == "folder":
                frames = []
                for i in indices:
                    try:
                        frames.append(_split_alpha(_read_pil(self.files[i])))
                    except (OSError, SyntaxError, ValueError) as err:
                        raise DataError(
                            f"{self.files[i]} cannot be read as an image ({_one_line(err)}): re-export it or remove it"
                        ) from None
                return frames
            if self.kind == "gif":

                picked = {}
                with Image.open(self.path) as image:
                    for i in range(max(wanted) + 1):  # sequential seeks keep GIF frame disposal right
                        image.seek(i)
                        if i in wanted:
                            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                            picked[i] = _split_alpha(np.asarray(image.convert("RGBA" if has_alpha else "RGB")))
                return [picked[i] for i in indices]

            picked = {}
            reader = imageio.get_reader(self.path, format="ffmpeg")
            try:
                for i, image in enumerate(reader):
                    if i in wanted:
                        picked[i] = _split_alpha(np.asarray(image))
                    if len(picked) == len(wanted):
                        break
            finally:
                reader.close()
            missing = sorted(wanted - set(picked))
            if missing:
                raise DataError(
                    f"{self.path}: frame {missing[0]} could not be decoded (the file may be truncated): "
                    "re-encode the video or pass fewer --frames"
                )
            return [picked[i] for i in indices]
        except UserError:
            raise
        except Exception as err:
            raise self._unreadable(err) from None

    def _unreadable(self, err: BaseException) -> DataError:
        what = {"video": "a video", "gif": "a GIF", "folder": "images"}[self.kind]
        return DataError(
            f"{self.path} cannot be read as {what} ({_one_line(err)}): re-encode it as MP4 (H.264) "
            "or pass a folder of PNG frames"
        )


def sample_indices(available: int, wanted: int, source: str) -> list[int]:
    """``wanted`` frame indices spread evenly over 0..available-1 (first and last included)."""
    if wanted < 1:
        raise DataError(f"--frames {wanted}: give at least 1 frame")
    if available < wanted:
        raise DataError(
            f"{source} has {available} frame(s), fewer than --frames {wanted}: pass --frames {available} or less"
        )
    return [int(i) for i in np.round(np.linspace(0, available - 1, wanted)).astype(int)]


# --------------------------------------------------------------------------------------------
# Matting, one crop box, resizing
# --------------------------------------------------------------------------------------------


def matte_function(matting: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The matte for frames without alpha (``None`` for ``--matting none``: fully opaque)."""
    if matting not in MATTINGS:
        raise DataError(f"--matting {matting}: use one of {', '.join(MATTINGS)}")
    if matting == "none":
        return None
    return matting_module.matte_rembg if matting == "rembg" else matting_module.matte_color


def add_alpha(frames: list[Frame], matte: Callable[[np.ndarray], np.ndarray] | None) -> list[np.ndarray]:
    """Alpha [H, W] float32 of every frame: its own, else the matte, else opaque."""

    alphas = []
    needs_matte = [f.alpha is None for f in frames]
    bar = tqdm(frames, desc="matting", unit="frame", disable=matte is None or not any(needs_matte))
    for frame in bar:
        if frame.alpha is not None:
            alphas.append(frame.alpha)
        elif matte is None:
            alphas.append(np.ones(frame.rgb.shape[:2], dtype=np.float32))
        else:
            alphas.append(np.asarray(matte(frame.rgb), dtype=np.float32))
    return alphas


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) (bottom/right exclusive) of a boolean mask [H, W]; None if empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def union_crop_box(alphas: list[np.ndarray], source: str, source_indices: Sequence[int], matting: str,
                   fraction: float = OBJECT_FRACTION) -> tuple[int, int, int]:
    """One square crop (top, left, side) for all frames, around the union of their masks.

    The box is centred on the union's bounding box; its side is the union's longer side divided
    by ``fraction``. It may extend past the image (filled with transparent pixels later).
    """
    boxes = []
    for k, alpha in enumerate(alphas):
        box = mask_box(alpha > MASK_THRESHOLD)
        if box is None:
            hint = ("the frame's alpha is empty: fix the input's alpha channel" if matting == "none" else
                    f"--matting {matting} found no object: try --matting {'color' if matting == 'rembg' else 'rembg'}, "
                    "or give RGBA frames")
            raise DataError(f"frame {source_indices[k]} of {source} has an empty mask: {hint}")
        boxes.append(box)
    top = min(b[0] for b in boxes)
    left = min(b[1] for b in boxes)
    bottom = max(b[2] for b in boxes)
    right = max(b[3] for b in boxes)
    side = int(np.ceil(max(bottom - top, right - left) / fraction))
    centre_y, centre_x = (top + bottom) / 2.0, (left + right) / 2.0
    return int(round(centre_y - side / 2.0)), int(round(centre_x - side / 2.0)), side


def crop_square(rgba: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """Crop [side, side, C] at (top, left) from [H, W, C]; outside the image is zero (transparent)."""
    height, width = rgba.shape[:2]
    out = np.zeros((side, side, rgba.shape[2]), dtype=rgba.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = rgba[y0:y1, x0:x1]
    return out


def resize_rgba(rgb: np.ndarray, alpha: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGBA [size, size, 4] from RGB uint8 [S, S, 3] and alpha [S, S].

    Resized premultiplied (antialiased bilinear), so the colour under transparent pixels does not
    bleed into the object's edges; then un-premultiplied for the straight-alpha PNG.
    """
    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None]  # [1, S, S]
    c = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 * a  # premultiplied [3, S, S]
    stacked = torch.cat([c, a])[None]
    if stacked.shape[-1] != size:
        stacked = F.interpolate(stacked, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    stacked = stacked[0].clamp(0.0, 1.0)
    premult, a = stacked[:3], stacked[3:]
    straight = torch.where(a > 1e-6, premult / a.clamp_min(1e-6), torch.zeros_like(premult)).clamp(0.0, 1.0)
    out = torch.cat([straight, a]).permute(1, 2, 0).numpy()
    return np.round(out * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The whole thing
# --------------------------------------------------------------------------------------------


def prepare_video(
    input_path: str,
    name: str,
    frames: int = 32,
    size: int = 512,
    matting: str = "rembg",
    out_root: str = "dataset",
    overwrite: bool = False,
) -> str:
    """Write ``<out_root>/<name>/ref/<i>_rgba.png``; returns the dataset folder."""

    if not name or os.sep in name or name in (".", ".."):
        raise DataError(f"--name '{name}': give a plain folder name, e.g. --name my_video")
    if size < 16:
        raise DataError(f"--size {size}: give at least 16 pixels (512 is the default)")
    matte = matte_function(matting)
    dataset = os.path.join(out_root, name)
    ref_dir = os.path.join(dataset, "ref")
    old_frames = glob.glob(os.path.join(ref_dir, "*_rgba.png"))
    if old_frames and not overwrite:
        raise DataError(f"{ref_dir} already holds {len(old_frames)} frames: pass --overwrite or choose another --name")

    source = FrameSource(input_path)
    indices = sample_indices(source.count(), frames, input_path)
    decoded = source.read(indices)
    shapes = {f.rgb.shape for f in decoded}
    if len(shapes) > 1:
        raise DataError(f"the images in {input_path} have different sizes {sorted(shapes)}: give frames of one size")
    alphas = add_alpha(decoded, matte)
    top, left, side = union_crop_box(alphas, input_path, indices, matting)

    for old in old_frames:  # --overwrite: stale frames beyond the new count would be read as frames
        os.remove(old)

    def write(i: int, frame: Frame, alpha: np.ndarray) -> None:
        rgb = crop_square(frame.rgb, top, left, side)
        a = crop_square(alpha[..., None], top, left, side)[..., 0]
        save_image(os.path.join(ref_dir, f"{i}_rgba.png"), resize_rgba(rgb, a, size))

    # each frame is its own file; resizing and PNG encoding release the GIL, so threads share the cores
    with tqdm(total=len(decoded), desc="writing", unit="frame") as bar:
        for _ in map_on_threads(write, range(len(decoded)), decoded, alphas, threads=WRITE_THREADS,
                                name="prepare_video_write"):
            bar.update(1)
    return dataset


def next_commands(dataset: str, name: str, matting: str = "rembg") -> list[str]:
    """The multi-view anchor and training commands for the new dataset.

    gen_mv mattes its generated views too: with ``--matting color`` here (rembg unwanted or
    unavailable) it gets the same offline matte.
    """
    gen_mv_matting = " --matting color" if matting == "color" else ""
    return [
        f"python scripts/gen_mv.py --path {dataset}{gen_mv_matting}",
        f"python main.py --config configs/stag4d.yaml path={dataset} save_path={name}",
    ]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Make dataset/NAME/ref/<i>_rgba.png from a video or a folder of images.",
        epilog="example: python scripts/prepare_video.py clip.mp4 --name clip --matting color",
    )
    parser.add_argument("input", help="MP4 / GIF / WebM file, or a folder of images")
    parser.add_argument("--name", required=True, help="dataset name: frames go to <out-root>/<name>/ref/")
    parser.add_argument("--frames", type=int, default=32, help="frames to take, evenly spread (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="output frame size in pixels (default: %(default)s)")
    parser.add_argument("--matting", choices=MATTINGS, default="rembg",
                        help="matte for frames without alpha: rembg (needs its model), color (plain background, "
                             "offline) or none (default: %(default)s)")
    parser.add_argument("--out-root", default="dataset", help="datasets folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace the frames of an existing dataset")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dataset = prepare_video(args.input, args.name, args.frames, args.size, args.matting, args.out_root, args.overwrite)
    print(f"wrote {args.frames} frames of {args.size}x{args.size} to {os.path.join(dataset, 'ref')}")
    print("next:")
    for command in next_commands(dataset, args.name, args.matting):
        print(f"  {command}")


if __name__ == "__main__":
    main()
