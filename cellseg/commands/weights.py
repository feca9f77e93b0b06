"""`cellseg weights`: register, list and verify released weights (weights/manifest.yaml).

    cellseg weights add runs/unet/best.pt --name unet_r34_fold0
    cellseg weights list
    cellseg weights verify [NAME ...]
"""

from __future__ import annotations

import argparse
import sys

from cellseg.weights import DEFAULT_MANIFEST


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="copy a checkpoint into weights/ and register it")
    p.add_argument("checkpoint", help="a cellseg checkpoint (.pt)")
    p.add_argument("--name", required=True, help="unique name (becomes the file name)")
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    p.add_argument("--overwrite", action="store_true", help="replace an entry of the same name")
    p = sub.add_parser("list", help="print the registered weights")
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    p = sub.add_parser("verify", help="check every file exists and matches its sha256")
    p.add_argument("names", nargs="*", help="entries to check (default: all)")
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST))


def run(args: argparse.Namespace) -> int:
    from cellseg import weights

    try:
        if args.action == "add":
            e = weights.add_weights(args.checkpoint, args.name, manifest=args.manifest,
                                    overwrite=args.overwrite)
            print(f"registered {e.name}: {e.file} sha256 {e.sha256} family {e.family} "
                  f"score {e.score}")
            return 0
        if args.action == "list":
            entries = weights.load_manifest(args.manifest)
            if not entries:
                print(f"{args.manifest}: no weights registered")
            for e in entries:
                score = "-" if e.score is None else f"{e.score:.4f}"
                print(f"{e.name}\t{e.file}\t{e.family}\tscore {score}\t{e.sha256[:12]}\t"
                      f"{e.size / 2**20:.1f} MiB")
            return 0
        problems = weights.verify_manifest(args.manifest, args.names or None)
    except (ValueError, KeyError) as exc:
        # the manifest module reports bad manifests/names as ValueError/KeyError: user mistakes
        # here, shown on one line by the CLI boundary (FileNotFoundError goes there directly)
        from cellseg.errors import UserError

        raise UserError(str(exc.args[0] if exc.args else exc)) from exc
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        print(f"{args.manifest}: all weights present and matching")
    return 1 if problems else 0
