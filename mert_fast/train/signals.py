"""Stopping on SIGTERM/SIGINT: the flag the handlers set, the ranks' agreement on it, and the exception after the
checkpoint."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import torch

from mert_fast.train.engine import DistributedInfo

__all__ = ["Interrupted", "StopFlag"]

logger = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """The run stopped on SIGTERM/SIGINT after writing a checkpoint; ``signum`` says which signal."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class StopFlag:
    """Set by SIGTERM/SIGINT while entered; the ranks agree on it at a step boundary (an all-reduce), then
    checkpoint and stop."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
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
        self._previous.clear()

    def agreed(self, dist: DistributedInfo) -> int:
        """The signal any rank received (0: none); a collective, every rank calls it."""
        flag = torch.tensor([self.signum], dtype=torch.int64, device=dist.device)
        if dist.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())
