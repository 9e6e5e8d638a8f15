"""Pre-training step throughput of music2vec: mert_fast's data2vec step against the same step from transformers.

One optimizer step of the data2vec objective as
:class:`mert_fast.train.objectives.Data2VecObjective` runs it: ``objective.inputs`` (mask + the EMA teacher's
targets on the unmasked clip, fp32), the student's forward (under autocast on the GPU), backward, gradient clipping,
AdamW, then the EMA update ``objective.teacher.update(objective.module.model, step)`` (what ``after_step`` does with
the engine's module). The baseline, same weights, batch, mask and optimizer: transformers ``Data2VecAudioModel``
(``attn_implementation="sdpa"``) as the student (the mask through ``mask_time_indices`` and the model's own
``masked_spec_embed``) with the same ``final_proj`` and scaled squared error, a second copy as the EMA teacher (run
with ``output_hidden_states``) and fairseq's EMA loop over the parameters (``mul_`` + ``add_``, transformer layers
averaged, the rest copied). Before any time is taken: in eval mode with identical weights, the two students' hidden
states (masked input) and the two teachers' (clean input) agree, and both steps' losses are finite. Extra keys:
``teacher_fraction`` (the EMA targets alone / the step), ``ema_update_ms``; ``mfu`` counts the student's training
FLOPs only (as the trainer logs it), not the teacher's forward. Cases: music2vec-v1 at the ``tiny`` sizes
(:meth:`MERTConfig.shrunk`) 2 x 2 s float32 on the CPU; music2vec-v1 (95M) 8 x 5 s bf16 autocast on the GPU.

The shared timing, optimizer and rate helpers are ``bench/bench_train_step.py``'s.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from bench_train_step import (
    IMPLS,
    LOSS_BOUND,
    Case,
    _adamw,
    _autocast,
    _cached,
    loss_of,
    median_time,
    optimizer_update,
    record_rates,
    time_step,
)
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.testing import rel_error
from mert_fast.train.config import TrainConfig
from mert_fast.train.objectives import Data2VecObjective
from mert_fast.train.objectives.mert import step_inputs

transformers = pytest.importorskip("transformers")


M2V_OP = "train step (music2vec)"
M2V_PRESET = "music2vec-v1"
M2V_BASELINE = "Data2VecAudioModel sdpa + EMA copy (hidden-state targets) + torch EMA loop"
M2V_CASES = [
    Case("cpu", M2V_PRESET, 2, 2.0, size="tiny"),
    Case("cuda", M2V_PRESET, 8, 5.0),
]


@pytest.fixture(params=M2V_CASES, ids=[c.label.replace(" ", "-") for c in M2V_CASES])
def m2v_case(request, device_gate) -> Case:
    device_gate(request.param.device)
    return request.param


def _instance_norm_time(y: torch.Tensor) -> torch.Tensor:
    """``(B, T, H)`` normalised over time per clip and channel, float32 (data2vec's ``instance_norm_target_layer``)."""
    return F.instance_norm(y.float().transpose(1, 2)).transpose(1, 2)


class HFData2VecStudent(nn.Module):
    """``Data2VecAudioModel`` + ``final_proj`` and the same loss as
    :class:`~mert_fast.train.objectives.data2vec.Data2VecHead`: the scaled squared error summed over the masked frames
    (the mask applied by the model's own ``masked_spec_embed`` through ``mask_time_indices``)."""

    def __init__(self, model, final_proj: nn.Linear, loss_scale: float) -> None:
        super().__init__()
        self.model = model
        self.final_proj = copy.deepcopy(final_proj)
        self.loss_scale = loss_scale

    def forward(self, audio: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(audio, mask_time_indices=mask).last_hidden_state
        pred = self.final_proj(hidden[mask]).float()
        return F.mse_loss(pred, targets[mask].float(), reduction="sum") * self.loss_scale


class HFEMATeacher:
    """The EMA teacher as plain PyTorch writes it: a second ``Data2VecAudioModel`` (eval, no grad) and fairseq's
    ``EMAModule`` loop (``mul_(d)`` + ``add_(student, alpha=1 - d)`` per parameter) over the transformer layers and the
    encoder LayerNorm, the other parameters copied (data2vec audio's ``ema_transformer_only``); the same decay
    schedule as :class:`~mert_fast.train.objectives.data2vec.EMATeacher`.

    Targets: the top ``top_k`` entries of ``output_hidden_states``, each instance-normalised over time, averaged.
    These are each layer's output after the residual and the final LayerNorm, where data2vec (and ``EMATeacher``)
    takes the feed-forward block's output before them: the same forward pass and normalisation work, other values,
    so only the teachers' hidden states are compared, never the two sets of targets.
    """

    _AVERAGED = ("encoder.layers.", "encoder.layer_norm.")

    def __init__(self, student_model, cfg: TrainConfig, top_k: int) -> None:
        self.model = copy.deepcopy(student_model).eval().requires_grad_(False)
        self.top_k = top_k
        (self.decay_start, self.decay_end), self.anneal_steps = cfg.ema_decay, cfg.ema_anneal_steps

    def decay(self, step: int) -> float:
        if step >= self.anneal_steps:
            return self.decay_end
        return self.decay_end - (self.decay_end - self.decay_start) * (1.0 - step / self.anneal_steps)

    @torch.no_grad()
    def targets(self, audio: torch.Tensor) -> torch.Tensor:
        hidden = self.model(audio.float(), output_hidden_states=True).hidden_states[-self.top_k :]
        total = _instance_norm_time(hidden[0])
        for h in hidden[1:]:
            total.add_(_instance_norm_time(h))
        return total.div_(self.top_k)

    @torch.no_grad()
    def update(self, student, step: int) -> None:
        d = self.decay(step)
        for (name, ema), param in zip(self.model.named_parameters(), student.parameters(), strict=True):
            if name.startswith(self._AVERAGED):
                ema.mul_(d).add_(param.detach(), alpha=1.0 - d)
            else:
                ema.copy_(param.detach())


@dataclasses.dataclass
class M2VSetup:
    """One music2vec case: our objective (student, EMA teacher) and the transformers baseline, same weights."""

    model_cfg: MERTConfig
    cfg: TrainConfig
    audio: torch.Tensor
    n_params: int
    objective: Data2VecObjective
    hf_teacher: HFEMATeacher
    modules: dict  # impl -> module
    optimizers: dict  # impl -> AdamW


def _build_m2v(case: Case) -> M2VSetup:
    from mert_fast.synth import synth_clip

    model_cfg = MERTConfig.from_name(M2V_PRESET)
    if case.size == "tiny":
        model_cfg = model_cfg.shrunk()
    model_cfg = dataclasses.replace(model_cfg, layerdrop=0.0)  # every layer in every step, in both students
    cfg = TrainConfig.from_preset(M2V_PRESET, model_size=case.size, batch_size=case.batch, crop_seconds=case.seconds,
                                  min_crop_seconds=case.seconds)  # fmt: skip
    sr = model_cfg.sample_rate
    audio = torch.stack([torch.from_numpy(synth_clip(i, case.seconds, sr, seed=0)) for i in range(case.batch)])

    dev = case.device
    torch.manual_seed(0)
    student = MERTModel(model_cfg).to(dev)
    objective = Data2VecObjective(cfg, model_cfg, student, torch.device(dev))
    hf_config = transformers.Data2VecAudioConfig(**model_cfg.to_hf_dict(), attn_implementation="sdpa")
    hf_model = transformers.Data2VecAudioModel(hf_config)
    hf_model.load_state_dict(student.state_dict())  # strict: the same parameter names and shapes
    head = objective.module.head
    base = HFData2VecStudent(hf_model, head.final_proj, head.loss_scale).to(dev)
    hf_teacher = HFEMATeacher(base.model, cfg, objective.teacher.top_k)
    modules = {"mert_fast": objective.module.to(dev), "baseline": base}
    optimizers = {k: _adamw(m, cfg, dev) for k, m in modules.items()}
    n_params = sum(p.numel() for p in student.parameters())
    return M2VSetup(model_cfg, cfg, audio.to(dev), n_params, objective, hf_teacher, modules, optimizers)


def m2v_inputs(s: M2VSetup, impl: str) -> tuple:
    """The step's inputs (micro-step 0: the same mask for both): the objective's for ``mert_fast``; for the
    baseline the same mask from :func:`step_inputs` and its teacher's targets of the same (unmasked) clip."""
    if impl == "mert_fast":
        # dtype float32: autocast casts inside the student (DeepSpeed bf16 would pass bf16 to a bf16 module)
        b = s.objective.inputs(s.audio, 0, rank=0, dtype=torch.float32, validation=False)
        return b.audio, b.targets, b.mask, b.layer_keep
    x = step_inputs(s.audio, model_cfg=s.model_cfg, cfg=s.cfg, acoustic_teacher=None, cqt_teacher=None,
                    micro_step=0, rank=0, dtype=torch.float32)  # fmt: skip
    return x.audio, s.hf_teacher.targets(x.audio), x.mask


def m2v_ema_update(s: M2VSetup, impl: str, step: int) -> None:
    """The EMA update after optimizer step ``step`` (``Data2VecObjective.after_step`` without the engine)."""
    if impl == "mert_fast":
        s.objective.teacher.update(s.objective.module.model, step)
    else:
        s.hf_teacher.update(s.modules["baseline"].model, step)


def m2v_train_step(s: M2VSetup, impl: str, case: Case):
    module, optimizer = s.modules[impl], s.optimizers[impl]
    steps = itertools.count(1)

    def step() -> torch.Tensor:
        batch = m2v_inputs(s, impl)
        with _autocast(case):
            loss = loss_of(module(*batch))
        optimizer_update(loss, module, optimizer, s.cfg.clip_grad)
        m2v_ema_update(s, impl, next(steps))
        return loss.detach()

    return step


def _max_rel_error(ours: tuple, ref: tuple) -> float:
    assert len(ours) == len(ref), f"{len(ours)} hidden states vs the baseline's {len(ref)}"
    return max(rel_error(a.float(), b.float()) for a, b in zip(ours, ref, strict=True))


_hidden_err: dict = {}


def check_m2v(benchmark, s: M2VSetup, case: Case) -> None:
    """Both steps' inputs have the right shapes and finite targets; with identical weights (before any step), in
    eval mode, the students' hidden states on the masked input and the teachers' on the clean input agree."""
    info = benchmark.extra_info
    n_frames, hidden = s.model_cfg.num_frames(s.audio.shape[1]), s.model_cfg.hidden_size
    batches = {impl: m2v_inputs(s, impl) for impl in IMPLS}
    for impl, (_, targets, mask, *_) in batches.items():
        assert targets.shape == (case.batch, n_frames, hidden), f"{impl}: targets {tuple(targets.shape)}"
        assert bool(torch.isfinite(targets).all()), f"{impl}: non-finite targets"
        assert bool(mask.any()), f"{impl}: no masked frame"
    assert torch.equal(batches["mert_fast"][2], batches["baseline"][2]), "masks differ"
    if case not in _hidden_err:
        _hidden_err[case] = _m2v_agreement(s, case, batches["mert_fast"][2])
    student_err, teacher_err = _hidden_err[case]
    info["rel_err_hidden_mert_fast_vs_baseline"] = student_err
    info["rel_err_teacher_hidden_mert_fast_vs_baseline"] = teacher_err


def _m2v_agreement(s: M2VSetup, case: Case, mask: torch.Tensor) -> tuple[float, float]:
    ours, base = s.modules["mert_fast"].model, s.modules["baseline"].model
    with torch.no_grad():
        with _autocast(case):  # the students as the step runs them
            ours.eval()
            base.eval()
            try:
                mine = ours(s.audio, output_hidden_states=True, mask_time_indices=mask).hidden_states
                ref = base(s.audio, output_hidden_states=True, mask_time_indices=mask).hidden_states
            finally:
                ours.train()
                base.train()
        student_err = _max_rel_error(mine, ref)
        # the teachers in float32, as the step runs them; the same weights as the students until the first update
        mine = s.objective.teacher.model(s.audio, output_hidden_states=True).hidden_states
        ref = s.hf_teacher.model(s.audio, output_hidden_states=True).hidden_states
        teacher_err = _max_rel_error(mine, ref)
    bound = LOSS_BOUND[case.device]
    assert student_err <= bound, f"students' hidden states: relative error {student_err:.2e} > {bound:.0e}"
    assert teacher_err <= bound, f"teachers' hidden states: relative error {teacher_err:.2e} > {bound:.0e}"
    return student_err, teacher_err


@pytest.mark.parametrize("impl", IMPLS)
def test_music2vec_step(benchmark, measure, m2v_case, impl):
    case = m2v_case
    s = _cached(case, _build_m2v)
    name = M2V_BASELINE if impl == "baseline" else f"mert_fast Data2VecObjective step {case.precision}"
    benchmark.group = f"train step {case.label}"
    info = benchmark.extra_info
    info.update(
        op=M2V_OP, case=case.label, implementation=name, baseline=impl == "baseline", preset=case.preset,
        model_size=case.size, batch=case.batch, clip_seconds=case.seconds, precision=case.precision, layerdrop=0.0,
        n_params_student=s.n_params, frames_per_clip=s.model_cfg.num_frames(s.audio.shape[1]),
        ema_top_k=s.objective.teacher.top_k,
    )  # fmt: skip
    check_m2v(benchmark, s, case)
    if impl == "mert_fast":  # the table's rel. err column: the students' hidden states, same weights and input
        info["rel_err_vs_baseline"] = info["rel_err_hidden_mert_fast_vs_baseline"]

    median = time_step(measure, m2v_train_step(s, impl, case), case, name)
    if not median:  # --benchmark-disable
        return
    repeats = 3 if case.device == "cpu" else 20
    if impl == "mert_fast":
        teacher_s = median_time(lambda: s.objective.teacher.targets(s.audio), case.device, repeats)
    else:
        teacher_s = median_time(lambda: s.hf_teacher.targets(s.audio), case.device, repeats)
    ema_s = median_time(lambda: m2v_ema_update(s, impl, 1), case.device, repeats)  # the same work at any step
    info["ema_update_ms"] = ema_s * 1e3
    info["ema_update_fraction"] = ema_s / median
    record_rates(info, case, impl, median, model_cfg=s.model_cfg, n_params=s.n_params, teacher_s=teacher_s)


# ---------------------------------------------------------------------------------------------- data loading
