"""music2vec / data2vec pieces: the EMA teacher (schedule, update, ZeRO-3 gather), its targets, the regression loss."""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.testing import assert_rel_close, rel_error
from mert_fast.train.masking import compute_mask
from mert_fast.train.objectives.data2vec import Data2VecHead, Data2VecPretrainer, EMATeacher
from tests.pretrain_utils import ROOT, env

_NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)


def _config(layout: str = "music2vec", **overrides) -> MERTConfig:
    """A few-layer model: the music2vec (data2vec-audio, post-LN) layout shrunk, or the pre-LN MERT layout."""
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, conv_dim=(16,) * 7,
                 num_conv_pos_embedding_groups=4, num_hidden_layers=3, **_NO_DROPOUT)  # fmt: skip
    small.update(overrides)
    if layout == "music2vec":
        return MERTConfig.from_name("music2vec-v1", conv_pos_layers=2, conv_pos_kernel_size=5, **small)
    return MERTConfig.from_name("tiny", do_stable_layer_norm=True, num_conv_pos_embeddings=8, **small)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter (LayerNorm affines included) by fresh noise, as an optimizer step would."""
    gen = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.dtype))


# ---------------------------------------------------------------------------------------------- schedule and EMA


def test_decay_schedule_and_argument_checks():
    torch.manual_seed(0)
    student = MERTModel(_config())
    teacher = EMATeacher(student, decay_start=0.999, decay_end=0.9999, anneal_steps=30000, top_k=2)
    assert teacher.num_updates == 0 and teacher.decay() == pytest.approx(0.999, abs=1e-15)
    assert teacher.decay(15000) == pytest.approx(0.99945, abs=1e-12)
    assert teacher.decay(7500) == pytest.approx(0.999225, abs=1e-12)
    assert teacher.decay(30000) == 0.9999 and teacher.decay(10**6) == 0.9999
    steps = [teacher.decay(n) for n in range(0, 30001, 1000)]
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))  # strictly increasing up to the end
    assert EMATeacher(student, anneal_steps=0, top_k=1).decay(0) == 0.9999
    with pytest.raises(ValueError, match="top_k"):
        EMATeacher(student, top_k=4)  # the model has 3 layers
    with pytest.raises(ValueError, match="top_k"):
        EMATeacher(student, top_k=0)
    with pytest.raises(ValueError, match="decay_end"):
        EMATeacher(student, decay_end=1.5, top_k=1)
    with pytest.raises(ValueError, match="anneal_steps"):
        EMATeacher(student, anneal_steps=-1, top_k=1)
    with pytest.raises(TypeError, match="student"):
        EMATeacher(torch.nn.Linear(2, 2), top_k=1)
    with pytest.raises(ValueError, match="step"):
        teacher.update(student, step=0)


@pytest.mark.parametrize("transformer_only", [True, False])
@pytest.mark.parametrize("student_dtype", [torch.float32, torch.bfloat16])
def test_update_is_the_float64_ema_of_the_student(transformer_only, student_dtype):
    torch.manual_seed(1)
    student = MERTModel(_config(layout="music2vec" if transformer_only else "pre-ln"))
    student.encoder.layers[0].attention.q_proj.bias.requires_grad_(False)  # frozen: copied, as fairseq
    teacher = EMATeacher(student, decay_start=0.9, decay_end=0.99, anneal_steps=3, top_k=2,
                         transformer_only=transformer_only)  # fmt: skip
    student.to(student_dtype)
    # a buffer on both sides: buffers are copied, never averaged
    student.register_buffer("counter", torch.zeros(5))
    teacher.model.register_buffer("counter", torch.full((5,), -1.0))
    ref = {n: p.detach().double().clone() for n, p in teacher.model.named_parameters()}
    averaged = lambda n: not transformer_only or n.startswith(("encoder.layers.", "encoder.layer_norm."))
    for k in range(1, 6):  # crosses the end of the anneal
        _perturb(student, seed=10 + k)
        student.counter.fill_(k)
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        teacher.update(student)
        d = 0.99 - 0.09 * (1 - k / 3) if k < 3 else 0.99
        assert teacher.num_updates == k and teacher.decay() == pytest.approx(d, abs=1e-15)
        for n, p in student.named_parameters():
            assert torch.equal(p, before[n]), n  # the student is read, never written
            s = p.detach().double()
            frozen = n == "encoder.layers.0.attention.q_proj.bias"
            ref[n] = d * ref[n] + (1 - d) * s if averaged(n) and not frozen else s.clone()
        assert torch.equal(teacher.model.counter, student.counter.float())
    for n, p in teacher.model.named_parameters():
        assert p.dtype == torch.float32 and not p.requires_grad and p.grad is None, n
        assert rel_error(p, ref[n]) < 2e-7, n  # one fp32 rounding per step
        if not averaged(n):
            assert torch.equal(p, student.get_parameter(n).float()), n
    # the averaged weights really lag the student
    w = "encoder.layers.2.feed_forward.output_dense.weight"
    assert rel_error(teacher.model.get_parameter(w), student.get_parameter(w)) > 1e-3
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_update_rejects_another_architecture():
    torch.manual_seed(2)
    teacher = EMATeacher(MERTModel(_config()), top_k=1)
    with pytest.raises(ValueError, match="student"):
        teacher.update(MERTModel(_config(hidden_size=64)))


# ---------------------------------------------------------------------------------------------- targets


def _reference_targets(model: MERTModel, audio: torch.Tensor, top_k: int) -> torch.Tensor:
    """Float64 targets computed layer by layer without hooks: attention written out, each FFN output taken by hand,
    instance-normalised with explicit moments, the top ``top_k`` averaged."""
    m = copy.deepcopy(model).double()
    cfg = m.config
    feats, _ = m.extract_features(audio.double())
    x = m.feature_projection(feats)
    x = x + m.encoder.pos_conv_embed(x, None)
    if not cfg.do_stable_layer_norm:
        x = m.encoder.layer_norm(x)
    b, t, h = x.shape
    heads = cfg.num_attention_heads

    def attend(att, y):
        split = lambda z: z.view(b, t, heads, h // heads).transpose(1, 2)
        q, k, v = split(att.q_proj(y)), split(att.k_proj(y)), split(att.v_proj(y))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // heads), dim=-1)
        return att.out_proj((p @ v).transpose(1, 2).reshape(b, t, h))

    def ffn(ff, y):
        return ff.output_dense(F.gelu(ff.intermediate_dense(y)))

    outs = []
    for layer in m.encoder.layers:
        if cfg.do_stable_layer_norm:
            x = x + attend(layer.attention, layer.layer_norm(x))
            f = ffn(layer.feed_forward, layer.final_layer_norm(x))
            x = x + f
        else:
            a = layer.layer_norm(x + attend(layer.attention, x))
            f = ffn(layer.feed_forward, a)
            x = layer.final_layer_norm(a + f)
        outs.append(f)
    normed = []
    for f in outs[-top_k:]:
        mean = f.mean(dim=1, keepdim=True)
        var = ((f - mean) ** 2).mean(dim=1, keepdim=True)
        normed.append((f - mean) / torch.sqrt(var + 1e-5))
    return torch.stack(normed).mean(0)


@pytest.mark.parametrize("layout,length,top_k", [("music2vec", 6400, 2), ("pre-ln", 5577, 3)])
def test_targets_match_a_float64_layer_by_layer_computation(layout, length, top_k):
    torch.manual_seed(3)
    student = MERTModel(_config(layout))
    _perturb(student, seed=4)
    teacher = EMATeacher(student, top_k=top_k)
    audio = 0.1 * torch.randn(2, length, generator=_gen(5))
    out = teacher.targets(audio)
    n = student.config.num_frames(length)
    assert out.shape == (2, n, 32) and out.dtype == torch.float32 and not out.requires_grad
    assert_rel_close(out, _reference_targets(teacher.model, audio, top_k), dtype=torch.float32, name="targets")
    # each channel of each layer is normalised over time, so the average has mean 0 over time
    assert float(out.mean(1).abs().max()) < 1e-5
    assert all(p.grad is None for p in teacher.parameters())


def test_targets_of_a_padded_batch_are_those_of_each_clip_alone():
    torch.manual_seed(6)
    student = MERTModel(_config())
    teacher = EMATeacher(student, top_k=2)
    lengths = [6400, 4321]
    clips = [0.1 * torch.randn(n, generator=_gen(7 + i)) for i, n in enumerate(lengths)]
    batch = torch.zeros(2, max(lengths))
    mask = torch.zeros(2, max(lengths), dtype=torch.bool)
    for i, clip in enumerate(clips):
        batch[i, : len(clip)], mask[i, : len(clip)] = clip, True
    batch[1, lengths[1] :] = torch.randn(max(lengths) - lengths[1], generator=_gen(9))  # garbage must not leak
    out = teacher.targets(batch, attention_mask=mask)
    for i, clip in enumerate(clips):
        n = student.config.num_frames(len(clip))
        assert_rel_close(out[i, :n], teacher.targets(clip[None])[0], bound=1e-4, name=f"clip {i}")
        assert torch.all(out[i, n:] == 0)


# ---------------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("frames,hidden", [(64, 32), (37, 48)])
def test_head_loss_and_gradients_match_float64(frames, hidden):
    torch.manual_seed(8)
    head = Data2VecHead(hidden)
    h = torch.randn(frames, hidden, generator=_gen(9), requires_grad=True)
    y = torch.randn(frames, hidden, generator=_gen(10)) * 0.7 + 0.1
    out = head(h, y)
    grad = torch.randn((), generator=_gen(11))
    out.loss_sum.backward(grad)
    w64 = head.final_proj.weight.detach().double().requires_grad_()
    b64 = head.final_proj.bias.detach().double().requires_grad_()
    h64 = h.detach().double().requires_grad_()
    pred = h64 @ w64.T + b64
    ref = ((pred - y.double()) ** 2).sum() / math.sqrt(hidden)
    ref.backward(grad.double())
    assert out.n == frames and out.loss_sum.dtype == torch.float32
    assert_rel_close(out.loss_sum, ref, dtype=torch.float32, name="loss")
    assert_rel_close(h.grad, h64.grad, dtype=torch.float32, name="d hidden")
    assert_rel_close(head.final_proj.weight.grad, w64.grad, dtype=torch.float32, name="d weight")
    assert_rel_close(head.final_proj.bias.grad, b64.grad, dtype=torch.float32, name="d bias")
    std = lambda z: torch.sqrt(z.var(dim=0, unbiased=True) + 1e-6).mean()
    assert_rel_close(out.target_var, std(y.double()), dtype=torch.float32, name="target_var")
    assert_rel_close(out.pred_var, std(pred.detach()), dtype=torch.float32, name="pred_var")
    assert 0.6 < float(out.target_var) < 0.8 and not out.pred_var.requires_grad
    with pytest.raises(ValueError, match="targets"):
        head(h, y[:-1])


def _pretrainer_inputs(module: Data2VecPretrainer, teacher: EMATeacher, length: int = 6400):
    audio = 0.1 * torch.randn(2, length, generator=_gen(12))
    n = module.model.config.num_frames(length)
    mask = compute_mask(2, n, mask_prob=0.65, span=4, generator=_gen(13))
    return audio, teacher.targets(audio), mask


def test_pretrainer_regresses_the_targets_at_masked_frames():
    torch.manual_seed(14)
    student = MERTModel(_config())
    teacher = EMATeacher(student, top_k=2)
    module = Data2VecPretrainer(student)
    audio, targets, mask = _pretrainer_inputs(module, teacher)
    out = module(audio, targets, mask)
    assert out.n_masked == int(mask.sum()) and torch.equal(out.loss_sum, out.loss.detach())
    # the same as the student's own masked forward through the head
    hidden = student(audio, mask_time_indices=mask).last_hidden_state
    ref = module.head(hidden[mask], targets[mask])
    assert_rel_close(out.loss, ref.loss_sum, bound=1e-6, name="loss")
    assert float(out.target_var) > 0.5 and float(out.pred_var) > 0
    changed = targets.clone()
    changed[~mask] += 3.0
    assert torch.equal(module(audio, changed, mask).loss, out.loss)  # unmasked frames do not count
    changed[mask] += 3.0
    assert float(module(audio, changed, mask).loss_sum) > float(out.loss_sum)
    out.loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="frames"):
        module(audio, targets[:, :-1], mask)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_resumes_the_schedule():
    torch.manual_seed(15)
    student = MERTModel(_config())
    teacher = EMATeacher(student, decay_start=0.9, decay_end=0.99, anneal_steps=10, top_k=2)
    for k in range(3):
        _perturb(student, seed=16 + k)
        teacher.update(student)
    buffer = io.BytesIO()
    torch.save(teacher.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(99)
    fresh = EMATeacher(MERTModel(_config()), decay_start=0.9, decay_end=0.99, anneal_steps=10, top_k=2)
    fresh.load_state_dict(state)
    assert fresh.num_updates == 3 and fresh.decay() == teacher.decay()
    _perturb(student, seed=20)
    teacher.update(student)
    fresh.update(student)
    assert fresh.num_updates == 4 and fresh.decay() == teacher.decay() == pytest.approx(0.99 - 0.09 * 0.6)
    for (n, a), b in zip(teacher.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert (a == b) if n.endswith("_extra_state") else torch.equal(a, b), n


# ---------------------------------------------------------------------------------------------- ZeRO-3

_ZERO3_SCRIPT = r"""
import json, sys
import torch
from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.config import TrainConfig
from mert_fast.train.objectives.data2vec import Data2VecPretrainer, EMATeacher
from mert_fast.train.engine import build_engine, engine_config, init_distributed
from mert_fast.train.masking import compute_mask
import deepspeed

init_distributed()
cfg = MERTConfig.from_name("music2vec-v1", hidden_size=32, num_attention_heads=2, intermediate_size=48,
                           conv_dim=(16,) * 7, num_conv_pos_embedding_groups=4, num_hidden_layers=3,
                           conv_pos_layers=2, conv_pos_kernel_size=5, hidden_dropout=0.0, attention_dropout=0.0,
                           feat_proj_dropout=0.0, layerdrop=0.0)
torch.manual_seed(0)
student = MERTModel(cfg)
teacher = EMATeacher(student, decay_start=0.5, decay_end=0.5, anneal_steps=0, top_k=2)
start = {n: p.detach().double().clone() for n, p in teacher.model.named_parameters()}
module = Data2VecPretrainer(student)
train_cfg = TrainConfig(lr=1e-2, warmup_steps=0, batch_size=2, max_steps=10, clip_grad=0.0)
engine, _, _ = build_engine(module, train_cfg, engine_config(train_cfg, sys.argv[1], 1))
partitioned = all(hasattr(p, "ds_id") and p.numel() == 0 for p in student.parameters())
audio = 0.1 * torch.randn(2, 6400, generator=torch.Generator().manual_seed(1))
mask = compute_mask(2, cfg.num_frames(6400), mask_prob=0.65, span=4, generator=torch.Generator().manual_seed(2))
out = engine(audio, teacher.targets(audio), mask, None)
dtype = str(next(student.parameters()).dtype)
engine.backward(out.loss)
engine.step()
teacher.update(engine.module.model)
with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
    after = {n: p.detach().double().clone() for n, p in student.named_parameters()}
rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-30))
errors = {}
for n, p in teacher.model.named_parameters():
    averaged = n.startswith(("encoder.layers.", "encoder.layer_norm."))
    errors[n] = rel(p.double(), 0.5 * start[n] + 0.5 * after[n] if averaged else after[n])
flat = lambda d: torch.cat([t.flatten() for t in d.values()])
moved = rel(flat(after), flat(start))
still = all(hasattr(p, "ds_id") and p.numel() == 0 for p in student.parameters())
rebuilt = EMATeacher(engine.module.model, top_k=2)  # made from the partitioned student: gathers it
rebuilt_err = max(rel(p.double(), after[n]) for n, p in rebuilt.model.named_parameters())
print("RESULT " + json.dumps(dict(partitioned=partitioned, still=still, loss=float(out.loss_sum), moved=moved,
                                  max_error=max(errors.values()), rebuilt_error=rebuilt_err,
                                  n=len(errors), updates=teacher.num_updates, dtype=dtype)))
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_update_gathers_a_zero3_partitioned_student(tmp_path, precision):
    """A real one-process ZeRO-3 engine on the CPU (a subprocess: it owns the process group): one optimizer step,
    then the EMA update from the partitioned student equals the EMA of the gathered weights (bf16 ones with bf16)."""
    pytest.importorskip("deepspeed")
    ds_config = json.loads((ROOT / "configs/ds_zero3.json").read_text())
    ds_config["bf16"] = {"enabled": precision == "bf16"}
    # partition every parameter: by default ZeRO-3 keeps parameters under 1e5 elements (all of a tiny model) whole
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    cmd = [sys.executable, "-c", _ZERO3_SCRIPT, str(tmp_path / "ds.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"ZeRO-3 run failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["dtype"] == ("torch.bfloat16" if precision == "bf16" else "torch.float32"), result
    assert result["partitioned"] and result["still"], result  # the student really is partitioned throughout
    assert math.isfinite(result["loss"]) and result["moved"] > 1e-3, result  # the step changed the weights
    assert result["updates"] == 1 and result["n"] == len(list(MERTModel(_config()).parameters())), result
    assert result["max_error"] < 1e-6 and result["rebuilt_error"] < 1e-7, result
