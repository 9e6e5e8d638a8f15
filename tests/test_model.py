"""The MERT student against transformers' HubertModel / Data2VecAudioModel, padding exactness and loading."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from model_utils import perturb_weights

from mert_fast.model.config import PRESETS, MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.testing import assert_rel_close

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    conv_dim=[32] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_bias=False,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    layer_norm_eps=1e-5,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
)


def _hf_hubert(tmp_path, stable: bool):
    cfg = transformers.HubertConfig(
        **SMALL, feat_extract_norm="group", do_stable_layer_norm=stable, attn_implementation="eager"
    )
    model = transformers.HubertModel(cfg).eval()
    perturb_weights(model)
    model.save_pretrained(tmp_path)
    return model


def _hf_data2vec(tmp_path):
    kw = {k: v for k, v in SMALL.items() if k != "num_conv_pos_embeddings"}
    cfg = transformers.Data2VecAudioConfig(
        **{**kw, "conv_bias": True}, num_conv_pos_embeddings=3, conv_pos_kernel_size=7, attn_implementation="eager"
    )
    model = transformers.Data2VecAudioModel(cfg).eval()
    perturb_weights(model)
    model.save_pretrained(tmp_path)
    return model


def _compare_states(ours, theirs, n_layers: int, stable: bool) -> None:
    assert len(ours.hidden_states) == n_layers + 1
    assert_rel_close(ours.last_hidden_state, theirs.last_hidden_state, bound=1e-5, name="last_hidden_state")
    # all states up to the last layer's input are the same tensors in every transformers version; the last one
    # is the encoder output (after the final LayerNorm in the pre-LN layout), as MERT's code returns it
    for i in range(n_layers):
        assert_rel_close(ours.hidden_states[i], theirs.hidden_states[i], bound=1e-5, name=f"hidden_states[{i}]")
    assert_rel_close(ours.hidden_states[-1], theirs.last_hidden_state, bound=1e-5, name="hidden_states[-1]")


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN-95M-layout", "pre-LN-330M-layout"])
def test_parity_with_transformers_hubert(tmp_path, stable):
    hf = _hf_hubert(tmp_path, stable)
    ours = MERTModel.from_pretrained(tmp_path)
    assert ours.config.do_stable_layer_norm == stable
    audio = 0.1 * torch.randn(2, 24000 + 137)
    with torch.no_grad():
        theirs = hf(audio, output_hidden_states=True)
        mine = ours(audio, output_hidden_states=True)
    _compare_states(mine, theirs, SMALL["num_hidden_layers"], stable)


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN-95M-layout", "pre-LN-330M-layout"])
def test_masked_frames_match_transformers_hubert(tmp_path, stable):
    """The mask embedding replaces the projected features of the masked frames before the positional conv, as in
    HF's HubertModel (the pre-training input of MERTModel.encode)."""
    hf = _hf_hubert(tmp_path, stable)
    ours = MERTModel.from_pretrained(tmp_path)
    audio = 0.1 * torch.randn(2, 24000 + 137)
    frames = ours.config.num_frames(audio.shape[-1])
    mask = torch.rand(2, frames, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        theirs = hf(audio, mask_time_indices=mask, output_hidden_states=True)
        mine = ours(audio, mask_time_indices=mask, output_hidden_states=True)
        unmasked = ours(audio).last_hidden_state
    _compare_states(mine, theirs, SMALL["num_hidden_layers"], stable)
    assert not torch.allclose(mine.last_hidden_state, unmasked)  # the mask changed what the encoder saw


def test_encode_streams_the_hidden_states_forward_returns():
    """``on_state`` (what the chunked extraction keeps) sees the same states, in the same order, as
    ``output_hidden_states`` returns, padded frames zeroed; the features come back only with a feature_grad_mult."""
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
    model = MERTModel(config).eval()
    perturb_weights(model)
    audio = 0.1 * torch.randn(2, 9000)
    mask = torch.ones_like(audio, dtype=torch.bool)
    mask[1, 6000:] = False
    streamed: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        out = model(audio, attention_mask=mask, output_hidden_states=True)
        feats, frame_mask = model.extract_features(audio, mask)
        enc = model.encode(feats, frame_mask=frame_mask, on_state=lambda i, x: streamed.append((i, x)))
        scaled = model.encode(feats, frame_mask=frame_mask, feature_grad_mult=0.1)
    assert [i for i, _ in streamed] == list(range(config.num_hidden_layers + 1))
    for (_, state), ref in zip(streamed, out.hidden_states, strict=True):
        assert torch.equal(state, ref)
    assert torch.equal(enc.last_hidden_state, out.last_hidden_state) and enc.hidden_states is None
    assert enc.features is None and out.features is None and torch.equal(scaled.features, feats)
    assert torch.count_nonzero(out.last_hidden_state[1, int(frame_mask[1].sum()) :]) == 0


@pytest.mark.parametrize("stable", [False, True])
def test_save_pretrained_loads_in_transformers(tmp_path, stable):
    config = MERTConfig.from_hf_dict({**SMALL, "do_stable_layer_norm": stable, "model_type": "hubert"})
    ours = MERTModel(config).eval()
    perturb_weights(ours)
    ours.save_pretrained(tmp_path / "ours")
    hf, info = transformers.HubertModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    again = MERTModel.from_pretrained(tmp_path / "ours")
    audio = 0.1 * torch.randn(1, 9000)
    with torch.no_grad():
        a, b, c = ours(audio, output_hidden_states=True), again(audio), hf.eval()(audio, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=0)
    _compare_states(a, c, SMALL["num_hidden_layers"], stable)


def test_parity_with_transformers_data2vec_and_roundtrip(tmp_path):
    hf = _hf_data2vec(tmp_path / "hf")
    ours = MERTModel.from_pretrained(tmp_path / "hf")
    assert ours.config.pos_conv_style == "data2vec" and ours.config.conv_pos_layers == 3
    audio = 0.1 * torch.randn(2, 16000 + 71)
    with torch.no_grad():
        _compare_states(ours(audio, output_hidden_states=True), hf(audio, output_hidden_states=True), 3, False)
    ours.save_pretrained(tmp_path / "ours")
    hf2, info = transformers.Data2VecAudioModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(hf2.eval()(audio).last_hidden_state, hf(audio).last_hidden_state)


def test_music2vec_preset_builds_the_data2vec_layout(tmp_path):
    config = MERTConfig.from_name(
        "music2vec-v1",
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        conv_dim=(32,) * 7,
        num_conv_pos_embedding_groups=4,
        num_hidden_layers=1,
    )
    model = MERTModel(config).eval()
    model.save_pretrained(tmp_path)
    hf, info = transformers.Data2VecAudioModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    audio = 0.1 * torch.randn(1, 8000)
    with torch.no_grad():
        assert_rel_close(model(audio).last_hidden_state, hf.eval()(audio).last_hidden_state, bound=1e-5)


# ---------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("preset", ["tiny", "music2vec-tiny", "pre-ln-tiny"])
def test_padded_batch_matches_clips_alone(preset):
    overrides = dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    if preset == "music2vec-tiny":
        config = dataclasses.replace(
            PRESETS["tiny"], feat_extract_norm="layer", pos_conv_style="data2vec", conv_pos_layers=3,
            conv_pos_kernel_size=5, **overrides,
        )  # fmt: skip
    elif preset == "pre-ln-tiny":
        config = dataclasses.replace(PRESETS["tiny"], do_stable_layer_norm=True, **overrides)
    else:
        config = dataclasses.replace(PRESETS["tiny"], **overrides)
    model = MERTModel(config).eval()
    perturb_weights(model)
    # lengths covering several remainders mod 320 (and the receptive field's 400)
    lengths = [12000, 12000 - 1, 12000 - 319, 9000 + 80, 6400 + 399, 400, 5000 + 160]
    batch = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros_like(batch, dtype=torch.bool)
    clips = [0.1 * torch.randn(n) for n in lengths]
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
        batch[i, len(clip) :] = 0.5 * torch.randn(max(lengths) - len(clip))  # garbage in the padding must not leak
        mask[i, : len(clip)] = True
    with torch.no_grad():
        out = model(batch, attention_mask=mask, output_hidden_states=True)
        for i, clip in enumerate(clips):
            alone = model(clip[None], output_hidden_states=True)
            n = config.num_frames(len(clip))
            assert alone.last_hidden_state.shape[1] == n
            assert int(out.frame_mask[i].sum()) == n
            for j, (state, ref) in enumerate(zip(out.hidden_states, alone.hidden_states, strict=True)):
                assert_rel_close(state[i, :n], ref[0], bound=1e-5, name=f"clip {i} state {j}")
                assert torch.count_nonzero(state[i, n:]) == 0


def test_frame_counts():
    config = PRESETS["mert-v1-95m"]
    assert config.hop_length == 320 and config.receptive_field == 400 and config.frame_rate == 75
    assert config.num_frames(5 * 24000) == 374 and config.num_frames(30 * 24000) == 2249
    assert config.num_frames(399) == 0 and config.num_frames(400) == 1
    assert PRESETS["mert-v0"].frame_rate == 50


# ---------------------------------------------------------------------------------------------- loading


def _saved_tiny(tmp_path) -> tuple[MERTModel, dict]:
    model = MERTModel(PRESETS["tiny"]).eval()
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    return model, load_file(str(tmp_path / "model.safetensors"))


def _write(tmp_path, state):
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "model.safetensors"))


def test_loading_errors_name_the_keys(tmp_path):
    _, state = _saved_tiny(tmp_path)
    key = "encoder.layers.1.feed_forward.output_dense.bias"
    broken = {k: v for k, v in state.items() if k != key}
    _write(tmp_path, broken)
    with pytest.raises(ValueError, match=f"missing keys: {key}"):
        MERTModel.from_pretrained(tmp_path)
    _write(tmp_path, {**state, "encoder.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="unexpected keys: encoder.extra.weight"):
        MERTModel.from_pretrained(tmp_path)
    _write(tmp_path, {**state, key: torch.zeros(5)})
    with pytest.raises(ValueError, match=rf"wrong shapes: {key}: checkpoint \(5,\)"):
        MERTModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        MERTModel.from_pretrained(tmp_path / "nope")


def test_weight_norm_key_styles_and_sharded_bin(tmp_path):
    model, state = _saved_tiny(tmp_path)
    base = "encoder.pos_conv_embed.conv."
    old = {k: v for k, v in state.items() if "parametrizations" not in k}
    old[base + "weight_g"] = state[base + "parametrizations.weight.original0"]
    old[base + "weight_v"] = state[base + "parametrizations.weight.original1"]
    old = {"hubert." + k: v for k, v in old.items()}  # a prefixed checkpoint
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(old)
    half = len(keys) // 2
    torch.save({k: old[k] for k in keys[:half]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: old[k] for k in keys[half:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 + (i >= half)}-of-00002.bin" for i, k in enumerate(keys)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = MERTModel.from_pretrained(tmp_path)
    audio = 0.1 * torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).last_hidden_state, model(audio).last_hidden_state, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- config and misc


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_attention_heads"):
        MERTConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="feat_extract_norm"):
        MERTConfig(feat_extract_norm="batch")
    with pytest.raises(ValueError, match="hidden_dropout"):
        MERTConfig(hidden_dropout=1.5)
    with pytest.raises(ValueError, match="conv_kernel"):
        MERTConfig(conv_kernel=(10, 3))
    with pytest.raises(ValueError, match="preset"):
        MERTConfig.from_name("mert-v2")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_roundtrip_through_config_json(tmp_path, name):
    config = PRESETS[name]
    config.to_json_file(tmp_path / "config.json")
    assert MERTConfig.from_json_file(tmp_path / "config.json") == config


def test_mert_remote_code_config_fields():
    cfg = MERTConfig.from_hf_dict(
        {"model_type": "mert_model", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
         "intermediate_size": 4096, "do_stable_layer_norm": True, "attention_relax": 32.0, "sample_rate": 24000,
         "feature_extractor_cqt": False}
    )  # fmt: skip
    assert cfg.attention_relax == 32.0 and cfg.sample_rate == 24000 and cfg.do_stable_layer_norm
    assert MERTConfig.from_hf_dict({"model_type": "mert_model", "attention_relax": -1.0}).attention_relax is None
    with pytest.raises(ValueError, match="feature_extractor_cqt"):
        MERTConfig.from_hf_dict({"model_type": "mert_model", "feature_extractor_cqt": True})


def test_bad_inputs():
    model = MERTModel(PRESETS["tiny"]).eval()
    with pytest.raises(ValueError, match="mono"):
        model(torch.zeros(2, 2, 1000))
    with pytest.raises(ValueError, match="at least 400"):
        model(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 1000), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="attention_mask must match"):
        model(torch.zeros(2, 1000), attention_mask=torch.ones(2, 999, dtype=torch.bool))
    gappy = torch.ones(1, 1000, dtype=torch.bool)
    gappy[0, 500] = False
    with pytest.raises(ValueError, match="prefix"):
        model(torch.zeros(1, 1000), attention_mask=gappy)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                                 feat_proj_dropout=0.0)  # fmt: skip
    model = MERTModel(config).train()
    audio = 0.1 * torch.randn(2, 3000)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.gradient_checkpointing_enable(enable)
        model(audio).last_hidden_state.square().sum().backward()
        grads.append([p.grad.clone() for name, p in model.named_parameters() if name != "masked_spec_embed"])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward(dtype):
    model = MERTModel(PRESETS["tiny"]).eval()
    audio = 0.1 * torch.randn(2, 5000)
    with torch.no_grad():
        ref = model(audio).last_hidden_state
        out = model.to(dtype)(audio.to(dtype)).last_hidden_state
    assert out.dtype == dtype
    assert_rel_close(out, ref, bound=5e-2)


# ---------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"model\.safetensors: not a readable safetensors weight file \(0 bytes"),
        (b"this is not a weight file at all", r"model\.safetensors: not a readable safetensors weight file"),
        (None, r"model\.safetensors: not a readable safetensors weight file"),  # truncated
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_unreadable_weights_name_the_file(tmp_path, content, match):
    _saved_tiny(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2] if content is None else content)
    with pytest.raises(ValueError, match=match) as err:
        MERTModel.from_pretrained(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", r"config\.json: not valid JSON: .* at line 1, column 2"),
        ("[1, 2]", r"config\.json: expected a JSON object of config fields; got a JSON list"),
        ('{"layer_norm_eps": "1e-5"}', r"config\.json: layer_norm_eps must be a number; got '1e-5' \(str\)"),
        ('{"num_hidden_layers": 2.5}', r"config\.json: num_hidden_layers must be an integer; got 2\.5"),
        ('{"do_stable_layer_norm": "yes"}', r"config\.json: do_stable_layer_norm must be true or false"),
        ('{"conv_dim": "512"}', r"config\.json: conv_dim must be a list of integers"),
        ('{"num_conv_pos_embeddings": "abc"}', r"config\.json: num_conv_pos_embeddings must be an integer"),
        ('{"deepnorm": true}', r"config\.json: deepnorm=True \(DeepNorm residual scaling\) is not supported"),
    ],
    ids=["not-json", "list", "eps-string", "float-layers", "bool-string", "conv-dim", "pos-conv", "deepnorm"],
)
def test_bad_config_json_is_one_line_naming_file_and_field(tmp_path, text, match):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        MERTModel.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "config.json") in str(err.value)


def test_cli_prints_loading_errors_without_traceback(tmp_path, capsys):
    from mert_fast.cli import main

    _saved_tiny(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text('{"layer_norm_eps": "1e-5"}')
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(tmp_path), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("mert-fast extract: error: ") and "config.json: layer_norm_eps must be a number" in err


def test_deepnorm_false_is_accepted():
    assert MERTConfig.from_hf_dict({"model_type": "mert_model", "deepnorm": False}) == MERTConfig()


def test_public_imports():
    import mert_fast
    import mert_fast.model
    from mert_fast import MERTConfig as TopConfig
    from mert_fast import MERTModel as TopModel
    from mert_fast.model import MERTModel as ModelModel

    assert TopModel is ModelModel is MERTModel and TopConfig is MERTConfig
    assert {"MERTModel", "MERTConfig"} <= set(mert_fast.__all__) and "MERTModel" in dir(mert_fast.model)


def test_pre_ln_last_hidden_state_convention_of_the_installed_transformers(tmp_path):
    """The convention, spelled out. mert_fast (like MERT's published code, written for transformers 4.x) returns
    the encoder output as ``hidden_states[-1]``: in the pre-LN layout that is the last layer's output *after* the
    final encoder LayerNorm, equal to ``last_hidden_state``. transformers 4.x's HubertModel does the same;
    transformers 5.x's returns the last layer's output *before* that LayerNorm as ``hidden_states[-1]`` (its
    ``last_hidden_state`` still has it)."""
    hf = _hf_hubert(tmp_path, stable=True)
    ours = MERTModel.from_pretrained(tmp_path)
    audio = 0.1 * torch.randn(1, 24000 + 137)
    with torch.no_grad():
        theirs = hf(audio, output_hidden_states=True)
        mine = ours(audio, output_hidden_states=True)
    assert_rel_close(mine.hidden_states[-1], mine.last_hidden_state, bound=0, name="ours: hidden_states[-1]")
    assert_rel_close(mine.last_hidden_state, theirs.last_hidden_state, bound=1e-5, name="last_hidden_state")
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        with torch.no_grad():
            normed = hf.encoder.layer_norm(theirs.hidden_states[-1])
        assert_rel_close(normed, mine.hidden_states[-1], bound=1e-5, name="LN(transformers 5 hidden_states[-1])")
        assert (theirs.hidden_states[-1] - mine.hidden_states[-1]).norm() > 0.1 * mine.hidden_states[-1].norm()
    else:
        assert_rel_close(theirs.hidden_states[-1], mine.hidden_states[-1], bound=1e-5, name="hidden_states[-1]")
