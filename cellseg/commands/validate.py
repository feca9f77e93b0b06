"""``cellseg validate``: check a submission.csv before uploading it.

    cellseg validate submission.csv --images data/sartorius/test
    cellseg validate submission.csv --ids-from data/sartorius/sample_submission.csv

Checks the header, every expected image present, no unknown id, each RLE valid and inside its
image, no empty RLE, no overlapping masks within an image. Every problem is printed with its
CSV row number (the file's line number, header = 1) and image id. Exit code 1 when any error
is found; on success prints ``OK: N rows, M images``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellseg.commands.common import input_path
from cellseg.core.rle import SHAPE
from cellseg.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="submission.csv to check")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, default=None,
                     help="test image folder: the expected ids and image sizes")
    src.add_argument("--ids-from", type=Path, default=None,
                     help="CSV whose first column lists the expected ids (sample_submission.csv)")
    parser.add_argument("--shape", type=int, nargs=2, default=SHAPE, metavar=("H", "W"),
                        help=f"image size when it is not read from --images (default {SHAPE[0]} {SHAPE[1]})")
    parser.add_argument("--max-problems", type=int, default=50,
                        help="print at most this many problems (default 50)")


def run(args: argparse.Namespace) -> int:
    from cellseg.core.submission import ids_from_csv, read_submission, validate_submission

    input_path(args.submission, "submission", kind="file")
    if not args.submission.read_bytes().strip():
        raise InputError("the file is empty (no header)", where=f"submission {args.submission}",
                         fix="write the header 'id,predicted' and one row per predicted cell")
    if args.images is not None:
        input_path(args.images, "--images", kind="folder")
    if args.ids_from is not None:
        input_path(args.ids_from, "--ids-from", kind="file")
    ids = ids_from_csv(args.ids_from) if args.ids_from is not None else None
    if args.images is None and ids is None:
        print("note: no --images or --ids-from: image ids are not checked", file=sys.stderr)
    problems = validate_submission(args.submission, images=args.images, ids=ids,
                                   shape=tuple(args.shape))
    errors = [p for p in problems if p.severity == "error"]
    for p in problems[:args.max_problems]:
        print(p)
    if len(problems) > args.max_problems:
        print(f"... and {len(problems) - args.max_problems} more problems")
    if errors:
        print(f"INVALID: {len(errors)} error(s) in {args.submission}")
        return 1
    subm = read_submission(args.submission)
    n_rows = sum(max(len(v), 1) for v in subm.values())
    if not subm:  # a header alone: no image would be scored
        print(f"INVALID: {args.submission} has a header but no rows")
        return 1
    print(f"OK: {n_rows} rows, {len(subm)} images")
    return 0
