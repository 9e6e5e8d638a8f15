"""MuQ's objective on the MERT conv student: the Mel-RVQ teacher's codes through one linear classifier per codebook
(:class:`~mert_fast.train.objectives.mert.MERTPretrainer` with ``head="linear"``), no CQT term (build it with
``cqt_teacher=None``; the optional MFCC and clip terms as in ``mert``)."""

from __future__ import annotations

from mert_fast.train.objectives.mert import CodebookObjective

__all__ = ["MuQObjective"]


class MuQObjective(CodebookObjective):
    """Masked prediction of ``acoustic``'s codes (a Mel-RVQ teacher) through linear heads; the sums and metrics are
    the MERT objective's."""

    name = "muq"
    head = "linear"
