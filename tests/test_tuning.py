"""``MERT_FAST_BACKEND=auto`` on CUDA: the committed tuning table, and each op's choice from it.

No GPU is needed: the ops' dispatch functions read only a tensor's metadata, so they are called with stand-ins
that say ``is_cuda``, and the GPU's name and the optional backends (extension, triton, cuDNN) are patched.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from mert_fast.ops import _backend

# the modules (mert_fast.ops exports the functions attention and cqt under the same names)
attention = importlib.import_module("mert_fast.ops.attention")
cqt = importlib.import_module("mert_fast.ops.cqt")
rvq = importlib.import_module("mert_fast.ops.rvq")
codebook_ce = importlib.import_module("mert_fast.ops.codebook_ce")

REPO = Path(__file__).resolve().parent.parent
H200 = "NVIDIA H200"


def _table() -> dict:
    return json.loads((REPO / "mert_fast" / "ops" / "tuning.json").read_text(encoding="utf-8"))


def _cuda(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, requires_grad: bool = False):
    """A stand-in for a CUDA tensor: the metadata the dispatch reads."""
    numel = 1
    for n in shape:
        numel *= n
    return types.SimpleNamespace(
        is_cuda=True,
        shape=torch.Size(shape),
        dtype=dtype,
        device=torch.device("cuda", 0),
        requires_grad=requires_grad,
        numel=lambda: numel,
    )


@pytest.fixture
def gpu(monkeypatch):
    """Set the GPU's name, and which optional candidates this process has; returns the setter."""
    monkeypatch.delenv("MERT_FAST_BACKEND", raising=False)
    _backend.tuning_table.cache_clear()

    def set_gpu(name: str = H200, *, native: bool = True, triton: bool = True, cudnn: bool = True) -> None:
        monkeypatch.setattr(_backend, "device_name", lambda device: name)
        monkeypatch.setattr("mert_fast._native.native", lambda: object() if native else None)
        monkeypatch.setattr(rvq, "_native_built", lambda: native)
        for module in (rvq, cqt, attention, codebook_ce):
            monkeypatch.setattr(module, "triton_importable", lambda: triton)
        monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: cudnn)

    yield set_gpu
    getattr(_backend.tuning_table, "cache_clear", lambda: None)()  # a test may have replaced the table


# ------------------------------------------------------------------------------------------- the table itself


def test_table_is_measured_with_provenance():
    """Every op of every GPU says where its numbers come from; the H200's are the 2026-12-04 run of 4edd634."""
    table = _table()
    assert table["format"] == _backend.TUNING_FORMAT
    assert table["devices"], "the table holds no measurement"
    for key, device in table["devices"].items():
        assert key == _backend.device_key(device["gpu"])
        for op, data in device["ops"].items():
            prov = data["provenance"]
            assert all(prov.get(field) for field in ("gpu", "torch", "triton", "commit", "date", "source")), (op, prov)
            assert prov["gpu"] == device["gpu"]
            assert data["buckets"], op
            for entry in data["buckets"].values():
                assert entry["ms"] and all(t > 0 for t in entry["ms"].values())
    h200 = table["devices"]["nvidia-h200"]["ops"]
    assert set(h200) == {"attention", "cqt", "rvq"}
    for data in h200.values():
        prov = data["provenance"]
        assert (prov["torch"], prov["triton"], prov["commit"], prov["date"]) == (
            "2.11.0+cu130",
            "3.6.0",
            "4edd634",
            "2026-12-04",
        )


def _subsets(candidates: list[str]):
    for n in range(1, len(candidates) + 1):
        yield from itertools.combinations(candidates, n)


def test_auto_never_picks_a_candidate_slower_than_pytorch():
    """For every measured bucket and every set of candidates that can run, auto's choice is at least as fast as
    each of PyTorch's own paths measured there, and is the fastest of those that can run."""
    table = _table()
    checked = 0
    for device in table["devices"].values():
        for op, data in device["ops"].items():
            pytorch = _backend.PYTORCH_CANDIDATES[op]
            for key, entry in data["buckets"].items():
                times = entry["ms"]
                base = [times[c] for c in pytorch if c in times]
                assert base, f"{op} {key}: no PyTorch path measured, nothing to hold auto to"
                for available in _subsets(sorted(times)):
                    choice = _backend.fastest(times, available, op)
                    assert choice in available
                    assert times[choice] == min(times[c] for c in available)
                    if any(c in pytorch for c in available):
                        assert times[choice] <= min(times[c] for c in pytorch if c in available), (op, key, choice)
                    checked += 1
    assert checked > 20


def test_fastest_prefers_pytorch_on_a_tie_and_ignores_unmeasured():
    times = {"triton": 1.0, "torch": 1.0, "cuda": 2.0}
    assert _backend.fastest(times, ("triton", "torch", "cuda"), "rvq") == "torch"
    assert _backend.fastest(times, ("triton", "cuda"), "rvq") == "triton"
    assert _backend.fastest({"triton": 0.5}, ("torch", "cuda"), "rvq") is None


# ------------------------------------------------------------------------------------- each op's dispatch


def test_rvq_auto_on_the_h200(gpu):
    """EnCodec and Mel-RVQ: the torch path was fastest on the H200 (Triton spilled at EnCodec: 72 ms)."""
    gpu(H200)
    encodec, mel = _cuda((24000, 128)), _cuda((8000, 512))
    assert rvq._backend(encodec, 1024, 128, False, False) == "torch"
    assert rvq._backend(mel, 1024, 16, True, True) == "torch"
    assert rvq._backend(_cuda((64, 375, 128)), 1024, 128, False, False) == "torch"  # (B, T, D): same bucket
    gpu(H200, native=False, triton=False)
    assert rvq._backend(encodec, 1024, 128, False, False) == "torch"


def test_rvq_auto_follows_the_table(gpu, monkeypatch):
    """Where a measurement shows another candidate faster, auto runs it; unmeasured buckets run the default."""
    key = rvq.tuning_key(torch.float32, "l2", False, 24000, 128, 128, 1024)
    table = {
        "format": _backend.TUNING_FORMAT,
        "devices": {
            "nvidia-h100-80gb-hbm3": {
                "ops": {"rvq": {"buckets": {key: {"ms": {"torch": 3.0, "cuda": 1.0, "triton": 2.0}}}}}
            }
        },
    }
    monkeypatch.setattr(_backend, "tuning_table", lambda: table)
    gpu("NVIDIA H100 80GB HBM3")
    assert rvq._backend(_cuda((24000, 128)), 1024, 128, False, False) == "cuda"
    assert rvq._backend(_cuda((17000, 100)), 600, 100, False, False) == "cuda"  # same buckets
    gpu("NVIDIA H100 80GB HBM3", native=False)
    assert rvq._backend(_cuda((24000, 128)), 1024, 128, False, False) == "triton"
    assert rvq._backend(_cuda((24000, 128), torch.float64), 1024, 128, False, False) == "torch"  # other bucket
    assert rvq._backend(_cuda((40000, 128)), 1024, 128, False, False) == rvq.SAFE_DEFAULT == "torch"
    gpu("NVIDIA A100-SXM4-80GB")
    assert rvq._backend(_cuda((24000, 128)), 1024, 128, False, False) == "torch"


def _attention_auto(shape, dtype=torch.bfloat16, *, masked=False, train=False, dropout_p=0.0, t_k=None):
    q = _cuda(shape, dtype, requires_grad=train)
    k = _cuda((*shape[:2], t_k or shape[2], shape[3]), dtype, requires_grad=train)
    return attention._auto(q, k, k, object() if masked else None, dropout_p)


def test_attention_auto_on_the_h200(gpu):
    """MERT-95M's shape in bf16: SDPA's cuDNN backend was the fastest exact candidate in all four buckets."""
    gpu(H200)
    mert = (64, 12, 374, 64)
    for masked, train in itertools.product((False, True), (False, True)):
        assert _attention_auto(mert, masked=masked, train=train) == "sdpa-cudnn"
    with torch.no_grad():  # no backward can follow: the forward-only bucket
        assert _attention_auto(mert, train=True) == "sdpa-cudnn"
    gpu(H200, cudnn=False)
    assert _attention_auto(mert, train=True) == "sdpa-flash"
    assert _attention_auto(mert, masked=True, train=True) == "triton"  # 1.43 ms against efficient's 1.47 ms
    assert _attention_auto(mert, masked=True) == "triton"
    gpu(H200, cudnn=False, triton=False)
    assert _attention_auto(mert, masked=True, train=True) == "sdpa-efficient"


def test_attention_auto_outside_the_measurements_runs_pytorch(gpu):
    gpu(H200)
    assert _attention_auto((64, 12, 374, 64), torch.float32) == attention.SAFE_DEFAULT == "torch"
    assert _attention_auto((64, 12, 374, 80)) == "torch"  # another head_dim
    assert _attention_auto((8, 12, 2249, 64)) == "torch"  # 30 s clips, batch 8: unmeasured
    # dropout: only the kernel draws the op's mask without materialising the probabilities
    assert _attention_auto((64, 12, 374, 64), dropout_p=0.1, train=True) == attention.DROPOUT_DEFAULT == "triton"
    gpu(H200, triton=False)
    assert _attention_auto((64, 12, 374, 64), dropout_p=0.1, train=True) == "torch"
    gpu("NVIDIA A100-SXM4-80GB")
    assert _attention_auto((64, 12, 374, 64), train=True) == "torch"


def test_attention_pinned_sdpa_keeps_the_op_semantics():
    """The torch path with an SDPA backend pinned (what auto runs on the H200) is the same op: padded query rows are
    0 with zero gradient, real rows match the unpinned path. On the CPU the pinned backend is absent and SDPA's next
    one runs, so this checks the masking and the fallback order, not cuDNN's numbers."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 11, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.arange(11)[None, :] < torch.tensor([11, 7, 4])[:, None]
    scale = 16**-0.5
    expected = attention._attention_torch(q, k, v, mask, None, 0.0, scale)
    for name in ("sdpa-cudnn", "sdpa-flash", "sdpa-efficient"):
        out = attention._attention_torch(q, k, v, mask, None, 0.0, scale, name)
        torch.testing.assert_close(out, expected)
        assert (out[~mask[:, None, :, None].expand_as(out)] == 0).all()
        (dq,) = torch.autograd.grad(out.square().sum(), q)
        assert (dq[~mask[:, None, :, None].expand_as(dq)] == 0).all()
    order = attention._sdpa_order("sdpa-cudnn")
    assert order[0] == torch.nn.attention.SDPBackend.CUDNN_ATTENTION and len(set(order)) == 4


def test_cqt_auto(gpu):
    """64 x 5 s: the extension's fold was fastest on the H200; the torch fold where it is not built. Unmeasured
    buckets and GPUs: the extension when built (no known failure), else torch; never the Triton fold."""
    gpu(H200)
    assert cqt._auto(_cuda((64, 120000)), 120000) == "cuda"
    gpu(H200, native=False)
    assert cqt._auto(_cuda((64, 120000)), 120000) == "torch"
    gpu(H200)
    assert cqt._auto(_cuda((2, 24000)), 24000) == "cuda"
    gpu("NVIDIA A100-SXM4-80GB", native=False)
    assert cqt._auto(_cuda((64, 120000)), 120000) == "torch"
    x = torch.randn(2, 100)
    assert cqt._auto(x, 100) == "torch"


def test_codebook_ce_auto(gpu, monkeypatch):
    """No GPU measurement of the CE kernels is committed: auto is the torch path, also on CUDA; with a measurement
    showing the kernels faster, auto runs them in that bucket only."""
    gpu(H200)
    x, books = _cuda((4096, 8, 64), torch.bfloat16), _cuda((8, 1024, 64), torch.bfloat16)
    assert codebook_ce._select(x, books) == "torch"
    assert codebook_ce._select(torch.randn(5, 2, 8), torch.randn(2, 16, 8)) == "torch"
    key = codebook_ce.tuning_key(torch.bfloat16, 4096, 8, 1024, 64)
    assert key == "bfloat16/s12/q8/k10/d64"
    entry = {"ms": {"torch": 2.0, "triton": 0.5}}
    table = {"format": 2, "devices": {"nvidia-h200": {"ops": {"codebook_cross_entropy": {"buckets": {key: entry}}}}}}
    monkeypatch.setattr(_backend, "tuning_table", lambda: table)
    assert codebook_ce._select(x, books) == "triton"
    assert codebook_ce._select(_cuda((4096, 8, 64)), _cuda((8, 1024, 64))) == "torch"  # float32: unmeasured
    gpu(H200, triton=False)
    assert codebook_ce._select(x, books) == "torch"


# ----------------------------------------------------------------------------------------------- bench/tune.py


def test_tune_writes_the_table_from_rendered_results(tmp_path):
    """bench/tune.py turns rendered benchmark rows into buckets: the ops' own keys, the candidates auto can run,
    peers and variants left out, provenance recorded; another GPU's entries are kept."""
    sys.path.insert(0, str(REPO / "bench"))
    import tune

    md = tmp_path / "bench_x.md"
    ce = "cuda S4096 Q8 K1024 D64 bfloat16 fwd+bwd"
    md.write_text(
        "| device | op | case | implementation | median ms | throughput |\n|---|---|---|---|---|---|\n"
        "| NVIDIA H100 | rvq | cuda encodec 64x5s (24000 frames, 8x1024x128) fp32 | mert_fast (torch) | 2.50 | — |\n"
        "| NVIDIA H100 | rvq | cuda encodec 64x5s (24000 frames, 8x1024x128) fp32 | mert_fast (triton) | 1,200 | — |\n"
        "| NVIDIA H100 | rvq | cuda encodec 64x5s (24000 frames, 8x1024x128) fp32 | torch stage loop | 3.9 | — |\n"
        "| NVIDIA H100 | rvq | cuda encodec 64x5s (24000 frames, 8x1024x128) fp32 | mert_fast (auto) | 2.5 | — |\n"
        "| NVIDIA H100 | attention | cuda 95M 5s B64 H12 T374 D64 bfloat16 fwd+bwd padded | sdpa-cudnn | 0.8 | — |\n"
        "| NVIDIA H100 | attention | cuda 95M 5s B64 H12 T374 D64 bfloat16 bwd | sdpa-cudnn | 0.4 | — |\n"
        "| NVIDIA H100 | cqt | cpu 4x5s fp32 | mert_fast (torch) | 50 | — |\n"
        f"| NVIDIA H100 | codebook_cross_entropy | {ce} | mert_fast (triton) | 0.9 | — |\n"
        f"| NVIDIA H100 | codebook_cross_entropy | {ce} | fairseq compute_nce | 9 | — |\n"
    )
    table = tmp_path / "tuning.json"
    table.write_text(json.dumps({"format": 2, "devices": {"other-gpu": {"gpu": "Other GPU", "ops": {}}}}))
    args = ["--torch", "2.11.0", "--triton", "3.6.0", "--commit", "abc1234", "--date", "2026-12-05"]
    assert tune.main([str(md), "--table", str(table), *args]) == 0
    written = json.loads(table.read_text())
    assert set(written["devices"]) == {"other-gpu", "nvidia-h100"}
    ops = written["devices"]["nvidia-h100"]["ops"]
    assert ops["rvq"]["buckets"] == {
        "float32/l2/plain/n15/d7/dc7/k10": {
            "case": "cuda encodec 64x5s (24000 frames, 8x1024x128) fp32",
            "ms": {"torch": 2.5, "triton": 1200.0},
        }
    }
    key = attention.tuning_key(torch.bfloat16, 64, 12, 374, 374, 64, True, True)
    assert ops["attention"]["buckets"][key]["ms"] == {"sdpa-cudnn": 0.8}
    assert ops["codebook_cross_entropy"]["buckets"]["bfloat16/s12/q8/k10/d64"]["ms"] == {"triton": 0.9}
    assert set(ops) == {"rvq", "attention", "codebook_cross_entropy"}  # no bucket from the CPU and backward rows
    assert ops["rvq"]["provenance"]["commit"] == "abc1234" and ops["rvq"]["provenance"]["gpu"] == "NVIDIA H100"
    with pytest.raises(SystemExit, match="provenance incomplete"):
        tune.main([str(md), "--table", str(table), "--torch", "2.11.0"])


def test_tune_reproduces_the_committed_h200_table(tmp_path):
    """The H200 part of the committed table is exactly what bench/tune.py writes from the shared measurements."""
    # shared/ lies beside the checkout (CI), or beside the folder of worktrees
    found = [p / "shared" / "measurements" / "h200-2026-12-04" for p in REPO.parents[:2]]
    measurements = next((p for p in found if p.is_dir()), None)
    if measurements is None:
        pytest.skip(f"the H200 measurements are not here ({found[0]})")
    sys.path.insert(0, str(REPO / "bench"))
    import tune

    table = tmp_path / "tuning.json"
    files = [str(measurements / f"bench_{op}.md") for op in ("attention", "cqt", "rvq")]
    args = ["--gpu", H200, "--torch", "2.11.0+cu130", "--triton", "3.6.0", "--commit", "4edd634"]
    assert tune.main([*files, "--table", str(table), *args, "--date", "2026-12-04"]) == 0
    assert json.loads(table.read_text())["devices"]["nvidia-h200"] == _table()["devices"]["nvidia-h200"]


def test_check_auto_flags_a_slow_choice():
    sys.path.insert(0, str(REPO / "bench"))
    import tune

    def row(impl: str, ms: float, case: str = "cuda 64x5s fp32") -> dict:
        return {"device": H200, "op": "cqt", "case": case, "implementation": impl, "median_ms": ms}

    rows = [row("mert_fast (cuda)", 1.0), row("mert_fast (torch)", 1.2), row("nnAudio CQT1992v2", 200.0)]
    text, ok = tune.check_auto([*rows, row("mert_fast (auto)", 1.05)])
    assert ok and "| cqt | cuda 64x5s fp32 | 1.05 | cuda | 1 | 1.05 |" in text
    text, ok = tune.check_auto([*rows, row("mert_fast (auto)", 1.2)])
    assert not ok and "1.20 !!" in text
    assert not tune.check_auto(rows)[0].count("| cqt |")  # no auto row: nothing to check, and that fails
    assert tune.check_auto(rows)[1] is False
