"""Feature extraction at scale: ``mert-fast extract`` against a plain transformers extraction loop.

Two workloads, each end to end (decode + model + write, files on disk) and model-only (decoded audio in memory):
a folder of 5 s FLAC clips and one 10-minute FLAC track. Every hidden state is kept, as the loop keeps them.

- mert_fast: :func:`mert_fast.model.extract_files.run_extraction` (end to end: padded batches of similar-length
  clips, decoding the next batch in threads while the model runs, atomic writes) and
  :func:`mert_fast.model.extract_tensors.extract` (model-only: full context with the chunked conv encoder; for the
  track also 5 s windows, hop 2.5 s);
- the baseline: transformers ``HubertModel`` (SDPA attention; eager attention would need ~90 GB for the track
  at 95M), the same weights, one file at a time: ``soundfile`` + ``soxr`` decode, forward with
  ``output_hidden_states``, ``np.save``;
- decode alone (soundfile + soxr at 24 kHz), the ceiling of any end-to-end pipeline: where its audio-s/s falls
  below the model's, decode is the limit (``bound_by`` in the end-to-end rows).

Cases: on the CPU the ``tiny`` preset (fp32), since MERT-95M runs ~2 audio-s/s on two cores and its cost there is
the model's alone; on the GPU (bench device cuda) MERT-95M in bf16 (the baseline in bf16 too). Every model
output is checked against the baseline in fp32 before its time is recorded. Peak memory: ``peak_extra_mib``
(CUDA, from the ``measure`` fixture) or ``peak_rss_extra_mib`` (CPU, model-only: measured in a fresh child
process: the peak RSS during the call (``VmHWM``, restarted through ``/proc/self/clear_refs``) over the RSS
before it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from mert_fast.audio import load_audio, synth_demo
from mert_fast.model.config import MERTConfig
from mert_fast.model.extract_files import run_extraction
from mert_fast.model.extract_tensors import extract
from mert_fast.model.mert import MERTModel
from mert_fast.testing import rel_error

transformers = pytest.importorskip("transformers")

SR = 24000
BASELINE = "transformers HubertModel sdpa loop"
#: Relative error allowed against the baseline in fp32 (bf16 features drift ~1e-2 over 12 layers).
BOUND = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    preset: str
    workload: str  # "clips" (a folder of count x seconds) or "track" (one file)
    count: int
    seconds: float
    batch_size: int = 8

    @property
    def label(self) -> str:
        if self.workload == "clips":
            what = f"{self.count}x{self.seconds:g}s clips"
        else:
            what = f"{self.seconds / 60:g}min track"
        return f"{self.preset} {self.device} {what}"

    @property
    def audio_seconds(self) -> float:
        return self.count * self.seconds

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


CASES = [
    Case("cpu", "tiny", "clips", 32, 5.0),
    Case("cpu", "tiny", "track", 1, 600.0),
    Case("cuda", "mert-v1-95m", "clips", 256, 5.0, batch_size=64),
    Case("cuda", "mert-v1-95m", "track", 1, 600.0),
]


# ---------------------------------------------------------------------------------------------- data and models

_files: dict[Case, tuple[Path, list[Path]]] = {}
_models: dict = {}
#: audio-s/s measured in this session per (case label, stage), for the end-to-end rows' ``bound_by``.
_rates: dict[tuple[str, str], float] = {}


def _waves(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    n = round(case.seconds * SR)
    music = synth_demo(SR, case.seconds).numpy()
    return [(music + 0.02 * rng.standard_normal(n)).astype(np.float32) for _ in range(case.count)]


def _folder(case: Case) -> tuple[Path, list[Path]]:
    """FLAC files of the case, written once per session (44.1 kHz stereo for the track: resampling counts)."""
    if case not in _files:
        root = Path(tempfile.mkdtemp(prefix="mert-fast-bench-"))
        paths = []
        for i, wave in enumerate(_waves(case)):
            path = root / f"{i:04d}.flac"
            if case.workload == "track":
                wave = soxr.resample(wave, SR, 44100)
                sf.write(path, np.stack([wave, 0.8 * wave], axis=1), 44100)
            else:
                sf.write(path, wave, SR)
            paths.append(path)
        _files[case] = (root, paths)
    return _files[case]


def _pair(case: Case):
    """(mert_fast model, transformers model) with the same random weights, on the case's device and dtype."""
    key = (case.preset, case.device)
    if key not in _models:
        _models.clear()
        torch.manual_seed(0)
        config = dataclasses.replace(MERTConfig.from_name(case.preset), layerdrop=0.0)
        ours = MERTModel(config).eval()
        hf = transformers.HubertModel(transformers.HubertConfig(**config.to_hf_dict(), attn_implementation="sdpa"))
        hf.load_state_dict(ours.state_dict())
        _models[key] = (ours.to(case.device, case.dtype), hf.eval().to(case.device, case.dtype))
    return _models[key]


_refs: dict = {}


def _reference(case: Case, audio: torch.Tensor) -> torch.Tensor:
    """Last hidden state of the baseline in fp32 for ``audio`` ``(L,)``: what every output is checked against."""
    key = (case, audio.shape[-1], float(audio[:1000].sum()))
    if key not in _refs:
        _, hf = _pair(case)
        hf.float()
        try:
            with torch.no_grad():
                _refs[key] = hf(audio.float().to(case.device)[None]).last_hidden_state[0].float().cpu()
        finally:
            hf.to(case.dtype)
    return _refs[key]


def _check(benchmark, case: Case, out: torch.Tensor, audio: torch.Tensor, dtype: torch.dtype) -> None:
    err = rel_error(out.float().cpu(), _reference(case, audio))
    benchmark.extra_info["rel_err_vs_baseline_fp32"] = err
    assert err <= BOUND[dtype], f"relative error {err:.3e} against the baseline in fp32"


def _info(benchmark, case: Case, implementation: str, stage: str, **extra) -> None:
    benchmark.group = f"extract {case.label} {stage}"
    benchmark.extra_info.update(
        op="extract", case=f"{case.label} {stage}", implementation=implementation,
        baseline=implementation == BASELINE, stage=stage, files=case.count, clip_seconds=case.seconds, **extra,
    )  # fmt: skip


def _record(measure, case: Case, stage: str) -> None:
    measure.throughput(case.audio_seconds)
    rate = measure.benchmark.extra_info.get("audio_seconds_per_s")
    if rate:
        _rates[(case.label, stage)] = rate


# ---------------------------------------------------------------------------------------------- CPU peak memory

_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import bench_extract as b
case = b.Case(**json.loads(sys.argv[1]))
fn = b._model_only_fn(case, sys.argv[2])
def status(key):  # this process's own memory, in kB (ru_maxrss would include the parent's, from fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # restart the peak: set-up peaks must not hide the call's
fn()
print(json.dumps((status("VmHWM") - base) / 1024))
"""


def _cpu_peak_extra_mib(case: Case, impl: str) -> float | None:
    """Peak RSS one model-only call adds, in a fresh process (so earlier cases' peaks do not hide it)."""
    if not sys.platform.startswith("linux"):
        return None
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",  # freed buffers go back to the OS: repeatable peaks
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", _CHILD.format(here=str(HERE)), json.dumps(dataclasses.asdict(case)), impl],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory child failed: {result.stderr[-2000:]}")
    return round(float(result.stdout.strip().splitlines()[-1]), 1)


def _model_only_fn(case: Case, impl: str):
    """A no-argument call running ``impl`` on the case's decoded audio (also used by the peak-memory child)."""
    ours, hf = _pair(case)
    waves = [torch.from_numpy(w) for w in _waves(case)]
    if impl == "transformers":
        clips = [w.to(case.device, case.dtype)[None] for w in waves]

        def run():
            with torch.no_grad():
                return [hf(x, output_hidden_states=True).hidden_states[-1][0] for x in clips]

        return run
    window_s = 5.0 if impl == "mert_fast-window" else None
    if case.workload == "track":
        track = waves[0].to(case.device, case.dtype)
        return lambda: [extract(ours, track, window_s=window_s)[-1]]
    batches = []
    for i in range(0, len(waves), case.batch_size):
        batches.append(torch.stack(waves[i : i + case.batch_size]).to(case.device, case.dtype))  # equal lengths
    return lambda: [o[-1] for b in batches for o in extract(ours, b)]


# ---------------------------------------------------------------------------------------------- benchmarks


def test_decode(benchmark, measure, case):
    """soundfile + soxr to 24 kHz mono, one file after another: the ceiling of any end-to-end pipeline."""
    _, paths = _folder(case)
    _info(benchmark, case, "decode (soundfile + soxr)", "decode only")
    waves = [load_audio(p, SR) for p in paths]
    assert all(abs(w.shape[-1] - round(case.seconds * SR)) <= 1 for w in waves)
    measure(lambda: [load_audio(p, SR) for p in paths], device="cpu", rounds=3, warmup=0)
    _record(measure, case, "decode only")


@pytest.mark.parametrize("impl", ["mert_fast", "mert_fast-window", "transformers"])
def test_model_only(benchmark, measure, case, impl):
    if impl == "mert_fast-window" and case.workload != "track":
        pytest.skip("windows matter for long tracks only")
    name = {"mert_fast": "mert_fast extract (full context)", "mert_fast-window": "mert_fast extract (5 s windows)"}
    name = name.get(impl, BASELINE)
    _info(benchmark, case, name, "model only")
    fn = _model_only_fn(case, impl)
    audio = torch.from_numpy(_waves(case)[0])
    with torch.no_grad():
        first = fn()[0]
    if impl == "mert_fast-window":
        full = _model_only_fn(case, "mert_fast")()[0]
        benchmark.extra_info["rel_err_vs_full_context"] = rel_error(first.float(), full.float())
        benchmark.extra_info["rel_err_vs_baseline_fp32"] = rel_error(first.float().cpu(), _reference(case, audio))
    else:
        _check(benchmark, case, first, audio, case.dtype)
    if case.device == "cpu":
        benchmark.extra_info["peak_rss_extra_mib"] = _cpu_peak_extra_mib(case, impl)
    measure(fn, device=case.device, rounds=1 if case.workload == "track" else 3, warmup=0)
    _record(measure, case, f"model only {impl}")


@pytest.mark.parametrize("impl", ["mert_fast", "transformers"])
def test_end_to_end(benchmark, measure, case, impl):
    root, paths = _folder(case)
    ours, hf = _pair(case)
    out = Path(tempfile.mkdtemp(prefix="mert-fast-bench-out-"))

    def clear() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    if impl == "mert_fast":
        name = "mert-fast extract (decode + model + write)"

        def run():
            run_extraction([root], out, ours, "bench", model_sha256="bench", batch_size=case.batch_size,
                           progress=False)  # fmt: skip

        written = lambda p: np.load(out / f"{p.name}.npy")[-1]
    else:
        name = BASELINE

        def run():
            for p in paths:
                x = load_audio(p, SR).to(case.device, case.dtype)
                with torch.no_grad():
                    states = hf(x[None], output_hidden_states=True).hidden_states
                np.save(out / f"{p.name}.npy", torch.stack([s[0] for s in states]).float().cpu().numpy())

        written = lambda p: np.load(out / f"{p.name}.npy")[-1]
    _info(benchmark, case, name, "end to end")
    clear()
    run()
    _check(benchmark, case, torch.from_numpy(written(paths[0])), load_audio(paths[0], SR), case.dtype)
    measure(run, device=case.device, rounds=1 if case.workload == "track" else 3, warmup=0, setup=clear)
    _record(measure, case, f"end to end {impl}")
    shutil.rmtree(out, ignore_errors=True)
    decode = _rates.get((case.label, "decode only"))
    model = _rates.get((case.label, "model only mert_fast" if impl == "mert_fast" else "model only transformers"))
    if decode and model:
        benchmark.extra_info.update(
            decode_audio_seconds_per_s=decode,
            model_audio_seconds_per_s=model,
            bound_by="decode" if decode < model else "model",
        )
