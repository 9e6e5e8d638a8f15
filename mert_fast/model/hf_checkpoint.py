"""Hugging Face checkpoint I/O for the MERT student: local HF model directories and HF-style state dicts.

Reading: ``config.json`` plus ``model.safetensors`` / ``pytorch_model.bin``, sharded (``*.index.json``) or not;
keys with a model prefix (``hubert.``, ``data2vec_audio.``, ...) and either weight-norm key style (``weight_g`` /
``weight_v`` or ``parametrizations.weight.original0/1``, or a fused ``weight``). Loading is strict: a missing,
unexpected or misshapen key is a ``ValueError`` listing them. Writing: ``config.json`` + ``model.safetensors``
that ``transformers.HubertModel`` (``Data2VecAudioModel`` for the data2vec layout) loads with no missing or
unexpected keys. :meth:`MERTModel.from_pretrained` and :meth:`MERTModel.save_pretrained` call these.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mert_fast.model.config import MERTConfig

__all__ = ["load_hf_state_dict", "normalise_hf_keys", "read_hf_weights", "read_pretrained", "save_pretrained"]

logger = logging.getLogger(__name__)

_PREFIXES = ("hubert.", "data2vec_audio.", "mert.", "model.")


def read_pretrained(
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    config: MERTConfig | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> tuple[MERTConfig, dict[str, torch.Tensor]]:
    """The configuration and weights of a local HF model directory, or of a state dict (``config`` required).

    ``config`` given overrides the directory's ``config.json``."""
    if isinstance(path, Mapping):
        if config is None:
            raise ValueError("config is required when loading from a state dict")
        return config, dict(path)
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"path: no such model directory: {directory}")
    if config is None:
        cfg_file = directory / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"path: {directory} has no config.json")
        config = MERTConfig.from_json_file(cfg_file)
    return config, read_hf_weights(directory, map_location)


def load_hf_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load HF-style weights into ``model`` strictly (keys normalised by :func:`normalise_hf_keys`)."""
    state = normalise_hf_keys(dict(state))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong)}")
        raise ValueError("checkpoint does not match the model: " + " | ".join(parts))
    model.load_state_dict(state, strict=True)


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model.config`` as ``config.json`` and its weights as ``model.safetensors`` into the folder ``path``.

    A model with the log-mel front end (``feature_extractor_type="logmel"``) is written the same way; it loads with
    :meth:`MERTModel.from_pretrained` only (transformers has no such front end), which is logged."""
    from safetensors.torch import save_file

    if model.config.feature_extractor_type != "conv":
        logger.warning(
            "%s: the %s front end loads in mert_fast only (MERTModel.from_pretrained); transformers' HubertModel "
            "expects the conv feature encoder", path, model.config.feature_extractor_type,
        )  # fmt: skip
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / "config.json")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def normalise_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a common model prefix and map the old weight-norm names (``weight_g``/``weight_v``) or a fused weight
    onto the parametrization names this model (and current torch/transformers) uses."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    base = "encoder.pos_conv_embed.conv."
    renames = {
        base + "weight_g": base + "parametrizations.weight.original0",
        base + "weight_v": base + "parametrizations.weight.original1",
    }
    state = {renames.get(k, k): v for k, v in state.items()}
    fused = base + "weight"
    if fused in state and base + "parametrizations.weight.original0" not in state:
        weight = state.pop(fused)
        state[base + "parametrizations.weight.original0"] = torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True)
        state[base + "parametrizations.weight.original1"] = weight
    return state


def read_hf_weights(directory: Path, map_location) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files in ``directory``: safetensors first, then PyTorch, sharded or not."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                with open(index, encoding="utf-8") as f:
                    files = sorted({str(v) for v in json.load(f)["weight_map"].values()})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(
                    f"{index}: expected a JSON object whose 'weight_map' maps weight names to files "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        elif (directory / single_name).is_file():
            files = [single_name]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(_read_weight_file(directory / name, index, map_location))
        return state
    raise FileNotFoundError(f"path: {directory} has no model.safetensors or pytorch_model.bin (sharded or not)")


def _read_weight_file(file: Path, index: Path, map_location) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: weight file missing (named in {index})")
    try:
        if file.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(file), device=str(map_location))
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # safetensors and torch raise their own types for truncated or foreign bytes
        kind = "safetensors" if file.name.endswith(".safetensors") else "PyTorch"
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"{file}: not a readable {kind} weight file ({file.stat().st_size} bytes; truncated, empty or "
            f"another format): {type(exc).__name__}: {reason}"
        ) from None
