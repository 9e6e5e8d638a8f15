"""Probe subsets of the dimensions of a cached handcrafted feature file (what part of a baseline carries a task).

``bench/probe_report.py`` caches the time-pooled CQT and MFCC features of a probe set in ``WORK/cache/{cqt,mfcc}``
(``features`` ``(N, 1, D)`` in the manifest's row order). This probes named subsets of those ``D`` dimensions with
the same protocol (:func:`mert_fast.probe.train_probes`, MARBLE's MLP, one probe per seed) and prints and writes the
test scores, e.g. the MFCC baseline (13 cepstra, then their deltas and delta-deltas) with and without ``c0``, the
frame level in dB, which a gain-invariant student never sees::

    python bench/probe_feature_subsets.py --features WORK/cache/mfcc/mfcc.npz --manifest SET/instrument.csv \\
        --subset all=0-38 --subset static=0-12 --subset no_c0=1-12,14-25,27-38 --subset c0=0,13,26
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mert_fast.probe.manifest import read_probe_manifest  # noqa: E402
from mert_fast.probe.probe import PRIMARY_METRIC, mean_std, train_probes  # noqa: E402


def parse_dims(spec: str, dim: int) -> list[int]:
    """``"0-12,14,20-22"`` -> the listed indices, each in ``[0, dim)``, in order, without repeats."""
    out: list[int] = []
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            lo, hi = -1, -1
        if not 0 <= lo <= hi < dim:
            raise ValueError(f"--subset: {part!r} is not a range of dimensions in [0, {dim})")
        out += [i for i in range(lo, hi + 1) if i not in out]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="a cached .npz with features (N, 1, D)")
    parser.add_argument("--manifest", type=Path, required=True, help="the task's manifest (CSV)")
    parser.add_argument("--task-type", default="multiclass", choices=sorted(PRIMARY_METRIC))
    parser.add_argument("--subset", action="append", required=True, metavar="NAME=DIMS",
                        help="a named subset of dimensions, e.g. static=0-12 (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=None, help="also write the scores as JSON here")
    args = parser.parse_args(argv)
    with np.load(args.features) as saved:
        features = saved["features"]
    task = read_probe_manifest(args.manifest, args.task_type)
    if features.ndim != 3 or features.shape[1] != 1 or features.shape[0] != len(task.paths):
        raise SystemExit(f"error: --features: expected ({len(task.paths)}, 1, D) features; got {features.shape}")
    metric = PRIMARY_METRIC[args.task_type]
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {"features": str(args.features), "manifest": str(args.manifest), "metric": metric, "subsets": {}}
    for item in args.subset:
        name, _, spec = item.partition("=")
        dims = parse_dims(spec, features.shape[2])
        picked = np.ascontiguousarray(features[:, :, dims])
        scores = [train_probes(task, picked, seed=s, weighted=False)["layers"][0]["test"][metric] for s in seeds]
        report["subsets"][name] = {"dims": dims, "test": scores, "summary": mean_std(scores)}
        print(f"{name:>12}: {100 * np.mean(scores):5.1f} ± {100 * np.std(scores, ddof=1):.1f} "
              f"({', '.join(f'{100 * s:.1f}' for s in scores)})", flush=True)  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
