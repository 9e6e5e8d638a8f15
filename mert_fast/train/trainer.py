"""The pre-training loop: data -> teachers (clean clip, no grad) -> mixture and masks -> student -> DeepSpeed step."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import CQTTeacher, MelRVQTeacher, align_to_frames, fit_mel_rvq
from mert_fast.train.config import TrainConfig
from mert_fast.train.data import AudioCorpus, make_loader, seed_for
from mert_fast.train.engine import DistributedInfo, build_engine, engine_config, init_distributed
from mert_fast.train.masking import compute_mask, in_batch_mixture
from mert_fast.train.objective import MERTPretrainer

__all__ = ["train"]

logger = logging.getLogger(__name__)

#: Dense bf16 peak of known accelerators (FLOP/s), for MFU.
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _barrier(dist: DistributedInfo) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _corpus(cfg: TrainConfig, model_cfg: MERTConfig, out: Path, dist: DistributedInfo) -> AudioCorpus:
    source = cfg.data
    if source is None:
        source = out / "corpus"
        if dist.is_main and not (source / "manifest.csv").is_file():
            from mert_fast.train.synth import make_corpus

            logger.info("no --data: generating a synthetic corpus of %d clips in %s", cfg.synthetic_clips, source)
            make_corpus(
                source, n_clips=cfg.synthetic_clips, seconds=8.0, sample_rate=model_cfg.sample_rate, seed=cfg.seed
            )
        _barrier(dist)
        source = source / "manifest.csv"
    corpus = AudioCorpus(source, model_cfg.sample_rate, min_seconds=cfg.min_crop_seconds)
    if dist.is_main and corpus.bad_files:
        logger.warning("%d unusable files skipped (see the log above)", len(corpus.bad_files))
    return corpus


def _teacher(cfg: TrainConfig, corpus: AudioCorpus, out: Path, dist: DistributedInfo) -> MelRVQTeacher:
    directory = Path(cfg.teacher) if cfg.teacher else out / "teacher"
    if cfg.teacher is None and dist.is_main and not (directory / "teacher.json").is_file():
        n = min(len(corpus), cfg.teacher_fit_clips)
        logger.info("fitting the Mel-RVQ teacher on %d clips -> %s", n, directory)
        clips = (corpus.load(i) for i in range(n))
        teacher = fit_mel_rvq(
            clips, corpus.sample_rate, n_q=cfg.teacher_codebooks, codebook_size=cfg.teacher_codebook_size,
            steps=cfg.teacher_fit_steps, seed=cfg.seed, device=dist.device,
        )  # fmt: skip
        teacher.save(directory)
    _barrier(dist)
    teacher = MelRVQTeacher.load(directory, map_location=dist.device)
    if teacher.sample_rate != corpus.sample_rate:
        raise ValueError(f"teacher: fitted at {teacher.sample_rate} Hz, the model runs at {corpus.sample_rate} Hz")
    if (
        teacher.settings["n_q"] != cfg.teacher_codebooks
        or teacher.settings["codebook_size"] != cfg.teacher_codebook_size
    ):
        raise ValueError(
            f"teacher: {directory} has {teacher.settings['n_q']} x {teacher.settings['codebook_size']} codes; the run "
            f"expects {cfg.teacher_codebooks} x {cfg.teacher_codebook_size}"
        )
    return teacher


def _reduce(values: list[float], dist: DistributedInfo) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.world_size > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _model_flops(model_cfg: MERTConfig, n_params: int, frames: int) -> float:
    """Training FLOPs of one step: 6 x parameters x frames + attention (fwd 4 T^2 H per layer, x3 with backward)."""
    return 6.0 * n_params * frames + 12.0 * model_cfg.num_hidden_layers * model_cfg.hidden_size * frames * frames


def _plot(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="loss / masked frame")
    ax.plot(steps, [r["ce"] for r in rows], label="acoustic CE / frame")
    ax.plot(steps, [r["cqt_mse"] for r in rows], label="CQT MSE")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("MERT pre-training")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def train(cfg: TrainConfig, deepspeed_config: str | None = None) -> dict:
    """Run pre-training; returns the paths of what it wrote (rank 0) and the last logged metrics."""
    dist = init_distributed()
    out = Path(cfg.output_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(vars(cfg), indent=2, default=list) + "\n")
    _barrier(dist)
    model_cfg = MERTConfig.from_name(cfg.preset)
    corpus = _corpus(cfg, model_cfg, out, dist)
    mel_teacher = _teacher(cfg, corpus, out, dist)
    cqt_teacher = CQTTeacher(model_cfg.sample_rate, hop_length=model_cfg.hop_length, n_bins=_cqt_bins(model_cfg)).to(
        dist.device
    )

    torch.manual_seed(cfg.seed)
    student = MERTModel(model_cfg)
    module = MERTPretrainer(
        student, n_codebooks=cfg.teacher_codebooks, codebook_size=cfg.teacher_codebook_size,
        cqt_bins=cqt_teacher.n_bins, feature_grad_mult=cfg.feature_grad_mult, loss_weights=cfg.loss_weights,
    )  # fmt: skip
    n_params = sum(p.numel() for p in student.parameters())
    ds_config = engine_config(cfg, deepspeed_config, dist.world_size)
    engine, _, scheduler = build_engine(module, cfg, ds_config)
    dtype = (
        torch.bfloat16
        if ds_config.get("bf16", {}).get("enabled")
        else (torch.float16 if ds_config.get("fp16", {}).get("enabled") else torch.float32)
    )

    loader = make_loader(
        corpus, batch_size=cfg.batch_size, crop_seconds=cfg.crop_seconds, min_crop_seconds=cfg.min_crop_seconds,
        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, num_workers=cfg.num_workers,
        max_steps=cfg.max_steps * cfg.grad_accum,
    )  # fmt: skip
    metrics_path = out / "metrics.jsonl"
    if dist.is_main:
        metrics_path.write_text("")
    peak = next(
        (v for k, v in _PEAK_FLOPS.items() if dist.device.type == "cuda" and k in torch.cuda.get_device_name()), None
    )
    progress = None
    if dist.is_main:
        from tqdm import tqdm

        progress = tqdm(total=cfg.max_steps, desc="pre-training", unit="step")
    window = dict(loss=0.0, ce=0.0, cqt=0.0, pen=0.0, masked=0.0, audio=0.0, frames=0.0, micro=0)
    correct = torch.zeros(cfg.teacher_codebooks, dtype=torch.float64)
    last: dict = {}
    t0 = time.perf_counter()
    engine.train()
    for batch in loader:
        micro = batch.step
        step = micro // cfg.grad_accum
        torch.manual_seed(seed_for(cfg.seed, micro, dist.rank, purpose="dropout"))
        audio = batch.audio.to(dist.device, non_blocking=True)
        n_frames = model_cfg.num_frames(audio.shape[1])
        with torch.no_grad():
            codes = align_to_frames(
                mel_teacher(audio), n_frames, repeat=round(model_cfg.frame_rate / mel_teacher.label_rate)
            )
            cqt = align_to_frames(cqt_teacher(audio), n_frames)
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, micro, dist.rank, purpose="mask"))
        mask = compute_mask(audio.shape[0], n_frames, mask_prob=cfg.mask_prob, span=cfg.mask_length, generator=gen,
                            device=dist.device)  # fmt: skip
        mixed = in_batch_mixture(
            audio, prob=cfg.mixture_prob, max_segments=cfg.mixture_max_segments, seconds=cfg.mixture_seconds,
            sample_rate=model_cfg.sample_rate, generator=gen,
        )  # fmt: skip
        # LayerDrop is drawn once per step for all ranks: a layer skipped on one rank only would leave the ranks
        # reducing different gradients
        drop = torch.Generator().manual_seed(seed_for(cfg.seed, micro, 0, purpose="layerdrop"))
        layer_keep = (torch.rand(model_cfg.num_hidden_layers, generator=drop) >= model_cfg.layerdrop).tolist()
        result = engine(mixed.to(dtype), codes, cqt.to(dtype), mask, layer_keep)
        engine.backward(result.loss)
        engine.step()
        window["loss"] += float(result.loss.detach())
        window["ce"] += float(result.ce_sum)
        window["cqt"] += float(result.cqt_mse) * result.n_masked
        window["pen"] += float(result.features_pen) * result.n_masked
        window["masked"] += result.n_masked
        window["audio"] += audio.shape[0] * audio.shape[1] / model_cfg.sample_rate
        window["frames"] += audio.shape[0] * n_frames
        window["micro"] += 1
        correct += result.correct.double().cpu()
        if (micro + 1) % cfg.grad_accum:
            continue
        if progress is not None:
            progress.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            keys = ("loss", "ce", "cqt", "pen", "masked", "audio", "frames")
            totals = dict(zip(keys, _reduce([window[k] for k in keys] + [0.0], dist)[:-1], strict=True))
            acc = _reduce(correct.tolist(), dist)
            elapsed = time.perf_counter() - t0
            masked = max(totals["masked"], 1.0)
            flops = _model_flops(model_cfg, n_params, int(totals["frames"])) / max(elapsed, 1e-9)
            grad_norm = engine.get_global_grad_norm()
            last = {
                "step": step + 1,
                "loss": totals["loss"] / masked,
                "ce": totals["ce"] / masked,
                "cqt_mse": totals["cqt"] / masked,
                "features_pen": totals["pen"] / masked,
                **{f"acc_{q}": acc[q] / masked for q in range(cfg.teacher_codebooks)},
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "loss_scale": float(engine.optimizer.cur_scale) if hasattr(engine.optimizer, "cur_scale") else 1.0,
                "audio_seconds_per_s": totals["audio"] / max(elapsed, 1e-9),
                "tflops": flops / 1e12,
                "mfu": flops / (peak * dist.world_size) if peak else None,
                "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda" else None,
            }
            if not all(math.isfinite(v) for v in (last["loss"], last["ce"], last["cqt_mse"])):
                raise FloatingPointError(f"non-finite loss at step {step + 1}: {last}")
            if dist.is_main:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
                progress.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['acc_0']:.2f}")
            window = dict.fromkeys(window, 0.0)
            window["micro"] = 0
            correct.zero_()
            t0 = time.perf_counter()
    if progress is not None:
        progress.close()
    return _finish(engine, student, out, dist, metrics_path, last)


def _cqt_bins(model_cfg: MERTConfig) -> int:
    """336 bins (7 octaves from 32.7 Hz) at 24 kHz; fewer where the top would pass Nyquist (16 kHz presets)."""
    bins = 336
    while 32.7 * 2 ** ((bins - 1) / 48) > model_cfg.sample_rate / 2:
        bins -= 48
    return bins


def _finish(engine, student: MERTModel, out: Path, dist: DistributedInfo, metrics: Path, last: dict) -> dict:
    """Save a DeepSpeed checkpoint and the student as an HF directory; plot the loss curve."""
    import deepspeed

    checkpoints = out / "checkpoints"
    engine.save_checkpoint(str(checkpoints), tag=f"step{last.get('step', 0)}")
    stage = engine.zero_optimization_stage()
    params = list(student.parameters())
    context = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage == 3 else contextlib.nullcontext()
    with context:
        if dist.is_main:  # an fp32 copy on the CPU: the engine's own (maybe bf16, maybe partitioned) weights stay
            export = MERTModel(student.config)
            export.load_state_dict({k: v.detach().float().cpu() for k, v in student.state_dict().items()})
            export.save_pretrained(out / "model")
    paths = {"checkpoints": str(checkpoints), "model": str(out / "model"), "metrics": str(metrics)}
    if dist.is_main:
        _plot(metrics, out / "loss.png")
        paths["plot"] = str(out / "loss.png")
    _barrier(dist)
    return {"paths": paths, "last": last}
