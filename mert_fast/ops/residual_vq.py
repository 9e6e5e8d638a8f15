"""A trainable residual vector quantiser whose search is :func:`mert_fast.ops.rvq_encode` (one fused launch).

Per stage ``s`` with the codes ``c_s`` the search chose (residual ``r_0 = x``):

- ``z_s = in_proj_s(r_s)`` (or ``r_s`` without projections), the vector searched (squared L2 or cosine);
- ``e_s = codebook_s[c_s]`` the raw code, ``u_s = out_proj_s(e_s)`` (or ``e_s``) what is subtracted:
  ``r_{s+1} = r_s - u_s``; the quantized output is ``q = sum_s u_s`` (= :func:`rvq_decode` of the codes);
- commitment loss ``mse(z_s, sg(e_s))`` (cosine: of the unit vectors), the gradient that pulls the encoder (``x``)
  and ``in_proj`` towards the codes; codebook loss ``mse(u_s, sg(r_s))``, which trains ``out_proj`` and, without
  EMA, the codebooks. Each is summed over stages; ``loss = commitment_weight * commitment + codebook_weight *
  codebook``.

Training forward passes return the straight-through ``x + sg(q - x)`` (the gradient reaches ``x`` unchanged). With
``ema=True`` the codebooks are buffers moved by exponential moving averages of the mean ``z_s`` of each code's
rows (with Laplace smoothing of the counts); codes whose EMA usage falls below ``dead_code_threshold`` are
replaced by random rows of the current ``z_s`` (both modes). The first training forward with ``kmeans_init``
initialises the codebooks stage by stage by :func:`mert_fast.ops.kmeans` on that stage's ``z_s``.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast._checks import check_int
from mert_fast.ops.kmeans import kmeans
from mert_fast.ops.rvq import METRICS, nearest_code, rvq_decode, rvq_encode

__all__ = ["ResidualVQ", "ResidualVQOutput"]

logger = logging.getLogger(__name__)


class ResidualVQOutput(NamedTuple):
    """What :meth:`ResidualVQ.forward` returns.

    quantized: x's shape and dtype; straight-through ``x + sg(q - x)`` in training, ``q`` (= ``decode(codes)``) in eval.
    codes: int64 ``(..., n_q)``.
    loss: scalar, ``commitment_weight * commitment_loss + codebook_weight * codebook_loss``.
    commitment_loss, codebook_loss: scalars, summed over stages.
    perplexity: ``(n_q,)`` float, ``exp`` of the entropy of each stage's code histogram over this batch.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    perplexity: torch.Tensor


def _number(name: str, value, low: float, high: float = math.inf, *, open_high: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value
    ok = ok and (value < high if open_high else value <= high)
    if not ok:
        raise ValueError(f"{name} must be a number in [{low}, {high}{')' if open_high else ']'}; got {value!r}")
    return float(value)


class ResidualVQ(nn.Module):
    """Residual vector quantiser with EMA or gradient codebooks, dead-code replacement and k-means initialisation.

    Args:
        dim: feature dimension ``D`` of the input.
        n_q: number of stages ``Q``.
        codebook_size: codes per stage ``K``.
        codebook_dim: ``None``: codebooks live in ``D`` (EnCodec); an int ``Dc``: per-stage linear projections
            ``in_proj`` ``(Q, Dc, D)`` + ``in_bias`` ``(Q, Dc)`` down and ``out_proj`` ``(Q, D, Dc)`` + ``out_bias``
            ``(Q, D)`` up (MuQ's Mel-RVQ, DAC).
        metric: ``"l2"`` or ``"cosine"`` lookup.
        ema: codebooks as buffers moved by EMA (``True``) or as parameters trained by the codebook loss.
        decay: EMA decay in ``[0, 1)``. eps: Laplace smoothing of the EMA counts.
        commitment_weight, codebook_weight: weights of the two losses in ``loss``.
        dead_code_threshold: codes whose EMA usage (rows per batch) falls below it are replaced in training
            (``0`` disables replacement).
        kmeans_init: initialise the codebooks by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.

    Attributes:
        codebooks: ``(n_q, codebook_size, codebook_dim or dim)``, a buffer with ``ema``, a parameter otherwise.
        in_proj, in_bias, out_proj, out_bias: the projections' parameters (``None`` without ``codebook_dim``).
        code_usage: ``(n_q, codebook_size)`` buffer, EMA of each code's rows per batch; ``code_sum`` (with ``ema``)
            ``(n_q, codebook_size, codebook_dim or dim)`` the EMA of their sums; ``initialized`` a bool buffer.
    """

    def __init__(
        self,
        dim: int,
        n_q: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        metric: str = "l2",
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        codebook_weight: float = 1.0,
        dead_code_threshold: float = 2,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        self.n_q = check_int("n_q", n_q, min=1)
        self.codebook_size = check_int("codebook_size", codebook_size, min=1)
        self.codebook_dim = None if codebook_dim is None else check_int("codebook_dim", codebook_dim, min=1)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}; got {metric!r}")
        self.metric = metric
        self.ema = bool(ema)
        self.decay = _number("decay", decay, 0.0, 1.0, open_high=True)
        self.eps = _number("eps", eps, 0.0)
        self.commitment_weight = _number("commitment_weight", commitment_weight, 0.0)
        self.codebook_weight = _number("codebook_weight", codebook_weight, 0.0)
        self.dead_code_threshold = _number("dead_code_threshold", dead_code_threshold, 0.0)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = check_int("kmeans_iters", kmeans_iters, min=1)

        code_dim = self.codebook_dim or dim
        books = torch.randn(n_q, codebook_size, code_dim)
        # EMA usage of every code, rows per batch (both modes: dead codes are found from it); it starts at a pseudo
        # count of max(threshold, 1) so that EMA means are defined and an unused code is replaced after one step
        start = max(self.dead_code_threshold, 1.0)
        if self.ema:
            self.register_buffer("codebooks", books)
            self.register_buffer("code_sum", books * start)
        else:
            self.codebooks = nn.Parameter(books)
        self.register_buffer("code_usage", torch.full((n_q, codebook_size), start))
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        if self.codebook_dim is not None:
            self.in_proj = nn.Parameter(torch.empty(n_q, code_dim, dim))
            self.in_bias = nn.Parameter(torch.empty(n_q, code_dim))
            self.out_proj = nn.Parameter(torch.empty(n_q, dim, code_dim))
            self.out_bias = nn.Parameter(torch.empty(n_q, dim))
            for weight, bias in ((self.in_proj, self.in_bias), (self.out_proj, self.out_bias)):
                bound = 1 / math.sqrt(weight.shape[2])  # nn.Linear's initialisation, per stage
                nn.init.uniform_(weight, -bound, bound)
                nn.init.uniform_(bias, -bound, bound)
        else:
            self.in_proj = self.in_bias = self.out_proj = self.out_bias = None

    # ------------------------------------------------------------------------------------------ views

    def _proj(self) -> dict:
        if self.in_proj is None:
            return {}
        return {"in_proj": self.in_proj, "in_bias": self.in_bias, "out_proj": self.out_proj, "out_bias": self.out_bias}

    def _down(self, r: torch.Tensor, s: int) -> torch.Tensor:
        return r if self.in_proj is None else F.linear(r, self.in_proj[s], self.in_bias[s])

    def _up(self, e: torch.Tensor, s: int) -> torch.Tensor:
        return e if self.out_proj is None else F.linear(e, self.out_proj[s], self.out_bias[s])

    def _flat(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor (N, dim) or (B, T, dim)")
        if x.dim() not in (2, 3) or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must be shaped (N, {self.dim}) or (B, T, {self.dim}); got {tuple(x.shape)}")
        return x.reshape(-1, self.dim)

    # ------------------------------------------------------------------------------------------ public

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of ``x`` ``(N, dim)`` or ``(B, T, dim)``: int64 ``(..., n_q)`` (one fused search, no gradient)."""
        flat = self._flat(x)
        codes, _ = rvq_encode(flat, self.codebooks.detach(), metric=self.metric, **self._detached_proj())
        return codes.reshape(*x.shape[:-1], self.n_q)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` in the codebooks' dtype: the sum of the chosen (projected) codes of ``codes`` ``(..., q)``."""
        proj = {k: v for k, v in self._proj().items() if k.startswith("out_")}
        return rvq_decode(codes, self.codebooks, **proj)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, iters: int | None = None) -> None:
        """Initialise every stage's codebook by k-means on that stage's searched vectors, stage by stage.

        Args:
            x: ``(N, dim)`` (or ``(B, T, dim)``) rows, ``N >= codebook_size``.
            iters: Lloyd iterations (default ``kmeans_iters``).
        """
        flat = self._flat(x).to(self.codebooks.dtype)
        if flat.shape[0] < self.codebook_size:
            raise ValueError(
                f"x must hold at least codebook_size = {self.codebook_size} rows to initialise the codebooks by "
                f"k-means; got {flat.shape[0]} (pass more rows to init_from_data, or kmeans_init=False)"
            )
        iters = self.kmeans_iters if iters is None else check_int("iters", iters, min=1)
        resid = flat
        for s in range(self.n_q):
            z = self._down(resid, s)
            centroids = kmeans(z, self.codebook_size, iters=iters, metric=self.metric, seed=s)
            labels, _ = nearest_code(z, centroids, metric=self.metric)
            counts = torch.bincount(labels, minlength=self.codebook_size).to(z.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, labels, z)
            # the raw code is the mean of its rows (for cosine too: it is subtracted, so its length matters)
            book = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
            self.codebooks[s].copy_(book)
            self.code_usage[s].copy_(counts)
            if self.ema:
                self.code_sum[s].copy_(book * counts[:, None])
            resid = resid - self._up(book[labels], s)
        self.initialized.fill_(True)
        logger.debug("ResidualVQ: %d stages initialised by k-means on %d rows", self.n_q, flat.shape[0])

    def forward(self, x: torch.Tensor) -> ResidualVQOutput:
        """Quantise ``x`` ``(N, dim)`` or ``(B, T, dim)``; see :class:`ResidualVQOutput`."""
        flat = self._flat(x)
        if self.training and not bool(self.initialized):
            self.init_from_data(flat.detach())
        books = self.codebooks
        with torch.no_grad():
            codes, _ = rvq_encode(flat, books.detach(), metric=self.metric, **self._detached_proj())
        xf = flat.to(books.dtype)
        cosine = self.metric == "cosine"
        commitment, codebook, perplexity = [], [], []
        resid, total, targets = xf, None, []
        for s in range(self.n_q):
            idx = codes[:, s]
            z = self._down(resid, s)
            e = books[s].index_select(0, idx)
            u = self._up(e, s)
            if cosine:
                commitment.append(F.mse_loss(F.normalize(z, dim=-1), F.normalize(e, dim=-1).detach()))
            else:
                commitment.append(F.mse_loss(z, e.detach()))
            codebook.append(F.mse_loss(u, resid.detach()))
            targets.append(z.detach())
            total = u if total is None else total + u
            resid = resid - u.detach()
            hist = torch.bincount(idx, minlength=self.codebook_size).to(books.dtype)
            p = hist / hist.sum().clamp_min(1)
            perplexity.append(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
        commitment_loss = torch.stack(commitment).sum()
        codebook_loss = torch.stack(codebook).sum()
        loss = self.commitment_weight * commitment_loss + self.codebook_weight * codebook_loss
        if self.training:
            quantized = xf + (total - xf).detach()
            with torch.no_grad():
                self._update_codebooks(codes, targets)
        else:
            quantized = total
        return ResidualVQOutput(
            quantized=quantized.to(x.dtype).reshape(x.shape),
            codes=codes.reshape(*x.shape[:-1], self.n_q),
            loss=loss,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=torch.stack(perplexity).detach(),
        )

    @torch.no_grad()
    def explained_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Explained variance of ``x`` ``(N, dim)`` (or ``(B, T, dim)``) after each stage, float64 ``(n_q,)``.

        Entry ``s`` is ``1 - |x - q_s|^2 / |x - mean(x)|^2`` (sums over every row and dim), with ``q_s`` the decode
        of the first ``s + 1`` codes that :meth:`encode` gives: what the quantiser reconstructs in eval mode.
        """
        flat = self._flat(x).to(self.codebooks.dtype)
        codes = self.encode(flat)
        total = (flat.double() - flat.double().mean(0)).square().sum().clamp_min(1e-30)
        resid = flat.double()
        out = []
        for s in range(self.n_q):
            resid = resid - self._up(self.codebooks[s].index_select(0, codes[:, s]), s).double()
            out.append(1.0 - resid.square().sum() / total)
        return torch.stack(out)

    def fit(
        self,
        x: torch.Tensor,
        *,
        steps: int = 300,
        batch_rows: int = 4096,
        lr: float = 1e-3,
        seed: int = 0,
        init_rows: int = 65536,
    ) -> list[float]:
        """Fit the quantiser to reconstruct ``x`` (``metric="l2"``): codebooks and projections learn from ``|x - q|^2``.

        1. Stage by stage on the residual ``r`` (a seeded sample of at most ``init_rows`` rows): ``in_proj`` the
           top ``codebook_dim`` principal directions ``W`` of ``r`` (orthonormal rows), ``out_bias`` its mean ``m``,
           the codebook by k-means on ``z = W (r - m)`` with every code the mean of its rows.
        2. ``steps`` Adam steps on batches of ``batch_rows`` rows, minimising the reconstruction error of the
           decode of the codes the search picks, through ``W``, ``m`` and the codebooks. The projections are tied
           (``out_proj = W^T``, ``in_bias = -W m``) and ``W``'s rows are re-orthonormalised after every step, so
           the nearest code of ``z`` is always the one that best reconstructs the residual: the search of
           :meth:`encode` and the fit optimise the same error. Codes unused over the last 50 steps are re-seeded
           on rows of their stage's ``z`` (not in the last quarter of the steps).

        Without projections ``W`` is the identity and ``m`` zero. Deterministic for a seed. Leaves the module in
        eval mode with ``initialized`` set. Returns the mean reconstruction error per step (of each batch, before
        its update).
        """
        if self.metric != "l2":
            raise ValueError(f"fit reconstructs by the l2 search; this quantiser searches by {self.metric!r}")
        check_int("batch_rows", batch_rows, min=1)
        check_int("init_rows", init_rows, min=1)
        check_int("steps", steps, min=0)
        flat = self._flat(x).detach().to(self.codebooks.dtype)
        if flat.shape[0] < self.codebook_size:
            raise ValueError(f"x must hold at least codebook_size = {self.codebook_size} rows; got {flat.shape[0]}")
        gen = torch.Generator().manual_seed(seed)
        sample = flat
        if flat.shape[0] > init_rows:
            sample = flat[torch.randperm(flat.shape[0], generator=gen)[:init_rows].to(flat.device)]
        projected = self.in_proj is not None
        resid = sample
        for s in range(self.n_q):
            if projected:
                mean = resid.mean(0)
                centred = (resid - mean).double()
                # principal directions of the residual: the subspace whose quantisation removes the most energy
                _, vectors = torch.linalg.eigh(centred.T @ centred)
                w = vectors[:, -self.codebook_dim :].flip(1).T.to(flat.dtype).contiguous()
                z = (resid - mean) @ w.T
            else:
                z = resid
            centroids = kmeans(z, self.codebook_size, iters=self.kmeans_iters, seed=seed * 1000 + s)
            labels, _ = nearest_code(z, centroids)
            counts = torch.bincount(labels, minlength=self.codebook_size).to(z.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, labels, z)
            book = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
            with torch.no_grad():
                self.codebooks[s].copy_(book)
                self.code_usage[s].copy_(counts)
                if projected:
                    self._set_stage(s, w, mean)
            resid = resid - self._up(book[labels], s).detach()
        self.initialized.fill_(True)
        losses = self._refine(flat, steps, batch_rows, lr, gen)
        self.eval()
        return losses

    @torch.no_grad()
    def _set_stage(self, s: int, w: torch.Tensor, mean: torch.Tensor) -> None:
        self.in_proj[s].copy_(w)
        self.in_bias[s].copy_(-(w @ mean))
        self.out_proj[s].copy_(w.T)
        self.out_bias[s].copy_(mean)

    def _refine(self, flat: torch.Tensor, steps: int, batch_rows: int, lr: float, gen: torch.Generator) -> list:
        projected = self.in_proj is not None
        books = self.codebooks.detach().clone().requires_grad_(True)
        params = [books]
        if projected:
            w = self.in_proj.detach().clone().requires_grad_(True)
            mean = self.out_bias.detach().clone().requires_grad_(True)
            params += [w, mean]
        optimizer = torch.optim.Adam(params, lr=lr)
        window = 50
        unused = torch.zeros(self.n_q, self.codebook_size, dtype=torch.long, device=flat.device)
        losses = []
        for step in range(steps):
            idx = torch.randint(flat.shape[0], (min(batch_rows, flat.shape[0]),), generator=gen).to(flat.device)
            batch = flat[idx]
            with torch.no_grad():
                proj = {}
                if projected:
                    proj = dict(in_proj=w, in_bias=-(w @ mean[..., None])[..., 0], out_proj=w.transpose(1, 2))
                    proj["out_bias"] = mean
                codes, _ = rvq_encode(batch, books.detach(), **{k: v.detach() for k, v in proj.items()})
            resid, zs = batch, []
            for s in range(self.n_q):
                e = books[s].index_select(0, codes[:, s])
                if projected:
                    zs.append((resid.detach() - mean[s].detach()) @ w[s].detach().T)
                    resid = resid - (e @ w[s] + mean[s])
                else:
                    zs.append(resid.detach())
                    resid = resid - e
            loss = resid.square().sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item() / self.dim)
            with torch.no_grad():
                if projected:
                    # retraction onto orthonormal rows, signs kept so that the codes stay attached to their directions
                    q, r = torch.linalg.qr(w.transpose(1, 2))
                    w.copy_((q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]).transpose(1, 2))
                for s in range(self.n_q):
                    used = torch.bincount(codes[:, s], minlength=self.codebook_size) > 0
                    unused[s] = torch.where(used, 0, unused[s] + 1)
                    dead = (unused[s] >= window).nonzero()[:, 0]
                    if dead.numel() and step < steps * 3 // 4:
                        rows = torch.randint(zs[s].shape[0], (dead.numel(),), generator=gen).to(flat.device)
                        books[s, dead] = zs[s][rows]
                        unused[s, dead] = 0
                        logger.debug("ResidualVQ.fit: stage %d re-seeded %d unused codes", s, dead.numel())
        with torch.no_grad():
            self.codebooks.copy_(books.detach())
            if self.ema:
                self.code_sum.copy_(books.detach() * self.code_usage[..., None])
            if projected:
                for s in range(self.n_q):
                    self._set_stage(s, w[s].detach(), mean[s].detach())
        return losses

    # ------------------------------------------------------------------------------------------ training

    def _detached_proj(self) -> dict:
        return {k: v.detach() for k, v in self._proj().items()}

    def _update_codebooks(self, codes: torch.Tensor, targets: list[torch.Tensor]) -> None:
        """EMA statistics (and, with ``ema``, the codebooks) from this batch; then dead-code replacement."""
        keep = self.decay
        for s, z in enumerate(targets):
            idx = codes[:, s]
            counts = torch.bincount(idx, minlength=self.codebook_size).to(z.dtype)
            self.code_usage[s].mul_(keep).add_(counts, alpha=1 - keep)
            if self.ema:
                sums = torch.zeros_like(self.code_sum[s]).index_add_(0, idx, z)
                self.code_sum[s].mul_(keep).add_(sums, alpha=1 - keep)
                usage = self.code_usage[s]
                total = usage.sum()
                smoothed = (usage + self.eps) / (total + self.codebook_size * self.eps) * total
                self.codebooks[s].copy_(self.code_sum[s] / smoothed[:, None])
            if self.dead_code_threshold > 0:
                self._replace_dead(s, z)

    def _replace_dead(self, s: int, z: torch.Tensor) -> None:
        dead = (self.code_usage[s] < self.dead_code_threshold).nonzero()[:, 0]
        if dead.numel() == 0 or z.shape[0] == 0:
            return
        rows = torch.randint(z.shape[0], (dead.numel(),), device=z.device)
        fresh = z[rows].to(self.codebooks.dtype)
        self.codebooks.data[s, dead] = fresh
        self.code_usage[s, dead] = self.dead_code_threshold
        if self.ema:
            self.code_sum[s, dead] = fresh * self.dead_code_threshold
        logger.debug("ResidualVQ: stage %d replaced %d dead codes", s, dead.numel())

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_q={self.n_q}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
            f"metric={self.metric!r}, ema={self.ema}"
        )
