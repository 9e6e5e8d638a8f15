"""Teachers: Mel-RVQ fitting, saving and frame counts; the same labels on the torch path and the Triton kernels."""

from __future__ import annotations

import pytest
import torch

from mert_fast.cli import main as cli_main
from mert_fast.model.config import PRESETS
from mert_fast.model.teachers import CQTTeacher, MelRVQTeacher, align_to_frames, fit_mel_rvq
from mert_fast.model.teachers.mel_rvq import mel_filterbank
from mert_fast.synth import make_corpus, synth_clip


@pytest.fixture(scope="module")
def teacher() -> MelRVQTeacher:
    clips = [torch.from_numpy(synth_clip(i, seconds=4.0, sample_rate=24000, seed=1)) for i in range(4)]
    return fit_mel_rvq(clips, 24000, n_q=3, codebook_size=32, steps=20, batch_frames=256, seed=0)


def test_mel_filterbank_against_librosa():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(24000, 2048, 128).T.numpy()
    theirs = librosa.filters.mel(sr=24000, n_fft=2048, n_mels=128, htk=True, norm=None)
    assert ours.shape == theirs.shape
    assert abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("extra", [0, 1, 80, 159, 239, 240, 319])
def test_mel_rvq_labels_cover_the_student_frames(teacher, extra):
    length = 3 * 24000 + extra
    n = PRESETS["mert-v1-95m"].num_frames(length)
    codes = teacher(0.1 * torch.randn(2, length))
    assert codes.dtype == torch.int64 and codes.shape[2] == 3
    assert 3 * codes.shape[1] >= n and teacher.label_rate == 25
    aligned = align_to_frames(codes, n, repeat=3)
    assert aligned.shape == (2, n, 3)
    assert torch.equal(aligned[:, ::3], codes[:, : aligned[:, ::3].shape[1]])


def test_fitted_teacher_uses_its_codes_and_round_trips(teacher, tmp_path):
    seen = torch.cat([torch.from_numpy(synth_clip(i, seconds=4.0, sample_rate=24000, seed=1)) for i in range(4)])
    used = teacher(seen[None])
    assert all(len(torch.unique(used[..., q])) > 16 for q in range(3))  # more than half of the 32 codes in use
    clip = torch.from_numpy(synth_clip(9, seconds=4.0, sample_rate=24000, seed=1))[None]
    codes = teacher(clip)
    assert len(torch.unique(codes[..., 0])) >= 3  # an unseen piece is not collapsed onto one code
    teacher.save(tmp_path / "t")
    again = MelRVQTeacher.load(tmp_path / "t")
    assert torch.equal(again(clip), codes)
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        MelRVQTeacher.load(tmp_path / "missing")


@pytest.mark.triton
def test_teachers_agree_on_torch_and_triton(teacher, triton_backend, monkeypatch):
    audio = 0.3 * torch.randn(2, 12000)
    triton_codes = teacher(audio)
    triton_cqt = CQTTeacher()(audio)
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    torch_codes = teacher(audio)
    torch_cqt = CQTTeacher()(audio)
    assert torch.equal(triton_codes, torch_codes)
    assert ((triton_cqt - torch_cqt).norm() / torch_cqt.norm()) < 1e-5


def test_fit_teacher_command(tmp_path, capsys):
    make_corpus(tmp_path / "audio", n_clips=3, seconds=4.0, sample_rate=24000, seed=2)
    code = cli_main(["fit-teacher", str(tmp_path / "audio"), "--out", str(tmp_path / "teacher"), "--codebooks", "2",
                     "--codebook-size", "16", "--steps", "5"])  # fmt: skip
    assert code == 0 and "mel-rvq teacher" in capsys.readouterr().out
    loaded = MelRVQTeacher.load(tmp_path / "teacher")
    assert loaded.settings["n_q"] == 2 and loaded.settings["codebook_size"] == 16
