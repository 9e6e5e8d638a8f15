"""Pre-training data: a folder or manifest of audio, deterministic random crops, one shard per rank.

Every random draw is a function of ``(seed, step, rank, sample)`` (see :func:`seed_for`): which clips a step
takes (a permutation per epoch keyed on ``(seed, epoch)``) and where each crop starts. A run restarted at
``start_step`` therefore sees exactly the batches of an uninterrupted one, whatever ``num_workers`` is.

    corpus = AudioCorpus("music/", sample_rate=24000)          # scans headers; bad files listed in corpus.bad_files
    for batch in CropBatches(corpus, batch_size=8, seed=0, rank=rank, world_size=world, num_workers=4):
        batch.audio    # float32 (8, L): crops of 5 s cut to the batch's shortest clip (>= 3 s), no padding

Step ``s`` of rank ``r`` takes positions ``[(k * world_size + r) * batch_size, ... + batch_size)`` of the
permutation of epoch ``s // steps_per_epoch`` (``k = s % steps_per_epoch``; the last incomplete group of an
epoch is dropped), so the ranks of a step read disjoint clips. A corpus with fewer clips than one step needs is
sampled with replacement instead, each slot's clip drawn from ``(seed, step, rank, sample)``.

``paired_renders=True`` draws renders of one clip in pairs (the files ``NAME.ext`` and ``NAME.r<k>.ext`` of
``make-corpus --real --renders N``: the same notes on other instruments, or the same instruments on other notes): a
step takes ``batch_size // 2`` clips, each followed by another of its renders cropped at the same offset, so that
crops ``2j`` and ``2j + 1`` are two views of one clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mert_fast._checks import check_float, check_int
from mert_fast.audio import render_group
from mert_fast.train.corpus import AUDIO_EXTENSIONS, AudioCorpus, BadFile, _describe, hold_out, list_audio

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioCorpus",
    "BadFile",
    "Batch",
    "CropBatches",
    "hold_out",
    "list_audio",
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


def _check_arguments(
    corpus: AudioCorpus,
    *,
    batch_size: int,
    crop_seconds: float,
    min_crop_seconds: float,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    start_step: int,
    max_steps: int | None,
    paired_renders: bool,
) -> None:
    """:class:`CropBatches`'s argument checks: a TypeError or ValueError naming the argument."""
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
    if not isinstance(paired_renders, bool):
        raise TypeError(f"paired_renders must be a bool; got {paired_renders!r}")
    if paired_renders and batch_size % 2:
        raise ValueError(
            f"batch_size: paired_renders takes clips in pairs and needs an even batch_size; got {batch_size}"
        )


def render_pairs(corpus: AudioCorpus, eligible: np.ndarray) -> list[tuple[int, ...]]:
    """The clips of ``corpus`` (among the indices ``eligible``) that have another render there: for each, its
    renders' indices in render order (render 0 first when present), in corpus order of the first. Renders of one
    clip must match in length and sample rate to be cropped together; one that does not is left out, with a
    warning."""
    groups: dict[Path, list[tuple[int, int]]] = {}
    for i in eligible:
        clip, k = render_group(corpus.files[int(i)])
        groups.setdefault(clip, []).append((k, int(i)))
    pairs = []
    for clip, members in groups.items():
        members.sort()
        first = members[0][1]
        same = [
            i for _, i in members if (corpus.frames[i], corpus.rates[i]) == (corpus.frames[first], corpus.rates[first])
        ]
        if len(same) < len(members):
            logger.warning("%s: %d renders differ from the first in length or rate and are not paired with it",
                           clip, len(members) - len(same))  # fmt: skip
        if len(same) >= 2:
            pairs.append(tuple(same))
    return sorted(pairs)


class CropBatches(Dataset):
    """Deterministic, resumable, sharded batches of random crops of ``corpus``: ``batches[step]`` is that step's
    :class:`Batch` of this rank.

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

    ``paired_renders``: the module docstring's pairs of renders. The permutation (or the draw with replacement) is
    then over the clips with at least two eligible renders (:func:`render_pairs`), ``batch_size // 2`` of them a
    step; slot ``2j`` is a clip's first render, slot ``2j + 1`` another drawn from ``seed_for(seed, s, r, j,
    "render")``, both cropped at the offset drawn for slot ``2j``; a pair with a file that fails to decode is
    replaced by the next pair.

    Raises:
        ValueError: a bad argument, no clip of at least ``min_crop_seconds``, or (``paired_renders``) no clip with
            two renders.
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
        paired_renders: bool = False,
    ) -> None:
        _check_arguments(
            corpus, batch_size=batch_size, crop_seconds=crop_seconds, min_crop_seconds=min_crop_seconds, seed=seed,
            rank=rank, world_size=world_size, num_workers=num_workers, start_step=start_step, max_steps=max_steps,
            paired_renders=paired_renders,
        )  # fmt: skip
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
        self.paired_renders = paired_renders
        #: paired_renders: each clip's renders (corpus indices) that are drawn in pairs (see render_pairs).
        self.pairs = render_pairs(corpus, self.eligible) if paired_renders else []
        if paired_renders and not self.pairs:
            raise ValueError(
                f"paired_renders: {_describe(corpus.source)} has no clip with two renders of >= "
                f"{self.min_crop_seconds:g} s (NAME.ext and NAME.r1.ext, as make-corpus --real --renders 2 writes)"
            )
        n_units = len(self.pairs) if paired_renders else len(self.eligible)
        if paired_renders:
            per_step //= 2
        #: Fewer eligible clips than a step needs: each slot draws its clip with replacement (see indices_for).
        self.with_replacement = n_units < per_step
        if self.with_replacement and rank == 0:
            what = "clips with two renders" if paired_renders else "clips"
            need = "batch_size // 2 * world_size" if paired_renders else "batch_size * world_size"
            logger.warning(
                "%s has %d %s of >= %g s, fewer than a step's %s = %d: clips are drawn with replacement (a step may "
                "repeat a clip, with its own crop)",
                _describe(corpus.source),
                n_units,
                what,
                self.min_crop_seconds,
                need,
                per_step,
            )
        self.steps_per_epoch = max(1, n_units // per_step)
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._known_bad: dict[int, str] = {}  # per process: clips that failed to decode here

    # ---------------------------------------------------------------------------------- the pure functions

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Corpus indices of the eligible clips in epoch ``epoch``'s order (the same on every rank); with
        ``paired_renders``, positions in :attr:`pairs` instead."""
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            units = np.arange(len(self.pairs)) if self.paired_renders else self.eligible
            perm = _permutation(len(units), seed_for(self.seed, epoch, 0, 0, "epoch permutation"))
            self._perm_cache = (epoch, units[perm])
        return self._perm_cache[1]

    def _units_for(self, step: int) -> np.ndarray:
        """This rank's draws at ``step``: corpus indices, or (``paired_renders``) positions in :attr:`pairs`."""
        n_slots = self.batch_size // 2 if self.paired_renders else self.batch_size
        if self.with_replacement:
            n = len(self.pairs) if self.paired_renders else len(self.eligible)
            slots = np.array([seed_for(self.seed, step, self.rank, j, "clip") % n for j in range(n_slots)], np.int64)
            return slots if self.paired_renders else self.eligible[slots]
        epoch, k = divmod(step, self.steps_per_epoch)
        first = (k * self.world_size + self.rank) * n_slots
        return self.epoch_permutation(epoch)[first : first + n_slots].copy()

    def _pair(self, step: int, j: int, unit: int) -> list[int]:
        """The two corpus indices slot pair ``j`` takes from :attr:`pairs` ``[unit]``: the first render and another."""
        renders = self.pairs[unit]
        return [renders[0], renders[1 + seed_for(self.seed, step, self.rank, j, "render") % (len(renders) - 1)]]

    def indices_for(self, step: int) -> np.ndarray:
        """Corpus indices of this rank's clips at ``step``, before any decoding failure: int64 ``(batch_size,)``.

        With fewer eligible clips than ``batch_size * world_size`` (:attr:`with_replacement`), slot ``j`` takes
        eligible clip ``seed_for(seed, step, rank, j, "clip") % n_eligible``: a draw with replacement that is still
        a function of ``(seed, step, rank, sample)`` only. ``paired_renders``: the pairs of renders, flattened."""
        units = self._units_for(step)
        if not self.paired_renders:
            return units
        return np.array([i for j, u in enumerate(units) for i in self._pair(step, j, int(u))], dtype=np.int64)

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError("an endless loader (max_steps=None) has no length")
        return max(0, self.max_steps - self.start_step)

    def _skip_bad(self, i: int, skipped: list[BadFile]) -> None:
        """Record the known-bad clip ``i`` in ``skipped`` (once)."""
        path = self.corpus.files[i]
        if not any(b.path == path for b in skipped):
            skipped.append(BadFile(path, self._known_bad[i]))

    def _good_clips(self, step: int, skipped: list[BadFile]) -> list[int]:
        """:meth:`indices_for` with every clip known to fail replaced: by the next eligible clip in corpus order, or
        (``paired_renders``) its pair by the next pair of :attr:`pairs`."""
        if self.paired_renders:
            units = [int(u) for u in self._units_for(step)]
            for j, u in enumerate(units):
                while bad := [i for i in self._pair(step, j, u) if i in self._known_bad]:
                    for i in bad:
                        self._skip_bad(i, skipped)
                    if all(any(i in self._known_bad for i in renders) for renders in self.pairs):
                        raise ValueError(f"no pair of renders of {_describe(self.corpus.source)} could be decoded")
                    u = (u + 1) % len(self.pairs)
                units[j] = u
            return [i for j, u in enumerate(units) for i in self._pair(step, j, u)]
        chosen = [int(i) for i in self.indices_for(step)]
        for j, i in enumerate(chosen):
            # a clip that failed is replaced by the next eligible clip (in corpus order) not known to fail
            while i in self._known_bad:
                self._skip_bad(i, skipped)
                if len(self._known_bad) >= len(self.eligible):
                    raise ValueError(f"no clip of {_describe(self.corpus.source)} could be decoded")
                position = int(np.searchsorted(self.eligible, i))  # eligible is sorted
                i = int(self.eligible[(position + 1) % len(self.eligible)])
            chosen[j] = i
        return chosen

    def __getitem__(self, step: int) -> Batch:
        """Decode and crop step ``step``'s batch (runs in a DataLoader worker)."""
        corpus = self.corpus
        skipped: list[BadFile] = []
        while True:
            chosen = self._good_clips(step, skipped)
            length = min(self.crop_samples, *(corpus.num_samples(i) for i in chosen))
            crops, offsets, failed = [], [], False
            for j, i in enumerate(chosen):
                rate = corpus.rates[i]
                if rate == corpus.sample_rate:
                    n_file = length
                else:  # enough file frames to give >= length samples after resampling (soxr rounds the length)
                    n_file = min(-(-length * rate // corpus.sample_rate), corpus.frames[i])
                spare = corpus.frames[i] - n_file
                # the renders of a pair have one length and rate (render_pairs): the first's draw crops both
                slot = j - j % 2 if self.paired_renders else j
                offset = seed_for(self.seed, step, self.rank, slot, "crop") % (spare + 1)
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
