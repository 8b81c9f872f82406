"""Which torch device a setting names (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
from __future__ import annotations

from typing import Optional

import torch

from stag4d.errors import UserError


def resolve_device(name: Optional[str] = "auto") -> torch.device:
    """``auto`` (or None) -> cuda when available, else cpu; a CUDA name without CUDA, or a name that
    is no device, is a one-line error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"device={name} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


__all__ = ["resolve_device"]
