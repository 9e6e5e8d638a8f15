"""The pre-training objectives the trainer runs, behind one interface (:class:`~.base.Objective`).

- ``mert``: masked prediction of acoustic-teacher codes through cosine heads + CQT regression (MERT-v1, and MERT-v0
  with k-means codes): :mod:`.mert`;
- ``muq``: Mel-RVQ codes through linear heads, no CQT term (MuQ's objective on the MERT conv student): :mod:`.muq`;
- ``data2vec``: regression of an EMA teacher's averaged top-layer outputs (music2vec): :mod:`.data2vec`.
"""

from __future__ import annotations

from mert_fast.train.objectives.base import Objective, StepBatch, code_entropy, mask_and_mix
from mert_fast.train.objectives.data2vec import Data2VecObjective, Data2VecPretrainer, EMATeacher
from mert_fast.train.objectives.mert import CodebookObjective, MERTPretrainer, PretrainOutput, step_inputs
from mert_fast.train.objectives.muq import MuQObjective

__all__ = [
    "OBJECTIVES",
    "CodebookObjective",
    "Data2VecObjective",
    "Data2VecPretrainer",
    "EMATeacher",
    "MERTPretrainer",
    "MuQObjective",
    "Objective",
    "PretrainOutput",
    "StepBatch",
    "code_entropy",
    "mask_and_mix",
    "step_inputs",
]

#: The objectives by name (``TrainConfig.objective``).
OBJECTIVES = ("mert", "muq", "data2vec")
