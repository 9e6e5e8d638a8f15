"""DeepSpeed glue: the distributed environment, the engine config, the optimizer and schedule, ZeRO-3 details."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from mert_fast.train.config import TrainConfig

__all__ = ["DistributedInfo", "build_engine", "init_distributed", "polynomial_schedule"]

logger = logging.getLogger(__name__)


class DistributedInfo:
    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistributedInfo:
    """Join (or, under plain ``python``, create) the process group: NCCL on GPUs, gloo on the CPU.

    ``deepspeed`` and ``torchrun`` set RANK/WORLD_SIZE/MASTER_*; without a launcher a one-process group on the
    loopback address is set up here, so DeepSpeed never reaches for MPI.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistributedInfo(rank, world, local_rank, device)


def polynomial_schedule(warmup: int, decay_steps: int, power: float = 1.0):
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then polynomial decay to 0 at ``decay_steps``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        remaining = max(decay_steps - warmup, 1)
        return max(0.0, 1.0 - (step - warmup) / remaining) ** power

    return factor


def engine_config(cfg: TrainConfig, path: str | os.PathLike | None, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON (engine settings: ZeRO stage, precision) with the run's batch, accumulation, clipping."""
    config: dict[str, Any] = {"zero_optimization": {"stage": 2}}
    if path is not None:
        config = json.loads(Path(path).read_text())
    config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    config["gradient_accumulation_steps"] = cfg.grad_accum
    config["train_batch_size"] = cfg.batch_size * cfg.grad_accum * world_size
    config["gradient_clipping"] = cfg.clip_grad
    config.setdefault("steps_per_print", 10**9)
    config.setdefault("wall_clock_breakdown", False)
    if cfg.precision is not None:
        config["bf16"] = {"enabled": cfg.precision == "bf16"}
        config["fp16"] = {**config.get("fp16", {}), "enabled": cfg.precision == "fp16"}
    if config.get("fp16", {}).get("enabled"):
        config["fp16"].setdefault("loss_scale", 0)  # dynamic loss scaling
        config["fp16"].setdefault("initial_scale_power", 16)
    if not torch.cuda.is_available() and config.get("fp16", {}).get("enabled"):
        raise ValueError("precision: fp16 training needs a GPU; use bf16 or fp32 on the CPU")
    return config


def build_engine(module: torch.nn.Module, cfg: TrainConfig, ds_config: dict[str, Any]):
    """Wrap ``module`` in a DeepSpeed engine with AdamW (0.9, 0.98, eps 1e-6) and the polynomial schedule."""
    import deepspeed

    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if stage == 3 and hasattr(module, "zero3_external_parameters"):
        for owner, param in module.zero3_external_parameters():
            deepspeed.zero.register_external_parameter(owner, param)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay)
    schedule = polynomial_schedule(cfg.warmup_steps, cfg.decay_steps or cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, optimizer, scheduler
