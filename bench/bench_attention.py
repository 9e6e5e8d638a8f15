"""Attention at MERT's shapes: mert_fast's flash attention against every SDPA backend and flash-attn.

Cases: MERT-95M (B=64, H=12, T=374, D=64, bf16), MERT-330M (H=16) and 30 s clips (B=8, H=12, T=2249) on the
GPU; a small float32 case (B=2, H=12, T=374) on the CPU so the suite runs anywhere. Each is timed forward
(inference, no autograd), backward (from a kept graph) and both, without and with a key padding mask (right
padding, lengths spread from T down to T/2, as in a batch of clips of different durations).

TFLOP/s use flash-attention's count: ``4 * B * H * T_q * T_k * D`` for the forward, 2.5x that for the backward,
on the padded shape (``tflops``); ``tflops_valid`` counts only real tokens (the work left after skipping
padding). Every implementation's output (and, for the passes with a backward, its gradients) is checked once
against a float32 (CPU: float64) reference before a number is posted; padded query rows are excluded, since
SDPA leaves them non-zero. The ``mert_fast`` rows record their speed-up over the best SDPA backend of the same
group and over SDPA's efficient backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mert_fast.ops import attention
from mert_fast.ops.reference import attention_ref
from mert_fast.testing import TOLERANCE, rel_error

SDPA_BACKENDS = {
    "sdpa-math": SDPBackend.MATH,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
}
BASELINE = "sdpa-math"  # present on every device
# mert_fast last: it reads the others' medians; mert_fast-auto is MERT_FAST_BACKEND=auto (the tuning table's choice)
IMPLEMENTATIONS = [*SDPA_BACKENDS, "flash-attn", "mert_fast-auto", "mert_fast"]
PASSES = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # FLOPs as multiples of the forward's


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    name: str
    batch: int
    heads: int
    t: int
    head_dim: int
    dtype: torch.dtype

    @property
    def label(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.device} {self.name} B{self.batch} H{self.heads} T{self.t} D{self.head_dim} {dtype}"

    def lengths(self) -> list[int]:
        """Right-padded clip lengths from T down to T / 2."""
        if self.batch == 1:
            return [self.t]
        return [round(self.t - (self.t // 2) * i / (self.batch - 1)) for i in range(self.batch)]


CASES = [
    Case("cpu", "95M 5s", 2, 12, 374, 64, torch.float32),
    Case("cuda", "95M 5s", 64, 12, 374, 64, torch.bfloat16),
    Case("cuda", "330M 5s", 64, 16, 374, 64, torch.bfloat16),
    Case("cuda", "95M 30s", 8, 12, 2249, 64, torch.bfloat16),
]
PARAMS = [
    pytest.param(case, p, padded, impl, id=f"{case.device}-{case.name}-{p}-{'padded' if padded else 'full'}-{impl}")
    for case in CASES
    for p in PASSES
    for padded in (False, True)
    for impl in IMPLEMENTATIONS
]

_cache: dict[tuple, object] = {}
_medians: dict[tuple, dict[str, float]] = {}


def _cached(key: tuple, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def inputs(case: Case, padded: bool):
    """Seeded q, k, v (leaves needing grad), the output gradient (0 on padded rows) and the mask or None."""

    def make():
        g = torch.Generator().manual_seed(0)
        shape = (case.batch, case.heads, case.t, case.head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(case.device, case.dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(shape, generator=g).to(case.device, case.dtype)
        mask = None
        if padded:
            lengths = torch.tensor(case.lengths(), device=case.device)
            mask = torch.arange(case.t, device=case.device)[None, :] < lengths[:, None]
            grad = grad * mask[:, None, :, None]
        return q, k, v, grad, mask

    return _cached(("inputs", case, padded), make)


def reference(case: Case, padded: bool):
    """Output and gradients in float64 (CPU) or float32 with TF32 off (GPU, SDPA's math path)."""

    def make():
        q, k, v, grad, mask = inputs(case, padded)
        wide = torch.float64 if case.device == "cpu" else torch.float32
        leaves = [t.detach().to(wide).requires_grad_() for t in (q, k, v)]
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            out = attention_ref(*leaves, key_padding_mask=mask, upcast=False)
            grads = torch.autograd.grad(out, leaves, grad.to(wide))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return out.detach(), [g.detach() for g in grads]

    return _cached(("reference", case, padded), make)


def _sdpa(backend: SDPBackend):
    def run(q, k, v, mask):
        attn_mask = None if mask is None else mask[:, None, None, :]
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    return run


def _mert_fast(q, k, v, mask):
    return attention(q, k, v, key_padding_mask=mask)


def implementation(name: str, case: Case, monkeypatch):
    if name in SDPA_BACKENDS:
        return _sdpa(SDPA_BACKENDS[name])
    if name == "flash-attn":
        if case.device != "cuda" or importlib.util.find_spec("flash_attn") is None:
            pytest.skip("flash-attn is not installed (or the case is not on a GPU)")
        # through mert_fast's flash-attn backend: flash_attn_func, or unpad + flash_attn_varlen_func + pad
        monkeypatch.setenv("MERT_FAST_BACKEND", "flash-attn")
        return _mert_fast
    if name == "mert_fast-auto":
        monkeypatch.setenv("MERT_FAST_BACKEND", "auto")
    else:
        monkeypatch.setenv("MERT_FAST_BACKEND", "triton" if case.device == "cuda" else "torch")
    return _mert_fast


def check(benchmark, fn, case: Case, padded: bool, with_grad: bool) -> None:
    """Output (and gradients) against the reference on real query rows; a backend that cannot run is skipped."""
    q, k, v, grad, mask = inputs(case, padded)
    try:
        out = fn(q, k, v, mask)
    except RuntimeError as exc:  # e.g. SDPA's "No available kernel" for this backend, dtype or mask
        pytest.skip(f"{benchmark.extra_info['implementation']} cannot run this case: {str(exc).splitlines()[0]}")
    ref_out, ref_grads = reference(case, padded)
    rows = (slice(None),) if mask is None else (mask[:, None, :, None].expand_as(out),)
    bound = TOLERANCE[case.dtype]
    pairs = [("out", out, ref_out)]
    if with_grad:
        pairs += list(zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad), ref_grads, strict=True))
    for name, a, r in pairs:
        sel = rows if name in ("out", "dq") else (slice(None),)
        err = rel_error(a[sel], r[sel])
        benchmark.extra_info[f"rel_err_{name}"] = err
        assert err <= bound, f"{benchmark.extra_info['implementation']}: {name} relative error {err:.3e} > {bound:.1e}"
    benchmark.extra_info["rel_err_bound"] = bound


def flops(case: Case, padded: bool, p: str) -> tuple[float, float]:
    """flash-attention's FLOP count of the pass: on the padded shape, and on the real tokens only."""
    per_pair = 4 * case.heads * case.head_dim * PASSES[p]
    lengths = case.lengths() if padded else [case.t] * case.batch
    return per_pair * case.batch * case.t * case.t, per_pair * sum(n * n for n in lengths)


def _label(impl: str, case: Case) -> str:
    if impl == "mert_fast-auto":
        return "mert_fast (auto)"
    return impl if impl != "mert_fast" else f"mert_fast ({'triton' if case.device == 'cuda' else 'torch'})"


@pytest.mark.parametrize(("case", "p", "padded", "impl"), PARAMS)
def test_attention(benchmark, measure, monkeypatch, device_gate, case, p, padded, impl):
    device_gate(case.device)
    group = f"attention {case.label} {p} {'padded' if padded else 'full'}"
    benchmark.group = group
    benchmark.extra_info.update(
        op="attention",
        case=f"{case.label} {p}" + (" padded" if padded else ""),
        implementation=_label(impl, case),
        baseline=impl == BASELINE,
        batch=case.batch,
        heads=case.heads,
        seq_len=case.t,
        head_dim=case.head_dim,
        dtype=str(case.dtype),
        padded=padded,
        **{"pass": p},
    )
    fn = implementation(impl, case, monkeypatch)
    q, k, v, grad, mask = inputs(case, padded)
    check(benchmark, fn, case, padded, with_grad=p != "fwd")

    if p == "fwd":

        def run():
            with torch.no_grad():
                return fn(q, k, v, mask)

    elif p == "bwd":
        out = fn(q, k, v, mask)

        def run():
            return torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    else:

        def run():
            return torch.autograd.grad(fn(q, k, v, mask), (q, k, v), grad)

    measure(run, device=case.device, warmup=3)
    median = measure.median_s()
    if not median:
        return
    total, valid = flops(case, padded, p)
    benchmark.extra_info.update(flop=total, tflops=total / median / 1e12, tflops_valid=valid / median / 1e12)
    peers = _medians.setdefault((case, p, padded), {})
    peers[impl] = median
    if impl == "mert_fast":
        sdpa = {name: t for name, t in peers.items() if name in SDPA_BACKENDS}
        if sdpa:
            best = min(sdpa, key=sdpa.get)
            benchmark.extra_info.update(best_sdpa=best, speedup_vs_best_sdpa=sdpa[best] / median)
        if "sdpa-efficient" in sdpa:
            benchmark.extra_info["speedup_vs_sdpa_efficient"] = sdpa["sdpa-efficient"] / median
        if "flash-attn" in peers:
            benchmark.extra_info["speedup_vs_flash_attn"] = peers["flash-attn"] / median
