"""`cellseg weights`: register, list and verify released weights (weights/manifest.yaml), and
prefetch pretrained starting points for offline training.

    cellseg weights add runs/unet/best.pt --name unet_r34_fold0
    cellseg weights list
    cellseg weights verify [NAME ...]
    cellseg weights prefetch unet:resnet34:imagenet maskrcnn:coco sam:vit_b --out wcache
    cellseg weights prefetch --config maskrcnn_competition_finetune --out wcache

``prefetch`` writes the folder laid out as the torch.hub and huggingface caches, plus
``dataset-metadata.json`` (``kaggle datasets create -p wcache --dir-mode zip``); train with
``--weights-cache wcache --offline`` (``cellseg.models.pretrained``).
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
    from cellseg.models.pretrained import SPEC_HELP

    p = sub.add_parser("prefetch", help="download pretrained starting points into a folder laid "
                                        "out as the torch.hub/huggingface caches (a Kaggle dataset)")
    p.add_argument("names", nargs="*", help=SPEC_HELP)
    p.add_argument("--config", action="append", default=[], metavar="NAME",
                   help="also every pretrained name this training config uses (repeatable)")
    p.add_argument("--out", required=True, help="the cache folder to write")
    p.add_argument("--dataset-id", default=None,
                   help="Kaggle owner/slug (default $KAGGLE_USERNAME/cellseg-pretrained-weights)")
    p.add_argument("--title", default=None, help="Kaggle dataset title (>= 6 characters)")


def run(args: argparse.Namespace) -> int:
    from cellseg import weights
    from cellseg.errors import UserError

    try:
        if args.action == "prefetch":
            return _prefetch(args)
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


def _prefetch(args: argparse.Namespace) -> int:
    from cellseg.config import load_train_config
    from cellseg.models import pretrained

    sources = [pretrained.parse_spec(n) for n in args.names]
    for name in args.config:
        cfg = load_train_config(name, [])
        sources += pretrained.required_sources(cfg.model.family, cfg.model.args)
    files = pretrained.prefetch(list(dict.fromkeys(sources)), args.out, dataset_id=args.dataset_id,
                                title=args.title)
    for f in files:
        print(f)
    print(f"{args.out}: {len(files)} files + dataset-metadata.json; upload with `kaggle datasets "
          f"create -p {args.out} --dir-mode zip`, train with --weights-cache <its mount> --offline")
    return 0
