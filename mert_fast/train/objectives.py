"""The pre-training objectives the trainer runs, behind one interface.

- ``mert``: masked prediction of acoustic-teacher codes through cosine heads + CQT regression (MERT-v1, and MERT-v0
  with k-means codes);
- ``muq``: Mel-RVQ codes through linear heads, no CQT term (MuQ's objective on the MERT conv student);
- ``data2vec``: regression of an EMA teacher's averaged top-layer outputs (music2vec).

An :class:`Objective` owns the module the DeepSpeed engine wraps, turns a clean batch into the engine's inputs,
turns the engine's output into sums that add up over micro-steps and ranks, and those sums into logged metrics;
``after_step`` runs once per optimizer step (the EMA update) and ``state_dict`` is what a checkpoint keeps
beside the engine's own state.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.config import TrainConfig
from mert_fast.train.objective import MERTPretrainer
from mert_fast.train.step import step_inputs

__all__ = ["OBJECTIVES", "CodebookObjective", "Data2VecObjective", "Objective", "code_entropy"]

logger = logging.getLogger(__name__)

OBJECTIVES = ("mert", "muq", "data2vec")


def code_entropy(counts: list[float]) -> float:
    """Entropy in nats of the distribution of a histogram (0 for an empty one)."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c > 0) if total > 0 else 0.0


class Objective:
    """The interface; see the module docstring."""

    name: str
    module: nn.Module

    def inputs(self, audio: torch.Tensor, micro_step: int, rank: int, dtype: torch.dtype, validation: bool) -> tuple:
        raise NotImplementedError

    def sums(self, result: Any) -> dict[str, float]:
        raise NotImplementedError

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def after_step(self, engine: Any, step: int) -> None:
        """Called on every rank after optimizer step ``step`` (counted from 1)."""

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            raise ValueError(f"checkpoint: objective {self.name!r} keeps no state, but the checkpoint holds some")


class CodebookObjective(Objective):
    """``mert`` (cosine heads, CQT term) or ``muq`` (linear heads, no CQT) on an acoustic teacher's codes."""

    def __init__(
        self,
        name: str,
        cfg: TrainConfig,
        model_cfg: MERTConfig,
        student: MERTModel,
        acoustic: nn.Module,
        cqt_teacher: nn.Module | None,
    ) -> None:
        self.name, self.cfg, self.model_cfg = name, cfg, model_cfg
        self.acoustic, self.cqt_teacher = acoustic, cqt_teacher
        self.n_q = acoustic.settings["n_q"]
        self.codebook_size = acoustic.settings["codebook_size"]
        self.module = MERTPretrainer(
            student, n_codebooks=self.n_q, codebook_size=acoustic.settings["codebook_size"],
            cqt_bins=cqt_teacher.n_bins if cqt_teacher is not None else None, feature_grad_mult=cfg.feature_grad_mult,
            loss_weights=cfg.loss_weights, head="linear" if name == "muq" else "cosine",
        )  # fmt: skip

    def inputs(self, audio, micro_step, rank, dtype, validation):
        x = step_inputs(
            audio, model_cfg=self.model_cfg, cfg=self.cfg, acoustic_teacher=self.acoustic,
            cqt_teacher=self.cqt_teacher, micro_step=micro_step, rank=rank, dtype=dtype, mixture=not validation,
            stream="val" if validation else "",
        )  # fmt: skip
        return x.audio, x.codes, x.cqt, x.mask, None if validation else x.layer_keep

    def sums(self, result):
        n = result.n_masked
        out = {"loss": float(result.loss.detach()), "ce": float(result.ce_sum), "masked": float(n),
               "cqt": float(result.cqt_mse) * n, "pen": float(result.features_pen) * n}  # fmt: skip
        out.update({f"correct_{q}": float(c) for q, c in enumerate(result.correct.tolist())})
        # every code's count, zeros included: the sums of all ranks must have the same keys
        for q, row in enumerate(result.code_counts.tolist()):
            out.update({f"codes_{q}_{k}": float(c) for k, c in enumerate(row)})
        return out

    def metrics(self, totals):
        masked = max(totals["masked"], 1.0)
        out = {"loss": totals["loss"] / masked, "ce": totals["ce"] / masked, "cqt_mse": totals["cqt"] / masked,
               "features_pen": totals["pen"] / masked}  # fmt: skip
        out.update({f"acc_{q}": totals[f"correct_{q}"] / masked for q in range(self.n_q)})
        # the prior: the entropy of each codebook's code histogram over the scored frames since the last row, the CE
        # of the best constant prediction of those frames; ``ce`` below ``prior`` is what is learnt about each frame
        priors = [code_entropy([totals[f"codes_{q}_{k}"] for k in range(self.codebook_size)]) for q in range(self.n_q)]
        out.update({f"prior_{q}": p for q, p in enumerate(priors)})
        out["prior"] = sum(priors)
        return out


class Data2VecObjective(Objective):
    """music2vec: the student regresses, at masked frames, its EMA teacher's averaged top-K layer outputs."""

    name = "data2vec"

    def __init__(self, cfg: TrainConfig, model_cfg: MERTConfig, student: MERTModel, device: torch.device) -> None:
        from mert_fast.train.data2vec import Data2VecPretrainer, EMATeacher

        self.cfg, self.model_cfg = cfg, model_cfg
        top_k = min(cfg.ema_top_k, model_cfg.num_hidden_layers)
        if top_k < cfg.ema_top_k:
            logger.info("data2vec: the model has %d layers; targets average all of them", top_k)
        # made before deepspeed.initialize, from the whole student: a replicated fp32 copy outside the engine
        self.teacher = EMATeacher(student, decay_start=cfg.ema_decay[0], decay_end=cfg.ema_decay[1],
                                  anneal_steps=cfg.ema_anneal_steps, top_k=top_k).to(device)  # fmt: skip
        self.module = Data2VecPretrainer(student, feature_grad_mult=cfg.feature_grad_mult)

    def inputs(self, audio, micro_step, rank, dtype, validation):
        x = step_inputs(
            audio, model_cfg=self.model_cfg, cfg=self.cfg, acoustic_teacher=None, cqt_teacher=None,
            micro_step=micro_step, rank=rank, dtype=torch.float32, mixture=not validation,
            stream="val" if validation else "",
        )  # fmt: skip
        targets = self.teacher.targets(x.audio)  # the student's own input, unmasked
        return x.audio.to(dtype), targets.to(dtype), x.mask, None if validation else x.layer_keep

    def sums(self, result):
        return {"loss": float(result.loss.detach()), "masked": float(result.n_masked), "micro": 1.0,
                "pred_var": float(result.pred_var), "target_var": float(result.target_var)}  # fmt: skip

    def metrics(self, totals):
        micro = max(totals["micro"], 1.0)
        return {"loss": totals["loss"] / max(totals["masked"], 1.0), "pred_var": totals["pred_var"] / micro,
                "target_var": totals["target_var"] / micro, "ema_decay": self.teacher.decay()}  # fmt: skip

    def after_step(self, engine, step):
        self.teacher.update(engine.module.model, step)

    def state_dict(self):
        return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in self.teacher.state_dict().items()}

    def load_state_dict(self, state):
        if state is None:
            raise ValueError("checkpoint: a data2vec run's checkpoint must hold its EMA teacher")
        self.teacher.load_state_dict(state)
