"""`cellseg cv`: cross-validate a training recipe on a handful of annotated images.

    cellseg cv --data ../shared/data/sartorius --data ../shared/data/livecell:val \\
        --config unet_small_real --steps 300 --reference --out runs/cv
    cellseg cv --data data/sartorius --folds 5 --steps 2000 --set optim.lr=5e-4 --out runs/cv5

Leave-one-image-out by default (``--folds K``: K grouped folds). Each fold trains the recipe with
``python -m cellseg train`` for ``--steps`` steps (``--threads`` per process), predicts the held-out
images and scores them with the competition metric; ``--reference [PEER ...]`` also runs peers
written independently of the kit on the same folds and step budget (``plain_unet``, the default,
reported as method ``plain``; ``cellpose``; ``plain_maskrcnn``: see docs/peers.md). Prints mean ±
sd per method and cell type and every image's score; writes ``OUT/cv.json`` and ``OUT/cv.csv``.
``--pseudo-images DIR`` adds ``kit_pl``: each fold's kit model pseudo-labels those images and a
student is trained on the fold's images plus its pseudo-labels (the gain of pseudo-labels, without
leaking the held-out image). ``--resume`` reuses finished folds; ``--report-only`` summarises
what is finished (e.g. while a run goes on). ``--report [DIR]`` also writes the results page
(default ``OUT/report/index.html``): the methods side by side on every held-out image, the
per-image differences against the first method (kit), on how many images each does better.
The logic lives in ``cellseg.cv``.
"""

from __future__ import annotations

import argparse
import sys

from cellseg.commands.common import add_infer_config_args, add_matching_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="SRC",
                        help="annotated source: competition folder, train.csv, LIVECell root or "
                             "COCO JSON, optionally PATH:SPLIT (repeat for several)")
    parser.add_argument("--split", default=None,
                        help="split of sources that name none (default: LIVECell val, else train)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default="unet_small_real", help="training config (recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="training config override (repeatable)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per fold")
    parser.add_argument("--folds", type=int, default=None,
                        help="K grouped folds (default: leave one image out)")
    parser.add_argument("--reference", nargs="*", default=None, metavar="PEER",
                        help="also run these peers on the same folds and budget: plain_unet "
                             "(the default when none is named), cellpose, plain_maskrcnn "
                             "(docs/peers.md)")
    parser.add_argument("--only-reference", action="store_true",
                        help="run only the peers (those of --reference, else plain_unet)")
    add_infer_config_args(parser, what="the kit's inference",
                          flag="--infer-config", dest="infer_set", set_flag="--infer-set")
    parser.add_argument("--tta", action="store_true", help="flip TTA for both methods")
    parser.add_argument("--threads", type=int, default=1, help="threads per training process")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the folds and seeds every training (default 0)")
    parser.add_argument("--train-seed", type=int, default=None, metavar="SEED",
                        help="seed the trainings with this instead, on the folds of --seed: "
                             "how much a score moves with the training seed alone")
    add_matching_arg(parser)
    parser.add_argument("--max-images", type=int, default=None,
                        help="use only the first N annotated images")
    parser.add_argument("--overlays", default=None, metavar="DIR",
                        help="write TP/FP/FN overlays of the held-out predictions here")
    parser.add_argument("--extra-train", action="append", default=[], metavar="SRC",
                        help="also train every fold on this source (e.g. pseudo-labels); "
                             "never scored")
    g = parser.add_argument_group("pseudo-labels (method kit_pl: each fold's kit model teaches "
                                  "a student)")
    g.add_argument("--pseudo-images", nargs="+", default=[], metavar="DIR",
                   help="unlabeled image folders/files; adds the kit_pl method (annotated "
                        "images are left out)")
    g.add_argument("--pseudo-min-score", type=float, default=0.6,
                   help="keep cells whose score reaches this (default 0.6)")
    g.add_argument("--pseudo-min-keep-fraction", type=float, default=0.5,
                   help="reject an image where fewer of its cells are confident (default 0.5)")
    g.add_argument("--pseudo-min-cells", type=int, default=5,
                   help="reject an image with fewer confident cells (default 5)")
    g.add_argument("--pseudo-weight", type=float, default=0.5,
                   help="share of the student's samples drawn from pseudo-labels (default 0.5)")
    g.add_argument("--pseudo-tta", action="store_true", help="the teacher labels with flip TTA")
    g.add_argument("--pseudo-ignore-dropped", action="store_true",
                   help="the student leaves the teacher's dropped cells out of its loss instead "
                        "of learning them as background (cellseg pseudo-label --ignore-dropped)")
    parser.add_argument("--resume", action="store_true", help="reuse finished folds in --out")
    parser.add_argument("--only-fold", type=int, action="append", default=[], metavar="K",
                        help="run only fold K (repeatable; 0-based); finished results of the "
                             "other folds in --out are reported, so processes can share a run")
    parser.add_argument("--report", nargs="?", const="", default=None, metavar="DIR",
                        help="also write the results page comparing the methods image by image "
                             "(default folder: OUT/report)")
    parser.add_argument("--report-only", action="store_true",
                        help="only summarise the folds already finished in --out (train nothing)")


def run(args: argparse.Namespace) -> int:
    import torch

    from cellseg.config import load_train_config
    from cellseg.errors import UserError
    from cellseg.cv import CVSettings, format_table, run_cv
    from cellseg.infer.config import load_inference_config
    from cellseg.data.sources import load_sources

    if args.steps < 1:
        raise UserError(f"--steps {args.steps} is not a step count", where="--steps",
                        fix="pass --steps 1 or more")
    methods = _methods(args)
    # check the configs and sources before any training starts (errors: one line, exit 2)
    load_train_config(args.config, args.overrides)
    load_inference_config(args.infer_config, args.infer_set)
    records = load_sources(args.data, split=args.split, annotated=True)
    if args.max_images:
        records = records[:args.max_images]
    n_folds = args.folds
    if len(records) < 2 or (n_folds is not None and n_folds < 2):
        raise UserError(f"{len(records)} annotated image(s) and --folds {n_folds}",
                        where=f"--data {' '.join(map(str, args.data))}",
                        fix="cross-validation needs >= 2 images and >= 2 folds")
    n_run = len(records) if n_folds is None or n_folds >= len(records) else n_folds
    bad = [k for k in args.only_fold if not 0 <= k < n_run]
    if bad:
        raise UserError(f"--only-fold {bad[0]} is not a fold of this run", where="--only-fold",
                        fix=f"pass 0..{n_run - 1}")
    torch.set_num_threads(max(1, args.threads))
    settings = CVSettings(config=args.config, overrides=tuple(args.overrides), steps=args.steps,
                          n_folds=n_folds, methods=methods, infer_config=args.infer_config,
                          infer_overrides=tuple(args.infer_set), tta=args.tta,
                          threads=args.threads, seed=args.seed, train_seed=args.train_seed,
                          resume=args.resume,
                          overlays=args.overlays, extra_train=tuple(args.extra_train),
                          report_only=args.report_only,
                          pseudo_images=tuple(args.pseudo_images),
                          pseudo_min_score=args.pseudo_min_score,
                          pseudo_min_keep_fraction=args.pseudo_min_keep_fraction,
                          pseudo_min_cells=args.pseudo_min_cells,
                          pseudo_weight=args.pseudo_weight, pseudo_tta=args.pseudo_tta,
                          pseudo_ignore_dropped=args.pseudo_ignore_dropped,
                          only_folds=tuple(args.only_fold), matching=args.matching)
    extra = {"command": ["cellseg", "cv", *sys.argv[2:]] if sys.argv[1:2] == ["cv"] else None,
             "sources": list(args.data)}
    summary, rows = run_cv(records, args.out, settings,
                           log=lambda m: print(m, file=sys.stderr, flush=True), extra=extra)
    print(format_table(summary, rows))
    print(f"wrote {args.out}/cv.json and {args.out}/cv.csv")
    if args.report is not None and rows:
        from pathlib import Path

        from cellseg.viewer.sources import cv_page

        report = Path(args.report or Path(args.out) / "report")
        try:
            page = cv_page(args.out, records, report, command=extra["command"])
        except FileNotFoundError as err:
            raise UserError(str(err), where="--report", fix="rerun the fold(s) named") from None
        print(f"wrote {page} (open it in a browser)")
    return 0


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    """The methods of this CV run from --reference, --only-reference and --pseudo-images,
    checked (unknown peer, missing cellpose package, pseudo-label options) before any work."""
    from cellseg.cv import PEERS
    from cellseg.errors import UserError

    names = list(dict.fromkeys(args.reference or ["plain_unet"]))
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise UserError(f"--reference {bad[0]} is not a peer", where="--reference",
                        fix=f"name some of: {', '.join(PEERS)}")
    peers = tuple(PEERS[n].method for n in names)
    if "cellpose" in names:
        import importlib.util

        if importlib.util.find_spec("cellpose") is None:
            raise UserError("the cellpose peer needs the cellpose package",
                            where="--reference cellpose",
                            fix="pip install -e '.[peers]' && pip install --no-deps "
                                "cellpose==3.1.1.3 (docs/peers.md)")
    methods = (peers if args.only_reference
               else ("kit", *peers) if args.reference is not None else ("kit",))
    if args.pseudo_images:
        if args.only_reference:
            raise UserError("--pseudo-images needs the kit's models as teachers",
                            where="--only-reference", fix="drop --only-reference")
        if not 0.0 < args.pseudo_weight < 1.0:
            raise UserError(f"--pseudo-weight {args.pseudo_weight} is not a share",
                            where="--pseudo-weight", fix="pass a value strictly between 0 and 1")
        from cellseg.data.sources import list_image_files

        if not list_image_files(args.pseudo_images):
            raise UserError("no *.png / *.tif image", where=f"--pseudo-images "
                            f"{' '.join(args.pseudo_images)}",
                            fix="pass the folder(s) of unlabeled images")
        methods = (methods[0], "kit_pl", *methods[1:])
    return methods
