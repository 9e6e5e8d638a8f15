"""mert_fast.ops.rvq against the float64 brute-force definition, FAISS and transformers' EnCodec quantiser."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch
import torch.nn.functional as F

from mert_fast.ops import nearest_code, rvq_decode, rvq_encode
from mert_fast.ops.reference import nearest_code_ref, rvq_code_gaps_ref, rvq_decode_ref, rvq_encode_ref
from mert_fast.testing import assert_rel_close

logger = logging.getLogger(__name__)

#: "A nearest code within rounding": the chosen code's float64 distance may exceed the minimum by at most
#: RTOL x the distance scale (see rvq_code_gaps_ref). Measured on random data: the nearest and second-nearest
#: codes differ by ~1e-2 of the scale (median) and by more than 2e-5 of it in 99.9% of rows, so a wrong code shows.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _randn(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64).to(dtype=dtype, device=device)


def _projections(q: int, d: int, dc: int, dtype=torch.float32) -> dict:
    """MuQ / DAC style factorised codes: Linear(D -> Dc) down and Linear(Dc -> D) up per stage, with biases."""
    return dict(
        in_proj=_randn(q, dc, d, dtype=dtype) / d**0.5,
        in_bias=0.1 * _randn(q, dc, dtype=dtype),
        out_proj=_randn(q, d, dc, dtype=dtype) / dc**0.5,
        out_bias=0.1 * _randn(q, d, dtype=dtype),
    )


def _use_backend(monkeypatch, request, backend: str) -> str:
    """Select the backend; returns the device its tensors go on (Triton: the GPU, else CPU via the interpreter)."""
    if backend == "triton":
        request.getfixturevalue("triton_backend")
        return "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setenv("MERT_FAST_BACKEND", backend)
    return "cpu"


def _check_codes(x, codes, codebooks, dtype, record_property=None, metric="l2", **proj) -> int:
    """Every stage's code is a nearest one within rounding (float64, with the residual the returned codes
    produce); returns (and records) how many rows differ from the float64 reference encode."""
    flat_x = x.reshape(-1, x.shape[-1]).double().cpu()
    flat_codes = codes.reshape(-1, codes.shape[-1]).cpu()
    proj = {k: v.double().cpu() for k, v in proj.items()}
    gap, scale = rvq_code_gaps_ref(flat_x, flat_codes, codebooks.double().cpu(), metric=metric, **proj)
    worst = float((gap / scale).max()) if gap.numel() else 0.0
    assert (gap >= 0).all()
    assert worst <= RTOL[dtype], f"a code is {worst:.2e} (relative) farther than the nearest one"
    ref, _ = rvq_encode_ref(flat_x, codebooks.double().cpu(), metric=metric, n_q=flat_codes.shape[1], **proj)
    mismatched = int((ref != flat_codes).any(1).sum())
    if record_property is not None:
        record_property("rows_differing_from_float64_reference", mismatched)
        record_property("worst_relative_gap", worst)
    logger.info("rows differing from the float64 reference: %d of %d", mismatched, flat_codes.shape[0])
    # differences are exact-tie or rounding-level near-ties (just checked); they must be rare
    assert mismatched <= max(1, flat_codes.shape[0] // 100)
    return mismatched


# ---------------------------------------------------------------------------------------------- the definition

SHAPES = [  # (N, D, K, Q): EnCodec's stage shape, an odd one, a single row
    (256, 128, 1024, 8),
    (37, 37, 1000, 3),
    (1, 37, 1000, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "d", "k", "q"), SHAPES)
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_encode_matches_reference(monkeypatch, request, record_property, backend, n, d, k, q, dtype):
    device = _use_backend(monkeypatch, request, backend)
    x, codebooks = _randn(n, d, dtype=dtype, device=device), _randn(q, k, d, dtype=dtype, device=device)
    codes, quantized = rvq_encode(x, codebooks)
    assert codes.shape == (n, q) and codes.dtype == torch.int64
    assert quantized.shape == x.shape and quantized.dtype == dtype
    mismatched = _check_codes(x, codes, codebooks, dtype, record_property)
    if dtype == torch.float64:
        assert mismatched == 0
    ref_quant = rvq_decode_ref(codes, codebooks)
    assert_rel_close(quantized, ref_quant, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_encode_half_inputs(torch_backend, dtype):
    """Half inputs are searched in float32 on their exact values; quantized is rounded once, like PyTorch's own."""
    x, codebooks = _randn(2, 50, 37, dtype=dtype), _randn(3, 200, 37, dtype=dtype)
    codes, quantized = rvq_encode(x, codebooks)
    assert codes.shape == (2, 50, 3) and quantized.dtype == dtype
    _check_codes(x.float(), codes, codebooks.float(), torch.float32)
    ref = rvq_decode_ref(codes, codebooks)
    assert_rel_close(quantized, ref, dtype=dtype, torch_out=ref.to(dtype))
    assert torch.equal(rvq_decode(codes, codebooks), quantized)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(("n", "d", "dc", "k", "q"), [(128, 64, 16, 256, 4), (33, 37, 13, 100, 3)])
def test_encode_with_projections(torch_backend, record_property, metric, n, d, dc, k, q):
    """MuQ's Mel-RVQ form: project the residual down, look up (cosine), project the raw code up, subtract."""
    x, codebooks, proj = _randn(n, d), _randn(q, k, dc), _projections(q, d, dc)
    codes, quantized = rvq_encode(x, codebooks, metric=metric, **proj)
    _check_codes(x, codes, codebooks, torch.float32, record_property, metric=metric, **proj)
    ref_quant = rvq_decode_ref(codes, codebooks, out_proj=proj["out_proj"], out_bias=proj["out_bias"])
    assert_rel_close(quantized, ref_quant, dtype=torch.float32)


def test_n_q_runs_the_first_stages(torch_backend):
    x, codebooks = _randn(40, 24), _randn(6, 64, 24)
    codes, quantized = rvq_encode(x, codebooks, n_q=2)
    full, _ = rvq_encode(x, codebooks)
    assert torch.equal(codes, full[:, :2])
    assert torch.equal(quantized, rvq_decode(codes, codebooks))


def test_torch_path_chunks_rows(torch_backend, monkeypatch):
    """Chunking over rows (bounded memory) changes no code: 7-row chunks against one chunk."""
    rvq_module = importlib.import_module("mert_fast.ops.rvq")
    x, books, plain, proj = _randn(45, 37), _randn(3, 100, 16), _randn(3, 100, 37), _projections(3, 37, 16)
    whole = [rvq_encode(x, books, metric="cosine", **proj), rvq_encode(x, plain), nearest_code(x, plain[0], k=4)]
    monkeypatch.setattr(rvq_module, "_CHUNK_CPU", 700)
    assert rvq_module._chunk_rows(x, 100) == 7
    chunked = [rvq_encode(x, books, metric="cosine", **proj), rvq_encode(x, plain), nearest_code(x, plain[0], k=4)]
    assert torch.equal(chunked[0][0], whole[0][0])
    assert_rel_close(chunked[0][1], whole[0][1], bound=1e-6)  # the projections' matmuls may round per chunk size
    for got, want in zip(chunked[1:], whole[1:], strict=True):  # gathers and adds only: exact
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_decode_of_encode_is_quantized(monkeypatch, backend, request):
    device = _use_backend(monkeypatch, request, backend)
    x, codebooks = _randn(3, 21, 29, device=device), _randn(4, 77, 29, device=device)
    codes, quantized = rvq_encode(x, codebooks)
    assert torch.equal(rvq_decode(codes, codebooks), quantized)  # same sum, same order, same rounding
    assert not torch.equal(rvq_decode(codes.flip(-1), codebooks), quantized)  # the check can fail
    proj = {k: v.to(device) for k, v in _projections(4, 29, 16).items()}
    books = _randn(4, 77, 16, device=device)
    codes, quantized = rvq_encode(x, books, metric="cosine", **proj)
    decoded = rvq_decode(codes, books, out_proj=proj["out_proj"], out_bias=proj["out_bias"])
    # the up-projection's matmul may round differently in the encode (fused kernel, row chunks) and the decode
    assert_rel_close(decoded, quantized, bound=1e-6)


# ---------------------------------------------------------------------------------------------- nearest_code


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize(("n", "d", "k"), [(128, 64, 512), (1, 37, 1000), (45, 37, 1000)])
def test_nearest_code_matches_reference(torch_backend, metric, n, d, k):
    x, book = _randn(n, d), _randn(k, d)
    idx, dist = nearest_code(x, book, metric=metric)
    assert idx.shape == dist.shape == (n,) and idx.dtype == torch.int64 and dist.dtype == torch.float32
    ref_idx, ref_dist = nearest_code_ref(x, book, metric=metric)
    # the float64 distance of every chosen code equals the minimum within rounding
    x64, c64 = x.double(), book.double()[idx]
    if metric == "l2":
        chosen = (x64 - c64).square().sum(-1)
    else:
        chosen = 1 - (F.normalize(x64, dim=1) * F.normalize(c64, dim=1)).sum(-1)
    scale = (x.double().norm(dim=1) + book.double().norm(dim=1).max()) ** 2 if metric == "l2" else 1.0
    assert ((chosen - ref_dist) <= RTOL[torch.float32] * scale).all()
    assert (idx != ref_idx).sum() <= max(1, n // 100)
    # returned distances are computed directly from the chosen codes: accurate to fp32 rounding
    assert_rel_close(dist, chosen, dtype=torch.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_code_top_k(torch_backend, metric):
    x, book = _randn(60, 33, dtype=torch.float64), _randn(500, 33, dtype=torch.float64)
    idx, dist = nearest_code(x, book, metric=metric, k=7)
    assert idx.shape == dist.shape == (60, 7)
    ref_idx, ref_dist = nearest_code_ref(x, book, metric=metric, k=7)
    assert torch.equal(idx, ref_idx)
    assert_rel_close(dist, ref_dist, dtype=torch.float64)
    assert (dist[:, 1:] >= dist[:, :-1]).all()


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ties_resolve_to_lowest_index(monkeypatch, request, backend, metric):
    """Exact duplicates (in one chunk and across chunks of the kernel's codebook stream) and, for cosine, the
    zero vector (every code at distance 1): the lowest index wins, as with torch.argmin."""
    device = _use_backend(monkeypatch, request, backend)
    book = _randn(700, 24, device=device)
    book[9] = book[3]
    book[650] = book[100]
    book[651] = book[100]
    x = torch.stack([book[3], book[650], book[9], book[651]])
    idx, dist = nearest_code(x, book, metric=metric)
    assert idx.tolist() == [3, 100, 3, 100]
    top, _ = nearest_code(x, book, metric=metric, k=3)
    assert top[1].tolist() == [100, 650, 651]
    if metric == "cosine":
        idx, dist = nearest_code(torch.zeros(2, 24, device=device), book, metric=metric)
        assert idx.tolist() == [0, 0] and torch.equal(dist.cpu(), torch.ones(2))
    codebooks = torch.stack([book, book.flip(0)])
    codes, _ = rvq_encode(x[:1], codebooks, metric=metric)
    assert codes[0, 0] == 3


# ---------------------------------------------------------------------------------------------- peers


@pytest.mark.parametrize(("n", "d", "k"), [(500, 64, 1024), (77, 37, 1000)])
def test_nearest_code_matches_faiss(n, d, k):
    """FAISS's exact indexes (GEMM, then select) give the same codes up to near-ties."""
    faiss = pytest.importorskip("faiss")
    x, book = _randn(n, d), _randn(k, d)
    for metric in ("l2", "cosine"):
        if metric == "l2":
            index = faiss.IndexFlatL2(d)
            index.add(book.numpy())
            _, found = index.search(x.numpy(), 4)
        else:
            index = faiss.IndexFlatIP(d)
            index.add(F.normalize(book, dim=1).numpy())
            _, found = index.search(F.normalize(x, dim=1).numpy(), 4)
        found = torch.from_numpy(found)
        for kk in (1, 4):
            idx, _ = nearest_code(x, book, metric=metric, k=kk)
            idx = idx.reshape(n, kk)
            differ = (idx != found[:, :kk]).any(1)
            assert differ.sum() <= max(1, n // 100)
            # where they differ, both answers are equally near within rounding (float64)
            for row in differ.nonzero()[:, 0].tolist():
                ours = nearest_code_ref(x[row : row + 1], book[idx[row]], metric=metric, k=kk)[1]
                theirs = nearest_code_ref(x[row : row + 1], book[found[row, :kk]], metric=metric, k=kk)[1]
                scale = (x[row].norm() + book.norm(dim=1).max()).double() ** 2 if metric == "l2" else 1.0
                assert torch.allclose(ours, theirs, rtol=0, atol=RTOL[torch.float32] * float(scale))


@pytest.fixture(scope="module")
def encodec_quantizer():
    """transformers' EnCodec residual quantiser from EncodecConfig() (32 x 1024 x 128), codebooks seeded randn
    (they are initialised to zeros, which any answer would match)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.EncodecConfig()
    quantizer = transformers.EncodecModel(config).quantizer.eval()
    g = torch.Generator().manual_seed(1234)
    for layer in quantizer.layers:
        layer.codebook.embed.copy_(torch.randn(layer.codebook.embed.shape, generator=g))
    return quantizer


def test_matches_transformers_encodec(torch_backend, record_property, encodec_quantizer):
    """EnCodec 24 kHz at 6 kbps: 8 stages of 1024 x 128, plain L2; frames as (B, T, D), theirs (B, D, T)."""
    n_q = encodec_quantizer.get_num_quantizers_for_bandwidth(6.0)
    assert n_q == 8
    codebooks = torch.stack([layer.codebook.embed for layer in encodec_quantizer.layers])
    x = _randn(2, 1000, 128)
    with torch.no_grad():
        theirs = encodec_quantizer.encode(x.transpose(1, 2), bandwidth=6.0).permute(1, 2, 0)
        their_quant = encodec_quantizer.decode(theirs.permute(2, 0, 1)).transpose(1, 2)
    codes, quantized = rvq_encode(x, codebooks, n_q=n_q)
    assert codes.shape == theirs.shape == (2, 1000, 8)
    used = sum(len(torch.unique(codes[..., s])) for s in range(n_q)) / (n_q * 1024)
    record_property("fraction_of_codes_used", used)
    assert used > 0.5
    flat, flat_theirs, flat_x = codes.reshape(-1, 8), theirs.reshape(-1, 8), x.reshape(-1, 128).double()
    differ = (flat != flat_theirs).any(1)
    record_property("rows_differing_from_transformers", int(differ.sum()))
    assert differ.sum() <= flat.shape[0] // 100
    for row in differ.nonzero()[:, 0].tolist():
        # at the first stage where they part, both codes are nearest within rounding of the same residual
        s = int((flat[row] != flat_theirs[row]).nonzero()[0])
        resid = flat_x[row] - sum(codebooks[t, flat[row, t]].double() for t in range(s))
        d = (resid - codebooks[s].double()).square().sum(-1)
        scale = (flat_x[row].norm() + codebooks[s].double().norm(dim=1).max()) ** 2
        assert abs(d[flat[row, s]] - d[flat_theirs[row, s]]) <= RTOL[torch.float32] * scale
    same = ~differ.reshape(2, 1000)
    assert_rel_close(quantized[same], their_quant[same], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- gradients


def test_gradcheck_encode(torch_backend):
    """quantized = sum of the chosen codes, projected up: gradient to the codebooks and the up-projection; the
    codes are piecewise constant, so x, in_proj and in_bias get zero."""
    x, books, proj = _randn(20, 6, dtype=torch.float64), _randn(3, 9, 4, dtype=torch.float64), _projections(3, 6, 4)
    proj = {k: v.double().requires_grad_() for k, v in proj.items()}
    x.requires_grad_()
    books.requires_grad_()

    def fn(x, books, in_proj, in_bias, out_proj, out_bias):
        kw = dict(in_proj=in_proj, in_bias=in_bias, out_proj=out_proj, out_bias=out_bias)
        return rvq_encode(x, books, metric="cosine", n_q=2, **kw)[1]

    args = (x, books, proj["in_proj"], proj["in_bias"], proj["out_proj"], proj["out_bias"])
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, fast_mode=True)
    grads = torch.autograd.grad(fn(*args).square().sum(), args, allow_unused=True)
    assert grads[1][2].abs().sum() == 0  # the third stage is not run
    assert grads[1][:2].abs().sum() > 0 and grads[5][2].abs().sum() == 0
    for g in (grads[0], grads[2], grads[3]):
        assert g is None or g.abs().sum() == 0


def test_gradcheck_nearest_code_and_decode():
    x, book = _randn(10, 5, dtype=torch.float64).requires_grad_(), _randn(8, 5, dtype=torch.float64).requires_grad_()
    for metric in ("l2", "cosine"):
        for k in (1, 3):
            assert torch.autograd.gradcheck(
                lambda a, b, m=metric, kk=k: nearest_code(a, b, metric=m, k=kk)[1], (x, book)
            )
    codes = torch.randint(0, 8, (7, 2))
    books = _randn(3, 8, 4, dtype=torch.float64).requires_grad_()
    w, b = _randn(3, 5, 4, dtype=torch.float64).requires_grad_(), _randn(3, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, w, b: rvq_decode(codes, c, out_proj=w, out_bias=b), (books, w, b))


def test_custom_op_registration(torch_backend):
    """The op passes torch's own checks (fake kernel, autograd, schema) and traces with torch.compile."""
    x, books = _randn(9, 8), _randn(2, 20, 4).requires_grad_()
    proj = _projections(2, 8, 4)
    args = (x, books, proj["in_proj"], proj["in_bias"], proj["out_proj"], proj["out_bias"], 2, True, True, "torch")
    torch.library.opcheck(torch.ops.mert_fast.rvq_encode.default, args)
    compiled = torch.compile(lambda *a: torch.ops.mert_fast.rvq_encode(*a), backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(*args), torch.ops.mert_fast.rvq_encode(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- Triton kernel

TRITON_CASES = [  # (N, D, Dc, K, Q, metric, projections, dtype)
    (1, 37, 37, 1000, 3, "l2", False, torch.float32),
    (64, 128, 128, 256, 4, "l2", False, torch.float32),
    (37, 40, 16, 100, 3, "cosine", True, torch.float32),
    (37, 40, 16, 100, 3, "l2", True, torch.float64),
    (50, 37, 37, 300, 2, "l2", False, torch.bfloat16),
]


@pytest.mark.triton
@pytest.mark.parametrize(("n", "d", "dc", "k", "q", "metric", "projected", "dtype"), TRITON_CASES)
def test_triton_kernel_matches_reference(
    triton_backend, monkeypatch, record_property, n, d, dc, k, q, metric, projected, dtype
):
    kernels = importlib.import_module("mert_fast.kernels.rvq")
    calls = []
    launch = kernels.rvq_encode_fused
    monkeypatch.setattr(kernels, "rvq_encode_fused", lambda *a, **kw: calls.append(1) or launch(*a, **kw))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, books = _randn(n, d, dtype=dtype, device=device), _randn(q, k, dc, dtype=dtype, device=device)
    proj = {k_: v.to(device=device, dtype=dtype) for k_, v in _projections(q, d, dc).items()} if projected else {}
    codes, quantized = rvq_encode(x, books, metric=metric, **proj)
    assert calls, "the Triton kernel was not launched"
    assert quantized.dtype == dtype
    search = torch.float64 if dtype == torch.float64 else torch.float32
    mismatched = _check_codes(x.to(search), codes, books.to(search), search, record_property, metric, **proj)
    if dtype == torch.float64:
        assert mismatched == 0
    out_proj = {"out_proj": proj["out_proj"], "out_bias": proj["out_bias"]} if projected else {}
    ref = rvq_decode_ref(codes.cpu(), books.cpu(), **{k_: v.cpu() for k_, v in out_proj.items()})
    assert_rel_close(quantized, ref, dtype=dtype, torch_out=ref.to(dtype))


@pytest.mark.triton
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("d", [768, 1024])
def test_triton_nearest_code_wide_features(triton_backend, monkeypatch, metric, d):
    """k-means on 768- or 1024-dim features: the kernel streams the feature dimension (12 or 16 chunks here)."""
    kernels = importlib.import_module("mert_fast.kernels.rvq")
    calls = []
    launch = kernels.rvq_encode_fused
    monkeypatch.setattr(kernels, "rvq_encode_fused", lambda *a, **kw: calls.append(1) or launch(*a, **kw))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, book = _randn(21, d, device=device), _randn(150, d, device=device)
    idx, dist = nearest_code(x, book, metric=metric)
    assert calls, "the Triton kernel was not launched"
    ref_idx, ref_dist = nearest_code_ref(x.cpu().double(), book.cpu().double(), metric=metric)
    x64, c64 = x.cpu().double(), book.cpu().double()[idx.cpu()]
    if metric == "l2":
        chosen = (x64 - c64).square().sum(-1)
        scale = (x64.norm(dim=1) + book.cpu().double().norm(dim=1).max()) ** 2
    else:
        chosen = 1 - (F.normalize(x64, dim=1) * F.normalize(c64, dim=1)).sum(-1)
        scale = 1.0
    # the chosen code is the nearest within fp32 rounding of the float64 distances, and almost always the same
    assert ((chosen - ref_dist) <= RTOL[torch.float32] * scale).all()
    assert (idx.cpu() != ref_idx).sum() <= 1


@pytest.mark.triton
def test_triton_writes_every_output_and_nothing_else(triton_backend):
    """Poisoned outputs: every code and quantized element is written; padding rows and columns are not."""
    kernels = importlib.import_module("mert_fast.kernels.rvq")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, d, q = 45, 37, 3
    x, books = _randn(n, d, device=device), _randn(q, 150, d, device=device)
    codes_buf = torch.full((n + 7, q), -1, dtype=torch.int64, device=device)
    quant_buf = torch.full((n, d + 5), float("nan"), device=device)
    codes, quant = kernels.rvq_encode_fused(x, books, codes_out=codes_buf[:n], quant_out=quant_buf[:, :d])
    assert (codes_buf[:n] >= 0).all() and (codes_buf[n:] == -1).all()
    assert torch.isfinite(quant_buf[:, :d]).all() and torch.isnan(quant_buf[:, d:]).all()
    _check_codes(x, codes, books, torch.float32)
    assert_rel_close(quant, rvq_decode_ref(codes.cpu(), books.cpu()), dtype=torch.float32)
    with pytest.raises(ValueError, match="precision"):
        kernels.rvq_encode_fused(x, books, precision="bf16")


# ---------------------------------------------------------------------------------------------- bad input


def _bad_cases():
    x, books = torch.zeros(4, 8), torch.ones(2, 16, 8)
    nan_x = x.clone()
    nan_x[2, 3] = float("nan")
    inf_books = books.clone()
    inf_books[1, 5, 0] = float("inf")
    return [
        (dict(x=nan_x), ValueError, r"x contains NaN or inf values \(first at row 2\)"),
        (dict(codebooks=inf_books), ValueError, "codebooks contains NaN or inf"),
        (dict(codebooks=torch.ones(2, 16, 7)), ValueError, "codebooks: without in_proj"),
        (dict(codebooks=torch.ones(2, 0, 8)), ValueError, "codebooks must hold at least one"),
        (dict(codebooks=torch.ones(16, 8)), ValueError, r"codebooks must be shaped \(Q, K, Dc\)"),
        (dict(x=torch.zeros(4, 8, dtype=torch.int32)), TypeError, "x must be floating point"),
        (dict(codebooks=books.to(torch.int64)), TypeError, "codebooks must be floating point"),
        (dict(x=[[0.0] * 8]), TypeError, "x must be a torch.Tensor"),
        (dict(codebooks=torch.ones(2, 16, 8, device="meta")), ValueError, "codebooks must be on x's device"),
        (dict(x=torch.zeros(8)), ValueError, r"x must be shaped \(N, D\) or \(B, T, D\)"),
        (dict(metric="dot"), ValueError, "metric must be one of"),
        (dict(n_q=3), ValueError, r"n_q must be an integer in \[1, 2\]"),
        (dict(n_q=0), ValueError, "n_q"),
        (dict(in_proj=torch.ones(2, 4, 9)), ValueError, r"in_proj must be shaped \(Q, Dc, D\)"),
        (dict(in_bias=torch.ones(2, 8)), ValueError, "in_bias needs in_proj"),
        (dict(out_proj=torch.ones(2, 8, 8), out_bias=torch.ones(2, 7)), ValueError, r"out_bias must be shaped"),
    ]


@pytest.mark.parametrize(("kwargs", "error", "match"), _bad_cases())
def test_bad_encode_input(kwargs, error, match):
    args = {"x": torch.zeros(4, 8), "codebooks": torch.ones(2, 16, 8), **kwargs}
    with pytest.raises(error, match=match):
        rvq_encode(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(x=torch.tensor([[0.0, float("inf")]])), ValueError, "x contains NaN or inf"),
        (dict(codebook=torch.ones(0, 2)), ValueError, r"codebook must hold at least one code \(K >= 1\)"),
        (dict(codebook=torch.ones(5, 3)), ValueError, "codebook must have x's dimension D = 2"),
        (dict(k=6), ValueError, r"k must be an integer in \[1, 5\]"),
        (dict(k=0), ValueError, "k must be"),
        (
            dict(x=torch.ones(3, 2, dtype=torch.float16), codebook=torch.ones(5, 2, dtype=torch.int8)),
            TypeError,
            "codebook",
        ),
        (dict(metric="L2"), ValueError, "metric"),
    ],
)
def test_bad_nearest_code_input(kwargs, error, match):
    args = {"x": torch.zeros(3, 2), "codebook": torch.ones(5, 2), **kwargs}
    with pytest.raises(error, match=match):
        nearest_code(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(codes=torch.tensor([[0, 16]])), IndexError, r"codes must lie in \[0, K\) = \[0, 16\); got 16"),
        (dict(codes=torch.tensor([[-1, 0]])), IndexError, "got -1"),
        (dict(codes=torch.zeros(3, 2)), TypeError, "codes must be an integer tensor"),
        (dict(codes=torch.zeros(3, 3, dtype=torch.int64)), ValueError, r"1 <= q <= Q = 2"),
        (dict(codes=torch.zeros(3, dtype=torch.int64)), ValueError, "codes must be shaped"),
        (dict(out_proj=torch.ones(2, 5, 7)), ValueError, r"out_proj must be shaped \(Q, D, Dc\)"),
        (dict(out_bias=torch.ones(2, 8)), ValueError, "out_bias needs out_proj"),
        (dict(codebooks=torch.ones(2, 16, 8, device="meta")), ValueError, "codebooks must be on x's device"),
    ],
)
def test_bad_decode_input(kwargs, error, match):
    args = {"codes": torch.zeros(3, 2, dtype=torch.int64), "codebooks": torch.ones(2, 16, 8), **kwargs}
    with pytest.raises(error, match=match):
        rvq_decode(**args)


def test_empty_and_explicit_backend(monkeypatch):
    codes, quant = rvq_encode(torch.zeros(0, 8), torch.ones(2, 16, 8))
    assert codes.shape == (0, 2) and quant.shape == (0, 8)
    monkeypatch.setenv("MERT_FAST_BACKEND", "cuda")  # the C++ backend needs CUDA tensors: an error, not a fallback
    with pytest.raises(RuntimeError, match="cuda"):
        rvq_encode(torch.zeros(2, 8), torch.ones(2, 16, 8))
    monkeypatch.setenv("MERT_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MERT_FAST_BACKEND"):
        rvq_encode(torch.zeros(2, 8), torch.ones(2, 16, 8))


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_encodec_shape(monkeypatch, record_property, backend):
    """The full EnCodec case on the GPU: every code nearest within fp32 rounding (checked on the CPU in float64
    for a slice of rows); triton and torch agree up to near-ties."""
    monkeypatch.setenv("MERT_FAST_BACKEND", backend)
    x, books = _randn(64, 375, 128), _randn(8, 1024, 128)
    codes, quantized = rvq_encode(x.cuda(), books.cuda())
    assert codes.is_cuda and codes.shape == (64, 375, 8)
    rows = slice(0, 4)
    _check_codes(x[rows], codes[rows].cpu(), books, torch.float32, record_property)
    assert torch.equal(rvq_decode(codes, books.cuda()), quantized)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_mel_rvq_shape(monkeypatch, record_property, backend):
    """MuQ's Mel-RVQ shape on the GPU: 512 -> 16 projections, cosine lookup, 8 x 1024 codes, 64 x 5 s at 25 Hz."""
    monkeypatch.setenv("MERT_FAST_BACKEND", backend)
    x, books, proj = _randn(8000, 512), _randn(8, 1024, 16), _projections(8, 512, 16)
    codes, quantized = rvq_encode(x.cuda(), books.cuda(), metric="cosine", **{k: v.cuda() for k, v in proj.items()})
    assert codes.shape == (8000, 8)
    _check_codes(x[:512], codes[:512].cpu(), books, torch.float32, record_property, metric="cosine", **proj)
    ref = rvq_decode_ref(codes.cpu(), books, out_proj=proj["out_proj"], out_bias=proj["out_bias"])
    assert_rel_close(quantized, ref, dtype=torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["tf32x3", "tf32"])
def test_cuda_reduced_precision_flip_rate(record_property, precision):
    """What TF32 search would cost: the fraction of rows whose codes differ from the ieee fp32 kernel, and how far
    (relative to the distance scale) its worst code is from the nearest. Recorded, not offered as an option."""
    kernels = importlib.import_module("mert_fast.kernels.rvq")
    x, books = _randn(4096, 128, device="cuda"), _randn(8, 1024, 128, device="cuda")
    exact, _ = kernels.rvq_encode_fused(x, books)
    fast, _ = kernels.rvq_encode_fused(x, books, precision=precision)
    flipped = float((exact != fast).any(1).float().mean())
    gap, scale = rvq_code_gaps_ref(x[:256].cpu(), fast[:256].cpu(), books.cpu())
    record_property(f"rows_flipped_{precision}", flipped)
    record_property(f"worst_relative_gap_{precision}", float((gap / scale).max()))
    logger.warning("%s search flips the codes of %.3f%% of rows", precision, 100 * flipped)
    _check_codes(x[:256], exact[:256], books, torch.float32)
