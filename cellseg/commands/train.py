"""`cellseg train`: train a model family from a config (CPU, one GPU, or torchrun DDP).

    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet_tiny
    cellseg train --config maskrcnn_competition_finetune --data /data/sartorius \\
        --init-from runs/maskrcnn_lc/best.pt --out runs/mrcnn_f0 --set data.fold=0
    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet_tiny --resume
    torchrun --nproc_per_node 2 -m cellseg train --config unet_tiny --data ... --out runs/ddp
    cellseg train --config unet_competition_finetune --data ... --weights-cache wcache --offline

The arguments and the work live in ``cellseg.training.loop`` (``get_args_parser``/``main``); the
pretrained weight flags are resolved by ``cellseg.models.pretrained.check_pretrained_available``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cellseg.training.loop import add_arguments as _add

    _add(parser)


def run(args: argparse.Namespace) -> int:
    from cellseg.training.loop import main

    return main(args)
