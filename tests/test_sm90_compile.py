"""Every Triton kernel compiles for Hopper (sm_90a) at every launch config, without spills and with wgmma.

The compile runs ahead of time on the CPU (``mert_fast.kernels._gate``), in a subprocess without the interpreter,
once under the installed triton and once under triton 3.6 (torch 2.11's, what GPU machines ship): CI installs it
into ``.triton36/`` and sets ``MERT_FAST_TRITON36``; without that variable the 3.6 leg is skipped (and CI, which
sets ``MERT_FAST_REQUIRE_TRITON=1``, would fail on the skip). Results are cached by triton version and kernel
source in ``MERT_FAST_GATE_CACHE`` (default ``.gate-cache/``), so an unchanged kernel is not compiled twice.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _gate_module():
    pytest.importorskip("triton")
    return importlib.import_module("mert_fast.kernels._gate")


def _run_gate(tmp_path: Path, triton_path: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (triton_path, str(ROOT), env.get("PYTHONPATH")) if p)
    cache = os.environ.get("MERT_FAST_GATE_CACHE", str(ROOT / ".gate-cache"))
    out = tmp_path / "gate.json"
    cmd = [sys.executable, "-m", "mert_fast.kernels._gate", "--json", str(out), "--cache", cache, "--quiet"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.exists(), f"the gate did not run:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    slowest = sorted(report["results"], key=lambda r: -r["seconds"])[:5]
    print(f"triton {report['triton']}: {len(report['results'])} cases in {report['seconds']} s; slowest compiles:")
    for r in slowest:
        print(f"  {r['seconds']:6.2f} s {r['name']}")
    return report


@pytest.mark.parametrize("leg", ["installed", "triton36"])
def test_every_kernel_compiles_for_sm90(tmp_path, leg):
    _gate_module()
    triton_path = None
    if leg == "triton36":
        triton_path = os.environ.get("MERT_FAST_TRITON36")
        if not triton_path:
            pytest.skip("MERT_FAST_TRITON36 (a folder holding triton 3.6) is not set")
        assert (Path(triton_path) / "triton").is_dir(), f"MERT_FAST_TRITON36={triton_path} holds no triton"
    report = _run_gate(tmp_path, triton_path)
    if leg == "triton36":
        assert report["triton"].startswith("3.6."), report["triton"]
    assert not report["problems"], "\n".join(report["problems"])


def test_cases_cover_every_launch_config():
    """The gate builds every config the launchers can choose: the autotune tables, CQT batches 1-64, the RVQ
    and codebook-CE launch configs at the MERT shapes."""
    gate = _gate_module()
    attention = importlib.import_module("mert_fast.kernels.attention")
    cqt = importlib.import_module("mert_fast.kernels.cqt")
    cases = gate.cases()
    built = {(c.kernel, c.config, c.dtype) for c in cases}
    kernels = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel"}
    for which, by_class in attention.CONFIGS.items():
        for dt in ("bf16", "fp16", "fp32"):
            for bm, bn, w, st in by_class["fp32" if dt == "fp32" else "half"]:
                assert (kernels[which], f"M{bm} N{bn} w{w} s{st}", dt) in built
    for batch in range(1, 65):
        cfg = cqt.launch_config(batch, on_gpu=True)
        for dt in ("fp32", "fp64"):
            config = f"R{cfg['BLOCK_R']} B{cfg['BLOCK_B']} w{cfg['num_warps']}"
            assert ("_csr_spmm_kernel", config, dt) in built
    labels = {c.label for c in cases if c.kernel == "_rvq_encode_kernel"}
    for d in (768, 1024, 4096):
        assert f"nearest D{d} xfp32 fp32 ieee" in labels
    kernels = {c.kernel for c in cases}
    for module in ("attention", "codebook_ce", "cqt", "rvq"):
        mod = importlib.import_module(f"mert_fast.kernels.{module}")
        jitted = {n for n, v in vars(mod).items() if type(v).__name__ in ("JITFunction", "InterpretedFunction")}
        jitted = {n for n in jitted if n.endswith("_kernel")}
        assert jitted <= kernels, f"{module}: kernels the gate never compiles: {sorted(jitted - kernels)}"


def test_problems_flags_every_rule(monkeypatch):
    """The rules can fail: a compile error, too much shared memory, a spill, a missing wgmma, an allow-listed
    case spilling more than its reviewed bytes."""
    gate = _gate_module()
    good = dict(
        name="k [c] cfg",
        kernel="k",
        label="c",
        dtype="bf16",
        ok=True,
        shared=1024,
        registers=64,
        spill_stores=0,
        spill_loads=0,
        tensor_cores=["wgmma"],
        strict=True,
        need_tensor_cores=True,
    )
    assert gate.problems([good]) == []
    assert gate.problems([dict(good, ok=False, error="RuntimeError: PassManager::run failed")])
    assert gate.problems([dict(good, shared=gate.SHARED_LIMIT + 1)])
    assert gate.problems([dict(good, spill_stores=8, spill_loads=8)])
    assert gate.problems([dict(good, tensor_cores=["mma"])])
    assert gate.problems([dict(good, spill_stores=8, spill_loads=8, strict=False)]) == []
    assert gate.problems([dict(good, tensor_cores=[], need_tensor_cores=False)]) == []
    monkeypatch.setitem(gate.SPILL_ALLOWED, ("k", "bf16"), ("reviewed", 16))
    assert gate.problems([dict(good, spill_stores=8, spill_loads=8)]) == []
    assert gate.problems([dict(good, spill_stores=8, spill_loads=12)])
    assert gate.problems([dict(good, dtype="fp16", spill_stores=8, spill_loads=8)])


def test_allow_list_is_small_and_reasoned():
    gate = _gate_module()
    assert len(gate.SPILL_ALLOWED) <= 8
    for (kernel, dtype), (reason, measured) in gate.SPILL_ALLOWED.items():
        assert dtype not in ("bf16", "fp16"), f"{kernel}: bf16/fp16 paths must not spill"
        assert len(reason) > 20 and 0 < measured < 4096, (kernel, dtype)
