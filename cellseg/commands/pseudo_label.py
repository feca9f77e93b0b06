"""`cellseg pseudo-label`: label unlabeled images with a trained model (or ensemble, with TTA)
and write the confident cells as a competition-layout training source.

    cellseg pseudo-label --weights runs/teacher/best.pt --images ../shared/data/unlabeled/shsy5y \\
        --out data/pl_r1 --tta --min-score 0.6 --min-cells 5
    cellseg train --config unet_small_real --data data/real --data data/pl_r1 --out runs/student
    # or teacher -> student rounds in one go (trains round 0's teacher when --weights is absent):
    cellseg pseudo-label --rounds 2 --data data/real --images unlabeled/ --out runs/pl \\
        --train-config unet_small_real

``--images``: folders (searched recursively) or files, *.png / *.tif. Writes ``OUT/train.csv``,
``OUT/train/<id>.png`` and ``OUT/pseudo_label.json`` (checkpoints + sha256, thresholds, inference
config, date, every image's counts and rejection reason). Filtering: ``cellseg.pseudo``.
"""

from __future__ import annotations

import argparse
import sys

from cellseg.commands.common import add_infer_config_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", default=None, metavar="W",
                        help="teacher checkpoint(s); several make an ensemble")
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR",
                        help="unlabeled image folders (recursive) or files")
    parser.add_argument("--out", required=True, help="output folder (competition layout)")
    add_infer_config_args(parser)
    parser.add_argument("--tta", action="store_true", help="flip TTA (h, v, hv)")
    parser.add_argument("--min-score", type=float, default=0.6,
                        help="keep cells whose (voted) score reaches this (default 0.6)")
    parser.add_argument("--min-area", type=int, default=20,
                        help="keep cells of >= this many pixels")
    parser.add_argument("--max-area", type=int, default=None,
                        help="keep cells of <= this many pixels")
    parser.add_argument("--min-cells", type=int, default=5,
                        help="reject an image with fewer confident cells (default 5)")
    parser.add_argument("--min-keep-fraction", type=float, default=0.5,
                        help="reject an image where fewer than this share of its predicted cells "
                             "are confident (default 0.5)")
    parser.add_argument("--ignore-dropped", action="store_true",
                        help="write the accepted images' dropped cells to ignore.csv: training "
                             "leaves them out of the loss instead of learning them as background")
    parser.add_argument("--cell-type", default=None,
                        help="cell_type written to train.csv (default: LIVECell name prefix)")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true")
    g = parser.add_argument_group("teacher -> student rounds")
    g.add_argument("--rounds", type=int, default=0,
                   help="run N rounds of pseudo-label + train a student (needs --data)")
    g.add_argument("--data", action="append", default=[], metavar="SRC",
                   help="labelled training source of each student (repeatable)")
    g.add_argument("--train-config", default="unet_small_real", help="students' training config")
    g.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--steps", type=int, default=None,
                   help="training steps of each model (default: the training config's own budget)")
    g.add_argument("--threads", type=int, default=1, help="threads per training process")


def _pseudo_args(args: argparse.Namespace) -> list[str]:
    out = (["--config", args.config] if args.config else []) + [
           "--min-score", str(args.min_score),
           "--min-area", str(args.min_area), "--min-cells", str(args.min_cells),
           "--min-keep-fraction", str(args.min_keep_fraction)]
    for s in args.set:
        out += ["--set", s]
    if args.max_area is not None:
        out += ["--max-area", str(args.max_area)]
    if args.cell_type:
        out += ["--cell-type", args.cell_type]
    if args.max_images:
        out += ["--max-images", str(args.max_images)]
    return out + (["--tta"] if args.tta else []) + (["--ignore-dropped"] if args.ignore_dropped
                                                    else [])


def run(args: argparse.Namespace) -> int:
    from cellseg.data.sources import list_image_files
    from cellseg.errors import UserError
    from cellseg.infer.config import load_inference_config

    cfg = load_inference_config(args.config, args.set + (["tta=[h,v,hv]"] if args.tta else []))
    records = list_image_files(args.images)
    if args.max_images:
        records = records[:args.max_images]
    if not records:
        raise UserError("no *.png / *.tif image", where=f"--images {args.images}",
                        fix="pass the folder(s) of unlabeled images")
    if not 0 <= args.min_keep_fraction <= 1:
        raise UserError(f"--min-keep-fraction {args.min_keep_fraction} is not a fraction",
                        where="--min-keep-fraction", fix="pass a value in [0, 1]")
    if args.rounds:
        if not args.data:
            raise UserError("--rounds needs the labelled sources", where="--rounds",
                            fix="add --data SRC (repeatable)")
        from cellseg.pseudo import run_rounds

        last = run_rounds(args.data, args.images, args.out, rounds=args.rounds,
                          config=args.train_config, steps=args.steps,
                          teacher=args.weights[0] if args.weights else None,
                          overrides=args.train_set, pseudo_args=_pseudo_args(args),
                          threads=args.threads, log=lambda m: print(m, file=sys.stderr))
        print(f"last student: {last}")
        return 0
    if not args.weights:
        raise UserError("no teacher", where="--weights",
                        fix="pass the teacher checkpoint(s) with --weights (or --rounds with "
                            "--data to train one)")
    from cellseg.commands.predict import default_device
    from cellseg.infer.predict import load_models
    from cellseg.pseudo import PseudoSettings, pseudo_label

    device = default_device(args.device)
    models = load_models(args.weights, device=device)
    settings = PseudoSettings(min_score=args.min_score, min_area=args.min_area,
                              max_area=args.max_area, min_cells=args.min_cells,
                              min_keep_fraction=args.min_keep_fraction, cell_type=args.cell_type,
                              ignore_dropped=args.ignore_dropped)
    prov = pseudo_label(models, records, cfg, args.out, settings, weights_paths=args.weights,
                        device=device, progress=not args.no_progress,
                        log=lambda m: print(m, file=sys.stderr))
    c = prov["counts"]
    print(f"wrote {args.out}: {c['accepted']}/{c['images']} images accepted "
          f"({c['rejected']} rejected), {c['cells']} cells of {c['cells_predicted']} predicted"
          + (f", {c['cells_ignored']} dropped cells to ignore" if args.ignore_dropped else ""))
    return 0
