// Grid planning for the ring search (plain C++: shared by the extension and host checks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "knn_grid.h"

namespace simple_knn {

// Target average occupancy of the grid cells: ~2 points, so that ring 1 (27 cells, ~54 points)
// usually holds the 3 nearest neighbours and ends the search.
inline constexpr double kPointsPerCell = 2.0;
// Cap on the resolution per axis (and so on the grid size, 2^30 cells): a few far outliers
// stretch the bounding box; the cap keeps the grid small, and the ring search stays exact.
inline constexpr int kMaxCellsPerAxis = 1024;
// Extents below this are treated as zero (all points in one cell along that axis), which also
// keeps 1 / cell_size finite in float32.
inline constexpr double kMinExtent = 1e-30;

// Cell size and dims for n points in the box [lo, hi]: about n / kPointsPerCell cells over the
// axes that have an extent; an axis thinner than one cell (e.g. a planar cloud) gets one cell.
inline GridSpec plan_grid(const double lo[3], const double hi[3], int64_t n) {
  double extent[3];
  double max_extent = 0.0;
  for (int a = 0; a < 3; ++a) {
    extent[a] = std::max(0.0, hi[a] - lo[a]);
    max_extent = std::max(max_extent, extent[a]);
  }
  double cell_size = 1.0;
  if (max_extent > kMinExtent) {
    const double target_cells = std::max(1.0, static_cast<double>(n) / kPointsPerCell);
    bool active[3];
    for (int a = 0; a < 3; ++a) active[a] = extent[a] > kMinExtent;
    // Solve prod_active(extent / cell_size) = target_cells; drop axes thinner than a cell and
    // solve again (at most 3 rounds; the longest axis always stays active).
    for (int round = 0; round < 3; ++round) {
      double volume = 1.0;
      int num_active = 0;
      for (int a = 0; a < 3; ++a) {
        if (active[a]) {
          volume *= extent[a];
          ++num_active;
        }
      }
      cell_size = std::pow(volume / target_cells, 1.0 / num_active);
      bool dropped = false;
      for (int a = 0; a < 3; ++a) {
        if (active[a] && extent[a] < cell_size && extent[a] < max_extent) {
          active[a] = false;
          dropped = true;
        }
      }
      if (!dropped) break;
    }
    cell_size = std::max(cell_size, max_extent / (kMaxCellsPerAxis - 1));
  }
  GridSpec grid;
  grid.cell_size = static_cast<float>(cell_size);
  grid.inv_cell_size = 1.0f / grid.cell_size;
  for (int a = 0; a < 3; ++a) {
    grid.lo[a] = static_cast<float>(lo[a]);
    const double cells = std::floor(extent[a] / static_cast<double>(grid.cell_size)) + 1.0;
    grid.dims[a] = static_cast<int>(std::min<double>(kMaxCellsPerAxis, std::max(1.0, cells)));
  }
  return grid;
}

}  // namespace simple_knn
