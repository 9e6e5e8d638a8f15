"""The EnCodec teacher against transformers' own ``EncodecModel.encode``, its frame count and its input checks.

The model is a randomly initialised 24 kHz EnCodec with the real quantiser layout (32 stages of 1024 codes of
128 dims at 75 Hz, bandwidths 1.5-24 kbps) and narrower convolutions (8 filters instead of 32), saved with
``save_pretrained`` and loaded back, so the real loading path runs; its codebooks are seeded random codes at the
scale of the encoder's output, so every stage picks among many codes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil

import pytest
import torch

from mert_fast.model.config import PRESETS
from mert_fast.model.teachers import EncodecTeacher, align_to_frames
from mert_fast.ops.reference import rvq_code_gaps_ref

transformers = pytest.importorskip("transformers")

logger = logging.getLogger(__name__)

#: A code counts as "nearest within float32 rounding" when its float64 distance exceeds the minimum by at most
#: RTOL x the distance scale (see rvq_code_gaps_ref and tests/test_rvq.py, which measured the margin).
RTOL = 1e-5
BANDWIDTH_STAGES = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}


def _encodec_codes(model, audio: torch.Tensor, bandwidth: float = 6.0) -> torch.Tensor:
    """transformers' codes as ``(B, T, n_q)``: ``audio_codes`` is ``(chunks, B, n_q, T)`` with one chunk at 24 kHz."""
    with torch.no_grad():
        out = model.encode(audio[:, None, :], bandwidth=bandwidth)
    assert out.audio_codes.shape[0] == 1
    return out.audio_codes[0].transpose(1, 2)


@pytest.fixture(scope="module")
def encodec(tmp_path_factory):
    """(model, directory): a small random 24 kHz EncodecModel and where it was saved."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(1234)
    config = EncodecConfig(num_filters=8)  # the 24 kHz defaults otherwise: hop 320, 128-dim codes, 1024 per stage
    layout = (config.sampling_rate, config.frame_rate, config.codebook_size, config.codebook_dim)
    assert layout == (24000, 75, 1024, 128)
    assert list(config.target_bandwidths) == [1.5, 3.0, 6.0, 12.0, 24.0] and config.num_quantizers == 32
    model = EncodecModel(config).eval()
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        # the random encoder's output is a large constant plus a small frame-to-frame part: codes drawn around
        # the data, stage by stage on the residual (like EnCodec's k-means start), so that every stage has many
        # codes in use; plain randn codes would all be won by the few nearest the constant
        resid = model.encoder(0.5 * torch.randn(6, 1, 2 * 24000, generator=generator)).transpose(1, 2)
        resid = resid.reshape(-1, resid.shape[-1])
        for layer in model.quantizer.layers:
            book = layer.codebook
            rows = resid[torch.randint(resid.shape[0], (book.embed.shape[0],), generator=generator)]
            book.embed.copy_(rows + 0.5 * resid.std(0) * torch.randn(rows.shape, generator=generator))
            resid = resid - book.embed[torch.cdist(resid, book.embed).argmin(1)]
            book.embed_avg.copy_(book.embed)  # EnCodec's EMA state for the same codes (counts of 1)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
    directory = tmp_path_factory.mktemp("encodec_24khz")
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="module")
def teacher(encodec) -> EncodecTeacher:
    return EncodecTeacher.load(encodec[1])


def _compare_with_transformers(model, audio: torch.Tensor, codes: torch.Tensor, bandwidth: float) -> tuple[int, int]:
    """Check the teacher's codes against ``EncodecModel.encode``'s; returns (rows differing, of which rows whose
    first 8 stages differ).

    Both code sets must be nearest codes within float32 rounding of the same embeddings (float64 distances, each
    with the residuals its own codes leave), so any difference between them can only be a near-tie.
    """
    expected = _encodec_codes(model, audio, bandwidth)
    n_q = codes.shape[-1]
    assert codes.shape == expected.shape == (audio.shape[0], math.ceil(audio.shape[1] / 320), n_q)
    with torch.no_grad():
        emb = model.encoder(audio[:, None, :]).transpose(1, 2).reshape(-1, 128).double()
    books = torch.stack([layer.codebook.embed for layer in model.quantizer.layers[:n_q]]).double()
    for name, c in (("teacher", codes), ("transformers", expected)):
        gap, scale = rvq_code_gaps_ref(emb, c.reshape(-1, n_q), books)
        worst = float((gap / scale).max())
        assert worst <= RTOL, f"{name}: a code is {worst:.2e} (relative) farther than the nearest one"
    differ = codes != expected
    return int(differ.any(-1).sum()), int(differ[..., :8].any(-1).sum())


@pytest.mark.parametrize("length", [2 * 24000 + 123, 2 * 24000])
def test_codes_match_transformers_encode(encodec, teacher, record_property, length):
    model, _ = encodec
    audio = 0.5 * torch.randn(3, length)
    codes = teacher(audio)
    assert codes.dtype == torch.int64
    differing, _ = _compare_with_transformers(model, audio, codes, 6.0)
    rows = codes.shape[0] * codes.shape[1]
    record_property("rows_differing_from_encodec_encode", differing)
    logger.info("rows differing from EncodecModel.encode: %d of %d", differing, rows)
    assert differing <= max(1, rows // 1000)  # measured: none
    # non-trivial codes: every stage uses many of the 1024 codes
    assert all(len(torch.unique(codes[..., q])) > 100 for q in range(8))


@pytest.mark.parametrize(("bandwidth", "n_q"), list(BANDWIDTH_STAGES.items()))
def test_bandwidth_sets_the_stages(encodec, teacher, record_property, bandwidth, n_q):
    model, directory = encodec
    assert model.quantizer.get_num_quantizers_for_bandwidth(bandwidth) == n_q
    other = EncodecTeacher.load(directory, bandwidth=bandwidth)
    assert other.n_q == n_q and other.codebooks.shape == (n_q, 1024, 128)
    assert other.settings == dict(
        type="encodec", sample_rate=24000, bandwidth=bandwidth, n_q=n_q, codebook_size=1024, codebook_dim=128,
        hop_length=320,
    )  # fmt: skip
    audio = 0.5 * torch.randn(4, 24000 + 77)
    codes = other(audio)
    differing, early = _compare_with_transformers(model, audio, codes, bandwidth)
    record_property("rows_differing_from_encodec_encode", differing)
    # beyond ~25 stages this test model's residual is down at the float32 rounding of the codes summed so far, and
    # near-ties become common there (measured at 24 kbps: 4 of 304 rows, first at stage 26 or later, gaps < 1e-10
    # relative); the gap check above covers those stages, the first 8 must agree
    assert early <= max(1, codes.shape[0] * codes.shape[1] // 1000)
    # residual VQ: the first stages do not depend on how many follow
    prefix = min(n_q, teacher.n_q)
    assert torch.equal(codes[..., :prefix], teacher(audio)[..., :prefix])


def test_attributes_and_output_contract(teacher):
    assert (teacher.sample_rate, teacher.label_rate, teacher.n_q, teacher.codebook_size) == (24000, 75.0, 8, 1024)
    assert teacher.settings["type"] == "encodec" and teacher.settings["bandwidth"] == 6.0
    assert not any(p.requires_grad for p in teacher.parameters())
    audio = 0.5 * torch.randn(2, 12345, dtype=torch.float64)
    codes = teacher(audio)
    assert codes.dtype == torch.int64 and codes.device == audio.device
    assert codes.shape == (2, teacher.num_frames(12345), 8) == (2, 39, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    # float16 / bfloat16 / float64 audio is encoded as its float32 value
    half = audio.to(torch.bfloat16)
    assert torch.equal(teacher(half), teacher(half.float()))


def test_float32_inside_autocast_and_half_casts_refused(encodec, teacher):
    audio = 0.5 * torch.randn(2, 24000 + 5)
    expected = teacher(audio)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(teacher(audio), expected)
    half = EncodecTeacher.from_model(copy.deepcopy(encodec[0])).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="encoder must stay float32"):
        half(audio)


def test_batch_independence(teacher):
    """A clip's codes do not depend on its batch, apart from near-ties.

    The convolution library may pick another algorithm for a batch of 1 than for 4, so the encoder's output can
    differ by float32 rounding, and a code at a near-tie can flip: both code sets must be nearest codes within
    rounding of the batch's embeddings (float64 distances), and almost every row (99%) must agree.
    """
    audio = 0.5 * torch.randn(4, 24000 + 321)
    batched = teacher(audio)
    single = torch.cat([teacher(audio[i : i + 1]) for i in range(4)])
    with torch.no_grad():
        emb = teacher.encoder(audio[:, None, :]).transpose(1, 2).reshape(-1, 128).double()
    books = teacher.codebooks.double()
    for name, c in (("batched", batched), ("one clip at a time", single)):
        gap, scale = rvq_code_gaps_ref(emb, c.reshape(-1, teacher.n_q), books)
        assert float((gap / scale).max()) <= RTOL, f"{name}: a code is farther than the nearest one"
    rows = batched.shape[0] * batched.shape[1]
    # measured: 0 rows of 308 differ with 2 threads, 2 with 1 thread (pytest -n: each worker gets one core)
    assert int((batched != single).any(-1).sum()) <= max(3, rows // 100)


def test_normalising_model_matches_transformers(encodec):
    """A 24 kHz EnCodec configured to normalise (the 48 kHz model's RMS scaling) is reproduced too."""
    model = copy.deepcopy(encodec[0])
    model.config.normalize = True
    teacher = EncodecTeacher.from_model(model)
    audio = torch.randn(2, 8000) * torch.tensor([[0.05], [2.0]])
    assert torch.equal(teacher(audio), _encodec_codes(model, audio))


@pytest.mark.parametrize("length", [400, 401, 639, 640, 641, 719, 720, 721, 24000, 24000 + 319])
def test_frames_cover_the_student(teacher, length):
    student = PRESETS["mert-v1-95m"].num_frames(length)
    assert student == (length - 400) // 320 + 1
    codes = teacher(0.5 * torch.randn(2, length))
    assert codes.shape[1] == teacher.num_frames(length) == math.ceil(length / 320) >= student
    aligned = align_to_frames(codes, student)
    assert aligned.shape == (2, student, 8)
    assert torch.equal(aligned, codes[:, :student])


def test_frame_count_formula_covers_every_length(teacher):
    for length in range(400, 20000):
        assert teacher.num_frames(length) >= (length - 400) // 320 + 1


def test_load_errors(encodec, tmp_path):
    _, directory = encodec
    with pytest.raises(FileNotFoundError, match="teacher: .* is not a directory"):
        EncodecTeacher.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="teacher: .* has no config.json"):
        EncodecTeacher.load(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="teacher: .* not an EnCodec model"):
        EncodecTeacher.load(tmp_path / "bert")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(directory / "config.json", no_weights / "config.json")
    with pytest.raises(FileNotFoundError, match="teacher: could not load EnCodec weights"):
        EncodecTeacher.load(no_weights)
    resampled = tmp_path / "encodec_16khz"
    shutil.copytree(directory, resampled)
    config = json.loads((resampled / "config.json").read_text())
    (resampled / "config.json").write_text(json.dumps({**config, "sampling_rate": 16000}))
    with pytest.raises(ValueError, match="sampling_rate 24000.*got 16000"):
        EncodecTeacher.load(resampled)
    for bandwidth in (5.0, 0.0, 48.0, "6"):
        with pytest.raises(ValueError, match=r"bandwidth: .*offers bandwidths \[1.5, 3.0, 6.0, 12.0, 24.0\]"):
            EncodecTeacher.load(directory, bandwidth=bandwidth)


def test_from_model_rejects_chunked_and_uninitialised_models(encodec):
    model = copy.deepcopy(encodec[0])
    model.config.chunk_length_s = 1.0
    with pytest.raises(ValueError, match="chunk_length_s None"):
        EncodecTeacher.from_model(model)
    model.config.chunk_length_s = None
    model.quantizer.layers[4].codebook.inited.fill_(0.0)
    with pytest.raises(ValueError, match="stage 4 is not initialised"):
        EncodecTeacher.from_model(model)
    assert EncodecTeacher.from_model(model, bandwidth=3.0).n_q == 4  # stages 0-3 only at 3 kbps
    with pytest.raises(ValueError, match="stage 4"):
        EncodecTeacher.from_model(model, bandwidth=6.0)


def test_bad_audio(teacher):
    with pytest.raises(ValueError, match=r"audio must be mono \(B, L\)"):
        teacher(torch.randn(24000))
    with pytest.raises(ValueError, match=r"audio must be mono \(B, L\)"):
        teacher(torch.randn(2, 2, 24000))
    with pytest.raises(TypeError, match="audio must be floating point"):
        teacher(torch.zeros(2, 24000, dtype=torch.int16))
    with pytest.raises(TypeError, match="audio must be a torch.Tensor"):
        teacher([[0.0] * 24000])
    with pytest.raises(ValueError, match="at least 400 samples"):
        teacher(torch.randn(2, 399))
    for bad in (float("nan"), float("inf")):
        audio = torch.randn(2, 24000)
        audio[1, 777] = bad
        with pytest.raises(ValueError, match="audio must be finite"):
            teacher(audio)


@pytest.mark.cuda
def test_cuda_matches_cpu(encodec, record_property):
    """The teacher on the GPU (cuDNN convolutions and LSTM in IEEE float32, the Triton RVQ) gives the CPU codes up
    to float32 near-ties, at a training-size batch."""
    _, directory = encodec
    flags = torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision
    cpu = EncodecTeacher.load(directory)
    gpu = EncodecTeacher.load(directory, map_location="cuda")
    audio = 0.5 * torch.randn(8, 5 * 24000 + 17)
    expected = cpu(audio)
    codes = gpu(audio.cuda())
    assert codes.device.type == "cuda" and codes.dtype == torch.int64
    differing = int((codes.cpu() != expected).any(-1).sum())
    record_property("rows_differing_from_cpu", differing)
    assert differing <= max(1, expected.shape[0] * expected.shape[1] // 1000)
    # the precision flags are restored after the call
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision) == flags


@pytest.mark.slow
def test_trains_with_the_encodec_teacher(encodec, pretrain_data, tmp_path):
    """``train.py --teacher encodec:DIR``: 8 label streams of 1024 codes at 75 Hz (no repetition), fingerprinted in
    the checkpoint; the heads take their size from the teacher, not from the preset's Mel-RVQ settings."""
    import sys

    from pretrain_utils import ROOT, metrics, run, train_args

    out = tmp_path / "run"
    args = train_args(pretrain_data, out, 3, "--teacher", f"encodec:{encodec[1]}", "--val-fraction", "0")
    run([sys.executable, str(ROOT / "train.py"), *args], tmp_path)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sorted(k for k in rows[0] if k.startswith("acc_")) == [f"acc_{q}" for q in range(8)]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    # cross-entropy over 1024 codes starts near log(1024) per codebook and frame
    assert 0.5 * 8 * math.log(1024) < rows[0]["ce"] < 2 * 8 * math.log(1024)
    meta = json.loads((out / "checkpoints" / "step00000003" / "mert_fast.json").read_text())
    assert meta["teacher"].startswith("encodec:") and len(meta["teacher_sha256"]) == 64
