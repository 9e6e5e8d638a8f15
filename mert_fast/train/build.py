"""What a run is built from: its corpora, its acoustic teacher (fitted on the first run) and its objective."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import (
    CQTTeacher,
    MelRVQTeacher,
    MFCCTeacher,
    fit_kmeans_teacher,
    fit_mel_rvq,
    load_teacher,
)
from mert_fast.train.config import TrainConfig
from mert_fast.train.corpus import AudioCorpus, hold_out, list_audio
from mert_fast.train.engine import DistributedInfo
from mert_fast.train.objectives import CodebookObjective, Data2VecObjective, MuQObjective, Objective
from mert_fast.train.objectives.mert import cqt_bins

__all__ = ["barrier", "build_corpora", "build_objective", "build_teacher"]

logger = logging.getLogger(__name__)


def barrier(dist: DistributedInfo) -> None:
    """Wait for every rank (nothing to wait for in a one-process run)."""
    if dist.world_size > 1:
        torch.distributed.barrier()


def build_corpora(
    cfg: TrainConfig, model_cfg: MERTConfig, out: Path, dist: DistributedInfo
) -> tuple[AudioCorpus, AudioCorpus | None]:
    """The training corpus and the validation one (``val_data``, a held-out fraction of ``data``, or None).

    Without ``data``, rank 0 first generates a synthetic corpus in ``out/corpus`` (once)."""
    source: Any = cfg.data
    if source is None:
        source = out / "corpus"
        if dist.is_main and not (source / "manifest.csv").is_file():
            from mert_fast.synth import make_corpus

            logger.info("no --data: generating a synthetic corpus of %d clips in %s", cfg.synthetic_clips, source)
            make_corpus(
                source, n_clips=cfg.synthetic_clips, seconds=8.0, sample_rate=model_cfg.sample_rate, seed=cfg.seed
            )
        barrier(dist)
        source = source / "manifest.csv"
    val_source: Any = cfg.val_data
    if val_source is None and cfg.val_fraction > 0:
        source, val_source = hold_out(list_audio(source), cfg.val_fraction)
    corpus = AudioCorpus(source, model_cfg.sample_rate, min_seconds=cfg.min_crop_seconds)
    val = AudioCorpus(val_source, model_cfg.sample_rate, min_seconds=cfg.min_crop_seconds) if val_source else None
    if dist.is_main and corpus.bad_files:
        logger.warning("%d unusable files skipped (see the log above)", len(corpus.bad_files))
    return corpus, val


def _fit_teacher(cfg: TrainConfig, corpus: AudioCorpus, directory: Path, dist: DistributedInfo) -> None:
    n = min(len(corpus), cfg.teacher_fit_clips)
    logger.info("fitting the %s teacher on %d clips -> %s", cfg.teacher_type, n, directory)
    clips = (corpus.load(i) for i in range(n))
    if cfg.teacher_type == "kmeans":
        fitted = fit_kmeans_teacher(
            clips, corpus.sample_rate, feature=cfg.kmeans_feature, n_clusters=cfg.teacher_codebook_size,
            seed=cfg.seed, device=dist.device,
        )  # fmt: skip
    else:
        fitted = fit_mel_rvq(
            clips, corpus.sample_rate, n_q=cfg.teacher_codebooks, codebook_size=cfg.teacher_codebook_size,
            steps=cfg.teacher_fit_steps, seed=cfg.seed, device=dist.device,
        )  # fmt: skip
    fitted.save(directory)


def build_teacher(
    cfg: TrainConfig, corpus: AudioCorpus, out: Path, dist: DistributedInfo
) -> tuple[torch.nn.Module, Path]:
    """The acoustic teacher on the device and the file that fingerprints it (checked again on resume)."""
    spec = cfg.teacher
    if spec is not None and spec.startswith("encodec:"):
        from mert_fast.model.teachers.encodec import EncodecTeacher

        directory = Path(spec.split(":", 1)[1])
        teacher = EncodecTeacher.load(directory, map_location=dist.device)
        weights = next(iter(sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))), None)
        if weights is None:
            raise FileNotFoundError(f"teacher: {directory} holds no EnCodec weights (*.safetensors or *.bin)")
    else:
        directory = Path(spec) if spec else out / "teacher"
        if spec is None and dist.is_main and not (directory / "teacher.json").is_file():
            _fit_teacher(cfg, corpus, directory, dist)
        barrier(dist)
        teacher = load_teacher(directory, map_location=dist.device)
        weights = directory / "teacher.safetensors"
    if teacher.sample_rate != corpus.sample_rate:
        raise ValueError(f"teacher: {spec} runs at {teacher.sample_rate} Hz, the model at {corpus.sample_rate} Hz")
    if cfg.objective == "muq" and not isinstance(teacher, MelRVQTeacher):
        raise ValueError(f"teacher: the muq objective predicts Mel-RVQ tokens; {spec} is a {type(teacher).__name__}")
    return teacher, weights


def build_objective(
    cfg: TrainConfig, model_cfg: MERTConfig, corpus: AudioCorpus, out: Path, dist: DistributedInfo
) -> tuple[Objective, MERTModel, Path | None]:
    """The run's objective, its student, and the teacher file its targets depend on (None for data2vec, whose
    teacher is the EMA). Teachers come first (fitting one draws random numbers); the student and the heads are then
    initialised from ``cfg.seed`` alone, the same whether the teacher was fitted or loaded."""
    acoustic = teacher_file = cqt_teacher = mfcc_teacher = None
    if cfg.objective != "data2vec":
        acoustic, teacher_file = build_teacher(cfg, corpus, out, dist)
    if cfg.objective == "mert":
        n_bins = cqt_bins(model_cfg)
        cqt_teacher = CQTTeacher(model_cfg.sample_rate, hop_length=model_cfg.hop_length, n_bins=n_bins).to(dist.device)
    if cfg.mfcc_weight > 0:
        mfcc_teacher = MFCCTeacher(model_cfg.sample_rate, model_cfg.hop_length).to(dist.device)
    torch.manual_seed(cfg.seed)
    student = MERTModel(model_cfg)
    if cfg.freeze_feature_projection:
        student.feature_projection.requires_grad_(False)
    if cfg.objective == "data2vec":
        return Data2VecObjective(cfg, model_cfg, student, dist.device), student, None
    if cfg.objective == "muq":
        return MuQObjective(cfg, model_cfg, student, acoustic, None, mfcc_teacher), student, teacher_file
    return CodebookObjective(cfg, model_cfg, student, acoustic, cqt_teacher, mfcc_teacher), student, teacher_file
