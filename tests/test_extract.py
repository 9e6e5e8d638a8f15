"""Long-audio extraction (chunked conv encoder, full-context attention, stitched windows) and ``mert-fast extract``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from model_utils import perturb_weights

from mert_fast.audio import find_audio, load_audio, synth_demo
from mert_fast.cli import main
from mert_fast.model.config import MERTConfig
from mert_fast.model.extract_files import load_model
from mert_fast.model.extract_tensors import extract, window_owners, window_starts
from mert_fast.model.mert import MERTModel
from mert_fast.testing import assert_rel_close, rel_error

REPO = Path(__file__).resolve().parents[1]
SR = 24000


def _perturbed(name: str = "tiny", **overrides) -> MERTModel:
    """A small model with every weight moved away from its initialisation (so any wiring error shows)."""
    model = MERTModel(MERTConfig.from_name(name, **overrides)).eval()
    perturb_weights(model)
    return model


# ---------------------------------------------------------------------------------------------- tensors


def test_chunked_encoder_full_context_equals_model_on_60s():
    model = _perturbed()
    audio = 0.1 * torch.randn(60 * SR + 173)
    calls = []
    model.feature_extractor.conv_layers[0].conv.register_forward_hook(lambda *_: calls.append(1))
    out = extract(model, audio, chunk_s=7.0)  # 9 chunks of output frames, each pass
    assert len(calls) >= 2 * 9, "the clip was not split into chunks"
    with torch.no_grad():
        ref = model(audio, output_hidden_states=True).hidden_states
    n = model.config.num_frames(audio.numel())
    assert out.shape == (len(ref), n, model.config.hidden_size)
    for i, state in enumerate(ref):
        assert_rel_close(out[i], state[0], bound=1e-5, name=f"hidden state {i}")


def test_padded_batch_layers_and_mean():
    model = _perturbed()
    lengths = [9 * SR + 77, 4 * SR + 1]
    audio = torch.zeros(2, max(lengths))
    mask = torch.zeros(2, max(lengths), dtype=torch.bool)
    for b, n in enumerate(lengths):
        audio[b, :n] = 0.1 * torch.randn(n)
        mask[b, :n] = True
    out = extract(model, audio, attention_mask=mask, layers=[0, -1], chunk_s=1.5)
    one_chunk = extract(model, audio, attention_mask=mask, layers=[0, -1])  # layer 0 computed once
    mean = extract(model, audio, attention_mask=mask, layers="mean", chunk_s=1.5)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            alone = model(audio[b : b + 1, :n], output_hidden_states=True).hidden_states
        t = model.config.num_frames(n)
        assert_rel_close(out[b, 0, :t], alone[0][0], bound=1e-5, name=f"clip {b} state 0")
        assert_rel_close(out[b, 1, :t], alone[-1][0], bound=1e-5, name=f"clip {b} last state")
        assert_rel_close(one_chunk[b, 1, :t], alone[-1][0], bound=1e-5, name=f"clip {b} last state, one chunk")
        assert_rel_close(mean[b, 0, :t], torch.stack(alone).mean(0)[0], bound=1e-5, name=f"clip {b} mean")
        assert not out[b, :, t:].any() and not mean[b, :, t:].any()  # frames past the clip are 0


def test_chunked_layer_norm_conv_layout():
    # music2vec / data2vec layout: LayerNorm in every conv layer (no clip-wide statistics), stacked positional convs
    model = _perturbed(
        "music2vec-v1",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        conv_pos_layers=2,
        conv_pos_kernel_size=5,
        num_conv_pos_embedding_groups=2,
    )
    audio = 0.1 * torch.randn(3 * 16000 + 33)
    out = extract(model, audio, layers=[1], chunk_s=0.5)
    with torch.no_grad():
        ref = model(audio, output_hidden_states=True).hidden_states[1][0]
    assert_rel_close(out[0], ref, bound=1e-5)


def _brute_force_owner(starts: list[int], width: int, n: int) -> list[int]:
    owners = []
    for t in range(n):
        cands = [(min(t - a, a + width - 1 - t), -k) for k, a in enumerate(starts) if a <= t < a + width]
        owners.append(-max(cands)[1])  # farthest from an edge, earlier window on a tie
    return owners


def test_stitched_windows_take_each_frame_from_its_owner():
    model = _perturbed()
    cfg = model.config
    audio = 0.1 * torch.randn(20 * SR + 111)
    n = cfg.num_frames(audio.numel())
    out = extract(model, audio, layers=[0, 2], window_s=4.0, hop_s=1.0)  # ties between windows occur
    assert out.shape == (2, n, cfg.hidden_size)  # frame count n(L), as with full context
    width = 300  # 4 s at 75 Hz
    starts = window_starts(n, width, 75)
    assert starts[0] == 0 and starts[-1] == n - width
    assert all(0 < b - a <= 75 for a, b in zip(starts, starts[1:], strict=False))
    owners = window_owners(starts, width, n)
    assert owners.tolist() == _brute_force_owner(starts, width, n)
    span = (width - 1) * cfg.hop_length + cfg.receptive_field
    with torch.no_grad():
        windows = [model(audio[a * 320 : a * 320 + span], output_hidden_states=True).hidden_states for a in starts]
    expected = torch.stack(
        [torch.stack([windows[k][s][0, t - starts[k]] for t, k in enumerate(owners)]) for s in (0, 2)]
    )
    assert_rel_close(out, expected, bound=1e-5, name="stitched frames")
    # a clip shorter than the window is one window: full context
    short = audio[: 3 * SR]
    torch.testing.assert_close(
        extract(model, short, layers=[2], window_s=4.0), extract(model, short, layers=[2]), rtol=0, atol=0
    )


def test_extract_argument_errors():
    model = _perturbed()
    audio = torch.zeros(SR)
    with pytest.raises(ValueError, match="layers"):
        extract(model, audio, layers=[3])
    with pytest.raises(ValueError, match="layers"):
        extract(model, audio, layers="max")
    with pytest.raises(ValueError, match="window_s"):
        extract(model, audio, window_s=-1.0)
    with pytest.raises(ValueError, match="hop_s"):
        extract(model, audio, window_s=1.0, hop_s=2.0)
    with pytest.raises(ValueError, match="chunk_s"):
        extract(model, audio, chunk_s=0)
    with pytest.raises(ValueError, match="at least 400 samples"):
        extract(model, torch.zeros(399))


@pytest.mark.cuda
def test_ten_minute_track_95m_bf16_on_gpu_under_8_gib():
    torch.manual_seed(0)
    model = MERTModel(MERTConfig.from_name("mert-v1-95m")).eval().cuda()
    audio = 0.1 * torch.randn(600 * SR, device="cuda")
    conv_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = model(audio[: 60 * SR], output_hidden_states=True).hidden_states
        assert_rel_close(extract(model, audio[: 60 * SR], chunk_s=7.0), torch.stack(ref)[:, 0], bound=1e-5)
        with torch.no_grad():
            ref_last = model(audio).last_hidden_state[0].float().cpu()  # fp32, unchunked: tens of GB
    finally:
        torch.backends.cudnn.allow_tf32 = conv_tf32
    del ref
    model.bfloat16()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = extract(model, audio.bfloat16(), layers="all")
    peak = torch.cuda.max_memory_allocated()
    assert peak < 8 * 2**30, f"peak {peak / 2**30:.2f} GiB"
    assert_rel_close(out[-1].float().cpu(), ref_last, bound=5e-2, name="bf16 10 min vs fp32")


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from mert_fast.model.extract_files import load_model
    from mert_fast.model.extract_tensors import extract
    from mert_fast.testing import rel_error

    def status(key):  # this process's own memory, in bytes (ru_maxrss would include the parent's, from fork)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    seconds, window = float(sys.argv[1]), float(sys.argv[2])
    model, _ = load_model("tiny")
    audio = 0.1 * torch.randn(int(seconds * 24000), generator=torch.Generator().manual_seed(0))
    extract(model, audio[: 2 * 24000], layers=[-1], window_s=window)  # lazy initialisation, one small window
    base = status("VmRSS")
    try:  # restart the peak here, so set-up peaks above the extraction's cannot hide it (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    out = extract(model, audio, layers=[-1], window_s=window)
    peak = status("VmHWM")
    full = extract(model, audio, layers=[-1]) if len(sys.argv) > 3 else None
    print(json.dumps({
        "base": base, "peak": peak, "output_bytes": out.numel() * out.element_size(),
        "window_vs_full": rel_error(out, full) if full is not None else None,
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_bounded_when_length_doubles(record_property):
    # a fixed mmap threshold returns every large buffer to the OS when freed, so peaks are repeatable
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }

    def run(seconds: float, *extra: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(seconds), "5.0", *extra],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    short, long = run(120.0, "full"), run(240.0)
    # what extraction adds over the process before it, less the features it returns (linear in length by design)
    grow_short = short["peak"] - short["base"] - short["output_bytes"]
    grow_long = long["peak"] - long["base"] - long["output_bytes"]
    record_property("extra_rss_mib_2min", round(grow_short / 2**20, 1))
    record_property("extra_rss_mib_4min", round(grow_long / 2**20, 1))
    record_property("peak_rss_mib_2min", round(short["peak"] / 2**20, 1))
    record_property("peak_rss_mib_4min", round(long["peak"] / 2**20, 1))
    record_property("window_vs_full_rel_error_2min", short["window_vs_full"])
    assert grow_short > 0
    assert grow_long < 1.10 * grow_short, f"extraction memory grew from {grow_short} to {grow_long} bytes"
    assert long["peak"] < 1.10 * short["peak"]


# ---------------------------------------------------------------------------------------------- the command


@pytest.fixture
def collection(tmp_path) -> Path:
    """Generated inputs: two same-named files in different folders, a stereo 44.1 kHz FLAC, a silent file, a
    corrupt one, one with no samples, a 0-byte one and one shorter than a frame."""
    root = tmp_path / "music"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    sf.write(root / "a" / "x.wav", synth_demo(SR, 4.5).numpy(), SR)
    sf.write(root / "b" / "x.wav", 0.3 * np.random.randn(3 * SR + 17).astype(np.float32), SR)
    s = synth_demo(44100, 4.0).numpy()
    sf.write(root / "stereo.flac", np.stack([s, -0.4 * s], axis=1), 44100)
    sf.write(root / "silent.wav", np.zeros(2 * SR, np.float32), SR)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(range(256)))
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SR)
    (root / "nothing.ogg").write_bytes(b"")
    sf.write(root / "short.wav", np.zeros(300, np.float32), SR)
    return root


GOOD = ["a/x.wav", "b/x.wav", "stereo.flac", "silent.wav"]
BAD = {"corrupt.wav": "cannot decode", "empty.wav": "no samples", "nothing.ogg": "empty file", "short.wav": "too short"}


def _manifest(out: Path, name: str = "manifest.json") -> dict:
    return json.loads((out / name).read_text())


def _statuses(out: Path, name: str = "manifest.json") -> dict[str, str]:
    root = os.path.commonpath([e["input"] for e in _manifest(out, name)["files"]])
    return {os.path.relpath(e["input"], root): e["status"] for e in _manifest(out, name)["files"]}


def test_cli_end_to_end_resume_and_redo(tmp_path, collection, capsys, monkeypatch):
    import mert_fast.model.extract_files as ex

    batches = []
    real_extract = ex.extract
    monkeypatch.setattr(
        ex, "extract", lambda m, audio, **k: batches.append(audio.shape[0]) or real_extract(m, audio, **k)
    )
    out = tmp_path / "features"
    argv = ["extract", str(collection), "--model", "tiny", "--out", str(out), "--layers", "0,2", "--batch-size", "4"]
    assert main(argv) == 1  # some files failed: non-zero, after doing the rest
    assert max(batches) == 2 and sum(batches) == 4  # 4 s and 4.5 s clips share a padded batch
    captured = capsys.readouterr()
    assert "4 extracted, 0 skipped (already done), 4 failed" in captured.out
    for name, reason in BAD.items():
        assert f"{name}: " in captured.err and reason in captured.err
    manifest = _manifest(out)
    assert _statuses(out) == {**dict.fromkeys(GOOD, "ok"), **dict.fromkeys(BAD, "failed")}
    assert manifest["counts"] == {"ok": 4, "skipped": 0, "failed": 4}
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left

    model, _ = load_model("tiny")
    cfg = model.config
    for name in GOOD:
        array = np.load(out / f"{name}.npy")
        meta = json.loads((out / f"{name}.json").read_text())
        wave = load_audio(collection / name, SR)
        frames = cfg.num_frames(wave.numel())
        assert array.shape == (2, frames, cfg.hidden_size) and array.dtype == np.float32
        assert meta["shape"] == list(array.shape) and meta["num_frames"] == frames
        assert meta["layers"] == [0, 2] and meta["model"] == "preset:tiny" and meta["sample_rate"] == SR
        assert meta["frame_rate"] == 75.0 and meta["frame_offset_s"] == 200 / SR
        assert meta["duration_s"] == pytest.approx(wave.numel() / SR)
        # the batched run gives what each clip gets alone
        assert_rel_close(torch.from_numpy(array), extract(model, wave, layers=[0, 2]), bound=1e-5, name=name)
    assert np.isfinite(np.load(out / "silent.wav.npy")).all()
    assert json.loads((out / "stereo.flac.json").read_text())["num_samples"] == 4 * SR  # resampled to 24 kHz
    assert json.loads((out / "a/x.wav.json").read_text())["model_sha256"] != ""

    stamps = {name: (out / f"{name}.npy").stat().st_mtime_ns for name in GOOD}
    assert main(argv) == 1
    assert "0 extracted, 4 skipped" in capsys.readouterr().out
    assert _statuses(out) == {**dict.fromkeys(GOOD, "skipped"), **dict.fromkeys(BAD, "failed")}
    assert stamps == {name: (out / f"{name}.npy").stat().st_mtime_ns for name in GOOD}

    argv[argv.index("0,2")] = "1"  # changed settings redo everything
    assert main(argv) == 1
    assert "4 extracted, 0 skipped" in capsys.readouterr().out
    assert np.load(out / "a/x.wav.npy").shape[0] == 1


def test_cli_pooled_safetensors_float16_windows_and_manifests(tmp_path, collection, capsys):
    from safetensors.numpy import load_file

    (collection / "list.txt").write_text("# two files\na/x.wav\n\nstereo.flac\n")
    (collection / "list.csv").write_text("path,label\nb/x.wav,noise\nsilent.wav,silence\n")
    assert [p.relative_to(collection).as_posix() for p in find_audio([collection / "list.txt"])] == [
        "a/x.wav",
        "stereo.flac",
    ]
    out = tmp_path / "pooled"
    argv = [
        "extract", str(collection / "list.txt"), str(collection / "list.csv"), "--model", "tiny", "--out", str(out),
        "--layers", "mean", "--pool", "mean", "--format", "safetensors", "--save-dtype", "float16",
        "--window-s", "2.0", "--hop-s", "0.75",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "4 extracted" in capsys.readouterr().out
    model, _ = load_model("tiny")
    for name in GOOD:
        array = load_file(str(out / f"{name}.safetensors"))["features"]
        assert array.shape == (1, model.config.hidden_size) and array.dtype == np.float16
        full = extract(model, load_audio(collection / name, SR), layers="mean", window_s=2.0, hop_s=0.75)
        assert_rel_close(torch.from_numpy(array.astype(np.float32)), full.mean(1), bound=4e-3, name=name)
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["window_s"] == 2.0 and meta["hop_s"] == 0.75 and meta["pool"] == "mean"


def test_cli_ranks_shard_the_inputs(tmp_path, collection, monkeypatch, capsys):
    out = tmp_path / "sharded"
    files = find_audio([collection])
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main(["extract", str(collection), "--model", "tiny", "--out", str(out), "--layers", "2"])
        inputs = [e["input"] for e in _manifest(out, f"manifest.rank{rank}.json")["files"]]
        assert sorted(inputs) == sorted(str(f) for f in files[rank::2])
        seen += inputs
    assert sorted(seen) == sorted(str(f) for f in files)
    capsys.readouterr()


def test_cli_interrupted_write_leaves_no_half_file(tmp_path, collection, monkeypatch, capsys):
    out = tmp_path / "killed"
    argv = ["extract", str(collection / "a"), "--model", "tiny", "--out", str(out), "--layers", "2"]
    real_save = np.save

    def killed(f, array, *a, **k):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["manifest.json"]
    monkeypatch.setattr(np, "save", real_save)
    assert main(argv) == 0
    assert "1 extracted, 0 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "--model must be a local model directory"),
        (["--model", "tiny", "--layers", "0,9"], "layers: index 9 is out of range"),
        (["--model", "tiny", "--hop-s", "1"], "--hop-s needs --window-s"),
    ],
    ids=["model", "layers", "hop-without-window"],
)
def test_cli_errors_exit_2(tmp_path, collection, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(collection / "a"), "--out", str(tmp_path / "o"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mert-fast extract: error: ") and message in err


def test_window_vs_full_difference_is_reported(record_property):
    """Windows see less context than the whole clip: the difference is reported, and must not be zero (a window
    run that secretly ran full context would hide the seams this mode exists to trade)."""
    model = _perturbed()
    audio = synth_demo(SR, 12.0)
    err = rel_error(extract(model, audio, layers=[-1], window_s=4.0), extract(model, audio, layers=[-1]))
    record_property("window_vs_full_rel_error_12s_demo", err)
    assert np.isfinite(err) and err > 0


# ------------------------------------------------------------------------------------------------ bad inputs


def test_find_audio_visits_each_real_folder_and_file_once(tmp_path, caplog):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    sf.write(music / "sub" / "x.wav", synth_demo(SR, 1.0).numpy(), SR)
    os.symlink("..", music / "sub" / "up")  # a loop: music/sub/up/sub/up/... is music again
    with caplog.at_level("INFO", logger="mert_fast.audio"):
        assert find_audio([music]) == [music / "sub" / "x.wav"]
    assert "sub/up: a folder already searched" in caplog.text
    # a second link to a folder already searched, and a second name for the same file
    (music / "sub" / "up").unlink()
    os.symlink("sub", music / "again")
    os.symlink("x.wav", music / "sub" / "y.wav")
    caplog.clear()
    with caplog.at_level("INFO", logger="mert_fast.audio"):
        assert find_audio([music]) == [music / "again" / "x.wav"]
    assert "music/sub: a folder already searched" in caplog.text and "y.wav: the same file as" in caplog.text


def test_cli_symlink_loop_extracts_the_file_once(tmp_path, capsys):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    sf.write(music / "sub" / "x.wav", synth_demo(SR, 1.0).numpy(), SR)
    os.symlink("..", music / "sub" / "up")
    out = tmp_path / "out"
    assert main(["extract", str(music), "--model", "tiny", "--out", str(out)]) == 0
    assert "1 extracted" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["x.wav.npy"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask):
    from mert_fast._io import atomic_path, write_json
    from mert_fast.model.teachers.mel_rvq import save_teacher

    sf.write(tmp_path / "x.wav", synth_demo(SR, 1.0).numpy(), SR)
    old = os.umask(umask)
    try:
        assert main(["extract", str(tmp_path / "x.wav"), "--model", "tiny", "--out", str(tmp_path / "out")]) == 0
        write_json(tmp_path / "w.json", {"a": 1})
        with atomic_path(tmp_path / "cache.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, a=np.zeros(2))
        save_teacher(torch.nn.Linear(2, 2), tmp_path / "teacher", {"format": "test"})
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    written = [*(tmp_path / "out").iterdir(), tmp_path / "w.json", tmp_path / "cache.npz",
               *(tmp_path / "teacher").iterdir()]  # fmt: skip
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"x.wav.npy", "x.wav.json", "manifest.json"}
    for p in written:
        assert p.stat().st_mode & 0o777 == expected, f"{p.name}: {oct(p.stat().st_mode & 0o777)}"


def test_cli_layout_ignores_missing_inputs_and_reruns_skip(tmp_path, collection, capsys):
    out = tmp_path / "features"
    typo = tmp_path / "musc" / "nothing.wav"
    argv = ["--model", "tiny", "--out", str(out)]
    # the missing file fails; the existing one lands where it would without the typo
    assert main(["extract", str(collection / "a"), str(typo), *argv]) == 1
    assert "1 extracted" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["x.wav.npy"]
    assert main(["extract", str(collection / "a"), *argv]) == 0
    assert "0 extracted, 1 skipped" in capsys.readouterr().out


def test_manifest_has_no_output_for_failed_files(tmp_path, collection, capsys):
    out = tmp_path / "features"
    assert main(["extract", str(collection), "--model", "tiny", "--out", str(out)]) == 1
    entries = _manifest(out)["files"]
    failed = [e for e in entries if e["status"] == "failed"]
    assert len(failed) == len(BAD) and all("output" not in e for e in failed)
    assert all((out / e["output"]).is_file() for e in entries if e["status"] == "ok")


def test_text_file_named_mp3_is_reported_as_not_audio_quietly(tmp_path, capfd):
    (tmp_path / "notes.mp3").write_text("this is a text file, not music\n" * 20)
    with pytest.raises(ValueError, match=r"notes\.mp3.*not decodable audio as MP3"):
        load_audio(tmp_path / "notes.mp3")
    sf.write(tmp_path / "ok.wav", synth_demo(SR, 1.0).numpy(), SR)
    capfd.readouterr()
    assert main(["extract", str(tmp_path), "--model", "tiny", "--out", str(tmp_path / "out")]) == 1
    err = capfd.readouterr().err
    assert "notes.mp3" in err and "not decodable audio as MP3" in err
    assert "does not exist" not in err and "MPEG-Header" not in err and "mpg123" not in err


def test_cli_nan_features_fail_the_file_and_exit_1(tmp_path, capsys):
    model = MERTModel(MERTConfig.from_name("tiny"))
    with torch.no_grad():
        model.feature_projection.projection.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "x.wav", synth_demo(SR, 1.0).numpy(), SR)
    out = tmp_path / "out"
    assert main(["extract", str(tmp_path / "x.wav"), "--model", str(tmp_path / "model"), "--out", str(out)]) == 1
    assert "non-finite features" in capsys.readouterr().err
    (entry,) = _manifest(out)["files"]
    assert entry["status"] == "failed" and "model" in entry["reason"] and "output" not in entry
    assert not list(out.glob("x.wav*"))
