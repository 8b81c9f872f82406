// Kernels of the exact 3-nearest-neighbour search: brute force for small clouds, and a uniform
// grid (counting sort of the points into cells + a ring search outward from each point's cell).
#include <cfloat>
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "knn_grid.h"

namespace simple_knn {
namespace {

constexpr int kThreadsPerBlock = 256;

// Safety margin, in cells, on the distance from a query to the unsearched region. Cell
// coordinates are computed in float32 as (p - lo) * inv_cell_size, with a relative error of a
// few 2^-24, i.e. at most ~2e-4 cells for a grid of 1024 cells per axis: a point can land one
// cell off when it is that close to a cell face. Stopping only once the gap minus this margin
// exceeds the 3rd best distance keeps the search exact.
constexpr float kGapMarginCells = 1e-3f;

int num_blocks(int n) { return (n + kThreadsPerBlock - 1) / kThreadsPerBlock; }

// Per-thread bodies are __host__ __device__ so that a host loop can emulate a kernel in checks.
#define SK_HD __host__ __device__ __forceinline__

SK_HD int imin(int a, int b) { return a < b ? a : b; }
SK_HD int imax(int a, int b) { return a > b ? a : b; }

// The k smallest squared distances seen so far, ascending (k <= 3; unused slots stay +inf).
struct Best3 {
  float d0 = INFINITY, d1 = INFINITY, d2 = INFINITY;

  SK_HD void insert(float d) {
    if (d >= d2) return;
    if (d < d1) {
      d2 = d1;
      if (d < d0) {
        d1 = d0;
        d0 = d;
      } else {
        d1 = d;
      }
    } else {
      d2 = d;
    }
  }

  SK_HD float kth(int k) const { return k >= 3 ? d2 : (k == 2 ? d1 : d0); }

  // Mean of the k smallest, summed in ascending order.
  SK_HD float mean(int k) const {
    if (k >= 3) return (d0 + d1 + d2) / 3.0f;
    if (k == 2) return (d0 + d1) / 2.0f;
    return d0;
  }
};

SK_HD float sq_dist(float ax, float ay, float az, float bx, float by,
                                         float bz) {
  // Coordinate differences (not |a|^2 + |b|^2 - 2ab): relative accuracy whatever the offset.
  const float dx = ax - bx, dy = ay - by, dz = az - bz;
  return dx * dx + dy * dy + dz * dz;
}

// Continuous cell coordinate of a point along one axis (the same formula for sorting and search).
SK_HD float cell_coord(float p, float lo, float inv_cell_size) {
  return (p - lo) * inv_cell_size;
}

SK_HD int cell_index(float t, int dim) {
  const int c = static_cast<int>(floorf(t));
  return imin(imax(c, 0), dim - 1);
}

// out[i] for one query i over all other points.
SK_HD void brute_force_knn3_point(const float* __restrict__ points, int n, int i,
                                  float* __restrict__ out) {
  const int k = imin(kNumNeighbours, n - 1);
  const float qx = points[3 * i], qy = points[3 * i + 1], qz = points[3 * i + 2];
  Best3 best;
  for (int j = 0; j < n; ++j) {
    if (j == i) continue;  // self excluded by index: a duplicate still counts at distance 0
    best.insert(sq_dist(qx, qy, qz, points[3 * j], points[3 * j + 1], points[3 * j + 2]));
  }
  out[i] = best.mean(k);
}

// Linear cell index of input point i.
SK_HD int cell_of(const float* __restrict__ points, int i, const GridSpec& grid) {
  int c[3];
  for (int a = 0; a < 3; ++a) {
    c[a] = cell_index(cell_coord(points[3 * i + a], grid.lo[a], grid.inv_cell_size), grid.dims[a]);
  }
  return (c[2] * grid.dims[1] + c[1]) * grid.dims[0] + c[0];
}

// Distances from the query (sorted index `self`) to the points of sorted range [begin, end).
SK_HD void scan_range(const float4* __restrict__ sorted_points, int begin, int end, int self,
                      float qx, float qy, float qz, Best3& best) {
  for (int j = begin; j < end; ++j) {
    if (j == self) continue;  // self excluded by index: a duplicate still counts at distance 0
    const float4 p = sorted_points[j];
    best.insert(sq_dist(qx, qy, qz, p.x, p.y, p.z));
  }
}

// Distance in cells from coordinate t to the slab of cell `cell` along one axis, less the margin
// (never negative). Border cells extend to infinity: clamped points may lie beyond them.
SK_HD float slab_gap(float t, int cell, int dim) {
  const float below = cell > 0 ? static_cast<float>(cell) - t : 0.0f;
  const float above = cell < dim - 1 ? t - static_cast<float>(cell + 1) : 0.0f;
  return fmaxf(fmaxf(below, above) - kGapMarginCells, 0.0f);
}

// The query at sorted index s. Ring r = the cells at Chebyshev distance exactly r from the
// query's cell. After ring r every point not yet seen lies in a cell outside the box of rings
// 0..r, hence at least `gap` away, where gap is the distance from the query to the nearest face
// of that box that is not on the grid border (points beyond the border are clamped into border
// cells, which are inside the box once reached). Stop when gap^2 >= the k-th best distance, or
// when the box covers the whole grid (then every point has been seen: always terminates).
// Within a ring, rows and cells whose nearest possible point is not closer than the current k-th
// best are skipped (they cannot change the result).
SK_HD void grid_knn3_point(const float4* __restrict__ sorted_points,
                           const int* __restrict__ sorted_cell,
                           const int* __restrict__ sorted_to_input,
                           const int* __restrict__ cell_start, int n, const GridSpec& grid, int s,
                           float* __restrict__ out) {
  const int k = imin(kNumNeighbours, n - 1);
  const float4 q = sorted_points[s];
  const int dx = grid.dims[0], dy = grid.dims[1], dz = grid.dims[2];
  const float h = grid.cell_size, h2 = grid.cell_size * grid.cell_size;
  const int cell = sorted_cell[s];
  const int c[3] = {cell % dx, (cell / dx) % dy, cell / (dx * dy)};
  const float t[3] = {cell_coord(q.x, grid.lo[0], grid.inv_cell_size),
                      cell_coord(q.y, grid.lo[1], grid.inv_cell_size),
                      cell_coord(q.z, grid.lo[2], grid.inv_cell_size)};
  Best3 best;
  for (int r = 0;; ++r) {
    const int x0 = imax(c[0] - r, 0), x1 = imin(c[0] + r, dx - 1);
    const int y0 = imax(c[1] - r, 0), y1 = imin(c[1] + r, dy - 1);
    const int z0 = imax(c[2] - r, 0), z1 = imin(c[2] + r, dz - 1);
    for (int z = z0; z <= z1; ++z) {
      const bool z_face = (z == c[2] - r) || (z == c[2] + r);
      const float gz = slab_gap(t[2], z, dz);
      for (int y = y0; y <= y1; ++y) {
        const float gy = slab_gap(t[1], y, dy);
        const float row_d2 = (gy * gy + gz * gz) * h2;  // lower bound for the whole row
        const float kth = best.kth(k);
        if (row_d2 >= kth) continue;
        // Cells of this row that can hold a point closer than the k-th best: [xa, xb].
        int xa = 0, xb = dx - 1;
        if (kth < INFINITY) {
          const float half = sqrtf(kth - row_d2) / h + kGapMarginCells;
          xa = static_cast<int>(fminf(fmaxf(floorf(t[0] - half), 0.0f), dx - 1.0f));
          xb = static_cast<int>(fminf(fmaxf(floorf(t[0] + half), 0.0f), dx - 1.0f));
        }
        const int row = (z * dy + y) * dx;
        if (z_face || y == c[1] - r || y == c[1] + r) {
          // A row on a face of the ring's cube: its cells [x0, x1], one contiguous sorted range.
          const int xs = imax(x0, xa), xe = imin(x1, xb);
          if (xs <= xe) {
            scan_range(sorted_points, cell_start[row + xs], cell_start[row + xe + 1], s, q.x, q.y,
                       q.z, best);
          }
        } else {
          // An inner row (r > 0 here): only its two end cells belong to the ring.
          const int xl = c[0] - r, xr = c[0] + r;
          if (xl >= 0 && xl >= xa && xl <= xb) {
            scan_range(sorted_points, cell_start[row + xl], cell_start[row + xl + 1], s, q.x, q.y,
                       q.z, best);
          }
          if (xr < dx && xr >= xa && xr <= xb) {
            scan_range(sorted_points, cell_start[row + xr], cell_start[row + xr + 1], s, q.x, q.y,
                       q.z, best);
          }
        }
      }
    }
    // Distance (in cells) from the query to the unsearched region.
    float gap = INFINITY;
    for (int a = 0; a < 3; ++a) {
      if (c[a] - r > 0) gap = fminf(gap, t[a] - static_cast<float>(c[a] - r));
      if (c[a] + r < grid.dims[a] - 1) gap = fminf(gap, static_cast<float>(c[a] + r + 1) - t[a]);
    }
    if (gap == INFINITY) break;  // the box covers the whole grid: every point has been seen
    const float gap_world = (gap - kGapMarginCells) * h;
    if (gap_world > 0.0f && gap_world * gap_world >= best.kth(k)) break;
  }
  out[sorted_to_input[s]] = best.mean(k);
}

__global__ void brute_force_knn3_kernel(const float* __restrict__ points, int n,
                                        float* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) brute_force_knn3_point(points, n, i, out);
}

__global__ void assign_cells_kernel(const float* __restrict__ points, int n, GridSpec grid,
                                    int* __restrict__ cell_of_point,
                                    int* __restrict__ slot_in_cell,
                                    int* __restrict__ cell_counts) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int cell = cell_of(points, i, grid);
  cell_of_point[i] = cell;
  slot_in_cell[i] = atomicAdd(&cell_counts[cell], 1);
}

__global__ void scatter_sorted_kernel(const float* __restrict__ points, int n,
                                      const int* __restrict__ cell_of_point,
                                      const int* __restrict__ slot_in_cell,
                                      const int* __restrict__ cell_start,
                                      float4* __restrict__ sorted_points,
                                      int* __restrict__ sorted_cell,
                                      int* __restrict__ sorted_to_input) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int cell = cell_of_point[i];
  const int dst = cell_start[cell] + slot_in_cell[i];
  sorted_points[dst] = make_float4(points[3 * i], points[3 * i + 1], points[3 * i + 2], 0.0f);
  sorted_cell[dst] = cell;
  sorted_to_input[dst] = i;
}

// One thread per point, in sorted order, so that neighbouring threads read the same cells.
__global__ void grid_knn3_kernel(const float4* __restrict__ sorted_points,
                                 const int* __restrict__ sorted_cell,
                                 const int* __restrict__ sorted_to_input,
                                 const int* __restrict__ cell_start, int n, GridSpec grid,
                                 float* __restrict__ out) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s < n) {
    grid_knn3_point(sorted_points, sorted_cell, sorted_to_input, cell_start, n, grid, s, out);
  }
}

}  // namespace

cudaError_t launch_brute_force_knn3(const float* points, int n, float* out, cudaStream_t stream) {
  brute_force_knn3_kernel<<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(points, n, out);
  return cudaGetLastError();
}

cudaError_t launch_assign_cells(const float* points, int n, GridSpec grid, int* cell_of_point,
                                int* slot_in_cell, int* cell_counts, cudaStream_t stream) {
  assign_cells_kernel<<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(
      points, n, grid, cell_of_point, slot_in_cell, cell_counts);
  return cudaGetLastError();
}

cudaError_t launch_scatter_sorted(const float* points, int n, const int* cell_of_point,
                                  const int* slot_in_cell, const int* cell_start,
                                  float* sorted_points, int* sorted_cell, int* sorted_to_input,
                                  cudaStream_t stream) {
  scatter_sorted_kernel<<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(
      points, n, cell_of_point, slot_in_cell, cell_start,
      reinterpret_cast<float4*>(sorted_points), sorted_cell, sorted_to_input);
  return cudaGetLastError();
}

cudaError_t launch_grid_knn3(const float* sorted_points, const int* sorted_cell,
                             const int* sorted_to_input, const int* cell_start, int n,
                             GridSpec grid, float* out, cudaStream_t stream) {
  grid_knn3_kernel<<<num_blocks(n), kThreadsPerBlock, 0, stream>>>(
      reinterpret_cast<const float4*>(sorted_points), sorted_cell, sorted_to_input, cell_start, n,
      grid, out);
  return cudaGetLastError();
}

}  // namespace simple_knn
