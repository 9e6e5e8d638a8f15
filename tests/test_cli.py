"""The ``mert-fast`` command line, run in-process through ``main`` (and once as ``python -m mert_fast.cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mert_fast.audio import synth_demo
from mert_fast.cli import main
from mert_fast.cli.cqt import c_ticks, note_name
from mert_fast.ops.reference import cqt_frequencies

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 300 and image.shape[1] >= 600
    assert image[..., :3].std() > 0.05  # a picture, not a blank page


@pytest.fixture
def short_wav(tmp_path) -> Path:
    """One second of the demo at 44.1 kHz stereo: the command must resample and downmix it."""
    x = synth_demo(44100, 1.0).numpy()
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100)
    return path


def test_note_names_and_ticks():
    assert note_name(440.0) == "A4"
    assert note_name(32.7) == "C1"
    assert note_name(261.63) == "C4"
    assert note_name(466.16) == "A#4"
    ticks, labels = c_ticks(cqt_frequencies(32.7, 336, 48))
    assert ticks == [0, 48, 96, 144, 192, 240, 288]
    assert labels == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]


def test_cqt_demo(tmp_path, capsys):
    out = tmp_path / "figures" / "cqt.png"
    assert main(["cqt", "--out", str(out)]) == 0
    _assert_png(out)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and str(out) in printed[0] and "(1, 336, 451)" in printed[0]


def test_cqt_audio_file(tmp_path, capsys, short_wav):
    out = tmp_path / "clip.png"
    assert main(["--log-level", "info", "cqt", str(short_wav), "--out", str(out), "--device", "cpu"]) == 0
    _assert_png(out)
    assert "(1, 336, 76)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["cqt", "{tmp}/missing.wav"], "missing.wav"),
        (["cqt", "{tmp}/garbage.wav"], "cannot decode audio file"),
        (["cqt", "--out", "{tmp}/cqt.jpg"], "--out must name a .png file"),
        (["cqt", "--device", "nonsense"], "--device"),
        (["cqt", "--sample-rate", "8000"], "Nyquist"),
    ],
    ids=["missing", "garbage", "not-png", "bad-device", "rate-too-low"],
)
def test_cqt_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF but not really a wave file" * 10)
    args = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "cqt.png")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mert-fast cqt: error: ") and err.count("\n") == 1
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cqt.png").exists()


@pytest.mark.parametrize("argv", [[], ["cqt", "--sample-rate", "-5"], ["no-such-command"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: mert-fast" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point(tmp_path, short_wav):
    out = tmp_path / "entry.png"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "mert_fast.cli", "cqt", str(short_wav), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{out}: CQT (1, 336, 76)"
    _assert_png(out)
