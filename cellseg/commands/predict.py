"""`cellseg predict`: predict a folder of images and write submission.csv.

    cellseg predict --weights runs/unet/best.pt --images data/test --out submission.csv
    cellseg predict --weights runs/unet/best.pt --images livecell/images sartorius/test \\
        --out sub.csv
    cellseg predict --weights a.pt b.pt --model-weights 1 0.5 --images test/ --out sub.csv \\
        --config tuned.yaml --set tta=[h,v] --save-masks masks/ --overlay overlays/

Exit status: 0 when every image was predicted, 1 when some failed (they are named on stderr and
get the empty-image policy), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", nargs="+", required=True, metavar="W",
                        help="checkpoint(s); several make an ensemble")
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR",
                        help="folders of *.png / *.tif images (searched recursively; several "
                             "allowed) or image files; ids are file stems (made unique)")
    parser.add_argument("--out", required=True, help="submission CSV to write (atomically)")
    parser.add_argument("--config", default="infer_default",
                        help="inference config: shipped name or YAML path (default: infer_default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set tile_size=256 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--model-weights", nargs="+", type=float, default=None, metavar="W",
                        help="one ensembling weight per checkpoint (default: 1 each)")
    parser.add_argument("--save-masks", default=None, metavar="DIR",
                        help="also write per-image uint16 label PNGs here")
    parser.add_argument("--overlay", default=None, metavar="DIR",
                        help="also write outline overlays (PNG) here")
    parser.add_argument("--cell-type", default=None,
                        help="force the cell type whose thresholds apply (default: voted per image)")
    parser.add_argument("--results", default=None, metavar="JSON",
                        help="also write a COCO results JSON (scores, pred_iou, stability) for "
                             "`cellseg score`")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_device(device: str | None) -> str:
    """``device`` or "cuda" when available, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from cellseg.config import ConfigError
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models, predict_to_submission

    try:
        cfg = load_inference_config(args.config, args.set)
    except ConfigError as exc:
        print(f"cellseg predict: {exc}", file=sys.stderr)
        return 2
    from cellseg.sources import list_image_files

    # sizes are read with the images: a corrupt file must fail alone, not stop the listing
    try:
        records = list_image_files(args.images, read_size=False)
    except FileNotFoundError as exc:
        print(f"cellseg predict: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"cellseg predict: no images (*.png, *.tif) in {' '.join(args.images)}",
              file=sys.stderr)
        return 2
    device = default_device(args.device)
    try:
        models = load_models(args.weights, device=device, weights=args.model_weights)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cellseg predict: {exc}", file=sys.stderr)
        return 2
    failed = predict_to_submission(models, records, cfg, args.out, cell_type=args.cell_type,
                                   save_masks=args.save_masks, overlay=args.overlay,
                                   device=device, progress=not args.no_progress,
                                   results=args.results)
    print(f"wrote {args.out}: {len(records)} images, {failed} failed", file=sys.stderr)
    return 1 if failed else 0
