"""Residual-VQ encode: mert_fast against the torch stage loop, FAISS and transformers' EnCodec quantiser.

Cases (frames first, float32, seeded ``randn`` features and codebooks):

- ``encodec``: EnCodec 24 kHz at 6 kbps, 8 stages x 1024 codes x 128 dims, plain L2, 75 frames/s;
- ``mel-rvq``: MuQ's Mel-RVQ, 512-dim stacked mel frames at 25 frames/s, 8 stages each projecting to 16 dims,
  1024 codes, cosine lookup, projecting the raw code back up.

Each runs on the CPU at 4 x 5 s (always) and on the GPU at 64 x 5 s (24,000 EnCodec frames; when the bench
device is cuda). The baseline is the stage loop people write in PyTorch (EnCodec's / DAC's quantiser: the whole
``N x K`` distance matrix per stage, arg-max, gather, subtract). Every implementation's codes are checked before
its time is recorded: on the first 256 rows, at every stage, the chosen code must be a nearest one within fp32
rounding (float64, ``rvq_code_gaps_ref``); the fraction of rows whose codes differ from the baseline's (near-ties)
is recorded, with the relative error of the quantized output its codes decode to (float64) against the
baseline's. Effective TFLOP/s counts the search GEMMs (``2 N K Dc`` per stage) and the projections
(``4 N D Dc`` per stage). On the GPU, two extra rows time the Triton kernel with TF32 / 3xTF32 search and record
how many rows' codes that flips: measured, not offered as an option of the op. The ``cuda`` backend (CUDA C++ kernel,
``mert_fast._C``) is timed on the GPU next to ``triton`` when the extension is built.

The ``mert_fast (torch|cuda|triton)`` rows of a GPU run are what ``bench/tune.py`` writes into the tuning table
that ``MERT_FAST_BACKEND=auto`` reads (``mert_fast/ops/tuning.json``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mert_fast.ops import rvq_encode
from mert_fast.ops.reference import rvq_code_gaps_ref, rvq_decode_ref
from mert_fast.testing import rel_error

#: chosen code's distance minus the nearest one's, relative to the distance scale (see rvq_code_gaps_ref)
RTOL = 1e-5
CHECK_ROWS = 256
BASELINE = "torch stage loop"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # "encodec" or "mel-rvq"
    device: str
    clips: int
    seconds: float = 5.0

    @property
    def frame_rate(self) -> float:
        return 75.0 if self.name == "encodec" else 25.0

    @property
    def frames(self) -> int:
        return self.clips * round(self.seconds * self.frame_rate)

    @property
    def dim(self) -> int:
        return 128 if self.name == "encodec" else 512

    @property
    def code_dim(self) -> int:
        return 128 if self.name == "encodec" else 16

    @property
    def metric(self) -> str:
        return "l2" if self.name == "encodec" else "cosine"

    stages = 8
    codes = 1024

    @property
    def flops(self) -> float:
        search = 2.0 * self.frames * self.codes * self.code_dim
        proj = 4.0 * self.frames * self.dim * self.code_dim if self.name == "mel-rvq" else 0.0
        return self.stages * (search + proj)

    @property
    def label(self) -> str:
        shape = f"{self.stages}x{self.codes}x{self.code_dim}"
        if self.name == "mel-rvq":
            shape += f" proj {self.dim}->{self.code_dim} cosine"
        return f"{self.device} {self.name} {self.clips}x{self.seconds:g}s ({self.frames} frames, {shape}) fp32"


CASES = [Case(n, d, c) for n in ("encodec", "mel-rvq") for d, c in (("cpu", 4), ("cuda", 64))]


def case_id(case: Case) -> str:
    """The test id of a case (the ``case`` fixture, bench/conftest.py)."""
    return f"{case.name}-{case.device}"


@pytest.fixture(autouse=True)
def _true_fp32(true_fp32_matmul):
    """Every torch peer in true fp32 (the cases are fp32)."""


_cache: dict[tuple, object] = {}


def _cached(key: tuple, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def inputs(case: Case) -> dict:
    """``x`` ``(N, D)``, ``codebooks`` ``(Q, K, Dc)`` and (Mel-RVQ) the projections, on the case's device."""

    def make() -> dict:
        g = torch.Generator().manual_seed(0)
        out = {
            "x": torch.randn(case.frames, case.dim, generator=g),
            "codebooks": torch.randn(case.stages, case.codes, case.code_dim, generator=g),
        }
        if case.name == "mel-rvq":
            q, d, dc = case.stages, case.dim, case.code_dim
            out["in_proj"] = torch.randn(q, dc, d, generator=g) / d**0.5
            out["in_bias"] = 0.1 * torch.randn(q, dc, generator=g)
            out["out_proj"] = torch.randn(q, d, dc, generator=g) / dc**0.5
            out["out_bias"] = 0.1 * torch.randn(q, d, generator=g)
        return {k: v.to(case.device) for k, v in out.items()}

    return _cached(("inputs", case), make)


def _proj(case: Case) -> dict:
    return {k: v for k, v in inputs(case).items() if k not in ("x", "codebooks")}


def torch_stage_loop(x, codebooks, in_proj=None, in_bias=None, out_proj=None, out_bias=None, cosine=False):
    """The loop as EnCodec (transformers) and DAC write it: full distance matrix per stage, arg-max, subtract."""
    resid, quant, codes = x, torch.zeros_like(x), []
    for s in range(codebooks.shape[0]):
        embed = codebooks[s]
        z = resid if in_proj is None else F.linear(resid, in_proj[s], in_bias[s])
        if cosine:
            z, embed_n = F.normalize(z, dim=1), F.normalize(embed, dim=1)
        else:
            embed_n = embed
        dist = -(z.pow(2).sum(1, keepdim=True) - 2 * z @ embed_n.t() + embed_n.pow(2).sum(1)[None])
        idx = dist.max(dim=1).indices
        up = F.embedding(idx, embed)
        if out_proj is not None:
            up = F.linear(up, out_proj[s], out_bias[s])
        resid, quant = resid - up, quant + up
        codes.append(idx)
    return torch.stack(codes, 1), quant


def baseline_codes(case: Case) -> torch.Tensor:
    def make() -> torch.Tensor:
        with torch.no_grad():
            return torch_stage_loop(**inputs(case), cosine=case.metric == "cosine")[0]

    return _cached(("baseline", case), make)


def check(benchmark, codes: torch.Tensor, case: Case, *, bound: float | None = RTOL) -> None:
    """Every stage's code a nearest one within rounding on the first rows; record near-tie differences."""
    data = inputs(case)
    rows = slice(0, CHECK_ROWS)
    proj = {k: v.cpu() for k, v in _proj(case).items()}
    gap, scale = rvq_code_gaps_ref(
        data["x"][rows].cpu(), codes[rows].cpu(), data["codebooks"].cpu(), metric=case.metric, **proj
    )
    worst = float((gap / scale).max())
    base = baseline_codes(case).cpu()
    differ = float((codes.cpu() != base).any(1).float().mean())
    up = {k: v for k, v in proj.items() if k.startswith("out_")}
    books = data["codebooks"].cpu()
    info = benchmark.extra_info
    info["rel_err_vs_torch_stage_loop"] = rel_error(
        rvq_decode_ref(codes.cpu(), books, **up), rvq_decode_ref(base, books, **up)
    )
    info["worst_relative_gap"] = worst
    info["rows_differing_from_baseline"] = differ
    info["check_bound"] = bound
    if bound is not None:
        assert worst <= bound, f"{info['implementation']}: a code is {worst:.2e} (relative) from the nearest"


def describe(measure, case: Case, implementation: str) -> None:
    measure.describe(
        "rvq", case.label, implementation, baseline=implementation == BASELINE,
        frames=case.frames, clips=case.clips, clip_seconds=case.seconds, stages=case.stages, codes=case.codes,
        dim=case.dim, code_dim=case.code_dim, metric=case.metric, flop=case.flops,
    )  # fmt: skip


def record_speed(benchmark, measure, case: Case) -> None:
    measure.throughput(case.clips * case.seconds)
    median = measure.median_s()
    if median:
        benchmark.extra_info["frames_per_s"] = case.frames / median
    measure.record_tflops(case.flops)  # effective: counted FLOPs / median


# ---------------------------------------------------------------------------------------------- mert_fast


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
def test_rvq_mert_fast(benchmark, measure, use_backend, case, backend):
    use_backend(backend, case.device)
    describe(measure, case, f"mert_fast ({backend})")
    data = inputs(case)

    def fn():
        with torch.no_grad():
            return rvq_encode(data["x"], data["codebooks"], metric=case.metric, **_proj(case))

    codes, _ = fn()
    check(benchmark, codes, case)
    measure(fn, device=case.device, warmup=2)
    record_speed(benchmark, measure, case)


@pytest.mark.parametrize("precision", ["tf32x3", "tf32"])
def test_rvq_triton_reduced_precision(benchmark, measure, case, precision):
    """What TF32 search would buy and cost (flipped codes): measured, not offered."""
    if case.device != "cuda":
        pytest.skip("TF32 exists on GPUs only")
    from mert_fast.kernels.rvq import rvq_encode_fused

    describe(measure, case, f"mert_fast (triton, {precision} search; not offered)")
    data = inputs(case)
    books = data["codebooks"]

    def fn():
        return rvq_encode_fused(data["x"], books, cosine=case.metric == "cosine", precision=precision, **_proj(case))

    exact, _ = rvq_encode_fused(data["x"], books, cosine=case.metric == "cosine", **_proj(case))
    codes, _ = fn()
    benchmark.extra_info["rows_flipped_vs_ieee"] = float((codes != exact).any(1).float().mean())
    benchmark.extra_info["codes_flipped_vs_ieee"] = float((codes != exact).float().mean())
    check(benchmark, codes, case, bound=None)
    measure(fn, device=case.device, warmup=2)
    record_speed(benchmark, measure, case)


# ---------------------------------------------------------------------------------------------- peers


def test_rvq_torch_stage_loop(benchmark, measure, case):
    describe(measure, case, BASELINE)
    data = inputs(case)

    def fn():
        with torch.no_grad():
            return torch_stage_loop(**data, cosine=case.metric == "cosine")

    check(benchmark, fn()[0], case)
    measure(fn, device=case.device, warmup=2)
    record_speed(benchmark, measure, case)


def encodec_quantizer(device: str):
    """transformers' EncodecModel quantiser from EncodecConfig(), codebooks filled from the case's seeded ones."""

    def make():
        transformers = pytest.importorskip("transformers")
        quantizer = transformers.EncodecModel(transformers.EncodecConfig()).quantizer.eval()
        return quantizer.to(device)

    return _cached(("encodec", device), make)


def test_rvq_transformers_encodec(benchmark, measure, case):
    if case.name != "encodec":
        pytest.skip("transformers' EnCodec quantiser is plain L2 without projections")
    describe(measure, case, "transformers EncodecResidualVectorQuantizer (codes only)")
    quantizer = encodec_quantizer(case.device)
    data = inputs(case)
    with torch.no_grad():
        for layer, book in zip(quantizer.layers, data["codebooks"], strict=False):
            layer.codebook.embed.copy_(book)
    x = data["x"].T[None].contiguous()  # (1, D, N): its channels-first layout

    def fn():
        with torch.no_grad():
            return quantizer.encode(x, bandwidth=6.0)

    check(benchmark, fn()[:, 0].T, case)
    measure(fn, device=case.device, warmup=1)
    record_speed(benchmark, measure, case)


def _faiss_gpu(faiss) -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def test_rvq_faiss(benchmark, measure, case):
    """FAISS's exact flat index per stage (GEMM, then select), the residual updated between stages."""
    faiss = pytest.importorskip("faiss")
    on_gpu = case.device == "cuda"
    if on_gpu and not _faiss_gpu(faiss):
        pytest.skip("this faiss has no GPU support (faiss-cpu); FAISS CPU is timed in the CPU cases")
    describe(measure, case, f"FAISS {'GPU' if on_gpu else 'CPU'} IndexFlat{'IP' if case.metric == 'cosine' else 'L2'}")
    data = {k: v.cpu().numpy() for k, v in inputs(case).items()}
    cosine = case.metric == "cosine"
    indexes, resources = [], faiss.StandardGpuResources() if on_gpu else None
    for s in range(case.stages):
        book = data["codebooks"][s]
        if cosine:
            book = book / np.maximum(np.linalg.norm(book, axis=1, keepdims=True), 1e-12)
        index = faiss.IndexFlatIP(case.code_dim) if cosine else faiss.IndexFlatL2(case.code_dim)
        if on_gpu:
            index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.add(np.ascontiguousarray(book, dtype=np.float32))
        indexes.append(index)

    def fn():
        resid, codes = data["x"].copy(), []
        for s, index in enumerate(indexes):
            z = resid
            if cosine:
                z = resid @ data["in_proj"][s].T + data["in_bias"][s]
                z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            _, idx = index.search(np.ascontiguousarray(z, dtype=np.float32), 1)
            idx = idx[:, 0]
            up = data["codebooks"][s][idx]
            if cosine:
                up = up @ data["out_proj"][s].T + data["out_bias"][s]
            resid -= up
            codes.append(idx)
        return np.stack(codes, 1)

    check(benchmark, torch.from_numpy(fn()), case)
    measure(fn, device="cpu", warmup=1)
    record_speed(benchmark, measure, case)
