"""The CUDA C++ extension ``mert_fast._C``: ``csr_spmm`` against the Triton kernel and a float64 reference.

GPU tests are marked ``cuda`` (skipped without a GPU) and skip when the extension was not built; the CPU test
checks the single warning logged when it is absent.
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

import mert_fast
from mert_fast import _native
from mert_fast.testing import TOLERANCE, assert_rel_close

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
def test_csr_spmm_checks_its_inputs(ext):
    crow, col, val = _random_csr(9, 10, torch.float32, "cuda", density=0.5)
    assert col.numel() > 0
    x = torch.randn(2, 5, 2, device="cuda")
    ext.csr_spmm(crow, col, val, x, 10)  # the valid call

    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        ext.csr_spmm(crow, col, val.half(), x.half(), 10)
    with pytest.raises(RuntimeError, match="val must have x's dtype"):
        ext.csr_spmm(crow, col, val.double(), x, 10)
    with pytest.raises(RuntimeError, match="crow must be"):
        ext.csr_spmm(crow.int(), col, val, x, 10)
    with pytest.raises(RuntimeError, match="col must be"):
        ext.csr_spmm(crow, col.int(), val, x, 10)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        ext.csr_spmm(crow.cpu(), col.cpu(), val.cpu(), x.cpu(), 10)
    with pytest.raises(RuntimeError, match="val must be on x's CUDA device"):
        ext.csr_spmm(crow, col, val.cpu(), x, 10)
    with pytest.raises(RuntimeError, match="crow must be on x's CUDA device"):
        ext.csr_spmm(crow.cpu(), col, val, x, 10)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ext.csr_spmm(crow, col, val, torch.randn(5, 2, 2, device="cuda").transpose(0, 1), 10)
    with pytest.raises(RuntimeError, match="val must have shape"):
        ext.csr_spmm(crow, col, val[:-1], x, 10)
    with pytest.raises(RuntimeError, match="x must have shape"):
        ext.csr_spmm(crow, col, val, torch.randn(2, 5, 3, device="cuda"), 10)
    with pytest.raises(RuntimeError, match="n_cols must be n or 2n"):
        ext.csr_spmm(crow, col, val, x, 11)


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
