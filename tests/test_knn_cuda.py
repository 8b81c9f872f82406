"""GPU tests of the simple_knn CUDA extension against an exact float64 answer.

The reference is knn's chunked torch path run in float64 on the GPU, on the same float32 points.
"""
import pytest
import torch

from stag4d.gaussians import knn

pytestmark = pytest.mark.cuda
RTOL = 1e-5


@pytest.fixture(scope="module")
def ext():
    module = knn.load_extension()
    if module is None:
        pytest.skip("simple_knn._C is not built (pip install --no-build-isolation ./simple-knn)")
    return module


def reference(points: torch.Tensor) -> torch.Tensor:
    """Exact answer: float64 chunked brute force on the GPU. [N,3] -> [N] float64."""
    return knn.mean_sq_dist_knn3_torch(points.double())


def assert_exact(result: torch.Tensor, points: torch.Tensor) -> None:
    assert result.dtype == torch.float32 and result.shape == (points.shape[0],)
    assert result.device == points.device
    torch.testing.assert_close(result.double(), reference(points), rtol=RTOL, atol=1e-12)


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def uniform_cloud(n: int, seed: int = 0, scale: float = 1.0, offset: float = 0.0):
    return offset + scale * (torch.rand(n, 3, device="cuda", generator=gen(seed)) * 2 - 1)


def clustered_cloud(blobs: int, per_blob: int, sigma: float, outliers: int, seed: int = 0):
    """Tight Gaussian blobs inside [-1,1]^3 plus outliers spread over [-5,5]^3."""
    g = gen(seed)
    centers = torch.rand(blobs, 1, 3, device="cuda", generator=g) * 2 - 1
    pts = centers + sigma * torch.randn(blobs, per_blob, 3, device="cuda", generator=g)
    far = (torch.rand(outliers, 3, device="cuda", generator=g) * 2 - 1) * 5
    return torch.cat([pts.reshape(-1, 3), far])


@pytest.mark.parametrize("n", [1000, 100_000])
def test_random_cloud_is_exact(ext, n):
    points = uniform_cloud(n)
    assert_exact(ext.distCUDA2(points), points)
    assert_exact(ext.knn3_mean_sq_dist(points, "grid"), points)


def test_clustered_cloud_is_exact(ext):
    points = clustered_cloud(blobs=5, per_blob=20_000, sigma=0.01, outliers=200)
    result = ext.distCUDA2(points)
    assert_exact(result, points)
    # the cloud does have both scales: blob points are close, outliers far apart
    assert result[:100_000].median() < 1e-4 < result[100_000:].min()


def test_duplicates_count_at_distance_zero(ext):
    base = uniform_cloud(50_000, seed=1)
    points = torch.cat([base, base[:20_000], base[:5].repeat(4, 1)])
    points = points[torch.randperm(points.shape[0], device="cuda", generator=gen(2))]
    result = ext.distCUDA2(points)
    assert_exact(result, points)
    # base[:5] occur 6 times each (base, base[:20000], 4 repeats): 3 nearest all at distance 0
    copies = (points[:, None, :] == base[:5][None]).all(-1).any(-1)
    assert copies.sum() == 30 and torch.all(result[copies] == 0)


@pytest.mark.parametrize("name", ["planar", "line", "lattice", "offset", "identical", "outlier"])
def test_degenerate_clouds_are_exact(ext, name):
    points = uniform_cloud(20_000, seed=3)
    if name == "planar":
        points[:, 2] = 0.25
    elif name == "line":
        points[:, 1:] = 0.0
    elif name == "lattice":  # many exact ties, points on cell faces
        axis = torch.arange(30, device="cuda", dtype=torch.float32) * 0.1
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    elif name == "offset":  # far from the origin: differences must not cancel
        points = uniform_cloud(20_000, seed=4, offset=1000.0)
    elif name == "identical":
        points = torch.full((5000, 3), 0.5, device="cuda")
    elif name == "outlier":
        points[0] = torch.tensor([1e4, -1e4, 3e3], device="cuda")
    assert_exact(ext.knn3_mean_sq_dist(points, "grid"), points)
    assert_exact(ext.distCUDA2(points), points)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 50, 2047, 2048, 5000])
@pytest.mark.parametrize("method", ["brute", "grid", "auto"])
def test_small_and_threshold_sizes(ext, n, method):
    """N=0: empty; N=1: 0; N=2,3: mean over the N-1 others; from N=4: the 3 nearest."""
    points = uniform_cloud(n, seed=n)
    result = ext.knn3_mean_sq_dist(points, method)
    assert_exact(result, points)
    if n == 1:
        assert torch.equal(result, torch.zeros(1, device="cuda"))


def test_mean_sq_dist_knn3_uses_extension_and_torch_path_agrees(ext):
    points = uniform_cloud(30_000, seed=5)
    via_knn = knn.mean_sq_dist_knn3(points)
    assert torch.equal(via_knn, ext.distCUDA2(points))
    torch_path = knn.mean_sq_dist_knn3(points, backend="torch")
    assert torch_path.is_cuda
    torch.testing.assert_close(torch_path.double(), reference(points), rtol=RTOL, atol=1e-12)
    # float64 CUDA input stays float64 (torch path), half precision goes through the extension
    assert knn.mean_sq_dist_knn3(points.double()).dtype == torch.float64
    assert knn.mean_sq_dist_knn3(points.half()).dtype == torch.float16


def test_deterministic_and_non_contiguous_input(ext):
    points = clustered_cloud(blobs=3, per_blob=10_000, sigma=0.02, outliers=50, seed=6)
    first = ext.distCUDA2(points)
    assert torch.equal(first, ext.distCUDA2(points))  # atomics order does not leak into values
    strided = torch.empty(points.shape[0], 5, device="cuda")
    strided[:, 1:4] = points
    assert torch.equal(ext.distCUDA2(strided[:, 1:4]), first)


def test_grid_plan(ext):
    dims, cell = ext.plan_grid([0, 0, 0], [1, 1, 1], 100_000)
    assert 25_000 <= dims[0] * dims[1] * dims[2] <= 200_000 and cell > 0
    dims, _ = ext.plan_grid([0, 0, 0.25], [1, 1, 0.25], 100_000)  # planar: one cell thick
    assert dims[2] == 1 and dims[0] > 100
    dims, _ = ext.plan_grid([-1e4, -1, -1], [1e4, 1, 1], 10_000_000)  # resolution is capped
    assert max(dims) <= 1024
    assert ext.plan_grid([1, 1, 1], [1, 1, 1], 10)[0] == [1, 1, 1]


@pytest.mark.parametrize("bad, message", [
    (lambda: torch.zeros(10, 3, dtype=torch.float64, device="cuda"), "float32"),
    (lambda: torch.zeros(10, 3), "CUDA"),
    (lambda: torch.zeros(10, 2, device="cuda"), r"\[N,3\]"),
    (lambda: torch.zeros(30, device="cuda"), r"\[N,3\]"),
    (lambda: torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]], device="cuda"), "NaN"),
])
def test_bad_input_has_clear_error(ext, bad, message):
    with pytest.raises(ValueError, match=message):
        ext.distCUDA2(bad())
    with pytest.raises(ValueError, match="method"):
        ext.knn3_mean_sq_dist(torch.zeros(10, 3, device="cuda"), "kdtree")
