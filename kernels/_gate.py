"""Ahead-of-time compile of every Triton kernel for Hopper (sm_90a), at every config its launcher can choose.

No GPU is needed: ``triton.compile`` targets ``GPUTarget("cuda", 90, 32)`` and the ``ptxas`` inside the triton
wheel assembles the result. Per case (kernel, config, dtype, MERT shape) this records the shared memory the
launch asks for, registers and spill bytes (``ptxas -v``), the tensor-core instructions in the PTX (``wgmma``
for Hopper's, ``mma`` for the Ampere ones) and the compile time. Every launch config comes from the same
tables and functions the launchers use (``CONFIGS`` / ``launch_config`` in each kernel module): the autotune
spaces are built whole, and the shape-dependent configs at the shapes listed here (a launcher's choice for a
shape outside them, e.g. codebook CE with D > 64, is not built). It is compile-time evidence, not a timing.

``python -m mert_fast.kernels._gate --json out.json`` writes the results (``--jobs``, ``--only``, ``--cache``);
``tests/test_sm90_compile.py`` runs it under each triton it is given and asserts :func:`problems` is empty.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention, codebook_ce, cqt, rvq

#: Largest dynamic shared memory one block may use on an H100/H200 (227 KB).
SHARED_LIMIT = 232448
TARGET = (90, 32)

#: Reviewed exceptions to "no spills" on the gated paths: (kernel, dtype) -> (reason, the most spill bytes, stores
#: plus loads, measured over its cases under triton 3.6 and 3.9). A listed kernel fails when it spills more.
_TF32X3 = (
    "fp32 inputs: tf32x3 splits each operand into two TF32 halves, doubling the operand registers; at head dims "
    "80-128 with mask and dropout even the smallest tile tried exceeds 255 registers"
)
_CE_TF32X3 = "fp32 inputs: tf32x3 operand halves plus the cosine normalisation's fp32 tiles; 32-code tiles"
SPILL_ALLOWED: dict[tuple[str, str], tuple[str, int]] = {
    ("_attn_fwd_kernel", "fp32"): (_TF32X3, 288),
    ("_attn_bwd_dkdv_kernel", "fp32"): (_TF32X3, 2432),
    ("_attn_bwd_dq_kernel", "fp32"): (_TF32X3, 2072),
    ("_codebook_ce_bwd_x_kernel", "fp32"): (_CE_TF32X3, 40),
    ("_codebook_ce_bwd_c_kernel", "fp32"): (_CE_TF32X3, 64),
}


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


_DT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


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


def _compile(case: Case) -> dict:
    module = {"attention": attention, "codebook_ce": codebook_ce, "cqt": cqt, "rvq": rvq}[case.module]
    fn = getattr(module, case.kernel)
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
    fn = getattr({"attention": attention, "codebook_ce": codebook_ce, "cqt": cqt, "rvq": rvq}[case.module], case.kernel)
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


def problems(results: list[dict]) -> list[str]:
    """Every violation of the gate's rules, one line each (empty when the gate passes)."""
    bad = []
    for r in results:
        name = r["name"]
        if not r["ok"]:
            bad.append(f"{name}: does not compile: {r['error']}")
            continue
        if r["shared"] > SHARED_LIMIT:
            bad.append(f"{name}: {r['shared']} bytes of shared memory > {SHARED_LIMIT}")
        if r["spill_stores"] is None:
            bad.append(f"{name}: no ptxas report")
        spilled = (r["spill_stores"] or 0) + (r["spill_loads"] or 0)
        if r["strict"] and spilled:
            allowed = SPILL_ALLOWED.get((r["kernel"], r["dtype"]))
            if allowed is None or spilled > allowed[1]:
                bad.append(f"{name}: spills {spilled} bytes ({r['spill_stores']} stored, {r['spill_loads']} loaded)")
        if r["need_tensor_cores"] and "wgmma" not in r["tensor_cores"]:
            bad.append(f"{name}: no wgmma (tensor-core instructions: {r['tensor_cores'] or 'none'})")
    return bad


# ---------------------------------------------------------------------------------------------------- the cases


def _attention_cases(head_dims=(16, 32, 64, 80, 128)) -> list[Case]:
    """B64 H12 T374 (MERT-95M, 5 s) and every autotune config. At head dim 64: bf16 with and without the key
    padding mask and dropout (all four), fp16 and fp32 without either and with both; at the other head dims of
    the claimed range (16-128): bf16 and fp32 with both, the most registers (fp16 compiles to bf16's code but
    for the element type)."""
    heads, t = 12, 374
    flags = {"": (False, False, False), "mask": (True, True, False), "dropout": (False, False, True)}
    flags["mask dropout"] = (True, True, True)
    cases = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        dt = _DT[dtype]
        cls = attention.dtype_class(dtype)
        delta_blocks = set()
        for head_dim in head_dims:
            if head_dim != 64 and dtype == torch.float16:
                continue
            block_d = max(16, triton.next_power_of_2(head_dim))
            qs = heads * t * head_dim  # contiguous (B, H, T, D) strides
            strides = {}
            for pre in ("q", "k", "v", "o", "do", "dk", "dq"):
                strides.update({f"stride_{pre}b": qs, f"stride_{pre}h": t * head_dim})
            for name in ("stride_qm", "stride_kn", "stride_vn", "stride_om", "stride_dom", "stride_dkn", "stride_dqm"):
                strides[name] = head_dim
            for flag_name, (has_mask, mask_q, dropout) in flags.items():
                every_flag = head_dim == 64 and dtype == torch.bfloat16
                if flag_name not in ("", "mask dropout") and not every_flag:
                    continue
                if head_dim != 64 and flag_name != "mask dropout":
                    continue
                label = f"{dt} D{head_dim} {flag_name}".strip()
                common = dict(
                    KPM=Ptr("u8") if has_mask else None,
                    KV_END=Ptr("i32") if has_mask else None,
                    SEED=Ptr("i64") if dropout else None,
                    stride_mb=t if has_mask else 0,
                    H=heads,
                    TQ=t,
                    TK=t,
                    HEAD_DIM=head_dim,
                    qk_scale=head_dim**-0.5 * attention.LOG2E,
                    sm_scale=head_dim**-0.5,
                    drop_thresh=1677722 if dropout else 0,
                    drop_scale=1.0 / 0.9 if dropout else 1.0,
                    T_BUCKET=512,
                    BLOCK_D=block_d,
                    HAS_MASK=has_mask,
                    MASK_Q=mask_q,
                    DROPOUT=dropout,
                    F32=dtype == torch.float32,
                    UPCAST=False,
                    BF16=dtype == torch.bfloat16,
                    LSE=Ptr("fp32"),
                    DELTA=Ptr("fp32"),
                    **{n: Ptr(dt) for n in ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ")},
                    **strides,
                )
                for which, fn in (
                    ("fwd", attention._attn_fwd_kernel),
                    ("dkdv", attention._attn_bwd_dkdv_kernel),
                    ("dq", attention._attn_bwd_dq_kernel),
                ):
                    base = {k: v for k, v in common.items() if k in fn.arg_names}
                    for bm, bn, w, st in attention.CONFIGS[which][cls]:
                        cases.append(
                            Case(
                                "attention",
                                fn.__name__,
                                label,
                                f"M{bm} N{bn} w{w} s{st}",
                                dt,
                                dict(base, BLOCK_M=bm, BLOCK_N=bn),
                                num_warps=w,
                                num_stages=st,
                                tensor_cores=dtype != torch.float32,
                            )
                        )
            if block_d in delta_blocks:
                continue
            delta_blocks.add(block_d)
            vals = dict(OUT=Ptr(dt), DO=Ptr(dt), DELTA=Ptr("fp32"), H=heads, TQ=t, HEAD_DIM=head_dim)
            vals.update({k: v for k, v in strides.items() if k[7:9] in ("ob", "oh", "om") or k.startswith("stride_do")})
            vals.update(BLOCK_M=attention.DELTA_BLOCK_M, BLOCK_D=block_d)
            config = f"M{attention.DELTA_BLOCK_M} w4"
            cases.append(Case("attention", "_attn_bwd_delta_kernel", f"{dt} D{head_dim}", config, dt, vals))
    bm, bn = attention.KEEP_MASK_BLOCKS
    warps = attention.KEEP_MASK_WARPS
    vals = dict(OUT=Ptr("u8"), SEED=Ptr("i64"), H=heads, TQ=t, TK=t, drop_thresh=1677722, BLOCK_M=bm, BLOCK_N=bn)
    cases.append(Case("attention", "_keep_mask_kernel", "T374", f"M{bm} N{bn} w{warps}", "u8", vals, num_warps=warps))
    return cases


def _codebook_ce_cases() -> list[Case]:
    """S4096 Q8 K1024 D64 (MERT's acoustic head): cosine logits with a bias in every dtype, plain dot-product
    logits in bf16 and fp32."""
    n_s, n_q, n_k, n_d = 4096, 8, 1024, 64
    cases = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        dt = _DT[dtype]
        acc = "fp64" if dtype == torch.float64 else "fp32"
        cfg = codebook_ce.launch_config(dtype, n_d, on_gpu=True)
        variants = ((True, True), (False, False)) if dtype in (torch.bfloat16, torch.float32) else ((True, True),)
        for normalize, has_bias in variants:
            label = f"{dt} D{n_d}" + (" cosine" if normalize else " dot") + (" bias" if has_bias else "")
            base = dict(
                x_ptr=Ptr(dt),
                c_ptr=Ptr(dt),
                tgt_ptr=Ptr("i64"),
                bias_ptr=Ptr(acc if has_bias else dt),
                nx_ptr=Ptr(acc),
                nc_ptr=Ptr(acc),
                params_ptr=Ptr(acc),
                n_s=n_s,
                n_q=n_q,
                n_k=n_k,
                n_d=n_d,
                ignore_index=-100,
                BLOCK_S=cfg["block_s"],
                BLOCK_K=cfg["block_k"],
                BLOCK_D=cfg["BLOCK_D"],
                HAS_BIAS=has_bias,
                NORMALIZE=normalize,
                UPCAST=cfg["UPCAST"],
                PRECISION=cfg["PRECISION"],
                FP64=cfg["FP64"],
            )
            outs = {
                "_codebook_ce_fwd_kernel": dict(loss_ptr=Ptr(acc), lse_ptr=Ptr(acc), hits_ptr=Ptr("i32")),
                "_codebook_ce_bwd_x_kernel": dict(lse_ptr=Ptr(acc), g_ptr=Ptr(acc), dx_ptr=Ptr(dt)),
                "_codebook_ce_bwd_c_kernel": dict(lse_ptr=Ptr(acc), g_ptr=Ptr(acc), dc_ptr=Ptr(dt), dbias_ptr=Ptr(acc)),
            }
            for kernel, extra in outs.items():
                cases.append(
                    Case(
                        "codebook_ce",
                        kernel,
                        label,
                        f"S{cfg['block_s']} K{cfg['block_k']} w{cfg['num_warps']}",
                        dt,
                        dict(base, **extra),
                        num_warps=cfg["num_warps"],
                        tensor_cores=dtype in (torch.bfloat16, torch.float16),
                        strict=dtype != torch.float64,
                    )
                )
    return cases


def _rvq_cases(nearest_dims=(64, 128, 256, 512, 768, 1024, 2048, 4096)) -> list[Case]:
    """EnCodec 24 kHz (8 x 1024 x 128, L2, 64 x 5 s at 75 Hz) and MuQ's Mel-RVQ (512 -> 16, 8 x 1024, cosine,
    projections with biases, 25 Hz): fp32 input at every ``tl.dot`` precision the launcher takes, bf16 input and
    fp64; ``nearest_code`` (one stage, codes only, as k-means runs it) on fp32 features of 64 to 4096 dims."""
    shapes = [
        ("EnCodec", 24000, 128, 128, 1024, 8, False, True),
        ("Mel-RVQ", 8000, 512, 16, 1024, 8, True, True),
    ]
    shapes += [(f"nearest D{d}", 24000, d, d, 1024, 1, False, False) for d in nearest_dims]
    cases = []
    for name, n_rows, dim, code_dim, n_codes, n_q, proj, quant in shapes:
        cfg = rvq.launch_config(n_rows, dim, code_dim, n_codes, projected=proj, on_gpu=True)
        config = f"N{cfg['BLOCK_N']} K{cfg['BLOCK_K']} D{cfg['BLOCK_D']} C{cfg['BLOCK_C']} w{cfg['num_warps']}"
        for x_dtype, book_dtype in (
            (torch.float32, torch.float32),
            (torch.bfloat16, torch.float32),
            (torch.float64, torch.float64),
        ):
            precisions = ("ieee",) if book_dtype == torch.float64 else rvq.PRECISIONS
            if name.startswith("nearest"):
                # nearest_code searches in the codebook's dtype, with ieee dots; fp64 at one width
                if x_dtype != book_dtype or (x_dtype == torch.float64 and dim != 1024):
                    continue
                precisions = ("ieee",)
            elif x_dtype == torch.bfloat16:
                precisions = ("ieee",)
            for precision in precisions:
                dt, bt = _DT[x_dtype], _DT[book_dtype]
                vals = dict(
                    x_ptr=Ptr(dt),
                    quant_ptr=Ptr(dt),
                    codes_ptr=Ptr("i64"),
                    n_rows=n_rows,
                    n_codes=n_codes,
                    dim=dim,
                    code_dim=code_dim,
                    n_q=n_q,
                    stride_x=dim,
                    stride_codes=n_q,
                    stride_quant=dim if quant else 0,
                    HAS_IN_PROJ=proj,
                    HAS_IN_BIAS=proj,
                    HAS_OUT_PROJ=proj,
                    HAS_OUT_BIAS=proj,
                    WRITE_QUANT=quant,
                    FP64=book_dtype == torch.float64,
                    PRECISION=precision,
                    **{k: v for k, v in cfg.items() if k != "num_warps"},
                )
                for ptr in ("cb", "lookup", "norm", "in_w", "in_b", "out_w", "out_b", "res", "acc"):
                    vals[ptr + "_ptr"] = Ptr(bt)
                cases.append(
                    Case(
                        "rvq",
                        "_rvq_encode_kernel",
                        f"{name} x{dt} {bt} {precision}",
                        config,
                        dt,
                        vals,
                        num_warps=cfg["num_warps"],
                        tensor_cores=precision != "ieee",
                        strict=book_dtype != torch.float64,
                    )
                )
    return cases


def _cqt_cases(batches=range(1, 65)) -> list[Case]:
    """MERT's 336-bin CQT (24 kHz, hop 320, 5 s clips): every batch tile of 1 to 64 clips, fp32 and fp64,
    forward and adjoint (the same kernel on the transposed matrix)."""
    cases = []
    configs = {}
    for b in batches:
        cfg = cqt.launch_config(b, on_gpu=True)
        configs.setdefault(tuple(sorted(cfg.items())), (b, cfg))
    n_freq, n_rows = 60001, 336 * 376  # rfft bins of a padded 5 s clip; bins x folded points
    for dtype in (torch.float32, torch.float64):
        dt = _DT[dtype]
        for b, cfg in configs.values():
            for direction, rows, n_in in (("fwd", n_rows, n_freq), ("adjoint", n_freq, n_rows)):
                vals = dict(
                    crow_ptr=Ptr("i64"),
                    col_ptr=Ptr("i64"),
                    val_ptr=Ptr(dt),
                    x_ptr=Ptr(dt),
                    out_ptr=Ptr(dt),
                    n_rows=rows,
                    n_batch=b,
                    n_in=n_in,
                    stride_xb=2 * n_in,
                    stride_ob=2 * rows,
                    BLOCK_R=cfg["BLOCK_R"],
                    BLOCK_B=cfg["BLOCK_B"],
                    FP64=dtype == torch.float64,
                )
                cases.append(
                    Case(
                        "cqt",
                        "_csr_spmm_kernel",
                        f"{dt} B{b} {direction}",
                        f"R{cfg['BLOCK_R']} B{cfg['BLOCK_B']} w{cfg['num_warps']}",
                        dt,
                        vals,
                        num_warps=cfg["num_warps"],
                        strict=dtype == torch.float32,
                    )
                )
    return cases


def cases() -> list[Case]:
    """Every case the gate compiles."""
    return _cqt_cases() + _rvq_cases() + _codebook_ce_cases() + _attention_cases()


def markdown_table(results: list[dict]) -> str:
    """The Hopper-readiness table: one row per kernel, dtype and launch config, the worst case over shapes and
    flags (most shared memory, registers and spill bytes; the tensor-core instructions of every case)."""
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["kernel"], r["dtype"], r["config"])
        row = rows.setdefault(key, dict(cases=0, failed=0, shared=0, registers=0, spills=0, tc=set(), seconds=0.0))
        row["cases"] += 1
        row["seconds"] = max(row["seconds"], r["seconds"])
        if not r["ok"]:
            row["failed"] += 1
            continue
        row["shared"] = max(row["shared"], r["shared"])
        row["registers"] = max(row["registers"], r["registers"] or 0)
        row["spills"] = max(row["spills"], (r["spill_stores"] or 0) + (r["spill_loads"] or 0))
        row["tc"].add(", ".join(r["tensor_cores"]) or "none")
    lines = [
        "| kernel | dtype | config | cases | shared bytes | registers | spill bytes | tensor-core instructions "
        "| compile s (max) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for (kernel, dtype, config), row in rows.items():
        cases = f"{row['cases']}" + (f" ({row['failed']} fail)" if row["failed"] else "")
        tc = " / ".join(sorted(row["tc"])) or "-"
        cells = [f"`{kernel}`", dtype, config, cases, f"{row['shared']:,}", str(row["registers"])]
        cells += [f"{row['spills']:,}", tc, f"{row['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


README_BEGIN = "<!-- hopper-readiness: python -m mert_fast.kernels._gate --readme README.md -->"
README_END = "<!-- /hopper-readiness -->"


def update_readme(path: str, report: dict) -> None:
    """Replace the table between the README's hopper-readiness markers with this run's."""
    with open(path) as f:
        text = f.read()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    n_bad = len(report["problems"])
    head = (
        f"\nGenerated by the gate under triton {report['triton']} for {report['target']}: "
        f"{len(report['results'])} compilations, {n_bad} problems.\n\n"
    )
    with open(path, "w") as f:
        f.write(text[:start] + head + markdown_table(report["results"]) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every case's result here")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--only", default="", help="only cases whose name contains this")
    parser.add_argument("--cache", help="folder of results to reuse (keyed by triton version and kernel source)")
    parser.add_argument("--markdown", help="write the Hopper-readiness table (markdown) here")
    parser.add_argument("--readme", help="rewrite the Hopper-readiness table inside this README")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if args.only in c.name]
    t0 = time.perf_counter()

    def progress(res):
        if not args.quiet:
            state = "ok" if res["ok"] else "FAIL"
            print(f"{state:4} {res['seconds']:6.2f}s {res['name']}", file=sys.stderr, flush=True)

    results = run(selected, jobs=args.jobs, cache=args.cache, progress=progress)
    report = {
        "triton": triton.__version__,
        "target": f"cuda sm_{TARGET[0]}",
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
        "problems": problems(results),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(results) + "\n")
    if args.readme:
        update_readme(args.readme, report)
    for line in report["problems"]:
        print("PROBLEM", line, file=sys.stderr)
    n_bad = len(report["problems"])
    print(f"{len(results)} cases, {n_bad} problems, {report['seconds']} s (triton {triton.__version__})")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
