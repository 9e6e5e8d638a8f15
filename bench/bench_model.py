"""MERT forward (feature extraction): mert_fast's student against transformers' HubertModel, same weights.

Cases: MERT-95M on the CPU (1 x 5 s, fp32, against HubertModel eager fp32); on the GPU (bench device cuda)
MERT-95M and MERT-330M at 64 x 5 s, mert_fast bf16 against HubertModel eager fp32 and sdpa bf16. Every
implementation's last hidden state is checked against HubertModel eager fp32 before its time is recorded.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.testing import rel_error

transformers = pytest.importorskip("transformers")

BASELINE = "transformers HubertModel eager fp32"
#: bf16 features drift ~1e-2 from fp32 over 12-24 layers; fp32 paths must agree to 1e-4.
BOUND = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    preset: str
    batch: int
    seconds: float = 5.0

    @property
    def label(self) -> str:
        return f"{self.preset} {self.device} {self.batch}x{self.seconds:g}s"


CASES = [
    Case("cpu", "mert-v1-95m", 1),
    Case("cuda", "mert-v1-95m", 64),
    Case("cuda", "mert-v1-330m", 64),
]

_cache: dict = {}


def _models(case: Case):
    key = (case.preset, case.device)
    if key not in _cache:
        _cache.clear()  # one pair of models at a time
        torch.manual_seed(0)
        config = dataclasses.replace(MERTConfig.from_name(case.preset), layerdrop=0.0)
        ours = MERTModel(config).eval()
        hf_config = transformers.HubertConfig(**config.to_hf_dict(), attn_implementation="eager")
        hf = transformers.HubertModel(hf_config).eval()
        hf.load_state_dict(ours.state_dict())
        audio = 0.1 * torch.randn(
            case.batch, round(case.seconds * config.sample_rate), generator=torch.Generator().manual_seed(0)
        )
        ours, hf, audio = ours.to(case.device), hf.to(case.device), audio.to(case.device)
        with torch.no_grad():
            ref = hf(audio).last_hidden_state.float()
        _cache[key] = (ours, hf, audio, ref)
    return _cache[key]


def _run(benchmark, measure, case: Case, implementation: str, fn, out_dtype: torch.dtype) -> None:
    _, _, audio, ref = _models(case)
    benchmark.group = f"mert forward {case.label}"
    benchmark.extra_info.update(
        op="mert_forward", case=case.label, implementation=implementation, baseline=implementation == BASELINE,
        batch=case.batch, clip_seconds=case.seconds,
    )  # fmt: skip
    with torch.no_grad():
        out = fn()
    err = rel_error(out.float(), ref)
    benchmark.extra_info["rel_err_vs_baseline"] = err
    assert err <= BOUND[out_dtype], f"{implementation}: relative error {err:.3e}"
    rounds = 3 if case.device == "cpu" else None
    with torch.no_grad():
        measure(fn, device=case.device, rounds=rounds, warmup=1)
    measure.throughput(case.batch * case.seconds)


def test_mert_fast(benchmark, measure, case):
    ours, _, audio, _ = _models(case)
    dtype = torch.bfloat16 if case.device == "cuda" else torch.float32
    model = ours.to(dtype)
    x = audio.to(dtype)
    _run(
        benchmark,
        measure,
        case,
        f"mert_fast {str(dtype).removeprefix('torch.')}",
        lambda: model(x).last_hidden_state,
        dtype,
    )
    ours.float()


@pytest.mark.parametrize("impl", ["eager-fp32", "sdpa-bf16"])
def test_transformers(benchmark, measure, case, impl):
    _, hf, audio, _ = _models(case)
    if impl == "sdpa-bf16" and case.device != "cuda":
        pytest.skip("bf16 SDPA is the GPU configuration")
    attn, dtype = impl.split("-")
    dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    hf.config._attn_implementation = attn
    model = hf.to(dtype)
    x = audio.to(dtype)
    name = BASELINE if impl == "eager-fp32" else f"transformers HubertModel {attn} bf16"
    try:
        _run(benchmark, measure, case, name, lambda: model(x).last_hidden_state, dtype)
    finally:
        hf.float()
        hf.config._attn_implementation = "eager"
