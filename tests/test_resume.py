"""Kill and resume: 2 ranks (gloo), DataLoader workers = 2, fp32 and bf16, ZeRO-2.

An uninterrupted run is the reference. A second run with the same settings is sent SIGTERM mid-run: it must leave
a finished checkpoint of the last step it completed and exit with 128 + SIGTERM. Resumed from that checkpoint, the
run continues, and every loss term, accuracy, gradient norm and learning rate of the steps after the checkpoint
equals the uninterrupted run's within 1e-5 relative (wall-time fields excluded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pretrain_utils import ROOT, assert_rows_match, deepspeed_cmd, env, metrics, run, train_args

pytestmark = pytest.mark.slow

STEPS = 12


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigterm_then_resume_matches_uninterrupted(pretrain_data, tmp_path, precision):
    port = 29620 if precision == "fp32" else 29630
    extra = ("--num-workers", "2", "--precision", precision, "--save-every", "3", "--val-fraction", "0",
             "--deepspeed_config", str(ROOT / "configs/ds_zero2.json"))  # fmt: skip
    reference = tmp_path / "reference"
    run(deepspeed_cmd(port) + train_args(pretrain_data, reference, STEPS, *extra), tmp_path)

    out = tmp_path / "interrupted"
    cmd = deepspeed_cmd(port + 1) + train_args(pretrain_data, out, STEPS, *extra)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.stdout.read()[-4000:]}"
        # as a batch scheduler does: every process of the job (runner, launcher, ranks, their DataLoader workers)
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, "an interrupted run must not report success"
    assert "SIGTERM" in log, log[-4000:]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.removeprefix("step"))
    assert 4 <= stopped_at < STEPS, log[-4000:]
    meta = json.loads((out / "checkpoints" / latest / "mert_fast.json").read_text())
    assert meta["step"] == stopped_at and meta["run"]["world_size"] == 2
    assert not list((out / "checkpoints").glob(".tmp-*")), "a finished checkpoint leaves no temporary directory"
    assert len(metrics(out)) >= stopped_at

    resumed = run(deepspeed_cmd(port + 2) + train_args(pretrain_data, out, STEPS, *extra, "--resume"), tmp_path)
    assert f"resumed from {out / 'checkpoints' / latest}" in resumed.stdout + resumed.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "metrics.jsonl holds each step once"
    assert_rows_match(rows, metrics(reference))  # every step, the ones after the checkpoint included
    kept = sorted(p.name for p in (out / "checkpoints").glob("step*"))
    assert len(kept) == 3 and kept[-1] == f"step{STEPS:08d}", kept  # keep_last 3 (default)


def test_resume_with_another_world_size_is_a_clear_error(pretrain_data, tmp_path):
    out = tmp_path / "run"
    extra = ("--num-workers", "0", "--save-every", "2", "--val-fraction", "0")
    run(deepspeed_cmd(29640) + train_args(pretrain_data, out, 2, *extra), tmp_path)
    cmd = [sys.executable, str(ROOT / "train.py"), *train_args(pretrain_data, out, 4, *extra, "--resume")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "world_size: checkpoint 2, now 1" in proc.stderr, proc.stderr[-3000:]
