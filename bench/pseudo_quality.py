"""How good would a teacher's pseudo-labels be? Its cells on annotated images it never saw, by score.

    python -m bench.pseudo_quality --weights RUN/fold_0/kit/best.pt --data RUN/fold_0/test_data \\
        --cell-type shsy5y [--tta] [--json q.json]

Unlabeled images have no truth, so the teacher labels held-out annotated images of the same kind
(e.g. a ``cellseg cv`` fold's ``test_data``) exactly as ``cellseg pseudo-label`` labels unlabeled
ones (``predict_images`` with the default inference config, the image's type given), and every
predicted cell is compared with the truth: its best IoU with a true cell. Printed per score bin:
how many cells, the share that would be a correct label at IoU 0.5 and 0.75, their mean best
IoU; and per image, predicted vs true cells (over-segmentation shows as a ratio above 1). A
``--min-score`` that removes wrong labels needs bins whose precision differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="teacher checkpoint(s)")
    p.add_argument("--data", nargs="+", required=True, help="annotated images it never saw")
    p.add_argument("--cell-type", default=None, help="only images of this type")
    p.add_argument("--tta", action="store_true", help="flip TTA, as pseudo-label --tta")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def cell_quality(truth_rles, pred_inst, shape) -> tuple[np.ndarray, np.ndarray]:
    """(scores (P,), best IoU of each predicted cell with any true cell (P,))."""
    from cellseg.core.metrics import iou_matrix

    iou = iou_matrix(list(truth_rles), pred_inst, shape)
    best = iou.max(axis=0) if iou.shape[0] else np.zeros(iou.shape[1])
    return np.asarray(pred_inst.scores, dtype=float), best


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from cellseg.data.sources import load_sources
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models, predict_images

    records = [r for r in load_sources(args.data, annotated=True) if r.rles
               and (args.cell_type is None or r.cell_type == args.cell_type)]
    if not records:
        print(f"no annotated images of type {args.cell_type!r} in {args.data}", file=sys.stderr)
        return 2
    models = load_models(args.weights)
    cfg = load_inference_config(overrides=["tta=[h,v,hv]"] if args.tta else [])
    scores, best, per_image = [], [], []
    for r in records:
        inst = predict_images(models, [r.read_image()], cfg, cell_types=[r.cell_type])[0]
        s, b = cell_quality(r.rles, inst, r.shape)
        scores.append(s)
        best.append(b)
        per_image.append({"image_id": r.image_id, "cell_type": r.cell_type,
                          "n_true": len(r.rles), "n_pred": len(inst)})
    s, b = np.concatenate(scores), np.concatenate(best)
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = (s >= lo) & (s < hi)
        if m.any():
            rows.append({"bin": f"{lo:.1f}-{min(hi, 1.0):.1f}", "cells": int(m.sum()),
                         "precision_50": float((b[m] >= 0.5).mean()),
                         "precision_75": float((b[m] >= 0.75).mean()),
                         "mean_best_iou": float(b[m].mean())})
    print(f"{len(records)} image(s), {len(s)} predicted cells, "
          f"{sum(p['n_true'] for p in per_image)} true\n")
    print("| score | cells | correct at IoU 0.5 | at 0.75 | mean best IoU |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['bin']} | {row['cells']} | {row['precision_50']:.2f} | "
              f"{row['precision_75']:.2f} | {row['mean_best_iou']:.2f} |")
    print("\n| image | type | true | predicted | ratio |\n|---|---|---:|---:|---:|")
    for p in per_image:
        print(f"| {p['image_id']} | {p['cell_type']} | {p['n_true']} | {p['n_pred']} | "
              f"{p['n_pred'] / max(p['n_true'], 1):.2f} |")
    if args.json:
        from cellseg.io import write_json

        write_json(args.json, {"bins": rows, "images": per_image, "weights": args.weights,
                               "tta": args.tta})
    return 0


if __name__ == "__main__":
    sys.exit(main())
