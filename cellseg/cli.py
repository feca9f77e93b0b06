"""The `cellseg` command line.

    cellseg data synth --out data/synth --images 24 --seed 0
    cellseg data check data/synth/competition
    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet
    cellseg predict --weights runs/unet/best.pt --images data/synth/competition/test --out submission.csv
    cellseg validate submission.csv --images data/synth/competition/test
    cellseg score --truth data/synth/competition/train.csv --pred submission.csv
    cellseg demo --out demo_out

Each subcommand lives in ``cellseg/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``cellseg --help`` and
``import cellseg`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help). A plain table: no registry resolved by import side effects.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("cellseg.commands.data", "synthesise, check and convert data sets"),
    "score": ("cellseg.commands.score", "score predictions with the competition metric and COCO AP/AR"),
    "validate": ("cellseg.commands.validate", "validate a submission.csv"),
    "train": ("cellseg.commands.train", "train a model (single GPU, CPU or torchrun DDP)"),
    "predict": ("cellseg.commands.predict", "predict instances and write submission.csv"),
    "tune": ("cellseg.commands.tune", "tune postprocessing thresholds on a validation fold"),
    "weights": ("cellseg.commands.weights", "register released weights in weights/manifest.yaml"),
    "kaggle": ("cellseg.commands.kaggle", "build, rehearse, push and submit Kaggle kernels"),
    "demo": ("cellseg.commands.demo", "run the whole pipeline on synthetic data"),
    "cv": ("cellseg.commands.cv", "cross-validate a recipe (and the plain-UNet reference) on a few images"),
    "pseudo-label": ("cellseg.commands.pseudo_label", "pseudo-label unlabeled images as a new source"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s arguments are loaded (all when None)."""
    from cellseg import __version__

    parser = argparse.ArgumentParser(prog="cellseg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"cellseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
