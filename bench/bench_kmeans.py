"""k-means (Lloyd): mert_fast against a torch loop, FAISS and scikit-learn, from the same initial centroids.

Cases (float32, seeded ``randn`` rows around seeded centres, so the clusters are real but overlapping):

- ``gpu``: 1,000,000 x 128 into 1,024 clusters, 10 iterations (MERT-v0 / HuBERT-style targets, codebook
  initialisation), when the bench device is cuda: mert_fast, the torch loop, FAISS GPU when that faiss has it;
- ``cpu``: 20,000 x 32 into 64 clusters, 10 iterations: mert_fast, the torch loop, FAISS CPU, scikit-learn.

Every implementation starts from the same centroids (``init=``) and runs the same number of Lloyd iterations with
early stopping off. Before its time is recorded its result is checked: the inertia (sum of squared distances to
the nearest centroid, float64) must be within 1% of the baseline's (the torch loop's); it is recorded with the
ratio. Effective TFLOP/s counts the assignment GEMMs (``2 N k D`` per iteration).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mert_fast.ops import kmeans, nearest_code

BASELINE = "torch loop (cdist + argmin + index_add)"
INERTIA_RTOL = 0.01


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    rows: int
    dim: int
    clusters: int
    iters: int = 10

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.clusters * self.dim * self.iters

    @property
    def label(self) -> str:
        return f"{self.device} {self.rows} x {self.dim} into {self.clusters}, {self.iters} iterations fp32"


CASES = [Case("cpu", 20_000, 32, 64), Case("cuda", 1_000_000, 128, 1024)]


def case_id(case: Case) -> str:
    """The test id of a case (the ``case`` fixture, bench/conftest.py)."""
    return case.device


@pytest.fixture(autouse=True)
def _true_fp32(true_fp32_matmul):
    """Every torch peer in true fp32 (the cases are fp32)."""


_cache: dict[tuple, object] = {}


def inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(N, D)`` on the case's device and the shared initial centroids ``(k, D)`` (k distinct rows)."""
    key = ("inputs", case)
    if key not in _cache:
        g = torch.Generator().manual_seed(0)
        centres = 2.0 * torch.randn(case.clusters, case.dim, generator=g)
        x = centres[torch.randint(case.clusters, (case.rows,), generator=g)] + torch.randn(
            case.rows, case.dim, generator=g
        )
        init = x[torch.randperm(case.rows, generator=g)[: case.clusters]].clone()
        _cache[key] = (x.to(case.device), init.to(case.device))
    return _cache[key]


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum of squared distances to the nearest centroid, float64 (nearest_code's direct distances)."""
    _, dist = nearest_code(x.double(), torch.as_tensor(centroids).to(device=x.device, dtype=torch.float64))
    return float(dist.sum())


def torch_loop(x: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd as people write it in PyTorch: the full N x k distance matrix, argmin, scatter-add of the means."""
    centroids = init.clone()
    for _ in range(iters):
        labels = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=centroids.shape[0])
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


def baseline_inertia(case: Case) -> float:
    key = ("baseline", case)
    if key not in _cache:
        x, init = inputs(case)
        _cache[key] = inertia(x, torch_loop(x, init, case.iters))
    return _cache[key]


def check(benchmark, case: Case, centroids) -> None:
    x, _ = inputs(case)
    ours = inertia(x, centroids)
    base = baseline_inertia(case)
    info = benchmark.extra_info
    info["inertia"] = ours
    info["inertia_vs_torch_loop"] = ours / base
    assert ours <= (1 + INERTIA_RTOL) * base, f"{info['implementation']}: inertia {ours:.6g} vs {base:.6g}"


def describe(measure, case: Case, implementation: str) -> None:
    measure.describe(
        "kmeans", case.label, implementation, baseline=implementation == BASELINE,
        rows=case.rows, dim=case.dim, clusters=case.clusters, iters=case.iters, flop=case.flops,
    )  # fmt: skip


def record_speed(benchmark, measure, case: Case) -> None:
    median = measure.median_s()
    if median:
        benchmark.extra_info["row_iterations_per_s"] = case.rows * case.iters / median
    measure.record_tflops(case.flops)


def _rounds(case: Case) -> int:
    return 3 if case.device == "cuda" else 5


# ---------------------------------------------------------------------------------------------- implementations


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_kmeans_mert_fast(benchmark, measure, monkeypatch, case, backend):
    if backend == "torch" and case.device == "cpu":
        pytest.skip("on the CPU auto is the torch path")
    monkeypatch.setenv("MERT_FAST_BACKEND", backend)
    describe(measure, case, f"mert_fast ({backend})")
    x, init = inputs(case)

    def fn():
        return kmeans(x, case.clusters, init=init, iters=case.iters, tol=0)

    check(benchmark, case, fn())
    measure(fn, device=case.device, rounds=_rounds(case), warmup=1)
    record_speed(benchmark, measure, case)


def test_kmeans_torch_loop(benchmark, measure, case):
    describe(measure, case, BASELINE)
    x, init = inputs(case)

    def fn():
        return torch_loop(x, init, case.iters)

    check(benchmark, case, fn())
    measure(fn, device=case.device, rounds=_rounds(case), warmup=1)
    record_speed(benchmark, measure, case)


def test_kmeans_faiss(benchmark, measure, case):
    faiss = pytest.importorskip("faiss")
    on_gpu = case.device == "cuda"
    if on_gpu and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        pytest.skip("this faiss has no GPU support (faiss-cpu); FAISS CPU is timed in the CPU case")
    describe(measure, case, f"FAISS {'GPU' if on_gpu else 'CPU'} Kmeans")
    x, init = inputs(case)
    xn, init_n = x.cpu().numpy(), init.cpu().numpy()

    def fn():
        km = faiss.Kmeans(case.dim, case.clusters, niter=case.iters, gpu=on_gpu, seed=0)
        km.cp.max_points_per_centroid = case.rows  # every row, like the others (FAISS subsamples by default)
        km.cp.min_points_per_centroid = 1
        km.train(xn, init_centroids=init_n)
        return torch.from_numpy(km.centroids)

    check(benchmark, case, fn())
    measure(fn, device="cpu", rounds=_rounds(case), warmup=1)
    record_speed(benchmark, measure, case)


def test_kmeans_scikit_learn(benchmark, measure, case):
    cluster = pytest.importorskip("sklearn.cluster")
    if case.device != "cpu":
        pytest.skip("scikit-learn runs on the CPU: timed in the CPU case")
    describe(measure, case, "scikit-learn KMeans (lloyd)")
    x, init = inputs(case)
    xn, init_n = x.numpy(), init.numpy()

    def fn():
        km = cluster.KMeans(case.clusters, init=init_n, n_init=1, max_iter=case.iters, algorithm="lloyd", tol=0)
        return torch.from_numpy(km.fit(xn).cluster_centers_)

    check(benchmark, case, fn())
    measure(fn, device="cpu", rounds=_rounds(case), warmup=1)
    record_speed(benchmark, measure, case)
