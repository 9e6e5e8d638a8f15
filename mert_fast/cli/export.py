"""``mert-fast export``: a train.py checkpoint -> an HF model directory."""

from __future__ import annotations

import argparse

from mert_fast.cli.common import add_command

_DESCRIPTION = (
    "Consolidate the fp32 master weights of a DeepSpeed checkpoint written by train.py (ZeRO-1/2/3 "
    "partitions of every rank; no GPU needed) and write the student as config.json + model.safetensors, the "
    "layout transformers' HubertModel (Data2VecAudioModel for music2vec) and MERTModel.from_pretrained load."
)


def run(args: argparse.Namespace) -> int:
    from mert_fast.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"{out}: config.json + model.safetensors (loads with MERTModel.from_pretrained and transformers)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "export",
        run,
        help="turn a train.py checkpoint (or a run directory's newest) into an HF model directory",
        description=_DESCRIPTION,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", help="a checkpoint, checkpoints/ or run directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
