"""CPU tests of knn.mean_sq_dist_knn3 (the chunked PyTorch path) against a float64 brute force."""
import pytest
import torch

from stag4d.errors import UserError
from stag4d.gaussians import knn


def brute_force_knn3(points: torch.Tensor) -> torch.Tensor:
    """float64 reference: full N x N matrix, self excluded by index. [N,3] -> [N] float64."""
    p = points.double()
    num = p.shape[0]
    k = min(3, num - 1)
    if k <= 0:
        return torch.zeros(num, dtype=torch.float64)
    dist = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=False).values.mean(dim=1)


def clustered_cloud(num_blobs=4, per_blob=150, sigma=0.01, outliers=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_blobs, 3, generator=gen) * 2 - 1
    blobs = centers[:, None, :] + sigma * torch.randn(num_blobs, per_blob, 3, generator=gen)
    far = (torch.rand(outliers, 3, generator=gen) * 2 - 1) * 5
    return torch.cat([blobs.reshape(-1, 3), far]).float()


def assert_close_to_reference(result, points):
    expected = brute_force_knn3(points)
    assert result.shape == expected.shape
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-12)


def test_random_cloud_matches_brute_force():
    points = torch.rand(700, 3) * 2 - 1
    assert_close_to_reference(knn.mean_sq_dist_knn3(points), points)


def test_clustered_cloud_matches_brute_force():
    points = clustered_cloud()
    result = knn.mean_sq_dist_knn3(points)
    assert_close_to_reference(result, points)
    # blob points have tiny distances, outliers large ones: the test data does exercise both
    assert result[:600].max() < 1e-2 < result[600:].min()


def test_duplicates_count_as_neighbours_at_distance_zero():
    base = torch.rand(200, 3)
    points = torch.cat([base, base[:50], base[:10]])  # 10 points appear three times
    result = knn.mean_sq_dist_knn3(points)
    assert_close_to_reference(result, points)
    # a point with two copies: two neighbours at 0, so the mean is a third of the 3rd distance
    tripled = [0, 200, 250]
    for i in tripled:
        others = (points - points[i]).pow(2).sum(-1)
        others[tripled] = float("inf")
        torch.testing.assert_close(result[i], others.min() / 3)
    # four copies of one point: all three nearest are duplicates
    quad = torch.cat([torch.zeros(4, 3), torch.rand(20, 3) + 1])
    assert torch.all(knn.mean_sq_dist_knn3(quad)[:4] == 0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunking_gives_identical_results(chunk_size):
    points = torch.cat([torch.rand(300, 3), clustered_cloud(per_blob=50)])
    whole = knn.mean_sq_dist_knn3(points, chunk_size=points.shape[0])
    assert torch.equal(knn.mean_sq_dist_knn3(points, chunk_size=chunk_size), whole)


def test_memory_budget_sets_chunk_rows():
    # 1M points, float32, 3 temporaries: 12 MB per query row
    assert knn.chunk_rows(1_000_000, 4, 256 * 2**20) == 22
    assert knn.chunk_rows(1_000_000, 4, 1) == 1  # at least one row
    assert knn.chunk_rows(10, 4, 2**30) == 10  # never more rows than points
    points = torch.rand(257, 3)
    small_budget = knn.mean_sq_dist_knn3(points, budget_bytes=257 * 4 * 3 * 5)  # 5 rows a chunk
    assert torch.equal(small_budget, knn.mean_sq_dist_knn3(points))


def test_edge_cases_small_n():
    """N=0: empty; N=1: 0 (no other point); N=2,3: the mean over the N-1 others; N=4: 3 others."""
    assert knn.mean_sq_dist_knn3(torch.zeros(0, 3)).shape == (0,)
    assert torch.equal(knn.mean_sq_dist_knn3(torch.tensor([[1.0, 2.0, 3.0]])), torch.zeros(1))
    two = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    assert torch.equal(knn.mean_sq_dist_knn3(two), torch.tensor([25.0, 25.0]))
    three = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.equal(knn.mean_sq_dist_knn3(three), torch.tensor([2.5, 3.0, 4.5]))
    four = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(knn.mean_sq_dist_knn3(four),
                               torch.tensor([14 / 3, 16 / 3, 22 / 3, 32 / 3]))
    for num in range(1, 5):
        points = torch.rand(num, 3)
        assert_close_to_reference(knn.mean_sq_dist_knn3(points), points)


def test_dtype_device_and_grad_are_handled():
    points = torch.rand(50, 3, dtype=torch.float64, requires_grad=True)
    result = knn.mean_sq_dist_knn3(points)
    assert result.dtype == torch.float64 and not result.requires_grad
    torch.testing.assert_close(result, brute_force_knn3(points.detach()), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad, fix", [
    (torch.zeros(5, 2), "shape"),
    (torch.zeros(5, 3, dtype=torch.int64), "floating point"),
    (torch.zeros(3), "shape"),
])
def test_bad_input_raises_one_line_user_error(bad, fix):
    with pytest.raises(UserError, match=fix) as info:
        knn.mean_sq_dist_knn3(bad)
    assert "\n" not in str(info.value)


def test_cuda_backend_on_cpu_points_is_a_user_error():
    with pytest.raises(UserError, match="CUDA"):
        knn.mean_sq_dist_knn3(torch.rand(10, 3), backend="cuda")
    with pytest.raises(UserError, match="backend"):
        knn.mean_sq_dist_knn3(torch.rand(10, 3), backend="faiss")
