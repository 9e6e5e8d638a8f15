"""``mert-fast fit-teacher``: fit the acoustic teacher (Mel-RVQ tokens or k-means clusters) that train.py reuses."""

from __future__ import annotations

import argparse

from mert_fast.cli.common import (
    MERT_SAMPLE_RATE,
    add_command,
    add_sample_rate,
    parse_device,
    positive_float,
    positive_int,
)

_DESCRIPTION = (
    "--type mel-rvq (MuQ's Mel-RVQ): compute stacked log-mel frames (128 mels, 100 Hz, 4 stacked: "
    "25 Hz, floored 80 dB under each clip's peak and centred on its mean level) of the audio, then fit a residual "
    "VQ with per-stage projections to reconstruct them; its quality on every 8th clip, held out, is printed and "
    "saved in teacher.json. --type kmeans "
    "(MERT-v0 / HuBERT): compute MFCC (+ deltas) or log-mel frames at 50 Hz and cluster them by k-means. Writes "
    "teacher.json and teacher.safetensors to --out."
)


def run(args: argparse.Namespace) -> int:
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
    device = parse_device(args.device)
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


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "fit-teacher",
        run,
        help="fit the acoustic teacher (Mel-RVQ tokens or k-means clusters) on a folder of audio, for train.py "
        "--teacher",
        description=_DESCRIPTION,
    )
    p.add_argument("audio_dir", metavar="AUDIO_DIR", help="folder (recursive) or .csv/.txt manifest of audio")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--type", choices=("mel-rvq", "kmeans"), default="mel-rvq", help="teacher type (default: %(default)s)"
    )
    add_sample_rate(p, f"Hz (default: {MERT_SAMPLE_RATE} for mel-rvq, 16000 for kmeans)", default=None)
    p.add_argument("--codebooks", type=positive_int, default=None, help="mel-rvq: RVQ stages (default: 8)")
    p.add_argument("--codebook-size", type=positive_int, default=None, help="mel-rvq: codes per stage (default: 1024)")
    p.add_argument("--steps", type=positive_int, default=None, help="mel-rvq: fitting steps (default: 300)")
    p.add_argument(
        "--feature", choices=("mfcc", "logmel"), default=None, help="kmeans: frame features (default: mfcc, 39 dims)"
    )
    p.add_argument("--clusters", type=positive_int, default=None, help="kmeans: number of clusters (default: 100)")
    p.add_argument(
        "--n-mels", type=positive_int, default=None, help="kmeans: mel filters (default: 23 for mfcc, 80 for logmel)"
    )
    p.add_argument(
        "--max-frames", type=positive_int, default=None, help="kmeans: cluster at most this many frames (default: "
        "500000, a seeded sample)",
    )  # fmt: skip
    p.add_argument("--max-clips", type=positive_int, default=256, help="fit on at most this many clips")
    p.add_argument("--min-seconds", type=positive_float, default=1.0, help="skip shorter clips (default: 1 s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
