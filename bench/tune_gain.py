"""Does tuning per cell type pay off on images it was not tuned on?

    python -m bench.tune_gain --weights RUN/fold_0/kit/best.pt --data RUN/fold_0/test_data

The held-out images of a trained model (e.g. a ``cellseg cv`` fold's ``test_data``: the model
never saw them) are split in two grouped halves (``make_folds``: near-duplicate frames kept
together, types spread). ``cellseg.infer.tune`` tunes on one half (the UNet decode, then the
score / area / NMS thresholds; ``--per-type-decode``: the decode of each type apart) and both
configs are scored on the OTHER half, where each image gets the thresholds of the type predict
decides for it (``cellseg.infer.celltype``: the checkpoint's pixel classifier). Then the halves
swap. Prints, per type, the default and the tuned score on the images not tuned on (mean over
both halves), and the in-sample score of the tuned config for contrast.

The network runs once per image (``collect_stitched``); everything after is decode and
postprocessing, so the cost is the decode search: ~10-20 CPU-minutes for 80 images.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _scores(raw: Sequence[Any], records: Sequence[Any], cfg: Any, types: Sequence[str | None],
            matching: str) -> np.ndarray:
    from cellseg.core.masks import runs_from_rles
    from cellseg.infer.tune import score_images

    truths = [runs_from_rles(r.rles, r.shape) for r in records]
    return score_images(raw, truths, cfg, types, matching)


def tune_half(stitched: Sequence[Any], records: Sequence[Any], cfg: Any, per_type_decode: bool,
              matching: str) -> Any:
    """The config ``cellseg tune --decode`` would write from the images of one half (their true
    types): the decode (one per type with ``per_type_decode``), then the per-type thresholds."""
    from cellseg.infer import tune

    if per_type_decode:
        cfg, _ = tune.tune_decode_by_type(stitched, records, cfg, progress=False,
                                          matching=matching)
    else:
        decode, _ = tune.tune_decode(stitched, records, cfg, by_type=True, progress=False,
                                     matching=matching)
        cfg = dataclasses.replace(cfg, decode=decode)
    raw = tune.raw_from_stitched(stitched, cfg, [r.cell_type for r in records])
    tuned, _ = tune.tune_thresholds(raw, records, cfg, progress=False, by_type=True,
                                    matching=matching)
    return tuned


def held_out_passes(weights: Sequence[str], data: Sequence[str], cfg: Any
                    ) -> tuple[list[Any], list[Any], list[str | None]]:
    """The annotated records of ``data``, one network pass of the models of ``weights`` per
    record under ``cfg`` (``tune.collect_stitched``) and the type predict decides for each record
    (None: no classifier in the checkpoints): what every decode and threshold experiment reruns
    on."""
    from cellseg.data.sources import load_sources
    from cellseg.infer import tune
    from cellseg.infer.celltype import pixel_cell_type
    from cellseg.infer.predict import load_models

    records = [r for r in load_sources(data, annotated=True) if r.rles]
    models = load_models(weights)
    stitched = tune.collect_stitched(models, records, cfg, progress=False)
    decided = [pixel_cell_type(models, r.read_image()) for r in records]
    return records, stitched, decided


def held_out_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every held-out experiment takes: checkpoints, images, matching rule, JSON."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--weights", nargs="+", required=True, help="checkpoint(s) (an ensemble)")
    p.add_argument("--data", nargs="+", required=True, help="held-out annotated images")
    p.add_argument("--matching", default="dsb")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    p = held_out_parser(__doc__.splitlines()[0])
    p.add_argument("--per-type-decode", action="store_true",
                   help="tune the UNet decode of each cell type apart")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from cellseg.data.folds import make_folds
    from cellseg.infer import tune
    from cellseg.infer.config import load_inference_config

    t0 = time.process_time()
    cfg = load_inference_config()
    records, stitched, decided = held_out_passes(args.weights, args.data, cfg)
    halves = make_folds(records, n_folds=2, seed=0, log=lambda s: None)
    default_raw = tune.raw_from_stitched(stitched, cfg, decided)
    default = _scores(default_raw, records, cfg, decided, args.matching)
    held_tuned = np.zeros(len(records))
    in_sample = np.zeros(len(records))
    configs = []
    for h in (0, 1):
        fit = [i for i, r in enumerate(records) if halves[r.image_id] == h]
        test = [i for i, r in enumerate(records) if halves[r.image_id] != h]
        tuned = tune_half([stitched[i] for i in fit], [records[i] for i in fit], cfg,
                          args.per_type_decode, args.matching)
        configs.append({"decode": tuned.decode,
                        "types": {t: dataclasses.asdict(v) for t, v in tuned.types.items()}})
        for idx, out in ((test, held_tuned), (fit, in_sample)):
            sub = [records[i] for i in idx]
            types = [decided[i] for i in idx]
            raw = tune.raw_from_stitched([stitched[i] for i in idx], tuned, types)
            out[idx] = _scores(raw, sub, tuned, types, args.matching)
    truth_types = [r.cell_type for r in records]
    right = sum(d == t for d, t in zip(decided, truth_types))
    print(f"{len(records)} held-out images; type decided right for {right}; "
          f"{'per-type' if args.per_type_decode else 'one'} decode; matching {args.matching}; "
          f"{(time.process_time() - t0) / 60:.1f} CPU-min in this process\n")
    print("| type | images | default | tuned (other half) | gain | tuned (in sample) |")
    print("|---|---:|---:|---:|---:|---:|")
    table = {}
    for t in [*sorted(set(truth_types)), "all"]:
        idx = [i for i, x in enumerate(truth_types) if t in ("all", x)]
        row = {"n": len(idx), "default": float(default[idx].mean()),
               "tuned_held_out": float(held_tuned[idx].mean()),
               "tuned_in_sample": float(in_sample[idx].mean())}
        table[t] = row
        print(f"| {t} | {row['n']} | {row['default']:.4f} | {row['tuned_held_out']:.4f} | "
              f"{row['tuned_held_out'] - row['default']:+.4f} | {row['tuned_in_sample']:.4f} |")
    if args.json:
        from cellseg.io import write_json

        write_json(args.json, {"weights": args.weights, "data": args.data,
                               "per_type_decode": args.per_type_decode, "table": table,
                               "configs": configs, "type_right": right})
    return 0


if __name__ == "__main__":
    sys.exit(main())
