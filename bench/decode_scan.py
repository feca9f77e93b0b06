"""How one UNet decode setting moves the score of each cell type, on held-out images.

    python -m bench.decode_scan --weights RUN/fold_0/kit/best.pt --data RUN/fold_0/test_data \
        --key merge_thresh --values 0 0.1 0.2 0.3 0.4 [--cell-type astro]

The network runs once per image (``cellseg.infer.tune.collect_stitched``); each value of
``--key`` is then decoded and postprocessed with the kit's defaults otherwise, each image with
the thresholds of the type predict decides for it (the checkpoint's pixel classifier). With
``--cell-type`` the value goes into that type's own decode (``types.<type>.decode``) and the
other types keep the default. Prints, per value: the mean score per true type and overall, and
the cells predicted against the true count. This is a scan on the images scored, not a held-out
tuning: choose on one fold, confirm on another (``bench.tune_gain`` tunes on halves).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def get_args_parser() -> argparse.ArgumentParser:
    from bench.tune_gain import held_out_parser

    p = held_out_parser(__doc__.splitlines()[0])
    p.add_argument("--key", required=True, help="a decode_unet keyword, e.g. merge_thresh")
    p.add_argument("--values", nargs="+", type=float, required=True)
    p.add_argument("--cell-type", default=None, help="set the value for this type only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="inference config override applied first (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from bench.tune_gain import held_out_passes
    from cellseg.core.masks import runs_from_rles
    from cellseg.core.metrics import match_image
    from cellseg.infer import tune
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.postprocess import postprocess

    t0 = time.process_time()
    base = load_inference_config(None, args.set)
    records, stitched, decided = held_out_passes(args.weights, args.data, base)
    truths = [runs_from_rles(r.rles, r.shape) for r in records]
    true_types = [r.cell_type for r in records]
    groups = [*sorted(set(true_types)), "all"]
    print(f"{len(records)} images; {args.key} scanned"
          f"{' for ' + args.cell_type if args.cell_type else ''}; matching {args.matching}\n")
    print("| " + args.key + " | " + " | ".join(groups) + " | cells predicted / true |")
    print("|---:|" + "---:|" * len(groups) + "---|")
    rows = []
    for value in args.values:
        value = int(value) if float(value).is_integer() and "area" in args.key else value
        if args.cell_type:
            t = base.thresholds_for(args.cell_type)
            t = dataclasses.replace(t, decode={**t.decode, args.key: value})
            cfg = dataclasses.replace(base, types={**base.types, args.cell_type: t})
        else:
            cfg = dataclasses.replace(base, decode={**base.decode, args.key: value})
        raw = tune.raw_from_stitched(stitched, cfg, decided)
        # one postprocess per image gives both its score and its cell count
        results = [match_image(t, postprocess(inst, cfg, cell_type=ct), inst.image_shape,
                               matching=args.matching)
                   for inst, t, ct in zip(raw, truths, decided)]
        scores = [res.score for res in results]
        counts = {g: [0, 0] for g in groups}
        for res, tt in zip(results, true_types):
            for g in (tt, "all"):
                counts[g][0] += res.n_pred
                counts[g][1] += res.n_true
        means = {g: float(np.mean([s for s, t in zip(scores, true_types) if g in ("all", t)]))
                 for g in groups}
        rows.append({"value": value, "means": means, "counts": counts})
        print(f"| {value} | " + " | ".join(f"{means[g]:.4f}" for g in groups) + " | "
              + ", ".join(f"{g} {counts[g][0]:,} / {counts[g][1]:,}" for g in groups[:-1])
              + " |", flush=True)
    print(f"\n{(time.process_time() - t0) / 60:.1f} CPU-min in this process")
    if args.json:
        from cellseg.io import write_json

        write_json(args.json, {"weights": args.weights, "data": args.data, "key": args.key,
                               "cell_type": args.cell_type, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
