"""bench/render_table.py: the speed table's cells, from pytest-benchmark JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import render_table  # noqa: E402  (bench/ is no package)


def _bench(implementation: str, median_s: float, baseline: bool = False, **info) -> dict:
    extra = {"op": "rvq", "case": "cuda encodec", "implementation": implementation, "baseline": baseline, **info}
    return {"group": "rvq cuda encodec", "name": implementation, "stats": {"median": median_s}, "extra_info": extra}


def test_rvq_rows_show_code_agreement_and_the_worst_gap(tmp_path):
    """A tie is no error: RVQ rows say how many rows' codes agree with the baseline and how far the worst chosen
    code is from a nearest one, not the output error that one tied row produces."""
    data = {
        "mert_fast": {"commit_short": "abc1234", "device_name": "NVIDIA H200", "date": "2026-12-04"},
        "benchmarks": [
            _bench("torch stage loop", 4e-3, True, worst_relative_gap=0.0, rows_differing_from_baseline=0.0),
            _bench(
                "mert_fast (torch)",
                2.75e-3,
                rel_err_vs_torch_stage_loop=8.0e-3,
                worst_relative_gap=0.0,
                rows_differing_from_baseline=1 / 24000,
            ),
            _bench(
                "mert_fast (triton, tf32 search; not offered)",
                0.57e-3,
                rel_err_vs_torch_stage_loop=8.8e-2,
                worst_relative_gap=3.1e-4,
                rows_differing_from_baseline=0.25,
            ),
            _bench(
                "mert_fast (cuda)",
                3.4e-3,
                rel_err_vs_torch_stage_loop=0.0,
                worst_relative_gap=0.0,
                rows_differing_from_baseline=0.0,
            ),  # fmt: skip
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    table = render_table.render(render_table.load_rows(path))
    lines = {line.split(" | ")[3]: line for line in table.splitlines() if line.startswith("| NVIDIA")}
    assert "codes: 99.996% of rows agree; worst gap 0 |" in lines["mert_fast (torch)"]
    assert "8.0e-03" not in lines["mert_fast (torch)"]
    assert "codes: 75.000% of rows agree; worst gap 3.1e-04 |" in lines["mert_fast (triton, tf32 search; not offered)"]
    assert "codes: 100% of rows agree; worst gap 0 |" in lines["mert_fast (cuda)"]
    assert "codes: baseline; worst gap 0 |" in lines["torch stage loop"]
    assert "exact ties" in table


def test_other_ops_keep_the_relative_error(tmp_path):
    bench = _bench("mert_fast (cuda)", 1e-3, rel_err_vs_nnaudio=2.7e-5)
    bench["extra_info"]["op"] = "cqt"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"mert_fast": {"device_name": "NVIDIA H200"}, "benchmarks": [bench]}))
    assert "| 2.7e-05 |" in render_table.render(render_table.load_rows(path))
