"""The pre-training loop: data -> teachers (clean clip, no grad) -> mixture and masks -> student -> DeepSpeed step.

:class:`Trainer` holds a run: :meth:`~Trainer.setup` builds it (corpora, teacher, objective, engine, loaders) and
resumes it, :meth:`~Trainer.run` loops over :meth:`~Trainer.train_step` with :meth:`~Trainer.log` and
:meth:`~Trainer.validate` rows (:class:`~mert_fast.train.metrics.MetricsSink`), checkpoints every ``save_every``
steps and on SIGTERM/SIGINT (:class:`~mert_fast.train.signals.StopFlag`, :meth:`~Trainer.save`), NVTX ranges and an
optional torch profiler trace, and exports the student at the end. :func:`train` does all of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mert_fast.model.mert import MERTModel
from mert_fast.train.build import barrier, build_corpora, build_objective
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
from mert_fast.train.data import Batch, CropBatches, seed_for
from mert_fast.train.engine import DistributedInfo, build_engine, engine_config, init_distributed
from mert_fast.train.metrics import PEAK_FLOPS, MetricsSink, learning_status, model_flops, plot_metrics
from mert_fast.train.signals import Interrupted, StopFlag

__all__ = ["Interrupted", "Trainer", "train"]

logger = logging.getLogger(__name__)


def _nvtx(name: str):
    """An NVTX range (seen by Nsight Systems) around a phase of the step; a no-op without the nvtx package."""
    try:
        import nvtx
    except ImportError:
        return contextlib.nullcontext()
    return nvtx.annotate(name, domain="mert_fast")


def _sum_into(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def _reduce_sums(sums: dict[str, float], dist: DistributedInfo) -> dict[str, float]:
    """``sums`` added up over the ranks (float64; every rank must hold the same keys)."""
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    if dist.world_size > 1:
        torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def _compute_dtype(ds_config: dict[str, Any]) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    return torch.float16 if ds_config.get("fp16", {}).get("enabled") else torch.float32


class Trainer:
    """One pre-training run of ``cfg`` with the DeepSpeed JSON ``deepspeed_config`` (None: ZeRO-2 defaults).

    ``resume``: a checkpoint, a run directory or ``"latest"`` (``output_dir``'s newest checkpoint); ``"auto"``
    resumes when ``output_dir`` has a checkpoint and starts afresh otherwise. ``step`` counts the optimizer steps
    done; ``sums`` holds the objective's sums (and timings) since the last logged row.
    """

    def __init__(
        self, cfg: TrainConfig, deepspeed_config: str | None = None, *, resume: str | os.PathLike | None = None
    ) -> None:
        self.cfg, self.deepspeed_config, self.resume_from = cfg, deepspeed_config, resume
        self.out = Path(cfg.output_dir)
        self.step = 0
        self.sums: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self.at_prior: bool | None = None  # whether the last training row's masked CE was at the code prior
        self.progress = None

    # ------------------------------------------------------------------------------------------ building

    def setup(self) -> None:
        """Join the process group, build the corpora, teacher, objective, engine and loaders, and resume."""
        cfg = self.cfg
        dist = self.dist = init_distributed()
        checkpoint = self._checkpoint_to_resume()
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(vars(cfg), indent=2, default=list) + "\n")
        barrier(dist)
        self.model_cfg = model_config(cfg)
        corpus, val_corpus = build_corpora(cfg, self.model_cfg, self.out, dist)
        self.objective, self.student, self.teacher_file = build_objective(cfg, self.model_cfg, corpus, self.out, dist)
        self.teacher_sha = file_fingerprint(self.teacher_file) if self.teacher_file is not None else None
        self.n_params = sum(p.numel() for p in self.student.parameters())
        ds_config = engine_config(cfg, self.deepspeed_config, dist.world_size)
        self.engine, _, self.scheduler = build_engine(self.objective.module, cfg, ds_config)
        self.dtype = _compute_dtype(ds_config)
        self.run_settings = {**vars(cfg), "world_size": dist.world_size}
        if checkpoint is not None:
            self.resume(checkpoint)
        self.loader = CropBatches(
            corpus, batch_size=cfg.batch_size, crop_seconds=cfg.crop_seconds, min_crop_seconds=cfg.min_crop_seconds,
            seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, num_workers=cfg.num_workers,
            start_step=self.step * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum, ignore_stop_signals=True,
            paired_renders=cfg.paired_renders,
        )  # fmt: skip
        self.val = None
        if val_corpus is not None:
            val_batch = min(cfg.batch_size, len(val_corpus))
            self.val = CropBatches(
                val_corpus, batch_size=max(2, val_batch - val_batch % 2) if cfg.paired_renders else val_batch,
                crop_seconds=cfg.crop_seconds, min_crop_seconds=cfg.min_crop_seconds, seed=cfg.seed,
                paired_renders=cfg.paired_renders,
            )  # fmt: skip
        self.metrics = MetricsSink(self.out, dist.is_main, self.step if checkpoint is not None else None)
        is_cuda = dist.device.type == "cuda"
        self.peak = next((v for k, v in PEAK_FLOPS.items() if is_cuda and k in torch.cuda.get_device_name()), None)

    def _checkpoint_to_resume(self) -> Path | None:
        resume = self.resume_from
        if resume is None:
            return None
        try:
            return find_checkpoint(self.out if str(resume) in ("latest", "auto") else resume)
        except FileNotFoundError:
            if str(resume) != "auto":
                raise
        return None

    # ------------------------------------------------------------------------------------------ checkpoints

    def resume(self, checkpoint: Path) -> None:
        """Load ``checkpoint`` into the engine, the objective, the RNGs and :attr:`sums`; set :attr:`step`.

        Raises:
            ValueError: the run's settings (world size included) or its teacher differ from the checkpoint's.
        """
        meta = read_meta(checkpoint)
        check_resumable(meta, self.run_settings)
        if meta["teacher_sha256"] != self.teacher_sha:
            raise ValueError(
                f"resume: the teacher ({self.teacher_file}) is not the one {checkpoint} was trained with (its SHA-256 "
                "differs); resume with the original teacher"
            )
        path, _ = self.engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        if path is None:
            raise RuntimeError(f"resume: DeepSpeed could not load {checkpoint}")
        scaler = loss_scaler_state(self.engine.optimizer)
        if scaler != meta["loss_scaler"]:
            raise RuntimeError(
                f"resume: the loss scaler restored from {checkpoint} ({scaler}) is not the one saved "
                f"({meta['loss_scaler']})"
            )
        objective_file = checkpoint / "objective.pt"
        state = torch.load(objective_file, weights_only=False) if objective_file.is_file() else None
        self.objective.load_state_dict(state)
        rank_state = torch.load(checkpoint / f"trainer_rank{self.dist.rank}.pt", weights_only=False)
        restore_rng(rank_state["rng"])
        self.sums = rank_state["sums"]
        self.step = int(meta["step"])
        if self.dist.is_main:
            logger.info("resumed from %s at step %d", checkpoint, self.step)

    def save(self) -> Path:
        """Checkpoint the run at :attr:`step` (every rank calls it); returns the checkpoint's directory."""
        cfg = self.cfg
        teacher = str(cfg.teacher or self.out / "teacher") if self.teacher_sha else "ema"
        meta = {
            "run": self.run_settings, "model_config": self.model_cfg.to_hf_dict(), "teacher": teacher,
            "teacher_sha256": self.teacher_sha, "dtype": str(self.dtype).removeprefix("torch."),
            "loss_scaler": loss_scaler_state(self.engine.optimizer),
        }  # fmt: skip
        extra = self.objective.state_dict()
        return save_checkpoint(
            self.engine, self.out / "checkpoints", self.step, meta=meta,
            rank_state={"rng": rng_state(), "sums": self.sums}, rank=self.dist.rank, keep_last=cfg.keep_last,
            barrier=lambda: barrier(self.dist), shared_files={"objective.pt": extra} if extra is not None else None,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ steps

    def train_step(self, batches: Iterator[Batch]) -> None:
        """One optimizer step: ``grad_accum`` micro-steps from the iterator ``batches``, then the objective's
        per-step update; the objective's sums and the timings go into :attr:`sums`."""
        cfg, dist, model_cfg = self.cfg, self.dist, self.model_cfg
        for _ in range(cfg.grad_accum):
            tick = time.perf_counter()
            with _nvtx("data"):
                batch = next(batches)
            micro = batch.step
            torch.manual_seed(seed_for(cfg.seed, micro, dist.rank, purpose="dropout"))
            audio = batch.audio.to(dist.device, non_blocking=True)
            tock = time.perf_counter()
            with _nvtx("teachers"):
                inputs = self.objective.inputs(audio, micro, dist.rank, self.dtype, validation=False)
            timing = {"data_s": tock - tick, "teacher_s": time.perf_counter() - tock}
            with _nvtx("forward"):
                result = self.objective.forward(self.engine, inputs)
            with _nvtx("backward"):
                self.engine.backward(result.loss)
            with _nvtx("optimizer"):
                self.engine.step()
            flops = audio.shape[0] * model_flops(model_cfg, self.n_params, inputs.n_frames)
            _sum_into(self.sums, self.objective.sums(result))
            _sum_into(
                self.sums, {**timing, "audio": audio.shape[0] * audio.shape[1] / model_cfg.sample_rate, "flops": flops}
            )
        self.step += 1
        with _nvtx("teacher update"):
            self.objective.after_step(self.engine, self.step)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The objective's metrics over the validation batches: clean clips, fixed crops and masks, no dropout or
        LayerDrop. The batches are dealt round-robin to the ranks; every rank runs the same number of forwards
        (ZeRO-3 gathers parameters collectively), a rank without a batch of its own repeats one and does not count
        it."""
        dist, val = self.dist, self.val
        n_batches = val.steps_per_epoch
        rounds = -(-n_batches // dist.world_size)
        sums: dict[str, float] = {}
        self.engine.eval()
        for r in range(rounds):
            index = r * dist.world_size + dist.rank
            batch = val[index % n_batches]
            audio = batch.audio.to(dist.device)
            inputs = self.objective.inputs(audio, index % n_batches, 0, self.dtype, validation=True)
            part = self.objective.sums(self.objective.forward(self.engine, inputs))
            _sum_into(sums, {k: v * (index < n_batches) for k, v in part.items()})
        self.engine.train()
        return {**self.objective.metrics(_reduce_sums(sums, self.dist)), "clips": n_batches * val.batch_size}

    def log(self, elapsed: float) -> dict[str, Any]:
        """The training row of :attr:`step` from :attr:`sums` over ``elapsed`` seconds (a collective): written to
        the metrics on rank 0, kept as :attr:`last`; :attr:`sums` starts again.

        Raises:
            FloatingPointError: the loss is not finite.
        """
        dist, engine = self.dist, self.engine
        totals = _reduce_sums(self.sums, dist)
        flops = totals["flops"] / max(elapsed, 1e-9)
        grad_norm = engine.get_global_grad_norm()
        row = {
            "step": self.step,
            "split": "train",
            **self.objective.metrics(totals),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "loss_scale": float(engine.optimizer.cur_scale) if hasattr(engine.optimizer, "cur_scale") else 1.0,
            "audio_seconds_per_s": totals["audio"] / max(elapsed, 1e-9),
            "data_fraction": totals["data_s"] / max(elapsed * dist.world_size, 1e-9),
            "teacher_fraction": totals["teacher_s"] / max(elapsed * dist.world_size, 1e-9),
            "tflops": flops / 1e12,
            "mfu": flops / (self.peak * dist.world_size) if self.peak else None,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda" else None,
        }
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {row}")
        self.metrics.log(row)
        self._report_learning(row)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{row['loss']:.3f}")
        self.sums = {}
        self.last = row
        return row

    def _report_learning(self, row: dict[str, Any]) -> None:
        """Log, once the warm-up is over, whether the masked CE is still at the code prior: a warning at the first
        such row (and whenever it falls back), a note when it first leaves it."""
        status = learning_status(row)
        if status is None or not self.dist.is_main or self.step < max(self.cfg.warmup_steps, 1):
            return
        at_prior, text = status
        if at_prior and self.at_prior is not True:
            logger.warning("step %d: still at the code prior after the warm-up: %s", self.step, text)
        elif not at_prior and self.at_prior is not False:
            logger.info("step %d: below the code prior: %s", self.step, text)
        self.at_prior = at_prior

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> dict:
        """Train from :attr:`step` to ``max_steps``, checkpoint, export; returns what :func:`train` returns."""
        cfg, dist = self.cfg, self.dist
        if dist.is_main:
            from tqdm import tqdm

            self.progress = tqdm(total=cfg.max_steps, initial=self.step, desc="pre-training", unit="step")
        profiler = self._profiler()
        t0 = time.perf_counter()
        self.engine.train()
        batches = iter(self.loader)
        with StopFlag() as stop, contextlib.closing(batches):  # closing: the workers ignore signals, shut them down
            while self.step < cfg.max_steps:
                self.train_step(batches)
                if profiler is not None:
                    profiler.step()
                if self.progress is not None:
                    self.progress.update(1)
                last_step = self.step == cfg.max_steps
                if self.step % cfg.log_every == 0 or last_step:
                    self.log(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                if self.val is not None and (self.step % cfg.val_every == 0 or last_step):
                    with _nvtx("validation"):
                        val_row = self.validate()
                        self.metrics.log({"step": self.step, "split": "val", **val_row})
                    if dist.is_main and (status := learning_status(val_row)) is not None:
                        logger.info("step %d validation: %s", self.step, status[1])
                    t0 = time.perf_counter()
                signum = stop.agreed(dist)
                if signum:
                    saved = self.save()
                    self.close()
                    raise Interrupted(signum, saved)
                if cfg.save_every and self.step % cfg.save_every == 0 and not last_step:
                    self.save()
                    t0 = time.perf_counter()
        if profiler is not None:
            profiler.stop()
        self.close()
        self.save()
        return self.export()

    def _profiler(self):
        """A started torch profiler tracing ``profile_steps`` steps into ``output_dir/profile``, or None."""
        if not self.cfg.profile_steps:
            return None
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        cuda = self.dist.device.type == "cuda"
        profiler = profile(
            activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
            schedule=schedule(wait=1, warmup=1, active=self.cfg.profile_steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.out / "profile"), worker_name=f"rank{self.dist.rank}"),
            record_shapes=True, with_stack=False,
        )  # fmt: skip
        profiler.start()
        return profiler

    def close(self) -> None:
        """Close the metrics sink and the progress bar."""
        self.metrics.close()
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def export(self) -> dict:
        """Write the student as an HF directory (the weights the engine computes with) and plot the loss curve;
        returns the paths written (rank 0) and the last logged training row."""
        import deepspeed

        dist, out = self.dist, self.out
        stage = self.engine.zero_optimization_stage()
        params = list(self.student.parameters())
        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage == 3 else None
        with gathered or contextlib.nullcontext():
            if dist.is_main:  # an fp32 copy on the CPU: the engine's own (maybe bf16, maybe partitioned) weights stay
                export = MERTModel(self.student.config, init_weights=False)  # its weights are copied next
                export.load_state_dict({k: v.detach().float().cpu() for k, v in self.student.state_dict().items()})
                export.save_pretrained(out / "model")
        paths = {
            "checkpoints": str(out / "checkpoints"),
            "model": str(out / "model"),
            "metrics": str(self.metrics.path),
        }
        if dist.is_main:
            plot_metrics(self.metrics.path, out / "loss.png")
            paths["plot"] = str(out / "loss.png")
        barrier(dist)
        return {"paths": paths, "last": self.last}


def train(
    cfg: TrainConfig,
    deepspeed_config: str | None = None,
    *,
    resume: str | os.PathLike | None = None,
) -> dict:
    """Run pre-training (:class:`Trainer`); returns the paths of what it wrote (rank 0) and the last logged metrics.

    ``resume``: a checkpoint, a run directory or ``"latest"`` (``output_dir``'s newest checkpoint); ``"auto"``
    resumes when ``output_dir`` has a checkpoint and starts afresh otherwise.

    Raises:
        Interrupted: SIGTERM or SIGINT arrived; a checkpoint of the last finished step was written first.
        ValueError: the run's settings do not match the checkpoint it resumes (world size included).
    """
    trainer = Trainer(cfg, deepspeed_config, resume=resume)
    trainer.setup()
    return trainer.run()
