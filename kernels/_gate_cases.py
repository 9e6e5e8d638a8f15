"""The cases the sm_90 gate (:mod:`._gate`) compiles: every kernel at every launch config its launcher can choose,
taken from the launchers' own tables (``CONFIGS`` / ``launch_config``), at the MERT shapes listed here."""

from __future__ import annotations

import torch
import triton

from . import attention, codebook_ce, cqt, rvq
from ._gate_compile import Case, Ptr

_DT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


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
