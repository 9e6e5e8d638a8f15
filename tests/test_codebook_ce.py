"""mert_fast.ops.codebook_cross_entropy against the float64 definition that materialises the logits."""

from __future__ import annotations

import importlib

import pytest
import torch

from mert_fast.ops import codebook_cross_entropy
from mert_fast.ops.reference import codebook_cross_entropy_ref
from mert_fast.testing import TOLERANCE, assert_rel_close

ce_module = importlib.import_module("mert_fast.ops.codebook_ce")

#: (S, Q, K, D): aligned (powers of two) and odd (every dimension unaligned, several tiles each way).
ALIGNED = (64, 2, 128, 64)
ODD = (37, 3, 100, 24)
IGNORE = -100
HALF = (torch.float16, torch.bfloat16)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, dtype, *, normalize=True, bias=True, device="cpu", ignore_every=5):
    """Fresh random x, codebooks, bias, targets (every ``ignore_every``-th entry ignored) and entry weights."""
    n_s, n_q, n_k, n_d = shape
    x = torch.randn(n_s, n_q, n_d, dtype=torch.float64)
    c = torch.randn(n_q, n_k, n_d, dtype=torch.float64)
    if not normalize:  # dot-product logits of a sensible size (temperature 1)
        x, c = x / n_d**0.25, c / n_d**0.25
    b = torch.randn(n_q, n_k, dtype=torch.float64) if bias else None
    t = torch.randint(0, n_k, (n_s, n_q))
    if ignore_every:
        t.view(-1)[::ignore_every] = IGNORE
    w = torch.rand(n_s, n_q, dtype=torch.float64)
    on = lambda a: a.to(device=device, dtype=dtype) if a is not None else None
    return on(x), on(c), on(b), t.to(device), w.to(device)


def _run(fn, x, c, b, t, w, **kw):
    """Weighted per-entry loss (non-uniform upstream gradients), its gradients and the accuracy counts.

    Leaves are copied in their own dtype: float64 leaves (the reference) give unrounded gradients.
    """
    leaves = [a.detach().clone().requires_grad_() for a in (x, c, b) if a is not None]
    xx, cc, bb = leaves[0], leaves[1], leaves[2] if b is not None else None
    losses, hits = fn(xx, cc, t, bias=bb, reduction="none", return_accuracy=True, **kw)
    grads = torch.autograd.grad((losses * w.to(losses.dtype)).sum(), leaves)
    return (losses, *grads), hits


def _check(shape, dtype, *, normalize, bias, device="cpu", fp64_bound=1e-12, hits_slack=0):
    """Every output against float64; low precision also against PyTorch's own error in that dtype.

    ``hits_slack``: correct counts may differ from float64's by this much per codebook (rows whose top two
    logits are closer than the rounding error; only the 32k-row GPU cases have any).
    """
    x, c, b, t, w = _inputs(shape, dtype, normalize=normalize, bias=bias, device=device)
    kw = dict(temperature=0.1 if normalize else 1.0, normalize=normalize)
    wide = lambda a: a.double() if a is not None else None
    ours, hits = _run(codebook_cross_entropy, x, c, b, t, w, **kw)
    ref, ref_hits = _run(codebook_cross_entropy_ref, wide(x), wide(c), wide(b), t, w, **kw)
    assert (hits.cpu() - ref_hits.cpu()).abs().max() <= hits_slack, (hits, ref_hits)
    names = ["loss", "grad x", "grad codebooks", "grad bias"][: len(ours)]
    if dtype == torch.float64:
        for out, r, name in zip(ours, ref, names, strict=True):
            assert_rel_close(out, r, bound=fp64_bound, name=name)
        return
    own, _ = _run(codebook_cross_entropy_ref, x, c, b, t, w, upcast=False, **kw)
    for out, r, o, name in zip(ours, ref, own, names, strict=True):
        assert torch.isfinite(out).all(), f"{name}: non-finite values (an element was left unwritten?)"
        if dtype == torch.float32:
            assert_rel_close(out, r, dtype=torch.float32, torch_out=o, name=name)
        else:  # half precision: at most 2x PyTorch's own error in that dtype
            assert_rel_close(out, r, bound=2 * assert_rel_close(o, r, dtype=dtype, name=f"torch {name}"), name=name)
    assert ours[0].dtype == torch.float32
    assert [g.dtype for g in ours[1:]] == [dtype] * (len(ours) - 1)


# ---------------------------------------------------------------------------------------------- the definition


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(("normalize", "bias"), [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape", [ALIGNED, ODD], ids=["aligned", "odd"])
def test_torch_backend_matches_reference(torch_backend, shape, normalize, bias, dtype):
    _check(shape, dtype, normalize=normalize, bias=bias)


def test_torch_backend_chunks(torch_backend, monkeypatch):
    """The torch backend bounds its logits by chunking over S; chunk edges must not show."""
    monkeypatch.setattr(ce_module, "_TORCH_CHUNK_ELEMENTS", 7 * 3 * 100)
    _check(ODD, torch.float64, normalize=True, bias=True)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions(torch_backend, reduction):
    x, c, b, t, _ = _inputs(ODD, torch.float32, ignore_every=3)
    leaves = [a.clone().requires_grad_() for a in (x, c, b)]
    loss = codebook_cross_entropy(*leaves[:2], t, bias=leaves[2], reduction=reduction)
    grads = torch.autograd.grad(loss, leaves)
    wide = [a.double().requires_grad_() for a in (x, c, b)]
    ref = codebook_cross_entropy_ref(*wide[:2], t, bias=wide[2], reduction=reduction)
    ref_grads = torch.autograd.grad(ref, wide)
    assert loss.shape == ()
    assert_rel_close(loss, ref, dtype=torch.float32, name="loss")
    for g, r in zip(grads, ref_grads, strict=True):
        assert_rel_close(g, r, bound=TOLERANCE[torch.float32])
    if reduction == "mean":
        total = codebook_cross_entropy(x, c, t, bias=b, reduction="sum")
        assert loss.item() == pytest.approx(total.item() / int((t != IGNORE).sum()), rel=1e-6)


def test_gradcheck(torch_backend):
    """The hand-written backward against finite differences (independent of the reference)."""
    x, c, b, t, _ = _inputs((5, 2, 7, 3), torch.float64, ignore_every=4)
    leaves = tuple(a.requires_grad_() for a in (x, c, b))
    fn = lambda x, c, b: codebook_cross_entropy(x, c, t, bias=b, reduction="none", temperature=0.5)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- edge cases


BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_all_ignored(backend, reduction):
    """Ignored rows get no loss and exactly zero gradient; an all-ignored batch gives 0, not NaN."""
    device = _device()
    x, c, b, t, _ = _inputs(ODD, torch.float32, device=device, ignore_every=0)
    t[5:9] = IGNORE  # whole rows
    t[:, 2] = IGNORE  # a whole codebook
    leaves = [a.clone().requires_grad_() for a in (x, c, b)]
    loss, hits = codebook_cross_entropy(*leaves[:2], t, bias=leaves[2], reduction=reduction, return_accuracy=True)
    gx, gc, gb = torch.autograd.grad(loss.sum(), leaves)
    assert torch.count_nonzero(gx[5:9]) == 0 and torch.count_nonzero(gx[:, 2]) == 0
    assert torch.count_nonzero(gc[2]) == 0 and torch.count_nonzero(gb[2]) == 0
    assert int(hits[2]) == 0
    if reduction == "none":
        assert torch.count_nonzero(loss[5:9]) == 0 and torch.count_nonzero(loss[:, 2]) == 0

    t_none = torch.full_like(t, IGNORE)
    leaves = [a.clone().requires_grad_() for a in (x, c, b)]
    loss, hits = codebook_cross_entropy(*leaves[:2], t_none, bias=leaves[2], reduction=reduction, return_accuracy=True)
    grads = torch.autograd.grad(loss.sum(), leaves)
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(hits) == 0
    for g in grads:
        assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_accuracy_ties_take_the_lowest_index(backend):
    """Duplicated codebook entries tie exactly: the lower index wins, like torch.argmax.

    Every vector has four entries of +-1 (norm 2): normalised entries are +-0.5 and every logit is exact in any
    summation order, so ties are exact in every implementation, and frequent (also between distinct entries).
    """
    device = _device()
    n_s, n_q, n_k, n_d = ODD
    half = n_k // 2

    def sparse_signs(*lead):
        v = torch.zeros(*lead, n_d)
        pos = torch.rand(*lead, n_d).argsort(-1)[..., :4]
        return v.scatter_(-1, pos, torch.randint(0, 2, (*lead, 4)).float() * 2 - 1)

    x, c = sparse_signs(n_s, n_q), sparse_signs(n_q, n_k)
    c[:, half:] = c[:, : n_k - half]  # entry k + half duplicates entry k (in another K tile)
    logits = torch.einsum("sqd,qkd->sqk", *(torch.nn.functional.normalize(a.double(), dim=-1) for a in (x, c)))
    best = logits.argmax(-1)
    assert bool((best < half).all())
    x, c = x.to(device), c.to(device)
    for targets, expected in ((best, n_s), (best + half, 0)):
        targets = targets.to(device)
        _, hits = codebook_cross_entropy(x, c, targets, return_accuracy=True)
        _, ref_hits = codebook_cross_entropy_ref(x.double(), c.double(), targets, return_accuracy=True)
        assert hits.tolist() == ref_hits.tolist() == [expected] * n_q


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_zero_vectors(backend):
    """Zero rows (norm below eps) give finite losses and the reference's gradients (the clamped branch)."""
    x, c, b, t, w = _inputs(ODD, torch.float64, ignore_every=7)
    x[3, 1] = 0.0
    c[0, 5] = 0.0
    t[4, 0] = 5
    ours, _ = _run(codebook_cross_entropy, x, c, b, t, w)
    ref, _ = _run(codebook_cross_entropy_ref, x, c, b, t, w)
    for out, r in zip(ours, ref, strict=True):
        assert_rel_close(out, r, bound=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_partial_gradients(backend):
    """Only the inputs that ask for a gradient get one; the others' work is skipped."""
    x, c, b, t, _ = _inputs(ODD, torch.float64, device=_device())
    cc = c.clone().requires_grad_()
    (gc,) = torch.autograd.grad(codebook_cross_entropy(x, cc, t, bias=b), (cc,))
    cr = c.clone().requires_grad_()
    (rc,) = torch.autograd.grad(codebook_cross_entropy_ref(x, cr, t, bias=b), (cr,))
    assert_rel_close(gc, rc, bound=1e-12)
    xx = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(codebook_cross_entropy(xx, c, t), (xx,))
    xr = x.clone().requires_grad_()
    (rx,) = torch.autograd.grad(codebook_cross_entropy_ref(xr, c, t), (xr,))
    assert_rel_close(gx, rx, bound=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_no_frames(backend):
    """S = 0 (no masked frame in the batch): zero loss, zero-size or zero gradients, no error."""
    x, c, b, t, _ = _inputs((0, 2, 20, 8), torch.float32, device=_device())
    leaves = [a.requires_grad_() for a in (x, c, b)]
    loss, hits = codebook_cross_entropy(*leaves[:2], t, bias=leaves[2], reduction="mean", return_accuracy=True)
    gx, gc, gb = torch.autograd.grad(loss, leaves)
    assert float(loss.detach()) == 0.0 and hits.tolist() == [0, 0]
    assert gx.shape == x.shape and torch.count_nonzero(gc) == 0 and torch.count_nonzero(gb) == 0


def test_bad_inputs():
    x, c, b, t, _ = _inputs(ODD, torch.float32)
    n_s, n_q, n_k, n_d = ODD
    cases = [
        (ValueError, "targets must lie in", dict(targets=torch.full_like(t, n_k))),
        (ValueError, "targets must lie in", dict(targets=torch.full_like(t, -1))),
        (TypeError, "targets must be int64", dict(targets=t.int())),
        (ValueError, "targets must be", dict(targets=t[:, :2])),
        (ValueError, r"x must be \(S, Q, D\)", dict(x=x[0])),
        (ValueError, "codebooks must be", dict(codebooks=c[:, :, :5])),
        (ValueError, "codebooks must be", dict(codebooks=c[:2])),
        (ValueError, "codebooks must hold", dict(codebooks=c[:, :0])),
        (TypeError, "codebooks must have x's dtype", dict(codebooks=c.double())),
        (TypeError, "x must be float16", dict(x=x.int(), codebooks=c.int())),
        (ValueError, "bias must be", dict(bias=b[:, :3])),
        (TypeError, "bias must have x's dtype", dict(bias=b.double())),
        (ValueError, "temperature must be a positive", dict(temperature=0.0)),
        (ValueError, "temperature must be a positive", dict(temperature=-0.1)),
        (ValueError, "reduction must be", dict(reduction="max")),
        (TypeError, "x must be a torch.Tensor", dict(x=x.numpy())),
    ]
    if torch.cuda.is_available():
        cases.append((ValueError, "codebooks must be on x's device", dict(codebooks=c.cuda())))
    args = dict(x=x, codebooks=c, targets=t, bias=b)
    for exc, match, change in cases:
        kw = {**args, **change}
        with pytest.raises(exc, match=match):
            codebook_cross_entropy(kw.pop("x"), kw.pop("codebooks"), kw.pop("targets"), **kw)
    # ignore_index itself is not out of range, whatever its value
    t2 = torch.where(t == IGNORE, 0, t)
    t2[0] = -1
    assert torch.isfinite(codebook_cross_entropy(x, c, t2, ignore_index=-1))


def test_custom_op_registration(torch_backend):
    """Fake kernels, schemas and autograd pass torch's own checks; torch.compile traces the op whole."""
    x, c, b, t, _ = _inputs((9, 2, 20, 8), torch.float32)
    args = (x.requires_grad_(), c.requires_grad_(), t, b.requires_grad_(), 0.1, True, IGNORE, "torch")
    torch.library.opcheck(torch.ops.mert_fast.codebook_ce_forward.default, args)
    fn = lambda x, c, b: codebook_cross_entropy(x, c, t, bias=b, reduction="mean", return_accuracy=True)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    loss, hits = compiled(x, c, b)
    ref_loss, ref_hits = fn(x, c, b)
    torch.testing.assert_close(loss, ref_loss)
    assert torch.equal(hits, ref_hits)


# ---------------------------------------------------------------------------------------------- Triton kernels


@pytest.mark.triton
@pytest.mark.parametrize(
    ("shape", "dtype", "normalize", "bias"),
    [
        (ODD, torch.float64, True, True),
        (ALIGNED, torch.float64, False, True),
        (ODD, torch.float32, True, False),
        (ALIGNED, torch.float32, True, True),
        (ODD, torch.float32, False, True),
        (ODD, torch.bfloat16, True, True),
        (ALIGNED, torch.bfloat16, False, False),
        (ODD, torch.float16, True, True),
    ],
)
def test_triton_matches_reference(triton_backend, monkeypatch, shape, dtype, normalize, bias):
    kernels = importlib.import_module("mert_fast.kernels.codebook_ce")
    calls = []
    for name in ("codebook_ce_forward", "codebook_ce_backward"):
        launch = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=launch, _n=name, **k: calls.append(_n) or _f(*a, **k))
    # On CPU the interpreter rounds float32 -> bfloat16 stores toward zero (GPUs round to nearest), which
    # doubles the gradients' rounding error; it stays within 2x PyTorch's own bf16 error.
    _check(shape, dtype, normalize=normalize, bias=bias, device=_device())
    assert calls == ["codebook_ce_forward", "codebook_ce_backward"], "the Triton kernels were not launched"


@pytest.mark.triton
def test_triton_tiles_cover_every_entry(triton_backend):
    """Shapes that are not multiples of the tiles: the poisoned (NaN) outputs are all overwritten."""
    kernels = importlib.import_module("mert_fast.kernels.codebook_ce")
    device = _device()
    x, c, b, t, _ = _inputs((33, 1, 17, 5), torch.float32, device=device)
    nx, nc = x.double().norm(dim=-1).float(), c.double().norm(dim=-1).float()
    kw = dict(scale=10.0, eps=1e-8, ignore_index=IGNORE)
    loss, lse, hits = kernels.codebook_ce_forward(x, c, t, b, nx, nc, **kw)
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all() and hits.shape == (1,)
    grad = torch.rand_like(loss)
    dx, dc, db = kernels.codebook_ce_backward(grad, x, c, t, b, nx, nc, lse, **kw)
    assert torch.isfinite(dx).all() and torch.isfinite(dc).all() and torch.isfinite(db).all()
    dx_only = kernels.codebook_ce_backward(grad, x, c, t, b, nx, nc, lse, need_c=False, **kw)
    assert dx_only[1] is None and dx_only[2] is None and torch.equal(dx_only[0], dx)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_d", [64, 128])
def test_cuda_benchmark_size(n_d, dtype):
    """MERT's head (S = 4096 masked frames, 8 x 1024 codes) against float64, in bounded memory."""
    shape = (4096, 8, 1024, n_d)
    _check(shape, dtype, normalize=True, bias=False, device="cuda", hits_slack=32)
    x, c, _, t, _ = _inputs(shape, dtype, bias=False, device="cuda")
    x.requires_grad_()
    c.requires_grad_()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = codebook_cross_entropy(x, c, t, reduction="mean")
    torch.autograd.grad(loss, (x, c))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    logits_bytes = 4096 * 8 * 1024 * 4
    inputs_bytes = (x.numel() + c.numel()) * x.element_size()
    assert extra < inputs_bytes + logits_bytes // 8, f"peak {extra / 2**20:.1f} MiB: are logits materialised?"


@pytest.mark.cuda
def test_cuda_fp16_mean_does_not_underflow():
    """A mean over 32k entries gives upstream gradients of 3e-5; float16 operands must not flush them to 0."""
    shape = (4096, 8, 1024, 64)
    x, c, _, t, _ = _inputs(shape, torch.float16, bias=False, device="cuda", ignore_every=0)
    xx, cc = x.clone().requires_grad_(), c.clone().requires_grad_()
    gx, gc = torch.autograd.grad(codebook_cross_entropy(xx, cc, t, reduction="mean"), (xx, cc))
    xr, cr = x.double().requires_grad_(), c.double().requires_grad_()
    rx, rc = torch.autograd.grad(codebook_cross_entropy_ref(xr, cr, t, reduction="mean"), (xr, cr))
    assert_rel_close(gx, rx, dtype=torch.float16, name="grad x")
    assert_rel_close(gc, rc, dtype=torch.float16, name="grad codebooks")
