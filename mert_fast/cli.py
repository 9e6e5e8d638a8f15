"""The ``mert-fast`` command line.

One function per subcommand (``_cmd_<name>``), registered in :func:`build_parser`. A subcommand raises
``ValueError`` or ``OSError`` for a problem with its input; :func:`main` turns that into a one-line
``mert-fast <command>: error: ...`` on stderr and exit status 2, as argparse does for usage errors.

    mert-fast cqt [AUDIO_FILE] --out cqt.png      # picture of MERT's CQT teacher target
    mert-fast extract INPUTS... --model DIR_OR_PRESET --out DIR   # features of a music collection
    mert-fast make-corpus OUT_DIR [--clips 64] [--seconds 8]   # synthetic music to pre-train on
    mert-fast fit-teacher --type mel-rvq AUDIO_DIR --out DIR   # the acoustic teacher train.py reuses
    mert-fast fit-teacher --type kmeans AUDIO_DIR --out DIR --sample-rate 16000   # MERT-v0's k-means codes
    mert-fast export CHECKPOINT_OR_RUN_DIR OUT_DIR   # a training checkpoint -> HF model directory
    mert-fast make-probe-data OUT_DIR                # labelled notes and chords for probing (no downloads)
    mert-fast probe MANIFEST.csv --features MODEL_DIR --out DIR   # MARBLE-style probes of frozen features
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PROG = "mert-fast"

# MERT's musical teacher (DESIGN.md): nnAudio CQT1992v2 at 24 kHz, hop 320, 336 bins from C1, 48 per octave.
MERT_SAMPLE_RATE = 24000
MERT_CQT = {"hop_length": 320, "fmin": 32.7, "n_bins": 336, "bins_per_octave": 48}

#: Dynamic range of the CQT picture: magnitudes below this many dB under the clip's peak are drawn as the floor.
_DB_RANGE = 80.0
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def _layers(text: str) -> str | list[int]:
    """``--layers``: ``all``, ``mean`` or comma-separated hidden-state indices such as ``0,6,12``."""
    text = text.strip().lower()
    if text in ("all", "mean"):
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, mean or indices such as 0,6,12; got {text!r}") from None
    return values


def _seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated integers such as ``0,1,2``."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 0,1,2; got {text!r}") from None


def _probe_layers(text: str) -> str | list[int]:
    """``probe --layers``: ``all`` (each state and the weighted sum), ``weighted`` or indices such as ``0,6,12``."""
    text = text.strip().lower()
    if text in ("all", "weighted"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, weighted or indices such as 0,6,12; got {text!r}") from None


def _device(name: str) -> torch.device:
    """A usable torch device from ``--device``, or ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible")
    return device


def _midi(freq: np.ndarray) -> np.ndarray:
    """Fractional MIDI note numbers (A4 = 69 = 440 Hz)."""
    return 69.0 + 12.0 * np.log2(freq / 440.0)


def note_name(freq: float) -> str:
    """The nearest equal-tempered note to ``freq`` Hz, e.g. ``"A4"`` for 440, ``"C1"`` for 32.7."""
    m = int(np.round(_midi(np.asarray(freq, dtype=np.float64))))
    return f"{_NOTE_NAMES[m % 12]}{m // 12 - 1}"


def _c_ticks(freqs: np.ndarray) -> tuple[list[int], list[str]]:
    """Bin indices and labels of every C within the bins (the bin nearest each C, within half a bin)."""
    midi = _midi(freqs)
    half_bin = (midi[1] - midi[0]) / 2 if len(midi) > 1 else 0.5
    ticks, labels = [], []
    for m in range(math.ceil(midi[0] - half_bin), math.floor(midi[-1] + half_bin) + 1):
        if m % 12:
            continue
        k = int(np.argmin(np.abs(midi - m)))
        if abs(midi[k] - m) <= half_bin + 1e-6:
            ticks.append(k)
            labels.append(note_name(440.0 * 2.0 ** ((m - 69) / 12)))
    return ticks, labels


def _plot_cqt(mag: np.ndarray, freqs: np.ndarray, seconds_per_frame: float, title: str, out: Path) -> None:
    """Write the log-magnitude of a ``(n_bins, frames)`` CQT as a PNG, notes on y and seconds on x."""
    # pyplot-free figure: no global backend switch, nothing shown
    from matplotlib.figure import Figure

    peak = float(mag.max())
    ref = peak if peak > 0 else 1.0
    db = 20.0 * np.log10(np.maximum(mag / ref, 10.0 ** (-_DB_RANGE / 20.0)))
    n_bins, n_frames = mag.shape
    fig = Figure(figsize=(10, 5.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        db,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        vmin=-_DB_RANGE,
        vmax=0.0,
        extent=(-0.5 * seconds_per_frame, (n_frames - 0.5) * seconds_per_frame, -0.5, n_bins - 0.5),
    )
    ticks, labels = _c_ticks(freqs)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("note (A4 = 440 Hz)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="magnitude (dB re. max)")
    fig.savefig(out, format="png")


def _cmd_cqt(args: argparse.Namespace) -> int:
    from mert_fast.audio import load_audio, synth_demo
    from mert_fast.ops import cqt
    from mert_fast.ops.reference import cqt_frequencies

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file; got {args.out!r}")
    device = _device(args.device)
    if args.audio is None:
        audio, name = synth_demo(args.sample_rate), "synthesized demo"
    else:
        audio, name = load_audio(args.audio, args.sample_rate), Path(args.audio).name
    logger.info("%s: %.2f s at %d Hz", name, audio.shape[-1] / args.sample_rate, args.sample_rate)
    spec = cqt(audio.to(device), sample_rate=args.sample_rate, **MERT_CQT)
    freqs = cqt_frequencies(MERT_CQT["fmin"], MERT_CQT["n_bins"], MERT_CQT["bins_per_octave"])
    title = (
        f"CQT of {name}: {MERT_CQT['n_bins']} bins, {MERT_CQT['bins_per_octave']} per octave, "
        f"hop {MERT_CQT['hop_length']} at {args.sample_rate} Hz"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot_cqt(spec[0].cpu().numpy(), freqs, MERT_CQT["hop_length"] / args.sample_rate, title, out)
    print(f"{out}: CQT {tuple(spec.shape)}")
    return 0


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _rank_and_world() -> tuple[int, int]:
    """This process's shard under ``torchrun`` (``RANK``, ``WORLD_SIZE``); ``(0, 1)`` otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE); got RANK={rank}, WORLD_SIZE={world}")
    return rank, world


def _cmd_extract(args: argparse.Namespace) -> int:
    from mert_fast.model.extract_files import load_model, run_extraction, weights_sha256

    rank, world = _rank_and_world()
    if args.device == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = _device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    if args.hop_s is not None and args.window_s is None:
        raise ValueError("--hop-s needs --window-s")
    model, model_id = load_model(args.model)
    sha = weights_sha256(model)  # of the weights as stored, so every --dtype names the same model
    model = model.to(device=device, dtype=_DTYPES[dtype_name])
    logger.info("model %s (sha256 %s) on %s in %s; rank %d of %d", model_id, sha[:12], device, dtype_name, rank, world)
    result = run_extraction(
        args.inputs,
        args.out,
        model,
        model_id,
        model_sha256=sha,
        layers=args.layers,
        pool=args.pool,
        fmt=args.format,
        save_dtype=args.save_dtype,
        window_s=args.window_s,
        hop_s=args.hop_s,
        batch_size=args.batch_size,
        chunk_s=args.chunk_s,
        rank=rank,
        world_size=world,
    )
    failed = result.failed
    print(
        f"{args.out}: {result.count('ok')} extracted, {result.count('skipped')} skipped (already done), "
        f"{len(failed)} failed; manifest {result.manifest}"
    )
    for entry in failed:
        print(f"{PROG} extract: failed: {entry['input']}: {entry['reason']}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_make_corpus(args: argparse.Namespace) -> int:
    from mert_fast.train.synth import make_corpus

    paths = make_corpus(
        args.out_dir,
        n_clips=args.clips,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        format=args.format,
        source=args.source,
    )
    print(f"{args.out_dir}: {len(paths)} clips of {args.seconds:g} s at {args.sample_rate} Hz; manifest.csv lists them")
    return 0


def _cmd_fit_teacher(args: argparse.Namespace) -> int:
    from mert_fast.train.data import AudioCorpus

    kind = args.type
    # options of the other teacher type are an error, not silently ignored
    foreign = {
        "kmeans": (("--codebooks", args.codebooks), ("--codebook-size", args.codebook_size), ("--steps", args.steps)),
        "mel-rvq": (
            ("--feature", args.feature), ("--clusters", args.clusters), ("--n-mels", args.n_mels),
            ("--max-frames", args.max_frames),
        ),
    }[kind]  # fmt: skip
    given = [name for name, value in foreign if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: not an option of --type {kind}")
    sample_rate = args.sample_rate or (16000 if kind == "kmeans" else MERT_SAMPLE_RATE)
    device = _device(args.device)
    corpus = AudioCorpus(args.audio_dir, sample_rate, min_seconds=args.min_seconds)
    n = min(len(corpus), args.max_clips)
    clips = (corpus.load(i) for i in range(n))
    if kind == "kmeans":
        from mert_fast.model.teachers import fit_kmeans_teacher

        options = dict(feature=args.feature, n_clusters=args.clusters, n_mels=args.n_mels, max_frames=args.max_frames)
        options = {k: v for k, v in options.items() if v is not None}  # the rest: fit_kmeans_teacher's defaults
        teacher = fit_kmeans_teacher(clips, sample_rate, seed=args.seed, device=device, **options)
        teacher.save(args.out)
        print(f"{args.out}: k-means teacher ({teacher.codebook_size} clusters of {teacher.feature} frames, "
              f"{teacher.label_rate:g} Hz) fitted on {n} clips")  # fmt: skip
        return 0
    from mert_fast.model.teachers import fit_mel_rvq
    from mert_fast.model.teachers.mel_rvq import quality_warnings

    codebooks = args.codebooks or 8
    codebook_size = args.codebook_size or 1024
    teacher = fit_mel_rvq(
        clips,
        sample_rate,
        n_q=codebooks,
        codebook_size=codebook_size,
        steps=args.steps or 300,
        seed=args.seed,
        device=device,
    )
    teacher.save(args.out)
    print(f"{args.out}: mel-rvq teacher ({codebooks} x {codebook_size} codes, {teacher.label_rate:g} Hz) "
          f"fitted on {n} clips")  # fmt: skip
    q = teacher.quality
    where = f"{q['clips']} held-out clips" if q["held_out"] else "the fitted clip"
    print(f"  on {where} ({q['frames']} frames), per stage / codebook (teacher.json 'quality' keeps them):")
    for name, key, fmt in (
        ("explained variance", "explained_variance", "{:.3f}"), ("perplexity", "perplexity", "{:.1f}"),
        ("codes used", "codes_used", "{}"), ("flips at -6 dB", "flip_rate_gain_-6db", "{:.3f}"),
        ("flips, noise 60 dB SNR", "flip_rate_noise_60db", "{:.3f}"),
    ):  # fmt: skip
        print(f"  {name:>22}: {' '.join(fmt.format(v) for v in q[key])}")
    for warning in quality_warnings(q):
        print(f"  warning: {warning}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mert_fast.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"{out}: config.json + model.safetensors (loads with MERTModel.from_pretrained and transformers)")
    return 0


def _cmd_make_probe_data(args: argparse.Namespace) -> int:
    from mert_fast.probe.data import make_probe_data

    manifests = make_probe_data(
        args.out_dir,
        seed=args.seed,
        sample_rate=args.sample_rate,
        seconds=args.seconds,
        notes_per_cell=args.notes_per_cell,
        chords_per_cell=args.chords_per_cell,
        source=args.source,
        format=args.format,
    )
    print(f"{args.out_dir}: probe tasks " + ", ".join(f"{name} ({path.name})" for name, path in manifests.items()))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from mert_fast.probe.probe import ProbeConfig, run_probe

    cfg = ProbeConfig(
        hidden=args.hidden, dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, max_epochs=args.max_epochs,
        patience=args.patience,
    )  # fmt: skip
    device = _device(args.device)
    layers = None if args.layers in ("all", "weighted") else args.layers
    if args.layers == "weighted":
        layers = []
    result = run_probe(
        args.manifest, args.features, args.out, cache=args.cache, task_type=args.task_type, layers=layers,
        weighted=args.layers in ("all", "weighted"), seeds=args.seeds, cfg=cfg, device=device,
        sample_rate=args.sample_rate,
    )  # fmt: skip
    metric = result["primary_metric"]
    summary = result["summary"]
    rows = [(f"layer {k}", v) for k, v in summary["layers"].items()]
    if summary["weighted_sum"] is not None:
        rows.append(("weighted sum", summary["weighted_sum"]))
    print(f"{result['manifest']}: {result['task_type']}, {result['counts']}; test {metric}, mean ± std over "
          f"{len(result['seeds'])} seed(s):")  # fmt: skip
    for name, entry in rows:
        score = entry.get("test", entry["valid"])[metric]
        print(f"  {name:>14}: {score['mean']:.4f} ± {score['std']:.4f}")
    print(f"{args.out}: scores.json, layers.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Fast kernels, models and training for MERT-style self-supervised music models."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default: %(default)s); DEBUG also logs the traceback of a failed command",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "cqt",
        help="draw the constant-Q transform MERT trains on (its musical teacher) as a PNG",
        description="Decode AUDIO_FILE (24 kHz mono), compute MERT's CQT (336 bins, 48 per octave from C1, hop 320) "
        "and draw its log-magnitude with note names. Without a file, a synthesized demo clip is used.",
    )
    p.add_argument("audio", nargs="?", metavar="AUDIO_FILE", help="WAV, FLAC, OGG or MP3 (default: synthesized demo)")
    p.add_argument("--out", default="cqt.png", help="output PNG path (default: %(default)s)")
    p.add_argument(
        "--sample-rate",
        type=_positive_int,
        default=MERT_SAMPLE_RATE,
        help="decode and analyse at this rate in Hz (default: %(default)s, MERT's)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the transform, e.g. cpu or cuda (default: cpu)")
    p.set_defaults(func=_cmd_cqt)

    p = commands.add_parser(
        "extract",
        help="extract MERT features for audio files, folders or manifests (resumable)",
        description="Decode every input (24 kHz mono: soundfile + soxr, channels averaged), run the model with full "
        "context (or sliding windows) and write one array per file, mirroring the input tree under --out, with a "
        "JSON sidecar per file and a run manifest. Files already done with the same settings are skipped; files "
        "that cannot be decoded, are empty or too short are reported and the run goes on (exit status 1 if any "
        "failed). Under torchrun each rank takes every WORLD_SIZE-th file.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (recursive) or .txt/.csv manifests")
    p.add_argument(
        "--model", required=True, help="a local model directory (HF layout) or a preset name (random weights)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--layers",
        type=_layers,
        default="all",
        help="hidden states to save: all (default), mean (their average) or indices such as 0,6,12",
    )
    p.add_argument("--pool", choices=("none", "mean"), default="none", help="average over frames (default: none)")
    p.add_argument("--format", choices=("npy", "safetensors"), default="npy", help="output format (default: npy)")
    p.add_argument(
        "--save-dtype", choices=("float32", "float16"), default="float32", help="saved array dtype (default: float32)"
    )
    p.add_argument(
        "--window-s", type=_positive_float, default=None, help="sliding windows of this many seconds (default: full)"
    )
    p.add_argument("--hop-s", type=_positive_float, default=None, help="seconds between windows (default: half)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="clips per batch (default: %(default)s)")
    p.add_argument(
        "--chunk-s", type=_positive_float, default=30.0, help="conv-encoder chunk in seconds (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="torch device (default: cuda:LOCAL_RANK when a GPU is visible)")
    p.add_argument(
        "--dtype",
        choices=("auto", *_DTYPES),
        default="auto",
        help="compute dtype (default: bfloat16 on a GPU, float32 on the CPU)",
    )
    p.set_defaults(func=_cmd_extract)

    p = commands.add_parser(
        "make-corpus",
        help="write a synthetic music corpus (notes, chords, drums; no downloads) for a first training run",
        description="Compose and render short pieces of music at random (chord progressions, melodies, bass lines, "
        "arpeggios and drums with varied tempo, key and timbre) into OUT_DIR as clip_NNNNN.flac, with a manifest.csv. "
        "Clip i depends on (--seed, i) only. Uses fluidsynth with a General MIDI soundfont when both are installed "
        "(--source auto), else the built-in numpy synthesizer.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--clips", type=_positive_int, default=64, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=_positive_float, default=8.0, help="seconds per clip (default: %(default)s)")
    p.add_argument(
        "--sample-rate", type=_positive_int, default=MERT_SAMPLE_RATE, help="Hz (default: %(default)s, MERT-v1's)"
    )
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="file format (default: %(default)s)")
    p.add_argument(
        "--source",
        choices=("auto", "numpy", "fluidsynth"),
        default="auto",
        help="renderer: fluidsynth (needs the program and a GM soundfont), numpy, or auto (default: fluidsynth when "
        "available)",
    )
    p.set_defaults(func=_cmd_make_corpus)

    p = commands.add_parser(
        "fit-teacher",
        help="fit the acoustic teacher (Mel-RVQ tokens or k-means clusters) on a folder of audio, for train.py "
        "--teacher",
        description="--type mel-rvq (MuQ's Mel-RVQ): compute stacked log-mel frames (128 mels, 100 Hz, 4 stacked: "
        "25 Hz, floored 80 dB under each clip's peak and centred on its mean level) of the audio, then fit a residual "
        "VQ with per-stage projections to reconstruct them; its quality on every 8th clip, held out, is printed and "
        "saved in teacher.json. --type kmeans "
        "(MERT-v0 / HuBERT): compute MFCC (+ deltas) or log-mel frames at 50 Hz and cluster them by k-means. Writes "
        "teacher.json and teacher.safetensors to --out.",
    )
    p.add_argument("audio_dir", metavar="AUDIO_DIR", help="folder (recursive) or .csv/.txt manifest of audio")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--type", choices=("mel-rvq", "kmeans"), default="mel-rvq", help="teacher type (default: %(default)s)"
    )
    p.add_argument(
        "--sample-rate",
        type=_positive_int,
        default=None,
        help=f"Hz (default: {MERT_SAMPLE_RATE} for mel-rvq, 16000 for kmeans)",
    )
    p.add_argument("--codebooks", type=_positive_int, default=None, help="mel-rvq: RVQ stages (default: 8)")
    p.add_argument("--codebook-size", type=_positive_int, default=None, help="mel-rvq: codes per stage (default: 1024)")
    p.add_argument("--steps", type=_positive_int, default=None, help="mel-rvq: fitting steps (default: 300)")
    p.add_argument(
        "--feature", choices=("mfcc", "logmel"), default=None, help="kmeans: frame features (default: mfcc, 39 dims)"
    )
    p.add_argument("--clusters", type=_positive_int, default=None, help="kmeans: number of clusters (default: 100)")
    p.add_argument(
        "--n-mels", type=_positive_int, default=None, help="kmeans: mel filters (default: 23 for mfcc, 80 for logmel)"
    )
    p.add_argument(
        "--max-frames", type=_positive_int, default=None, help="kmeans: cluster at most this many frames (default: "
        "500000, a seeded sample)",
    )  # fmt: skip
    p.add_argument("--max-clips", type=_positive_int, default=256, help="fit on at most this many clips")
    p.add_argument("--min-seconds", type=_positive_float, default=1.0, help="skip shorter clips (default: 1 s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_fit_teacher)

    p = commands.add_parser(
        "export",
        help="turn a train.py checkpoint (or a run directory's newest) into an HF model directory",
        description="Consolidate the fp32 master weights of a DeepSpeed checkpoint written by train.py (ZeRO-1/2/3 "
        "partitions of every rank; no GPU needed) and write the student as config.json + model.safetensors, the "
        "layout transformers' HubertModel (Data2VecAudioModel for music2vec) and MERTModel.from_pretrained load.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", help="a checkpoint, checkpoints/ or run directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    p.set_defaults(func=_cmd_export)

    p = commands.add_parser(
        "make-probe-data",
        help="write a small labelled set of notes and chords (pitch class, instrument family, chord quality) for "
        "mert-fast probe",
        description="Render single notes (12 pitch classes x 9 instrument families) and chords (6 qualities x 12 "
        "roots) into OUT_DIR/audio, with fixed train/valid/test splits and one manifest per task: pitch_class.csv, "
        "instrument.csv, chord_quality.csv (multi-class), chord_notes.csv (multi-label) and pitch.csv (regression). "
        "Uses fluidsynth with a General MIDI soundfont when both are installed (--source auto), else the built-in "
        "numpy synthesizer.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s; it fixes the splits)")
    p.add_argument("--sample-rate", type=_positive_int, default=MERT_SAMPLE_RATE, help="Hz (default: %(default)s)")
    p.add_argument("--seconds", type=_positive_float, default=2.0, help="seconds per clip (default: %(default)s)")
    p.add_argument(
        "--notes-per-cell", type=_positive_int, default=10, help="notes per pitch class and family (default: 10)"
    )
    p.add_argument(
        "--chords-per-cell", type=_positive_int, default=10, help="chords per quality and root (default: 10)"
    )
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="file format (default: %(default)s)")
    p.add_argument("--source", choices=("auto", "numpy", "fluidsynth"), default="auto", help="renderer (default: auto)")
    p.set_defaults(func=_cmd_make_probe_data)

    p = commands.add_parser(
        "probe",
        help="MARBLE-style probes of frozen features: per-layer and weighted-sum scores for a labelled manifest",
        description="Read MANIFEST (CSV: path,label[,split]; label with ';' for multi-label, a number for regression), "
        "average each clip's features over time (extracting them with the model into --cache, or reading a "
        "mert-fast extract folder, or computing cqt/mfcc), then train one MLP probe (512 hidden, dropout 0.2, Adam "
        "1e-3, batch 64, early stopping on valid) per hidden state and one on their learned weighted sum. Writes "
        "--out/scores.json (accuracy, ROC-AUC, average precision or R^2 per layer, mean and std over --seeds) and "
        "--out/layers.png.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV with columns path,label[,split]")
    p.add_argument(
        "--features",
        required=True,
        help="a model directory (HF layout), a preset name (random weights), a mert-fast extract output folder, "
        "cqt or mfcc",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="feature cache folder (default: OUT/features)")
    p.add_argument(
        "--task-type",
        choices=("auto", "multiclass", "multilabel", "regression"),
        default="auto",
        help="default: from the labels (';' multi-label, many distinct numbers regression, else multi-class)",
    )
    p.add_argument(
        "--layers",
        type=_probe_layers,
        default="all",
        help="all (each hidden state and the weighted sum; default), weighted, or indices such as 0,6,12",
    )
    p.add_argument("--seeds", type=_seeds, default=[0], help="probe seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--hidden", type=_positive_int, default=512, help="MLP hidden units (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="probe batch (default: %(default)s)")
    p.add_argument("--max-epochs", type=_positive_int, default=200, help="epoch limit (default: %(default)s)")
    p.add_argument(
        "--patience", type=_positive_int, default=20, help="epochs without a better valid score (default: 20)"
    )
    p.add_argument(
        "--sample-rate", type=_positive_int, default=MERT_SAMPLE_RATE, help="Hz for cqt/mfcc (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mert-fast`` with ``argv`` (default: ``sys.argv[1:]``); returns 0, or exits with status 2 on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mert_fast").setLevel(args.log_level)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        logger.debug("%s %s failed", PROG, args.command, exc_info=True)
        message = " ".join(str(exc).split())  # one line, whatever the library's message holds
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    raise SystemExit(main())
