"""``mert-fast export``: a training checkpoint -> an HF directory of the student (fp32 master weights).

The weights come from DeepSpeed's own consolidation (``zero_to_fp32``), which reads every rank's ZeRO-1/2/3
partition of the fp32 master copy, so a bf16 run exports its full-precision weights and a ZeRO-3 run its gathered
shards; nothing needs a GPU or a process group. The layout is the model config's (``HubertModel`` for MERT and
MERT-v0, ``Data2VecAudioModel`` for music2vec) and loads with no missing or unexpected keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mert_fast._io import write_json
from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.checkpoint import find_checkpoint, read_meta

__all__ = ["export_checkpoint"]

logger = logging.getLogger(__name__)

#: Where the student sits in the training module (``MERTPretrainer.model``).
_STUDENT_PREFIX = "model."


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the student of ``source`` (a checkpoint, a ``checkpoints`` directory or a run directory: its newest
    checkpoint) to ``out_dir`` as ``config.json`` + ``model.safetensors``; returns ``out_dir``.

    Also writes ``training.json`` there: the checkpoint's step, run settings and teacher.

    Raises:
        FileNotFoundError: no checkpoint at ``source``.
        ValueError: the checkpoint's weights do not form the student its config describes.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = find_checkpoint(source)
    meta = read_meta(checkpoint)
    config = MERTConfig.from_hf_dict(meta["model_config"])
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    student = {k[len(_STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(_STUDENT_PREFIX)}
    if not student:
        raise ValueError(f"checkpoint: {checkpoint} holds no student weights (no key starts with {_STUDENT_PREFIX!r})")
    model = MERTModel(config)
    model.load_hf_state_dict(student)
    out = Path(out_dir)
    model.save_pretrained(out)
    info = {k: meta[k] for k in ("step", "run", "teacher", "teacher_sha256", "dtype") if k in meta}
    write_json(out / "training.json", {"checkpoint": str(checkpoint), **info})
    logger.info("exported %s (step %s) -> %s", checkpoint, meta["step"], out)
    return out
