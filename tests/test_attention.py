"""mert_fast.ops.attention against the float64 definition, PyTorch's own error, and its dropout stream."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mert_fast.ops import attention, dropout_keep_mask
from mert_fast.ops.reference import attention_ref
from mert_fast.testing import TOLERANCE, assert_rel_close

attn_module = importlib.import_module("mert_fast.ops.attention")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(batch, heads, t_q, t_k, head_dim, dtype, device="cpu", layout="bhtd"):
    """Fresh q, k, v leaves; ``layout="bthd"`` gives (B, H, T, D) views of (B, T, H, D) storage."""

    def make(t):
        if layout == "bthd":
            return torch.randn(batch, t, heads, head_dim, device=device).to(dtype).transpose(1, 2).requires_grad_()
        return torch.randn(batch, heads, t, head_dim, device=device).to(dtype).requires_grad_()

    return make(t_q), make(t_k), make(t_k)


def _padding(lengths, t, device="cpu"):
    return torch.arange(t, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


def _grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


def _ref_and_grads(q, k, v, grad, **kw):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*leaves, **kw)
    return ref, _grads(ref, leaves, grad.double())


def _torch_math(q, k, v, mask, scale=None):
    """PyTorch's own result in the input dtype: SDPA's math path with the op's padding rules."""
    with sdpa_kernel(SDPBackend.MATH):
        return attn_module._attention_torch(q, k, v, mask, None, 0.0, scale or 1.0 / math.sqrt(q.shape[-1]))


def _check_against_reference(q, k, v, mask):
    """Forward and the three gradients: fp32 within max(1e-5, 2x torch), fp16/bf16 within 2x torch."""
    out = attention(q, k, v, key_padding_mask=mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    grad = torch.randn_like(out)
    grads = _grads(out, (q, k, v), grad)
    ref, ref_grads = _ref_and_grads(q, k, v, grad, key_padding_mask=mask)
    mine = _torch_math(q, k, v, mask)
    mine_grads = _grads(mine, (q, k, v), grad)
    _assert_close_all((out, *grads), (ref, *ref_grads), (mine, *mine_grads))
    return out, grads


def _assert_close_all(outs, refs, torch_outs, names=("out", "dq", "dk", "dv")):
    """fp32 within max(1e-5, 2x torch's error); fp16/bf16 within 2x torch's error (all against float64)."""
    floor = TOLERANCE[torch.float32] if outs[0].dtype == torch.float32 else 0.0
    for name, a, r, t in zip(names, outs, refs, torch_outs, strict=True):
        assert torch.isfinite(a).all(), name
        assert_rel_close(a, r, bound=floor, torch_out=t, name=name)


@pytest.fixture
def poison(monkeypatch):
    """Fresh buffers from torch.empty/empty_like are NaN (floats) or 0xAB (integers) until a kernel writes them."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.is_floating_point():
            return t.fill_(float("nan"))
        return t.fill_(0xAB) if t.dtype == torch.uint8 else t.fill_(-7)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))


# --------------------------------------------------------------------------------- the kernel, interpreted


CASES = {
    # name: (B, H, T_q, T_k, D, lengths or None, layout)
    "aligned": (2, 2, 32, 32, 64, None, "bhtd"),
    "odd-d80-padded": (3, 2, 17, 17, 80, [17, 9, 1], "bhtd"),
    "cross-d32-strided": (2, 2, 17, 40, 32, [40, 23], "bthd"),
    "d128-padded": (2, 2, 40, 40, 128, [40, 33], "bhtd"),
    "mert-5s": (2, 1, 374, 374, 64, [374, 251], "bhtd"),
}


@pytest.mark.triton
@pytest.mark.parametrize(
    ("case", "dtype"),
    [(c, d) for c in CASES for d in DTYPES if c != "mert-5s" or d == torch.bfloat16],  # the slow one: MERT's dtype
    ids=str,
)
def test_kernel_matches_reference(triton_backend, poison, case, dtype):
    batch, heads, t_q, t_k, head_dim, lengths, layout = CASES[case]
    q, k, v = _inputs(batch, heads, t_q, t_k, head_dim, dtype, layout=layout)
    mask = None if lengths is None else _padding(lengths, t_k)
    _check_against_reference(q, k, v, mask)


@pytest.mark.triton
def test_kernel_single_token_and_holes(triton_backend, poison):
    """T = 1 (the output is v, dq and dk vanish up to rounding) and a mask with holes, T_q != T_k, an all-masked
    batch."""
    q, k, v = _inputs(2, 3, 1, 1, 64, torch.float32)
    out, (dq, dk, dv) = _check_against_reference(q, k, v, None)
    assert torch.equal(out, v.detach())
    assert dq.abs().max() < 1e-5 and dk.abs().max() < 1e-5
    q, k, v = _inputs(3, 2, 5, 33, 48, torch.float32)
    mask = torch.rand(3, 33) < 0.6
    mask[2] = False
    out, (dq, dk, dv) = _check_against_reference(q, k, v, mask)
    assert not out[2].any() and not dq[2].any() and not dk[2].any() and not dv[2].any()


BACKENDS = [pytest.param("triton", marks=pytest.mark.triton), "torch"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_padding_rows_output_zero_with_zero_gradient(backend, poison):
    """Several lengths, one of them 0: padded query rows and fully masked rows are 0 and get no gradient."""
    lengths = [40, 23, 1, 0]
    q, k, v = _inputs(4, 2, 40, 40, 32, torch.float32)
    mask = _padding(lengths, 40)
    out, (dq, dk, dv) = _check_against_reference(q, k, v, mask)
    pad = ~mask[:, None, :, None]
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not t.masked_select(pad).any(), f"{name} is non-zero on padding"
    real_rows = out.abs().sum(-1).masked_select(mask[:, None, :])
    assert (real_rows > 0).all()


@pytest.mark.triton
def test_right_padding_is_skipped_not_computed(triton_backend):
    """Padding is never read: NaN in padded q, k, v and output-gradient rows changes nothing."""
    q, k, v = _inputs(2, 2, 40, 40, 32, torch.float32)
    mask = _padding([40, 18], 40)
    with torch.no_grad():
        for t in (q, k, v):
            t[1, :, 18:] = float("nan")
    out = attention(q, k, v, key_padding_mask=mask)
    grad = torch.randn_like(out)
    grad[1, :, 18:] = float("nan")
    dq, dk, dv = _grads(out, (q, k, v), grad)
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
        assert not t[1, :, 18:].any()
    clean = [t.detach().clone() for t in (q, k, v)]
    for t in clean:
        t[1, :, 18:] = 0.0
    ref = attention_ref(*clean, key_padding_mask=mask)
    assert_rel_close(out, ref, bound=1e-5)


# --------------------------------------------------------------------------------------------- dropout


@pytest.mark.triton
def test_keep_mask_kernel_equals_torch_philox_and_keep_fraction(monkeypatch, poison):
    """The Triton generator and the PyTorch port of Philox agree bit for bit over 1.2e6 entries, and the keep
    fraction is within 4 sigma of 1 - p."""
    shape, p, seed = (2, 4, 384, 384), 0.1, 2**62 + 987654321
    monkeypatch.setenv("MERT_FAST_BACKEND", "triton")
    keep = dropout_keep_mask(seed, shape, p)
    assert keep.view(torch.uint8).max() <= 1  # every entry written
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    assert torch.equal(keep, dropout_keep_mask(seed, shape, p))
    n = keep.numel()
    assert n >= 1_000_000
    frac = keep.double().mean().item()
    assert abs(frac - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / n), frac


def test_keep_masks_differ_across_batch_head_seed(torch_backend):
    p = 0.5
    keep = dropout_keep_mask(7, (2, 2, 64, 64), p)
    assert not torch.equal(keep[0, 0], keep[1, 0]) and not torch.equal(keep[0, 0], keep[0, 1])
    assert not torch.equal(keep, dropout_keep_mask(8, (2, 2, 64, 64), p))
    assert torch.equal(keep, dropout_keep_mask(torch.tensor(7), (2, 2, 64, 64), p))
    frac = keep.double().mean().item()
    assert abs(frac - 0.5) <= 4 * math.sqrt(0.25 / keep.numel())
    assert dropout_keep_mask(7, (1, 1, 8, 8), 0.0).all()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropout_equals_reference_on_the_regenerated_mask(backend, dtype):
    p, seed = 0.3, torch.randint(0, 2**62, ())
    q, k, v = _inputs(2, 2, 17, 40, 64, dtype)
    mask = _padding([40, 29], 40)
    mask[0, 5] = False
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=p, seed=seed)
    grad = torch.randn_like(out)
    grads = _grads(out, (q, k, v), grad)
    keep = dropout_keep_mask(seed, (2, 2, 17, 40), p)
    assert 0 < keep.sum() < keep.numel()
    ref, ref_grads = _ref_and_grads(q, k, v, grad, key_padding_mask=mask, keep_mask=keep, dropout_p=p)
    # PyTorch's own error: the same definition evaluated in the input dtype
    mine = attention_ref(q, k, v, key_padding_mask=mask, keep_mask=keep, dropout_p=p, upcast=False)
    mine_grads = _grads(mine, (q, k, v), grad)
    _assert_close_all((out, *grads), (ref, *ref_grads), (mine, *mine_grads))
    # same seed, same output; another seed, another output
    again = attention(q, k, v, key_padding_mask=mask, dropout_p=p, seed=seed)
    assert torch.equal(out, again)
    other = attention(q, k, v, key_padding_mask=mask, dropout_p=p, seed=int(seed) + 1)
    assert not torch.equal(out, other)


@pytest.mark.triton
def test_checkpointed_gradients_equal_plain_ones_with_dropout(triton_backend):
    """Activation checkpointing recomputes the forward: the seed drawn from torch's generator and the
    regenerated mask give bit-identical gradients."""
    q, k, v = _inputs(2, 2, 24, 24, 32, torch.float32)
    mask = _padding([24, 13], 24)
    w = torch.randn(32, 32, requires_grad=True)

    def block(q, k, v, w):
        return (attention(q @ w, k, v, key_padding_mask=mask, dropout_p=0.25) ** 2).sum()

    torch.manual_seed(1234)
    plain = torch.autograd.grad(block(q, k, v, w), (q, k, v, w))
    torch.manual_seed(1234)
    loss = torch.utils.checkpoint.checkpoint(block, q, k, v, w, use_reentrant=False)
    ckpt = torch.autograd.grad(loss, (q, k, v, w))
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(4321)
    assert not torch.equal(torch.autograd.grad(block(q, k, v, w), (q,))[0], plain[0])


# ------------------------------------------------------------------------------------ compile, misc


@pytest.mark.triton
def test_torch_compile_fullgraph(triton_backend):
    """A block calling the op compiles with fullgraph=True and matches eager, gradients included."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(64, 192)
            self.out = torch.nn.Linear(64, 64)

        def forward(self, x, mask):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 2, 32).permute(2, 0, 3, 1, 4)
            y = attention(q, k, v, key_padding_mask=mask, dropout_p=0.1, seed=42, relax_alpha=32.0)
            return self.out(y.transpose(1, 2).reshape(b, t, 64))

    block = Block()
    x = torch.randn(2, 19, 64, requires_grad=True)
    mask = _padding([19, 11], 19)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager_out = block(x, mask)
    out = compiled(x, mask)
    torch.testing.assert_close(out, eager_out, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(out)
    torch.testing.assert_close(_grads(out, (x,), g), _grads(eager_out, (x,), g), rtol=1e-6, atol=1e-6)


@pytest.mark.triton
def test_custom_ops_pass_opcheck(triton_backend):
    q, k, v = _inputs(2, 2, 17, 17, 32, torch.float32)
    mask = _padding([17, 10], 17)
    seed = torch.tensor([5])
    args = (q, k, v, mask, seed, 0.2, 0.125)
    torch.library.opcheck(torch.ops.mert_fast.attention_fwd.default, args)
    out, lse = torch.ops.mert_fast.attention_fwd(*args)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, mask, seed, 0.2, 0.125)
    torch.library.opcheck(torch.ops.mert_fast.attention_bwd.default, bwd_args)


def test_relax_alpha_is_the_max_subtracted_softmax(torch_backend):
    """MERT-330M's relaxation softmax((A/a - max(A/a)) a) equals the softmax; the argument changes nothing."""
    q, k, v = _inputs(2, 2, 17, 17, 64, torch.float32)
    a = 32.0
    scores = (q.double() @ k.double().transpose(-1, -2)) / 8.0
    relaxed = torch.softmax((scores / a - (scores / a).amax(-1, keepdim=True)) * a, dim=-1) @ v.double()
    assert_rel_close(attention_ref(q, k, v), relaxed, bound=1e-12)
    assert torch.equal(attention(q, k, v, relax_alpha=a), attention(q, k, v))


def test_default_backend_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.delenv("MERT_FAST_BACKEND", raising=False)
    q, k, v = _inputs(2, 2, 9, 9, 32, torch.float32)
    mask = _padding([9, 4], 9)
    out = attention(q, k, v, key_padding_mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :]) * mask[:, None, :, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def _bad(**overrides):
    q, k, v = (torch.randn(2, 2, 8, 32) for _ in range(3))
    kw = dict(q=q, k=k, v=v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None, relax_alpha=None, seed=None)
    kw.update(overrides)
    return kw


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (_bad(q=torch.randn(2, 8, 32)), ValueError, "q must be 4-D"),
        (_bad(k=torch.randn(2, 2, 8, 32, dtype=torch.float16)), TypeError, "k must have q's dtype"),
        (_bad(q=torch.randn(2, 2, 8, 32, dtype=torch.float64)), TypeError, "q must be float16, bfloat16 or float32"),
        (_bad(k=torch.randn(2, 3, 8, 32)), ValueError, "k must be"),
        (_bad(v=torch.randn(2, 2, 7, 32)), ValueError, "v must have k's shape"),
        (_bad(**{n: torch.randn(2, 2, 8, 36) for n in "qkv"}), ValueError, "head_dim"),
        (_bad(**{n: torch.randn(2, 2, 8, 256) for n in "qkv"}), ValueError, "head_dim"),
        (_bad(key_padding_mask=torch.ones(2, 8)), TypeError, "key_padding_mask must be torch.bool"),
        (_bad(key_padding_mask=torch.ones(2, 7, dtype=torch.bool)), ValueError, r"key_padding_mask must be \(B, T_k\)"),
        (_bad(dropout_p=1.0), ValueError, "dropout_p must be a float in"),
        (_bad(softmax_scale=-1.0), ValueError, "softmax_scale must be a positive"),
        (_bad(relax_alpha=0.0), ValueError, "relax_alpha must be a positive"),
        (_bad(dropout_p=0.1, seed=1.5), TypeError, "seed must be an int"),
        (_bad(dropout_p=0.1, seed=-1), ValueError, r"seed must be in \[0, 2\*\*63\)"),
        (_bad(dropout_p=0.1, seed=torch.tensor([1, 2])), TypeError, "seed must be an int or a one-element"),
        (_bad(q=torch.randn(2, 2, 0, 32)), ValueError, "sequence lengths must be >= 1"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


def test_flash_attn_backend_needs_the_package(monkeypatch):
    if attn_module._flash_attn_installed():
        pytest.skip("flash_attn is installed")
    monkeypatch.setenv("MERT_FAST_BACKEND", "flash-attn")
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="flash_attn package is not installed"):
        attention(q, q, q)


# ------------------------------------------------------------------------------------------ GPU, full size


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("heads", "t"), [(12, 374), (16, 374), (12, 2249)])
def test_cuda_mert_sizes(triton_backend, dtype, heads, t):
    """MERT-95M/330M, 5 s and 30 s, a padded batch: forward and gradients within 2x PyTorch's own error."""
    lengths = [t, t - 1, t // 2 + 3, 17] if t < 1000 else [t, 1111]
    q, k, v = _inputs(len(lengths), heads, t, t, 64, dtype, device="cuda")
    _check_against_reference(q, k, v, _padding(lengths, t, "cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("head_dim", [32, 80, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_head_dims_and_fp32(triton_backend, dtype, head_dim):
    q, k, v = _inputs(3, 4, 374, 374, head_dim, dtype, device="cuda", layout="bthd")
    _check_against_reference(q, k, v, _padding([374, 200, 1], 374, "cuda"))


@pytest.mark.cuda
def test_cuda_dropout_stream_and_reference(triton_backend):
    shape, p = (4, 12, 374, 374), 0.1
    seed = torch.randint(0, 2**62, (1,), device="cuda")
    keep = dropout_keep_mask(seed, shape, p)
    assert torch.equal(keep, attn_module._keep_mask_torch(seed, shape, p))
    q, k, v = _inputs(4, 12, 374, 374, 64, torch.bfloat16, device="cuda")
    mask = _padding([374, 300, 120, 9], 374, "cuda")
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=p, seed=seed)
    grad = torch.randn_like(out)
    grads = _grads(out, (q, k, v), grad)
    ref, ref_grads = _ref_and_grads(q, k, v, grad, key_padding_mask=mask, keep_mask=keep, dropout_p=p)
    mine = attention_ref(q, k, v, key_padding_mask=mask, keep_mask=keep, dropout_p=p, upcast=False)
    mine_grads = _grads(mine, (q, k, v), grad)
    _assert_close_all((out, *grads), (ref, *ref_grads), (mine, *mine_grads))
