"""Write the tuning table ``auto`` reads (``mert_fast/ops/tuning.json``) from benchmark results of one GPU.

    python bench/tune.py RESULT.json ...            # pytest-benchmark JSON written by the benchmarks on a GPU
    python bench/tune.py --gpu "NVIDIA H200" --torch 2.11.0+cu130 --triton 3.6.0 --commit 4edd634 \\
        --date 2026-12-04 bench_attention.md ...    # tables rendered by bench/render_table.py from such JSON

Every benchmark row of a candidate ``auto`` can run (``mert_fast (torch|cuda|triton)`` for the CQT and RVQ, the
SDPA backends and ``mert_fast (triton)`` for attention) becomes that candidate's median in its op's bucket (the
op's ``tuning_key`` of the case). A row is only written after the benchmark checked its output, so every candidate
in the table is exact. The GPU's ops measured here replace its earlier entries for those ops; other ops and other
GPUs are kept. Each op records its provenance: GPU, torch, triton, commit, date and the source files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE = REPO_ROOT / "mert_fast" / "ops" / "tuning.json"
NOTE = (
    "Median times (ms) of the exact candidates of MERT_FAST_BACKEND=auto per op, GPU and shape bucket; auto runs the "
    "fastest one that can run, and the op's safe default where this table has no entry. Written by "
    "python bench/tune.py from the benchmarks' results on that GPU."
)
_DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}


def bucket_of(op: str, case: str) -> str | None:
    """The tuning bucket of a benchmark case label (``cuda ...`` cases only), or None when auto has none for it."""
    if not case.startswith("cuda "):
        return None
    if op == "attention":
        from mert_fast.ops.attention import tuning_key

        m = re.search(r"B(\d+) H(\d+) T(\d+) D(\d+) (\w+) (fwd\+bwd|fwd|bwd)( padded)?$", case)
        if m is None or m.group(6) == "bwd":  # a backward alone is no call auto sees
            return None
        batch, heads, t, head_dim = map(int, m.groups()[:4])
        dtype = getattr(torch, m.group(5))
        return tuning_key(dtype, batch, heads, t, t, head_dim, bool(m.group(7)), m.group(6) == "fwd+bwd")
    if op == "rvq":
        from mert_fast.ops.rvq import tuning_key

        m = re.search(r"\((\d+) frames, (\d+)x(\d+)x(\d+)(?: proj (\d+)->\d+)?( cosine)?\) (\w+)$", case)
        if m is None:
            return None
        rows, _, codes, code_dim = map(int, m.groups()[:4])
        dim = int(m.group(5)) if m.group(5) else code_dim
        metric = "cosine" if m.group(6) else "l2"
        return tuning_key(_DTYPES[m.group(7)], metric, bool(m.group(5)), rows, dim, code_dim, codes)
    if op == "codebook_cross_entropy":
        from mert_fast.ops.codebook_ce import tuning_key

        m = re.search(r"S(\d+) Q(\d+) K(\d+) D(\d+) (\w+) fwd\+bwd$", case)
        if m is None:
            return None
        frames, n_q, n_k, dim = map(int, m.groups()[:4])
        return tuning_key(getattr(torch, m.group(5)), frames, n_q, n_k, dim)
    if op == "cqt":
        from mert_fast.ops.cqt import tuning_key

        m = re.search(r"(\d+)x(\d+(?:\.\d+)?)s (\w+)$", case)
        if m is None:
            return None
        return tuning_key(_DTYPES[m.group(3)], int(m.group(1)), round(float(m.group(2)) * 24000))
    return None


def candidate_of(op: str, implementation: str) -> str | None:
    """The ``auto`` candidate a benchmark implementation is, or None (peers, baselines, variants not offered)."""
    if op == "attention" and implementation in ("sdpa-cudnn", "sdpa-flash", "sdpa-efficient"):
        return implementation
    m = re.fullmatch(r"mert_fast \((torch|cuda|triton)\)", implementation)
    if m is None:
        return None
    if op == "attention":
        return "triton" if m.group(1) == "triton" else None
    if op == "codebook_cross_entropy":
        return m.group(1) if m.group(1) in ("torch", "triton") else None
    return m.group(1) if op in ("rvq", "cqt") else None


def rows_from_json(path: Path) -> tuple[list[dict], dict]:
    """Rows (device, op, case, implementation, median_ms) and the provenance of one pytest-benchmark JSON file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from render_table import load_rows

    meta = json.loads(path.read_text()).get("mert_fast", {})
    versions = meta.get("versions", {})
    provenance = {
        "gpu": meta.get("device_name"),
        "torch": versions.get("torch"),
        "triton": versions.get("triton"),
        "commit": meta.get("commit_short") or meta.get("commit"),
        "date": (meta.get("date") or "")[:10],
    }
    return load_rows(path), provenance


def rows_from_markdown(path: Path) -> list[dict]:
    """Rows of a table rendered by bench/render_table.py (its first four columns and the median)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("device", "") or set(cells[0]) <= {"-"}:
            continue
        try:
            median = float(cells[4].replace(",", ""))
        except ValueError:
            continue
        rows.append(
            {"device": cells[0], "op": cells[1], "case": cells[2], "implementation": cells[3], "median_ms": median}
        )
    return rows


def device_entry(rows: list[dict], provenance: dict) -> tuple[str, dict]:
    """The table entry of one GPU's rows: ``{"gpu", "ops": {op: {"provenance", "buckets": {key: {"case", "ms"}}}}}``."""
    gpus = {row["device"] for row in rows}
    if len(gpus) != 1:
        raise SystemExit(f"the results must come from one GPU; got {sorted(gpus)}")
    gpu = gpus.pop()
    ops: dict[str, dict] = {}
    for row in rows:
        key, cand = bucket_of(row["op"], row["case"]), candidate_of(row["op"], row["implementation"])
        if key is None or cand is None:
            continue
        op = ops.setdefault(row["op"], {"provenance": {**provenance, "gpu": gpu, "source": []}, "buckets": {}})
        if row["source"] not in op["provenance"]["source"]:
            op["provenance"]["source"].append(row["source"])
        entry = op["buckets"].setdefault(key, {"case": row["case"], "ms": {}})
        entry["ms"][cand] = round(row["median_ms"], 4)
    from mert_fast.ops._backend import device_key

    return device_key(gpu), {"gpu": gpu, "ops": ops}


def merge(table: dict, key: str, entry: dict) -> dict:
    """``table`` with ``entry``'s ops replacing those ops of GPU ``key``; everything else kept."""
    from mert_fast.ops._backend import TUNING_FORMAT

    devices = dict(table.get("devices", {}))
    old = devices.get(key, {"gpu": entry["gpu"], "ops": {}})
    devices[key] = {"gpu": entry["gpu"], "ops": {**old.get("ops", {}), **entry["ops"]}}
    return {"format": TUNING_FORMAT, "note": NOTE, "devices": dict(sorted(devices.items()))}


def check_auto(rows: list[dict], tolerance: float = 1.10) -> tuple[str, bool]:
    """A short Markdown table of every GPU case with a ``mert_fast (auto)`` row: auto's median against the fastest
    exact candidate's of the same case; False when auto is slower than ``tolerance`` times that anywhere."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["case"].startswith("cuda "):
            groups.setdefault((row["op"], row["case"]), []).append(row)
    lines = ["| op | case | auto ms | fastest exact candidate | its ms | auto / fastest |", "|---|---|---|---|---|---|"]
    ok = True
    for (op, case), group in sorted(groups.items()):
        auto = next((r for r in group if r["implementation"] == "mert_fast (auto)"), None)
        candidates = [(candidate_of(op, r["implementation"]), r) for r in group]
        candidates = [(name, r) for name, r in candidates if name is not None]
        if auto is None or not candidates:
            continue
        name, best = min(candidates, key=lambda c: c[1]["median_ms"])
        ratio = auto["median_ms"] / best["median_ms"]
        ok &= ratio <= tolerance
        mark = "" if ratio <= tolerance else " !!"
        lines.append(
            f"| {op} | {case} | {auto['median_ms']:.3g} | {name} | {best['median_ms']:.3g} | {ratio:.2f}{mark} |"
        )
    if len(lines) == 2:
        lines.append("| — | no case with a mert_fast (auto) row | | | | |")
        ok = False
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="pytest-benchmark JSON, or render_table.py Markdown")
    parser.add_argument("--table", type=Path, default=TABLE, help=f"the table to update (default: {TABLE})")
    for name in ("gpu", "torch", "triton", "commit", "date"):
        parser.add_argument(f"--{name}", help=f"provenance: {name} (required for Markdown input)")
    parser.add_argument("--dry-run", action="store_true", help="print the updated table instead of writing it")
    parser.add_argument(
        "--check-auto",
        action="store_true",
        help="write nothing; print auto against the fastest exact candidate per case, exit 1 if over 10%% slower",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))

    rows: list[dict] = []
    provenance: dict = {}
    for path in args.paths:
        source = f"{path.parent.name}/{path.name}"
        if path.suffix == ".json":
            file_rows, file_provenance = rows_from_json(path)
            provenance = {**file_provenance, **provenance}
        else:
            file_rows = rows_from_markdown(path)
            source += " (medians as rendered: 2-3 significant digits)"
        rows += [{**row, "source": source} for row in file_rows]
    if args.check_auto:
        text, ok = check_auto(rows)
        print(text)
        return 0 if ok else 1
    given = {name: getattr(args, name) for name in ("gpu", "torch", "triton", "commit", "date") if getattr(args, name)}
    provenance = {**provenance, **given}
    missing = [name for name in ("torch", "triton", "commit", "date") if not provenance.get(name)]
    if missing:
        raise SystemExit(f"provenance incomplete, give --{' --'.join(missing)}")
    if args.gpu:
        rows = [{**row, "device": args.gpu} if row["device"] in (args.gpu, "unknown") else row for row in rows]
    rows = [row for row in rows if row["case"].startswith("cuda ")]
    key, entry = device_entry(rows, provenance)
    if not entry["ops"]:
        raise SystemExit("no benchmark row of an auto candidate in these results")
    table = json.loads(args.table.read_text()) if args.table.exists() else {}
    text = json.dumps(merge(table, key, entry), indent=2) + "\n"
    if args.dry_run:
        print(text, end="")
    else:
        args.table.write_text(text)
        counts = ", ".join(f"{op}: {len(v['buckets'])} buckets" for op, v in entry["ops"].items())
        print(f"wrote {args.table}: {entry['gpu']} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
