"""The CUDA C++ extension ``mert_fast._C``: ``csr_spmm`` against the Triton kernel and a float64 reference.

GPU tests are marked ``cuda`` (skipped without a GPU) and skip when the extension was not built; the CPU test
checks the single warning logged when it is absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import native_checks  # the bad-input cases of the C++ entries, shared with the child process
import pytest
import torch

import mert_fast
from mert_fast import _native
from mert_fast.testing import TOLERANCE, assert_rel_close

REPO = Path(__file__).resolve().parent.parent
DTYPES = [torch.float32, torch.float64]
# (rows, batch, n, conjugate columns): power-of-two and odd sizes, one row, batch 1 and a batch past one block
SHAPES = [(64, 8, 32, False), (37, 3, 29, True), (1, 1, 7, True), (513, 67, 41, True), (1000, 130, 250, False)]


@pytest.fixture
def ext():
    module = _native.native()
    if module is None:
        pytest.skip("mert_fast._C was not built (pip install --no-build-isolation . on a CUDA machine)")
    return module


def _random_csr(n_rows: int, n_cols: int, dtype: torch.dtype, device: str, density: float = 0.15):
    """A random complex CSR matrix with about a quarter of its rows empty; ``val`` as a real ``(nnz, 2)`` view."""
    mask = torch.rand(n_rows, n_cols) < density
    mask[torch.rand(n_rows) < 0.25] = False
    rows, col = mask.nonzero(as_tuple=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    val = torch.randn(col.numel(), 2, dtype=dtype)
    return crow.to(device), col.contiguous().to(device), val.to(device)


def _reference(crow, col, val, x, n_cols: int) -> torch.Tensor:
    """Dense float64 ``A @ [x, conj(x)][:n_cols]`` per batch item, as a real ``(B, R, 2)`` view on the CPU."""
    crow, col = crow.cpu(), col.cpu()
    n_rows = crow.numel() - 1
    xc = torch.view_as_complex(x.cpu().double().contiguous())
    xc = torch.cat([xc, xc.conj()], 1)[:, :n_cols]
    dense = torch.zeros(n_rows, n_cols, dtype=torch.complex128)
    rows = torch.repeat_interleave(torch.arange(n_rows), crow.diff())
    dense.index_put_((rows, col), torch.view_as_complex(val.cpu().double().contiguous()), accumulate=True)
    return torch.view_as_real(xc @ dense.T)


def _poison(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Free a NaN-filled block of the output's size so the caching allocator hands it to the kernel's output."""
    block = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    del block


# ------------------------------------------------------------------------------ bad inputs (first: no Triton)

# The bad-input cases of both entries live in native_checks.py, which also runs them: in a child process, so that a
# crash in an entry is a failed test with the case that crashed named, not a dead test run.


def _run_checks_child(*args: str, timeout: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("native_checks.py")), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = proc.stdout.splitlines()
    started = [line.removeprefix("start ") for line in lines if line.startswith("start ")]
    assert proc.returncode == 0 and lines and lines[-1] == "done", (
        f"the child process died (exit {proc.returncode}) during: {started[-1] if started else 'start-up'}\n"
        f"{proc.stderr[-4000:]}"
    )
    failures = [line for line in lines if line.startswith("fail ")]
    assert not failures, "\n".join(failures)
    passed = {line.removeprefix("ok ") for line in lines if line.startswith("ok ")}
    assert passed == set(started), sorted(set(started) - passed)
    assert {case.id for case in native_checks.CASES} <= passed


@pytest.mark.parametrize("entry", ["csr_spmm", "rvq_encode"])
def test_every_check_has_a_bad_input_case(entry):
    """Each message a check of checks.h can raise is expected by a case, and each case expects one of them."""
    declared = native_checks.declared_checks(entry)
    expects = [case.expect for case in native_checks.CASES if case.entry == entry]
    assert len(declared) >= (17 if entry == "csr_spmm" else 38)  # the parser still sees every check
    uncovered = [m for m in declared if not any(m.startswith(e) or e.startswith(m) for e in expects)]
    assert not uncovered, f"checks without a bad-input case: {uncovered}"
    stale = [e for e in expects if not any(m.startswith(e) or e.startswith(m) for m in declared)]
    assert not stale, f"cases for checks that do not exist: {stale}"


def test_declared_checks_sees_a_new_check():
    """The parser is not blind: a check added to the source shows up as a message to cover."""
    source = (REPO / "csrc" / "checks.h").read_text(encoding="utf-8")
    extra = source.replace(
        '  check_contiguous(x, "x");\n  TORCH_CHECK(crow.dim()',
        '  check_contiguous(x, "x");\n  TORCH_CHECK(n_cols < 99, "n_cols must be small");\n  TORCH_CHECK(crow.dim()',
    )
    assert extra != source
    assert "n_cols must be small" in native_checks.declared_checks("csr_spmm", extra)
    assert "n_cols must be small" not in native_checks.declared_checks("csr_spmm")


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("ninja") is None, reason="needs c++ and ninja")
def test_checks_on_the_cpu_host_build():
    """checks.h compiled for the CPU (the CPU as the entry's device, meta as the wrong one): every bad-input case
    raises its message, the valid calls pass, nothing crashes. Runs without a GPU and without nvcc."""
    build = Path(os.environ.get("MERT_FAST_CHECKS_BUILD", Path.home() / ".cache" / "mert_fast" / "checks_host"))
    _run_checks_child("cpu", str(build), timeout=900)


@pytest.mark.cuda
def test_native_entries_check_their_inputs(ext):
    """The built extension: every bad-input case of both entries raises RuntimeError with its message."""
    _run_checks_child("cuda", timeout=300)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_rows,batch,n,conj", SHAPES)
def test_csr_spmm_matches_reference_and_triton(ext, dtype, n_rows, batch, n, conj):
    from mert_fast.kernels.cqt import csr_spmm as triton_csr_spmm

    n_cols = 2 * n if conj else n
    crow, col, val = _random_csr(n_rows, n_cols, dtype, "cuda")
    x = torch.randn(batch, n, 2, dtype=dtype, device="cuda")
    ref = _reference(crow, col, val, x, n_cols)

    _poison((batch, n_rows, 2), dtype)
    out = ext.csr_spmm(crow, col, val, x, n_cols)
    assert out.shape == (batch, n_rows, 2) and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert_rel_close(out, ref, dtype=dtype, name="native csr_spmm")

    expected = triton_csr_spmm(crow, col, val, x, n_cols)
    assert_rel_close(out, expected.double(), bound=TOLERANCE[dtype], name="native vs triton")

    empty = (crow.diff() == 0).cpu()
    assert (out.cpu()[:, empty] == 0).all(), "empty rows must be written as zeros"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_csr_spmm_only_conjugate_columns(ext, dtype):
    # every entry reads conj(x): a sign error on the imaginary part cannot hide behind the direct columns
    n_rows, batch, n = 19, 5, 13
    crow, col, val = _random_csr(n_rows, n, dtype, "cuda", density=0.4)
    col = col + n
    x = torch.randn(batch, n, 2, dtype=dtype, device="cuda")
    out = ext.csr_spmm(crow, col, val, x, 2 * n)
    assert_rel_close(out, _reference(crow, col, val, x, 2 * n), dtype=dtype, name="conjugate columns")


@pytest.mark.cuda
def test_csr_spmm_empty_inputs(ext):
    crow, col, val = _random_csr(6, 8, torch.float32, "cuda")
    x = torch.randn(0, 8, 2, device="cuda")
    assert ext.csr_spmm(crow, col, val, x, 8).shape == (0, 6, 2)
    no_rows = torch.zeros(1, dtype=torch.int64, device="cuda")
    none = torch.empty(0, dtype=torch.int64, device="cuda")
    x = torch.randn(3, 8, 2, device="cuda")
    assert ext.csr_spmm(no_rows, none, torch.empty(0, 2, device="cuda"), x, 8).shape == (3, 0, 2)
    # rows but no entries: all zeros
    crow = torch.zeros(5, dtype=torch.int64, device="cuda")
    _poison((3, 4, 2), torch.float32)
    out = ext.csr_spmm(crow, none, torch.empty(0, 2, device="cuda"), x, 16)
    assert out.shape == (3, 4, 2) and (out == 0).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cqt_cuda_backend_matches_triton(ext, dtype, monkeypatch):
    """The op end to end (forward and the adjoint in backward) with MERT_FAST_BACKEND=cuda and =triton."""
    from mert_fast.ops import cqt

    audio = torch.randn(2, 24000 + 17, dtype=dtype, device="cuda")
    results = {}
    for backend in ("triton", "cuda"):
        monkeypatch.setenv("MERT_FAST_BACKEND", backend)
        a = audio.clone().requires_grad_(True)
        out = cqt(a, output="complex")
        (grad,) = torch.autograd.grad(torch.view_as_real(out).square().sum(), a)
        results[backend] = (out.detach(), grad)
    for got, expected, name in zip(results["cuda"], results["triton"], ("forward", "gradient"), strict=True):
        assert_rel_close(got, expected, bound=TOLERANCE[dtype], name=name)


def test_native_absent_warns_once(monkeypatch, caplog):
    """Without the extension, ``native()`` returns None and says so once through logging, not at every call."""
    # make the extension unimportable on any machine, even one where it was built
    monkeypatch.setitem(sys.modules, "mert_fast._C", None)
    monkeypatch.delattr(mert_fast, "_C", raising=False)
    _native.native.cache_clear()
    caplog.set_level(logging.WARNING, logger=_native.__name__)
    try:
        assert _native.native() is None
        assert _native.native() is None
    finally:
        _native.native.cache_clear()
    warnings = [r for r in caplog.records if r.name == _native.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "mert_fast._C" in warnings[0].getMessage()


# ---------------------------------------------------------------------------------------------- rvq_encode

RVQ_CASES = [  # (N, D, Dc, K, Q, metric, projections, dtype): the Triton kernel's cases and the full shapes
    (1, 37, 37, 1000, 3, "l2", False, torch.float32),
    (64, 128, 128, 256, 4, "l2", False, torch.float32),
    (37, 40, 16, 100, 3, "cosine", True, torch.float32),
    (37, 40, 16, 100, 3, "l2", True, torch.float64),
    (50, 37, 37, 300, 2, "l2", False, torch.bfloat16),
    (130, 200, 140, 129, 2, "cosine", True, torch.float16),
    (24000, 128, 128, 1024, 8, "l2", False, torch.float32),
    (8000, 512, 16, 1024, 8, "cosine", True, torch.float32),
]


def _rvq_inputs(n, d, dc, k, q, projected, dtype, device="cuda"):
    g = torch.Generator().manual_seed(n * 7919 + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    books = torch.randn(q, k, dc, generator=g, dtype=torch.float64)
    proj = {}
    if projected:
        proj = dict(
            in_proj=torch.randn(q, dc, d, generator=g, dtype=torch.float64) / d**0.5,
            in_bias=0.1 * torch.randn(q, dc, generator=g, dtype=torch.float64),
            out_proj=torch.randn(q, d, dc, generator=g, dtype=torch.float64) / dc**0.5,
            out_bias=0.1 * torch.randn(q, d, generator=g, dtype=torch.float64),
        )
    cast = {k_: v.to(device=device, dtype=dtype) for k_, v in proj.items()}
    return x.to(device=device, dtype=dtype), books.to(device=device, dtype=dtype), cast


@pytest.mark.cuda
@pytest.mark.parametrize(("n", "d", "dc", "k", "q", "metric", "projected", "dtype"), RVQ_CASES)
def test_rvq_cuda_backend_matches_reference_and_triton(ext, monkeypatch, n, d, dc, k, q, metric, projected, dtype):
    """MERT_FAST_BACKEND=cuda: every stage's code nearest within fp32 rounding (float64 check on a slice of rows),
    quantized equal to the float64 decode of the codes, codes equal to the Triton kernel's up to near-ties."""
    from mert_fast.ops import rvq_decode, rvq_encode
    from mert_fast.ops.reference import rvq_code_gaps_ref, rvq_decode_ref, rvq_encode_ref

    x, books, proj = _rvq_inputs(n, d, dc, k, q, projected, dtype)
    calls = []
    monkeypatch.setattr(ext, "rvq_encode", lambda *a, f=ext.rvq_encode: calls.append(1) or f(*a), raising=False)
    monkeypatch.setenv("MERT_FAST_BACKEND", "cuda")
    codes, quantized = rvq_encode(x, books, metric=metric, **proj)
    assert calls, "the CUDA kernel was not launched"
    assert codes.shape == (n, q) and codes.dtype == torch.int64 and quantized.dtype == dtype
    search = torch.float64 if dtype == torch.float64 else torch.float32
    rows = slice(0, 512)
    proj64 = {k_: v.double().cpu() for k_, v in proj.items()}
    x64, books64 = x[rows].to(search).double().cpu(), books.to(search).double().cpu()
    gap, scale = rvq_code_gaps_ref(x64, codes[rows].cpu(), books64, metric=metric, **proj64)
    assert (gap / scale).max() <= (1e-12 if dtype == torch.float64 else 1e-5)
    if dtype == torch.float64:
        ref, _ = rvq_encode_ref(x64, books64, metric=metric, **proj64)
        assert torch.equal(ref, codes[rows].cpu())
    up = {k_: v for k_, v in proj.items() if k_.startswith("out_")}
    ref_quant = rvq_decode_ref(codes.cpu(), books.cpu(), **{k_: v.cpu() for k_, v in up.items()})
    assert_rel_close(quantized, ref_quant, dtype=dtype, torch_out=ref_quant.to(dtype))
    if not projected:  # same sum, same order, same rounding
        assert torch.equal(rvq_decode(codes, books), quantized)
    monkeypatch.setenv("MERT_FAST_BACKEND", "triton")
    triton_codes, _ = rvq_encode(x, books, metric=metric, **proj)
    assert (triton_codes != codes).any(1).sum() <= max(1, n // 100)


@pytest.mark.cuda
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_rvq_cuda_ties_resolve_to_lowest_index(ext, monkeypatch, metric):
    from mert_fast.ops import nearest_code

    monkeypatch.setenv("MERT_FAST_BACKEND", "cuda")
    book = torch.randn(700, 24, device="cuda")
    book[9] = book[3]
    book[650] = book[100]  # across the kernel's 128-code column tiles
    book[651] = book[100]
    x = torch.stack([book[3], book[650], book[9], book[651]])
    idx, _ = nearest_code(x, book, metric=metric)
    assert idx.tolist() == [3, 100, 3, 100]
    if metric == "cosine":
        idx, _ = nearest_code(torch.zeros(2, 24, device="cuda"), book, metric=metric)
        assert idx.tolist() == [0, 0]


@pytest.mark.cuda
def test_rvq_cuda_writes_every_output(ext):
    """Outputs land in freed NaN / -1 blocks: every code and quantized element is written, codes in range."""
    n, d, k, q = 1000, 37, 150, 3
    x, books = torch.randn(n, d, device="cuda"), torch.randn(q, k, d, device="cuda")
    norms = books.square().sum(-1)
    _poison((n, d), torch.float32)
    block = torch.full((n, q), -1, dtype=torch.int64, device="cuda")
    del block
    codes, quant = ext.rvq_encode(x, books, books, norms, None, None, None, None, q, True)
    assert codes.shape == (n, q) and bool(((codes >= 0) & (codes < k)).all())
    assert quant.shape == (n, d) and bool(torch.isfinite(quant).all())
    codes2, empty = ext.rvq_encode(
        x, books, books[:2].contiguous(), norms[:2].contiguous(), None, None, None, None, 2, False
    )
    assert torch.equal(codes2, codes[:, :2]) and empty.shape == (0, d)
    none, _ = ext.rvq_encode(x[:0], books, books, norms, None, None, None, None, q, True)
    assert none.shape == (0, q)


def test_rvq_cuda_request_on_cpu_is_an_error(monkeypatch):
    """The C++ kernel exists for CUDA tensors only: an explicit cuda request on a CPU tensor is an error (never a
    silent fallback); auto runs the torch path there."""
    from mert_fast.ops import rvq

    x = torch.randn(3, 8)
    monkeypatch.setenv("MERT_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        rvq._backend(x, 16, 8, False, False)
    monkeypatch.setenv("MERT_FAST_BACKEND", "auto")
    assert rvq._backend(x, 16, 8, False, False) == "torch"
