"""Background removal for frames that come without alpha.

Two mattes with the same contract (``uint8 [H, W, 3] -> float32 alpha [H, W]`` in [0, 1]):

* :func:`matte_rembg`: the learned matte of ``rembg`` (what the released code uses). rembg, its
  ONNX runtime and its model file are imported / fetched lazily; when any of them cannot be had
  (offline, or onnxruntime missing) the call raises :class:`errors.ModelUnavailable`.
* :func:`matte_color`: an offline matte for objects filmed on a plain background. The
  background colour is the median of the border pixels; alpha ramps smoothly from 0 to 1 as the
  colour distance goes from ``low`` to ``high``; small specks are removed and enclosed holes
  (background-coloured regions that do not touch the border, e.g. white eyes on a white
  backdrop) are filled, with max-pooling morphology only (no scipy / OpenCV).

:func:`apply_alpha` turns an RGB image and a matte into RGBA.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import socket

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stag4d.errors import ModelUnavailable

REMBG_MODEL = "u2net"
REMBG_MODEL_HOST = ("github.com", 443)  # where rembg downloads its model files from
REACH_TIMEOUT_S = 3.0


def rembg_model_file(model_name: str) -> str:
    """Where rembg keeps ``<model_name>.onnx`` ($U2NET_HOME, else ~/.u2net)."""
    home = os.environ.get("U2NET_HOME", os.path.join(os.path.expanduser("~"), ".u2net"))
    return os.path.join(home, f"{model_name}.onnx")


def _can_reach(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# rembg
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _rembg_session(model_name: str):
    """Load (once per process) a rembg session; ModelUnavailable when it cannot be had.

    Cached because loading the ONNX model takes seconds and one dataset calls it per frame.
    """
    # rembg calls sys.exit(1) at import when onnxruntime is missing: look before importing.
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailable(
            "rembg cannot run: onnxruntime is not installed (pip install \"rembg[cpu]\"); "
            "or give RGBA frames, or use scripts/prepare_video.py --matting color"
        )
    try:
        import rembg
    except (ImportError, SystemExit) as err:
        raise ModelUnavailable(
            f"rembg cannot be imported ({_one_line(err)}): pip install \"rembg[cpu]\"; "
            "or give RGBA frames, or use scripts/prepare_video.py --matting color"
        ) from None
    model_file = rembg_model_file(model_name)
    if not os.path.isfile(model_file) and not _can_reach(*REMBG_MODEL_HOST):
        # rembg would retry its download for a minute and a half before failing in several lines
        raise ModelUnavailable(
            f"rembg's model '{model_name}' is not in {os.path.dirname(model_file)} and {REMBG_MODEL_HOST[0]} cannot "
            f"be reached (offline?): copy {model_name}.onnx there from a machine with internet; or give RGBA "
            "frames, or use scripts/prepare_video.py --matting color")
    try:
        # Fetches the model file into ~/.u2net (or $U2NET_HOME) the first time.
        return rembg.new_session(model_name)
    except Exception as err:  # network errors come from requests/pooch/urllib: catch them all
        raise ModelUnavailable(
            f"rembg's model '{model_name}' cannot be obtained ({_one_line(err)}): put {model_name}.onnx "
            "in ~/.u2net (or $U2NET_HOME) on a machine with internet; or give RGBA frames, "
            "or use scripts/prepare_video.py --matting color"
        ) from None


def matte_rembg(rgb: np.ndarray, model_name: str = REMBG_MODEL) -> np.ndarray:
    """Alpha matte [H, W] float32 in [0, 1] of a uint8 RGB image [H, W, 3] by rembg.

    Raises:
        errors.ModelUnavailable: rembg, onnxruntime or the model file cannot be obtained.
    """
    _check_rgb(rgb)

    session = _rembg_session(model_name)
    import rembg

    mask = rembg.remove(Image.fromarray(rgb), session=session, only_mask=True)
    return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# colour-key matte
# --------------------------------------------------------------------------------------------


def border_pixels(rgb: np.ndarray, width: int) -> np.ndarray:
    """Pixels [M, 3] of the ``width``-pixel frame around the image [H, W, 3]."""
    h, w = rgb.shape[:2]
    width = max(1, min(width, h // 2, w // 2))
    mask = np.zeros((h, w), dtype=bool)
    mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return rgb[mask]


def estimate_background(rgb: np.ndarray, border: int = 4) -> np.ndarray:
    """Background colour [3] in [0, 1]: per-channel median of the border pixels.

    The median ignores the part of the border that the object covers, as long as that is
    less than half of it.
    """
    pixels = border_pixels(rgb, border).astype(np.float32) / 255.0
    return np.median(pixels, axis=0).astype(np.float32)


def matte_color(
    rgb: np.ndarray,
    low: float = 0.08,
    high: float = 0.2,
    border: int = 4,
    noise_factor: float = 3.0,
    speck_size: int = 3,
    fill_holes: bool = True,
) -> np.ndarray:
    """Offline alpha matte [H, W] float32 of an object on a plain background.

    Args:
        rgb: uint8 image [H, W, 3].
        low, high: colour distances (Euclidean in RGB scaled to [0, 1]) where alpha starts to
            rise from 0 and where it reaches 1; the ramp between is a smoothstep (soft edges).
        border: width in pixels of the frame whose median colour is the background.
        noise_factor: ``low`` is raised to at least this many times the median distance of the
            border pixels to the background colour, so that sensor noise stays background.
        speck_size: foreground blobs thinner than this (pixels) are removed (morphological
            opening); 0 or 1 disables it.
        fill_holes: background-coloured regions that do not touch the image border become
            foreground.
    """
    _check_rgb(rgb)
    background = estimate_background(rgb, border)
    image = rgb.astype(np.float32) / 255.0
    distance = np.linalg.norm(image - background, axis=-1)  # [H, W]
    border_distance = np.linalg.norm(border_pixels(image, border) - background, axis=-1)
    low = max(low, noise_factor * float(np.median(border_distance)))
    high = max(high, low + 0.05)
    alpha = _smoothstep((distance - low) / (high - low))

    alpha_t = torch.from_numpy(alpha)[None, None]  # [1, 1, H, W]
    solid = (alpha_t > 0.5).float()
    if speck_size > 1:
        kept = _dilate(_erode(solid, speck_size), speck_size)
        # Keep the soft edge next to what survived, drop everything else.
        alpha_t = alpha_t * _dilate(kept, speck_size + 2)
        solid = solid * kept
    if fill_holes:
        holes = (1.0 - solid) * (1.0 - _reach_from_border(1.0 - solid))
        alpha_t = torch.maximum(alpha_t, holes)
    return alpha_t[0, 0].numpy().astype(np.float32)


def apply_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA uint8 [H, W, 4] from RGB uint8 [H, W, 3] and alpha [H, W] in [0, 1].

    Alpha is rounded to 8 bits, so background (alpha < 0.5 / 255) is exactly 0.
    """
    _check_rgb(rgb)
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha {alpha.shape} does not match the image {rgb.shape[:2]}")
    alpha8 = np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.concatenate([rgb, alpha8[..., None]], axis=-1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {rgb.dtype} {tuple(rgb.shape)}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary dilation of [1, 1, H, W] with a size x size square (odd sizes are centred)."""
    pad_lo, pad_hi = (size - 1) // 2, size // 2
    padded = F.pad(mask, (pad_lo, pad_hi, pad_lo, pad_hi), value=0.0)
    return F.max_pool2d(padded, size, stride=1)


def _erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary erosion; outside the image counts as set, so objects cut by the border survive."""
    pad_lo, pad_hi = (size - 1) // 2, size // 2
    padded = F.pad(1.0 - mask, (pad_lo, pad_hi, pad_lo, pad_hi), value=0.0)
    return 1.0 - F.max_pool2d(padded, size, stride=1)


def _reach_from_border(free: torch.Tensor) -> torch.Tensor:
    """Pixels of ``free`` [1, 1, H, W] (0/1) connected (8-neighbourhood) to the image border.

    Flood fill by whole runs: a run of free pixels along a row (then a column) is reached as
    soon as one of its pixels is, and one 3x3 step adds the diagonal neighbours. Repeated until
    nothing changes, which takes a handful of passes for ordinary shapes (a 3x3 geodesic
    dilation alone needs one pass per pixel of path length).
    """
    free_np = free[0, 0].numpy() > 0.5
    reached = np.zeros_like(free_np)
    reached[0, :], reached[-1, :], reached[:, 0], reached[:, -1] = True, True, True, True
    reached &= free_np
    while True:
        before = reached
        reached = _fill_runs(reached, free_np)
        reached = _fill_runs(reached.T, free_np.T).T
        grown = F.max_pool2d(torch.from_numpy(reached).float()[None, None], 3, stride=1, padding=1)
        reached = (grown[0, 0].numpy() > 0.5) & free_np
        if np.array_equal(reached, before):
            return torch.from_numpy(reached.astype(np.float32))[None, None]


def _fill_runs(reached: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Mark [H, W] every horizontal run of ``free`` pixels that contains a ``reached`` pixel."""
    starts = free.copy()
    starts[:, 1:] &= ~free[:, :-1]  # a run starts where the left neighbour is not free (or at column 0)
    run_id = np.cumsum(starts.ravel()).reshape(free.shape) * free  # 0 = not free
    hit = np.zeros(int(run_id.max()) + 1, dtype=bool)
    hit[run_id[reached & free]] = True
    hit[0] = False
    return hit[run_id]
