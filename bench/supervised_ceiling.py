"""How much can any training of the student add to a probe task? Train it on the labels themselves.

Self-supervised pre-training is asked to beat the random initialisation by some margin on a probe task (the
instrument family of an ensemble's top part, say). This measures the ceiling of that margin at the same scale:
the same student, from the same random initialisation (``torch.manual_seed(s); MERTModel(config)``, exactly what
``train.py --seed s`` and ``bench/probe_report.py`` start from), trained with the task's own labels on the
pre-training corpus (a ``mert-fast make-corpus --real`` folder holds the manifests of its clips, e.g.
``instrument.csv``): cross-entropy of a linear head on the time-averaged last hidden state, random crops, AdamW.
The corpus shares no piece with the probe set, so the probe then measures what the labels taught that carries
over, as it does for a pre-trained model. Models are written where ``bench/probe_report.py --models-from``
reads them::

    python bench/supervised_ceiling.py --corpus CORPUS --task instrument --out /tmp/ceiling --steps 2400
    python bench/probe_report.py --work /tmp/ceiling_probe --data ENSEMBLE --tasks instrument,program,key \\
        --models-from /tmp/ceiling

The manifest's train and valid rows train the head and the student; its test rows give a held-out accuracy (in
``WORK/pretrain_s<seed>/supervised.json``), which shows that the labels were learnt and not only memorised.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mert_fast.audio import load_audio  # noqa: E402
from mert_fast.model.mert import MERTModel  # noqa: E402
from mert_fast.probe.manifest import read_probe_manifest  # noqa: E402
from mert_fast.train.config import TrainConfig, model_config  # noqa: E402

logger = logging.getLogger("supervised_ceiling")


def initial_student(seed: int, model_size: str = "tiny", preset: str = "tiny") -> MERTModel:
    """The student ``train.py --seed seed --model-size model_size`` starts from (the trainer draws it this way)."""
    config = model_config(TrainConfig.from_preset(preset, model_size=model_size, seed=seed))
    torch.manual_seed(seed)
    return MERTModel(config)


def _clips(task, split_rows: np.ndarray, sample_rate: int) -> list[torch.Tensor]:
    return [load_audio(task.paths[i], sample_rate) for i in split_rows]


def _accuracy(model: MERTModel, head: nn.Module, clips: list[torch.Tensor], targets: torch.Tensor) -> float:
    """Whole-clip accuracy of the head on the time-averaged last hidden state, one clip at a time."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([head(model(clip[None]).last_hidden_state.mean(1)) for clip in clips])
    model.train()
    return float((logits.argmax(1) == targets).float().mean())


def train_supervised(
    manifest: Path,
    seed: int,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 8,
    crop_seconds: float = 5.0,
    model_size: str = "tiny",
    log_every: int = 50,
) -> tuple[MERTModel, dict]:
    """Train the initial student of ``seed`` on ``manifest``'s labels (train and valid rows); returns the model (in
    eval mode) and a record: the labels, the recipe, the loss every ``log_every`` steps and the held-out (test
    rows) accuracy before and after."""
    if steps < 1 or batch_size < 1 or lr <= 0 or crop_seconds <= 0:
        raise ValueError(
            f"steps, batch_size, lr and crop_seconds must be positive; got {steps}, {batch_size}, {lr}, {crop_seconds}"
        )
    task = read_probe_manifest(manifest, "multiclass")
    model = initial_student(seed, model_size).train()
    rate = model.config.sample_rate
    fit_rows = np.concatenate([task.indices("train"), task.indices("valid")])
    test_rows = task.indices("test")
    fit_clips, test_clips = _clips(task, fit_rows, rate), _clips(task, test_rows, rate)
    y = torch.as_tensor(task.targets, dtype=torch.long)
    fit_y, test_y = y[fit_rows], y[test_rows]
    crop = min(int(crop_seconds * rate), *(c.numel() for c in fit_clips))
    if crop < model.config.receptive_field:
        raise ValueError(f"manifest: the shortest training clip has {crop} samples; the student needs at least "
                         f"{model.config.receptive_field}")  # fmt: skip
    head = nn.Linear(model.config.hidden_size, len(task.classes))
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    record = {"manifest": str(manifest), "labels": list(task.classes), "seed": seed, "steps": steps, "lr": lr,
              "batch_size": batch_size, "crop_samples": crop, "model_size": model_size,
              "fit_clips": len(fit_rows), "test_clips": len(test_rows), "loss": {}}  # fmt: skip
    if len(test_rows):
        record["test_accuracy_before"] = _accuracy(model, head, test_clips, test_y)
    t0 = time.perf_counter()
    running: list[float] = []
    for step in range(1, steps + 1):
        pick = torch.randint(len(fit_clips), (batch_size,), generator=gen)
        starts = [int(torch.randint(fit_clips[i].numel() - crop + 1, (1,), generator=gen)) for i in pick]
        batch = torch.stack([fit_clips[i][s : s + crop] for i, s in zip(pick.tolist(), starts, strict=True)])
        loss = nn.functional.cross_entropy(head(model(batch).last_hidden_state.mean(1)), fit_y[pick])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        running.append(loss.item())
        if step % log_every == 0 or step == steps:
            record["loss"][step] = float(np.mean(running))
            logger.info(
                "seed %d step %d: loss %.3f (%.0f s)", seed, step, record["loss"][step], time.perf_counter() - t0
            )
            running = []
    if len(test_rows):
        record["test_accuracy"] = _accuracy(model, head, test_clips, test_y)
    record["seconds"] = time.perf_counter() - t0
    return model.eval(), record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a corpus folder with the task's manifest")
    parser.add_argument("--task", default="instrument", help="the manifest CORPUS/TASK.csv (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/pretrain_s<seed>/model")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-seconds", type=float, default=5.0)
    parser.add_argument("--model-size", default="tiny", choices=("tiny", "small"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifest = args.corpus / f"{args.task}.csv"
    if not manifest.is_file():
        raise SystemExit(f"error: --task: no manifest {manifest}")
    records = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        run = args.out / f"pretrain_s{seed}"
        model, record = train_supervised(manifest, seed, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                         crop_seconds=args.crop_seconds, model_size=args.model_size)  # fmt: skip
        model.save_pretrained(run / "model")
        (run / "supervised.json").write_text(json.dumps(record, indent=1) + "\n")
        records[seed] = record
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    recipe = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "seeds"))
    summary = {"train_args": f"supervised: {recipe}", "corpus_clips": None, "commit": commit.stdout.strip()}
    (args.out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
