"""Probe manifests: ``path,label[,split]`` CSV files naming audio clips and what to predict from them.

- ``path``: an audio file, relative to the manifest's folder or absolute.
- ``label``: one class name (multi-class), several joined with ``;`` (multi-label, e.g. ``rock;guitar;male
  vocal``; an empty label is a clip with no tag), or a number (regression).
- ``split`` (optional): ``train``, ``valid`` (or ``val``/``validation``) or ``test``. Without the column, each clip
  goes to train/valid/test as 80/10/10 by a hash of its path as written in the manifest, so the split is the
  same on every machine and does not depend on the other rows.

The task type is read from the labels unless given: any ``;`` makes it multi-label; labels that are all numbers
with more than :data:`REGRESSION_MIN_VALUES` distinct values make it a regression; anything else is multi-class.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["SPLITS", "TASK_TYPES", "ProbeTask", "read_probe_manifest"]

logger = logging.getLogger(__name__)

TASK_TYPES = ("multiclass", "multilabel", "regression")
SPLITS = ("train", "valid", "test")
_SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
#: Numeric labels with more distinct values than this are read as a regression target by ``task_type="auto"``.
REGRESSION_MIN_VALUES = 20
#: Fractions of train / valid / test when the manifest has no ``split`` column.
HASH_SPLIT = (0.8, 0.1, 0.1)


@dataclasses.dataclass
class ProbeTask:
    """A labelled set of clips.

    Attributes:
        manifest: the CSV it was read from.
        task_type: ``"multiclass"``, ``"multilabel"`` or ``"regression"``.
        paths: absolute audio paths, in manifest order.
        splits: ``"train"``/``"valid"``/``"test"`` per clip.
        targets: multi-class: int64 ``(N,)`` class indices; multi-label: float32 ``(N, C)`` 0/1; regression:
            float32 ``(N,)``.
        classes: class names in index order (empty for regression).
    """

    manifest: Path
    task_type: str
    paths: list[Path]
    splits: list[str]
    targets: np.ndarray
    classes: list[str]

    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` (``train``, ``valid`` or ``test``), int64 ``(n,)``."""
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        return {s: self.splits.count(s) for s in SPLITS}


def _hash_split(name: str) -> str:
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "train" if u < HASH_SPLIT[0] else "valid" if u < HASH_SPLIT[0] + HASH_SPLIT[1] else "test"


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _detect(labels: list[str]) -> str:
    if any(";" in label for label in labels):
        return "multilabel"
    numbers = [_as_number(label) for label in labels]
    if all(v is not None for v in numbers) and len(set(numbers)) > REGRESSION_MIN_VALUES:
        return "regression"
    return "multiclass"


def _read_rows(manifest: Path) -> tuple[list[Path], list[str], list[str]]:
    """The absolute paths, labels and splits of the manifest's rows; checks the header, the paths and the splits."""
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {str(manifest)!r}")
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"manifest {str(manifest)!r} is empty; expected a header path,label[,split] and rows")
    header = [c.strip().lower() for c in rows[0]]
    if "path" not in header or "label" not in header:
        raise ValueError(
            f"manifest {str(manifest)!r}: the header must name path and label (split optional); got {rows[0]}"
        )
    col_path, col_label = header.index("path"), header.index("label")
    col_split = header.index("split") if "split" in header else None
    paths, labels, splits = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        row = row + [""] * (len(header) - len(row))
        name, label = row[col_path].strip(), row[col_label].strip()
        if not name:
            raise ValueError(f"manifest {str(manifest)!r} line {line}: empty path")
        if col_split is not None:
            split = _SPLIT_NAMES.get(row[col_split].strip().lower())
            if split is None:
                raise ValueError(
                    f"manifest {str(manifest)!r} line {line}: split must be train, valid (val) or test; "
                    f"got {row[col_split]!r}"
                )
        else:
            split = _hash_split(name)
        paths.append(Path(os.path.abspath(manifest.parent / name)))
        labels.append(label)
        splits.append(split)
    if not paths:
        raise ValueError(f"manifest {str(manifest)!r} lists no clips")
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"manifest {str(manifest)!r} lists {str(dup)!r} more than once")
    return paths, labels, splits


def _targets(where: str, kind: str, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """The targets and class names of ``labels`` for a task of type ``kind`` (see :class:`ProbeTask`)."""
    if kind == "regression":
        values = [_as_number(label) for label in labels]
        bad = [i for i, v in enumerate(values) if v is None]
        if bad:
            raise ValueError(
                f"{where} line {bad[0] + 2}: a regression label must be a finite number; got {labels[bad[0]]!r}"
            )
        return np.asarray(values, dtype=np.float32), []
    if kind == "multilabel":
        tags = [[t.strip() for t in label.split(";") if t.strip()] for label in labels]
        classes = sorted({t for ts in tags for t in ts})
        if not classes:
            raise ValueError(f"{where}: no tags in any label")
        index = {c: i for i, c in enumerate(classes)}
        targets = np.zeros((len(tags), len(classes)), dtype=np.float32)
        for i, ts in enumerate(tags):
            targets[i, [index[t] for t in ts]] = 1.0
        return targets, classes
    empty = [i for i, label in enumerate(labels) if not label]
    if empty:
        raise ValueError(f"{where} line {empty[0] + 2}: empty label (multi-class tasks need one class per clip)")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"{where}: a multi-class task needs at least 2 classes; got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[label] for label in labels], dtype=np.int64), classes


def _check_splits(where: str, task: ProbeTask) -> None:
    """Refuse an empty train or valid split, and a multi-class valid/test class never seen in train."""
    counts = task.counts()
    for split in ("train", "valid"):
        if counts[split] == 0:
            raise ValueError(f"{where}: the {split} split is empty (counts {counts})")
    if task.task_type == "multiclass":
        targets, classes = task.targets, task.classes
        seen = set(targets[task.indices("train")].tolist())
        for split in ("valid", "test"):
            unseen = sorted({classes[c] for c in targets[task.indices(split)].tolist()} - {classes[c] for c in seen})
            if unseen:
                raise ValueError(f"{where}: classes {unseen} occur in {split} but never in train")


def read_probe_manifest(path: str | os.PathLike, task_type: str = "auto") -> ProbeTask:
    """Read a probe manifest (see the module docstring) into a :class:`ProbeTask`.

    Args:
        path: the ``.csv`` file; its header must name ``path`` and ``label`` (``split`` optional).
        task_type: ``"auto"`` (from the labels), ``"multiclass"``, ``"multilabel"`` or ``"regression"``.

    Raises:
        ValueError: a missing column, an empty path or multi-class label, an unknown split, a regression label
            that is not a finite number, duplicate paths, an empty train or valid split, or a valid/test class
            that never occurs in train.
        FileNotFoundError: the manifest does not exist.
    """
    if task_type != "auto" and task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be 'auto' or one of {', '.join(TASK_TYPES)}; got {task_type!r}")
    manifest = Path(path)
    paths, labels, splits = _read_rows(manifest)
    kind = _detect(labels) if task_type == "auto" else task_type
    where = f"manifest {str(manifest)!r}"
    targets, classes = _targets(where, kind, labels)
    task = ProbeTask(manifest, kind, paths, splits, targets, classes)
    _check_splits(where, task)
    logger.info("%s: %s task, %d classes, splits %s", manifest, kind, len(classes), task.counts())
    return task
