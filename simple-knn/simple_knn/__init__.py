"""Exact mean squared distance to the 3 nearest neighbours of a CUDA point cloud.

``distCUDA2(points [N,3] float32 CUDA) -> [N] float32``: for each point, the mean of the squared
distances to its k = min(3, N - 1) nearest OTHER points (self excluded by index, so a duplicate
counts at distance 0; N = 1 gives 0). Exact: a uniform grid with a ring search (brute force below
2048 points). ``knn3_mean_sq_dist(points, method="auto"|"brute"|"grid")`` picks the method.
"""
import torch  # noqa: F401  (loads the torch libraries that _C links against)

from . import _C
from ._C import distCUDA2, knn3_mean_sq_dist, plan_grid

__all__ = ["_C", "distCUDA2", "knn3_mean_sq_dist", "plan_grid"]
