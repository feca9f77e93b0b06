"""Arguments and checks shared by several `cellseg` commands, written once.

    from cellseg.commands import common
    common.add_infer_config_args(parser)                       # --config, --set
    common.add_fold_args(parser)                                # --fold, --n-folds, --fold-seed
    records = common.select_fold(records, args)                 # range-checked, one implementation
    common.output_file(args.out, "--out")                       # fail early: --out is a folder

Count flags are named ``--num-<things>``; a flag named after a thing (``--images``, ``--data``) is a
path. Every check here raises ``cellseg.errors.UserError``; ``cellseg.cli`` prints it on one line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from cellseg.errors import UserError


def add_config_args(parser: argparse.ArgumentParser, *, default: str | None,
                    what: str = "inference", dest: str = "set") -> None:
    """``--config NAME_OR_YAML`` and repeatable ``--set KEY=VALUE`` (stored in ``args.<dest>``)."""
    req = default is None
    parser.add_argument("--config", default=default, required=req,
                        help=f"{what} config: a shipped name or a YAML path"
                             + ("" if req else f" (default: {default})"))
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set a.b=1 (repeatable)")



def add_infer_config_args(parser: argparse.ArgumentParser, *, what: str = "inference",
                          flag: str = "--config", dest: str = "set",
                          set_flag: str = "--set") -> None:
    """``--config NAME_OR_YAML`` for an inference config, optional: without it, the kit's
    defaults (``cellseg.infer.config.load_inference_config()``); and repeatable ``--set``."""
    parser.add_argument(flag, default=None,
                        help=f"{what} config: a YAML path or a shipped name; it changes the "
                             f"keys it names (default: the kit's defaults, "
                             f"cellseg/infer/config.py)")
    parser.add_argument(set_flag, dest=dest, action="append", default=[], metavar="KEY=VALUE",
                        help="override an inference config key, e.g. --set tta=[h] "
                             "(repeatable)")

def add_weights_args(parser: argparse.ArgumentParser) -> None:
    """``--weights CKPT ...`` (several make an ensemble) and ``--model-weights W ...``."""
    parser.add_argument("--weights", nargs="+", required=True, metavar="CKPT",
                        help="checkpoint(s); several make an ensemble")
    parser.add_argument("--model-weights", nargs="+", type=float, default=None, metavar="W",
                        help="one ensembling weight per checkpoint (default: 1 each)")


def check_weights(args: argparse.Namespace, *, exist: bool = True) -> None:
    """``--model-weights`` has one value per checkpoint; with ``exist`` every ``--weights`` file
    exists (tune skips that when its --cache holds the predictions)."""
    for w in args.weights if exist else ():
        input_path(w, "--weights", kind="file")
    n_w, n_m = len(args.weights), len(args.model_weights or args.weights)
    if n_m != n_w:
        raise UserError(f"{n_m} model weights for {n_w} checkpoints", where="--model-weights",
                        fix="pass one weight per --weights file")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_fold_args(parser: argparse.ArgumentParser, *, what: str = "use") -> None:
    """``--fold K`` / ``--n-folds`` / ``--fold-seed``: the same folds as training's ``data.*``."""
    parser.add_argument("--fold", type=int, default=None,
                        help=f"{what} only this fold of make_folds (default: every image)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--fold-seed", type=int, default=0, help="fold seed (default 0)")


def add_matching_arg(parser: argparse.ArgumentParser) -> None:
    """``--matching dsb|greedy``: the metric's rule where truth overlaps (docs/metric.md)."""
    from cellseg.core.metrics import DEFAULT_MATCHING, MATCHING_RULES

    parser.add_argument("--matching", default=DEFAULT_MATCHING, choices=MATCHING_RULES,
                        help="how predictions match overlapping true cells: dsb (Data Science "
                             "Bowl 2018 rule, what Kaggle's evaluation page describes) or greedy "
                             f"(one-to-one); both are reported (default {DEFAULT_MATCHING})")


def select_fold(records: Sequence, args: argparse.Namespace) -> list:
    """The records of ``args.fold`` (all of them when it is None); see ``data.folds.split_fold``."""
    if args.fold is None:
        return list(records)
    from cellseg.data.folds import split_fold

    return split_fold(records, args.fold, n_folds=args.n_folds, seed=args.fold_seed)[1]


def add_count_arg(parser: argparse.ArgumentParser, name: str, *, default: int | None,
                  help: str, old: str | None = None) -> None:
    """A count flag ``--num-<name>``; ``old`` keeps a former spelling as a hidden alias."""
    flags = [f"--num-{name}"] + ([old] if old else [])
    parser.add_argument(*flags, dest=f"num_{name.replace('-', '_')}", type=int, default=default,
                        metavar="N", help=help + (f" ({old} is a deprecated alias)" if old else ""))


def default_device(device: str | None) -> str:
    """``device`` or "cuda" when available, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check an output FILE path before any work: not a folder, its parent not a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError("output file is a folder", where=f"{flag} {path}",
                        fix="pass a file name inside it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output file's folder {parent} is a file", where=f"{flag} {path}",
                                fix="choose a path inside a folder")
            break
    return path


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check an output FOLDER path before any work: not an existing file (nor inside one)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "output folder is a file" if p == path else f"{p} is a file"
                raise UserError(what, where=f"{flag} {path}",
                                fix="choose a folder path (it is created)")
            break
    return path


def input_path(path: str | os.PathLike, flag: str, *, kind: str = "file or folder") -> Path:
    """Check an input path exists before any work (a one-line error naming the flag)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{kind} does not exist", where=f"{flag} {path}", fix="check the path")
    if kind == "file" and path.is_dir():
        raise UserError("expected a file, got a folder", where=f"{flag} {path}",
                        fix="pass the file inside it")
    if kind == "folder" and not path.is_dir():
        raise UserError("expected a folder, got a file", where=f"{flag} {path}",
                        fix="pass its folder")
    return path
