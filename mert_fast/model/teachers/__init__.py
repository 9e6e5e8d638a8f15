"""Frozen teachers that turn clean audio into per-frame pre-training targets, computed in the training step."""

from mert_fast.model.teachers.align import align_to_frames
from mert_fast.model.teachers.cqt import CQTTeacher
from mert_fast.model.teachers.encodec import EncodecTeacher
from mert_fast.model.teachers.kmeans import KMeansTeacher, fit_kmeans_teacher, load_teacher
from mert_fast.model.teachers.mel_rvq import MelRVQTeacher, fit_mel_rvq
from mert_fast.model.teachers.mfcc import MFCCTeacher

__all__ = [
    "CQTTeacher",
    "EncodecTeacher",
    "KMeansTeacher",
    "MFCCTeacher",
    "MelRVQTeacher",
    "align_to_frames",
    "fit_kmeans_teacher",
    "fit_mel_rvq",
    "load_teacher",
]
