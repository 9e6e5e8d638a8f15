"""Where the trainer's metrics go: ``metrics.jsonl`` (rank 0), tensorboard scalars and the ``loss.png`` plot; and the
FLOP count behind the throughput and MFU columns."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mert_fast.model.config import MERTConfig

__all__ = ["AT_PRIOR", "PEAK_FLOPS", "MetricsSink", "learning_status", "model_flops", "plot_metrics"]

logger = logging.getLogger(__name__)

#: Dense bf16 peak of known accelerators (FLOP/s), for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


#: A masked CE less than this fraction below the code prior counts as "at the prior": nothing learnt per frame.
AT_PRIOR = 0.02


def learning_status(row: dict[str, Any]) -> tuple[bool, str] | None:
    """``(at_prior, text)`` for a codebook objective's metrics row (None for rows without a ``prior``): the masked CE
    against the code prior (the entropy of the scored frames' codes, the CE of the best constant guess) and the
    student's accuracy against the copy-the-nearest-unmasked-frame baseline. ``at_prior``: the CE is less than
    :data:`AT_PRIOR` below the prior."""
    if "prior" not in row or "ce" not in row or row["prior"] <= 0:
        return None
    below = 1.0 - row["ce"] / row["prior"]
    text = f"masked CE {row['ce']:.3f} vs code prior {row['prior']:.3f} ({below:+.1%} below)"
    if "copy_acc" in row:
        text += f"; accuracy {row['acc']:.3f} vs copy baseline {row['copy_acc']:.3f}"
    if "copy_ce" in row:
        text += f" (its CE {row['copy_ce']:.3f})"
    return below < AT_PRIOR, text


def model_flops(model_cfg: MERTConfig, n_params: int, frames: int) -> float:
    """Training FLOPs of one clip of ``frames`` frames: 6 x parameters x frames + attention (forward 4 T^2 H per
    layer, x3 with backward)."""
    return 6.0 * n_params * frames + 12.0 * model_cfg.num_hidden_layers * model_cfg.hidden_size * frames * frames


class MetricsSink:
    """``metrics.jsonl`` and tensorboard scalars (``output_dir/tensorboard``) of every logged row, on the main rank;
    elsewhere :meth:`log` and :meth:`close` do nothing.

    ``resumed_step``: the step a resumed run starts from; the rows logged after it are dropped (they are logged
    again). None starts a new ``metrics.jsonl``.
    """

    def __init__(self, out: Path, is_main: bool, resumed_step: int | None) -> None:
        self.path = out / "metrics.jsonl"
        self.is_main = is_main
        self.writer = None
        if not is_main:
            return
        kept: list[str] = []
        if resumed_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]  # fmt: skip
        self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the [train] extra; metrics.jsonl is always written
            logger.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        else:
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` (``step``, ``split`` and numbers) to ``metrics.jsonl`` and to tensorboard as
        ``split/key``."""
        if not self.is_main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            split = row.get("split", "train")
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"{split}/{key}", value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def plot_metrics(metrics: Path, png: Path) -> None:
    """Plot the training rows of ``metrics`` (loss, CE, prior, CQT MSE or target std) and the validation loss,
    log scale, into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    if not train_rows:
        return
    has_acc = "copy_acc" in train_rows[0]
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(12 if has_acc else 7, 4), squeeze=False)
    ax = axes[0, 0]
    steps = [r["step"] for r in train_rows]
    labels = {"loss": "loss / masked frame", "ce": "acoustic CE / frame", "prior": "code prior (entropy) / frame",
              "cqt_mse": "CQT MSE", "mfcc_mse": "MFCC MSE (standardised)", "clip_loss": "clip InfoNCE",
              "target_var": "target std (EMA teacher)"}  # fmt: skip
    for key, label in labels.items():
        if key in train_rows[0] and (key != "cqt_mse" or any(r[key] for r in train_rows)):
            ax.plot(steps, [r[key] for r in train_rows], label=label)
    if val_rows:
        ax.plot([r["step"] for r in val_rows], [r["loss"] for r in val_rows], "o--", label="validation loss")
        if "prior" in val_rows[0]:
            ax.plot([r["step"] for r in val_rows], [r["ce"] for r in val_rows], "s--", label="validation CE")
            ax.plot([r["step"] for r in val_rows], [r["prior"] for r in val_rows], "x:", label="validation prior")
    if has_acc:
        _plot_accuracy(axes[0, 1], train_rows, val_rows)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("MERT pre-training: below the prior is learnt")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _plot_accuracy(ax, train_rows: list[dict], val_rows: list[dict]) -> None:
    """Masked accuracy (mean over codebooks) against the copy-the-nearest-unmasked-frame baseline."""
    for rows, style, split in ((train_rows, "-", "train"), (val_rows, "o--", "validation")):
        if rows:
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r["acc"] for r in rows], style, label=f"{split} accuracy")
            ax.plot(steps, [r["copy_acc"] for r in rows], style, alpha=0.5, label=f"{split} copy baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("masked accuracy (mean over codebooks)")
    ax.legend()
