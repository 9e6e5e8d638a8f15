"""mert_fast.ops.kmeans: cluster recovery, scikit-learn's Lloyd as the peer, empty clusters, determinism, streaming."""

from __future__ import annotations

import pytest
import torch

from mert_fast.ops import kmeans, nearest_code

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_cluster = pytest.importorskip("sklearn.cluster")


def _blobs(n: int, k: int, d: int, *, spread: float = 10.0, noise: float = 0.3, dtype=torch.float32):
    """``n`` rows around ``k`` random centres at least ``spread`` apart (resampled until they are); labels."""
    while True:
        centres = spread * torch.randn(k, d, dtype=torch.float64)
        if float(torch.pdist(centres).min()) >= spread:
            break
    labels = torch.randint(k, (n,))
    x = centres[labels] + noise * torch.randn(n, d, dtype=torch.float64)
    return x.to(dtype), labels


def _inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum of squared distances to the nearest centroid, in float64 (brute force)."""
    x, c = x.double(), torch.as_tensor(centroids).double()
    return float(torch.cdist(x, c).square().min(1).values.sum())


def _ari(labels: torch.Tensor, predicted: torch.Tensor) -> float:
    return float(sklearn_metrics.adjusted_rand_score(labels.numpy(), predicted.numpy()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("n", "k", "d"), [(2048, 16, 8), (1001, 7, 37)])
def test_recovers_separated_clusters(n, k, d, dtype):
    x, labels = _blobs(n, k, d, dtype=dtype)
    centroids = kmeans(x, k, seed=3)
    assert centroids.shape == (k, d) and centroids.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    predicted, _ = nearest_code(x, centroids)
    assert _ari(labels, predicted) >= 0.99


@pytest.mark.parametrize(("n", "k", "d"), [(3000, 32, 8), (777, 13, 5)])
def test_inertia_matches_scikit_learn_lloyd(n, k, d):
    """Overlapping data (a hard case), the same initial centroids and number of iterations as scikit-learn."""
    x = torch.randn(n, d, dtype=torch.float64)
    x[: n // 2, 0] += 1.5
    init = x[torch.randperm(n)[:k]].clone()
    iters = 15
    ours = kmeans(x.float(), k, init=init.float(), iters=iters, tol=0)
    theirs = sklearn_cluster.KMeans(
        n_clusters=k, init=init.numpy(), n_init=1, max_iter=iters, algorithm="lloyd", tol=0
    ).fit(x.numpy())
    ours_inertia, their_inertia = _inertia(x, ours), _inertia(x, theirs.cluster_centers_)
    start = _inertia(x, init)
    assert ours_inertia < 0.9 * start  # it did move
    assert ours_inertia <= 1.01 * their_inertia
    # float64 data: the same iterations give the same centroids up to rounding
    ours64 = kmeans(x, k, init=init, iters=iters, tol=0)
    torch.testing.assert_close(ours64, torch.from_numpy(theirs.cluster_centers_), rtol=1e-9, atol=1e-9)


def test_empty_clusters_are_reseeded_from_the_farthest_rows():
    """Three tight blobs and four initial centroids, one far from every row (it wins nothing in the first
    assignment): it is moved onto the farthest row, every cluster ends non-empty and the blobs are split, not lost."""
    x, labels = _blobs(600, 3, 4, spread=20.0, noise=0.5, dtype=torch.float64)
    centres = torch.stack([x[labels == j].mean(0) for j in range(3)])
    init = torch.cat([centres, torch.full((1, 4), 1e3, dtype=torch.float64)])
    centroids = kmeans(x, 4, init=init, iters=1)
    assert float(centroids[3].abs().max()) < 100  # the far centroid moved onto the data
    farthest = int(torch.cdist(x, centres).min(1).values.argmax())
    torch.testing.assert_close(centroids[3], x[farthest])  # onto the row farthest from its centroid
    centroids = kmeans(x, 4, init=init, iters=10, tol=0)
    assigned, _ = nearest_code(x, centroids)
    assert torch.bincount(assigned, minlength=4).min() >= 1
    assert _inertia(x, centroids) < _inertia(x, centres)
    # duplicated initial centroids: ties go to the lowest index, so the copies start empty
    dup = kmeans(x, 4, init=torch.cat([centres, centres[:1]]), iters=5, tol=0)
    assert torch.bincount(nearest_code(x, dup)[0], minlength=4).min() >= 1


@pytest.mark.parametrize("batch_size", [None, 128])
def test_deterministic_for_a_seed(batch_size):
    x, _ = _blobs(700, 9, 6, spread=3.0, noise=1.0)
    a = kmeans(x, 9, seed=5, batch_size=batch_size, iters=4)
    b = kmeans(x, 9, seed=5, batch_size=batch_size, iters=4)
    c = kmeans(x, 9, seed=6, batch_size=batch_size, iters=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_minibatch_streams_an_iterable_and_a_callable():
    """Data that arrives in batches (a list, a loader rebuilt every epoch) gives the clusters a tensor gives."""
    x, labels = _blobs(3000, 12, 10)
    chunks = list(x.split(250))
    from_list = kmeans(chunks, 12, batch_size=200, iters=3, seed=1, tol=0)
    calls = []
    from_loader = kmeans(lambda: calls.append(1) or iter(chunks), 12, batch_size=200, iters=3, seed=1, tol=0)
    assert len(calls) == 4  # the initialisation sample, then 3 epochs
    assert torch.equal(from_list, from_loader)
    from_tensor = kmeans(x, 12, batch_size=200, iters=3, seed=1)
    for centroids in (from_list, from_tensor):
        assert _ari(labels, nearest_code(x, centroids)[0]) >= 0.99
    with pytest.raises(TypeError, match="one-shot iterator"):
        kmeans(iter(chunks), 12, batch_size=200)
    with pytest.raises(TypeError, match="need batch_size"):
        kmeans(chunks, 12)


def test_cosine_is_spherical():
    """Directions, not magnitudes: rows scaled by random factors cluster by angle; centroids have unit norm."""
    x, labels = _blobs(900, 5, 16, spread=10.0, noise=0.5)
    scaled = x * torch.empty(900, 1).uniform_(0.1, 10)
    centroids = kmeans(scaled, 5, metric="cosine", seed=2)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(5))
    assert _ari(labels, nearest_code(scaled, centroids, metric="cosine")[0]) >= 0.99
    mini = kmeans(scaled, 5, metric="cosine", seed=2, batch_size=100, iters=3)
    torch.testing.assert_close(mini.norm(dim=1), torch.ones(5))


def test_zero_iterations_return_the_initialisation():
    x = torch.randn(50, 3)
    init = torch.randn(4, 3)
    assert torch.equal(kmeans(x, 4, init=init, iters=0), init)
    picked = kmeans(x, 4, init="random", iters=0, seed=0)
    assert all(bool((x == row).all(1).any()) for row in picked)  # k distinct data rows


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(k=0), ValueError, "k must be an integer >= 1"),
        (dict(k=11), ValueError, r"k must be at most the number of rows N = 10"),
        (dict(iters=-1), ValueError, "iters must be"),
        (dict(metric="ip"), ValueError, "metric must be one of"),
        (dict(init="kmeans++"), ValueError, "init must be one of"),
        (dict(init=torch.zeros(2, 4)), ValueError, r"init must be shaped \(k, D\) = \(3, 4\)"),
        (dict(init=torch.zeros(3, 5)), ValueError, "init must have D = 4"),
        (dict(batch_size=0), ValueError, "batch_size must be"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(seed=-2), ValueError, "seed must be"),
        (dict(x=torch.zeros(10, 4, dtype=torch.int64)), TypeError, "x must be floating point"),
        (dict(x=torch.zeros(10)), ValueError, r"x must be shaped \(n, D\)"),
        (dict(x=torch.full((10, 4), float("nan"))), ValueError, "x contains NaN"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"x": torch.randn(10, 4), "k": 3, **kwargs}
    with pytest.raises(error, match=match):
        kmeans(**args)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    """On the GPU (fused nearest-code search, index_add_ on the device) the clusters are those of the CPU."""
    x, labels = _blobs(20000, 64, 32)
    gpu = kmeans(x.cuda(), 64, seed=0, iters=10)
    assert gpu.is_cuda
    assert _ari(labels, nearest_code(x, gpu.cpu())[0]) >= 0.99
    assert _inertia(x, gpu.cpu()) <= 1.01 * _inertia(x, kmeans(x, 64, seed=0, iters=10))
    streamed = kmeans(list(x.split(4096)), 64, batch_size=4096, iters=3, device="cuda")
    assert streamed.is_cuda and _ari(labels, nearest_code(x, streamed.cpu())[0]) >= 0.99
