"""The compile half of the sm_90 gate (:mod:`._gate`): a :class:`Case` (kernel, argument values, launch config)
specialised as the JIT would and built by ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``, with the shared
memory, ``ptxas -v`` registers and spills and tensor-core instructions of each; :func:`run` compiles many on a
process pool, reusing a folder of cached results."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention, codebook_ce, cqt, rvq

TARGET = (90, 32)
_MODULES = {"attention": attention, "codebook_ce": codebook_ce, "cqt": cqt, "rvq": rvq}


@dataclasses.dataclass(frozen=True)
class Ptr:
    """A pointer argument: its element type (Triton's name) and whether it is 16-byte aligned (torch's are)."""

    dtype: str


@dataclasses.dataclass
class Case:
    module: str
    kernel: str
    label: str  # the shape and flags, e.g. "bf16 D64 mask dropout"
    config: str  # the launch config, e.g. "M128 N64 w4 s3"
    dtype: str  # operand dtype of the op: bf16, fp16, fp32, fp64
    values: dict  # every argument: Ptr, int, float, None, or the constexpr value
    num_warps: int = 4
    num_stages: int = 3
    tensor_cores: bool = False  # must use wgmma
    strict: bool = True  # must not spill beyond its allow-list entry (everything but fp64)

    @property
    def name(self) -> str:
        return f"{self.kernel} [{self.label}] {self.config}"


def _scalar_type(value) -> tuple[str, bool]:
    """Triton's specialisation of a scalar argument: (type, divisible by 16)."""
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0
    return "fp32", False


def _source(fn, values: dict) -> ASTSource:
    """The ASTSource a launch with these argument values compiles (specialised as the JIT does)."""
    names = fn.arg_names
    missing = set(names) - set(values)
    extra = set(values) - set(names)
    if missing or extra:
        raise ValueError(f"{fn.__name__}: arguments missing {sorted(missing)}, unknown {sorted(extra)}")
    signature, constants, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(names, fn.params, strict=True)):
        value = values[name]
        if param.is_constexpr or value is None or (type(value) is int and value == 1):  # the JIT's specialisations
            signature[name] = "constexpr"
            constants[name] = value
        elif isinstance(value, Ptr):
            signature[name] = "*" + value.dtype
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name], div16 = _scalar_type(value)
            if div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, constants, attrs)


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _kernel(case: Case):
    """The ``@triton.jit`` function a case compiles."""
    return getattr(_MODULES[case.module], case.kernel)


def _compile(case: Case) -> dict:
    fn = _kernel(case)
    out = {"name": case.name, "kernel": case.kernel, "label": case.label, "config": case.config, "dtype": case.dtype}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                _source(fn, case.values),
                target=GPUTarget("cuda", *TARGET),
                options={"num_warps": case.num_warps, "num_stages": case.num_stages},
            )
    except Exception as exc:  # the gate reports every failure, it does not stop at the first
        out.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip()[-600:]}")
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out
    out["seconds"] = round(time.perf_counter() - t0, 2)
    ptx = compiled.asm["ptx"]
    regs = _PTXAS.search(log.getvalue())
    spill = _SPILL.search(log.getvalue())
    out.update(
        ok=True,
        shared=int(compiled.metadata.shared),
        registers=int(regs.group(1)) if regs else None,
        spill_stores=int(spill.group(1)) if spill else None,
        spill_loads=int(spill.group(2)) if spill else None,
        tensor_cores=[n for n, pat in (("wgmma", "wgmma.mma_async"), ("mma", "mma.sync")) if pat in ptx],
    )
    return out


def _key(case: Case) -> str:
    fn = _kernel(case)
    blob = json.dumps(
        [triton.__version__, TARGET, _source(fn, case.values).hash(), case.num_warps, case.num_stages],
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _worker_init() -> None:
    triton.knobs.nvidia.dump_ptxas_log = True  # the only place registers and spills are reported
    triton.knobs.compilation.always_compile = True  # so ptxas runs (and logs) on every case
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="gate-triton-")
    triton.knobs.cache.dir = os.environ["TRITON_CACHE_DIR"]


def run(cases: list[Case], jobs: int = 2, cache: str | None = None, progress=None) -> list[dict]:
    """Compile ``cases`` on ``jobs`` processes; results already in ``cache`` (a folder) are reused, and cases
    that specialise to the same compilation (e.g. head dims 80 and 128 share a tile) are compiled once."""
    keys = [_key(c) for c in cases]
    done: dict[str, dict] = {}
    for key in set(keys):
        path = os.path.join(cache, key + ".json") if cache else None
        if path and os.path.exists(path):
            with open(path) as f:
                done[key] = dict(json.load(f), cached=True)
    todo = {}
    for key, case in zip(keys, cases, strict=True):
        if key not in done:
            todo.setdefault(key, case)
    if todo:
        with ProcessPoolExecutor(jobs, multiprocessing.get_context("fork"), initializer=_worker_init) as pool:
            for key, res in zip(todo, pool.map(_compile, todo.values()), strict=True):
                done[key] = res
                if progress:
                    progress(res)
                if cache and res["ok"]:
                    os.makedirs(cache, exist_ok=True)
                    with open(os.path.join(cache, key + ".json"), "w") as f:
                        json.dump(res, f)
    results = []
    for key, case in zip(keys, cases, strict=True):
        res = dict(done[key], name=case.name, kernel=case.kernel, label=case.label, config=case.config)
        res.update(dtype=case.dtype, strict=case.strict, need_tensor_cores=case.tensor_cores)
        results.append(res)
    return results
