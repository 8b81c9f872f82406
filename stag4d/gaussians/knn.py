"""Mean squared distance to the 3 nearest neighbours (the scale initialization of 3D Gaussians).

Two exact implementations of the same function:

* ``simple_knn._C.distCUDA2`` (our CUDA extension in ``simple-knn/``): a uniform grid with a
  ring search; used for CUDA float32/float16/bfloat16 points when the extension imports.
* a chunked pure-PyTorch computation: query rows in chunks against all points, so that memory
  stays within a budget (no N x N matrix for large N); used everywhere else.

Definition (both paths): for point i, the mean of the squared distances to its
``k = min(3, N - 1)`` nearest OTHER points. Self is excluded by index, not by distance, so a
duplicate of point i is a neighbour at distance 0. Edge cases: N = 0 gives an empty tensor;
N = 1 has no other point and gives 0 (the caller's clamp, e.g. ``clamp_min(1e-7)``, turns it
into the smallest scale); N = 2 uses the one other point; N = 3 the mean over the two others.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from stag4d.errors import UserError

logger = logging.getLogger(__name__)

NUM_NEIGHBOURS = 3
DEFAULT_BUDGET_BYTES_CPU = 256 * 2**20
DEFAULT_BUDGET_BYTES_CUDA = 1024 * 2**20
# Temporaries alive per (query, point) pair in one chunk: the distance accumulator, one
# coordinate difference, and topk's scratch.
_TEMPS_PER_PAIR = 3

BUILD_HINT = "build it with `pip install ./simple-knn` (needs nvcc and a CUDA torch)"


@functools.lru_cache(maxsize=1)
def load_extension() -> Optional[ModuleType]:
    """The compiled ``simple_knn._C`` module, or None when it is not built / cannot load."""
    try:
        from simple_knn import (
            _C,  # optional compiled extension (pip install ./simple-knn)
        )
        return _C
    except (ImportError, OSError) as err:
        logger.debug("simple_knn._C is not installed: %s", err)
    return _load_inplace_build()


def _load_inplace_build() -> Optional[ModuleType]:
    """``simple-knn/simple_knn/_C*.so`` built by ``python setup.py build_ext --inplace``."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simple-knn", "simple_knn")
    for path in sorted(glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(
            os.path.join(folder, "_C*.pyd"))):
        try:
            spec = importlib.util.spec_from_file_location("simple_knn._C", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except (ImportError, OSError) as err:
            logger.debug("simple_knn._C in-place build %s does not load: %s", path, err)
    return None


@functools.lru_cache(maxsize=None)
def _log_path_once(message: str) -> None:
    """Log which implementation runs, once per distinct message (lru_cache = seen set)."""
    logger.info(message)


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor):
        raise UserError(f"knn: points must be a torch.Tensor [N,3], got {type(points).__name__}")
    if points.dim() != 2 or points.shape[1] != 3:
        raise UserError(f"knn: points must have shape [N,3], got {list(points.shape)}; "
                        "reshape to (-1, 3)")
    if not points.is_floating_point():
        raise UserError(f"knn: points must be floating point, got {points.dtype}; "
                        "convert with .float()")


def chunk_rows(num_points: int, element_size: int, budget_bytes: int) -> int:
    """Query rows per chunk so that ``rows * num_points * _TEMPS_PER_PAIR`` elements fit."""
    per_row = max(1, num_points) * element_size * _TEMPS_PER_PAIR
    return max(1, min(num_points, budget_bytes // per_row))


def _sq_dist_rows(queries_t: Tensor, points_t: Tensor) -> Tensor:
    """Exact squared distances by coordinate differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation).

    queries_t [3,C], points_t [3,N] (coordinate-major, contiguous rows) -> [C,N]. Each entry is
    computed by the same elementwise ops whatever C is, so results do not depend on the chunking.
    """
    dist = torch.sub(queries_t[0, :, None], points_t[0]).square_()
    for axis in (1, 2):
        diff = torch.sub(queries_t[axis, :, None], points_t[axis]).square_()
        dist += diff
        del diff
    return dist


def mean_sq_dist_knn3_torch(points: Tensor, chunk_size: Optional[int] = None,
                            budget_bytes: Optional[int] = None) -> Tensor:
    """Exact chunked PyTorch path. points [N,3] -> [N], same dtype and device as ``points``.

    ``chunk_size`` (query rows per chunk) overrides the size derived from ``budget_bytes``
    (default 256 MiB on CPU, 1 GiB on CUDA).
    """
    _check_points(points)
    num = points.shape[0]
    k = min(NUM_NEIGHBOURS, num - 1)
    if k <= 0:  # N = 0 (empty) or N = 1 (no other point): 0 by definition
        return torch.zeros(num, dtype=points.dtype, device=points.device)
    points_t = points.t().contiguous()  # [3,N]: contiguous per-axis rows broadcast fast
    if chunk_size is None:
        if budget_bytes is None:
            budget_bytes = (DEFAULT_BUDGET_BYTES_CUDA if points.is_cuda
                            else DEFAULT_BUDGET_BYTES_CPU)
        chunk_size = chunk_rows(num, points.element_size(), budget_bytes)
    chunk_size = max(1, int(chunk_size))
    out = torch.empty(num, dtype=points.dtype, device=points.device)
    for start in range(0, num, chunk_size):
        stop = min(num, start + chunk_size)
        dist = _sq_dist_rows(points_t[:, start:stop], points_t)
        rows = torch.arange(stop - start, device=points.device)
        dist[rows, rows + start] = float("inf")  # exclude self by index: duplicates still count
        nearest = torch.topk(dist, k, dim=1, largest=False, sorted=True).values  # ascending
        out[start:stop] = nearest.sum(dim=1) / k
        del dist, nearest
    return out


def mean_sq_dist_knn3(points: Tensor, backend: str = "auto", chunk_size: Optional[int] = None,
                      budget_bytes: Optional[int] = None) -> Tensor:
    """Mean squared distance to the 3 nearest other points. points [N,3] -> [N].

    backend: "auto" (extension for CUDA non-float64 points when it imports, else torch),
    "cuda" (the extension; UserError when it is unavailable or the points are not on CUDA),
    "torch" (the chunked PyTorch path). The result has the dtype and device of ``points``
    (the extension computes in float32; float64 points use the torch path to stay float64).
    """
    _check_points(points)
    if backend not in ("auto", "cuda", "torch"):
        raise UserError(f"knn: backend must be 'auto', 'cuda' or 'torch', got {backend!r}")
    use_extension = False
    if backend != "torch" and points.is_cuda:
        extension = load_extension()
        use_extension = extension is not None and (backend == "cuda"
                                                   or points.dtype != torch.float64)
    if backend == "cuda" and not use_extension:
        if not points.is_cuda:
            raise UserError("knn: backend='cuda' needs points on a CUDA device; "
                            "move them with .cuda() or use backend='auto'")
        raise UserError(f"knn: backend='cuda' but simple_knn._C does not import; {BUILD_HINT}")
    if use_extension:
        _log_path_once("knn: using the simple_knn CUDA extension (distCUDA2)")
        result = extension.distCUDA2(points.detach().float().contiguous())
        return result.to(points.dtype)
    reason = ""
    if points.is_cuda and load_extension() is None:
        reason = f" (simple_knn._C unavailable; {BUILD_HINT})"
    _log_path_once(f"knn: using the chunked PyTorch path on {points.device.type}{reason}")
    with torch.no_grad():
        return mean_sq_dist_knn3_torch(points.detach(), chunk_size, budget_bytes)
