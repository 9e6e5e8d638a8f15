"""MARBLE's probing protocol on frozen, time-pooled features (``mert-fast probe``).

Each clip is one ``(S, D)`` block: the frame average of every hidden state (:mod:`mert_fast.probe.features`).
A probe is an MLP (one hidden layer of 512, ReLU, dropout 0.2) trained with Adam (lr 1e-3, batch 64) on the
train split; after every epoch it is scored on the valid split, its best state is kept, and training stops once
``patience`` epochs pass without a better valid score (or at ``max_epochs``). The test split is scored once, with
the best state. One probe is trained per hidden state, and one on a learned weighted sum of all of them (softmax
weights, learned with the MLP), all in one batched model: the probes share the batch order and nothing else,
so each one's training, early stopping and result are its own.

Before the MLP each hidden state is standardised with the train split's mean and standard deviation per
dimension, so states of different scale (and random-init features) are probed on equal terms; regression
targets are standardised the same way and the predictions mapped back.

Losses and the score early stopping follows: multi-class cross-entropy / accuracy; multi-label binary
cross-entropy / macro ROC-AUC; regression mean squared error / R². Equal scores are ordered by the valid loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mert_fast._checks import check_int
from mert_fast.probe.manifest import SPLITS, ProbeTask
from mert_fast.probe.metrics import classes_left_out, scores

__all__ = ["PRIMARY_METRIC", "ProbeConfig", "mean_std", "plot_layers", "run_probe", "summarize", "train_probes"]

logger = logging.getLogger(__name__)

#: The score early stopping and the per-layer plot use, per task type.
PRIMARY_METRIC = {"multiclass": "accuracy", "multilabel": "roc_auc", "regression": "r2"}
_STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The probe and its training (MARBLE's defaults)."""

    hidden: int = 512
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20

    def __post_init__(self) -> None:
        for name in ("hidden", "batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            check_int(name, value, min=1, expected="a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number; got {self.lr!r}")


class _Probes(nn.Module):
    """``P`` independent MLPs in batched weights: probe ``i < len(layers)`` reads hidden state ``layers[i]``; with
    ``weighted``, the last reads the softmax-weighted sum of all ``S`` states.

    Each probe draws its initial weights and dropout masks from its own generator, seeded by ``(seed, layer)``
    (``layer = -1`` for the weighted sum), so a probe trains exactly as it would alone."""

    def __init__(
        self, n_states: int, dim: int, out: int, cfg: ProbeConfig, layers: Sequence[int], weighted: bool, seed: int
    ):
        super().__init__()
        self.layers = list(layers)
        self.weighted = weighted
        keys = self.layers + ([-1] if weighted else [])
        self.generators = [torch.Generator().manual_seed((int(seed) * 1_000_003 + k + 1) % 2**63) for k in keys]
        # nn.Linear's initialisation, per probe: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
        params: dict[str, list[torch.Tensor]] = {"w1": [], "b1": [], "w2": [], "b2": []}
        for g in self.generators:
            for name, shape, fan_in in (
                ("w1", (dim, cfg.hidden), dim), ("b1", (1, cfg.hidden), dim),
                ("w2", (cfg.hidden, out), cfg.hidden), ("b2", (1, out), cfg.hidden),
            ):  # fmt: skip
                bound = 1.0 / math.sqrt(fan_in)
                params[name].append((torch.rand(shape, generator=g) * 2.0 - 1.0) * bound)
        self.w1, self.b1, self.w2, self.b2 = (nn.Parameter(torch.stack(params[k])) for k in ("w1", "b1", "w2", "b2"))
        self.layer_logits = nn.Parameter(torch.zeros(n_states)) if weighted else None
        self.p_drop = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, S, D)`` standardised states -> outputs ``(P, B, out)``."""
        inputs = [x[:, i] for i in self.layers]
        if self.layer_logits is not None:
            inputs.append(torch.einsum("s,bsd->bd", self.layer_logits.softmax(0), x))
        h = torch.baddbmm(self.b1, torch.stack(inputs), self.w1).relu()
        if self.training and self.p_drop > 0:
            keep = torch.stack([torch.rand(h.shape[1:], generator=g) >= self.p_drop for g in self.generators])
            h = h * keep.to(h.device) / (1.0 - self.p_drop)
        return torch.baddbmm(self.b2, h, self.w2)

    @property
    def n_probes(self) -> int:
        return len(self.generators)

    def probe_state(self, i: int) -> dict[str, torch.Tensor]:
        state = {k: getattr(self, k)[i].detach().clone() for k in ("w1", "b1", "w2", "b2")}
        if self.weighted and i == len(self.layers):
            state["layer_logits"] = self.layer_logits.detach().clone()
        return state

    @torch.no_grad()
    def load_probe_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            (getattr(self, k) if k == "layer_logits" else getattr(self, k)[i]).copy_(v)


def _loss(task_type: str, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-probe mean loss ``(P,)`` of outputs ``(P, B, out)``."""
    p = outputs.shape[0]
    if task_type == "multiclass":
        flat = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), target.repeat(p), reduction="none")
        return flat.view(p, -1).mean(1)
    if task_type == "multilabel":
        return F.binary_cross_entropy_with_logits(outputs, target.expand_as(outputs), reduction="none").mean((1, 2))
    return (outputs[..., 0] - target).square().mean(1)


def _better(score: float, loss: float, best: tuple[float, float]) -> bool:
    if math.isnan(score):
        return loss < best[1] and math.isnan(best[0])
    return score > best[0] or math.isnan(best[0]) or (score == best[0] and loss < best[1])


def _check_probe_args(
    task: ProbeTask, features: np.ndarray, layers: Sequence[int] | None, weighted: bool
) -> tuple[list[int], bool]:
    """The layers to probe (all by default) and whether to probe the weighted sum (not of a single state)."""
    if features.ndim != 3 or features.shape[0] != len(task.paths):
        raise ValueError(f"features must be shaped (N={len(task.paths)}, S, D); got {tuple(features.shape)}")
    n_states = features.shape[1]
    layers = list(range(n_states)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < n_states]
    if bad:
        raise ValueError(f"layers must be hidden-state indices in [0, {n_states}); got {bad}")
    weighted = weighted and n_states > 1
    if not layers and not weighted:
        raise ValueError("nothing to probe: no layers and no weighted sum")
    return layers, weighted


@dataclasses.dataclass
class _ProbeData:
    """A task's inputs standardised per state by the train split, its targets (regression targets standardised
    too) and the rows of each split."""

    kind: str
    idx: dict[str, np.ndarray]
    x: torch.Tensor
    y: torch.Tensor
    targets: np.ndarray  # the task's, as read
    n_out: int
    y_mean: float = 0.0
    y_std: float = 1.0

    @classmethod
    def standardize(cls, task: ProbeTask, features: np.ndarray, device: torch.device) -> _ProbeData:
        idx = {s: task.indices(s) for s in ("train", "valid", "test")}
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        mean = x[idx["train"]].mean(0)
        std = x[idx["train"]].std(0, unbiased=False).clamp_min(_STD_FLOOR)
        x = ((x - mean) / std).to(device)
        if task.task_type == "regression":
            y_np = task.targets.astype(np.float64)
            y_mean, y_std = float(y_np[idx["train"]].mean()), max(float(y_np[idx["train"]].std()), _STD_FLOOR)
            y = torch.from_numpy(((y_np - y_mean) / y_std).astype(np.float32)).to(device)
            return cls(task.task_type, idx, x, y, task.targets, 1, y_mean, y_std)
        y = torch.from_numpy(task.targets).to(device)
        return cls(task.task_type, idx, x, y, task.targets, len(task.classes))

    def outputs_of(self, model: _Probes, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every probe's outputs (in target units) and loss per clip on ``split``, in eval mode."""
        model.eval()
        with torch.no_grad():
            rows = self.idx[split]
            out = model(self.x[rows])
            loss = _loss(self.kind, out, self.y[rows]).cpu().numpy()
        model.train()
        out = out.double().cpu().numpy()
        if self.kind == "regression":
            out = out[..., 0] * self.y_std + self.y_mean
        return out, loss


def _fit(model: _Probes, data: _ProbeData, cfg: ProbeConfig, seed: int) -> tuple[list[int], list[int]]:
    """Train all the probes of ``model`` together, stop each early on its valid score, and leave each in its best
    state. Returns each probe's best epoch and the epoch it stopped at."""
    kind, x, y, idx = data.kind, data.x, data.y, data.idx
    metric = PRIMARY_METRIC[kind]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_probes = model.n_probes
    best = [(float("nan"), float("inf"))] * n_probes
    best_state = [model.probe_state(i) for i in range(n_probes)]
    best_epoch, stale, stopped = [0] * n_probes, [0] * n_probes, [0] * n_probes
    gen = torch.Generator().manual_seed(int(seed))
    train_rows = torch.from_numpy(idx["train"])
    targets = data.targets[idx["valid"]]
    for epoch in range(1, cfg.max_epochs + 1):
        order = train_rows[torch.randperm(len(train_rows), generator=gen)].to(x.device)
        for i in range(0, len(order), cfg.batch_size):
            rows = order[i : i + cfg.batch_size]
            loss = _loss(kind, model(x[rows]), y[rows]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out, val_loss = data.outputs_of(model, "valid")
        for p in range(n_probes):
            if stopped[p]:  # early-stopped: later epochs of the shared loop do not count for it
                continue
            score = scores(kind, targets, out[p])[metric]
            if _better(score, float(val_loss[p]), best[p]):
                best[p], best_state[p] = (score, float(val_loss[p])), model.probe_state(p)
                best_epoch[p], stale[p] = epoch, 0
            else:
                stale[p] += 1
            if stale[p] >= cfg.patience or epoch == cfg.max_epochs:
                stopped[p] = epoch
        if all(stopped):
            break
    for p in range(n_probes):
        model.load_probe_state(p, best_state[p])
    return best_epoch, stopped


def train_probes(
    task: ProbeTask,
    features: np.ndarray,
    *,
    cfg: ProbeConfig | None = None,
    layers: Sequence[int] | None = None,
    weighted: bool = True,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train and score probes of ``features`` for ``task``.

    Args:
        task: the clips, labels and splits (:func:`mert_fast.probe.manifest.read_probe_manifest`).
        features: float32 ``(N, S, D)`` in the task's row order.
        cfg: the probe and its training (default :class:`ProbeConfig`).
        layers: hidden states to probe one at a time (default: all ``S``).
        weighted: also train a probe of the learned weighted sum of all states (skipped when ``S == 1``).
        seed: seeds the initialisation, batch order and dropout.
        device: where the probes train (default: the CPU).

    Returns:
        ``{"layers": [{"layer", "valid", "test", "best_epoch", "epochs"}...], "weighted_sum": {... "weights"} or
        None, "seconds"}``; ``valid``/``test`` hold :func:`mert_fast.probe.metrics.scores` of the best state.
    """
    cfg = cfg or ProbeConfig()
    device = device or torch.device("cpu")
    layers, weighted = _check_probe_args(task, features, layers, weighted)
    n_states, dim = features.shape[1:]
    start = time.perf_counter()
    data = _ProbeData.standardize(task, features, device)
    model = _Probes(n_states, dim, data.n_out, cfg, layers, weighted, seed).to(device)
    best_epoch, stopped = _fit(model, data, cfg, seed)
    results = []
    split_out = {s: data.outputs_of(model, s)[0] for s in ("valid", "test") if len(data.idx[s])}
    for p in range(model.n_probes):
        entry = {s: scores(data.kind, data.targets[data.idx[s]], split_out[s][p]) if s in split_out else None
                 for s in SPLITS[1:]}  # fmt: skip
        entry |= {"best_epoch": best_epoch[p], "epochs": stopped[p]}
        results.append(entry)
    report: dict[str, Any] = {"layers": [{"layer": layer, **r} for layer, r in zip(layers, results, strict=False)]}
    report["weighted_sum"] = None
    if weighted:
        report["weighted_sum"] = results[-1] | {"weights": model.layer_logits.detach().softmax(0).cpu().tolist()}
    report["seconds"] = time.perf_counter() - start
    return report


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{mean, std (sample; 0 for one value), n}`` of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (sample standard deviation) over seeds of every test and valid score of
    :func:`train_probes` results with the same layers: ``{"layers": {layer: {split: {metric: {mean, std, n}}}},
    "weighted_sum": ... , "best_layer": the layer with the best mean valid primary score}``."""
    first = runs[0]

    def combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split in ("valid", "test"):
            if entries[0][split] is None:
                continue
            out[split] = {m: mean_std([e[split][m] for e in entries]) for m in entries[0][split]}
        return out

    layers = {
        str(entry["layer"]): combine([run["layers"][i] for run in runs]) for i, entry in enumerate(first["layers"])
    }
    summary: dict[str, Any] = {"layers": layers, "weighted_sum": None}
    if first["weighted_sum"] is not None:
        summary["weighted_sum"] = combine([run["weighted_sum"] for run in runs])
    return summary


def plot_layers(result: dict[str, Any], out: str | os.PathLike) -> None:
    """Per-layer PNG of a ``mert-fast probe`` result: the primary score (mean over seeds, bars = spread) on test
    and valid per hidden state, the weighted sum as a horizontal line."""
    from matplotlib.figure import Figure

    metric = PRIMARY_METRIC[result["task_type"]]
    summary = result["summary"]
    layers = sorted(summary["layers"], key=int)
    fig = Figure(figsize=(7, 4.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    xs = [int(k) for k in layers]
    for split, style in (("test", "o-"), ("valid", "s--")):
        if split not in summary["layers"][layers[0]]:
            continue
        mean = [summary["layers"][k][split][metric]["mean"] for k in layers]
        std = [summary["layers"][k][split][metric]["std"] for k in layers]
        ax.errorbar(xs, mean, yerr=std, fmt=style, capsize=3, label=f"{split}, one layer")
    ws = summary["weighted_sum"]
    if ws is not None and "test" in ws:
        m, s = ws["test"][metric]["mean"], ws["test"][metric]["std"]
        ax.axhline(m, color="k", lw=1.2, label=f"test, weighted sum ({m:.3f} ± {s:.3f})")
        ax.axhspan(m - s, m + s, color="k", alpha=0.08)
    ax.set_xticks(xs)
    ax.set_xlabel("hidden state (0 = embedding output)" if len(xs) > 1 else "feature")
    ax.set_ylabel(metric)
    n = summary["layers"][layers[0]].get("test", summary["layers"][layers[0]]["valid"])[metric]["n"]
    ax.set_title(f"{Path(result['manifest']).name}: {result['features']['source']} ({n} seed{'s' * (n > 1)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, format="png")


def _classes_left_out_of_macro(task: ProbeTask) -> dict[str, list[str]]:
    """Per valid/test split (classification tasks, non-empty splits), the classes the macro ROC-AUC/AP leave out:
    those with no positive or no negative example there (each non-empty list is logged as a warning)."""
    left_out = {}
    for split in ("valid", "test"):
        rows = task.indices(split)
        if task.task_type != "regression" and len(rows):
            names = [task.classes[c] for c in classes_left_out(task.task_type, task.targets[rows], len(task.classes))]
            left_out[split] = names
            if names:
                logger.warning(
                    "%s split: %d of %d classes have no positive or no negative example and are left out of the "
                    "macro ROC-AUC/AP: %s",
                    split,
                    len(names),
                    len(task.classes),
                    ", ".join(names),
                )
    return left_out


def run_probe(
    manifest: str | os.PathLike,
    features: str,
    out_dir: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    task_type: str = "auto",
    layers: Sequence[int] | None = None,
    weighted: bool = True,
    seeds: Sequence[int] = (0,),
    cfg: ProbeConfig | None = None,
    device: torch.device | None = None,
    batch_size: int = 8,
    sample_rate: int = 24000,
) -> dict[str, Any]:
    """The ``mert-fast probe`` command: read the manifest, get the pooled features (extracting and caching them
    when ``features`` is a model), train the probes once per seed, and write ``out_dir/scores.json`` and
    ``out_dir/layers.png``.

    Args:
        manifest: ``path,label[,split]`` CSV (:mod:`mert_fast.probe.manifest`).
        features: a model directory, a preset name, a ``mert-fast extract`` output folder, ``cqt`` or ``mfcc``.
        out_dir: output folder (created).
        cache: where extracted features are kept (default ``out_dir/features``); share it between probes of
            the same clips and model to extract once.
        task_type: ``auto``, ``multiclass``, ``multilabel`` or ``regression``.
        layers, weighted, seeds, cfg, device: as :func:`train_probes` (one run per seed).
        batch_size: clips per model batch when extracting.
        sample_rate: decoding rate of ``cqt``/``mfcc``.

    Returns:
        The ``scores.json`` content: task, features, protocol, per-seed runs and the summary over seeds (mean
        and standard deviation of every score per layer and for the weighted sum, and the best layer by valid),
        and ``classes_left_out_of_macro``: per split, the classes the macro ROC-AUC/AP leave out (no positive or
        no negative example there).
    """
    from mert_fast._io import write_json
    from mert_fast.probe.features import load_features
    from mert_fast.probe.manifest import read_probe_manifest

    cfg = cfg or ProbeConfig()
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    out = Path(out_dir)
    task = read_probe_manifest(manifest, task_type)
    feats, info = load_features(
        task.paths, features, cache if cache is not None else out / "features", device=device, batch_size=batch_size,
        sample_rate=sample_rate,
    )  # fmt: skip
    runs = [train_probes(task, feats, cfg=cfg, layers=layers, weighted=weighted, seed=s, device=device) for s in seeds]
    summary = summarize(runs)
    metric = PRIMARY_METRIC[task.task_type]
    valid = {k: v["valid"][metric]["mean"] for k, v in summary["layers"].items() if "valid" in v}
    summary["best_layer"] = int(max(valid, key=lambda k: (valid[k], -int(k)))) if valid else None
    left_out = _classes_left_out_of_macro(task)
    result = {
        "manifest": str(task.manifest),
        "task_type": task.task_type,
        "primary_metric": metric,
        "classes": task.classes,
        "counts": task.counts(),
        "classes_left_out_of_macro": left_out,
        "features": info,
        "protocol": dataclasses.asdict(cfg) | {"pooling": "time mean", "standardize": "per state, train split"},
        "seeds": [int(s) for s in seeds],
        "summary": summary,
        "runs": runs,
    }
    write_json(out / "scores.json", result)  # atomic, as extraction's sidecars
    plot_layers(result, out / "layers.png")
    return result
