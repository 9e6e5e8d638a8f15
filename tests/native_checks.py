"""Bad-input cases of the C++ entries ``csr_spmm`` and ``rvq_encode`` (``csrc/checks.h``), one per check.

Shared by ``tests/test_native.py``, which runs them in a child process (this file is its entry point), so that a
crash in an entry is reported as a failed test instead of killing the test run:

- on a GPU against the built extension ``mert_fast._C`` (``python tests/native_checks.py cuda``);
- on the CPU against the same ``checks.h`` compiled into a small host module with the CPU as the entry's device
  (``python tests/native_checks.py cpu BUILD_DIR``), so CI executes every check without a GPU.

Each case is ``(entry, expected message, arguments)``: the call must raise ``RuntimeError`` whose message
contains the expected text (``{dev}`` is the device type's name, ``CUDA`` or ``CPU``). The child prints one line
per case, ``start <id>`` before the call and ``ok <id>`` or ``fail <id> <reason>`` after it, then ``done``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"


@dataclasses.dataclass(frozen=True)
class Kit:
    """Where the entry runs (``dev``), a device it must refuse (``other``) and its type's name in messages."""

    dev: str
    other: str
    dev_name: str


@dataclasses.dataclass(frozen=True)
class Case:
    entry: str  # "csr_spmm" or "rvq_encode"
    expect: str  # a part of the message; {dev} is Kit.dev_name
    args: Callable[[Kit], tuple]

    @property
    def id(self) -> str:
        return f"{self.entry}: {self.expect}"


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """t's values and shape with a non-contiguous layout (stride 2 on the last dimension)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device) if t.dim() else None
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


def csr_inputs(kit: Kit) -> tuple:
    """A valid call: 9 rows, 10 columns (x has n = 5 and conjugate columns), 2 batch items."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(9, 10, generator=g) < 0.5
    rows, col = mask.nonzero(as_tuple=True)
    crow = torch.zeros(10, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=9), 0)
    val = torch.randn(col.numel(), 2, generator=g)
    x = torch.randn(2, 5, 2, generator=g)
    return tuple(t.to(kit.dev) for t in (crow, col.contiguous(), val, x)) + (10,)


def _csr(change: Callable[[Kit, list], None]) -> Callable[[Kit], tuple]:
    def make(kit: Kit) -> tuple:
        args = list(csr_inputs(kit))
        change(kit, args)
        return tuple(args)

    return make


def _set(i: int, f: Callable[[Kit, torch.Tensor], object]) -> Callable[[Kit, list], None]:
    def change(kit: Kit, args: list) -> None:
        args[i] = f(kit, args[i])

    return change


CROW, COL, VAL, X, N_COLS = range(5)

CSR_CASES = [
    Case("csr_spmm", "x must be a {dev} tensor", _csr(_set(X, lambda k, t: t.to(k.other)))),
    Case("csr_spmm", "crow must be on x's {dev} device", _csr(_set(CROW, lambda k, t: t.to(k.other)))),
    Case("csr_spmm", "col must be on x's {dev} device", _csr(_set(COL, lambda k, t: t.to(k.other)))),
    Case("csr_spmm", "val must be on x's {dev} device", _csr(_set(VAL, lambda k, t: t.to(k.other)))),
    Case("csr_spmm", "crow must be int64", _csr(_set(CROW, lambda k, t: t.int()))),
    Case("csr_spmm", "col must be int64", _csr(_set(COL, lambda k, t: t.int()))),
    Case(
        "csr_spmm",
        "x must be float32 or float64",
        _csr(lambda k, a: a.__setitem__(slice(VAL, X + 1), [a[VAL].half(), a[X].half()])),
    ),
    Case("csr_spmm", "val must have x's dtype", _csr(_set(VAL, lambda k, t: t.double()))),
    Case("csr_spmm", "crow must be contiguous", _csr(_set(CROW, lambda k, t: _noncontig(t)))),
    Case("csr_spmm", "col must be contiguous", _csr(_set(COL, lambda k, t: _noncontig(t)))),
    Case("csr_spmm", "val must be contiguous", _csr(_set(VAL, lambda k, t: _noncontig(t)))),
    Case("csr_spmm", "x must be contiguous", _csr(_set(X, lambda k, t: _noncontig(t)))),
    Case("csr_spmm", "crow must have shape (R + 1,)", _csr(_set(CROW, lambda k, t: t[None]))),
    Case("csr_spmm", "crow must have shape (R + 1,)", _csr(_set(CROW, lambda k, t: t[:0]))),
    Case("csr_spmm", "col must have shape (nnz,)", _csr(_set(COL, lambda k, t: t[None]))),
    Case("csr_spmm", "x must have shape (B, n, 2)", _csr(_set(X, lambda k, t: torch.cat([t, t[..., :1]], -1)))),
    Case("csr_spmm", "x must have shape (B, n, 2)", _csr(_set(X, lambda k, t: t[0]))),
    Case("csr_spmm", "val must have shape (nnz, 2)", _csr(_set(VAL, lambda k, t: t[:-1]))),
    Case("csr_spmm", "val must have shape (nnz, 2)", _csr(_set(VAL, lambda k, t: t.reshape(-1)))),
    Case("csr_spmm", "n_cols must be n or 2n", _csr(_set(N_COLS, lambda k, n: n + 1))),
]


def rvq_inputs(kit: Kit, projected: bool = False) -> dict:
    """A valid call: 9 rows of 8 dims, 2 stages of 16 codes (of 4 dims with projections)."""
    g = torch.Generator().manual_seed(1)
    code_dim = 4 if projected else 8
    books = torch.randn(2, 16, code_dim, generator=g)
    args = dict(
        x=torch.randn(9, 8, generator=g),
        codebooks=books,
        lookup=books.clone(),
        norms=books.square().sum(-1),
        in_proj=torch.randn(2, 4, 8, generator=g) if projected else None,
        in_bias=torch.randn(2, 4, generator=g) if projected else None,
        out_proj=torch.randn(2, 8, 4, generator=g) if projected else None,
        out_bias=torch.randn(2, 8, generator=g) if projected else None,
    )
    args = {name: None if t is None else t.to(kit.dev) for name, t in args.items()}
    return {**args, "n_q": 2, "with_quantized": True}


RVQ_ORDER = ("x", "codebooks", "lookup", "norms", "in_proj", "in_bias", "out_proj", "out_bias", "n_q", "with_quantized")


def _rvq(projected: bool = False, **changes: Callable[[Kit, object], object]) -> Callable[[Kit], tuple]:
    def make(kit: Kit) -> tuple:
        args = rvq_inputs(kit, projected)
        for name, f in changes.items():
            args[name] = f(kit, args[name])
        return tuple(args[name] for name in RVQ_ORDER)

    return make


def _operand_cases(name: str, projected: bool) -> list[Case]:
    return [
        Case(
            "rvq_encode", f"{name} must be on x's {{dev}} device", _rvq(projected, **{name: lambda k, t: t.to(k.other)})
        ),
        Case("rvq_encode", f"{name} must have x's dtype", _rvq(projected, **{name: lambda k, t: t.double()})),
        Case("rvq_encode", f"{name} must be contiguous", _rvq(projected, **{name: lambda k, t: _noncontig(t)})),
    ]


def _none(k: Kit, t: object) -> None:
    return None


RVQ_CASES = [
    Case("rvq_encode", "x must be a {dev} tensor", _rvq(x=lambda k, t: t.to(k.other))),
    Case("rvq_encode", "x must be float32 or float64", _rvq(x=lambda k, t: t.half())),
    Case("rvq_encode", "x must be contiguous", _rvq(x=lambda k, t: _noncontig(t))),
    Case("rvq_encode", "x must have shape (N, D)", _rvq(x=lambda k, t: t[None])),
    *[c for name in ("codebooks", "lookup", "norms") for c in _operand_cases(name, False)],
    *[c for name in ("in_proj", "in_bias", "out_proj", "out_bias") for c in _operand_cases(name, True)],
    Case("rvq_encode", "codebooks must have shape (Q, K, Dc)", _rvq(codebooks=lambda k, t: t[0])),
    Case(
        "rvq_encode",
        "codebooks and x need Q, K, Dc, D >= 1",
        _rvq(codebooks=lambda k, t: t[:, :0], lookup=lambda k, t: t[:, :0], norms=lambda k, t: t[:, :0]),
    ),
    Case("rvq_encode", "n_q must be in [1, Q]", _rvq(n_q=lambda k, n: 0)),
    Case("rvq_encode", "n_q must be in [1, Q]", _rvq(n_q=lambda k, n: 3)),
    Case("rvq_encode", "lookup must have shape (n_q, K, Dc)", _rvq(lookup=lambda k, t: t[:, :-1].contiguous())),
    Case("rvq_encode", "norms must have shape (n_q, K)", _rvq(norms=lambda k, t: t[:, :-1].contiguous())),
    Case("rvq_encode", "in_bias needs in_proj", _rvq(True, in_proj=_none)),
    Case("rvq_encode", "out_bias needs out_proj", _rvq(True, out_proj=_none)),
    Case("rvq_encode", "in_proj must have shape (Q, Dc, D)", _rvq(True, in_proj=lambda k, t: t[:, :3].contiguous())),
    Case("rvq_encode", "in_bias must have shape (Q, Dc)", _rvq(True, in_bias=lambda k, t: t[:, :3].contiguous())),
    Case("rvq_encode", "out_proj must have shape (Q, D, Dc)", _rvq(True, out_proj=lambda k, t: t[:, :7].contiguous())),
    Case("rvq_encode", "out_bias must have shape (Q, D)", _rvq(True, out_bias=lambda k, t: t[:, :7].contiguous())),
    Case("rvq_encode", "without in_proj, codebooks' Dc must equal x's D", _rvq(True, in_proj=_none, in_bias=_none)),
    Case("rvq_encode", "without out_proj, codebooks' Dc must equal x's D", _rvq(True, out_proj=_none, out_bias=_none)),
]

CASES = CSR_CASES + RVQ_CASES
VALID = {
    "csr_spmm": [csr_inputs],
    "rvq_encode": [lambda kit: _rvq()(kit), lambda kit: _rvq(True)(kit)],
}


# ------------------------------------------------------------------------------------- what checks.h checks

_HELPERS = {  # helper call in checks.h -> the messages it can raise, from its name argument
    "check_compute_input": lambda name: ["x must be a {dev} tensor", "x must be float32 or float64"],
    "check_same_device": lambda name: [f"{name} must be on x's {{dev}} device"],
    "check_dtype": lambda name: [f"{name} must have x's dtype"],
    "check_contiguous": lambda name: [f"{name} must be contiguous"],
    "check_operand": lambda name: [
        f"{name} must be on x's {{dev}} device",
        f"{name} must have x's dtype",
        f"{name} must be contiguous",
    ],
}
_HELPERS["check_optional"] = _HELPERS["check_operand"]


def declared_checks(entry: str, source: str | None = None) -> list[str]:
    """The messages the check function of ``entry`` in checks.h can raise, read from its body: each direct
    ``TORCH_CHECK``'s first string literal and each helper call's messages."""
    source = source if source is not None else (CSRC / "checks.h").read_text(encoding="utf-8")
    match = re.search(rf"check_{entry}\([^{{]*\{{(.*?)\n\}}", source, re.S)
    if match is None:
        raise ValueError(f"checks.h has no check_{entry}")
    body = match.group(1)
    messages = [m.group(1) for m in re.finditer(r'TORCH_CHECK\((?:[^"]|\n)*?"([^"]*)"', body)]
    for m in re.finditer(r'\b(check_\w+)\(\s*([^,()]+(?:\([^()]*\))?),\s*"(\w+)"(?:,\s*"([^"]*)")?', body):
        helper, _, name, meaning = m.groups()
        if helper == "check_shape":
            messages.append(f"{name} must have shape {meaning}")
        elif helper in _HELPERS:
            messages.extend(_HELPERS[helper](name))
    for m in re.finditer(r"\b(check_compute_input)\(", body):
        messages.extend(_HELPERS[m.group(1)]("x"))
    return [re.sub(r";?\s*(got\s*)?$", "", msg.strip()) for msg in messages]


# ------------------------------------------------------------------------------------------------ the child


def _host_module(build_dir: str):
    """checks.h compiled for the CPU, with the real entries' signatures; each entry returns the checked sizes."""
    from torch.utils.cpp_extension import load_inline

    source = r"""
#include "checks.h"

std::vector<int64_t> csr_spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                              const at::Tensor& x, int64_t n_cols) {
  const auto s = mert_fast::checks::check_csr_spmm(crow, col, val, x, n_cols, c10::DeviceType::CPU);
  return {s.n_rows, s.nnz, s.batch, s.n_in};
}

std::vector<int64_t> rvq_encode(const at::Tensor& x, const at::Tensor& codebooks, const at::Tensor& lookup,
                                const at::Tensor& norms, const std::optional<at::Tensor>& in_proj,
                                const std::optional<at::Tensor>& in_bias, const std::optional<at::Tensor>& out_proj,
                                const std::optional<at::Tensor>& out_bias, int64_t n_q, bool with_quantized) {
  const auto s = mert_fast::checks::check_rvq_encode(x, codebooks, lookup, norms, in_proj, in_bias, out_proj,
                                                     out_bias, n_q, c10::DeviceType::CPU);
  return {s.n_rows, s.dim, s.n_stages, s.n_codes, s.code_dim};
}
"""
    os.makedirs(build_dir, exist_ok=True)
    return load_inline(
        "mert_fast_checks_host",
        cpp_sources=source,
        functions=["csr_spmm", "rvq_encode"],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O1"],
        build_directory=build_dir,
    )


def run(ext, kit: Kit) -> None:
    """Call every valid input, then every case, printing one line each (flushed: a crash leaves the last id)."""

    def say(line: str) -> None:
        print(line, flush=True)

    for entry, makers in VALID.items():
        for i, make in enumerate(makers):
            tag = f"valid {entry} {i}"
            say(f"start {tag}")
            try:
                getattr(ext, entry)(*make(kit))
            except Exception as exc:  # noqa: BLE001  (reported to the parent)
                say(f"fail {tag} raised {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            say(f"ok {tag}")
    for case in CASES:
        expect = case.expect.format(dev=kit.dev_name)
        say(f"start {case.id}")
        try:
            getattr(ext, case.entry)(*case.args(kit))
        except RuntimeError as exc:
            if expect in str(exc):
                say(f"ok {case.id}")
            else:
                say(f"fail {case.id} wrong message: {str(exc).splitlines()[0]}")
            continue
        except Exception as exc:  # noqa: BLE001
            say(f"fail {case.id} raised {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        say(f"fail {case.id} did not raise")
    say("done")


def main(argv: list[str]) -> None:
    if argv[0] == "cuda":
        from mert_fast._native import native

        ext = native()
        if ext is None:
            raise SystemExit("mert_fast._C is not built")
        run(ext, Kit("cuda", "cpu", "CUDA"))
    else:
        run(_host_module(argv[1]), Kit("cpu", "meta", "CPU"))


if __name__ == "__main__":
    main(sys.argv[1:])
