"""Results pages built from what other commands already wrote: ``cellseg predict``'s submission
and results file, and a ``cellseg cv`` run folder. Each function reads those files and calls
``cellseg.viewer.write_viewer``; nothing here predicts or trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.viewer.page import ViewRun, write_viewer


def _read_results(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A COCO results JSON (``cellseg predict --results``): image id -> ``Runs`` (shape from
    each segmentation's ``size``) and image id -> (P,) scores."""
    from cellseg.core.masks import runs_from_coco

    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("annotations", [])
    segs: dict[str, list] = {}
    scores: dict[str, list] = {}
    for det in data:
        key = str(det["image_id"])
        segs.setdefault(key, []).append(det["segmentation"])
        scores.setdefault(key, []).append(float(det.get("score", 1.0)))
    runs = {k: runs_from_coco(v, tuple(v[0]["size"])) for k, v in segs.items()}
    return runs, {k: np.asarray(v) for k, v in scores.items()}


def predict_page(out_dir: str | os.PathLike, records: Sequence[Any], submission: str | os.PathLike,
                 results: str | os.PathLike | None = None, info: Mapping[str, Any] | None = None,
                 command: Sequence[str] | None = None, embed: bool = False) -> Path:
    """The page of a prediction run without truth: outlines, cell counts and mean scores.

    Args:
        records: the predicted images (``ImageRecord``: id and path).
        submission: the submission CSV ``cellseg predict`` wrote.
        results: its COCO results JSON (gives the scores), or None (counts only).
        embed: pictures inside the page (``write_viewer``).
    """
    from cellseg.core.masks import runs_from_rles
    from cellseg.core.submission import read_submission
    from cellseg.io import read_gray

    ids = [r.image_id for r in records]
    paths = {r.image_id: r.image_path for r in records}
    scores = None
    if results is not None and Path(results).is_file():
        pred, scores = _read_results(Path(results))
    else:
        pred = {}
        for image_id, rles in read_submission(submission).items():
            if image_id in paths:  # the RLE's frame is the image's size
                pred[image_id] = runs_from_rles(rles, read_gray(paths[image_id]).shape[:2])
    run = ViewRun(Path(submission).name, pred, scores, info=dict(info or {}))
    return write_viewer(out_dir, [run], ids, image_paths=paths,
                        title=f"cellseg predict: {Path(submission).name}", command=command,
                        embed=embed)


def after_predict(args: argparse.Namespace, config: Any, records: Sequence[Any]) -> None:
    """What ``cellseg predict`` does once its files are written: record what made them
    (``<file>.info.json`` beside the submission and the results file) and, with ``--report``,
    write the page from those files."""
    from cellseg.viewer.runinfo import make_run_info, write_run_info

    argv = ["cellseg", *sys.argv[1:]] if sys.argv[1:2] == ["predict"] else None
    info = make_run_info(config, args.weights, argv, n_images=len(records))
    for path in (args.out, args.results):
        if path is not None and Path(path).is_file():
            write_run_info(path, info)
    report = getattr(args, "report", None)
    if report is not None:
        page = predict_page(report, records, args.out, args.results, info, argv,
                            embed=getattr(args, "report_embed", False))
        print(f"wrote {page} (open it in a browser)", file=sys.stderr)


def cv_page(cv_dir: str | os.PathLike, records: Sequence[Any], out_dir: str | os.PathLike,
            methods: Sequence[str] | None = None, command: Sequence[str] | None = None) -> Path:
    """The page of a ``cellseg cv`` run: its methods side by side on every held-out image.

    Reads ``cv.json`` (folds, rows) and each fold's ``<method>/pred.csv``; the first method is
    the baseline the others are compared with.

    Raises:
        FileNotFoundError: no ``cv.json``, or a finished fold lacks its predictions.
    """
    from cellseg.core.masks import runs_from_rles
    from cellseg.core.submission import read_submission

    cv_dir = Path(cv_dir)
    summary = json.loads((cv_dir / "cv.json").read_text())
    rows = summary.get("rows", [])
    methods = list(methods or dict.fromkeys(r["method"] for r in rows))
    by_id = {r.image_id: r for r in records}
    fold_of = {r["image_id"]: r["fold"] for r in rows}
    ids = [i for i in dict.fromkeys(r["image_id"] for r in rows) if i in by_id]
    truth = {i: runs_from_rles(by_id[i].rles, by_id[i].shape) for i in ids}
    runs = []
    for m in methods:
        pred: dict[str, Any] = {}
        done = {r["image_id"] for r in rows if r["method"] == m}
        for fold in sorted({fold_of[i] for i in ids if i in done}):
            path = cv_dir / f"fold_{fold}" / m / "pred.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (a run made before cv saved its "
                                        f"predictions); rerun that fold without --resume")
            for image_id, rles in read_submission(path).items():
                if image_id in truth and fold_of[image_id] == fold:
                    pred[image_id] = runs_from_rles(rles, truth[image_id].shape)
        info = {"method": m, "settings": summary.get("settings"),
                "command": " ".join(summary["command"]) if summary.get("command") else None}
        runs.append(ViewRun(m, pred, info=info))
    # an image a method has not finished yet would count as a 0: show finished images only
    finished = [i for i in ids if all(i in {r["image_id"] for r in rows if r["method"] == m}
                                      for m in methods)]
    return write_viewer(out_dir, runs, finished, truth=truth,
                        cell_types={i: by_id[i].cell_type for i in finished},
                        image_paths={i: by_id[i].image_path for i in finished},
                        title=f"cellseg cv: {' vs '.join(methods)} ({cv_dir.name})",
                        command=command)
