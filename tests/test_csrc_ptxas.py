"""csrc/ on sm_90 without a GPU: no kernel spills or exceeds 227 KB of shared memory (bench/csrc_ptxas_check.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import csrc_ptxas_check as check  # noqa: E402  (bench/ is no package)

REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelIfEvPT_' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIfEvPT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 12928 bytes smem
ptxas info    : Compiling entry function '_Z6kernelIdEvPT_' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIdEvPT_
    48 bytes stack frame, 44 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 240000 bytes smem
ptxas info    : Compiling entry function '_Z4copyPf' for 'sm_90'
ptxas info    : Function properties for _Z4copyPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
"""


def test_parser_reads_every_kernel_and_flags_spills_and_shared_memory():
    kernels = check.parse_ptxas(REPORT)
    assert [k["name"] for k in kernels] == ["_Z6kernelIfEvPT_", "_Z6kernelIdEvPT_", "_Z4copyPf"]
    assert kernels[0] == {
        "name": "_Z6kernelIfEvPT_",
        "registers": 128,
        "spill_stores": 0,
        "spill_loads": 0,
        "stack": 0,
        "smem": 12928,
    }
    assert kernels[2]["smem"] == 0 and kernels[2]["registers"] == 8
    found = check.problems(kernels)
    assert len(found) == 2 and all(p.startswith("_Z6kernelIdEvPT_") for p in found)
    assert "spills 44 bytes stored, 40 bytes loaded" in found[0] and "240000 bytes" in found[1]


@pytest.mark.skipif(check.find_nvcc() is None, reason="nvcc not found (NVCC, PATH or CUDA_HOME)")
def test_csrc_compiles_for_sm90_without_spills(capsys):
    assert check.compile_and_check(check.find_nvcc(), "90") == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "csr_spmm.cu" in printed and "rvq_encode.cu" in printed
