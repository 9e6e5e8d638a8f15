"""Does the student learn the teacher's codes? A plain training loop for recipe studies, on a run's corpus and teacher.

The trainer's main command (``python train.py``) writes ``OUT/corpus`` and ``OUT/teacher``. This script caches
crops of those clips with the teacher's codes and MERT's masks, then trains a fresh student
(:class:`~mert_fast.train.objectives.mert.MERTPretrainer`, acoustic codes only: no CQT head, no in-batch mixture,
no DeepSpeed) and prints, on crops of held-out clips (every 10th), the masked CE against the code prior of those
frames and the masked accuracy against the copy-the-nearest-unmasked-frame baseline. Every recipe knob the
plateau could hinge on is a flag, so each variant is one command:

    python train.py --output-dir runs/tiny                                   # corpus + teacher (once)
    python bench/masked_learning.py runs/tiny                                # the tiny recipe
    python bench/masked_learning.py runs/tiny --mask-prob 0.3 --lr 5e-3      # a variant
    python bench/masked_learning.py runs/tiny --teacher DIR --codebooks 4    # another fitted Mel-RVQ teacher

The loss is the CE per masked frame (the trainer sums, which Adam makes equivalent up to clipping), with AdamW
(0.9, 0.98), linear warm-up and decay. About 0.3-0.8 s per step of 8 x 4 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from mert_fast.audio import load_audio
from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import align_to_frames
from mert_fast.model.teachers.mel_rvq import MelRVQTeacher
from mert_fast.train.masking import compute_mask
from mert_fast.train.objectives.base import code_entropy
from mert_fast.train.objectives.mert import MERTPretrainer


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a train.py output folder (its corpus/ and teacher/)")
    p.add_argument("--teacher", type=Path, help="a Mel-RVQ teacher folder (default: RUN/teacher)")
    p.add_argument("--codebooks", type=int, help="predict only the first N codebooks (default: all)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--mask-prob", type=float, default=0.8)
    p.add_argument("--mask-length", type=int, default=5)
    p.add_argument("--conv-dim", type=int, help="conv channels (default: the tiny preset's)")
    p.add_argument("--front-end", choices=("conv", "logmel"), default="conv", help="the student's feature extractor")
    p.add_argument("--feature-penalty", type=float, default=10.0, help="weight of the conv-feature L2 penalty")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=100, help="distinct training batches cached (then repeated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=50)
    return p.parse_args(argv)


def _batches(clips, teacher, cfg, args, n, gen, crop):
    """``n`` cached batches ``(audio, codes, mask)`` of random crops of ``clips``."""
    n_frames = cfg.num_frames(crop)
    out = []
    for _ in range(n):
        picks = torch.randint(len(clips), (args.batch,), generator=gen).tolist()
        audio = []
        for i in picks:
            start = int(torch.randint(clips[i].shape[0] - crop + 1, (), generator=gen))
            audio.append(clips[i][start : start + crop])
        audio = torch.stack(audio)
        with torch.no_grad():
            codes = align_to_frames(teacher(audio), n_frames, repeat=round(cfg.frame_rate / teacher.label_rate))
        codes = codes[..., : args.codebooks]
        mask = compute_mask(args.batch, n_frames, mask_prob=args.mask_prob, span=args.mask_length, generator=gen)
        out.append((audio, codes, mask))
    return out


def _prior(batches, codebook_size: int) -> float:
    """Summed entropy of each codebook's codes over the masked frames of ``batches``."""
    scored = torch.cat([codes[mask] for _, codes, mask in batches])
    return sum(
        code_entropy(torch.bincount(col, minlength=codebook_size).tolist()) for col in scored.T
    )  # fmt: skip


def _evaluate(module, batches) -> tuple[float, float, float]:
    """Held-out ``(CE per masked frame, mean accuracy, mean copy-baseline accuracy)``."""
    module.eval()
    ce = correct = copied = 0.0
    n = 0
    with torch.no_grad():
        for audio, codes, mask in batches:
            out = module(audio, codes, None, mask)
            ce += float(out.ce_sum)
            correct += float(out.correct.double().mean())
            copied += float(out.copy_correct.double().mean())
            n += out.n_masked
    module.train()
    return ce / n, correct / n, copied / n


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    torch.manual_seed(args.seed)
    teacher = MelRVQTeacher.load(args.teacher or args.run / "teacher")
    cfg = MERTConfig.from_name("mert-v1-95m").shrunk()
    cfg = dataclasses.replace(cfg, layerdrop=0.0)
    if args.conv_dim:
        cfg = dataclasses.replace(cfg, conv_dim=(args.conv_dim,) * len(cfg.conv_dim))
    if args.front_end == "logmel":
        cfg = cfg.with_logmel_front_end()
    files = sorted((args.run / "corpus").glob("*.flac")) + sorted((args.run / "corpus").glob("*.wav"))
    clips = [load_audio(f, cfg.sample_rate) for f in files]
    held = [c for i, c in enumerate(clips) if i % 10 == 0]
    train = [c for i, c in enumerate(clips) if i % 10]
    gen = torch.Generator().manual_seed(args.seed)
    crop = 4 * cfg.sample_rate
    train_batches = _batches(train, teacher, cfg, args, args.batches, gen, crop)
    val_batches = _batches(held, teacher, cfg, args, 6, gen, crop)
    k = teacher.settings["codebook_size"]
    n_q = val_batches[0][1].shape[-1]
    prior = _prior(val_batches, k)
    print(f"{len(train)} training clips, {len(held)} held out; {n_q} codebooks of {k}")
    print(f"held-out code prior {prior:.3f} (training crops: {_prior(train_batches, k):.3f})")
    module = MERTPretrainer(MERTModel(cfg), n_codebooks=n_q, codebook_size=k, cqt_bins=None,
                            loss_weights=(args.feature_penalty, 1.0))  # fmt: skip
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    decay = max(1, args.steps - args.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / args.warmup, max(0.0, (args.steps - s) / decay))
    )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        audio, codes, mask = train_batches[(step - 1) % len(train_batches)]
        out = module(audio, codes, None, mask)
        opt.zero_grad()
        (out.loss / out.n_masked).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            ce, acc, copy = _evaluate(module, val_batches)
            print(f"step {step}: train CE {float(out.ce_sum) / out.n_masked:.3f}, held-out CE {ce:.3f} "
                  f"({ce / prior - 1:+.1%} vs the prior), accuracy {acc:.3f} vs copy {copy:.3f} "
                  f"[{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
