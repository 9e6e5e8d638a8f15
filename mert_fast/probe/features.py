"""Time-pooled features of the clips a probe reads: ``(N, S, D)`` float32, one ``(S, D)`` block per clip.

Sources (the ``--features`` of ``mert-fast probe``):

- a model: a local HF model directory or a preset name (random weights). Its hidden states (all ``S``, the
  embedding output first) are averaged over frames by :func:`mert_fast.model.extract_files.run_extraction`, the
  driver of ``mert-fast extract --pool mean``, into a cache folder (a sub-folder per folder holding the clips): a
  second probe of the same clips with the same model reads the cache (the sidecars record the source file, the
  weights' SHA-256 and the settings).
- a folder ``mert-fast extract`` already wrote (``manifest.json`` inside), pooled or not: frames are averaged on
  reading when the arrays are ``(S, T, D)``.
- ``cqt``: MERT's CQT teacher (:class:`mert_fast.model.teachers.cqt.CQTTeacher`, 336 bins, 48 per octave from
  32.7 Hz, hop 320 at 24 kHz), natural log of the magnitude (floor ``1e-5``), averaged over frames: ``S = 1``,
  ``D = 336``.
- ``mfcc``: 13 MFCCs with deltas and delta-deltas (:class:`mert_fast.model.teachers.kmeans.KMeansTeacher`'s
  unnormalised features, 23 HTK-mel bands, 25 ms windows, 50 Hz) averaged over frames: ``S = 1``, ``D = 39``.

The handcrafted features are cached too, as ``<cache>/<name>.npz`` keyed by the settings and each file's path,
size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert_fast._io import atomic_path

__all__ = ["HANDCRAFTED", "load_features"]

logger = logging.getLogger(__name__)

HANDCRAFTED = ("cqt", "mfcc")
_LOG_FLOOR = 1e-5


def _handcrafted_extractor(name: str, sample_rate: int, device: torch.device):
    from mert_fast.model.teachers.cqt import CQTTeacher, mert_cqt_bins
    from mert_fast.model.teachers.kmeans import KMeansTeacher

    if name == "cqt":
        teacher = CQTTeacher(sample_rate, n_bins=mert_cqt_bins(sample_rate)).to(device)
        return lambda audio: torch.log(teacher(audio).clamp_min(_LOG_FLOOR))
    teacher = KMeansTeacher(sample_rate, feature="mfcc").to(device)
    return lambda audio: teacher.features(audio, normalize=False)


def _fingerprint(paths: Sequence[Path], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _handcrafted(
    paths: Sequence[Path], name: str, cache: Path | None, sample_rate: int, device: torch.device
) -> np.ndarray:
    from mert_fast.audio import load_audio

    settings = {"features": name, "sample_rate": sample_rate, "pool": "mean", "version": 1}
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"audio file not found: {str(p)!r}")
    key = _fingerprint(paths, settings)
    file = cache / f"{name}.npz" if cache is not None else None
    if file is not None and file.is_file():
        with np.load(file) as saved:
            if str(saved["key"]) == key:
                logger.info("%s features of %d clips read from %s", name, len(paths), file)
                return saved["features"]
    fn = _handcrafted_extractor(name, sample_rate, device)
    rows = []
    with torch.no_grad():
        for p in paths:
            audio = load_audio(p, sample_rate).to(device)
            rows.append(fn(audio[None])[0].mean(0).double().cpu().numpy())
    features = np.stack(rows)[:, None, :].astype(np.float32)
    if file is not None:
        with atomic_path(file) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz"
            np.savez(f, key=np.array(key), features=features)
    return features


def _read_extracted(paths: Sequence[Path], folder: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Arrays of ``paths`` from a ``mert-fast extract`` output folder (its manifest maps inputs to outputs)."""
    from safetensors.numpy import load_file

    outputs: dict[str, str] = {}
    settings: dict[str, Any] = {}
    manifests = sorted(folder.glob("manifest*.json"))
    if not manifests:
        raise ValueError(f"--features {str(folder)!r}: no manifest.json (not a mert-fast extract output folder)")
    for m in manifests:
        data = json.loads(m.read_text(encoding="utf-8"))
        settings = settings or data.get("settings", {})
        for e in data.get("files", []):
            if e.get("status") in ("ok", "skipped") and e.get("output"):
                outputs[e["input"]] = e["output"]
    missing = [str(p) for p in paths if str(p) not in outputs]
    if missing:
        raise ValueError(
            f"--features {str(folder)!r} holds no features for {len(missing)} of the {len(paths)} clips (first: "
            f"{missing[0]!r}); run mert-fast extract on the manifest into it"
        )
    rows = []
    for p in paths:
        out = folder / outputs[str(p)]
        a = np.load(out) if out.suffix == ".npy" else load_file(out)["features"]
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 3:  # (S, T, D): not pooled at extraction
            a = a.mean(axis=1)
        if a.ndim == 1:  # one layer (or --layers mean) pooled
            a = a[None]
        rows.append(a)
    shapes = {r.shape for r in rows}
    if len(shapes) != 1:
        raise ValueError(f"--features {str(folder)!r}: the arrays differ in shape ({sorted(shapes)}); re-extract")
    info = {"source": str(folder), "model": settings.get("model"), "model_sha256": settings.get("model_sha256")}
    return np.stack(rows), info


def load_features(
    paths: Sequence[Path],
    source: str,
    cache: str | os.PathLike | None,
    *,
    device: torch.device | None = None,
    batch_size: int = 8,
    sample_rate: int = 24000,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pooled features of ``paths`` from ``source`` (see the module docstring).

    Args:
        paths: absolute audio paths.
        source: a model directory, a preset name, a ``mert-fast extract`` output folder, ``cqt`` or ``mfcc``.
        cache: folder for the extracted features (needed for a model; optional for cqt/mfcc).
        device: where the model or transform runs (default: the CPU).
        batch_size: clips per model batch.
        sample_rate: decoding rate of the handcrafted features (a model uses its own).

    Returns:
        ``(features, info)``: float32 ``(N, S, D)`` in the order of ``paths``, and what produced them (source,
        model id, weights SHA-256, ``S``, ``D``).

    Raises:
        ValueError: an unusable source, or clips that fail to decode (each is named).
    """
    device = device or torch.device("cpu")
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache) if cache is not None else None
    if source in HANDCRAFTED:
        feats = _handcrafted(paths, source, cache_dir, sample_rate, device)
        info = {"source": source, "model": None, "model_sha256": None}
    elif Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        feats, info = _read_extracted(paths, Path(source))
    else:
        from mert_fast.model.extract_files import load_model, run_extraction, weights_sha256

        if cache_dir is None:
            raise ValueError("a cache folder is needed to extract model features (--cache)")
        # one cache sub-folder per folder holding the clips: extraction names outputs relative to that folder
        root = os.path.commonpath([str(p.parent) for p in paths])
        cache_dir = cache_dir / hashlib.sha256(root.encode()).hexdigest()[:12]
        model, model_id = load_model(source)
        sha = weights_sha256(model)
        model = model.to(device)
        result = run_extraction(
            paths, cache_dir, model, model_id, model_sha256=sha, layers="all", pool="mean", batch_size=batch_size,
            progress=False,
        )  # fmt: skip
        if result.failed:
            first = result.failed[0]
            raise ValueError(
                f"{len(result.failed)} clips could not be read (first: {first['input']}: {first['reason']})"
            )
        feats, _ = _read_extracted(paths, cache_dir)
        info = {"source": str(source), "model": model_id, "model_sha256": sha}
    info |= {"states": int(feats.shape[1]), "dim": int(feats.shape[2])}
    if not np.isfinite(feats).all():
        raise ValueError(f"features from {source!r} hold NaN or inf values")
    return feats, info
