// simple_knn._C: mean squared distance to the 3 nearest other points of a CUDA point cloud.
//
// Host side: input checks, grid planning, buffers (torch), the prefix sum (torch cumsum) and the
// kernel launches (knn_grid.cu).
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "grid_plan.h"
#include "knn_grid.h"

namespace simple_knn {
namespace {

// Below this many points, all pairs (n^2 / 2 distance evaluations) beat building a grid.
constexpr int64_t kBruteForceBelow = 2048;

// "[10, 2]", built by hand: an error message streaming IntArrayRef segfaulted on the torch 2.11
// device, plain strings do not.
std::string shape_string(const torch::Tensor& tensor) {
  std::string text = "[";
  for (int64_t d = 0; d < tensor.dim(); ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(tensor.size(d));
  }
  return text + "]";
}

void check_points(const torch::Tensor& points) {
  TORCH_CHECK_VALUE(points.is_cuda(), "simple_knn: points must be on a CUDA device, got ",
                    points.device(), "; move them with .cuda()");
  TORCH_CHECK_VALUE(points.scalar_type() == at::kFloat, "simple_knn: points must be float32, got ",
                    points.scalar_type(), "; convert with .float()");
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 3,
                    "simple_knn: points must have shape [N,3], got ", shape_string(points),
                    "; reshape with .reshape(-1, 3)");
  TORCH_CHECK_VALUE(points.size(0) < INT_MAX, "simple_knn: at most ", INT_MAX - 1,
                    " points are supported, got ", points.size(0));
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "simple_knn: launching ", what, " failed: ",
              cudaGetErrorString(err));
}

torch::Tensor grid_knn3(const torch::Tensor& points, const double lo[3], const double hi[3],
                        cudaStream_t stream) {
  const int n = static_cast<int>(points.size(0));
  const GridSpec grid = plan_grid(lo, hi, n);
  const int64_t num_cells =
      static_cast<int64_t>(grid.dims[0]) * grid.dims[1] * static_cast<int64_t>(grid.dims[2]);
  TORCH_CHECK(num_cells < INT_MAX, "simple_knn: grid of ", num_cells, " cells is too large");
  const auto int_opts = points.options().dtype(at::kInt);

  auto cell_counts = torch::zeros({num_cells}, int_opts);
  auto cell_of_point = torch::empty({n}, int_opts);
  auto slot_in_cell = torch::empty({n}, int_opts);
  check_launch(launch_assign_cells(points.data_ptr<float>(), n, grid,
                                   cell_of_point.data_ptr<int>(), slot_in_cell.data_ptr<int>(),
                                   cell_counts.data_ptr<int>(), stream),
               "assign_cells");

  // cell_start[c] = number of points in cells < c; cell_start[num_cells] = n.
  auto cell_start = torch::zeros({num_cells + 1}, int_opts);
  cell_start.narrow(0, 1, num_cells).copy_(at::cumsum(cell_counts, 0, at::kInt));

  auto sorted_points = torch::empty({n, 4}, points.options());
  auto sorted_cell = torch::empty({n}, int_opts);
  auto sorted_to_input = torch::empty({n}, int_opts);
  check_launch(launch_scatter_sorted(points.data_ptr<float>(), n, cell_of_point.data_ptr<int>(),
                                     slot_in_cell.data_ptr<int>(), cell_start.data_ptr<int>(),
                                     sorted_points.data_ptr<float>(), sorted_cell.data_ptr<int>(),
                                     sorted_to_input.data_ptr<int>(), stream),
               "scatter_sorted");

  auto out = torch::empty({n}, points.options());
  check_launch(launch_grid_knn3(sorted_points.data_ptr<float>(), sorted_cell.data_ptr<int>(),
                                sorted_to_input.data_ptr<int>(), cell_start.data_ptr<int>(), n,
                                grid, out.data_ptr<float>(), stream),
               "grid_knn3");
  return out;
}

}  // namespace

// points [N,3] float32 CUDA -> [N] float32: mean of the squared distances to the
// k = min(3, N - 1) nearest other points (self excluded by index: duplicates count at 0;
// N = 1 gives 0). method: "auto" (brute force below 2048 points, else the grid), "brute", "grid".
torch::Tensor knn3_mean_sq_dist(const torch::Tensor& points_in, const std::string& method) {
  check_points(points_in);
  TORCH_CHECK_VALUE(method == "auto" || method == "brute" || method == "grid",
                    "simple_knn: method must be 'auto', 'brute' or 'grid', got '", method, "'");
  const c10::cuda::CUDAGuard device_guard(points_in.device());
  const torch::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0);
  if (n <= 1) return torch::zeros({n}, points.options());  // no other point: 0 by definition

  // One device -> host copy: the bounding box (also catches NaN / Inf, which propagate).
  const auto bounds = torch::stack({points.amin(0), points.amax(0)}).to(at::kDouble).cpu();
  const auto box = bounds.accessor<double, 2>();
  double lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    lo[a] = box[0][a];
    hi[a] = box[1][a];
    TORCH_CHECK_VALUE(std::isfinite(lo[a]) && std::isfinite(hi[a]),
                      "simple_knn: points contain NaN or Inf; remove or clamp them first");
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool brute = method == "brute" || (method == "auto" && n < kBruteForceBelow);
  if (!brute) return grid_knn3(points, lo, hi, stream);
  auto out = torch::empty({n}, points.options());
  check_launch(launch_brute_force_knn3(points.data_ptr<float>(), static_cast<int>(n),
                                       out.data_ptr<float>(), stream),
               "brute_force_knn3");
  return out;
}

torch::Tensor dist_cuda2(const torch::Tensor& points) { return knn3_mean_sq_dist(points, "auto"); }

// The grid that the "grid" method would build for n points in the box [lo, hi] (for tests and
// benchmarks): (dims [x, y, z], cell_size).
std::tuple<std::vector<int64_t>, double> plan_grid_for(const std::vector<double>& lo,
                                                       const std::vector<double>& hi, int64_t n) {
  TORCH_CHECK_VALUE(lo.size() == 3 && hi.size() == 3, "simple_knn: lo and hi need 3 values");
  const GridSpec grid = plan_grid(lo.data(), hi.data(), n);
  return {{grid.dims[0], grid.dims[1], grid.dims[2]}, grid.cell_size};
}

}  // namespace simple_knn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Exact mean squared distance to the 3 nearest neighbours (uniform-grid CUDA kernel)";
  m.def("distCUDA2", &simple_knn::dist_cuda2, py::arg("points"),
        "points [N,3] float32 CUDA -> [N] float32 mean squared distance to the 3 nearest other "
        "points");
  m.def("knn3_mean_sq_dist", &simple_knn::knn3_mean_sq_dist, py::arg("points"),
        py::arg("method") = "auto",
        "distCUDA2 with a choice of method: 'auto', 'brute' (all pairs) or 'grid'");
  m.def("plan_grid", &simple_knn::plan_grid_for, py::arg("lo"), py::arg("hi"), py::arg("n"),
        "(dims [x, y, z], cell_size) of the grid built for n points in the box [lo, hi]");
}
