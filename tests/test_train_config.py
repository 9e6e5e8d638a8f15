"""``train.py --model-size``: a preset's layout and recipe at the ``tiny`` or ``small`` CPU sizes."""

from __future__ import annotations

import pytest

from mert_fast.model.config import PRESETS, MERTConfig
from mert_fast.train.config import TrainConfig, model_config


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_model_size_keeps_the_layout_and_takes_the_sizes(size):
    cfg = model_config(TrainConfig.from_preset("mert-v1-330m", model_size=size))
    small = PRESETS[size]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.conv_dim) == (
        small.hidden_size, small.num_hidden_layers, small.intermediate_size, small.conv_dim)  # fmt: skip
    big = PRESETS["mert-v1-330m"]
    assert (cfg.do_stable_layer_norm, cfg.attention_relax, cfg.sample_rate) == (
        big.do_stable_layer_norm, big.attention_relax, big.sample_rate)  # fmt: skip


def test_small_is_wider_and_deeper_than_tiny_with_the_demo_front_end():
    tiny = model_config(TrainConfig.from_preset("tiny"))
    small = model_config(TrainConfig.from_preset("tiny", model_size="small"))
    assert small.feature_extractor_type == tiny.feature_extractor_type == "logmel"
    assert small.hidden_size == 4 * tiny.hidden_size and small.num_hidden_layers == 2 * tiny.num_hidden_layers
    assert small.hidden_size % small.num_attention_heads == 0
    assert small.num_frames(48000) == tiny.num_frames(48000)


def test_an_unknown_size_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"model_size must be one of full, tiny, small; got 'huge'"):
        TrainConfig.from_preset("tiny", model_size="huge")
    with pytest.raises(ValueError, match=r"size must be one of tiny, small; got 'full'"):
        MERTConfig.from_name("mert-v1-95m").shrunk("full")


def test_freeze_feature_projection_is_a_switch():
    import argparse

    from mert_fast.train.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_args(parser.parse_args([])).freeze_feature_projection is False
    assert config_from_args(parser.parse_args(["--freeze-feature-projection"])).freeze_feature_projection is True
    with pytest.raises(SystemExit):  # a switch takes no value
        parser.parse_args(["--freeze-feature-projection", "no"])
    with pytest.raises(TypeError, match="freeze_feature_projection must be a bool; got 'no'"):
        TrainConfig.from_preset("tiny", freeze_feature_projection="no")
