"""Frozen teachers that turn clean audio into per-frame pre-training targets, computed in the training step."""

from mert_fast.model.teachers.align import align_to_frames
from mert_fast.model.teachers.cqt import CQTTeacher
from mert_fast.model.teachers.encodec import EncodecTeacher
from mert_fast.model.teachers.mel_rvq import MelRVQTeacher, fit_mel_rvq

__all__ = ["CQTTeacher", "EncodecTeacher", "MelRVQTeacher", "align_to_frames", "fit_mel_rvq"]
