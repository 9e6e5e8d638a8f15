"""What one training step feeds the student: teachers see the clean crop, targets are time-aligned with it, and the
student's input is the mixed crop (``mert_fast.train.objectives.mert.step_inputs``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mert_fast.model.config import PRESETS
from mert_fast.model.teachers.cqt import CQTTeacher
from mert_fast.train.config import TrainConfig
from mert_fast.train.objectives.mert import step_inputs

SR, HOP = 24000, 320


class _Recorder(nn.Module):
    """An acoustic teacher at 25 Hz (hop 960, as the Mel-RVQ teacher's 4 stacked 240-sample frames) that records its
    input and labels each 960-sample window 1 where it holds the crop's loudest sample, else 0."""

    label_rate = SR / 960

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        self.seen.append(audio.clone())
        n = -(-audio.shape[1] // 960)
        padded = torch.nn.functional.pad(audio, (0, n * 960 - audio.shape[1]))
        loudest = padded.abs().argmax(dim=1) // 960
        codes = torch.zeros(audio.shape[0], n, 2, dtype=torch.int64)
        codes[torch.arange(audio.shape[0]), loudest] = 1
        return codes


def _inputs(audio: torch.Tensor, teacher: nn.Module, cqt: nn.Module | None, micro_step: int = 3, **overrides):
    cfg = dataclasses.replace(TrainConfig(), **{"mixture_prob": 1.0, **overrides})
    return step_inputs(audio, model_cfg=PRESETS["tiny"], cfg=cfg, acoustic_teacher=teacher, cqt_teacher=cqt,
                       micro_step=micro_step, rank=0)  # fmt: skip


def test_teachers_see_the_clean_crop_and_the_student_the_mixed_one():
    gen = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.randn(4, 3 * SR, generator=gen)
    teacher = _Recorder()
    cqt = CQTTeacher()
    out = _inputs(clean.clone(), teacher, cqt)
    (seen,) = teacher.seen
    assert torch.equal(seen, clean), "the acoustic teacher must get the clean crop"
    n = PRESETS["tiny"].num_frames(clean.shape[1])
    assert torch.equal(out.cqt, cqt(clean)[:, :n]), "CQT targets must come from the clean crop"
    assert not torch.equal(out.audio, clean), "with mixture_prob 1 the student's input is mixed"
    # and the mixture is what the student gets: without it the student's input is the clean crop itself
    plain = _inputs(clean.clone(), _Recorder(), None, mixture_prob=0.0)
    assert torch.equal(plain.audio, clean)


def test_targets_are_time_aligned_with_the_crop():
    """A click at a known sample: the CQT frame with the most energy and the frames labelled 1 by a 25 Hz teacher
    (repeated x3 to 75 Hz) lie at the click's student frame, floor(sample / 320), for clicks anywhere in the crop."""
    n_samples = 3 * SR + 123
    n = PRESETS["tiny"].num_frames(n_samples)
    clicks = [500, 4321, 24000, 40007, 60001, n_samples - 2000]
    audio = torch.zeros(len(clicks), n_samples)
    for i, s in enumerate(clicks):
        audio[i, s] = 1.0
    out = _inputs(audio, _Recorder(), CQTTeacher(), mixture_prob=0.0)
    assert out.codes.shape == (len(clicks), n, 2) and out.cqt.shape[:2] == (len(clicks), n)
    for i, s in enumerate(clicks):
        frame = s // HOP
        # the CQT of a click is spread over the longest filters; its peak frame is the click's
        assert abs(int(out.cqt[i].sum(dim=1).argmax()) - frame) <= 1, (s, int(out.cqt[i].sum(dim=1).argmax()))
        labelled = torch.nonzero(out.codes[i, :, 0]).flatten().tolist()
        assert labelled == [t for t in range(3 * (s // 960), 3 * (s // 960) + 3) if t < n], (s, labelled)
        assert frame in labelled, (s, frame, labelled)  # a 25 Hz label covers the click's 75 Hz frame


def test_masks_and_mixture_depend_on_the_step_not_on_the_teachers():
    gen = torch.Generator().manual_seed(1)
    clean = 0.1 * torch.randn(3, 2 * SR, generator=gen)
    a = _inputs(clean.clone(), _Recorder(), None, micro_step=5)
    b = _inputs(clean.clone(), _Recorder(), CQTTeacher(), micro_step=5)
    c = _inputs(clean.clone(), _Recorder(), None, micro_step=6)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.mask, c.mask)


def test_teacher_view_second_gives_both_crops_of_a_pair_the_second_crops_targets():
    """``teacher_view="second"`` (pairs of renders, e.g. a mixture and its top part's stem): the teachers hear crops
    1, 1, 3, 3 of a batch of 4, so crops 2j and 2j + 1 share crop 2j + 1's codes and CQT, while the student still
    hears its own crop; a batch that is not pairs is refused."""
    gen = torch.Generator().manual_seed(1)
    clean = 0.1 * torch.randn(4, 2 * SR + 77, generator=gen)
    teacher, cqt = _Recorder(), CQTTeacher()
    out = _inputs(clean.clone(), teacher, cqt, mixture_prob=0.0, paired_renders=True, teacher_view="second")
    (seen,) = teacher.seen
    second = clean[[1, 1, 3, 3]]
    assert torch.equal(seen, second), "the acoustic teacher must hear each pair's second crop"
    n = PRESETS["tiny"].num_frames(clean.shape[1])
    assert torch.equal(out.cqt, cqt(second)[:, :n])
    assert torch.equal(out.codes[0], out.codes[1]) and torch.equal(out.codes[2], out.codes[3])
    assert torch.equal(out.audio, clean), "the student hears its own crop"
    own = _inputs(clean.clone(), _Recorder(), cqt, mixture_prob=0.0, paired_renders=True)
    assert not torch.equal(own.cqt[0], own.cqt[1]), "by default each crop gets its own targets"
    with pytest.raises(ValueError, match="audio: teacher_view 'second' needs pairs of crops; got a batch of 3"):
        _inputs(clean[:3].clone(), _Recorder(), None, paired_renders=True, teacher_view="second")


def test_teacher_view_needs_pairs_and_a_codebook_objective():
    with pytest.raises(ValueError, match="teacher_view must be one of own, second; got 'first'"):
        TrainConfig(teacher_view="first")
    with pytest.raises(ValueError, match="teacher_view: 'second' hears the second render of the pairs"):
        TrainConfig(teacher_view="second")
    with pytest.raises(ValueError, match="teacher_view: the data2vec teacher hears the student's input"):
        TrainConfig(teacher_view="second", paired_renders=True, objective="data2vec")
    assert TrainConfig(teacher_view="second", paired_renders=True, objective="muq").teacher_view == "second"
