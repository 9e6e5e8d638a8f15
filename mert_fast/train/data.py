"""Pre-training data: a folder or manifest of audio, deterministic random crops, one shard per rank.

Every random draw is a function of ``(seed, step, rank, sample)`` (see :func:`seed_for`): which clips a step
takes (a permutation per epoch keyed on ``(seed, epoch)``) and where each crop starts. A run restarted at
``start_step`` therefore sees exactly the batches of an uninterrupted one, whatever ``num_workers`` is.

    corpus = AudioCorpus("music/", sample_rate=24000)          # scans headers; bad files listed in corpus.bad_files
    for batch in make_loader(corpus, batch_size=8, seed=0, rank=rank, world_size=world, num_workers=4):
        batch.audio    # float32 (8, L): crops of 5 s cut to the batch's shortest clip (>= 3 s), no padding

Step ``s`` of rank ``r`` takes positions ``[(k * world_size + r) * batch_size, ... + batch_size)`` of the
permutation of epoch ``s // steps_per_epoch`` (``k = s % steps_per_epoch``; the last incomplete group of an
epoch is dropped), so the ranks of a step read disjoint clips. A corpus with fewer clips than one step needs is
sampled with replacement instead, each slot's clip drawn from ``(seed, step, rank, sample)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mert_fast._checks import check_float, check_int
from mert_fast.audio import AUDIO_EXTENSIONS, audio_info, find_audio, load_audio

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioCorpus",
    "BadFile",
    "Batch",
    "CropBatches",
    "hold_out",
    "list_audio",
    "make_loader",
    "seed_for",
]

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------------------ seeds


def seed_for(seed: int, step: int, rank: int, sample: int = 0, purpose: str = "") -> int:
    """A 63-bit seed that depends only on its arguments: the one source of randomness of a training run.

    Derive every random draw of a step from it, so that a run is reproducible and resumable and does not depend
    on the number of DataLoader workers or on what ran before. ``purpose`` separates independent streams of
    the same sample (``"crop"``, ``"mask"``, ``"mixture"``, ``"dropout"``...). Examples::

        gen = torch.Generator(device).manual_seed(seed_for(seed, step, rank, purpose="mask"))
        rng = np.random.default_rng(seed_for(seed, step, rank, i, "mixture"))

    A hash (BLAKE2b) of the arguments: the same value on every machine, Python and library version.

    Args:
        seed: the run's seed (any integer).
        step: the optimizer step (or another counter, e.g. the epoch).
        rank: the data-parallel rank.
        sample: the sample's slot within the rank's batch (or 0 for a per-step draw).
        purpose: a name for the stream.

    Returns:
        An int in ``[0, 2**63)``: valid for ``torch.manual_seed``, ``numpy.random.default_rng`` and ``random.seed``.
    """
    for name, value in (("seed", seed), ("step", step), ("rank", rank), ("sample", sample)):
        check_int(name, value, integral=True, error=TypeError, show_type=True)
    if not isinstance(purpose, str):
        raise TypeError(f"purpose must be a string; got {type(purpose).__name__}")
    text = f"{int(seed)}:{int(step)}:{int(rank)}:{int(sample)}:{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a fast, well-mixed hash."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _permutation(n: int, key: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``(n, key)`` (no library's RNG stream involved)."""
    with np.errstate(over="ignore"):
        keys = _mix64(np.arange(n, dtype=np.uint64) ^ np.uint64(key & _MASK64))
        keys = _mix64(keys + np.uint64(0x9E3779B97F4A7C15))
    return np.argsort(keys, kind="stable")


# ------------------------------------------------------------------------------------------------ files


def list_audio(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The audio files of ``source``, as sorted absolute paths without duplicates.

    Args:
        source: a folder (searched recursively for :data:`AUDIO_EXTENSIONS`, hidden entries skipped); a manifest
            (``.csv`` with a ``path`` column or paths in the first column, or ``.txt`` with one path per line;
            relative paths are resolved against the manifest's folder); a single audio file; or a list of any of
            these. Files named in a manifest or a list are taken whatever their extension, and whether or not
            they exist (:class:`AudioCorpus` reports the missing ones).

    Raises:
        ValueError: ``source`` (or an entry of it) does not exist, or nothing is found.
    """
    items: Sequence[str | os.PathLike]
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    elif isinstance(source, Sequence):
        items = list(source)
    else:
        raise TypeError(f"source must be a path or a list of paths; got {type(source).__name__}")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"source entries must be paths; got {type(item).__name__}")
    if len(items) == 1 and not Path(items[0]).exists():
        raise ValueError(f"audio source not found: {os.fspath(items[0])!r} (expected a folder, a manifest or a file)")
    found = find_audio(items)
    if not found:
        raise ValueError(f"no audio files found in {_describe(source)} (looked for {', '.join(AUDIO_EXTENSIONS)})")
    return sorted(found, key=os.fspath)


def hold_out(files: Sequence[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into ``(train, held_out)``: a file is held out when a hash of its name falls below
    ``fraction``, so the split is the same on every machine and does not move when files are added or removed.
    At least one file is held out when ``fraction > 0`` (the first by hash) and at least one is kept.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1); got {fraction!r}")
    if fraction == 0:
        return list(files), []
    if len(files) < 2:
        raise ValueError(f"a validation split needs at least 2 files; got {len(files)}")
    keys = [int.from_bytes(hashlib.blake2b(p.name.encode(), digest_size=8).digest(), "big") / 2**64 for p in files]
    held = {i for i, k in enumerate(keys) if k < fraction} or {min(range(len(files)), key=keys.__getitem__)}
    if len(held) == len(files):
        held.discard(max(held, key=keys.__getitem__))
    return [p for i, p in enumerate(files) if i not in held], [p for i, p in enumerate(files) if i in held]


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    items = list(source)  # type: ignore[call-overload]
    return f"a list of {len(items)} paths" + (f" starting with {os.fspath(items[0])!r}" if items else "")


# ------------------------------------------------------------------------------------------------ the corpus


class BadFile(NamedTuple):
    """A file left out of training, and why."""

    path: Path
    reason: str


def _probe(path: Path, min_seconds: float) -> tuple[int, int] | str:
    """``(frames, rate)`` from the file's header, or the reason it cannot be used."""
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    try:
        info = audio_info(path)
    except ValueError as exc:  # "cannot decode audio file ...: not decodable audio as ...: why"
        return str(exc)
    if info.frames <= 0 or info.samplerate <= 0:
        return "empty: no samples"
    seconds = info.frames / info.samplerate
    if seconds < min_seconds:
        return f"too short: {seconds:.3f} s < min_seconds {min_seconds:g} s"
    return info.frames, info.samplerate


class AudioCorpus(Dataset):
    """The usable audio files of a folder, manifest or list, decoded lazily to mono at ``sample_rate``.

    Construction reads every file's header (``soundfile.info``: cheap, in a few threads) and leaves out the
    files that cannot be opened, hold no samples or are shorter than ``min_seconds``, with one logging warning
    each; they are listed in :attr:`bad_files`. With ``verify=True`` every file is also decoded once, which
    catches corrupt data and NaN/inf samples that headers do not show (costs a full decode of the corpus).
    A file that fails later, while training, is skipped by the loader (see :func:`make_loader`) and added to
    :attr:`bad_files` in the main process.

    ``corpus[i]`` (or ``corpus.load(i)``) is the whole of usable file ``i``: float32 ``(T,)`` (a file that fails to
    decode is replaced by the next good one, deterministically).

    Attributes:
        files: the usable files, sorted (``Batch.indices`` index this list).
        frames: each usable file's length in frames at its own rate (from its header).
        rates: each usable file's own sample rate.
        seconds: each usable file's duration.
        bad_files: :class:`BadFile` ``(path, reason)`` for every file left out.

    Raises:
        ValueError: no file of ``source`` is usable (the message names ``source`` and the reasons).
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        sample_rate: int,
        *,
        min_seconds: float = 3.0,
        verify: bool = False,
    ) -> None:
        check_int("sample_rate", sample_rate, min=1, expected="a positive integer (Hz)")
        check_float("min_seconds", min_seconds, min=0)
        self.source = source
        self.sample_rate = sample_rate
        self.min_seconds = float(min_seconds)
        listed = list_audio(source)
        with ThreadPoolExecutor(max_workers=min(8, len(listed))) as pool:
            probes = list(pool.map(lambda p: _probe(p, self.min_seconds), listed))
        self.files: list[Path] = []
        self.frames: list[int] = []
        self.rates: list[int] = []
        self.bad_files: list[BadFile] = []
        for path, probe in zip(listed, probes, strict=True):
            if isinstance(probe, str):
                self._mark_bad(path, probe)
            else:
                self.files.append(path)
                self.frames.append(probe[0])
                self.rates.append(probe[1])
        if verify:
            keep = []
            for i, path in enumerate(self.files):
                try:
                    load_audio(path, self.sample_rate)
                except (OSError, ValueError, RuntimeError) as exc:
                    self._mark_bad(path, str(exc))
                else:
                    keep.append(i)
            self.files = [self.files[i] for i in keep]
            self.frames = [self.frames[i] for i in keep]
            self.rates = [self.rates[i] for i in keep]
        if not self.files:
            reasons: dict[str, int] = {}
            for bad in self.bad_files:
                kind = bad.reason.split(":")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
            summary = ", ".join(f"{n} {kind}" for kind, n in sorted(reasons.items()))
            raise ValueError(f"no usable audio in {_describe(source)}: {len(listed)} files, all left out ({summary})")
        self.seconds: list[float] = [f / r for f, r in zip(self.frames, self.rates, strict=True)]
        logger.info(
            "audio corpus %s: %d usable files, %.1f h; %d left out",
            _describe(source),
            len(self.files),
            sum(self.seconds) / 3600,
            len(self.bad_files),
        )

    def _mark_bad(self, path: Path, reason: str) -> None:
        if any(b.path == path for b in self.bad_files):
            return
        logger.warning("skipping %s: %s", path, reason)
        self.bad_files.append(BadFile(Path(path), reason))

    def __len__(self) -> int:
        return len(self.files)

    def num_samples(self, i: int) -> int:
        """Length of usable file ``i`` at :attr:`sample_rate`, as a crop may use it (rounded down)."""
        return self.frames[i] * self.sample_rate // self.rates[i]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(i)

    def load(self, i: int) -> torch.Tensor:
        """The whole of usable file ``i``, mono at :attr:`sample_rate`: float32 ``(T,)``. A file that fails to decode
        is added to :attr:`bad_files` (one warning) and the next good file is returned instead, deterministically.

        Raises:
            IndexError: ``i`` is out of range.
            ValueError: no file of the corpus can be decoded.
        """
        n = len(self.files)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a corpus of {n} files")
        i %= n
        for j in range(n):
            k = (i + j) % n
            try:
                return load_audio(self.files[k], self.sample_rate)
            except (OSError, ValueError, RuntimeError) as exc:
                self._mark_bad(self.files[k], str(exc))
        raise ValueError(f"no file of {_describe(self.source)} could be decoded")

    def read_crop(self, i: int, offset: int, num_file_frames: int) -> np.ndarray:
        """Frames ``[offset, offset + num_file_frames)`` of usable file ``i`` (at its own rate), mono and resampled
        to :attr:`sample_rate`: float32 ``(≈ num_file_frames * sample_rate / rate,)``.

        Raises:
            ValueError: the file cannot be decoded, holds fewer frames than its header says, or NaN/inf samples.
        """
        path = self.files[i]
        try:
            with sf.SoundFile(os.fspath(path)) as f:
                if offset:
                    f.seek(offset)
                data = f.read(num_file_frames, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            reason = getattr(exc, "error_string", None) or str(exc)
            raise ValueError(f"cannot decode: {reason}") from exc
        if data.shape[0] < num_file_frames:
            raise ValueError(
                f"truncated: read {data.shape[0]} frames at offset {offset}, expected {num_file_frames} "
                f"(the header says {self.frames[i]})"
            )
        if not np.isfinite(data).all():
            raise ValueError("NaN or inf samples")
        mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
        if self.rates[i] != self.sample_rate:
            mono = soxr.resample(mono, self.rates[i], self.sample_rate, quality="HQ")
        return mono


# ------------------------------------------------------------------------------------------------ batches


@dataclasses.dataclass
class Batch:
    """One rank's batch of one step.

    Attributes:
        step: the optimizer step it belongs to.
        audio: float32 ``(B, L)``: every crop has the same length ``L`` (no padding).
        indices: int64 ``(B,)``: the clips' indices in ``AudioCorpus.files``.
        offsets: float64 ``(B,)``: where each crop starts in its clip, in seconds (exact: the start frame at the
            file's own rate divided by that rate).
        skipped: files that failed to decode while this batch was made (they were replaced by the next good
            clips); the loader adds them to ``corpus.bad_files``.
    """

    step: int
    audio: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    skipped: tuple[BadFile, ...] = ()

    def pin_memory(self) -> Batch:
        return dataclasses.replace(self, audio=self.audio.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with ``audio`` on ``device`` (indices and offsets stay on the CPU)."""
        return dataclasses.replace(self, audio=self.audio.to(device, non_blocking=non_blocking))


class _StepSampler(Sampler[int]):
    """Steps ``start, start + 1, ...`` up to ``stop`` (exclusive; ``None``: forever)."""

    def __init__(self, start: int, stop: int | None) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop)) if self.stop is not None else itertools.count(self.start)

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless loader (max_steps=None) has no length")
        return max(0, self.stop - self.start)


def _no_convert(batch: Batch) -> Batch:
    return batch


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers that leave SIGTERM/SIGINT to the training process, which checkpoints before it stops: a launcher
    signals the whole process tree, and a worker killed first would make the main process fail mid-save. They
    exit when the iteration is closed or the main process is gone, never on these signals."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CropBatches(Dataset):
    """Deterministic, resumable, sharded batches of random crops of ``corpus`` (``make_loader`` is another name for
    it): ``batches[step]`` is that step's :class:`Batch` of this rank.

    Iterating yields one :class:`Batch` per step from ``start_step`` up to ``max_steps`` (exclusive; ``None``:
    endless), decoded by ``num_workers`` DataLoader workers (0: in this process). Each batch holds
    ``batch_size`` crops of ``crop_seconds`` (MERT: 5 s; 330M: 5.12 s), all cut to the length of the batch's
    shortest clip when that is shorter: ``audio`` is float32 ``(batch_size, L)`` with
    ``min_crop_seconds * sample_rate <= L <= crop_seconds * sample_rate`` (clips shorter than
    ``min_crop_seconds`` are never used). No padding.

    Determinism: step ``s`` of rank ``r`` takes its clips from the permutation of epoch ``s // steps_per_epoch``
    (keyed on ``(seed, epoch)``), positions ``[(k * world_size + r) * batch_size, ...)``, ``k = s %
    steps_per_epoch``; crop ``j`` starts at an offset drawn from ``seed_for(seed, s, r, j, "crop")``. So the ranks
    of a step read disjoint clips, and a run restarted with ``start_step=s`` sees exactly the batches an
    uninterrupted run saw from step ``s`` on, with any ``num_workers``. A file that fails to decode is replaced
    by the next eligible clip in corpus order (deterministically; it may then repeat a clip of the step), with
    one warning, and is added to ``corpus.bad_files``.

    ``ignore_stop_signals``: the workers ignore SIGTERM and SIGINT (the trainer's checkpoint-on-signal needs them
    alive); the caller must then close the iteration (``close()`` on the iterator) before the process exits.

    Small corpora: with fewer eligible clips than ``batch_size * world_size``, each slot of a step draws its clip
    with replacement, keyed on ``(seed, step, rank, sample)`` (see :meth:`indices_for`), so resuming stays exact;
    with enough clips the draws are the permutation scheme above, unchanged.

    Raises:
        ValueError: a bad argument, or no clip of at least ``min_crop_seconds``.
    """

    def __init__(
        self,
        corpus: AudioCorpus,
        *,
        batch_size: int,
        crop_seconds: float = 5.0,
        min_crop_seconds: float = 3.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        start_step: int = 0,
        max_steps: int | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        ignore_stop_signals: bool = False,
    ) -> None:
        if not isinstance(corpus, AudioCorpus):
            raise TypeError(f"corpus must be an AudioCorpus; got {type(corpus).__name__}")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
            ("num_workers", num_workers, 0),
            ("start_step", start_step, 0),
            ("rank", rank, 0),
        ):
            check_int(name, value, min=low)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
        if max_steps is not None:
            check_int("max_steps", max_steps, min=0, expected="None or an integer >= 0")
        for name, value in (("crop_seconds", crop_seconds), ("min_crop_seconds", min_crop_seconds)):
            check_float(name, value, min=0, exclusive_min=True, finite=True, expected="a positive number of seconds")
        if min_crop_seconds > crop_seconds:
            raise ValueError(f"min_crop_seconds ({min_crop_seconds}) must be <= crop_seconds ({crop_seconds})")
        check_int("seed", seed)
        self.corpus = corpus
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.crop_seconds, self.min_crop_seconds = float(crop_seconds), float(min_crop_seconds)
        self.num_workers, self.start_step, self.max_steps = num_workers, start_step, max_steps
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.ignore_stop_signals = ignore_stop_signals
        self.crop_samples = round(self.crop_seconds * corpus.sample_rate)
        min_samples = math.ceil(self.min_crop_seconds * corpus.sample_rate)
        # clips shorter than the minimum crop never enter a batch, so a batch's shortest clip is >= the minimum
        self.eligible = np.array([i for i in range(len(corpus)) if corpus.num_samples(i) >= min_samples], np.int64)
        if len(self.eligible) < len(corpus):
            logger.info(
                "%d of %d clips are shorter than min_crop_seconds=%g s and are not used",
                len(corpus) - len(self.eligible),
                len(corpus),
                self.min_crop_seconds,
            )
        per_step = batch_size * world_size
        if len(self.eligible) == 0:
            raise ValueError(
                f"{_describe(corpus.source)} has no clip of >= min_crop_seconds = {self.min_crop_seconds:g} s "
                f"({len(corpus)} usable files, all shorter)"
            )
        #: Fewer eligible clips than a step needs: each slot draws its clip with replacement (see indices_for).
        self.with_replacement = len(self.eligible) < per_step
        if self.with_replacement and rank == 0:
            logger.warning(
                "%s has %d clips of >= %g s, fewer than a step's batch_size * world_size = %d: clips are drawn with "
                "replacement (a step may repeat a clip, with its own crop)",
                _describe(corpus.source),
                len(self.eligible),
                self.min_crop_seconds,
                per_step,
            )
        self.steps_per_epoch = max(1, len(self.eligible) // per_step)
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._known_bad: dict[int, str] = {}  # per process: clips that failed to decode here

    # ---------------------------------------------------------------------------------- the pure functions

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Corpus indices of the eligible clips in epoch ``epoch``'s order (the same on every rank)."""
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = _permutation(len(self.eligible), seed_for(self.seed, epoch, 0, 0, "epoch permutation"))
            self._perm_cache = (epoch, self.eligible[perm])
        return self._perm_cache[1]

    def indices_for(self, step: int) -> np.ndarray:
        """Corpus indices of this rank's clips at ``step``, before any decoding failure: int64 ``(batch_size,)``.

        With fewer eligible clips than ``batch_size * world_size`` (:attr:`with_replacement`), slot ``j`` takes
        eligible clip ``seed_for(seed, step, rank, j, "clip") % n_eligible``: a draw with replacement that is still
        a function of ``(seed, step, rank, sample)`` only."""
        if self.with_replacement:
            n = len(self.eligible)
            slots = [seed_for(self.seed, step, self.rank, j, "clip") % n for j in range(self.batch_size)]
            return self.eligible[np.array(slots, dtype=np.int64)]
        epoch, k = divmod(step, self.steps_per_epoch)
        first = (k * self.world_size + self.rank) * self.batch_size
        return self.epoch_permutation(epoch)[first : first + self.batch_size].copy()

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless loader (max_steps=None) has no length")
        return max(0, self.max_steps - self.start_step)

    def __getitem__(self, step: int) -> Batch:
        """Decode and crop step ``step``'s batch (runs in a DataLoader worker)."""
        corpus = self.corpus
        chosen = [int(i) for i in self.indices_for(step)]
        skipped: list[BadFile] = []
        while True:
            for j, i in enumerate(chosen):
                # a clip that failed is replaced by the next eligible clip (in corpus order) not known to fail
                while i in self._known_bad:
                    if not any(b.path == corpus.files[i] for b in skipped):
                        skipped.append(BadFile(corpus.files[i], self._known_bad[i]))
                    if len(self._known_bad) >= len(self.eligible):
                        raise ValueError(f"no clip of {_describe(corpus.source)} could be decoded")
                    position = int(np.searchsorted(self.eligible, i))  # eligible is sorted
                    i = int(self.eligible[(position + 1) % len(self.eligible)])
                chosen[j] = i
            length = min(self.crop_samples, *(corpus.num_samples(i) for i in chosen))
            crops, offsets, failed = [], [], False
            for j, i in enumerate(chosen):
                rate = corpus.rates[i]
                if rate == corpus.sample_rate:
                    n_file = length
                else:  # enough file frames to give >= length samples after resampling (soxr rounds the length)
                    n_file = min(-(-length * rate // corpus.sample_rate), corpus.frames[i])
                spare = corpus.frames[i] - n_file
                offset = seed_for(self.seed, step, self.rank, j, "crop") % (spare + 1)
                try:
                    crop = corpus.read_crop(i, offset, n_file)
                    if len(crop) < length:
                        raise ValueError(f"decoded {len(crop)} samples, expected {length}")
                except ValueError as exc:
                    logger.debug("step %d: %s failed: %s", step, corpus.files[i], exc)
                    self._known_bad[i] = str(exc)
                    failed = True
                    break
                crops.append(crop[:length])
                offsets.append(offset / rate)
            if not failed:
                break
        return Batch(
            step=step,
            audio=torch.from_numpy(np.stack(crops)),
            indices=torch.tensor(chosen, dtype=torch.int64),
            offsets=torch.tensor(offsets, dtype=torch.float64),
            skipped=tuple(skipped),
        )

    # ---------------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[Batch]:
        """Batches of steps ``start_step, start_step + 1, ...`` (up to ``max_steps``, exclusive), in order."""
        loader = DataLoader(
            self,
            batch_size=None,
            sampler=_StepSampler(self.start_step, self.max_steps),
            num_workers=self.num_workers,
            collate_fn=_no_convert,
            worker_init_fn=_ignore_stop_signals if self.ignore_stop_signals else None,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
        )
        for batch in loader:
            for bad in batch.skipped:
                self.corpus._mark_bad(bad.path, bad.reason)
            yield batch


#: Deterministic, resumable, sharded batches of random crops: :class:`CropBatches` under its usual name.
make_loader = CropBatches
