"""``mert-fast probe``: MARBLE-style probes of frozen features (per-layer and weighted-sum scores)."""

from __future__ import annotations

import argparse

from mert_fast.cli.common import add_command, add_sample_rate, parse_device, positive_float, positive_int


def seeds_arg(text: str) -> list[int]:
    """``--seeds``: comma-separated integers such as ``0,1,2``."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 0,1,2; got {text!r}") from None


def probe_layers_arg(text: str) -> str | list[int]:
    """``probe --layers``: ``all`` (each state and the weighted sum), ``weighted`` or indices such as ``0,6,12``."""
    text = text.strip().lower()
    if text in ("all", "weighted"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, weighted or indices such as 0,6,12; got {text!r}") from None


_DESCRIPTION = (
    "Read MANIFEST (CSV: path,label[,split]; label with ';' for multi-label, a number for regression), "
    "average each clip's features over time (extracting them with the model into --cache, or reading a "
    "mert-fast extract folder, or computing cqt/mfcc), then train one MLP probe (512 hidden, dropout 0.2, Adam "
    "1e-3, batch 64, early stopping on valid) per hidden state and one on their learned weighted sum. Writes "
    "--out/scores.json (accuracy, ROC-AUC, average precision or R^2 per layer, mean and std over --seeds) and "
    "--out/layers.png."
)


def run(args: argparse.Namespace) -> int:
    from mert_fast.probe.probe import ProbeConfig, run_probe

    cfg = ProbeConfig(
        hidden=args.hidden, dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
        patience=args.patience,
    )  # fmt: skip
    device = parse_device(args.device)
    layers = None if args.layers in ("all", "weighted") else args.layers
    if args.layers == "weighted":
        layers = []
    result = run_probe(
        args.manifest, args.features, args.out, cache=args.cache, task_type=args.task_type, layers=layers,
        weighted=args.layers in ("all", "weighted"), seeds=args.seeds, cfg=cfg, device=device,
        sample_rate=args.sample_rate,
    )  # fmt: skip
    metric = result["primary_metric"]
    summary = result["summary"]
    rows = [(f"layer {k}", v) for k, v in summary["layers"].items()]
    if summary["weighted_sum"] is not None:
        rows.append(("weighted sum", summary["weighted_sum"]))
    print(f"{result['manifest']}: {result['task_type']}, {result['counts']}; test {metric}, mean ± std over "
          f"{len(result['seeds'])} seed(s):")  # fmt: skip
    for name, entry in rows:
        score = entry.get("test", entry["valid"])[metric]
        print(f"  {name:>14}: {score['mean']:.4f} ± {score['std']:.4f}")
    print(f"{args.out}: scores.json, layers.png")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "probe",
        run,
        help="MARBLE-style probes of frozen features: per-layer and weighted-sum scores for a labelled manifest",
        description=_DESCRIPTION,
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV with columns path,label[,split]")
    p.add_argument(
        "--features",
        required=True,
        help="a model directory (HF layout), a preset name (random weights), a mert-fast extract output folder, "
        "cqt or mfcc",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="feature cache folder (default: OUT/features)")
    p.add_argument(
        "--task-type",
        choices=("auto", "multiclass", "multilabel", "regression"),
        default="auto",
        help="default: from the labels (';' multi-label, many distinct numbers regression, else multi-class)",
    )
    p.add_argument(
        "--layers",
        type=probe_layers_arg,
        default="all",
        help="all (each hidden state and the weighted sum; default), weighted, or indices such as 0,6,12",
    )
    p.add_argument("--seeds", type=seeds_arg, default=[0], help="probe seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--hidden", type=positive_int, default=512, help="MLP hidden units (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="probe batch (default: %(default)s)")
    p.add_argument("--max-epochs", type=positive_int, default=200, help="epoch limit (default: %(default)s)")
    p.add_argument(
        "--patience", type=positive_int, default=20, help="epochs without a better valid score (default: 20)"
    )
    add_sample_rate(p, "Hz for cqt/mfcc (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
