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
The compile and its result cache are in ``_gate_compile``, the cases in ``_gate_cases``, the rules and the
Hopper-readiness table in ``_gate_report``; this module is the command line and re-exports their names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import triton

from ._gate_cases import cases
from ._gate_compile import TARGET, Case, Ptr, run
from ._gate_report import README_BEGIN, README_END, SHARED_LIMIT, SPILL_ALLOWED, markdown_table, problems, update_readme

__all__ = [
    "README_BEGIN",
    "README_END",
    "SHARED_LIMIT",
    "SPILL_ALLOWED",
    "TARGET",
    "Case",
    "Ptr",
    "cases",
    "main",
    "markdown_table",
    "problems",
    "run",
    "update_readme",
]


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
