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
from pathlib import Path

from cellseg.commands.common import (add_infer_config_args, add_device_arg, add_progress_arg,
                                     add_weights_args, check_weights, default_device, input_path,
                                     output_dir, output_file)
from cellseg.errors import UserError

__all__ = ["add_arguments", "run", "default_device"]  # default_device: kept for old imports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_args(parser)
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR",
                        help="folders of *.png / *.tif images (searched recursively; several "
                             "allowed) or image files; ids are file stems (made unique)")
    parser.add_argument("--out", required=True, help="submission CSV to write (atomically)")
    add_infer_config_args(parser)
    add_device_arg(parser)
    parser.add_argument("--save-masks", default=None, metavar="DIR",
                        help="also write per-image uint16 label PNGs here")
    parser.add_argument("--overlay", default=None, metavar="DIR",
                        help="also write outline overlays (PNG) here")
    parser.add_argument("--cell-type", default=None,
                        help="force the cell type whose thresholds apply (default: voted per image)")
    parser.add_argument("--results", default=None, metavar="JSON",
                        help="also write a COCO results JSON (scores, pred_iou, stability) for "
                             "`cellseg score`")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="also write a results page (DIR/index.html: outlines, cell counts, "
                             "mean scores per image; implies --results DIR/results.json if unset)")
    parser.add_argument("--report-embed", action="store_true",
                        help="with --report: pictures inside index.html (a single file)")
    add_progress_arg(parser)


def run(args: argparse.Namespace) -> int:
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import PredictOptions, load_models, predict_to_submission
    from cellseg.data.sources import list_image_files

    cfg = load_inference_config(args.config, args.set)
    for path in args.images:
        input_path(path, "--images")
    check_weights(args)
    output_file(args.out, "--out")
    for flag, folder in (("--save-masks", args.save_masks), ("--overlay", args.overlay)):
        if folder is not None:
            output_dir(folder, flag)
    if args.report is not None:
        output_dir(args.report, "--report")
        if args.results is None:  # the page's scores come from the results file
            args.results = str(Path(args.report) / "results.json")
    if args.results is not None:
        output_file(args.results, "--results")
    # sizes are read with the images: a corrupt file must fail alone, not stop the listing
    records = list_image_files(args.images, read_size=False)
    if not records:
        raise UserError("no images (*.png, *.tif)", where=f"--images {' '.join(args.images)}",
                        fix="pass the folder(s) holding the test images")
    device = default_device(args.device)
    models = load_models(args.weights, device=device, weights=args.model_weights)
    options = PredictOptions(cell_type=args.cell_type, save_masks=args.save_masks,
                             overlay=args.overlay, results=args.results,
                             progress=not args.no_progress)
    failed = predict_to_submission(models, records, cfg, args.out, options, device=device)
    print(f"wrote {args.out}: {len(records)} images, {failed} failed", file=sys.stderr)
    from cellseg.viewer.sources import after_predict

    after_predict(args, cfg, records)  # <out>.info.json; with --report, the page
    return 1 if failed else 0
