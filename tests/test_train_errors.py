"""train.py's usage errors: one line on stderr from rank 0 only, exit status 2, the flag named."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pretrain_utils import ROOT, env


def _train(tmp_path, *args: str, rank: str | None = None) -> subprocess.CompletedProcess:
    environment = env()
    if rank is not None:  # what a launcher sets for each process
        environment.update(RANK=rank, WORLD_SIZE="2", LOCAL_RANK=rank)
    cmd = [sys.executable, str(ROOT / "train.py"), "--log-level", "WARNING", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_bad_argument_is_one_line_on_rank_0_only(tmp_path):
    assert "--lr must be positive; got -1.0" in _one_line(_train(tmp_path, "--lr", "-1", rank="0"))
    other = _train(tmp_path, "--lr", "-1", rank="1")
    assert other.returncode == 2 and other.stderr == "", other.stderr[-3000:]


@pytest.mark.parametrize("kind", ["a-file", "under-a-file"])
def test_impossible_output_dir_names_the_flag(tmp_path, kind):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" if kind == "a-file" else tmp_path / "file" / "run"
    line = _one_line(_train(tmp_path, "--output-dir", str(target)))
    assert f"--output-dir {str(target)!r}" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume", "{tmp}/no-such-run"], "resume: no checkpoint in"),
        (["--data", "{tmp}/no-such-folder"], "audio source not found"),
    ],
    ids=["resume-missing", "data-missing"],
)
def test_missing_inputs_are_one_line(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    assert message in _one_line(_train(tmp_path, "--output-dir", str(tmp_path / "run"), *args))


def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path):
    from mert_fast.train.checkpoint import CHECKPOINT_FORMAT, write_manifest

    ckpt = tmp_path / "run" / "checkpoints" / "step00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "mert_fast.json").write_text(f'{{"format": "{CHECKPOINT_FORMAT}", "step": 4}}')
    optim = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(b"x" * 1000)
    write_manifest(ckpt)
    optim.write_bytes(b"x" * 500)  # half an optimizer file
    line = _one_line(_train(tmp_path, "--output-dir", str(tmp_path / "run"), "--resume", str(ckpt)))
    assert f"{optim} is 500 bytes, the manifest says 1000" in line
