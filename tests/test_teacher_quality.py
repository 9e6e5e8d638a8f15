"""Mel-RVQ and k-means teachers whose codes describe the music: a fit that reconstructs held-out clips, stage by
stage; codes that ignore the gain and a faint noise floor; the quality the fit logs is the one the saved teacher has."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from mert_fast.model.teachers import MelRVQTeacher, fit_kmeans_teacher, fit_mel_rvq, load_teacher
from mert_fast.model.teachers.mel_rvq import log_mel_db, quality_warnings
from mert_fast.ops import ResidualVQ, rvq_decode
from mert_fast.synth import synth_clip

SR = 24000


def _clips(n: int, seed: int, seconds: float = 4.0) -> list[torch.Tensor]:
    return [torch.from_numpy(synth_clip(i, seconds=seconds, sample_rate=SR, seed=seed)).float() for i in range(n)]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus() -> dict:
    """24 clips to fit on (corpus seed 0) and 8 clips of other pieces (corpus seed 7)."""
    return {"fit": _clips(24, 0), "other": _clips(8, 7)}


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory) -> dict:
    """A teacher of 8 stages x 64 codes, its fit's log, and the same teacher saved and loaded again."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("mert_fast.model.teachers.mel_rvq")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        teacher = fit_mel_rvq(corpus["fit"], SR, codebook_size=64, steps=30, batch_frames=1024, seed=0)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    directory = tmp_path_factory.mktemp("teacher")
    teacher.save(directory)
    return {"teacher": teacher, "log": [r.getMessage() for r in records], "dir": directory}


def _explained_variance(teacher: MelRVQTeacher, clips: list[torch.Tensor]) -> list[float]:
    """Explained variance after each stage, from the codes ``teacher(audio)`` gives and ``rvq_decode``."""
    with torch.no_grad():
        feats = torch.cat([teacher.features(c[None])[0] for c in clips]).double()
        codes = torch.cat([teacher(c[None])[0] for c in clips])
        rvq = teacher.rvq
        total = (feats - feats.mean(0)).square().sum()
        out = []
        for s in range(1, rvq.n_q + 1):
            q = rvq_decode(codes[:, :s], rvq.codebooks[:s], out_proj=rvq.out_proj[:s], out_bias=rvq.out_bias[:s])
            out.append(float(1 - (feats - q.double()).square().sum() / total))
    return out


def _flip_rates(teacher, clips: list[torch.Tensor], transform) -> torch.Tensor:
    with torch.no_grad():
        a = torch.cat([teacher(c[None])[0] for c in clips])
        b = torch.cat([teacher(transform(c)[None])[0] for c in clips])
    return (a != b).double().mean(0)


def _noisy(snr_db: float, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)

    def add(clip: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(clip.shape, generator=gen)
        return clip + noise * clip.square().mean().sqrt() * 10 ** (-snr_db / 20)

    return add


# ---------------------------------------------------------------------------------------------- features


def test_log_mel_db_ignores_gain_and_floors_quiet_bins():
    mel = torch.rand(2, 50, 16, dtype=torch.float64) * 10.0 ** torch.linspace(-12, 0, 16, dtype=torch.float64)
    db = log_mel_db(mel)
    assert torch.allclose(db, log_mel_db(0.25 * mel), atol=1e-9)  # -6 dB of gain scales powers by 1/4
    assert torch.allclose(db.mean(dim=(1, 2)), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    raw = 10 * torch.log10(mel)
    floor = raw.amax(dim=(1, 2), keepdim=True) - 80
    # bins more than 80 dB under the clip's peak all sit on the floor; the others keep their distance from it
    centred_floor = floor - torch.maximum(raw, floor).mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(db, torch.maximum(raw, floor) - torch.maximum(raw, floor).mean(dim=(1, 2), keepdim=True))
    assert bool((db[raw < floor] == centred_floor.expand_as(db)[raw < floor]).all())
    assert bool((raw < floor).any())


def test_mel_rvq_features_are_gain_invariant_and_floored(corpus):
    teacher = MelRVQTeacher(SR, n_q=2, codebook_size=8)
    clip = corpus["fit"][0][None]
    a, b = teacher.features(clip), teacher.features(0.5 * clip)
    assert (a - b).abs().max() < 1e-3
    # near-silence: without the floor its bins would sit 100+ dB under the music and follow any noise added to it
    quiet = clip.clone()
    quiet[:, : SR // 2] *= 1e-6
    noisy = quiet + 1e-9 * torch.randn(quiet.shape, generator=torch.Generator().manual_seed(0))
    head = slice(0, 10)  # the first 0.4 s, near-silent
    assert (teacher.features(quiet)[:, head] - teacher.features(noisy)[:, head]).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------- the fit


def test_every_stage_lowers_the_residual_of_other_pieces(fitted, corpus):
    ev = _explained_variance(fitted["teacher"], corpus["other"])
    assert ev[-1] >= 0.5, ev
    assert all(b > a for a, b in zip([0.0] + ev, ev, strict=False)), ev


def test_codes_ignore_gain_and_barely_follow_faint_noise(fitted, corpus):
    teacher = fitted["teacher"]
    gain = _flip_rates(teacher, corpus["other"], lambda c: 0.5 * c)
    assert gain[0] <= 0.05 and gain.max() <= 0.15, gain
    noise = _flip_rates(teacher, corpus["other"], _noisy(60.0))
    assert noise[0] <= 0.10 and noise.max() <= 0.25, noise
    # the test can fail: a louder noise moves codes
    loud = _flip_rates(teacher, corpus["other"], _noisy(10.0))
    assert loud.max() > noise.max()


def test_the_logged_reconstruction_is_the_eval_mode_held_out_figure(fitted, corpus):
    lines = [m for m in fitted["log"] if "explained variance per stage" in m]
    assert len(lines) == 1, fitted["log"]
    logged = [float(v) for v in lines[0].split("explained variance per stage")[1].split()]
    error = float(re.search(r"reconstruction error ([0-9.]+)", lines[0]).group(1))
    held = [c for i, c in enumerate(corpus["fit"]) if i % 8 == 7]  # the clips the fit holds out
    loaded = load_teacher(fitted["dir"])
    assert not loaded.training
    ev = _explained_variance(loaded, held)
    assert max(abs(a - b) for a, b in zip(logged, ev, strict=True)) <= 6e-4, (logged, ev)
    assert abs(error - (1 - ev[-1])) <= 6e-5
    # and teacher.json keeps the same figures
    quality = json.loads((fitted["dir"] / "teacher.json").read_text())["quality"]
    assert quality["held_out"] and quality["clips"] == len(held)
    assert max(abs(a - b) for a, b in zip(quality["explained_variance"], ev, strict=True)) <= 1e-5


def test_saved_quality_describes_usage_and_flips(fitted):
    quality = json.loads((fitted["dir"] / "teacher.json").read_text())["quality"]
    n_q, size = 8, 64
    for key in ("explained_variance", "codes_used", "perplexity", "flip_rate_gain_-6db", "flip_rate_noise_60db"):
        assert len(quality[key]) == n_q, key
    assert all(1 <= u <= size for u in quality["codes_used"])
    assert all(1.0 <= p <= u + 1e-6 for p, u in zip(quality["perplexity"], quality["codes_used"], strict=True))
    assert max(quality["flip_rate_gain_-6db"]) <= 0.15
    assert quality_warnings(quality) == []


def test_save_load_round_trip_gives_identical_codes(fitted, corpus):
    loaded = MelRVQTeacher.load(fitted["dir"])
    audio = torch.stack(corpus["other"][:3])
    assert torch.equal(loaded(audio), fitted["teacher"](audio))
    assert loaded.quality == json.loads((fitted["dir"] / "teacher.json").read_text())["quality"]


def test_an_old_teacher_format_asks_for_a_new_fit(fitted, tmp_path):
    meta = json.loads((fitted["dir"] / "teacher.json").read_text())
    meta["format"] = "mert_fast.mel_rvq.v1"
    (tmp_path / "teacher.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fit it again"):
        MelRVQTeacher.load(tmp_path)


def test_quality_warnings_name_collapsed_and_useless_stages():
    quality = {"explained_variance": [0.3, 0.5, 0.5, 0.6], "perplexity": [1.5, 20.0, 30.0, 30.0]}
    warnings = quality_warnings(quality)
    assert len(warnings) == 2
    assert "stage 2 does not lower" in warnings[0] and "codebook 0 collapsed" in warnings[1]


# ---------------------------------------------------------------------------------------------- ResidualVQ.fit


def _blobs(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(16, dim, generator=gen) * 3
    low_rank = torch.randn(n, 6, generator=gen) @ torch.randn(6, dim, generator=gen)
    return centres[torch.randint(16, (n,), generator=gen)] + low_rank + 0.3 * torch.randn(n, dim, generator=gen)


def test_rvq_search_picks_the_code_that_best_reconstructs_each_stage():
    rvq = ResidualVQ(24, 3, 16, codebook_dim=4)
    x = _blobs(2000, 24, 0)
    rvq.fit(x, steps=20, batch_rows=512, seed=0)
    codes = rvq.encode(x[:300])
    resid = x[:300].double()
    for s in range(rvq.n_q):
        every = torch.stack([rvq._up(rvq.codebooks[s][k].expand(300, -1), s) for k in range(16)], 1).double()
        errors = (resid[:, None, :] - every).square().sum(-1)  # (rows, codes): brute force over every code
        best = errors.min(1).values
        chosen = errors.gather(1, codes[:, s : s + 1])[:, 0]
        assert torch.allclose(chosen, best, rtol=1e-5, atol=1e-5)
        resid = resid - every[torch.arange(300), codes[:, s]]


def test_rvq_fit_learns_from_the_reconstruction():
    rows = _blobs(5000, 32, 1)
    x, other = rows[:4000], rows[4000:]  # held-out rows of the same distribution
    init = ResidualVQ(32, 4, 32, codebook_dim=4)
    init.fit(x, steps=0, seed=0)
    trained = ResidualVQ(32, 4, 32, codebook_dim=4)
    losses = trained.fit(x, steps=150, batch_rows=1024, lr=3e-3, seed=0)
    assert losses[-1] < losses[0]
    assert float(trained.explained_variance(x)[-1]) > float(init.explained_variance(x)[-1])
    ev = trained.explained_variance(other)
    assert bool((ev[1:] > ev[:-1]).all()) and float(ev[0]) > 0
    with pytest.raises(ValueError, match="l2"):
        ResidualVQ(32, 2, 8, metric="cosine").fit(x)


# ---------------------------------------------------------------------------------------------- k-means teacher


@pytest.mark.parametrize("feature", ["mfcc", "logmel"])
def test_kmeans_teacher_codes_ignore_gain(feature):
    clips = [torch.from_numpy(synth_clip(i, seconds=3.0, sample_rate=16000, seed=0)).float() for i in range(6)]
    audio = torch.stack(clips[:4])
    options = dict(feature=feature, n_clusters=32, iters=10, n_init=1)
    teacher = fit_kmeans_teacher(clips, 16000, **options)
    assert teacher.settings["top_db"] == 80.0 and teacher.settings["level"] == "clip mean"
    for gain in (0.5, 0.01):
        assert (teacher(audio) != teacher(gain * audio)).double().mean() <= 0.01
    plain = fit_kmeans_teacher(clips, 16000, top_db=None, centre=False, **options)
    assert (plain(audio) != plain(0.01 * audio)).double().mean() > 0.05  # without them, -40 dB moves the codes


def test_kmeans_logmel_matches_librosa_top_db_minus_the_mean():
    librosa = pytest.importorskip("librosa")
    from mert_fast.model.teachers import KMeansTeacher

    teacher = KMeansTeacher(16000, feature="logmel", top_db=80.0, centre=True)
    audio = torch.from_numpy(synth_clip(3, seconds=2.0, sample_rate=16000, seed=0)).double()[None]
    audio[:, :4000] *= 1e-5  # a quiet start, far under the top_db floor
    ours = teacher.features(audio.float(), normalize=False)[0].double()
    s = teacher.settings
    mel = librosa.feature.melspectrogram(
        y=audio[0].float().numpy(), sr=16000, n_fft=s["n_fft"], hop_length=s["hop_length"], win_length=s["win_length"],
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=s["n_mels"], fmin=s["fmin"],
        fmax=s["fmax"], htk=True, norm=None,
    )  # fmt: skip
    ref = torch.from_numpy(librosa.power_to_db(mel, ref=mel.max(), top_db=80.0).T).double()
    ref = ref - ref.mean()
    assert (ref == ref.min()).double().mean() > 0.05  # the floor is in play
    assert (ours - ref).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------- the command


def test_fit_teacher_command_prints_and_saves_the_quality(tmp_path, capsys):
    from mert_fast.cli import main
    from mert_fast.synth import make_corpus

    make_corpus(tmp_path / "audio", n_clips=4, seconds=3.0, sample_rate=SR, seed=0, source="numpy")
    argv = ["fit-teacher", "--type", "mel-rvq", str(tmp_path / "audio"), "--out", str(tmp_path / "t"),
            "--codebooks", "3", "--codebook-size", "16", "--steps", "5"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    quality = json.loads((tmp_path / "t" / "teacher.json").read_text())["quality"]
    assert quality["held_out"] and quality["clips"] == 1  # the 4th clip
    shown = re.search(r"explained variance: (.*)", out).group(1).split()
    assert [float(v) for v in shown] == pytest.approx(quality["explained_variance"], abs=6e-4)
    for name in ("perplexity", "codes used", "flips at -6 dB", "flips, noise 60 dB SNR"):
        assert len(re.search(rf"{name}: (.*)", out).group(1).split()) == 3, name
