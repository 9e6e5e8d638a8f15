"""Scaled dot-product attention with key padding masks and in-kernel dropout (flash attention).

``attention(q, k, v)`` is ``softmax(q k^T * scale + mask) v`` in the ``(B, H, T, D)`` layout of
``torch.nn.functional.scaled_dot_product_attention``, with two padding rules SDPA lacks: when ``T_q == T_k``
the key padding mask also marks padded query rows, which output 0 and receive zero gradient, and a row whose
keys are all masked outputs 0 (never NaN).

Backends (``MERT_FAST_BACKEND``):

- ``triton``: flash attention forward and backward (online softmax with fp32 statistics, log-sum-exp saved,
  probabilities recomputed in backward), right padding skipped rather than computed;
- ``torch``: ``scaled_dot_product_attention`` with the mask as a boolean ``attn_mask`` and padded query rows
  zeroed after it; with dropout, an explicit softmax with the same keep-mask as the kernel;
- ``flash-attn``: ``flash_attn_func`` / ``flash_attn_varlen_func`` when the package is installed (its dropout
  draws from its own generator; ``seed`` is ignored there).

``auto`` (the default) runs ``torch`` on the CPU. On CUDA it runs the fastest candidate that
``mert_fast/ops/tuning.json`` measured on this GPU in this call's bucket (:func:`tuning_key`): ``triton``, or the
``torch`` path pinned to one SDPA backend (cuDNN, flash or memory-efficient, tried first with SDPA's others behind
it), with the same masking and zeroed padded rows; elsewhere ``torch`` with SDPA's own dispatch. With dropout on CUDA
``auto`` runs ``triton`` (the fused counter-based mask; ``torch`` without triton).

Dropout is counter-based: the keep decision of entry ``(b, h, i, j)`` is Philox 4x32-10 of the seed and the
counter ``((b * H + h) * T_q + i) * T_k + j``, so backward (and recomputation under activation checkpointing)
regenerates the mask instead of storing it, and :func:`dropout_keep_mask` reproduces it for tests.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mert_fast._checks import check_float, check_int, is_number
from mert_fast.ops._backend import bucket, select_backend, triton_importable, tuned_backend

__all__ = ["attention", "dropout_keep_mask", "HEAD_DIMS"]

logger = logging.getLogger(__name__)

#: Head dimensions the kernels support: any multiple of 8 from 16 to 128 (MERT: 64; also 32, 80, 128).
HEAD_DIMS = tuple(range(16, 129, 8))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SEED_HIGH = 2**63
_DROPOUT_BITS = 24  # as in mert_fast.kernels.attention.DROPOUT_BITS

# ------------------------------------------------------------------------------------------- the kernel op


@torch.library.custom_op("mert_fast::attention_fwd", mutates_args=())
def _attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: ``(out (B, H, Tq, D), lse (B, H, Tq) fp32, base 2)``."""
    from mert_fast.kernels.attention import attention_forward

    return attention_forward(q, k, v, key_padding_mask, seed, dropout_p, softmax_scale)


@_attention_fwd.register_fake
def _(q, k, v, key_padding_mask, seed, dropout_p, softmax_scale):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("mert_fast::attention_bwd", mutates_args=())
def _attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: ``(dq, dk, dv)``."""
    from mert_fast.kernels.attention import attention_backward

    return attention_backward(grad_out, q, k, v, out, lse, key_padding_mask, seed, dropout_p, softmax_scale)


@_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, key_padding_mask, seed, dropout_p, softmax_scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _fwd_setup(ctx, inputs, output):
    q, k, v, key_padding_mask, seed, dropout_p, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, seed)
    ctx.dropout_p, ctx.softmax_scale = dropout_p, softmax_scale
    ctx.mark_non_differentiable(lse)


def _fwd_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask, seed = ctx.saved_tensors
    dq, dk, dv = torch.ops.mert_fast.attention_bwd(
        grad_out.contiguous(), q, k, v, out, lse, key_padding_mask, seed, ctx.dropout_p, ctx.softmax_scale
    )
    return dq, dk, dv, None, None, None, None


_attention_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)

# ----------------------------------------------------------------------------------- dropout keep-mask


_PHILOX_M32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mulhilo32(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * x`` for a 32-bit constant ``a`` and int64 ``x`` holding uint32 values."""
    p_lo = a * (x & 0xFFFF)  # < 2**48: no int64 overflow
    p_hi = a * (x >> 16)
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (mid >> 32), mid & _PHILOX_M32


def _philox_uint32(seed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.randint(seed, offsets)`` (Philox 4x32-10, first word) in int64 tensor arithmetic."""
    k0 = seed & _PHILOX_M32
    k1 = (seed >> 32) & _PHILOX_M32
    c0 = offsets & _PHILOX_M32
    c1 = (offsets >> 32) & _PHILOX_M32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    for _ in range(10):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _PHILOX_M32
        k1 = (k1 + _PHILOX_KEY_B) & _PHILOX_M32
    return c0


def _keep_mask_torch(seed: torch.Tensor, shape: tuple[int, int, int, int], dropout_p: float) -> torch.Tensor:
    batch, heads, t_q, t_k = shape
    thresh = round(dropout_p * 2**_DROPOUT_BITS)
    seed = seed.reshape(()).to(torch.int64)
    cols = torch.arange(t_k, device=seed.device, dtype=torch.int64)
    rows = torch.arange(batch * heads * t_q, device=seed.device, dtype=torch.int64)
    keep = torch.empty((batch * heads * t_q, t_k), device=seed.device, dtype=torch.bool)
    step = max(1, (1 << 22) // t_k)  # bounds the int64 temporaries
    for r0 in range(0, rows.numel(), step):
        offsets = rows[r0 : r0 + step, None] * t_k + cols
        keep[r0 : r0 + step] = (_philox_uint32(seed, offsets) >> (32 - _DROPOUT_BITS)) >= thresh
    return keep.view(batch, heads, t_q, t_k)


def dropout_keep_mask(
    seed: int | torch.Tensor,
    shape: tuple[int, int, int, int],
    dropout_p: float,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The dropout keep-mask :func:`attention` applies for ``seed``, regenerated from the same stream.

    Args:
        seed: the ``seed`` given to :func:`attention` (int in ``[0, 2**63)`` or a one-element integer tensor).
        shape: ``(B, H, T_q, T_k)``.
        dropout_p: the dropout probability in ``[0, 1)``.
        device: where to build it (default: the seed tensor's device, else the CPU). With
            ``MERT_FAST_BACKEND=triton`` (on CUDA, or on the CPU under ``TRITON_INTERPRET=1``) the Triton generator
            kernel builds it; else (``auto`` too) a bit-exact PyTorch port of the same Philox stream.

    Returns:
        ``(B, H, T_q, T_k)`` bool, True where the probability is kept (and scaled by ``1 / (1 - dropout_p)``).
        Every entry is kept with probability ``1 - round(dropout_p * 2**24) / 2**24``.
    """
    if len(shape) != 4 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape must be four positive ints (B, H, T_q, T_k); got {shape!r}")
    _check_dropout_p(dropout_p)
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    seed_t = _seed_tensor(seed, torch.device(device))
    backend = _backend(seed_t, "torch")
    if backend == "triton":
        from mert_fast.kernels.attention import keep_mask

        return keep_mask(seed_t, *shape, dropout_p)
    return _keep_mask_torch(seed_t, shape, dropout_p)


# ----------------------------------------------------------------------------------------- other backends


def _sdpa_order(name: str) -> list[SDPBackend]:
    """SDPA's backends with ``name`` first and the others after it in SDPA's own order, for inputs it refuses."""
    first = _SDPA[name]
    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    return [first, *(b for b in order if b != first)]


def _attention_torch(
    q, k, v, key_padding_mask, seed, dropout_p: float, scale: float, sdpa: str | None = None
) -> torch.Tensor:
    batch, heads, t_q, _ = q.shape
    t_k = k.shape[2]
    attn_mask = row_ok = None
    if key_padding_mask is not None:
        any_key = key_padding_mask.any(dim=1, keepdim=True)  # (B, 1)
        # a batch with no real key attends to every key (no NaN anywhere) and is zeroed below
        keys = key_padding_mask | ~any_key
        attn_mask = keys[:, None, None, :]
        row_ok = any_key[:, None, :, None]
        if t_q == t_k:
            row_ok = row_ok & key_padding_mask[:, None, :, None]
    if dropout_p == 0.0 and sdpa is not None:
        with sdpa_kernel(_sdpa_order(sdpa), set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    elif dropout_p == 0.0:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    else:
        keep = _keep_mask_torch(seed, (batch, heads, t_q, t_k), dropout_p)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1) * keep * (1.0 / (1.0 - dropout_p))
        out = torch.matmul(probs, v.float()).to(q.dtype)
    if row_ok is not None:
        out = torch.where(row_ok, out, out.new_zeros(()))
    return out


def _attention_flash_attn(q, k, v, key_padding_mask, dropout_p: float, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, D)
    if key_padding_mask is None:
        return flash_attn_func(qt, kt, vt, dropout_p=dropout_p, softmax_scale=scale).transpose(1, 2)
    batch, t_q, heads, head_dim = qt.shape
    t_k = kt.shape[1]
    seqlens_k = key_padding_mask.sum(dim=1, dtype=torch.int32)
    cu_k = F.pad(seqlens_k.cumsum(0, dtype=torch.int32), (1, 0))
    k_idx = key_padding_mask.reshape(-1).nonzero().squeeze(1)
    max_k = max(int(seqlens_k.max()), 1)
    if t_q == t_k:
        q_idx, cu_q, max_q = k_idx, cu_k, max_k
    else:
        q_idx = torch.arange(batch * t_q, device=q.device)
        cu_q = torch.arange(0, (batch + 1) * t_q, t_q, device=q.device, dtype=torch.int32)
        max_q = t_q
    packed = flash_attn_varlen_func(
        qt.reshape(batch * t_q, heads, head_dim)[q_idx],
        kt.reshape(batch * t_k, heads, head_dim)[k_idx],
        vt.reshape(batch * t_k, heads, head_dim)[k_idx],
        cu_q,
        cu_k,
        max_q,
        max_k,
        dropout_p=dropout_p,
        softmax_scale=scale,
    )
    out = packed.new_zeros((batch * t_q, heads, head_dim)).index_copy(0, q_idx, packed)
    out = out.view(batch, t_q, heads, head_dim).transpose(1, 2)
    no_key = (seqlens_k == 0)[:, None, None, None]
    return torch.where(no_key, out.new_zeros(()), out)


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# ------------------------------------------------------------------------------------------------- checks


def _check_dropout_p(dropout_p) -> None:
    check_float("dropout_p", dropout_p, min=0.0, max=1.0, exclusive_max=True, expected="a float in [0, 1)")


def _seed_tensor(seed, device: torch.device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool:
            raise TypeError(
                f"seed must be an int or a one-element integer tensor; got a {seed.dtype} tensor of shape "
                f"{tuple(seed.shape)}"
            )
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    expected = "an int, a one-element integer tensor or None"
    check_int("seed", seed, integral=True, expected=expected, error=TypeError, show_type=True)
    if not 0 <= seed < _SEED_HIGH:
        raise ValueError(f"seed must be in [0, 2**63); got {seed}")
    return torch.tensor([int(seed)], dtype=torch.int64, device=device)


def _check_inputs(q, k, v, key_padding_mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, D); got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32; got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}; got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}; got {t.device}")
    batch, heads, t_q, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != head_dim:
        raise ValueError(f"k must be (B={batch}, H={heads}, T_k, D={head_dim}) like q; got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}; got {tuple(v.shape)}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim (q.shape[-1]) must be a multiple of 8 from 16 to 128; got {head_dim}")
    if t_q < 1 or k.shape[2] < 1:
        raise ValueError(f"sequence lengths must be >= 1; got T_q={t_q}, T_k={k.shape[2]}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a bool tensor or None; got {type(key_padding_mask).__name__}")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be torch.bool (True = real key); got {key_padding_mask.dtype}")
        if key_padding_mask.shape != (batch, k.shape[2]):
            raise ValueError(
                f"key_padding_mask must be (B, T_k) = ({batch}, {k.shape[2]}); got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask must be on q's device {q.device}; got {key_padding_mask.device}")


def _backend(tensor: torch.Tensor, auto: str) -> str:
    return select_backend("attention", tensor, ("triton", "torch", "flash-attn"), auto)


#: ``auto`` on CUDA without dropout where the tuning table has no measurement for this GPU and bucket: ``torch``,
#: SDPA's own dispatch.
SAFE_DEFAULT = "torch"

#: ``auto`` on CUDA with dropout (no SDPA backend draws the op's counter-based mask, and no timing of it is in the
#: table): the Triton kernel, which generates the mask in registers (it ran MERT-95M training steps on the H200), when
#: triton is importable; else ``torch``, whose softmax materialises the (B, H, T_q, T_k) probabilities and builds
#: the keep-mask with elementwise PyTorch ops.
DROPOUT_DEFAULT = "triton"

#: The SDPA backends ``auto`` can pin when the tuning table measured one fastest (masks and padded rows as ``torch``).
_SDPA = {
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def tuning_key(
    dtype: torch.dtype, batch: int, heads: int, t_q: int, t_k: int, head_dim: int, masked: bool, train: bool
) -> str:
    """The tuning-table bucket of a call: dtype, power-of-two ceilings' exponents of B x H and of the longer
    sequence, head_dim, whether a padding mask is given, and whether a backward follows (``train``) or not
    (``infer``): ``bfloat16/bh10/t9/d64/full/train`` for MERT-95M's 64 x 12 heads x 374 frames in training."""
    name = str(dtype).removeprefix("torch.")
    mask = "masked" if masked else "full"
    return (
        f"{name}/bh{bucket(batch * heads)}/t{bucket(max(t_q, t_k))}/d{head_dim}/{mask}/{'train' if train else 'infer'}"
    )


def _available() -> tuple[str, ...]:
    cudnn = ("sdpa-cudnn",) if torch.backends.cudnn.is_available() else ()
    return (*cudnn, "sdpa-flash", "sdpa-efficient") + (("triton",) if triton_importable() else ())


def _auto(q, k, v, key_padding_mask, dropout_p: float) -> str:
    """``auto``'s backend: ``torch`` on the CPU; on CUDA with dropout :data:`DROPOUT_DEFAULT`; else the fastest
    measured candidate of this bucket, or :data:`SAFE_DEFAULT` where none was measured."""
    if not q.is_cuda:
        return "torch"
    if dropout_p > 0.0:
        return DROPOUT_DEFAULT if triton_importable() else "torch"
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    batch, heads, t_q, head_dim = q.shape
    key = tuning_key(q.dtype, batch, heads, t_q, k.shape[2], head_dim, key_padding_mask is not None, train)
    return tuned_backend("attention", q.device, key, _available()) or SAFE_DEFAULT


# ------------------------------------------------------------------------------------------------- the op


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    relax_alpha: float | None = None,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * softmax_scale + mask) v`` with padding masks and dropout: flash attention.

    Args:
        q: ``(B, H, T_q, D)`` float16, bfloat16 or float32; ``D`` a multiple of 8 in [16, 128] (MERT: 64).
        k, v: ``(B, H, T_k, D)``, q's dtype and device. Any strides (a unit last stride avoids a copy).
        key_padding_mask: ``(B, T_k)`` bool, True marks real keys; None attends to every key. When
            ``T_q == T_k`` it also marks query rows: padded rows output 0 and get zero gradient. Rows whose keys
            are all masked output 0.
        dropout_p: probability of dropping each attention weight (the kept ones are scaled by
            ``1 / (1 - dropout_p)``), from a counter-based generator keyed on ``(seed, b, h, i, j)``; backward and
            recomputation under activation checkpointing regenerate the same mask.
        softmax_scale: scale of the scores; default ``1 / sqrt(D)``.
        relax_alpha: MERT-330M's attention relaxation ``softmax((A / a - max(A / a)) * a)``, which is exactly the
            max-subtracted softmax every backend computes (the kernel's online max is that subtraction); accepted
            for drop-in use and changes nothing. Must be positive when given.
        seed: dropout seed, an int in ``[0, 2**63)`` or a one-element integer tensor (its 64-bit pattern is
            used); None draws one from torch's generator on q's device (so ``torch.manual_seed`` and activation
            checkpointing reproduce it). Ignored without dropout, and by the ``flash-attn`` backend.

    Returns:
        ``(B, H, T_q, D)`` in q's dtype (a new contiguous tensor); differentiable with respect to q, k and v.
    """
    _check_inputs(q, k, v, key_padding_mask)
    _check_dropout_p(dropout_p)
    head_dim = q.shape[-1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif not is_number(softmax_scale):
        raise TypeError(f"softmax_scale must be a positive float or None; got {type(softmax_scale).__name__}")
    elif not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be a positive finite float; got {softmax_scale}")
    if relax_alpha is not None:
        expected = "a positive number or None"
        check_float("relax_alpha", relax_alpha, min=0, exclusive_min=True, finite=True, expected=expected)
    dropout_p = float(dropout_p)
    softmax_scale = float(softmax_scale)

    backend = _backend(q, _auto(q, k, v, key_padding_mask, dropout_p))
    if backend == "flash-attn":
        if not _flash_attn_installed():
            raise RuntimeError("attention: MERT_FAST_BACKEND=flash-attn but the flash_attn package is not installed")
        if not q.is_cuda or q.dtype == torch.float32:
            raise RuntimeError(
                f"attention: flash-attn needs float16/bfloat16 CUDA tensors; got {q.dtype} on {q.device}"
            )
        return _attention_flash_attn(q, k, v, key_padding_mask, dropout_p, softmax_scale)

    seed_t = None
    if dropout_p > 0.0:
        if seed is None:
            seed_t = torch.randint(0, _SEED_HIGH - 1, (1,), device=q.device, dtype=torch.int64)
        else:
            seed_t = _seed_tensor(seed, q.device)
    if backend == "triton":
        out, _ = _attention_fwd(q, k, v, key_padding_mask, seed_t, dropout_p, softmax_scale)
        return out
    sdpa = backend if backend in _SDPA else None
    return _attention_torch(q, k, v, key_padding_mask, seed_t, dropout_p, softmax_scale, sdpa)
