"""MERT's acoustic loss, forward + backward: the fused codebook cross-entropy against fairseq's ``compute_nce``.

HuBERT / MERT: for each of Q = 8 codebooks, S masked frames projected to D = 64 (128 for the 330M head) are
scored against K = 1024 label embeddings by cosine similarity / 0.1; cross-entropy summed. Implementations:

* ``mert_fast`` (``triton`` on the GPU; ``torch``, its chunked PyTorch backend, everywhere);
* ``fairseq compute_nce`` (the baseline): per codebook, the ``(K + 1, S, D)`` tensor of [positive; negatives],
  ``torch.cosine_similarity`` over it in float32, ``/ temperature``, the positive masked out of the negatives,
  cross-entropy with target 0, as ``HubertModel.compute_nce`` and the HuBERT criterion do;
* ``materialised logits + F.cross_entropy``: normalise, one ``(S, Q, K)`` logits tensor, ``F.cross_entropy``.

Every implementation's loss and gradients are checked against the float64 definition before its time is taken.
Cases: S = 128 float32 on the CPU (always); S = 4096, D = 64 and 128, float32 and bfloat16 on the GPU, where
``peak_extra_mib`` (``torch.cuda.max_memory_allocated`` above what was allocated before the call) is recorded.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mert_fast.ops import codebook_cross_entropy
from mert_fast.ops.reference import codebook_cross_entropy_ref
from mert_fast.testing import TOLERANCE, rel_error

BASELINE = "fairseq compute_nce"
TEMPERATURE = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    frames: int  # S, masked frames
    dim: int  # D
    dtype: torch.dtype
    codebooks: int = 8  # Q
    codes: int = 1024  # K

    @property
    def label(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return f"{self.device} S{self.frames} Q{self.codebooks} K{self.codes} D{self.dim} {name} fwd+bwd"

    @property
    def flops(self) -> float:
        """Nominal FLOPs of one forward + backward: logits, logits again, dx and dc (four S x K x D products)."""
        return 8.0 * self.frames * self.codebooks * self.codes * self.dim


CASES = [
    Case("cpu", 128, 64, torch.float32),
    Case("cuda", 4096, 64, torch.float32),
    Case("cuda", 4096, 64, torch.bfloat16),
    Case("cuda", 4096, 128, torch.float32),
    Case("cuda", 4096, 128, torch.bfloat16),
]


_cache: dict[tuple, object] = {}


def inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded head outputs ``(S, Q, D)``, label embeddings ``(Q, K, D)`` and targets ``(S, Q)`` on the device."""
    key = ("inputs", case)
    if key not in _cache:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(case.frames, case.codebooks, case.dim, generator=g)
        c = torch.randn(case.codebooks, case.codes, case.dim, generator=g)
        t = torch.randint(0, case.codes, (case.frames, case.codebooks), generator=g)
        on = lambda a: a.to(device=case.device, dtype=case.dtype if a.is_floating_point() else a.dtype)
        _cache[key] = (on(x), on(c), on(t))
    return _cache[key]


def reference(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float64 definition's loss and gradients (on the case's device)."""
    key = ("reference", case)
    if key not in _cache:
        x, c, t = inputs(case)
        x64, c64 = x.double().requires_grad_(), c.double().requires_grad_()
        loss = codebook_cross_entropy_ref(x64, c64, t, temperature=TEMPERATURE)
        _cache[key] = (loss.detach(), *torch.autograd.grad(loss, (x64, c64)))
    return _cache[key]


def compute_nce_loss(x: torch.Tensor, codebooks: torch.Tensor, targets: torch.Tensor, temperature: float):
    """fairseq ``HubertModel.compute_nce`` + the HuBERT criterion's summed cross-entropy, codebook by codebook."""
    n_s = x.shape[0]
    loss = x.new_zeros((), dtype=torch.float32)
    for q in range(codebooks.shape[0]):
        proj_x, label_embs = x[:, q], codebooks[q]
        pos = torch.index_select(label_embs, 0, targets[:, q])  # (S, D)
        negs = label_embs.unsqueeze(1).expand(-1, n_s, -1)  # (K, S, D)
        neg_is_pos = (pos == negs).all(-1)
        both = torch.cat([pos.unsqueeze(0), negs], dim=0)  # (K + 1, S, D)
        logits = torch.cosine_similarity(proj_x.float(), both.float(), dim=-1).type_as(proj_x)
        logits /= temperature
        if neg_is_pos.any():
            logits[1:][neg_is_pos] = float("-inf")
        logits = logits.transpose(0, 1).float()  # (S, K + 1); the criterion takes float32 logits
        loss = loss + F.cross_entropy(logits, logits.new_zeros(n_s, dtype=torch.long), reduction="sum")
    return loss


def materialised_loss(x: torch.Tensor, codebooks: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Plain PyTorch: normalise, one ``(S, Q, K)`` logits tensor in the input dtype, ``F.cross_entropy``."""
    logits = torch.einsum("sqd,qkd->sqk", F.normalize(x, dim=-1, eps=1e-8), F.normalize(codebooks, dim=-1, eps=1e-8))
    logits = logits / temperature
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def mert_fast_loss(x: torch.Tensor, codebooks: torch.Tensor, targets: torch.Tensor, temperature: float):
    return codebook_cross_entropy(x, codebooks, targets, temperature=temperature)


def step_fn(case: Case, loss_fn):
    """One forward + backward: the loss and the gradients of x and the codebooks."""
    x, c, t = inputs(case)

    def fn():
        xx, cc = x.detach().requires_grad_(), c.detach().requires_grad_()
        loss = loss_fn(xx, cc, t, TEMPERATURE)
        return (loss.detach(), *torch.autograd.grad(loss, (xx, cc)))

    return fn


def check(benchmark, out, case: Case) -> None:
    bound = TOLERANCE[case.dtype]
    names = ("loss", "grad_x", "grad_codebooks")
    for value, ref, name in zip(out, reference(case), names, strict=True):
        err = rel_error(value, ref)
        benchmark.extra_info[f"rel_err_{name}_vs_float64_ref"] = err
        assert err <= bound, f"{benchmark.extra_info['implementation']}: {name} relative error {err:.3e} > {bound:.1e}"
    benchmark.extra_info["rel_err_bound"] = bound
    benchmark.extra_info["rel_err_vs_float64_ref"] = benchmark.extra_info["rel_err_loss_vs_float64_ref"]


def describe(measure, case: Case, implementation: str) -> None:
    measure.describe(
        "codebook_cross_entropy", case.label, implementation, baseline=implementation == BASELINE,
        frames=case.frames, codebooks=case.codebooks, codes=case.codes, dim=case.dim,
        dtype=str(case.dtype).removeprefix("torch."), temperature=TEMPERATURE,
    )  # fmt: skip


def record_rate(benchmark, measure, case: Case) -> None:
    median = measure.median_s()
    if median:
        benchmark.extra_info["nominal_gflop_per_s"] = case.flops / median / 1e9
        benchmark.extra_info["frames_per_s"] = case.frames / median


def run(benchmark, measure, case: Case, implementation: str, loss_fn, rounds: int | None = None) -> None:
    describe(measure, case, implementation)
    fn = step_fn(case, loss_fn)
    try:
        check(benchmark, fn(), case)  # also compiles the kernels before timing
        measure(fn, device=case.device, rounds=rounds)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{implementation} runs out of GPU memory on {case.label}")
    record_rate(benchmark, measure, case)


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_codebook_ce_mert_fast(benchmark, measure, use_backend, case, backend):
    use_backend(backend, case.device)
    run(benchmark, measure, case, f"mert_fast ({backend})", mert_fast_loss)


def test_codebook_ce_compute_nce(benchmark, measure, case):
    run(benchmark, measure, case, BASELINE, compute_nce_loss, rounds=5)


def test_codebook_ce_materialised(benchmark, measure, case):
    run(benchmark, measure, case, "materialised logits + F.cross_entropy", materialised_loss)
