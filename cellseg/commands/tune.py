"""`cellseg tune`: choose per-cell-type score threshold, minimum area and NMS IoU on validation data.

    cellseg tune --weights runs/unet/best.pt --data data/competition --fold 0 --out tuned.yaml
    cellseg predict --weights runs/unet/best.pt --config tuned.yaml --images test/ --out sub.csv
    cellseg tune --weights runs/unet/best.pt --data data/sartorius --data data/livecell:val \
        --decode --out tuned.yaml      # also the UNet decode thresholds (seed_thresh, ...)

``--data`` is anything ``cellseg.data.loaders.load_records`` reads (competition folder, train.csv,
LIVECell root, COCO JSON), optionally ``PATH:SPLIT``; repeat it (or list several) to pool sources.
``--decode`` first tunes the dense family's decode arguments (``decode.seed_thresh`` etc., one
global setting) on maps computed once, then the per-type thresholds on the tuned decode.
With ``--fold K`` only fold K of ``make_folds`` (the training split's
held-out fold, same ``--n-folds``/``--fold-seed`` as training) is used; without it, every record.
Prints the score before and after; writes the tuned inference config atomically.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", required=True, metavar="W", help="checkpoint(s)")
    parser.add_argument("--data", required=True, action="extend", nargs="+", metavar="SRC",
                        help="labelled validation data (PATH or PATH:SPLIT; several are pooled)")
    parser.add_argument("--split", default=None,
                        help="split of sources that name none (default: LIVECell val, else train)")
    parser.add_argument("--decode", action="store_true",
                        help="also tune the dense family's decode thresholds (UNet: seed_thresh, "
                             "fg_thresh, border_thresh, min_marker_area); --cache is not used")
    parser.add_argument("--fold", type=int, default=None, help="use only this fold")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="tuned inference config YAML to write")
    parser.add_argument("--config", default="infer_default", help="starting inference config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--model-weights", nargs="+", type=float, default=None, metavar="W")
    parser.add_argument("--cache", default=None,
                        help="pickle of raw predictions: reused when it covers every image")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--report", default=None, help="also write the scores as JSON here")
    parser.add_argument("--by-type", choices=("auto", "yes", "no"), default="auto",
                        help="tune per cell type (yes), or only the default thresholds used when "
                             "predict cannot tell an image's type (no). auto: per type when the "
                             "models have a per-type class head or the config names the types")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cellseg.commands.predict import default_device
    from cellseg.config import ConfigError
    from cellseg.infer import tune
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import class_names, load_models
    from cellseg.io import write_json

    try:
        cfg = load_inference_config(args.config, args.set)
    except ConfigError as exc:
        print(f"cellseg tune: {exc}", file=sys.stderr)
        return 2
    from cellseg.sources import load_sources

    try:
        records = load_sources(args.data, split=args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cellseg tune: {exc}", file=sys.stderr)
        return 2
    if args.fold is not None:
        from cellseg.data.folds import make_folds

        folds = make_folds(records, n_folds=args.n_folds, seed=args.fold_seed)
        records = [r for r in records if folds[r.image_id] == args.fold]
    records = [r for r in records if r.rles]
    if args.max_images:
        records = records[:args.max_images]
    if not records:
        print(f"cellseg tune: no annotated images in {' '.join(args.data)} (fold {args.fold})",
              file=sys.stderr)
        return 2
    decode_report = None
    raw = tune.load_cache(args.cache, records) if args.cache and not args.decode else None
    models = None
    if args.decode:
        import dataclasses

        device = default_device(args.device)
        models = load_models(args.weights, device=device, weights=args.model_weights)
        try:
            family, maps = tune.collect_dense(models, records, cfg, device=device,
                                              progress=not args.no_progress)
        except ValueError as exc:
            print(f"cellseg tune: {exc}", file=sys.stderr)
            return 2
        decode_by_type = {"yes": True, "no": False}.get(
            args.by_type, bool(cfg.cell_type_names) or bool(class_names(models)))
        decode, decode_report = tune.tune_decode(family, maps, records, cfg, by_type=decode_by_type,
                                                 progress=not args.no_progress)
        cfg = dataclasses.replace(cfg, decode=decode)
        raw = tune.raw_from_maps(family, maps, cfg, decode)
    if raw is None:
        device = default_device(args.device)
        models = load_models(args.weights, device=device, weights=args.model_weights)
        raw = tune.collect_raw(models, records, cfg, device=device, progress=not args.no_progress)
        if args.cache:
            tune.save_cache(args.cache, records, raw)
    by_type = {"yes": True, "no": False}.get(args.by_type)
    if by_type is None:
        # predict picks per-type thresholds only when it can vote a type from class labels;
        # tuning per true type for a class-agnostic model would tune thresholds never used.
        # From a cache alone (no models loaded), nonzero labels betray a per-type class head.
        by_type = bool(cfg.cell_type_names) or (
            bool(class_names(models)) if models is not None
            else any((inst.labels > 0).any() for inst in raw))
    if not by_type and not args.no_progress:
        print("tune: the models predict no cell type, so predict uses the default thresholds "
              "for every image: tuning those (use --by-type yes with predict --cell-type)",
              file=sys.stderr)
    tuned, report = tune.tune_thresholds(raw, records, cfg, progress=not args.no_progress,
                                         by_type=by_type)
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
