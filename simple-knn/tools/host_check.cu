// Host emulation of the kernels' per-thread bodies (no GPU needed, only nvcc):
//   nvcc -std=c++17 -O2 -o /tmp/host_check tools/host_check.cu && /tmp/host_check
// Runs the grid search as a host loop over "threads" and compares it with a float64 brute force
// on uniform, clustered, duplicate, planar, linear, lattice, offset and tiny clouds.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../csrc/grid_plan.h"
#include "../csrc/knn_grid.cu"

using namespace simple_knn;

std::vector<double> reference(const std::vector<float>& p) {
  const int n = static_cast<int>(p.size() / 3);
  const int k = std::min(3, n - 1);
  std::vector<double> out(n, 0.0);
  for (int i = 0; i < n && k > 0; ++i) {
    double b[3] = {INFINITY, INFINITY, INFINITY};
    for (int j = 0; j < n; ++j) {
      if (j == i) continue;
      double d = 0;
      for (int a = 0; a < 3; ++a) d += (double(p[3 * i + a]) - p[3 * j + a]) * (double(p[3 * i + a]) - p[3 * j + a]);
      if (d < b[2]) { b[2] = d; if (b[2] < b[1]) std::swap(b[1], b[2]); if (b[1] < b[0]) std::swap(b[0], b[1]); }
    }
    double s = 0;
    for (int m = 0; m < k; ++m) s += b[m];
    out[i] = s / k;
  }
  return out;
}

std::vector<float> grid_emulated(const std::vector<float>& p) {
  const int n = static_cast<int>(p.size() / 3);
  std::vector<float> out(n, 0.0f);
  if (n <= 1) return out;
  double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int i = 0; i < n; ++i)
    for (int a = 0; a < 3; ++a) { lo[a] = std::min<double>(lo[a], p[3 * i + a]); hi[a] = std::max<double>(hi[a], p[3 * i + a]); }
  const GridSpec g = plan_grid(lo, hi, n);
  const long cells = long(g.dims[0]) * g.dims[1] * g.dims[2];
  std::vector<int> counts(cells, 0), cell_of_point(n), slot(n), start(cells + 1, 0);
  for (int i = 0; i < n; ++i) { cell_of_point[i] = cell_of(p.data(), i, g); slot[i] = counts[cell_of_point[i]]++; }
  for (long c = 0; c < cells; ++c) start[c + 1] = start[c] + counts[c];
  std::vector<float4> sp(n); std::vector<int> sc(n), s2i(n);
  for (int i = 0; i < n; ++i) {
    const int d = start[cell_of_point[i]] + slot[i];
    sp[d] = make_float4(p[3 * i], p[3 * i + 1], p[3 * i + 2], 0.f); sc[d] = cell_of_point[i]; s2i[d] = i;
  }
  for (int s = 0; s < n; ++s) grid_knn3_point(sp.data(), sc.data(), s2i.data(), start.data(), n, g, s, out.data());
  return out;
}

int check(const char* name, const std::vector<float>& p) {
  const int n = static_cast<int>(p.size() / 3);
  const auto ref = reference(p);
  const auto got = grid_emulated(p);
  std::vector<float> brute(n, 0.0f);
  if (n >= 2) for (int i = 0; i < n; ++i) brute_force_knn3_point(p.data(), n, i, brute.data());
  double worst = 0, worst_b = 0;
  for (int i = 0; i < n; ++i) {
    const double den = std::max(ref[i], 1e-30);
    worst = std::max(worst, std::fabs(got[i] - ref[i]) / (ref[i] == 0 ? 1 : den) + (ref[i] == 0 && got[i] != 0 ? 1 : 0));
    worst_b = std::max(worst_b, std::fabs(brute[i] - ref[i]) / (ref[i] == 0 ? 1 : den) + (ref[i] == 0 && brute[i] != 0 ? 1 : 0));
  }
  const bool ok = worst <= 1e-5 && worst_b <= 1e-5;
  std::printf("%-28s n=%6d grid max rel err %.2e brute %.2e %s\n", name, n, worst, worst_b, ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}

int main() {
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::normal_distribution<float> g(0.f, 1.f);
  int fails = 0;
  auto uniform = [&](int n, float scale, float offset) { std::vector<float> p(3 * n); for (auto& v : p) v = offset + scale * u(rng); return p; };
  fails += check("uniform", uniform(20000, 1.f, 0.f));
  fails += check("uniform offset 1000", uniform(8000, 1.f, 1000.f));
  { std::vector<float> p; for (int b = 0; b < 4; ++b) { float c[3] = {u(rng), u(rng), u(rng)}; for (int i = 0; i < 3000; ++i) for (int a = 0; a < 3; ++a) p.push_back(c[a] + 0.01f * g(rng)); }
    for (int i = 0; i < 30; ++i) for (int a = 0; a < 3; ++a) p.push_back(5.f * u(rng));
    fails += check("clustered + outliers", p); }
  { auto p = uniform(5000, 1.f, 0.f); std::vector<float> q = p; q.insert(q.end(), p.begin(), p.begin() + 3 * 2000);
    q.insert(q.end(), p.begin(), p.begin() + 3 * 10); fails += check("duplicates", q); }
  { auto p = uniform(10000, 1.f, 0.f); for (int i = 0; i < 10000; ++i) p[3 * i + 2] = 0.25f; fails += check("planar z=0.25", p); }
  { auto p = uniform(5000, 1.f, 0.f); for (int i = 0; i < 5000; ++i) { p[3 * i + 1] = 0.f; p[3 * i + 2] = 0.f; } fails += check("line", p); }
  { std::vector<float> p; for (int x = 0; x < 20; ++x) for (int y = 0; y < 20; ++y) for (int z = 0; z < 20; ++z) { p.push_back(x * 0.1f); p.push_back(y * 0.1f); p.push_back(z * 0.1f); }
    fails += check("lattice 20^3", p); }
  { std::vector<float> p(3 * 3000, 0.5f); fails += check("identical points", p); }
  { auto p = uniform(3000, 1.f, 0.f); p[0] = 1e4f; p[1] = -1e4f; fails += check("one far outlier", p); }
  { auto p = uniform(4000, 1e-20f, 1.f); fails += check("tiny extent around 1", p); }
  for (int seed = 1; seed <= 3; ++seed) {  // blobs of different tightness, many outliers
    std::vector<float> p;
    for (int b = 0; b < 6; ++b) { float c[3] = {u(rng), u(rng), u(rng)}; const float sigma = 0.002f * seed * (b + 1);
      for (int i = 0; i < 800; ++i) for (int a = 0; a < 3; ++a) p.push_back(c[a] + sigma * g(rng)); }
    for (int i = 0; i < 300 * seed; ++i) for (int a = 0; a < 3; ++a) p.push_back(3.f * seed * u(rng));
    char name[40]; std::snprintf(name, sizeof(name), "multi-scale blobs seed %d", seed); fails += check(name, p); }
  for (int n = 1; n <= 12; ++n) { char name[32]; std::snprintf(name, sizeof(name), "small n=%d", n); fails += check(name, uniform(n, 1.f, 0.f)); }
  std::printf("%s: %d failed\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
