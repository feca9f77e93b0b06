"""The box-prompted family's masks on held-out images: given true boxes, and given another model's.

    python -m bench.promptseg_boxes --weights RUN/promptseg/best.pt --data RUN/fold_0/test_data \
        --boxes-from RUN/fold_0/kit/best.pt [--json out.json]

A promptseg checkpoint (stage 2: the mask decoder, e.g. ``promptseg_crop_cpu`` trained on a fold's
training images) is prompted on every held-out image three ways and scored with the competition
metric, per cell type:

- **true boxes**: one prompt per annotated cell, score 1. What the mask decoder can do when the
  boxes are right: its ceiling, and the part of the error that is the masks' rather than the
  detector's.
- **the box source's boxes**: the final cells of ``--boxes-from`` (any kit checkpoint, e.g. the
  UNet recipe's; predicted with the default inference config), re-masked by the decoder with
  their scores kept: the 1st-place pipeline (boxes from one model, masks from a box-conditioned
  one) with the kit's models.
- **the box source alone**: its own masks, the baseline the decoder has to beat.

Every variant goes through the same postprocessing (``cellseg.infer.postprocess``: the thresholds
of the type the box source's pixel classifier decides for the image, NMS, overlap removal) and
the same metric (``--matching``, default the competition's DSB rule).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

VARIANTS = ("source", "prompted", "true_boxes")
HEADERS = {"source": "box source alone", "prompted": "source's boxes, decoder's masks",
           "true_boxes": "true boxes, decoder's masks"}


def true_boxes(rles: list[str], shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) float32 x0, y0, x1, y1 (exclusive) of the annotated cells, as training draws them."""
    from cellseg.core import rle
    from cellseg.core.masks import mask_boxes

    if not rles:
        return np.zeros((0, 4), np.float32)
    return np.stack([mask_boxes(rle.decode(r, shape)) for r in rles]).astype(np.float32)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="promptseg checkpoint (the mask decoder)")
    p.add_argument("--data", nargs="+", required=True, help="held-out annotated images")
    p.add_argument("--boxes-from", required=True, help="checkpoint whose cells give the boxes")
    p.add_argument("--matching", default="dsb")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from cellseg.core.masks import runs_from_rles
    from cellseg.core.metrics import match_image
    from cellseg.data.sources import load_sources
    from cellseg.infer.celltype import pixel_cell_type
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.postprocess import postprocess
    from cellseg.infer.predict import load_models, predict_raw

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.process_time()
    records = [r for r in load_sources(args.data, annotated=True) if r.rles]
    (decoder, fam, _), = load_models([args.weights])
    if fam.name != "promptseg":
        raise SystemExit(f"--weights {args.weights} is a {fam.name} checkpoint, not promptseg")
    source = load_models([args.boxes_from])
    cfg = load_inference_config()
    scores = {v: np.zeros(len(records)) for v in VARIANTS}
    counts = {v: np.zeros(len(records), np.int64) for v in VARIANTS}
    right = 0
    for i, rec in enumerate(records):
        image = rec.read_image()
        ct = pixel_cell_type(source, image)
        right += ct == rec.cell_type
        truth = runs_from_rles(rec.rles, rec.shape)
        own = postprocess(predict_raw(source, [image], cfg, cell_types=[ct])[0], cfg, cell_type=ct)
        x = fam.preprocess(decoder, image[None])
        given = true_boxes(rec.rles, rec.shape)
        raw = {"source": own,
               "prompted": fam.predict_with_boxes(decoder, x, [own.boxes.astype(np.float32)],
                                                  [own.scores])[0],
               "true_boxes": fam.predict_with_boxes(decoder, x, [given])[0]}
        for v in VARIANTS:
            final = raw[v] if v == "source" else postprocess(raw[v], cfg, cell_type=ct)
            scores[v][i] = match_image(truth, final, rec.shape, matching=args.matching).score
            counts[v][i] = len(final)
        print(f"\r{i + 1}/{len(records)} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    types = [r.cell_type for r in records]
    n_true = np.array([len(r.rles) for r in records])
    print(f"{len(records)} held-out images; type decided right for {right}; matching "
          f"{args.matching}; {(time.process_time() - t0) / 60:.1f} CPU-min in this process\n")
    print("| type | images | " + " | ".join(HEADERS[v] for v in VARIANTS)
          + " | cells: source / prompted / true |")
    print("|---|---:|" + "---:|" * len(VARIANTS) + "---:|")
    table: dict[str, Any] = {}
    for t in [*sorted(set(types)), "all"]:
        idx = [k for k, x in enumerate(types) if t in ("all", x)]
        row = {v: float(scores[v][idx].mean()) for v in VARIANTS}
        row.update(n=len(idx), cells={v: int(counts[v][idx].sum()) for v in VARIANTS},
                   true_cells=int(n_true[idx].sum()))
        table[t] = row
        print(f"| {t} | {len(idx)} | " + " | ".join(f"{row[v]:.4f}" for v in VARIANTS)
              + f" | {row['cells']['source']:,} / {row['cells']['prompted']:,} / "
              f"{row['true_cells']:,} |")
    if args.json:
        from cellseg.io import atomic_open

        with atomic_open(args.json) as f:
            json.dump({"types": table, "type_right": right,
                       "per_image": {v: scores[v].tolist() for v in VARIANTS}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
