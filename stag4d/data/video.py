"""Videos and image grids: H.264 MP4 writing (atomic), decoding, contact sheets, colour maps.

* :class:`VideoWriter` / :func:`write_video` pipe uint8 frames to ffmpeg (imageio-ffmpeg's
  binary) as H.264 in yuv420p, the format every player accepts, into a temporary file next to the
  target, renamed when ffmpeg has exited cleanly. The writer streams (frames are not kept).
  yuv420p needs even sizes: an odd width or height is padded by repeating the last column / row
  (never resized, so pixels stay where the renderer put them).
* :func:`read_video` decodes a video back to a uint8 array (tests, checks).
* :func:`contact_sheet` tiles images [R, C, H, W, 3] into one image with optional row / column
  labels (PIL's default bitmap font: cheap, no font files).
* :func:`to_uint8`, :func:`quantize`, :func:`depth_to_rgb` turn render outputs into frames.

Light: numpy and torch only at import; imageio-ffmpeg and PIL are imported where used.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from stag4d.errors import UserError
from stag4d.files import atomic_path

DEFAULT_CRF = 18  # x264 constant rate factor: visually lossless for renders, small files

# Stops of a perceptual dark-to-bright colour map (near = bright yellow, far = dark purple),
# close to matplotlib's "inferno"; interpolated linearly in between.
_DEPTH_STOPS = np.array(
    [
        [0.001, 0.000, 0.014],
        [0.258, 0.039, 0.406],
        [0.578, 0.148, 0.404],
        [0.865, 0.317, 0.226],
        [0.988, 0.645, 0.040],
        [0.988, 0.998, 0.645],
    ],
    dtype=np.float32,
)


def _imageio_ffmpeg():
    """imageio-ffmpeg, which bundles the ffmpeg binary: imported when a video is written or read.

    Raises:
        VideoError: it is not installed (the fix in one line).
    """
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise VideoError(f"videos are written and read through imageio-ffmpeg, which cannot be imported ({err}): "
                         "pip install -r requirements.txt") from err
    return imageio_ffmpeg


def _ffmpeg_exe() -> str:
    """The ffmpeg binary: imageio-ffmpeg's own, or the one that IMAGEIO_FFMPEG_EXE or the PATH names.

    Raises:
        VideoError: imageio-ffmpeg is missing or finds no binary (its source package bundles none).
    """
    imageio_ffmpeg = _imageio_ffmpeg()
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise VideoError(f"videos are written and read through the ffmpeg binary, which imageio-ffmpeg cannot find "
                         "(its source package bundles none): pip install --force-reinstall imageio-ffmpeg (the "
                         "binary wheel), or set IMAGEIO_FFMPEG_EXE to an ffmpeg") from err


def require_videos() -> None:
    """Raise :class:`VideoError` now (at start-up) if videos cannot be written later."""
    _ffmpeg_exe()


class VideoError(UserError):
    """A video cannot be written or read."""


# ------------------------------------------------------------------------------------------------
# frames from render outputs


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1], channels first ([3, H, W] or [B, 3, H, W]) -> uint8 [(B,) H, W, 3]."""
    images = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(np.moveaxis(images, -3, -1))


def quantize(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1], channels last [..., 3] -> uint8 [..., 3]."""
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def depth_to_rgb(
    depth: np.ndarray, alpha: np.ndarray, background: Sequence[float], alpha_threshold: float = 0.5
) -> np.ndarray:
    """Alpha-weighted depth [F, H, W] -> colour-mapped frames float [F, H, W, 3].

    The expected depth ``depth / alpha`` is normalized to [0, 1] over the pixels of the whole
    clip where ``alpha > alpha_threshold`` (one range per video, so colours are comparable across
    its frames; any drawn pixel counts when none is that solid), mapped near = bright, far = dark,
    and composited over ``background`` with alpha.
    """
    alpha = np.clip(alpha, 0.0, 1.0)
    expected = depth / np.maximum(alpha, 1e-6)
    solid = alpha > alpha_threshold
    if not solid.any():
        solid = alpha > 1e-3
    near, far = (float(expected[solid].min()), float(expected[solid].max())) if solid.any() else (0.0, 1.0)
    normalized = np.clip((expected - near) / max(far - near, 1e-8), 0.0, 1.0)
    colour = colormap(1.0 - normalized)
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 1, 3)
    return colour * alpha[..., None] + bg * (1.0 - alpha[..., None])


def colormap(values: np.ndarray) -> np.ndarray:
    """Values [...] in [0, 1] -> RGB [..., 3] float32 (dark purple at 0, bright yellow at 1)."""
    x = np.clip(values, 0.0, 1.0) * (len(_DEPTH_STOPS) - 1)
    low = np.minimum(np.floor(x).astype(np.int64), len(_DEPTH_STOPS) - 2)
    frac = (x - low)[..., None].astype(np.float32)
    return _DEPTH_STOPS[low] * (1.0 - frac) + _DEPTH_STOPS[low + 1] * frac


# ------------------------------------------------------------------------------------------------
# videos


def _check_frames(frames: Sequence[np.ndarray] | np.ndarray, path: str) -> np.ndarray:
    """Frames as one uint8 array [F, H, W, 3], checked."""
    if len(frames) == 0:
        raise VideoError(f"{path}: no frames to write")
    array = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 [F, H, W, 3], got {array.dtype} {tuple(array.shape)}")
    return array


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] with an odd H or W padded by repeating the last row / column (yuv420p needs even)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class VideoWriter:
    """Streaming H.264 (libx264, yuv420p) MP4 writer, atomic: frames go to ffmpeg as they come.

    ffmpeg (the imageio-ffmpeg binary) reads raw RGB frames from a pipe into a temporary file next
    to ``path``; leaving the ``with`` block normally waits for ffmpeg, checks its exit status
    (imageio-ffmpeg's own writer ignores it and can leave an empty file) and renames the file;
    leaving it with an exception stops ffmpeg and removes the temporary file.

        with VideoWriter("out.mp4", fps=10) as video:
            for batch in batches:          # uint8 [B, H, W, 3] or one frame [H, W, 3]
                video.write(batch)

    Args:
        path: target file (``.mp4``).
        fps: frames per second.
        crf: x264 quality (0 = lossless luma, 51 = worst; 18 is visually lossless).
        preset: x264 speed preset (ultrafast ... veryslow).
    Every frame must have the size of the first; odd sizes are padded to even (:func:`pad_to_even`).
    """

    def __init__(self, path: str, fps: float = 10, crf: int = DEFAULT_CRF, preset: str = "medium"):
        self.path, self.fps, self.crf, self.preset = path, float(fps), int(crf), str(preset)
        self.num_frames = 0
        self._size: tuple[int, int] | None = None  # (height, width) of the incoming frames
        self._process = None
        self._log = None
        self._atomic = None
        self._tmp: str | None = None

    def __enter__(self) -> "VideoWriter":

        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._log = tempfile.TemporaryFile()
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [B, H, W, 3] (or one frame [H, W, 3])."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        frames = _check_frames(frames, self.path)
        if self._size is None:
            self._size = (frames.shape[1], frames.shape[2])
            self._start(*pad_to_even(frames[:1]).shape[1:3])
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"{self.path}: frame size {frames.shape[1:3]} differs from the first frame's {self._size}")
        try:
            for frame in pad_to_even(frames):
                self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
                self.num_frames += 1
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its exit status and log say why (checked on close)

    def _start(self, height: int, width: int) -> None:


        cmd = [
            _ffmpeg_exe(), "-y", "-loglevel", "error",
            "-f", "rawvideo", "-vcodec", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", f"{self.fps:g}", "-i", "-", "-an",
            "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-preset", self.preset,
            "-movflags", "+faststart", "-f", "mp4", self._tmp,
        ]
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
            elif self._process is not None:
                self._process.kill()
                self._process.wait()
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())  # removes the temporary file
            raise
        finally:
            self._log.close()
        self._atomic.__exit__(exc_type, exc, tb)  # renames on success, removes on an exception

    def _finish(self) -> None:
        if self._process is None:
            raise VideoError(f"{self.path}: no frames to write")
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        status = self._process.wait()
        if status != 0:
            self._log.seek(0)
            lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
            reason = lines[0] if lines else f"exit status {status}"
            raise VideoError(f"{self.path}: ffmpeg could not write the video ({reason})")


def write_video(path: str, frames: Sequence[np.ndarray] | np.ndarray, fps: float = 10, crf: int = DEFAULT_CRF,
                preset: str = "medium") -> None:
    """Write uint8 frames [F, H, W, 3] to ``path`` as H.264 (yuv420p) MP4, atomically (:class:`VideoWriter`).

    Raises:
        VideoError: no frames, or ffmpeg failed (its first message line).
    """
    array = _check_frames(frames, path)
    with VideoWriter(path, fps, crf, preset) as video:
        video.write(array)


def read_video(path: str) -> np.ndarray:
    """Decode a video to uint8 frames [F, H, W, 3]."""

    _ffmpeg_exe()  # a missing binary is not a bad video
    reader = _imageio_ffmpeg().read_frames(path, pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        raise VideoError(f"{path} cannot be decoded ({type(err).__name__}); write it again") from err
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)


def video_info(path: str) -> dict:
    """ffmpeg's view of a video: ``codec``, ``pix_fmt``, ``fps``, ``size`` (width, height), ``duration``."""

    _ffmpeg_exe()  # a missing binary is not a bad video
    reader = _imageio_ffmpeg().read_frames(path, pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        raise VideoError(f"{path} cannot be decoded ({type(err).__name__}); write it again") from err
    finally:
        reader.close()
    return {key: meta.get(key) for key in ("codec", "pix_fmt", "fps", "size", "duration")}


# ------------------------------------------------------------------------------------------------
# contact sheets


def contact_sheet(
    images: np.ndarray,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    gap: int = 2,
    gap_color: Sequence[int] = (128, 128, 128),
    label_color: Sequence[int] = (0, 0, 0),
    label_background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """Tile images [R, C, H, W, 3] uint8 into one uint8 image, with optional labels.

    Row labels go in a left margin, column labels in a top margin (PIL's default font); tiles are
    separated by ``gap`` pixels of ``gap_color``.

    Returns:
        uint8 [R * H + (R + 1) * gap + top, C * W + (C + 1) * gap + left, 3].
    """
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"contact_sheet wants uint8 [R, C, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    rows, cols, height, width = images.shape[:4]
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if column_labels is not None and len(column_labels) != cols:
        raise ValueError(f"{len(column_labels)} column labels for {cols} columns")

    font = _default_font() if (row_labels or column_labels) else None
    line_h = _text_size(font, "Ag")[1] + 2 if font is not None else 0
    left = max((_text_size(font, s)[0] for s in row_labels), default=0) + 8 if row_labels else 0
    top = line_h + 6 if column_labels else 0

    sheet_h = top + rows * height + (rows + 1) * gap
    sheet_w = left + cols * width + (cols + 1) * gap
    sheet = np.empty((sheet_h, sheet_w, 3), dtype=np.uint8)
    sheet[:] = np.asarray(label_background, dtype=np.uint8)
    sheet[top:, left:] = np.asarray(gap_color, dtype=np.uint8)
    for r in range(rows):
        y = top + gap + r * (height + gap)
        for c in range(cols):
            x = left + gap + c * (width + gap)
            sheet[y:y + height, x:x + width] = images[r, c]
    if font is None:
        return sheet


    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    fill = tuple(int(v) for v in label_color)
    for c, text in enumerate(column_labels or ()):
        text_w = _text_size(font, text)[0]
        x = left + gap + c * (width + gap) + max(0, (width - text_w) // 2)
        draw.text((x, 3), text, fill=fill, font=font)
    for r, text in enumerate(row_labels or ()):
        y = top + gap + r * (height + gap) + max(0, (height - line_h) // 2)
        draw.text((4, y), text, fill=fill, font=font)
    return np.asarray(canvas)


def _default_font():

    return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn with ``font``."""
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


__all__ = [
    "DEFAULT_CRF",
    "VideoError",
    "VideoWriter",
    "colormap",
    "contact_sheet",
    "depth_to_rgb",
    "pad_to_even",
    "quantize",
    "read_video",
    "require_videos",
    "to_uint8",
    "video_info",
    "write_video",
]
