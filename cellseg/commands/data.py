"""``cellseg data``: synthesise, convert and check data sets.

    cellseg data synth --out data/synth --num-images 24 --seed 0 [--num-test 3 --num-semi 4]
    cellseg data convert --csv train.csv --out coco.json
    cellseg data convert --coco coco.json --images data/sartorius/train --out train.csv
    cellseg data convert --livecell data/LIVECell_dataset_2021 --split val --out val.json
    cellseg data check data/sartorius
    cellseg data check coco.json --images data/sartorius/train

``convert`` picks the output format from the ``--out`` suffix (.json = COCO, .csv = train.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellseg.commands.common import add_count_arg, input_path, output_dir, output_file
from cellseg.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser("synth", help="write a small synthetic competition + LIVECell data set",
                       description="Write synthetic data in both real layouts: "
                                   "OUT/competition/{train.csv,train/,test/,train_semi_supervised/} "
                                   "and OUT/livecell/{images/,annotations/}.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    # counts are --num-*; the old spellings stay as hidden aliases (--images is a folder elsewhere)
    add_count_arg(p, "images", default=24, help="annotated training images (default 24)",
                  old="--images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_count_arg(p, "test", default=None, help="test images (generator default if unset)",
                  old="--test")
    add_count_arg(p, "semi", default=None, old="--semi",
                  help="unlabeled train_semi_supervised images (generator default if unset)")
    add_count_arg(p, "livecell", default=None, old="--livecell",
                  help="LIVECell-layout images (generator default if unset)")
    p.set_defaults(_data_run=_run_synth)

    p = sub.add_parser("convert", help="convert between train.csv, COCO JSON and LIVECell",
                       description="Convert annotations. Input: one of --csv, --coco, --livecell. "
                                   "Output format from the --out suffix: .json writes COCO JSON "
                                   "(compressed RLE), .csv writes a competition train.csv.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, help="competition train.csv (or its folder)")
    src.add_argument("--coco", type=Path, help="COCO JSON file")
    src.add_argument("--livecell", type=Path, help="LIVECell root folder")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder the COCO file_name entries are relative to "
                        "(default: the JSON's folder)")
    p.add_argument("--split", default="val", help="LIVECell split (train/val/test; default val)")
    p.add_argument("--fill-holes", action="store_true", help="fill mask holes (train.csv input)")
    p.add_argument("--out", required=True, type=Path, help="output file: .json or .csv")
    p.set_defaults(_data_run=_run_convert)

    p = sub.add_parser("check", help="validate a data folder and print per-cell-type statistics",
                       description="Validate a competition folder, LIVECell root, COCO JSON or "
                                   "train.csv: every row, annotation and image. All problems are "
                                   "listed at the end; exit code 1 if there is any.")
    p.add_argument("path", type=Path, help="data folder or file")
    p.add_argument("--images", type=Path, default=None,
                   help="COCO JSON only: folder its file_name entries are relative to")
    p.set_defaults(_data_run=_run_check)


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "_data_run", None)
    if func is None:
        print("usage: cellseg data {synth,convert,check} ... (see cellseg data --help)",
              file=sys.stderr)
        return 2
    return func(args)


def _run_synth(args: argparse.Namespace) -> int:
    from cellseg.data import synthetic  # lazy: written by the synthetic-data owner

    output_dir(args.out, "--out")
    kwargs = {k: v for k, v in (("n_test", args.num_test), ("n_semi", args.num_semi),
                                ("n_livecell", args.num_livecell)) if v is not None}
    counts = synthetic.generate(args.out, n_images=args.num_images, seed=args.seed, **kwargs)
    print(f"wrote synthetic data to {args.out}: {counts}")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from cellseg.data import coco, livecell, sartorius
    from cellseg.io import write_json

    suffix = args.out.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UserError(f"unknown output format {args.out.suffix or '(no suffix)'!r}",
                        where=f"--out {args.out}",
                        fix="end it in .json (COCO) or .csv (train.csv)")
    output_file(args.out, "--out")
    flag, src = next((f, v) for f, v in (("--csv", args.csv), ("--coco", args.coco),
                                         ("--livecell", args.livecell)) if v is not None)
    input_path(src, flag)
    if args.csv is not None:
        records = sartorius.load_train(args.csv, fill_holes=args.fill_holes)
        image_root = (args.csv if args.csv.is_dir() else args.csv.parent) / "train"
    elif args.coco is not None:
        records = coco.coco_to_records(args.coco, args.images)
        image_root = args.images or args.coco.parent
    else:
        records = livecell.load(args.livecell, args.split)
        image_root = args.livecell / "images"
    if suffix == ".json":
        data = coco.records_to_coco(records, image_root=image_root)
        write_json(args.out, data)
        print(f"wrote {args.out}: {len(data['images'])} images, "
              f"{len(data['annotations'])} annotations")
    else:
        n = sartorius.write_train_csv(records, args.out)
        print(f"wrote {args.out}: {len(records)} images, {n} rows")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from cellseg.data.check import check_path

    input_path(args.path, "path")
    reports = check_path(args.path, args.images)
    for report in reports:
        print(report.format())
        print()
    bad = sum(len(r.problems) for r in reports)
    if bad:
        print(f"FAILED: {bad} problem(s) in {args.path}")
        return 1
    return 0
