"""Does pre-training learn? The probe report of README: the ``tiny`` preset after README's main command
(``python train.py``, 1,000 steps on the synthetic corpus) against the same model at its random initialisation
and against raw CQT and MFCC features, on the ``mert-fast make-probe-data`` set, over three seeds.

For each seed ``s``: ``python train.py --seed s`` (the main command with another seed) gives the pre-trained
model; ``torch.manual_seed(s); MERTModel(config)`` is exactly the student that run started from (the trainer
initialises it the same way). Every feature source is probed with MARBLE's protocol (``mert-fast probe``: every
hidden state and the learned weighted sum; probe seed ``s``); the reported score is the test score of the probe
with the best valid score among those (the weighted sum's own test scores are kept in the JSON too). CQT and MFCC
features do not depend on the seed; only their probes do.

    python bench/probe_report.py --work /tmp/probe_report            # about 20-30 min on 2 CPU cores
    python bench/probe_report.py --work /tmp/probe_report --table    # print the table of a finished run
    python bench/probe_report.py --work /tmp/real_report --data REAL --tasks key,instrument,composer  # real music
    # the longer recipe, one command: the real probe set, a real-music corpus and 4,000 steps a seed
    python bench/probe_report.py --work /tmp/real_long --real --tasks key,instrument,program,composer \
        --corpus-clips 300 --train-args "--loss-weights 10 20 --max-steps 4000"
    # the same models on a fresh set that shares no piece with the probe set or the corpus (no training)
    mert-fast make-probe-data /tmp/confirm --real --seed 1 --composers bach,palestrina --pieces-per-composer 100 \
        --clips-per-composer 800 --exclude-probe-set /tmp/real_long/data --exclude-probe-set /tmp/real_long/corpus
    python bench/probe_report.py --work /tmp/real_long_confirm --data /tmp/confirm --tasks key \
        --models-from /tmp/real_long
    # pre-training on mixtures (make-corpus --real --ensemble), probed on an ensemble set
    python bench/probe_report.py --work /tmp/ensemble_mix --data ENSEMBLE --tasks instrument,ensemble,key \
        --corpus-clips 300 --corpus-ensemble --train-args "--loss-weights 10 50"

Writes ``WORK/report.json`` and ``WORK/report.md`` (the README table); ``--out FILE`` copies the JSON (the
committed ``bench/results/cpu/probe_report.json``). Finished steps are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mert_fast.model.mert import MERTModel  # noqa: E402
from mert_fast.probe.dataset import make_probe_data  # noqa: E402
from mert_fast.probe.probe import run_probe  # noqa: E402
from mert_fast.probe.real import make_real_corpus, make_real_probe_data  # noqa: E402
from mert_fast.probe.real_render import RENDER_VARY  # noqa: E402

logger = logging.getLogger("probe_report")

#: The three tasks of the target (multi-class, accuracy); ``--tasks`` adds chord_notes (multi-label) or pitch.
TASKS = ("pitch_class", "instrument", "chord_quality")
TARGET_TASKS = TASKS
SOURCES = ("pretrained", "random", "cqt", "mfcc")
TARGET_POINTS = 5.0
#: On the real-music set (``make-probe-data --real``): pre-training beats random init by this much on both tasks.
REAL_TARGET_TASKS = ("key", "instrument")
REAL_TARGET_POINTS = 10.0


def _corpus_args(
    work: Path,
    data: Path,
    clips: int,
    seeds: list[int],
    train_args: tuple[str, ...],
    ensemble: bool = False,
    renders: int = 1,
    render_vary: str = "instruments",
) -> dict:
    """``train.py`` flags by seed for pre-training on a real-music corpus of ``clips`` clips rendered into
    ``WORK/corpus`` (every piece of the probe set ``data`` left out; ``ensemble``: every part on an instrument of
    its own; ``renders``: each clip that many times, on other instruments or, ``render_vary="notes"``, on other
    notes): the first seed's run fits the teacher, the others reuse it (unless ``train_args`` name a teacher). A
    corpus rendered before is reused; one of another kind (ensemble or not, other renders) is an error."""
    audio = work / "corpus" / "audio"
    meta = work / "corpus" / "probe_data.json"
    if not meta.is_file():
        logger.info("rendering a real-music corpus of %d clips into %s", clips, audio.parent)
        make_real_corpus(audio.parent, clips, exclude_probe_sets=[data], ensemble=ensemble, renders=renders,
                         render_vary=render_vary)  # fmt: skip
    else:
        found = json.loads(meta.read_text())
        vary = render_vary if renders > 1 else None
        n_renders = found.get("renders", 1)  # a corpus written before render_vary existed varied the instruments
        found_vary = found.get("render_vary", "instruments" if n_renders > 1 else None)
        kept = found.get("ensemble", False), n_renders, found_vary
        if kept != (ensemble, renders, vary):
            kind = f"{'an ensemble' if ensemble else 'a single-instrument'} corpus of {renders} render(s) a clip"
            kind += f" ({render_vary} vary)" if vary else ""
            raise ValueError(f"{audio.parent} holds a corpus of another kind; asked for {kind} (use another WORK)")
    args = {seed: (*train_args, "--data", str(audio)) for seed in seeds}
    if "--teacher" not in train_args:
        teacher = work / f"pretrain_s{seeds[0]}" / "teacher"
        args |= {seed: (*args[seed], "--teacher", str(teacher)) for seed in seeds[1:]}
    return args


def _pretrain(work: Path, seed: int, train_args: tuple[str, ...] = ()) -> Path:
    run = work / f"pretrain_s{seed}"
    if not (run / "model" / "config.json").is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), "--output-dir", str(run), "--seed", str(seed), *train_args]
        logger.info("pre-training: %s", " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)
    return run / "model"


def _trained_model(models_from: Path, seed: int) -> Path:
    """The model seed ``seed`` pre-trained in another report's working folder ``models_from`` (to probe it on
    another set without training again)."""
    model = models_from / f"pretrain_s{seed}" / "model"
    if not (model / "config.json").is_file():
        raise SystemExit(f"error: --models-from: no pre-trained model of seed {seed} in {models_from} ({model})")
    return model


def _recipe_of(models_from: Path) -> dict:
    """Where ``--models-from`` models come from and the recipe their own report recorded (None where it has none)."""
    path = models_from / "report.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    return {"work": str(models_from)} | {k: earlier.get(k) for k in ("train_args", "corpus_clips", "commit")}


def _random_init(work: Path, seed: int, pretrained: Path) -> Path:
    out = work / f"random_s{seed}"
    if not (out / "config.json").is_file():
        config = MERTModel.from_pretrained(pretrained).config
        torch.manual_seed(seed)
        MERTModel(config).save_pretrained(out)
    return out


def _score(result: dict, metric: str) -> tuple[float, str]:
    """Test score of the probe with the best valid score among every hidden state and the weighted sum (model
    selection on valid, as MARBLE picks a layer), and which probe that was."""
    summary = result["summary"]
    candidates = {f"layer {k}": v for k, v in summary["layers"].items()}
    if summary["weighted_sum"] is not None:
        candidates["weighted sum"] = summary["weighted_sum"]
    name = max(candidates, key=lambda k: candidates[k]["valid"][metric]["mean"])
    return candidates[name]["test"][metric]["mean"], name


def run(
    work: Path,
    seeds: list[int],
    tasks: tuple[str, ...] = TASKS,
    data: Path | None = None,
    train_args: tuple[str, ...] = (),
    real: bool = False,
    corpus_clips: int | None = None,
    models_from: Path | None = None,
    corpus_ensemble: bool = False,
    corpus_renders: int = 1,
    corpus_render_vary: str = "instruments",
) -> dict:
    """Pre-train, probe and summarise; ``data``: a probe set made before, else one is made in ``WORK/data`` (the
    real-music set when ``real``, else the synthetic one); ``train_args``: more ``train.py`` flags (another recipe
    than the main command's); ``corpus_clips``: pre-train on that many clips of real music instead
    (:func:`_corpus_args`; ``corpus_ensemble``: of ensembles, ``corpus_renders``: each clip that many times, what
    varies between them ``corpus_render_vary``); ``models_from``: probe the models another run of
    this script pre-trained there instead of training (``train_args`` and ``corpus_clips`` are then unused)."""
    if models_from is not None and (train_args or corpus_clips is not None):
        raise ValueError("models_from probes models trained before: train_args and corpus_clips must be unset")
    if data is None:
        data = work / "data"
        if not (data / "probe_data.json").is_file():
            (make_real_probe_data if real else make_probe_data)(data)
    seed_args = {seed: train_args for seed in seeds}
    if corpus_clips is not None:
        seed_args = _corpus_args(work, data, corpus_clips, seeds, train_args, corpus_ensemble, corpus_renders,
                                 corpus_render_vary)  # fmt: skip
    elif corpus_ensemble or corpus_renders != 1:
        raise ValueError("corpus_ensemble and corpus_renders need corpus_clips")
    manifests = {t: data / f"{t}.csv" for t in tasks}
    rows: dict[str, dict[str, list[float]]] = {t: {s: [] for s in SOURCES} for t in tasks}
    best_layer: dict[str, dict[str, list]] = {t: {s: [] for s in SOURCES} for t in tasks}
    weighted_sum: dict[str, dict[str, list[float]]] = {t: {s: [] for s in SOURCES[:2]} for t in tasks}
    metrics: dict[str, str] = {}
    timings: dict[str, float] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        if models_from is None:
            pretrained = _pretrain(work, seed, seed_args[seed])
        else:
            pretrained = _trained_model(models_from, seed)
        timings[f"pretrain_s{seed}"] = time.perf_counter() - t0
        hf = json.loads((pretrained / "config.json").read_text())
        student = f"{hf['num_hidden_layers']} x {hf['hidden_size']}"
        sources = {"pretrained": str(pretrained), "random": str(_random_init(work, seed, pretrained))}
        sources |= {"cqt": "cqt", "mfcc": "mfcc"}
        for task, manifest in manifests.items():
            for name, source in sources.items():
                tag = name if name in ("cqt", "mfcc") else f"{name}_s{seed}"
                t0 = time.perf_counter()
                result = run_probe(
                    manifest, source, work / "probe" / task / f"{name}_s{seed}", cache=work / "cache" / tag,
                    seeds=[seed],
                )  # fmt: skip
                timings[f"{task}/{name}_s{seed}"] = time.perf_counter() - t0
                metrics[task] = result["primary_metric"]
                score, chosen = _score(result, result["primary_metric"])
                rows[task][name].append(score)
                best_layer[task][name].append(chosen)
                weighted = result["summary"]["weighted_sum"]
                if weighted is not None:
                    weighted_sum[task][name].append(weighted["test"][result["primary_metric"]]["mean"])
                logger.info("%s %s seed %d: %.4f", task, name, seed, rows[task][name][-1])
    report = {"seeds": seeds, "metrics": metrics, "scores": rows, "chosen_probe": best_layer,
              "weighted_sum_scores": weighted_sum, "seconds": timings, "student": student}  # fmt: skip
    report["summary"] = {
        t: {
            s: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for s, v in r.items()
        }
        for t, r in rows.items()
    }
    gains = {t: 100 * (report["summary"][t]["pretrained"]["mean"] - report["summary"][t]["random"]["mean"])
             for t in tasks}  # fmt: skip
    report["gain_points"] = gains
    if set(REAL_TARGET_TASKS) <= set(tasks):  # the real-music set: key and instrument both
        report["target_met"] = all(gains[t] >= REAL_TARGET_POINTS for t in REAL_TARGET_TASKS)
    else:
        report["target_met"] = sum(gains.get(t, 0.0) >= TARGET_POINTS for t in TARGET_TASKS) >= 2
    return report


def table(report: dict) -> str:
    """The README table: mean ± std over seeds of the weighted-sum probe's test score."""
    scale = {"accuracy": 100.0, "roc_auc": 100.0, "r2": 1.0}
    student = report.get("student", "2 x 64")  # reports from before it was recorded: the tiny preset's
    head = f"| task (test metric) | pre-trained ({student}) | random init | pre-trained − random | CQT | MFCC |"
    lines = [head, "|---|---|---|---|---|---|"]
    for task, row in report["summary"].items():
        metric = report["metrics"][task]
        k = scale.get(metric, 1.0)

        def fmt(m: float, s: float, k: float = k) -> str:
            return f"{m * k:.1f} ± {s * k:.1f}" if k == 100.0 else f"{m:.3f} ± {s:.3f}"

        diff = np.asarray(report["scores"][task]["pretrained"]) - np.asarray(report["scores"][task]["random"])
        delta = f"{diff.mean() * k:+.1f}" if k == 100.0 else f"{diff.mean():+.3f}"
        unit = " (%)" if k == 100.0 else ""
        cells = [fmt(row[s]["mean"], row[s]["std"]) for s in SOURCES]
        lines.append(f"| {task} ({metric}{unit}) | {cells[0]} | {cells[1]} | {delta} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (reused when run again)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (default: 0,1,2)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report JSON here")
    parser.add_argument("--data", type=Path, default=None, help="a probe set made before (default: make one)")
    parser.add_argument("--train-args", default="", help="more train.py flags, one string (default: none)")
    parser.add_argument("--real", action="store_true", help="without --data: make the real-music probe set")
    parser.add_argument("--corpus-clips", type=int, default=None,
                        help="pre-train on this many clips of real music rendered into WORK/corpus, none of the "
                        "probe set's pieces; the first seed's run fits the teacher the others use")  # fmt: skip
    parser.add_argument("--corpus-ensemble", action="store_true",
                        help="with --corpus-clips: every part of a corpus clip on an instrument of its own "
                        "(make-corpus --real --ensemble)")  # fmt: skip
    parser.add_argument("--corpus-renders", type=int, default=1, metavar="N",
                        help="with --corpus-clips: render each corpus clip N times, the same notes on other "
                        "instruments (make-corpus --real --renders N; train with --paired-renders)")  # fmt: skip
    parser.add_argument("--corpus-render-vary", choices=RENDER_VARY, default="instruments",
                        help="with --corpus-renders: what the renders after the first change (make-corpus "
                        "--render-vary; default: %(default)s)")  # fmt: skip
    parser.add_argument("--models-from", type=Path, default=None, metavar="WORK",
                        help="probe the models a finished run pre-trained in WORK (WORK/pretrain_s<seed>/model) "
                        "instead of training, e.g. on a fresh set given by --data")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="only print the table of WORK/report.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.table:
        print(table(json.loads((args.work / "report.json").read_text())))
        return 0
    if args.models_from is not None and (args.train_args or args.corpus_clips is not None):
        parser.error("--models-from probes models trained before: it takes no --train-args or --corpus-clips")
    if args.corpus_ensemble and args.corpus_clips is None:
        parser.error("--corpus-ensemble needs --corpus-clips")
    if args.corpus_renders != 1 and args.corpus_clips is None:
        parser.error("--corpus-renders needs --corpus-clips")
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    train_args = tuple(shlex.split(args.train_args))
    tasks = tuple(args.tasks.split(","))
    report = run(args.work, seeds, tasks, args.data, train_args, args.real, args.corpus_clips, args.models_from,
                 args.corpus_ensemble, args.corpus_renders, args.corpus_render_vary)  # fmt: skip
    report["train_args"] = args.train_args
    report["corpus_clips"] = args.corpus_clips
    report["corpus_ensemble"] = args.corpus_ensemble
    report["corpus_renders"] = args.corpus_renders
    report["corpus_render_vary"] = args.corpus_render_vary if args.corpus_renders > 1 else None
    if args.models_from is not None:
        report["models_from"] = _recipe_of(args.models_from)
    git = ["git", "-C", str(ROOT)]
    report["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    report["dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--", "mert_fast", "train.py", "bench"],
                                          capture_output=True, text=True).stdout.strip())  # fmt: skip
    report["torch_threads"] = torch.get_num_threads()
    report["cpu_count"] = os.cpu_count()
    text = json.dumps(report, indent=2) + "\n"
    (args.work / "report.json").write_text(text)
    (args.work / "report.md").write_text(table(report) + "\n")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(table(report))
    print(
        f"gain of pre-training over random init (points): {report['gain_points']}; target met: {report['target_met']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
