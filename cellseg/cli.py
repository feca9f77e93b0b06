"""The `cellseg` command line.

    cellseg data synth --out data/synth --num-images 24 --seed 0
    cellseg data check data/synth/competition
    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet
    cellseg predict --weights runs/unet/best.pt --images data/synth/competition/test --out submission.csv
    cellseg validate submission.csv --images data/synth/competition/test
    cellseg score --truth data/synth/competition/train.csv --pred submission.csv
    cellseg demo --out demo_out
    cellseg --debug train ...            # a user mistake shows its traceback too (or CELLSEG_DEBUG=1)

Each subcommand lives in ``cellseg/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``cellseg --help`` and
``import cellseg`` stay fast. Arguments shared by several commands come from
``cellseg/commands/common.py``.

``main`` is the single error boundary: a user mistake (``cellseg.errors.UserError``, or an
``OSError`` such as a missing file) raised anywhere below a command ends as one line
``cellseg <cmd>: <what>, <where>, <fix>`` with exit code 2 and no traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
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

# argparse ``dest`` of the nested subcommand of commands that have one (shown in error lines)
_SUB_DESTS = ("data_command", "action")

# stdlib OSError subclasses that are user mistakes: (what happened to the path, the fix)
_OS_ERRORS: tuple[tuple[type[OSError], str, str], ...] = (
    (FileNotFoundError, "does not exist", "check the path"),
    (IsADirectoryError, "is a folder where a file is expected", "pass a file path"),
    (NotADirectoryError, "is (inside) a file where a folder is expected", "pass a folder path"),
    (PermissionError, "permission denied", "check its permissions or choose another path"),
    (FileExistsError, "already exists", "remove it or choose another path"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s arguments are loaded (all when None)."""
    from cellseg import __version__

    parser = argparse.ArgumentParser(prog="cellseg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"cellseg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user mistakes too (also CELLSEG_DEBUG=1); "
                             "may also be given after the command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cellseg ARGV``; returns the exit code (2: a user mistake, reported on one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere before a "--" (nested subparsers would reject it after them)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or os.environ.get("CELLSEG_DEBUG", "") not in ("", "0")
    argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < end)]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - the boundary: user mistakes become one line
        message = user_message(exc)
        if message is None:
            raise  # a bug: keep the traceback
        if debug:
            traceback.print_exc()
        label = " ".join([args.command] + [str(getattr(args, d)) for d in _SUB_DESTS
                                           if getattr(args, d, None)])
        print(f"cellseg {label}: {message}", file=sys.stderr)
        return 2


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user mistake, or None when ``exc`` is a bug."""
    from cellseg.errors import UserError

    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, OSError) and (exc.filename is not None or isinstance(
            exc, tuple(t for t, _, _ in _OS_ERRORS))):
        text = _os_message(exc)
    else:
        return None
    return _one_line(text, exc)


def _os_message(exc: OSError) -> str:
    what, fix = exc.strerror or "cannot be used", "check the path"
    for cls, cls_what, cls_fix in _OS_ERRORS:
        if isinstance(exc, cls):
            what, fix = cls_what, cls_fix
            break
    if exc.filename is None:  # raised with a message of its own, e.g. "data/x does not exist"
        return f"{exc}, {fix}"
    return f"{os.fspath(exc.filename)} {what}, {fix}"


def _one_line(text: str, exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if "Original Traceback" in text and lines:
        # torch's DataLoader re-raises a worker's exception as type(exc)(formatted traceback):
        # the original message is the last line, after "module.ExcType: "
        last = lines[-1]
        name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        return last[len(name):] if last.startswith(name) else last
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    # a multi-line message (e.g. DataError listing every problem): the summary and the first
    # detail; the rest is what --debug or `cellseg data check` is for
    problems = getattr(exc, "problems", None)
    more = (len(problems) if isinstance(problems, list) else len(lines) - 1) - 1
    tail = f" (and {more} more; `cellseg data check` lists them all)" if more > 0 else ""
    return f"{lines[0].rstrip(':')}: {lines[1]}{tail}"


if __name__ == "__main__":
    sys.exit(main())
