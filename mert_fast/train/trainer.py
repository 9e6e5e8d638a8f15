"""The pre-training loop: data -> teachers (clean clip, no grad) -> mixture and masks -> student -> DeepSpeed step.

Around it: checkpoints every ``save_every`` steps and on SIGTERM/SIGINT (:mod:`mert_fast.train.checkpoint`), exact
resume, validation every ``val_every`` steps, ``metrics.jsonl`` + tensorboard, NVTX ranges and an optional torch
profiler trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import CQTTeacher, MelRVQTeacher, fit_kmeans_teacher, fit_mel_rvq, load_teacher
from mert_fast.train.checkpoint import (
    check_resumable,
    file_fingerprint,
    find_checkpoint,
    loss_scaler_state,
    read_meta,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from mert_fast.train.config import TrainConfig, model_config
from mert_fast.train.data import AudioCorpus, CropBatches, hold_out, list_audio, make_loader, seed_for
from mert_fast.train.engine import DistributedInfo, build_engine, engine_config, init_distributed
from mert_fast.train.objectives import CodebookObjective, Data2VecObjective, Objective
from mert_fast.train.step import cqt_bins

__all__ = ["Interrupted", "train"]

logger = logging.getLogger(__name__)

#: Dense bf16 peak of known accelerators (FLOP/s), for MFU.
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class Interrupted(RuntimeError):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``signum`` says which signal."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def _barrier(dist: DistributedInfo) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _nvtx(name: str):
    """An NVTX range (seen by Nsight Systems) around a phase of the step; a no-op without the nvtx package."""
    try:
        import nvtx
    except ImportError:
        return contextlib.nullcontext()
    return nvtx.annotate(name, domain="mert_fast")


def _corpora(
    cfg: TrainConfig, model_cfg: MERTConfig, out: Path, dist: DistributedInfo
) -> tuple[AudioCorpus, AudioCorpus | None]:
    """The training corpus and the validation one (``val_data``, a held-out fraction of ``data``, or None)."""
    source: Any = cfg.data
    if source is None:
        source = out / "corpus"
        if dist.is_main and not (source / "manifest.csv").is_file():
            from mert_fast.synth import make_corpus

            logger.info("no --data: generating a synthetic corpus of %d clips in %s", cfg.synthetic_clips, source)
            make_corpus(
                source, n_clips=cfg.synthetic_clips, seconds=8.0, sample_rate=model_cfg.sample_rate, seed=cfg.seed
            )
        _barrier(dist)
        source = source / "manifest.csv"
    val_source: Any = cfg.val_data
    if val_source is None and cfg.val_fraction > 0:
        source, val_source = hold_out(list_audio(source), cfg.val_fraction)
    corpus = AudioCorpus(source, model_cfg.sample_rate, min_seconds=cfg.min_crop_seconds)
    val = AudioCorpus(val_source, model_cfg.sample_rate, min_seconds=cfg.min_crop_seconds) if val_source else None
    if dist.is_main and corpus.bad_files:
        logger.warning("%d unusable files skipped (see the log above)", len(corpus.bad_files))
    return corpus, val


def _fit_teacher(cfg: TrainConfig, corpus: AudioCorpus, directory: Path, dist: DistributedInfo) -> None:
    n = min(len(corpus), cfg.teacher_fit_clips)
    logger.info("fitting the %s teacher on %d clips -> %s", cfg.teacher_type, n, directory)
    clips = (corpus.load(i) for i in range(n))
    if cfg.teacher_type == "kmeans":
        fitted = fit_kmeans_teacher(
            clips, corpus.sample_rate, feature=cfg.kmeans_feature, n_clusters=cfg.teacher_codebook_size,
            seed=cfg.seed, device=dist.device,
        )  # fmt: skip
    else:
        fitted = fit_mel_rvq(
            clips, corpus.sample_rate, n_q=cfg.teacher_codebooks, codebook_size=cfg.teacher_codebook_size,
            steps=cfg.teacher_fit_steps, seed=cfg.seed, device=dist.device,
        )  # fmt: skip
    fitted.save(directory)


def _teacher(cfg: TrainConfig, corpus: AudioCorpus, out: Path, dist: DistributedInfo) -> tuple[torch.nn.Module, Path]:
    """The acoustic teacher on the device and the file that fingerprints it (checked again on resume)."""
    spec = cfg.teacher
    if spec is not None and spec.startswith("encodec:"):
        from mert_fast.model.teachers.encodec import EncodecTeacher

        directory = Path(spec.split(":", 1)[1])
        teacher = EncodecTeacher.load(directory, map_location=dist.device)
        weights = next(iter(sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))), None)
        if weights is None:
            raise FileNotFoundError(f"teacher: {directory} holds no EnCodec weights (*.safetensors or *.bin)")
    else:
        directory = Path(spec) if spec else out / "teacher"
        if spec is None and dist.is_main and not (directory / "teacher.json").is_file():
            _fit_teacher(cfg, corpus, directory, dist)
        _barrier(dist)
        teacher = load_teacher(directory, map_location=dist.device)
        weights = directory / "teacher.safetensors"
    if teacher.sample_rate != corpus.sample_rate:
        raise ValueError(f"teacher: {spec} runs at {teacher.sample_rate} Hz, the model at {corpus.sample_rate} Hz")
    if cfg.objective == "muq" and not isinstance(teacher, MelRVQTeacher):
        raise ValueError(f"teacher: the muq objective predicts Mel-RVQ tokens; {spec} is a {type(teacher).__name__}")
    return teacher, weights


def _objective(
    cfg: TrainConfig, model_cfg: MERTConfig, corpus: AudioCorpus, out: Path, dist: DistributedInfo
) -> tuple[Objective, MERTModel, Path | None]:
    """The run's objective, its student, and the teacher file its targets depend on (None for data2vec, whose
    teacher is the EMA). Teachers come first (fitting one draws random numbers); the student and the heads are then
    initialised from ``cfg.seed`` alone, the same whether the teacher was fitted or loaded."""
    acoustic = teacher_file = cqt_teacher = None
    if cfg.objective != "data2vec":
        acoustic, teacher_file = _teacher(cfg, corpus, out, dist)
    if cfg.objective == "mert":
        n_bins = cqt_bins(model_cfg)
        cqt_teacher = CQTTeacher(model_cfg.sample_rate, hop_length=model_cfg.hop_length, n_bins=n_bins).to(dist.device)
    torch.manual_seed(cfg.seed)
    student = MERTModel(model_cfg)
    if cfg.objective == "data2vec":
        return Data2VecObjective(cfg, model_cfg, student, dist.device), student, None
    return CodebookObjective(cfg.objective, cfg, model_cfg, student, acoustic, cqt_teacher), student, teacher_file


def _reduce(values: list[float], dist: DistributedInfo) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.world_size > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _model_flops(model_cfg: MERTConfig, n_params: int, frames: int) -> float:
    """Training FLOPs of one clip of ``frames`` frames: 6 x parameters x frames + attention (forward 4 T^2 H per
    layer, x3 with backward)."""
    return 6.0 * n_params * frames + 12.0 * model_cfg.num_hidden_layers * model_cfg.hidden_size * frames * frames


def _plot(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    if not train_rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in train_rows]
    labels = {"loss": "loss / masked frame", "ce": "acoustic CE / frame", "prior": "code prior (entropy) / frame",
              "cqt_mse": "CQT MSE", "target_var": "target std (EMA teacher)"}  # fmt: skip
    for key, label in labels.items():
        if key in train_rows[0] and (key != "cqt_mse" or any(r[key] for r in train_rows)):
            ax.plot(steps, [r[key] for r in train_rows], label=label)
    if val_rows:
        ax.plot([r["step"] for r in val_rows], [r["loss"] for r in val_rows], "o--", label="validation loss")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("MERT pre-training")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


class _Metrics:
    """``metrics.jsonl`` (rank 0) and tensorboard scalars (``output_dir/tensorboard``) of every logged metric."""

    def __init__(self, out: Path, dist: DistributedInfo, resumed_step: int | None) -> None:
        self.path = out / "metrics.jsonl"
        self.writer = None
        if not dist.is_main:
            return
        kept: list[str] = []
        if resumed_step is not None and self.path.is_file():  # rows past the checkpoint are logged again
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


class _StopFlag:
    """Set by SIGTERM/SIGINT; the ranks agree on it at a step boundary (an all-reduce), then checkpoint and stop."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        # a scheduler signals every process of a job and the launcher passes signals on, so one stop request can
        # arrive as several signals; only a second SIGINT (Ctrl-C twice) gives up the checkpoint
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum:
            return
        logger.warning("%s: checkpointing at the end of this step, then stopping", signal.Signals(signum).name)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, dist: DistributedInfo) -> int:
        flag = torch.tensor([self.signum], dtype=torch.int64, device=dist.device)
        if dist.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())


def _sum_into(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def _reduce_sums(sums: dict[str, float], dist: DistributedInfo) -> dict[str, float]:
    keys = sorted(sums)
    return dict(zip(keys, _reduce([sums[k] for k in keys], dist), strict=True))


@torch.no_grad()
def _validate(engine, val: CropBatches, objective: Objective, dtype, dist: DistributedInfo) -> dict[str, float]:
    """The objective's metrics over the validation batches: clean clips, fixed crops and masks, no dropout or
    LayerDrop. The batches are dealt round-robin to the ranks; every rank runs the same number of forwards (ZeRO-3
    gathers parameters collectively), a rank without a batch of its own repeats one and does not count it."""
    n_batches = val.steps_per_epoch
    rounds = -(-n_batches // dist.world_size)
    sums: dict[str, float] = {}
    engine.eval()
    for r in range(rounds):
        index = r * dist.world_size + dist.rank
        batch = val[index % n_batches]
        result = engine(*objective.inputs(batch.audio.to(dist.device), index % n_batches, 0, dtype, validation=True))
        part = objective.sums(result)
        _sum_into(sums, {k: v * (index < n_batches) for k, v in part.items()})
    engine.train()
    return {**objective.metrics(_reduce_sums(sums, dist)), "clips": n_batches * val.batch_size}


def train(
    cfg: TrainConfig,
    deepspeed_config: str | None = None,
    *,
    resume: str | os.PathLike | None = None,
) -> dict:
    """Run pre-training; returns the paths of what it wrote (rank 0) and the last logged metrics.

    ``resume``: a checkpoint, a run directory or ``"latest"`` (``output_dir``'s newest checkpoint); ``"auto"``
    resumes when ``output_dir`` has a checkpoint and starts afresh otherwise.

    Raises:
        Interrupted: SIGTERM or SIGINT arrived; a checkpoint of the last finished step was written first.
        ValueError: the run's settings do not match the checkpoint it resumes (world size included).
    """
    dist = init_distributed()
    out = Path(cfg.output_dir)
    checkpoint = None
    if resume is not None:
        try:
            checkpoint = find_checkpoint(out if str(resume) in ("latest", "auto") else resume)
        except FileNotFoundError:
            if str(resume) != "auto":
                raise
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(vars(cfg), indent=2, default=list) + "\n")
    _barrier(dist)
    model_cfg = model_config(cfg)
    corpus, val_corpus = _corpora(cfg, model_cfg, out, dist)
    objective, student, teacher_file = _objective(cfg, model_cfg, corpus, out, dist)
    teacher_sha = file_fingerprint(teacher_file) if teacher_file is not None else None
    n_params = sum(p.numel() for p in student.parameters())
    ds_config = engine_config(cfg, deepspeed_config, dist.world_size)
    engine, _, scheduler = build_engine(objective.module, cfg, ds_config)
    dtype = (
        torch.bfloat16
        if ds_config.get("bf16", {}).get("enabled")
        else (torch.float16 if ds_config.get("fp16", {}).get("enabled") else torch.float32)
    )
    run = {**vars(cfg), "world_size": dist.world_size}
    sums: dict[str, float] = {}
    start = 0
    if checkpoint is not None:
        meta = read_meta(checkpoint)
        check_resumable(meta, run)
        if meta["teacher_sha256"] != teacher_sha:
            raise ValueError(
                f"resume: the teacher ({teacher_file}) is not the one {checkpoint} was trained with (its SHA-256 "
                "differs); resume with the original teacher"
            )
        path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        if path is None:
            raise RuntimeError(f"resume: DeepSpeed could not load {checkpoint}")
        if loss_scaler_state(engine.optimizer) != meta["loss_scaler"]:
            raise RuntimeError(
                f"resume: the loss scaler restored from {checkpoint} ({loss_scaler_state(engine.optimizer)}) is not "
                f"the one saved ({meta['loss_scaler']})"
            )
        objective_file = checkpoint / "objective.pt"
        objective.load_state_dict(torch.load(objective_file, weights_only=False) if objective_file.is_file() else None)
        state = torch.load(checkpoint / f"trainer_rank{dist.rank}.pt", weights_only=False)
        restore_rng(state["rng"])
        sums = state["sums"]
        start = int(meta["step"])
        if dist.is_main:
            logger.info("resumed from %s at step %d", checkpoint, start)

    def _save(step: int) -> Path:
        teacher = str(cfg.teacher or out / "teacher") if teacher_sha else "ema"
        meta = {
            "run": run, "model_config": model_cfg.to_hf_dict(), "teacher": teacher, "teacher_sha256": teacher_sha,
            "dtype": str(dtype).removeprefix("torch."), "loss_scaler": loss_scaler_state(engine.optimizer),
        }  # fmt: skip
        extra = objective.state_dict()
        return save_checkpoint(
            engine, out / "checkpoints", step, meta=meta, rank_state={"rng": rng_state(), "sums": sums},
            rank=dist.rank, keep_last=cfg.keep_last, barrier=lambda: _barrier(dist),
            shared_files={"objective.pt": extra} if extra is not None else None,
        )  # fmt: skip

    loader = make_loader(
        corpus, batch_size=cfg.batch_size, crop_seconds=cfg.crop_seconds, min_crop_seconds=cfg.min_crop_seconds,
        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, num_workers=cfg.num_workers,
        start_step=start * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum, ignore_stop_signals=True,
    )  # fmt: skip
    val = None
    if val_corpus is not None:
        val = CropBatches(val_corpus, batch_size=min(cfg.batch_size, len(val_corpus)), crop_seconds=cfg.crop_seconds,
                          min_crop_seconds=cfg.min_crop_seconds, seed=cfg.seed)  # fmt: skip
    metrics = _Metrics(out, dist, start if checkpoint is not None else None)
    peak = next(
        (v for k, v in _PEAK_FLOPS.items() if dist.device.type == "cuda" and k in torch.cuda.get_device_name()), None
    )
    progress = None
    if dist.is_main:
        from tqdm import tqdm

        progress = tqdm(total=cfg.max_steps, initial=start, desc="pre-training", unit="step")
    profiler = None
    if cfg.profile_steps:
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dist.device.type == "cuda" else [])
        profiler = profile(
            activities=activities, schedule=schedule(wait=1, warmup=1, active=cfg.profile_steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(out / "profile"), worker_name=f"rank{dist.rank}"),
            record_shapes=True, with_stack=False,
        )  # fmt: skip
        profiler.start()
    last: dict = {}
    t0 = time.perf_counter()
    engine.train()
    batches = iter(loader)
    step = start
    with _StopFlag() as stop, contextlib.closing(batches):  # closing: the workers ignore signals, shut them down
        while step < cfg.max_steps:
            for _ in range(cfg.grad_accum):
                tick = time.perf_counter()
                with _nvtx("data"):
                    batch = next(batches)
                micro = batch.step
                torch.manual_seed(seed_for(cfg.seed, micro, dist.rank, purpose="dropout"))
                audio = batch.audio.to(dist.device, non_blocking=True)
                tock = time.perf_counter()
                with _nvtx("teachers"):
                    inputs = objective.inputs(audio, micro, dist.rank, dtype, validation=False)
                timing = {"data_s": tock - tick, "teacher_s": time.perf_counter() - tock}
                with _nvtx("forward"):
                    result = engine(*inputs)
                with _nvtx("backward"):
                    engine.backward(result.loss)
                with _nvtx("optimizer"):
                    engine.step()
                n_frames = inputs[-2].shape[1]  # the mask (B, T)
                _sum_into(sums, objective.sums(result))
                _sum_into(sums, {**timing, "audio": audio.shape[0] * audio.shape[1] / model_cfg.sample_rate,
                                 "flops": audio.shape[0] * _model_flops(model_cfg, n_params, n_frames)})  # fmt: skip
            step += 1
            with _nvtx("teacher update"):
                objective.after_step(engine, step)
            if profiler is not None:
                profiler.step()
            if progress is not None:
                progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                totals = _reduce_sums(sums, dist)
                elapsed = time.perf_counter() - t0
                flops = totals["flops"] / max(elapsed, 1e-9)
                grad_norm = engine.get_global_grad_norm()
                last = {
                    "step": step,
                    "split": "train",
                    **objective.metrics(totals),
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "loss_scale": float(engine.optimizer.cur_scale) if hasattr(engine.optimizer, "cur_scale") else 1.0,
                    "audio_seconds_per_s": totals["audio"] / max(elapsed, 1e-9),
                    "data_fraction": totals["data_s"] / max(elapsed * dist.world_size, 1e-9),
                    "teacher_fraction": totals["teacher_s"] / max(elapsed * dist.world_size, 1e-9),
                    "tflops": flops / 1e12,
                    "mfu": flops / (peak * dist.world_size) if peak else None,
                    "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda" else None,
                }
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"non-finite loss at step {step}: {last}")
                if dist.is_main:
                    metrics.log(last)
                    progress.set_postfix(loss=f"{last['loss']:.3f}")
                sums = {}
                t0 = time.perf_counter()
            if val is not None and (step % cfg.val_every == 0 or step == cfg.max_steps):
                with _nvtx("validation"):
                    row = {"step": step, "split": "val", **_validate(engine, val, objective, dtype, dist)}
                if dist.is_main:
                    metrics.log(row)
                t0 = time.perf_counter()
            signum = stop.agreed(dist)
            if signum:
                saved = _save(step)
                metrics.close()
                if progress is not None:
                    progress.close()
                raise Interrupted(signum, saved)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                _save(step)
                t0 = time.perf_counter()
    if profiler is not None:
        profiler.stop()
    if progress is not None:
        progress.close()
    metrics.close()
    _save(step)
    return _finish(engine, student, out, dist, metrics.path, last)


def _finish(engine, student: MERTModel, out: Path, dist: DistributedInfo, metrics: Path, last: dict) -> dict:
    """Write the student as an HF directory (the weights the engine computes with) and plot the loss curve."""
    import deepspeed

    stage = engine.zero_optimization_stage()
    params = list(student.parameters())
    context = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage == 3 else contextlib.nullcontext()
    with context:
        if dist.is_main:  # an fp32 copy on the CPU: the engine's own (maybe bf16, maybe partitioned) weights stay
            export = MERTModel(student.config, init_weights=False)  # its weights are copied next
            export.load_state_dict({k: v.detach().float().cpu() for k, v in student.state_dict().items()})
            export.save_pretrained(out / "model")
    paths = {"checkpoints": str(out / "checkpoints"), "model": str(out / "model"), "metrics": str(metrics)}
    if dist.is_main:
        _plot(metrics, out / "loss.png")
        paths["plot"] = str(out / "loss.png")
    _barrier(dist)
    return {"paths": paths, "last": last}
