"""The file driver behind ``mert-fast extract``: files in, feature arrays out, resumable.

Input discovery (files, folders, CSV/txt manifests; :func:`mert_fast.audio.find_audio`), sharding across
``torchrun`` ranks, padding-exact batches of similar-length clips, atomic writes with a JSON sidecar per file,
resumption and the run manifest. The long-audio computation itself is :func:`mert_fast.model.extract_tensors.extract`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mert_fast._io import atomic_path, write_json
from mert_fast.audio import AUDIO_EXTENSIONS, audio_info, find_audio
from mert_fast.model.extract_tensors import LayerSpec, extract, resolve_layers, window_lengths

if TYPE_CHECKING:
    from mert_fast.model.mert import MERTModel

__all__ = ["AUDIO_EXTENSIONS", "ExtractionResult", "load_model", "run_extraction", "weights_sha256"]

logger = logging.getLogger(__name__)


# ============================================================================================== files


@dataclasses.dataclass
class ExtractionResult:
    """What :func:`run_extraction` did: one entry per input of this rank (``input``, ``output``, ``status`` =
    ok / skipped / failed, ``reason``, ``duration_s``), and the manifest path."""

    entries: list[dict[str, Any]]
    manifest: Path

    def count(self, status: str) -> int:
        return sum(e["status"] == status for e in self.entries)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["status"] == "failed"]


def _relative_outputs(files: Sequence[Path]) -> list[Path]:
    """Each file's path relative to the deepest folder holding all the files that exist (unique because the paths
    are). Files that do not exist fail and are never written, so a mistyped input cannot move the output tree; one
    outside that folder keeps only its name."""
    if not files:
        return []
    anchors = [f for f in files if f.is_file()] or list(files)
    root = Path(os.path.commonpath([str(f.parent) for f in anchors]))
    return [f.relative_to(root) if f.is_relative_to(root) else Path(f.name) for f in files]


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_model(name: str | os.PathLike) -> tuple[MERTModel, str]:
    """A local HF model directory (:meth:`MERTModel.from_pretrained`) or a preset name (random weights from
    seed 0, with a warning). Returns the model in eval mode on the CPU and its identity for the sidecar."""
    from mert_fast.model.config import PRESETS, MERTConfig
    from mert_fast.model.mert import MERTModel

    path = Path(name)
    if path.is_dir():
        return MERTModel.from_pretrained(path), str(path.resolve())
    if str(name) in PRESETS:
        logger.warning("model %s is a preset with RANDOM weights (seed 0): the features mean nothing", name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = MERTModel(MERTConfig.from_name(str(name)))
        return model.eval(), f"preset:{name}"
    raise ValueError(
        f"--model must be a local model directory (config.json + weights) or a preset ({', '.join(sorted(PRESETS))});"
        f" got {str(name)!r}"
    )


def _write_array(path: Path, array: np.ndarray, fmt: str) -> None:
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            from safetensors.numpy import save_file

            save_file({"features": np.ascontiguousarray(array)}, str(tmp))


#: Sidecar fields that must equal the run's for a file to be skipped on a re-run.
_RESUME_KEYS = (
    "model", "model_sha256", "layers", "pool", "format", "dtype", "compute_dtype", "window_s", "hop_s",
    "sample_rate", "source", "source_bytes", "source_mtime_ns",
)  # fmt: skip


def _done(output: Path, sidecar: Path, expected: dict[str, Any]) -> bool:
    if not (output.is_file() and sidecar.is_file()):
        return False
    try:
        with open(sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == expected.get(k) for k in _RESUME_KEYS)


@dataclasses.dataclass
class _Item:
    index: int
    source: Path
    output: Path
    sidecar: Path
    settings: dict[str, Any]
    duration_s: float = 0.0


def run_extraction(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: MERTModel,
    model_id: str,
    *,
    model_sha256: str | None = None,
    layers: LayerSpec = None,
    pool: str = "none",
    fmt: str = "npy",
    save_dtype: str = "float32",
    window_s: float | None = None,
    hop_s: float | None = None,
    batch_size: int = 8,
    max_batch_s: float = 60.0,
    chunk_s: float = 30.0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    decode_workers: int = 2,
) -> ExtractionResult:
    """Extract features for every audio file in ``inputs`` into ``out_dir`` (the ``mert-fast extract`` command).

    Output layout: for input ``<root>/a/b.flac`` (``<root>`` the deepest folder holding every input file that
    exists; a mistyped path does not move it)
    ``out_dir/a/b.flac.npy`` (or ``.safetensors``, tensor ``features``) holding ``(S, T, H)`` (``pool="none"``)
    or ``(S, H)`` (``pool="mean"``: the average over frames), and ``out_dir/a/b.flac.json``, the sidecar; the
    run manifest is ``out_dir/manifest.json`` (``manifest.rank<R>.json`` under several ranks). A file is
    skipped when its output and sidecar exist and the sidecar matches this run's settings; a file that cannot
    be decoded, is empty or shorter than one frame, or whose features come out NaN or inf (a broken model) fails,
    is listed without an ``output`` and nothing is written for it; the run goes on.

    Args:
        inputs: files, folders, ``.txt``/``.csv`` manifests (see :func:`mert_fast.audio.find_audio`).
        out_dir: output folder (created).
        model: the MERT student, on the device and in the dtype to compute in.
        model_id: its identity for the sidecars (a directory path or ``preset:<name>``).
        model_sha256: :func:`weights_sha256` of its weights (computed when None; pass the one of the float32
            weights so that runs in other dtypes name the same model).
        layers: as in :func:`extract`.
        pool: ``"none"`` or ``"mean"`` (over frames).
        fmt: ``"npy"`` or ``"safetensors"``.
        save_dtype: ``"float32"`` or ``"float16"`` for the saved arrays.
        window_s, hop_s: as in :func:`extract` (None: full context).
        batch_size: clips per padded batch (and windows per forward).
        max_batch_s: clips longer than this (or than ``window_s``) run one at a time.
        chunk_s: conv-encoder chunk in seconds.
        rank, world_size: this process takes input ``i`` when ``i % world_size == rank``.
        progress: tqdm bar (None: only on a terminal).
        decode_workers: threads decoding the next batch while the model runs.
    """
    _check_run_args(pool, fmt, save_dtype, rank, world_size)
    states = resolve_layers(layers, model.config.num_hidden_layers + 1)
    if window_s is not None:
        window_lengths(model, window_s, hop_s)  # checks them
    hop_s = (hop_s if hop_s is not None else window_s / 2) if window_s is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = find_audio(inputs)
    if not files:
        raise ValueError("inputs: no audio files found")
    opts = _RunOptions(states, pool, fmt, save_dtype, window_s, hop_s, batch_size, chunk_s)
    common = _run_settings(model, model_id, model_sha256, opts)
    mine = [i for i in range(len(files)) if i % world_size == rank]
    manifest = out_dir / ("manifest.json" if world_size == 1 else f"manifest.rank{rank}.json")
    log = _RunLog(out_dir, len(mine), progress)
    try:
        todo = _plan(files, mine, out_dir, ".npy" if fmt == "npy" else ".safetensors", common, log.finish)
        limit_s = min(max_batch_s, window_s) if window_s is not None else max_batch_s
        batches = _batches(sorted(todo, key=lambda it: it.duration_s), batch_size, limit_s)

        def run(ready: list[tuple[_Item, torch.Tensor]]) -> None:
            _run_batch(model, ready, opts, log.finish)

        _decode_ahead(batches, model.config, decode_workers, run, log.finish)
    finally:
        log.close()
        entries = sorted(log.entries, key=lambda e: e["input"])
        _write_manifest(manifest, common, rank, world_size, entries)
    return ExtractionResult(entries=entries, manifest=manifest)


def _write_manifest(
    manifest: Path, common: dict[str, Any], rank: int, world_size: int, entries: list[dict[str, Any]]
) -> None:
    write_json(
        manifest,
        {
            "settings": {k: v for k, v in common.items()},
            "rank": rank,
            "world_size": world_size,
            "counts": {s: sum(e["status"] == s for e in entries) for s in ("ok", "skipped", "failed")},
            "files": entries,
        },
    )


def _check_run_args(pool: str, fmt: str, save_dtype: str, rank: int, world_size: int) -> None:
    if pool not in ("none", "mean"):
        raise ValueError(f"pool must be 'none' or 'mean'; got {pool!r}")
    if fmt not in ("npy", "safetensors"):
        raise ValueError(f"format must be 'npy' or 'safetensors'; got {fmt!r}")
    if save_dtype not in ("float32", "float16"):
        raise ValueError(f"save_dtype must be 'float32' or 'float16'; got {save_dtype!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")


@dataclasses.dataclass(frozen=True)
class _RunOptions:
    """What a run computes and writes for every clip (checked and resolved by :func:`run_extraction`)."""

    states: list[int] | str
    pool: str
    fmt: str
    save_dtype: str
    window_s: float | None
    hop_s: float | None
    batch_size: int
    chunk_s: float


def _run_settings(model: MERTModel, model_id: str, model_sha256: str | None, opts: _RunOptions) -> dict[str, Any]:
    """The settings every sidecar and the manifest record."""
    cfg = model.config
    param = next(model.parameters())
    return {
        "model": model_id,
        "model_sha256": model_sha256 or weights_sha256(model),
        "layers": opts.states,
        "num_hidden_states": cfg.num_hidden_layers + 1,
        "pool": opts.pool,
        "format": opts.fmt,
        "dtype": opts.save_dtype,
        "compute_dtype": str(param.dtype).removeprefix("torch."),
        "window_s": opts.window_s,
        "hop_s": opts.hop_s,
        "sample_rate": cfg.sample_rate,
        "hop_length": cfg.hop_length,
        "receptive_field": cfg.receptive_field,
        "frame_rate": cfg.frame_rate,
        "frame_offset_s": cfg.receptive_field / 2 / cfg.sample_rate,
    }


class _RunLog:
    """The run's entries (one per file of this rank) and its progress bar (audio hours per second)."""

    def __init__(self, out_dir: Path, total: int, progress: bool | None) -> None:
        from tqdm.auto import tqdm

        self.out_dir = out_dir
        self.entries: list[dict[str, Any]] = []
        self.bar = tqdm(total=total, unit="file", disable=None if progress is None else not progress, smoothing=0.1)
        self.start = time.perf_counter()
        self.audio_s = 0.0

    def finish(self, item_or_path, status: str, reason: str | None = None, duration: float | None = None) -> None:
        source = item_or_path.source if isinstance(item_or_path, _Item) else item_or_path
        entry: dict[str, Any] = {"input": str(source)}
        if status != "failed":  # a failed file was never written: no output to point at
            entry["output"] = str(item_or_path.output.relative_to(self.out_dir))
        self.entries.append({**entry, "status": status, "reason": reason, "duration_s": duration})
        if status == "failed":
            logger.warning("%s: failed: %s", source, reason)
        if status == "ok" and duration:
            self.audio_s += duration
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self.audio_s / 3600 / max(time.perf_counter() - self.start, 1e-9):.3g} audio-h/s")

    def close(self) -> None:
        self.bar.close()


def _plan(
    files: list[Path],
    mine: list[int],
    out_dir: Path,
    suffix: str,
    common: dict[str, Any],
    finish: Callable[..., None],
) -> list[_Item]:
    """The files of this rank still to extract; unreadable ones are reported failed and finished ones skipped."""
    import soundfile as sf

    rel = _relative_outputs(files)
    todo: list[_Item] = []
    for i in mine:
        source = files[i]
        output = out_dir / rel[i].with_name(rel[i].name + suffix)
        sidecar = out_dir / rel[i].with_name(rel[i].name + ".json")
        try:
            st = source.stat()
            if st.st_size == 0:
                raise ValueError("empty file (0 bytes)")
            info = audio_info(source)
            if info.frames == 0:
                raise ValueError("the file holds no samples")
        except FileNotFoundError:
            finish(source, "failed", "file not found")
            continue
        except ValueError as exc:
            finish(source, "failed", str(exc))
            continue
        except (OSError, RuntimeError, sf.SoundFileError) as exc:
            finish(source, "failed", " ".join(f"cannot decode: {exc}".split()))
            continue
        settings = {**common, "source": str(source), "source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns}
        item = _Item(i, source, output, sidecar, settings, float(info.frames) / max(info.samplerate, 1))
        if _done(output, sidecar, settings):
            finish(item, "skipped", "output and sidecar match this run's settings", item.duration_s)
            continue
        todo.append(item)
    return todo


def _decode(batch: list[_Item], cfg) -> list[tuple[_Item, torch.Tensor | str]]:
    """Each item's waveform at the model's rate, or the reason it cannot be used."""
    from mert_fast.audio import load_audio

    got = []
    for item in batch:
        try:
            wave = load_audio(item.source, cfg.sample_rate)
        except (OSError, ValueError) as exc:
            got.append((item, " ".join(str(exc).split())))
            continue
        if wave.shape[-1] < cfg.receptive_field:
            got.append((item, f"too short: {wave.shape[-1]} samples, one frame needs {cfg.receptive_field}"))
            continue
        got.append((item, wave))
    return got


def _decode_ahead(
    batches: list[list[_Item]],
    cfg,
    decode_workers: int,
    run: Callable[[list[tuple[_Item, torch.Tensor]]], None],
    finish: Callable[..., None],
) -> None:
    """Run every batch in order, threads decoding the next ``decode_workers`` batches while the model runs."""
    workers = max(1, decode_workers)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool_exec:
        futures: dict[int, concurrent.futures.Future] = {}

        def submit(j: int) -> None:
            if j < len(batches):
                futures[j] = pool_exec.submit(_decode, batches[j], cfg)

        for j in range(workers):
            submit(j)
        for n in range(len(batches)):
            decoded = futures.pop(n).result()
            submit(n + workers)  # decode ahead while the model runs
            ready = []
            for item, wave in decoded:
                if isinstance(wave, str):
                    finish(item, "failed", wave, item.duration_s)
                else:
                    ready.append((item, wave))
            if ready:
                run(ready)


def _batches(items: list[_Item], batch_size: int, limit_s: float) -> list[list[_Item]]:
    """Consecutive items of a length-sorted list in batches of similar length: at most ``batch_size`` clips, the
    longest at most 1.25x the shortest; clips longer than ``limit_s`` alone."""
    out: list[list[_Item]] = []
    for item in items:
        last = out[-1] if out else None
        if (
            last is not None
            and item.duration_s <= limit_s
            and last[0].duration_s <= limit_s
            and len(last) < batch_size
            and item.duration_s <= 1.25 * max(last[0].duration_s, 1e-3)
        ):
            last.append(item)
        else:
            out.append([item])
    return out


def _run_batch(
    model: MERTModel, ready: list[tuple[_Item, torch.Tensor]], opts: _RunOptions, finish: Callable[..., None]
) -> None:
    """Run one padded batch (or one long clip) and write each clip's features and sidecar."""
    cfg = model.config
    device = next(model.parameters()).device
    lengths = [w.shape[-1] for _, w in ready]
    longest = max(lengths)
    audio = torch.zeros(len(ready), longest)
    for b, (_, w) in enumerate(ready):
        audio[b, : w.shape[-1]] = w
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    try:
        out = extract(
            model,
            audio.to(device),
            layers=opts.states,
            window_s=opts.window_s,
            hop_s=opts.hop_s,
            chunk_s=opts.chunk_s,
            attention_mask=mask.to(device) if len(ready) > 1 else None,
            batch_size=opts.batch_size,
        )
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory: report these files, keep going
        logger.debug("batch of %d failed", len(ready), exc_info=True)
        for item, _ in ready:
            finish(item, "failed", f"extraction failed: {' '.join(str(exc).split())[:300]}", item.duration_s)
        return
    np_dtype = np.float16 if opts.save_dtype == "float16" else np.float32
    for b, (item, wave) in enumerate(ready):
        frames = cfg.num_frames(wave.shape[-1])
        feats = out[b, :, :frames]
        feats = feats.float().mean(dim=1) if opts.pool == "mean" else feats
        array = feats.float().cpu().numpy().astype(np_dtype)
        duration = wave.shape[-1] / cfg.sample_rate
        if not np.isfinite(array).all():  # checked before writing: a NaN array must never look like a result
            bad = int(array.size - np.isfinite(array).sum())
            finish(
                item,
                "failed",
                f"the model produced non-finite features ({bad} of {array.size} values NaN or inf): check the "
                "model's weights; in float16 (--dtype or --save-dtype) large values can also overflow",
                duration,
            )
            continue
        try:
            _write_array(item.output, array, opts.fmt)
            write_json(
                item.sidecar,
                {
                    **item.settings,
                    "output": item.output.name,
                    "shape": list(array.shape),
                    "num_samples": int(wave.shape[-1]),
                    "num_frames": frames,
                    "duration_s": duration,
                },
            )
        except OSError as exc:
            finish(item, "failed", f"cannot write output: {exc}", duration)
            continue
        finish(item, "ok", None, duration)
