"""The student's initialisation: HF Hubert's ``_init_weights`` for a model built from a config, none for one whose
weights are loaded, and a healthy activation scale through the conv front end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import INITIALIZER_RANGE, MERTModel


def _config(name: str) -> MERTConfig:
    return MERTConfig.from_name("mert-v1-95m").shrunk(name) if name in ("tiny", "small") else MERTConfig.from_name(name)


def _conv_stds(model: MERTModel, audio: torch.Tensor) -> list[float]:
    stds, x = [], audio[:, None, :]
    with torch.no_grad():
        for layer in model.feature_extractor.conv_layers:
            x = layer(x, None)
            stds.append(float(x.std()))
    return stds


@pytest.mark.parametrize("name", ["tiny", "small", "mert-v1-95m"])
def test_fresh_model_keeps_its_scale_through_the_conv_front_end(name):
    """Bound: every conv layer's output has a standard deviation in [0.1, 10].

    Why: the conv features enter a LayerNorm with eps 1e-5 (``layer_norm_eps``). A variance of at least
    0.01 = 1000 eps keeps eps's share of the normalisation under 0.1%, so the projection sees the features and not
    eps; GroupNorm fixes layer 0's scale near GELU's output of a unit normal (about 0.6), so [0.1, 10] also allows a
    drift of 6x per stack either way, far more than Kaiming's fan-in draw leaves. PyTorch's default draw shrinks the
    scale about 3.5x per layer, to about 4e-4 at layer 7: that fails the bound (checked below).
    """
    torch.manual_seed(0)
    cfg = _config(name)
    audio = torch.randn(2, cfg.sample_rate) * 0.1
    stds = _conv_stds(MERTModel(cfg), audio)
    assert all(0.1 <= s <= 10 for s in stds), stds
    assert stds[-1] ** 2 >= 1000 * cfg.layer_norm_eps
    torch.manual_seed(0)
    default = _conv_stds(MERTModel(cfg, init_weights=False), audio)
    assert default[-1] < 0.01, default  # the bound distinguishes the two draws


@torch.no_grad()
def test_weights_are_drawn_as_hf_hubert_draws_them():
    torch.manual_seed(0)
    cfg = _config("mert-v1-95m")
    model = MERTModel(cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 6 * cfg.num_hidden_layers
    for m in linears:
        assert abs(float(m.weight.std()) / INITIALIZER_RANGE - 1) < 0.05
        assert abs(float(m.weight.mean())) < 0.1 * INITIALIZER_RANGE
        assert not m.bias.any()
    for m in model.feature_extractor.conv_layers:
        fan_in = m.conv.in_channels * m.conv.kernel_size[0]
        assert abs(float(m.conv.weight.std()) / math.sqrt(2.0 / fan_in) - 1) < 0.1  # Kaiming normal, ReLU gain
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None]
    assert norms and all(bool((m.weight == 1).all()) and not m.bias.any() for m in norms)
    embed = model.masked_spec_embed
    assert float(embed.min()) >= 0 and float(embed.max()) < 1 and abs(float(embed.mean()) - 0.5) < 0.05
    pos = model.encoder.pos_conv_embed.conv
    assert not pos.bias.any()
    # the weight-normed positional conv keeps PyTorch's default draw (HF's in-place draw does not reach weight_g/v)
    bound = 1 / math.sqrt(pos.in_channels // pos.groups * pos.kernel_size[0])
    v = pos.parametrizations.weight.original1
    assert float(v.abs().max()) <= bound and float(v.std()) > 0.5 * bound / math.sqrt(3)


@torch.no_grad()
def test_the_data2vec_layout_gets_kaiming_positional_convs():
    torch.manual_seed(0)
    model = MERTModel(MERTConfig.from_name("music2vec-v1").shrunk())
    for layer in model.encoder.pos_conv_embed.layers:
        fan_in = layer.conv.in_channels // layer.conv.groups * layer.conv.kernel_size[0]
        assert abs(float(layer.conv.weight.std()) / math.sqrt(2.0 / fan_in) - 1) < 0.1
        assert not layer.conv.bias.any()


def test_loading_weights_does_not_draw_them(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = MERTModel(_config("tiny"))
    model.save_pretrained(tmp_path)

    def refuse(self):
        raise AssertionError("init_weights ran for a model whose weights are loaded")

    monkeypatch.setattr(MERTModel, "init_weights", refuse)
    loaded = MERTModel.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(AssertionError, match="init_weights ran"):
        MERTModel(_config("tiny"))


@torch.no_grad()
def test_same_weight_statistics_as_transformers_hubert():
    """Every tensor's mean and standard deviation as in HF's ``HubertModel`` built from the same configuration."""
    transformers = pytest.importorskip("transformers")
    cfg = _config("tiny")
    torch.manual_seed(0)
    theirs = transformers.HubertModel(transformers.HubertConfig(**cfg.to_hf_dict())).state_dict()
    ours = MERTModel(cfg).state_dict()
    rename = lambda k: k.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )
    theirs = {rename(k): v for k, v in theirs.items()}
    ours = {rename(k): v for k, v in ours.items()}
    assert set(ours) == set(theirs)
    for k, a in ours.items():
        b = theirs[k].float()
        if k.endswith("weight_g"):  # the norm of the default-drawn direction: compare the scale only
            assert abs(float(a.mean()) / float(b.mean()) - 1) < 0.1, k
        elif float(b.std()) == 0 or a.numel() == 1:
            assert torch.equal(a, b), k
        else:  # two draws of the same law: within about 4 standard errors of each estimate
            tol = 4 * math.sqrt(2 / a.numel())
            assert abs(float(a.std()) / float(b.std()) - 1) < 0.02 + tol, k
            assert abs(float(a.mean()) - float(b.mean())) < tol * float(b.std()), k
