"""MuQ's objective on the MERT conv student: the Mel-RVQ teacher's codes through one linear classifier per codebook
(:class:`~mert_fast.train.objectives.mert.MERTPretrainer` with ``head="linear"``), no CQT term (the optional
MFCC term as in ``mert``)."""

from __future__ import annotations

from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.config import TrainConfig
from mert_fast.train.objectives.mert import CodebookObjective

__all__ = ["MuQObjective"]


class MuQObjective(CodebookObjective):
    """Masked prediction of ``acoustic``'s codes (a Mel-RVQ teacher) through linear heads; the sums and metrics are
    the MERT objective's."""

    name = "muq"
    head = "linear"

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg: MERTConfig,
        student: MERTModel,
        acoustic: nn.Module,
        mfcc_teacher: nn.Module | None = None,
    ) -> None:
        super().__init__(cfg, model_cfg, student, acoustic, None, mfcc_teacher)
