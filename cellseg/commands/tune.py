"""`cellseg tune`: choose per-cell-type score threshold, minimum area and NMS IoU on validation data.

    cellseg tune --weights runs/unet/best.pt --data data/competition --fold 0 --out tuned.yaml
    cellseg predict --weights runs/unet/best.pt --config tuned.yaml --images test/ --out sub.csv

``--data`` is anything ``cellseg.data.loaders.load_records`` reads (competition folder, train.csv,
LIVECell root, COCO JSON). With ``--fold K`` only fold K of ``make_folds`` (the training split's
held-out fold, same ``--n-folds``/``--fold-seed`` as training) is used; without it, every record.
Prints the score before and after; writes the tuned inference config atomically.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", required=True, metavar="W", help="checkpoint(s)")
    parser.add_argument("--data", required=True, help="labelled validation data")
    parser.add_argument("--split", default="train", help="split for load_records (default: train)")
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
    from cellseg.data.loaders import load_records
    from cellseg.infer import tune
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import class_names, load_models
    from cellseg.io import write_json

    try:
        cfg = load_inference_config(args.config, args.set)
    except ConfigError as exc:
        print(f"cellseg tune: {exc}", file=sys.stderr)
        return 2
    records = load_records(args.data, split=args.split)
    if args.fold is not None:
        from cellseg.data.folds import make_folds

        folds = make_folds(records, n_folds=args.n_folds, seed=args.fold_seed)
        records = [r for r in records if folds[r.image_id] == args.fold]
    records = [r for r in records if r.rles]
    if args.max_images:
        records = records[:args.max_images]
    if not records:
        print(f"cellseg tune: no annotated images in {args.data} (fold {args.fold})",
              file=sys.stderr)
        return 2
    raw = tune.load_cache(args.cache, records) if args.cache else None
    models = None
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
    tune.write_config(args.out, tuned)
    if args.report:
        write_json(args.report, report)
    print(f"score before: {report['before']:.4f}  after: {report['after']:.4f}  "
          f"({len(records)} images) -> {args.out}")
    return 0
