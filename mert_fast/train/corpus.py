"""The audio a run trains on: the files of a folder, manifest or list, checked once, decoded lazily.

:func:`list_audio` finds the files, :func:`hold_out` splits off a validation set by file name, and
:class:`AudioCorpus` keeps the usable ones (with :attr:`~AudioCorpus.bad_files` listing the rest and why) and reads
whole files or crops of them, mono at the run's sample rate.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import Dataset

from mert_fast._checks import check_float, check_int
from mert_fast.audio import AUDIO_EXTENSIONS, audio_info, find_audio, load_audio, render_group

__all__ = ["AUDIO_EXTENSIONS", "AudioCorpus", "BadFile", "hold_out", "list_audio"]

logger = logging.getLogger(__name__)


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
    A render of a clip (``<stem>.r<k><ext>``, :func:`~mert_fast.audio.render_group`) is hashed by its clip's name,
    so it lands on its clip's side. At least one file is held out when ``fraction > 0`` (the first clip by hash)
    and at least one is kept.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1); got {fraction!r}")
    if fraction == 0:
        return list(files), []
    if len(files) < 2:
        raise ValueError(f"a validation split needs at least 2 files; got {len(files)}")
    # the renders of one clip (name.r<k>.ext, see render_group) go with their clip: they share its notes
    names = [render_group(p)[0].name for p in files]
    keys = [int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "big") / 2**64 for n in names]
    held = {i for i, k in enumerate(keys) if k < fraction} or {i for i, k in enumerate(keys) if k == min(keys)}
    if len(held) == len(files):  # keep the last clip by hash (with its renders), or one file when there is one clip
        held -= {i for i in held if keys[i] == max(keys)} if min(keys) < max(keys) else {max(held)}
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
    A file that fails later, while training, is skipped by the loader (see
    :class:`~mert_fast.train.data.CropBatches`) and added to :attr:`bad_files` in the main process.

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
