"""MERT-v0 / HuBERT-style acoustic teacher: k-means cluster ids of MFCC or log-mel frames.

Features are computed in the training step, on the device of the audio, at the student's label rate (50 Hz at
16 kHz: hop ``sample_rate // 50`` = 320), from a centered STFT with zero padding, so a clip of ``L`` samples gives
``L // hop + 1`` frames, at least the MERT conv stack's ``floor((L - 400) / 320) + 1``: ``align_to_frames(codes, T)``
aligns them without repetition. Frame ``t`` is centred on sample ``t * hop``; the student's frame ``t`` on
``t * hop + 200``, so the labels lead by 200 samples (12.5 ms at 16 kHz), a fraction of a frame.

``feature="mfcc"`` (HuBERT's first iteration): 13 cepstral coefficients (DCT-II, orthonormal, of the log-mel
energies; ``c0`` kept) plus their deltas and delta-deltas, 39 dims. Definitions, and where they differ from
HuBERT's ``torchaudio.compliance.kaldi.mfcc`` features:

- power spectrum of a periodic Hann window of 25 ms (400 samples at 16 kHz) zero-padded to the next power of two
  (512), as ``librosa.feature.melspectrogram(window="hann", win_length=400, n_fft=512, center=True,
  pad_mode="constant")``; Kaldi uses a Povey window, pre-emphasis 0.97, dither and DC removal, none done here;
- 23 triangular HTK-mel filters from 20 Hz to Nyquist, unnormalised (Kaldi's bank; ``librosa htk=True, norm=None``);
- decibels, ``10 log10(max(E, 1e-10))``; a fitted teacher floors them at ``top_db`` (80) under the clip's loudest
  bin and centres them on the clip's mean level (:func:`~mert_fast.model.teachers.mel_rvq.log_mel_db`:
  ``librosa.power_to_db(ref=np.max, top_db=80)`` minus its mean), so that the codes follow neither the clip's gain
  nor a noise floor far under the music (without: ``librosa.power_to_db(top_db=None)``). Kaldi takes the natural
  log; the two differ by a constant factor, which the per-dimension normalisation below removes (up to the floor).
  The level only moves ``c0``;
- no cepstral liftering (Kaldi lifters by 22; a per-coefficient scale, also removed by the normalisation);
- deltas by torchaudio's ``compute_deltas`` rule, window 5 (``N = 2``): ``d_t = sum_n n (c_{t+n} - c_{t-n}) /
  (2 sum_n n^2)`` with the edge frames repeated, equal to ``librosa.feature.delta(width=5, mode="nearest")``
  (librosa's default width is 9); delta-deltas are the deltas of the deltas, as HuBERT computes them (librosa's
  ``order=2`` fits a parabola instead). At 50 Hz a window of 5 frames spans 80 ms (40 ms at HuBERT's 100 Hz).

``feature="logmel"``: ``n_mels`` (80 by default; 128 also usual) HTK-mel log energies in dB from 0 Hz to Nyquist,
Hann window of ``n_fft`` = 1024 samples (64 ms at 16 kHz).

Each dimension is normalised by the mean and standard deviation fitted on the training frames (HuBERT clusters
raw MFCCs; normalising keeps ``c0``'s large range from dominating the distance), then every frame takes the id of
its nearest centroid by squared L2 (:func:`mert_fast.ops.nearest_code`): codes ``(B, T, 1)`` int64, one label
stream (``n_q = 1``). Fitted by :func:`fit_kmeans_teacher` (``mert-fast fit-teacher --type kmeans``) with
:func:`mert_fast.ops.kmeans`; saved as ``teacher.json`` + ``teacher.safetensors``. :func:`load_teacher` opens any
saved teacher directory (k-means or Mel-RVQ) by the ``type`` its ``teacher.json`` names.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from mert_fast._checks import check_float, check_int, is_int
from mert_fast.model.teachers.mel_rvq import TOP_DB, MelRVQTeacher, log_mel_db, mel_filterbank, save_teacher
from mert_fast.ops import kmeans, nearest_code

__all__ = ["KMeansTeacher", "fit_kmeans_teacher", "load_teacher"]

logger = logging.getLogger(__name__)

TEACHER_FORMAT = "mert_fast.kmeans.v1"
FEATURES = ("mfcc", "logmel")
#: Label rate of the student (MERT's conv stack at 16 kHz: hop 320): the features' frame rate.
LABEL_RATE = 50
#: The shortest clip accepted: one frame of the MERT conv stack (400-sample receptive field).
MIN_SAMPLES = 400
#: Mel filters per feature by default: Kaldi's 23 for MFCC (HuBERT), 80 for log-mel.
DEFAULT_MELS = {"mfcc": 23, "logmel": 80}
#: Lowest filter edge per feature (Hz): Kaldi's 20 Hz for MFCC.
DEFAULT_FMIN = {"mfcc": 20.0, "logmel": 0.0}
#: Smallest standard deviation used to normalise a dimension (a constant dimension is only centred).
STD_FLOOR = 1e-5
#: Frames above which :func:`fit_kmeans_teacher` switches to mini-batch k-means when ``batch_size`` is None.
MINIBATCH_ABOVE = 200_000
#: Rows per mini-batch then (HuBERT's ``MiniBatchKMeans(batch_size=10000)``).
MINIBATCH_ROWS = 10_000

_TEACHER_TYPES = ("kmeans", "mel-rvq")


def _dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II ``(n_in, n_out)`` float64: ``x @ M`` is ``scipy.fft.dct(x, type=2, norm="ortho")[:n_out]``."""
    m = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (2 * m + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis


def compute_deltas(x: torch.Tensor, width: int = 5) -> torch.Tensor:
    """Regression deltas along time of ``x`` ``(B, T, D)`` (any float dtype, same out), edge frames repeated.

    ``d_t = sum_{n=1}^{N} n (x_{t+n} - x_{t-n}) / (2 sum_{n=1}^{N} n^2)`` with ``N = (width - 1) // 2``: torchaudio's
    ``compute_deltas(win_length=width)`` and ``librosa.feature.delta(width=width, mode="nearest")``.
    """
    if not is_int(width) or width < 3 or width % 2 == 0:
        raise ValueError(f"width must be an odd integer >= 3; got {width!r}")
    n = (width - 1) // 2
    t = x.shape[1]
    padded = torch.cat([x[:, :1].expand(-1, n, -1), x, x[:, -1:].expand(-1, n, -1)], dim=1)
    out = torch.zeros_like(x)
    for i in range(1, n + 1):
        out = out + i * (padded[:, n + i : n + i + t] - padded[:, n - i : n - i + t])
    return out / (2 * sum(i * i for i in range(1, n + 1)))


class KMeansTeacher(nn.Module):
    """Audio ``(B, L)`` -> k-means codes ``(B, L // hop_length + 1, 1)`` int64 in ``[0, n_clusters)``, 50 a second.

    Args:
        sample_rate: Hz of the audio (16000 for MERT-v0); the hop is ``sample_rate // 50`` samples.
        feature: ``"mfcc"`` (13 MFCCs + deltas + delta-deltas, 39 dims) or ``"logmel"`` (``n_mels`` log-mel dims).
        n_clusters: number of centroids ``K`` (the label vocabulary).
        n_mels: mel filters (default 23 for MFCC, 80 for log-mel).
        n_fft: FFT size (default: the next power of two of 25 ms for MFCC, 512 at 16 kHz; 1024 for log-mel).
        win_length: Hann window length, ``<= n_fft`` (default: 25 ms for MFCC, ``n_fft`` for log-mel).
        n_mfcc: cepstral coefficients kept (13).
        delta_width: delta regression window, odd (5, torchaudio's ``compute_deltas`` default, as HuBERT).
        top_db: dB kept under each clip's loudest mel bin; ``None`` (the default, librosa's plain features): no
            floor but ``1e-10``. :func:`fit_kmeans_teacher` fits teachers with 80.
        centre: subtract each clip's mean log-mel level (gain invariance; :func:`fit_kmeans_teacher`'s default).
            Teachers saved without these settings load without them, on the features they were fitted on.
        hop_length: samples between frames; None (every fitted teacher): ``sample_rate // 50``, the 50 Hz label
            rate, which needs a sample rate that is a multiple of 50. Other hops serve as frame features only
            (:class:`~mert_fast.model.teachers.mfcc.MFCCTeacher` at the student's hop).

    The centroids and the normalisation statistics are buffers set by :func:`fit_kmeans_teacher` (or :meth:`load`);
    a fresh teacher has zero centroids and maps every frame to code 0.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        *,
        feature: str = "mfcc",
        n_clusters: int = 100,
        n_mels: int | None = None,
        n_fft: int | None = None,
        win_length: int | None = None,
        n_mfcc: int = 13,
        delta_width: int = 5,
        top_db: float | None = None,
        centre: bool = False,
        hop_length: int | None = None,
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(repr(f) for f in FEATURES)}; got {feature!r}")
        sample_rate = check_int("sample_rate", sample_rate, min=LABEL_RATE)
        if hop_length is None:
            if sample_rate % LABEL_RATE:
                raise ValueError(
                    f"sample_rate must be a multiple of {LABEL_RATE} Hz (hop = sample_rate // 50); got {sample_rate}"
                )
            hop_length = sample_rate // LABEL_RATE
        hop_length = check_int("hop_length", hop_length, min=1)
        n_clusters = check_int("n_clusters", n_clusters, min=1)
        n_mels = check_int("n_mels", DEFAULT_MELS[feature] if n_mels is None else n_mels, min=1)
        window_25ms = round(0.025 * sample_rate)
        if n_fft is None:
            n_fft = 1 << (window_25ms - 1).bit_length() if feature == "mfcc" else 1024
        n_fft = check_int("n_fft", n_fft, min=2)
        if win_length is None:
            win_length = min(window_25ms, n_fft) if feature == "mfcc" else n_fft
        win_length = check_int("win_length", win_length, min=2)
        if win_length > n_fft:
            raise ValueError(f"win_length must be at most n_fft = {n_fft}; got {win_length}")
        n_mfcc = check_int("n_mfcc", n_mfcc, min=1)
        if feature == "mfcc" and n_mfcc > n_mels:
            raise ValueError(f"n_mfcc must be at most n_mels = {n_mels}; got {n_mfcc}")
        if not is_int(delta_width) or delta_width < 3 or delta_width % 2 == 0:
            raise ValueError(f"delta_width must be an odd integer >= 3; got {delta_width!r}")

        fmin = DEFAULT_FMIN[feature]
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin=fmin)
        empty = (fb.sum(0) == 0).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(
                f"n_mels: {n_mels} mel filters are too many for n_fft = {n_fft} at {sample_rate} Hz (filters {empty} "
                "hold no FFT bin); use fewer mels or a larger n_fft"
            )
        self.sample_rate = sample_rate
        self.feature = feature
        self.hop_length = self.hop = hop_length
        self.n_fft = n_fft
        self.win_length = win_length
        self.n_mfcc = n_mfcc
        self.delta_width = delta_width
        if top_db is not None:
            check_float("top_db", top_db, min=0, exclusive_min=True, expected="a positive number of dB or None")
        self.top_db = None if top_db is None else float(top_db)
        self.centre = bool(centre)
        self.dim = 3 * n_mfcc if feature == "mfcc" else n_mels
        self.n_q = 1
        self.codebook_size = n_clusters
        self.settings = dict(
            type="kmeans", sample_rate=sample_rate, feature=feature, n_q=1, codebook_size=n_clusters, dim=self.dim,
            hop_length=self.hop_length, n_fft=n_fft, win_length=win_length, n_mels=n_mels, fmin=fmin,
            fmax=sample_rate / 2, n_mfcc=n_mfcc if feature == "mfcc" else None,
            delta_width=delta_width if feature == "mfcc" else None, log="dB", label_rate=sample_rate / hop_length,
            top_db=self.top_db, level="clip mean" if self.centre else None,
        )  # fmt: skip
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        # float64 projections: the mel and DCT products must not run in TF32, which would move frames across
        # cluster boundaries depending on the trainer's matmul precision settings
        self.register_buffer("mel_fb", fb.double(), persistent=False)
        self.register_buffer("dct", _dct_matrix(n_mels, n_mfcc), persistent=False)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        self.register_buffer("centroids", torch.zeros(n_clusters, self.dim))

    @property
    def label_rate(self) -> float:
        """Codes per second: 50.0."""
        return self.sample_rate / self.hop_length

    def num_frames(self, length: int) -> int:
        """Frames for a clip of ``length`` samples: ``length // hop_length + 1`` (centered frames)."""
        return int(length) // self.hop_length + 1

    def _check_audio(self, audio) -> None:
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor of shape (B, L); got {type(audio).__name__}")
        if not audio.is_floating_point():
            raise TypeError(f"audio must be floating point (float16, bfloat16, float32 or float64); got {audio.dtype}")
        if audio.dim() != 2 or audio.shape[0] == 0:
            raise ValueError(f"audio must be shaped (B, L) with B >= 1; got {tuple(audio.shape)}")
        if audio.shape[1] < MIN_SAMPLES:
            raise ValueError(
                f"audio must hold at least {MIN_SAMPLES} samples per clip (one student frame); got {audio.shape[1]}"
            )
        if audio.device != self.centroids.device:
            raise ValueError(f"audio must be on the teacher's device {self.centroids.device}; got {audio.device}")
        if not bool(torch.isfinite(audio).all()):
            raise ValueError("audio contains NaN or inf values")

    def features(self, audio: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Frame features ``(B, L // hop_length + 1, dim)`` float32 of audio ``(B, L)`` (any float dtype).

        ``normalize=False`` gives the MFCC (+ deltas) or log-mel values in dB (floored and centred per clip), before
        the fitted normalisation.
        """
        self._check_audio(audio)
        spec = torch.stft(
            audio.float(), self.n_fft, self.hop_length, self.win_length, window=self.window, center=True,
            pad_mode="constant", return_complex=True,
        )  # fmt: skip
        power = spec.real.square() + spec.imag.square()  # (B, F, T)
        mel = torch.einsum("bft,fm->btm", power.double(), self.mel_fb)
        feats = log_mel_db(mel, self.top_db, centre=self.centre)  # (B, T, n_mels) float64
        if self.feature == "mfcc":
            ceps = feats @ self.dct
            delta = compute_deltas(ceps, self.delta_width)
            feats = torch.cat([ceps, delta, compute_deltas(delta, self.delta_width)], dim=-1)
        if normalize:
            feats = (feats - self.mean.double()) / self.std.double()
        return feats.float()

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, L // hop_length + 1, 1)`` int64 of audio ``(B, L)``: the nearest centroid of every frame."""
        feats = self.features(audio)
        b, t, d = feats.shape
        codes, _ = nearest_code(feats.reshape(b * t, d), self.centroids, metric="l2")
        return codes.reshape(b, t, 1)

    # ------------------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``teacher.safetensors`` then ``teacher.json`` (each by an atomic rename) into ``directory``."""
        save_teacher(self, directory, {"format": TEACHER_FORMAT, **self.settings})

    @classmethod
    def load(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu", *, sample_rate: int | None = None
    ) -> KMeansTeacher:
        """Load a teacher saved by :meth:`save`, in eval mode on ``map_location``.

        ``sample_rate``, when given, must equal the teacher's (the audio the labels will be computed from).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta, meta_file = _read_meta(directory)
        if meta.get("format") != TEACHER_FORMAT:
            raise ValueError(f"teacher: {meta_file} is not a k-means teacher (format {meta.get('format')!r})")
        try:
            teacher = cls(
                int(meta["sample_rate"]), feature=meta["feature"], n_clusters=int(meta["codebook_size"]),
                n_mels=int(meta["n_mels"]), n_fft=int(meta["n_fft"]), win_length=int(meta["win_length"]),
                n_mfcc=int(meta["n_mfcc"] or 13), delta_width=int(meta["delta_width"] or 5),
                top_db=meta.get("top_db"), centre=meta.get("level") == "clip mean",
                hop_length=int(meta["hop_length"]),
            )  # fmt: skip
        except KeyError as exc:
            raise ValueError(f"teacher: {meta_file} lacks the setting {exc.args[0]!r}") from None
        _check_sample_rate(teacher.sample_rate, sample_rate, meta_file)
        weights = directory / "teacher.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"teacher: {directory} has no teacher.safetensors")
        state = load_file(str(weights), device=str(map_location))
        expected = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise ValueError(f"teacher: {weights} holds tensors {found}; teacher.json implies {expected}")
        teacher = teacher.to(map_location)
        teacher.load_state_dict(state)
        return teacher.eval()


def _read_meta(directory: Path) -> tuple[dict, Path]:
    meta_file = directory / "teacher.json"
    if not meta_file.is_file():
        encodec = (directory / "config.json").is_file()
        hint = " (an EnCodec model directory is given to train.py as encodec:DIR)" if encodec else ""
        raise FileNotFoundError(
            f"teacher: {directory} has no teacher.json (fit one with `mert-fast fit-teacher`){hint}"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"teacher: {meta_file} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"teacher: {meta_file} must hold a JSON object; got {type(meta).__name__}")
    return meta, meta_file


def _check_sample_rate(have: int, want: int | None, where) -> None:
    if want is not None and int(want) != have:
        raise ValueError(f"sample_rate: the teacher in {where} runs at {have} Hz; the audio is at {want} Hz")


def load_teacher(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu", *, sample_rate: int | None = None
) -> KMeansTeacher | MelRVQTeacher:
    """Load a saved acoustic teacher of any type, by the ``type`` in its ``teacher.json``.

    Args:
        directory: a folder written by ``mert-fast fit-teacher`` (``KMeansTeacher.save`` or ``MelRVQTeacher.save``).
        map_location: device of the loaded buffers.
        sample_rate: when given, the sample rate of the audio; a teacher fitted at another rate is an error.

    Returns:
        :class:`KMeansTeacher` (``type`` ``"kmeans"``: codes ``(B, T, 1)`` at 50 Hz) or :class:`MelRVQTeacher`
        (``"mel-rvq"``: ``(B, T, n_q)`` at 25 Hz), in eval mode. Both have ``sample_rate``, ``label_rate`` and
        ``settings`` (``settings["n_q"]``, ``settings["codebook_size"]``).

    Raises:
        FileNotFoundError: no ``teacher.json`` in ``directory``.
        ValueError: an unknown ``type``, a malformed file, or a ``sample_rate`` mismatch.
    """
    directory = Path(directory)
    meta, meta_file = _read_meta(directory)
    kind = meta.get("type")
    if kind == "kmeans":
        return KMeansTeacher.load(directory, map_location, sample_rate=sample_rate)
    if kind == "mel-rvq":
        teacher = MelRVQTeacher.load(directory, map_location)
        _check_sample_rate(teacher.sample_rate, sample_rate, meta_file)
        return teacher
    raise ValueError(
        f"teacher: {meta_file} names type {kind!r}; expected one of {', '.join(repr(t) for t in _TEACHER_TYPES)}"
    )


def fit_kmeans_teacher(
    clips: Iterable[torch.Tensor],
    sample_rate: int,
    *,
    feature: str = "mfcc",
    n_clusters: int = 100,
    n_mels: int | None = None,
    max_frames: int = 500_000,
    iters: int = 50,
    n_init: int = 3,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    top_db: float | None = TOP_DB,
    centre: bool = True,
) -> KMeansTeacher:
    """Fit a k-means teacher on ``clips`` (1-D waveforms ``(L,)`` at ``sample_rate``, any float dtype).

    Args:
        clips: the training audio; each clip at least :data:`MIN_SAMPLES` samples, finite.
        sample_rate: Hz of the clips (16000 for MERT-v0).
        feature: ``"mfcc"`` or ``"logmel"`` (see :class:`KMeansTeacher`).
        n_clusters: ``K``; 100 by default, HuBERT's first iteration on MFCC (its second uses 500 on hidden states).
        n_mels: mel filters (default 23 for MFCC, 80 for log-mel).
        max_frames: frames kept for clustering: a seeded uniform sample when the clips give more (the
            normalisation statistics use every frame). Frames are gathered on the CPU (4 * dim bytes each).
        iters: Lloyd iterations, or mini-batch epochs.
        n_init: k-means runs from different k-means++ initialisations (seeds drawn from ``seed``); the run with the
            lowest mean squared distance on the frames is kept (scikit-learn's ``n_init``).
        batch_size: ``None``: Lloyd's algorithm up to :data:`MINIBATCH_ABOVE` frames, mini-batch k-means with
            :data:`MINIBATCH_ROWS` rows per batch above; an integer forces mini-batch with that batch size.
        seed: seed of the frame sample, the k-means++ initialisation and the mini-batch order; equal seeds give
            equal teachers (bitwise on the CPU).
        device: where features and k-means run.
        top_db, centre: the per-clip level floor and centring of the log-mel energies (see :class:`KMeansTeacher`):
            with both, the codes do not change with the clip's gain.

    Returns:
        the fitted :class:`KMeansTeacher` on ``device``, in eval mode.
    """
    max_frames = check_int("max_frames", max_frames, min=1)
    n_init = check_int("n_init", n_init, min=1)
    seed = check_int("seed", seed, min=0)
    device = torch.device(device)
    teacher = KMeansTeacher(
        sample_rate, feature=feature, n_clusters=n_clusters, n_mels=n_mels, top_db=top_db, centre=centre
    ).to(device)
    if max_frames < n_clusters:
        raise ValueError(f"max_frames must be at least n_clusters = {n_clusters}; got {max_frames}")
    data = _clip_frames(teacher, clips, device)
    n = data.shape[0]
    if n < n_clusters:
        raise ValueError(f"clips: {n} frames are too few to fit {n_clusters} clusters; give more audio")
    mean = data.double().mean(0)
    std = data.double().std(0, correction=0).clamp_min(STD_FLOOR)
    if n > max_frames:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_frames].sort().values
        data = data[keep]
    data = ((data.double() - mean) / std).float()
    if batch_size is None and data.shape[0] > MINIBATCH_ABOVE:
        batch_size = MINIBATCH_ROWS
    mode = "Lloyd" if batch_size is None else f"mini-batch ({batch_size} rows)"
    logger.info(
        "fit k-means teacher: %d %s frames (%d dims) of %d into %d clusters, %s", data.shape[0], feature,
        data.shape[1], n, n_clusters, mode,
    )  # fmt: skip
    centroids = _best_kmeans(data.to(device), n_clusters, iters, n_init, batch_size, seed, device)
    teacher.mean.copy_(mean.float())
    teacher.std.copy_(std.float())
    teacher.centroids.copy_(centroids.float())
    return teacher.eval()


def _clip_frames(teacher: KMeansTeacher, clips: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The unnormalised feature frames of every clip, concatenated on the CPU; checks each clip."""
    frames = []
    with torch.no_grad():
        for i, clip in enumerate(clips):
            if not isinstance(clip, torch.Tensor) or clip.dim() != 1:
                shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
                raise ValueError(f"clips[{i}] must be a 1-D waveform tensor (L,); got {shape}")
            if not clip.is_floating_point():
                raise TypeError(f"clips[{i}] must be floating point; got {clip.dtype}")
            if clip.shape[0] < MIN_SAMPLES:
                raise ValueError(f"clips[{i}] must hold at least {MIN_SAMPLES} samples; got {clip.shape[0]}")
            if not bool(torch.isfinite(clip).all()):
                raise ValueError(f"clips[{i}] contains NaN or inf values")
            frames.append(teacher.features(clip.to(device)[None], normalize=False)[0].cpu())
    if not frames:
        raise ValueError("clips: no audio to fit the teacher on")
    return torch.cat(frames)


def _best_kmeans(
    data: torch.Tensor,
    n_clusters: int,
    iters: int,
    n_init: int,
    batch_size: int | None,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """The centroids of the k-means run (of ``n_init``, seeds drawn from ``seed``) with the lowest inertia."""
    seeds = torch.randint(2**31 - 1, (n_init,), generator=torch.Generator().manual_seed(seed)).tolist()
    best = None
    for run, run_seed in enumerate(seeds):
        centroids = kmeans(data, n_clusters, iters=iters, seed=run_seed, batch_size=batch_size, device=device)
        inertia, used = _inertia(data, centroids)
        logger.info(
            "fit k-means teacher: run %d/%d mean squared distance %.4f per frame (per-dim variance 1), %d of %d "
            "clusters used", run + 1, n_init, inertia, used, n_clusters,
        )  # fmt: skip
        if best is None or inertia < best[0]:
            best = (inertia, centroids)
    return best[1]


def _inertia(data: torch.Tensor, centroids: torch.Tensor) -> tuple[float, int]:
    """Mean squared distance of the rows ``(N, D)`` to their nearest centroid ``(K, D)``, and the clusters used."""
    total = 0.0
    used = torch.zeros(centroids.shape[0], dtype=torch.bool, device=data.device)
    with torch.no_grad():
        for r0 in range(0, data.shape[0], 1 << 16):
            codes, dist = nearest_code(data[r0 : r0 + (1 << 16)], centroids)
            total += float(dist.double().sum())
            used[codes] = True
    return total / data.shape[0], int(used.sum())
