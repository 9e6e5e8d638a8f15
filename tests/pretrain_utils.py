"""Helpers of the end-to-end pre-training tests: the launcher environment, runs, metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Fields that depend on wall time, not on the computation.
TIMING_KEYS = {"audio_seconds_per_s", "data_fraction", "teacher_fraction", "tflops", "mfu", "peak_memory_mb"}


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out["DS_ACCELERATOR"] = "cpu"
    out["OMP_NUM_THREADS"] = "1"
    out.pop("TRITON_INTERPRET", None)
    return out


def check(proc: subprocess.CompletedProcess, cmd: list[str]) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return check(subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout), cmd)


def deepspeed_cmd(port: int) -> list[str]:
    launcher = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.fail("the deepspeed launcher is not installed (pip install .[train])")
    return [launcher, "--num_gpus", "2", "--master_port", str(port), str(ROOT / "train.py")]


def train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """The tiny recipe on ``data``'s corpus and teacher, with the conv front end, whose export transformers loads."""
    return [
        "--preset", "tiny", "--front-end", "conv", "--data", str(data / "corpus"), "--teacher", str(data / "teacher"),
        "--output-dir", str(out), "--max-steps", str(steps), "--log-every", "1", "--batch-size", "4",
        "--crop-seconds", "3", "--warmup-steps", "5", "--num-workers", "1", "--seed", "0", *extra,
    ]  # fmt: skip


def metrics(out: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split", "train") == split]


def assert_learns(rows: list[dict], steps: int) -> None:
    """Every step logged once with finite values; the mean loss of the last 5 steps is below the first 5's: by >= 5%
    for the codebook objectives (a teacher with evenly used codes leaves a fresh student's CE only a few nats above
    the code prior, about 37 nats for 8 x 128 codes), by >= 10% for data2vec."""
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("loss", "grad_norm", "lr"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r)
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    fall = 0.05 if "prior" in rows[0] else 0.1
    assert last <= (1 - fall) * first, f"loss did not fall by {fall:.0%}: first-5 mean {first:.4f}, last-5 {last:.4f}"


def assert_rows_match(rows: list[dict], reference: list[dict], rtol: float = 1e-5) -> None:
    """Each row equals the reference row of its step in every field but the wall-time ones, within ``rtol``."""
    ref = {r["step"]: r for r in reference}
    for row in rows:
        want = ref[row["step"]]
        assert set(row) == set(want), (row["step"], set(row) ^ set(want))
        for key, value in row.items():
            if key in TIMING_KEYS or key == "split":
                continue
            if value is None or want[key] is None:
                assert value == want[key], (row["step"], key)
                continue
            assert abs(value - want[key]) <= rtol * max(abs(want[key]), 1e-12), (row["step"], key, value, want[key])


def assert_export_matches(run_dir: Path, tmp_path: Path, hf_class: str = "HubertModel") -> None:
    """``mert-fast export RUN_DIR`` loads in transformers' ``hf_class`` with no key missing, unexpected or misshapen,
    and gives the features of the run's trained model (``RUN_DIR/model``) in MERTModel and in transformers."""
    import torch
    import transformers

    from mert_fast.model.mert import MERTModel

    export = tmp_path / "export"
    run([sys.executable, "-m", "mert_fast.cli", "export", str(run_dir), str(export)], tmp_path)
    hf, info = getattr(transformers, hf_class).from_pretrained(export, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    trained = MERTModel.from_pretrained(run_dir / "model")
    exported = MERTModel.from_pretrained(export)
    audio = 0.1 * torch.randn(2, trained.config.sample_rate + 77)
    with torch.no_grad():
        want = trained(audio, output_hidden_states=True).hidden_states
        got = exported(audio, output_hidden_states=True).hidden_states
        theirs = hf.eval()(audio, output_hidden_states=True).hidden_states
    for w, g, t in zip(want, got, theirs, strict=True):
        scale = w.abs().max()
        assert (g - w).abs().max() <= 1e-5 * scale and (t - w).abs().max() <= 1e-4 * scale
