"""The README's main command (``python train.py``: the tiny preset, its synthetic corpus, 1,000 steps on the CPU)
against its committed loss curve, ``tests/data/tiny_loss_curve.json``: every logged training and validation loss
within 1% relative; and it learns: at the end, the masked CE on the held-out clips is at least 15% under their
code prior and under the copy baseline's CE (each masked frame given its nearest unmasked frame's code).

Runs differ only by floating-point rounding (BLAS kernels, thread count); measured between 1 and 2 threads on
the same machine, the largest difference over the 300 steps was 0.33%. The corpus is rendered by the numpy
synthesizer (as on a machine without fluidsynth) so that it is the same everywhere.

Regenerate the curve (after a deliberate change of the recipe) with ``python tests/test_loss_curve.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pretrain_utils import ROOT, check, env, metrics

pytestmark = pytest.mark.slow

CURVE = Path(__file__).resolve().parent / "data" / "tiny_loss_curve.json"
KEYS = ("loss", "ce", "prior")
#: The main command's last validation: masked CE at most this fraction of the code prior.
BELOW_PRIOR = 0.85
THREADS = "2"


def run_main_command(out: Path) -> list[dict]:
    """``python train.py --output-dir OUT`` on the default synthetic corpus (numpy-rendered), 2 threads."""
    from mert_fast.synth import make_corpus

    make_corpus(out / "corpus", n_clips=64, seconds=8.0, sample_rate=24000, seed=0, source="numpy")
    cmd = [sys.executable, str(ROOT / "train.py"), "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=out, env={**env(), "OMP_NUM_THREADS": THREADS}, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    check(proc, cmd)
    return metrics(out) + metrics(out, "val")


def test_main_command_follows_the_committed_curve(tmp_path):
    reference = json.loads(CURVE.read_text())
    rows = {(r["step"], r["split"]): r for r in run_main_command(tmp_path)}
    assert set(rows) == {(r["step"], r["split"]) for r in reference["rows"]}, "logged steps differ"
    worst = 0.0
    for want in reference["rows"]:
        got = rows[(want["step"], want["split"])]
        for key in KEYS:
            deviation = abs(got[key] - want[key]) / abs(want[key])
            worst = max(worst, deviation)
            assert deviation <= 0.01, (
                f"step {want['step']} ({want['split']}) {key}: {got[key]:.5f}, curve {want[key]:.5f}"
            )
    print(f"largest deviation from the committed curve: {worst:.2e}")
    last = max((r for r in rows.values() if r["split"] == "val"), key=lambda r: r["step"])
    assert last["ce"] <= BELOW_PRIOR * last["prior"], f"validation CE {last['ce']:.3f}, prior {last['prior']:.3f}"
    assert last["ce"] < last["copy_ce"], f"validation CE {last['ce']:.3f}, copy baseline {last['copy_ce']:.3f}"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        found = run_main_command(Path(tmp))
    curve = {
        "command": "python train.py (tiny preset, numpy-rendered synthetic corpus, OMP_NUM_THREADS=2, CPU)",
        "rows": [{"step": r["step"], "split": r["split"], **{k: r[k] for k in KEYS}} for r in found],
    }
    CURVE.write_text(json.dumps(curve, indent=1) + "\n")
    print(f"{CURVE}: {len(curve['rows'])} logged points")
