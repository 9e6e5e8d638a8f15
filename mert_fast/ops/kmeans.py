"""k-means on the device of the data: MERT-v0 / HuBERT-style k-means targets and codebook initialisation.

Assignment is :func:`mert_fast.ops.nearest_code` (the fused nearest-code search: no ``N x k`` distance matrix in
memory); the update is a scatter-add (``index_add_``) of the rows into per-cluster sums, accumulated in float64,
on the same device. Two modes:

- **Lloyd** (``batch_size=None``): ``x`` is one ``(N, D)`` tensor; every iteration assigns all rows (in chunks of
  :data:`CHUNK_ROWS`, so memory stays bounded) and moves each centroid to the mean of its rows;
- **mini-batch** (``batch_size=B``): rows arrive in batches, from a tensor (a seeded shuffle per epoch), from a
  re-iterable of ``(n, D)`` tensors, or from a callable returning a fresh iterable each epoch (a data loader); each
  batch moves its centroids by the running-count rule of Sculley's mini-batch k-means (a centroid's step is
  ``n_batch / n_seen``), so data that does not fit in memory, or on the device, is streamed.

Empty clusters are re-seeded from the rows farthest from their centroid (Lloyd: over the whole pass, taking each
row out of its old cluster, as scikit-learn does; mini-batch: from the last batch of the epoch). ``metric="cosine"``
runs spherical k-means: rows are compared by cosine and centroids are the normalised sums of normalised rows.

Deterministic for a seed: bitwise on the CPU; on CUDA ``index_add_`` adds with atomics in float64, whose order
changes nothing at float32 precision in practice (and nothing at all under ``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from mert_fast._checks import check_float, check_int
from mert_fast.ops.rvq import METRICS, nearest_code

__all__ = ["kmeans"]

logger = logging.getLogger(__name__)

#: Rows assigned and accumulated per step in Lloyd mode (bounds the float64 copy of a chunk: 64K x D).
CHUNK_ROWS = 1 << 16
#: k-means++ runs on at most this many rows per cluster (a seeded sample; FAISS trains on 256 per centroid).
INIT_ROWS_PER_CLUSTER = 256

INITS = ("k-means++", "random")


# ---------------------------------------------------------------------------------------------- checks


def _check_rows(name: str, t, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, D); got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point (float16, bfloat16, float32 or float64); got {t.dtype}")
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must be shaped (n, D) with D >= 1; got {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns like the first batch; got {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


# ---------------------------------------------------------------------------------------------- pieces


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pairwise(x: torch.Tensor, c: torch.Tensor, cosine: bool) -> torch.Tensor:
    """``(n, m)`` squared distances (or ``1 - cosine``) between rows, for the k-means++ candidates only."""
    if cosine:
        return 1 - F.normalize(x, dim=1) @ F.normalize(c, dim=1).T
    d = x.square().sum(1, keepdim=True) - 2 * x @ c.T + c.square().sum(1)[None]
    return d.clamp_min_(0)


def _kmeans_pp(sample: torch.Tensor, k: int, cosine: bool, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's: ``2 + log k`` candidates per step, the one lowering the potential most)."""
    n = sample.shape[0]
    trials = 2 + int(math.log(k))
    centers = sample.new_empty((k, sample.shape[1]))
    first = torch.randint(n, (1,), generator=gen, device=gen.device).to(sample.device)
    centers[0] = sample[first[0]]
    closest = _pairwise(sample, centers[:1], cosine)[:, 0]
    for c in range(1, k):
        weights = torch.cumsum(closest.double(), 0)
        draws = torch.rand(trials, generator=gen, device=gen.device, dtype=torch.float64).to(sample.device)
        cand = torch.searchsorted(weights, draws * weights[-1]).clamp_(max=n - 1)
        new_closest = torch.minimum(closest[:, None], _pairwise(sample, sample[cand], cosine))
        best = new_closest.double().sum(0).argmin()
        centers[c] = sample[cand[best]]
        closest = new_closest[:, best]
    return centers


def _initial_centroids(
    sample: torch.Tensor, k: int, init, cosine: bool, gen: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    if isinstance(init, torch.Tensor):
        centers = _check_rows("init", init, sample.shape[1])
        if centers.shape[0] != k:
            raise ValueError(f"init must be shaped (k, D) = ({k}, {sample.shape[1]}); got {tuple(centers.shape)}")
        return centers.to(device=sample.device, dtype=dtype, copy=True)
    if sample.shape[0] < k:
        raise ValueError(
            f"k must be at most the number of rows available for initialisation ({sample.shape[0]}); got {k}"
        )
    sample = sample.to(dtype)
    if init == "random":
        rows = torch.randperm(sample.shape[0], generator=gen, device=gen.device)[:k].to(sample.device)
        return sample[rows].clone()
    return _kmeans_pp(sample, k, cosine, gen)


def _normalise(t: torch.Tensor, cosine: bool) -> torch.Tensor:
    return F.normalize(t, dim=1) if cosine else t


class _Farthest:
    """The ``m`` rows farthest from their centroid seen so far (values, distances, labels), kept on the device."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.rows: torch.Tensor | None = None
        self.dist: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def add(self, rows: torch.Tensor, dist: torch.Tensor, labels: torch.Tensor) -> None:
        if self.rows is not None:
            rows, dist, labels = (
                torch.cat([a, b]) for a, b in ((self.rows, rows), (self.dist, dist), (self.labels, labels))
            )
        if dist.shape[0] > self.m:
            # stable descending order: among equal distances the earlier row wins, run after run
            keep = torch.sort(dist, descending=True, stable=True).indices[: self.m]
            rows, dist, labels = rows[keep], dist[keep], labels[keep]
        self.rows, self.dist, self.labels = rows, dist, labels


def _reseed_lloyd(sums, counts, empty, farthest: _Farthest) -> int:
    """Move every empty cluster onto one of the farthest rows, taking that row out of its old cluster."""
    empty_ids = empty.nonzero()[:, 0]
    order = torch.sort(farthest.dist, descending=True, stable=True).indices
    done = 0
    for row in order.tolist():
        if done == empty_ids.numel():
            break
        old = int(farthest.labels[row])
        if counts[old] <= 1:  # the row is its cluster's only member: moving it would empty that cluster
            continue
        target = empty_ids[done]
        value = farthest.rows[row]
        sums[old] -= value
        counts[old] -= 1
        sums[target] = value
        counts[target] = 1
        done += 1
    return done


def _mean_variance(x: torch.Tensor) -> float:
    return float(x.double().var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0


# ---------------------------------------------------------------------------------------------- Lloyd


def _lloyd(x, centers, iters, cosine, tol, device) -> torch.Tensor:
    k = centers.shape[0]
    threshold = tol * _mean_variance(x[: 1 << 20]) if tol > 0 else 0.0
    for it in range(iters):
        sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=device)
        counts = torch.zeros(k, dtype=torch.int64, device=device)
        farthest = _Farthest(k)
        for r0 in range(0, x.shape[0], CHUNK_ROWS):
            chunk = x[r0 : r0 + CHUNK_ROWS].to(device=device, non_blocking=True)
            labels, dist = nearest_code(chunk, centers, metric="cosine" if cosine else "l2")
            rows = _normalise(chunk.double(), cosine)
            sums.index_add_(0, labels, rows)
            counts += torch.bincount(labels, minlength=k)
            farthest.add(rows, dist, labels)
        empty = counts == 0
        if bool(empty.any()):
            moved = _reseed_lloyd(sums, counts, empty, farthest)
            logger.debug("kmeans: iteration %d re-seeded %d empty clusters", it, moved)
        new = _update(centers, sums, counts, cosine)
        shift = float((new.double() - centers.double()).square().sum())
        centers = new
        if shift <= threshold:
            logger.debug("kmeans: converged after %d iterations (centroid shift %.3g)", it + 1, shift)
            break
    return centers


def _update(centers: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Mean (or normalised sum) of each cluster's rows; clusters that are still empty keep their centroid."""
    filled = counts > 0
    means = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
    means = _normalise(means, cosine)
    return torch.where(filled[:, None], means.to(centers.dtype), centers)


# ---------------------------------------------------------------------------------------------- mini-batch


def _tensor_batches(x: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(x.shape[0], generator=gen).to(x.device)
    for r0 in range(0, x.shape[0], batch_size):
        yield x[order[r0 : r0 + batch_size]]


def _stream(source, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of at most ``batch_size`` rows from an iterable of ``(n, D)`` tensors."""
    for i, batch in enumerate(source):
        _check_rows(f"batch {i} of x", batch)
        for r0 in range(0, batch.shape[0], batch_size):
            yield batch[r0 : r0 + batch_size]


def _epochs(x, batch_size: int, gen: torch.Generator) -> Callable[[], Iterator[torch.Tensor]]:
    """A callable returning one epoch's batches."""
    if isinstance(x, torch.Tensor):
        return lambda: _tensor_batches(x, batch_size, gen)
    if callable(x):
        return lambda: _stream(x(), batch_size)
    if isinstance(x, Iterator):
        raise TypeError(
            "x must be a tensor, a re-iterable of batches (a list, a Dataset) or a callable returning a fresh "
            "iterable per epoch (e.g. lambda: loader); got a one-shot iterator, which allows one pass only"
        )
    if isinstance(x, Iterable):
        return lambda: _stream(x, batch_size)
    raise TypeError(f"x must be a tensor (N, D), an iterable of (n, D) tensors or a callable; got {type(x).__name__}")


def _minibatch(epochs, centers, iters, cosine, tol, device, first: list[torch.Tensor]) -> torch.Tensor:
    k = centers.shape[0]
    seen = torch.zeros(k, dtype=torch.float64, device=device)
    threshold = tol * _mean_variance(torch.cat(first)) if tol > 0 else 0.0
    for epoch in range(iters):
        start = centers.clone()
        hits = torch.zeros(k, dtype=torch.int64, device=device)
        last = None
        for batch in epochs():
            batch = batch.to(device=device, non_blocking=True)
            labels, dist = nearest_code(batch, centers, metric="cosine" if cosine else "l2")
            rows = _normalise(batch.double(), cosine)
            sums = torch.zeros((k, batch.shape[1]), dtype=torch.float64, device=device).index_add_(0, labels, rows)
            n = torch.bincount(labels, minlength=k)
            hits += n
            seen += n
            # centroid += (sum - n * centroid) / seen: the running mean of every row it has been given
            step = (sums - n[:, None] * centers.double()) / seen.clamp_min(1)[:, None]
            centers = _normalise(centers.double() + step, cosine).to(centers.dtype)
            last = (batch, dist, labels)
        if last is None:
            raise ValueError(f"x yielded no batch in epoch {epoch}")
        empty = hits == 0
        if bool(empty.any()):
            batch, dist, _ = last
            ids = empty.nonzero()[:, 0]
            far = torch.sort(dist, descending=True, stable=True).indices[: ids.numel()]
            centers[ids[: far.numel()]] = _normalise(batch[far].to(centers.dtype), cosine)
            seen[ids[: far.numel()]] = 0
            logger.debug("kmeans: epoch %d re-seeded %d unused clusters", epoch, far.numel())
        shift = float((centers.double() - start.double()).square().sum())
        if shift <= threshold:
            break
    return centers


def _first_rows(epochs, need: int) -> list[torch.Tensor]:
    """Batches from the start of the first epoch until ``need`` rows are gathered (the initialisation sample)."""
    out, have = [], 0
    for batch in epochs():
        out.append(batch)
        have += batch.shape[0]
        if have >= need:
            break
    if not out:
        raise ValueError("x yielded no batch")
    return out


# ---------------------------------------------------------------------------------------------- public


def kmeans(
    x: torch.Tensor | Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
    k: int,
    *,
    iters: int = 20,
    metric: str = "l2",
    init: str | torch.Tensor = "k-means++",
    seed: int = 0,
    batch_size: int | None = None,
    tol: float = 1e-4,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cluster rows into ``k`` centroids (Lloyd's algorithm, or mini-batch k-means when ``batch_size`` is given).

    Args:
        x: ``(N, D)`` rows, float16/bfloat16/float32/float64; with ``batch_size`` also an iterable of ``(n, D)``
            tensors that can be iterated once per epoch (a list, a dataset) or a callable returning a fresh
            iterable per epoch (``lambda: loader``), for data that does not fit in memory.
        k: number of clusters, ``1 <= k <= N`` (the rows available for initialisation in mini-batch mode).
        iters: Lloyd iterations, or epochs (passes over the data) in mini-batch mode; ``0`` returns the initial
            centroids.
        metric: ``"l2"`` or ``"cosine"`` (spherical k-means: unit-norm centroids).
        init: ``"k-means++"`` (greedy, on a seeded sample of at most ``256 k`` rows), ``"random"`` (``k`` distinct
            rows) or a ``(k, D)`` tensor of initial centroids. In mini-batch mode the sample comes from the first
            batches (at least ``3 * max(k, batch_size)`` rows when available).
        seed: seed of every random choice (initialisation, mini-batch order): equal seeds give equal centroids.
        batch_size: ``None`` for Lloyd on the whole tensor, else rows per mini-batch.
        tol: stop early when an iteration (epoch) moves the centroids by at most ``tol`` times the mean per-feature
            variance of the data in total squared distance (scikit-learn's rule); ``0`` runs every iteration
            unless the centroids stop moving.
        device: where to compute (default: ``x``'s device, or the first batch's); batches are moved there.

    Returns:
        ``(k, D)`` centroids on ``device``, float32 (float64 for float64 data).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}; got {metric!r}")
    cosine = metric == "cosine"
    k = check_int("k", k, min=1)
    iters = check_int("iters", iters, min=0)
    seed = check_int("seed", seed, min=0)
    if not isinstance(init, torch.Tensor) and init not in INITS:
        raise ValueError(f"init must be one of {', '.join(repr(i) for i in INITS)} or a (k, D) tensor; got {init!r}")
    check_float("tol", tol, min=0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, min=1)
    elif not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor (N, D) without batch_size; iterables of batches need batch_size (got "
            f"{type(x).__name__})"
        )
    if isinstance(x, torch.Tensor):
        x = _check_rows("x", x)
        if x.shape[0] < k:
            raise ValueError(f"k must be at most the number of rows N = {x.shape[0]}; got {k}")

    cpu_gen = torch.Generator().manual_seed(seed)
    if batch_size is None:
        device = torch.device(device) if device is not None else x.device
        dtype = _compute_dtype(x.dtype)
        gen = torch.Generator(device=device).manual_seed(seed)
        n_init = min(x.shape[0], INIT_ROWS_PER_CLUSTER * k)
        if n_init < x.shape[0] and not isinstance(init, torch.Tensor):
            rows = torch.randperm(x.shape[0], generator=cpu_gen)[:n_init].sort().values.to(x.device)
            sample = x[rows].to(device)
        else:
            sample = x.to(device) if not isinstance(init, torch.Tensor) else x[:1].to(device)
        centers = _initial_centroids(_normalise(sample.to(dtype), cosine), k, init, cosine, gen, dtype)
        centers = _normalise(centers, cosine)
        logger.debug("kmeans: Lloyd, %d rows x %d dims into %d clusters on %s", x.shape[0], x.shape[1], k, device)
        return _lloyd(x, centers, iters, cosine, float(tol), device)

    epochs = _epochs(x, batch_size, cpu_gen)
    first = _first_rows(epochs, 3 * max(k, batch_size))
    dim = first[0].shape[1]
    for i, batch in enumerate(first):
        _check_rows(f"batch {i} of x", batch, dim)
    device = torch.device(device) if device is not None else first[0].device
    dtype = _compute_dtype(first[0].dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    sample = torch.cat([b.to(device=device, dtype=dtype) for b in first])
    centers = _normalise(_initial_centroids(_normalise(sample, cosine), k, init, cosine, gen, dtype), cosine)
    logger.debug("kmeans: mini-batch, batches of %d x %d dims into %d clusters on %s", batch_size, dim, k, device)
    return _minibatch(epochs, centers, iters, cosine, float(tol), device, first)
