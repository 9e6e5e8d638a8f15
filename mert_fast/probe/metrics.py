"""Scores of probe predictions, in numpy float64: accuracy, ROC-AUC, average precision, R².

Definitions (those of scikit-learn's functions of the same names, which the tests compare against):

- ``roc_auc``: the probability that a random positive scores above a random negative, ties counting one half
  (the Mann-Whitney statistic from average ranks), per class; ``macro`` averages the classes that have both
  positives and negatives in the set, ``micro`` pools every (clip, class) pair.
- ``average_precision``: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds from the highest, per
  class; averaged as above.
- ``r2``: ``1 - sum (y - p)^2 / sum (y - mean y)^2``; undefined, reported as NaN, when ``y`` is constant.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "average_precision", "classes_left_out", "r2", "roc_auc", "scores"]


def accuracy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max over ``logits (N, C)`` is ``labels (N,)``."""
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x (N,)``, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s.astype(np.float64))
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_ap(y: np.ndarray, s: np.ndarray) -> float:
    pos = y > 0.5
    n_pos = int(pos.sum())
    if n_pos == 0 or n_pos == len(y):
        return float("nan")
    order = np.argsort(-s.astype(np.float64), kind="mergesort")
    ss, hits = s[order], pos[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # the last row of every distinct threshold
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_class(fn, targets: np.ndarray, scores_: np.ndarray, average: str) -> float:
    if targets.ndim == 1:
        return fn(targets, scores_)
    if average == "micro":
        return fn(targets.reshape(-1), scores_.reshape(-1))
    values = [fn(targets[:, c], scores_[:, c]) for c in range(targets.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def classes_left_out(task_type: str, targets: np.ndarray, n_classes: int) -> list[int]:
    """Classes that macro ROC-AUC and average precision leave out on these rows: those without a positive or
    without a negative example (their per-class score is undefined). Always empty for regression.

    Args:
        task_type: ``"multiclass"`` (``targets`` int class indices ``(N,)``, one class against the rest),
            ``"multilabel"`` (0/1 ``(N, C)``) or ``"regression"``.
        targets: the rows' targets.
        n_classes: ``C``.
    """
    if task_type == "regression":
        return []
    if task_type == "multiclass":
        positives = np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_classes)[:n_classes]
    else:
        positives = (np.asarray(targets) > 0.5).sum(axis=0)
    n = len(targets)
    return [c for c in range(n_classes) if positives[c] == 0 or positives[c] == n]


def roc_auc(targets: np.ndarray, scores_: np.ndarray, average: str = "macro") -> float:
    """ROC-AUC of ``scores (N,)`` or ``(N, C)`` against 0/1 ``targets`` of the same shape (see module docstring)."""
    return _per_class(_binary_auc, targets, scores_, average)


def average_precision(targets: np.ndarray, scores_: np.ndarray, average: str = "macro") -> float:
    """Average precision of ``scores`` against 0/1 ``targets``, shapes as :func:`roc_auc`."""
    return _per_class(_binary_ap, targets, scores_, average)


def r2(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Coefficient of determination of ``predictions (N,)`` for ``targets (N,)``; NaN when ``targets`` is constant."""
    y, p = targets.astype(np.float64), predictions.astype(np.float64)
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / total if total > 0 else float("nan")


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(labels), n))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def scores(task_type: str, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every score of a task type: multi-class ``accuracy`` and macro ``roc_auc`` (one class against the rest, on
    softmax probabilities); multi-label macro ``roc_auc`` and ``average_precision``; regression ``r2``.

    Args:
        task_type: ``"multiclass"``, ``"multilabel"`` or ``"regression"``.
        targets: as :attr:`ProbeTask.targets` for the rows scored.
        outputs: the probe's outputs: logits ``(N, C)``, or predictions ``(N,)`` for regression.
    """
    if task_type == "multiclass":
        z = outputs - outputs.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return {
            "accuracy": accuracy(targets, outputs),
            "roc_auc": roc_auc(_one_hot(targets, outputs.shape[1]), prob),
        }
    if task_type == "multilabel":
        return {"roc_auc": roc_auc(targets, outputs), "average_precision": average_precision(targets, outputs)}
    if task_type == "regression":
        return {"r2": r2(targets, outputs)}
    raise ValueError(f"task_type must be multiclass, multilabel or regression; got {task_type!r}")
