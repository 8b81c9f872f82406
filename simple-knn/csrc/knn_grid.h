// Exact 3-nearest-neighbour mean squared distance on the GPU: kernels and their launchers.
//
// This header is plain C++ (no torch, no CUDA types) so that the host part (ext.cpp) compiles
// with any C++ compiler; the kernels live in knn_grid.cu.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace simple_knn {

constexpr int kNumNeighbours = 3;

// A uniform grid over the bounding box. Point p lies in cell
//   c_a = clamp(floor((p_a - lo_a) * inv_cell_size), 0, dims_a - 1)   (a = x, y, z),
// linear index (c_z * dims_y + c_y) * dims_x + c_x, so the cells of one x-row are contiguous.
struct GridSpec {
  float lo[3];
  float cell_size;
  float inv_cell_size;
  int dims[3];
};

// Every launcher enqueues on `stream` and returns cudaGetLastError().

// out[i] = mean of the k = min(3, n - 1) smallest |p_i - p_j|^2, j != i; all pairs (small n).
// points: [n,3] float32. n >= 2.
cudaError_t launch_brute_force_knn3(const float* points, int n, float* out, cudaStream_t stream);

// Counting sort, pass 1: cell_of_point[i], slot_in_cell[i] (arrival order, atomics), and
// cell_counts[c] += 1. cell_counts must be zeroed.
cudaError_t launch_assign_cells(const float* points, int n, GridSpec grid, int* cell_of_point,
                                int* slot_in_cell, int* cell_counts, cudaStream_t stream);

// Counting sort, pass 2: scatter to sorted order. cell_start: [num_cells + 1] exclusive prefix
// sum of the counts. sorted_points: [n,4] float32 (x, y, z, 0); sorted_cell, sorted_to_input: [n].
cudaError_t launch_scatter_sorted(const float* points, int n, const int* cell_of_point,
                                  const int* slot_in_cell, const int* cell_start,
                                  float* sorted_points, int* sorted_cell, int* sorted_to_input,
                                  cudaStream_t stream);

// Ring search over the grid, one thread per sorted point; writes out[sorted_to_input[s]].
// n >= 2.
cudaError_t launch_grid_knn3(const float* sorted_points, const int* sorted_cell,
                             const int* sorted_to_input, const int* cell_start, int n,
                             GridSpec grid, float* out, cudaStream_t stream);

}  // namespace simple_knn
