"""Atomic file output: write to a temporary file in the same folder, then rename.

An interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary name keeps the extension, so writers that pick a format by it still work.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the final file the usual permissions (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_image(path: str, image: np.ndarray) -> None:
    """Save a uint8 image [H, W, C] (C = 1, 3 or 4) atomically; format from the extension."""

    if image.dtype != np.uint8:
        raise TypeError(f"save_image wants uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(path))


def torch_save(obj, path: str) -> None:
    """``torch.save`` atomically."""

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def _pil_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(ext, "PNG")
