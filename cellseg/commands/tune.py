"""`cellseg tune`: choose per-cell-type score threshold, minimum area and NMS IoU on validation data.

    cellseg tune --weights runs/unet/best.pt --data data/competition --fold 0 --out tuned.yaml
    cellseg predict --weights runs/unet/best.pt --config tuned.yaml --images test/ --out sub.csv
    cellseg tune --weights runs/unet/best.pt --data data/sartorius --data data/livecell:val \
        --decode --out tuned.yaml      # also the UNet decode thresholds (seed_thresh, ...)

``--data`` is anything ``cellseg.data.loaders.load_records`` reads (competition folder, train.csv,
LIVECell root, COCO JSON), optionally ``PATH:SPLIT``; repeat it (or list several) to pool sources.
``--decode`` first tunes the dense family's decode arguments (``decode.seed_thresh`` etc.) on
maps computed once: one setting per cell type (``types.<type>.decode``) when predict can tell an
image's type (the checkpoint's pixel classifier), else one global setting; then the per-type
thresholds on the tuned decode.
With ``--fold K`` only fold K of ``make_folds`` (the training split's
held-out fold, same ``--n-folds``/``--fold-seed`` as training) is used; without it, every record.
Prints the score before and after; writes the tuned inference config atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cellseg.commands.common import (add_infer_config_args, add_device_arg, add_fold_args,
                                     add_matching_arg,
                                     add_progress_arg, add_weights_args, default_device,
                                     check_weights, input_path, output_file,
                                     select_fold)
from cellseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_args(parser)
    parser.add_argument("--data", required=True, action="extend", nargs="+", metavar="SRC",
                        help="labelled validation data (PATH or PATH:SPLIT; several are pooled)")
    parser.add_argument("--split", default=None,
                        help="split of sources that name none (default: LIVECell val, else train)")
    parser.add_argument("--decode", action="store_true",
                        help="also tune the dense family's decode thresholds (UNet: seed_thresh, "
                             "fg_thresh, border_thresh, min_marker_area); --cache is not used")
    add_fold_args(parser, what="tune on")
    parser.add_argument("--out", required=True, help="tuned inference config YAML to write")
    add_infer_config_args(parser, what="starting inference")
    add_device_arg(parser)
    parser.add_argument("--cache", default=None,
                        help="pickle of raw predictions: reused when it covers every image")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    add_matching_arg(parser)
    parser.add_argument("--report", default=None, help="also write the scores as JSON here")
    parser.add_argument("--by-type", choices=("auto", "yes", "no"), default="auto",
                        help="tune per cell type (yes), or only the default thresholds used when "
                             "predict cannot tell an image's type (no). auto: per type when the "
                             "models have a per-type class head or the config names the types")
    add_progress_arg(parser)


def run(args: argparse.Namespace) -> int:
    from cellseg.data.sources import load_sources
    from cellseg.infer import tune
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models
    from cellseg.io import write_json

    cfg = load_inference_config(args.config, args.set)
    check_weights(args, exist=False)
    from cellseg.data.sources import parse_source

    for spec in args.data:
        input_path(parse_source(spec)[0], "--data")
    output_file(args.out, "--out")
    if args.report:
        output_file(args.report, "--report")
    if args.fold is not None:  # before reading any data
        from cellseg.data.folds import check_fold

        check_fold(args.fold, args.n_folds)
    records = select_fold(load_sources(args.data, split=args.split), args)
    records = [r for r in records if r.rles]
    if args.max_images:
        records = records[:args.max_images]
    if not records:
        raise UserError(f"no annotated images (fold {args.fold})",
                        where=f"--data {' '.join(args.data)}",
                        fix="pass labelled data (train.csv / COCO) or another --fold")
    decode_report = None
    raw = tune.load_cache(args.cache, records) if args.cache and not args.decode else None
    models = None
    if raw is None:
        check_weights(args)
        device = default_device(args.device)
        models = load_models(args.weights, device=device, weights=args.model_weights)
    by_type = {"yes": True, "no": False}.get(args.by_type)
    if by_type is None:
        # predict picks per-type thresholds only when it can decide a type from class labels
        by_type = tune.predict_knows_types(cfg, models, raw or ())
    if args.decode:
        stitched = tune.collect_stitched(models, records, cfg, device=device,
                                         progress=not args.no_progress)
        if by_type:  # predict knows each image's type before decoding: one decode per type
            cfg, decode_report = tune.tune_decode_by_type(stitched, records, cfg,
                                                          progress=not args.no_progress,
                                                          matching=args.matching)
        else:
            decode, decode_report = tune.tune_decode(stitched, records, cfg, by_type=False,
                                                     progress=not args.no_progress,
                                                     matching=args.matching)
            cfg = dataclasses.replace(cfg, decode=decode)
        raw = tune.raw_from_stitched(stitched, cfg, tune.tuning_types(records, by_type))
    elif raw is None:
        raw = tune.collect_raw(models, records, cfg, device=device, progress=not args.no_progress,
                               by_type=by_type)
        if args.cache:
            tune.save_cache(args.cache, records, raw)
    if not by_type and not args.no_progress:
        print("tune: the models predict no cell type, so predict uses the default thresholds "
              "for every image: tuning those (use --by-type yes with predict --cell-type)",
              file=sys.stderr)
    tuned, report = tune.tune_thresholds(raw, records, cfg, progress=not args.no_progress,
                                         by_type=by_type, matching=args.matching)
    if decode_report is not None:
        # "before" is the score of the starting config, before the decode was tuned
        report["before_decode"] = report["before"]
        report["before"] = decode_report["before"]
        report["decode"] = decode_report
    tune.write_config(args.out, tuned)
    if args.report:
        write_json(args.report, report)
    print(f"score before: {report['before']:.4f}  after: {report['after']:.4f}  "
          f"({len(records)} images) -> {args.out}")
    return 0
