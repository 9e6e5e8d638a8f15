"""Audio input: decode files to the float32 waveforms the models take, and a synthesized demo clip.

MERT models read 24 kHz mono. :func:`load_audio` decodes with libsndfile (through ``soundfile``),
averages the channels and resamples with soxr; :func:`synth_demo` (from :mod:`mert_fast.synth.demo`) makes a
short, deterministic piece of music so that examples and tests need no downloads.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mert_fast._checks import check_float
from mert_fast.synth.demo import synth_demo

__all__ = ["audio_info", "load_audio", "render_group", "render_suffix", "synth_demo"]

logger = logging.getLogger(__name__)

_RATE = "a positive number of samples per second"


#: What libsndfile is asked to read for each file name ending (it also sniffs the header of most formats).
_FORMAT_NAMES = {
    ".wav": "WAV", ".flac": "FLAC", ".ogg": "Ogg", ".oga": "Ogg", ".opus": "Ogg Opus", ".mp3": "MP3",
    ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF-C", ".au": "AU", ".caf": "CAF", ".w64": "Wave64", ".rf64": "RF64",
}  # fmt: skip


def _not_audio(path: str, reason: str) -> ValueError:
    ext = os.path.splitext(path)[1].lower()
    tried = f"as {_FORMAT_NAMES[ext]} (the format its {ext!r} extension names)" if ext in _FORMAT_NAMES else (
        "in any format libsndfile knows")  # fmt: skip
    return ValueError(f"cannot decode audio file {path!r}: not decodable audio {tried}: {reason}")


def _check_mpeg_header(path: str) -> None:
    """Refuse an ``.mp3`` that starts with neither an ID3 tag nor an MPEG frame sync before libsndfile sees it:
    its mpg123 decoder would print resync notes on stderr and fail with "File does not exist or is not a regular
    file", which is misleading."""
    with open(path, "rb") as f:
        head = f.read(3)
    if head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return
    raise _not_audio(path, "no ID3 tag or MPEG frame sync at the start of the file")


@contextlib.contextmanager
def _decoding(path: str) -> Iterator[None]:
    """Turn libsndfile's errors while opening ``path`` into a ValueError that says the file is not decodable
    audio and names the format tried."""
    if path.lower().endswith(".mp3") and os.path.isfile(path):
        _check_mpeg_header(path)
    try:
        yield
    except (sf.SoundFileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        if "not a regular file" in reason and os.path.isfile(path):
            reason = "the decoder found no valid audio data"  # libsndfile's words for a failed MPEG decode
        raise _not_audio(path, " ".join(reason.split())) from exc


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """``soundfile.info(path)`` (the header: frames, sample rate, channels), with the errors of :func:`load_audio`.

    Raises:
        ValueError: the file is not decodable audio (the message names the file and the format tried).
    """
    path = os.fspath(path)
    with _decoding(path):
        return sf.info(path)


def load_audio(path: str | os.PathLike, sample_rate: float = 24000, *, mono: bool = True) -> torch.Tensor:
    """Decode an audio file to float32 samples in [-1, 1] at ``sample_rate``.

    Args:
        path: a file libsndfile can decode: WAV, FLAC, OGG/Vorbis, MP3 (libsndfile >= 1.1), AIFF, ...
        sample_rate: the rate of the returned samples in Hz; the file is resampled with soxr (quality
            ``"HQ"``) when its own rate differs.
        mono: average the channels (the default; MERT's input) or keep them.

    Returns:
        float32 ``(T,)`` when ``mono``, else ``(C, T)``; ``T`` is the file's length times
        ``sample_rate / file_rate``, rounded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``sample_rate`` is not positive, ``path`` is not a file or cannot be decoded,
            or it holds no samples or non-finite (NaN/inf) samples.
    """
    check_float("sample_rate", sample_rate, min=0, exclusive_min=True, finite=True, expected=_RATE)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"audio path is not a file: {path!r}")
    with _decoding(path):
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    if data.size == 0:
        raise ValueError(f"audio file {path!r} holds no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"audio file {path!r} contains NaN or inf samples")
    logger.debug("decoded %s: %d frames x %d channels at %d Hz", path, data.shape[0], data.shape[1], file_rate)
    if mono:
        data = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    if file_rate != sample_rate:
        # soxr keeps float32 and resamples every column of a (frames, channels) array
        data = soxr.resample(np.ascontiguousarray(data), file_rate, sample_rate, quality="HQ")
        logger.debug("resampled %s from %d Hz to %s Hz: %d frames", path, file_rate, sample_rate, data.shape[0])
    return torch.from_numpy(np.ascontiguousarray(data if mono else data.T))


# ------------------------------------------------------------------------------------------------ finding audio

#: File name endings taken from folders (lower case); files named in a manifest or a list are taken as they are.
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64", ".rf64",
)  # fmt: skip
#: Files read as lists of audio paths.
MANIFEST_EXTENSIONS = (".csv", ".txt")


def read_manifest(path: str | os.PathLike) -> list[Path]:
    """Absolute paths listed in a manifest: ``.txt`` one per line (``#`` comments); ``.csv`` the ``path`` column,
    else the first column (a first row naming neither an audio file nor an existing file is a header). Relative
    paths are relative to the manifest's folder."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if not rows:
                return []
            header = [c.strip().lower() for c in rows[0]]
            if "path" in header:
                column, rows = header.index("path"), rows[1:]
            else:
                column = 0
                first = rows[0][0].strip()
                if not first.lower().endswith(AUDIO_EXTENSIONS) and not (path.parent / first).exists():
                    rows = rows[1:]
            names = [r[column].strip() for r in rows if len(r) > column and r[column].strip()]
        else:
            names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [Path(os.path.abspath(path.parent / name)) for name in names]


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of what ``path`` names (links followed), or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_audio(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Audio files from ``inputs``, as absolute paths in first-occurrence order without duplicates.

    A folder is searched recursively (sorted, following links) for :data:`AUDIO_EXTENSIONS`, hidden entries
    skipped; a ``.csv``/``.txt`` file is a manifest (:func:`read_manifest`); anything else is taken as a file,
    whether or not it exists, so that callers can report it.

    Each real folder is searched once and each real file found in folders listed once (by ``(st_dev, st_ino)``):
    a link that points back up the tree, or a second link to a folder or file already seen, is skipped with a log
    message instead of being followed again. Files named explicitly are kept under every name given.
    """
    seen: dict[Path, None] = {}
    files_seen: dict[tuple[int, int], Path] = {}

    def add(path: Path, found: bool = False) -> None:
        """``found``: met while searching a folder, where a second name of a file already listed is skipped;
        files named explicitly (arguments, manifests) are kept under each name given."""
        ident = _identity(path)
        if ident is not None:
            if found and ident in files_seen and files_seen[ident] != path:
                logger.info("skipping %s: the same file as %s", path, files_seen[ident])
                return
            files_seen.setdefault(ident, path)
        seen.setdefault(path, None)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            visited = {_identity(p)}
            for root, dirs, files in os.walk(p, followlinks=True):
                keep = []
                for d in sorted(d for d in dirs if not d.startswith(".")):
                    ident = _identity(os.path.join(root, d))
                    if ident is None or ident in visited:
                        why = (
                            "cannot be read"
                            if ident is None
                            else "a folder already searched (a link loop or a second link)"
                        )
                        logger.warning("skipping %s: %s", os.path.join(root, d), why)
                        continue
                    visited.add(ident)
                    keep.append(d)
                dirs[:] = keep
                for name in sorted(files):
                    if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
                        add(Path(os.path.abspath(os.path.join(root, name))), found=True)
        elif p.is_file() and p.suffix.lower() in MANIFEST_EXTENSIONS:
            for q in read_manifest(p):
                add(q)
        else:
            add(Path(os.path.abspath(p)))
    return list(seen)


# ------------------------------------------------------------------------------------------------ renders

#: A file's name is ``<stem>.r<k><ext>`` when it is render ``k >= 1`` of clip ``<stem><ext>`` (``mert-fast
#: make-corpus --real --renders N``: the clip with its instruments or notes varied).
_RENDER = re.compile(r"^(?P<stem>.+)\.r(?P<k>[1-9][0-9]*)(?P<ext>\.[^.]+)$")


def render_suffix(k: int) -> str:
    """What goes between a clip's stem and its extension in the name of its render ``k`` (none for render 0)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an integer >= 0; got {k!r}")
    return f".r{k}" if k else ""


def render_group(path: str | os.PathLike) -> tuple[Path, int]:
    """``(clip, k)``: the path of render 0 of the clip ``path`` renders and its render number; a file not named as a
    render (:func:`render_suffix`) is its own render 0."""
    path = Path(path)
    match = _RENDER.match(path.name)
    if match is None:
        return path, 0
    return path.with_name(match["stem"] + match["ext"]), int(match["k"])
