"""Compile every ``csrc/*.cu`` for sm_90 with ``ptxas -v`` and fail on register spills or too much shared memory.

    python bench/csrc_ptxas_check.py              # nvcc from $NVCC, else PATH, else $CUDA_HOME/bin
    python bench/csrc_ptxas_check.py --arch 90    # the default; the GPU the kernels are tuned for

Per kernel it prints registers, spill stores/loads, stack frame and static shared memory, and exits 1 when a kernel
spills (any spill store or load) or uses more than 227 KB of shared memory (an sm_90 block's limit, 232,448
bytes). It needs no GPU: only nvcc (a pip-installed ``nvidia-cuda-nvcc`` with ``nvidia-cuda-crt``,
``nvidia-cuda-runtime`` and ``nvidia-nvvm`` of the same version works).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SMEM_LIMIT = 232448  # bytes of shared memory one sm_90 block may use (227 KB)


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc")):
        if candidate and Path(candidate).is_file():
            return candidate
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return None


def parse_ptxas(output: str) -> list[dict]:
    """One dict per compiled kernel: name, registers, spill_stores, spill_loads, stack, smem (bytes)."""
    kernels: list[dict] = []
    current: dict | None = None
    for line in output.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = {"name": m.group(1), "registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(smem.group(1)) if smem else 0
    return kernels


def short_name(mangled: str) -> str:
    """``..._csr_spmm_kernelIfE...`` -> ``csr_spmm_kernel<float>``; other names as they are."""
    m = re.search(r"([A-Za-z][A-Za-z_]*_kernel)I([fd])E", mangled)
    return f"{m.group(1)}<{'float' if m.group(2) == 'f' else 'double'}>" if m else mangled


def problems(kernels: list[dict]) -> list[str]:
    out = []
    for k in kernels:
        if k["spill_stores"] or k["spill_loads"]:
            out.append(f"{k['name']}: spills {k['spill_stores']} bytes stored, {k['spill_loads']} bytes loaded")
        if k["smem"] > SMEM_LIMIT:
            out.append(f"{k['name']}: {k['smem']} bytes of shared memory > {SMEM_LIMIT}")
    return out


def compile_and_check(nvcc: str, arch: str) -> int:
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted((REPO_ROOT / "csrc").glob("*.cu")):
            cmd = [nvcc, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-std=c++20", "-O3", "--use_fast_math"]
            cmd += ["-I", str(REPO_ROOT / "csrc"), "-Xptxas", "-v", "-c", str(source), "-o", f"{tmp}/{source.stem}.o"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                failures.append(f"{source.name}: nvcc failed\n{proc.stderr[-3000:]}")
                continue
            kernels = parse_ptxas(proc.stdout + proc.stderr)
            if not kernels:
                failures.append(f"{source.name}: no kernel in ptxas' report")
            for k in kernels:
                print(
                    f"{source.name}: {short_name(k['name'])}: {k['registers']} registers, spills {k['spill_stores']}/"
                    f"{k['spill_loads']} bytes, stack {k['stack']} bytes, smem {k['smem']} bytes"
                )
            failures += [f"{source.name}: {p}" for p in problems(kernels)]
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    args = parser.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (set NVCC, put it on PATH or set CUDA_HOME)", file=sys.stderr)
        return 2
    return compile_and_check(nvcc, args.arch)


if __name__ == "__main__":
    sys.exit(main())
