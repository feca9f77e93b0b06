"""``cellseg score``: the competition metric (and COCO AP/AR) of predictions against truth.

    cellseg score --truth data/sartorius/train.csv --pred submission.csv
    cellseg score --truth data/sartorius --pred oof.csv --fold 0 --n-folds 5 --json score.json
    cellseg score --truth livecell_coco_val.json --pred results.json --report report/
    cellseg score --truth data/sartorius --pred a.json --compare b.json --report cmp/
    cellseg score --truth data/sartorius data/livecell:val --pred mixed_submission.csv
    cellseg score --truth data/sartorius --pred submission.csv --matching greedy

Truth (``--truth``): one or more of what ``cellseg.data.loaders.load_records`` reads: a
competition folder or train.csv, a LIVECell root, a COCO JSON; each optionally ``PATH:SPLIT``
(``cellseg.data.sources``). Several sources are pooled as one set of images: the score is still the
mean over images, and per cell type the mean over that type's images.
Predictions (``--pred``): a submission.csv (``id,predicted``; rows have no score, so COCO AP
gives each 1.0), or a COCO results JSON: a list of ``{image_id, segmentation (COCO RLE), score,
category_id}``, ``image_id`` being the truth's COCO/LIVECell image id or the kit's image id.
Optional per-instance ``pred_iou`` / ``stability`` keys are averaged and printed.

Matching (``--matching``, docs/metric.md): ``dsb`` (default, the Data Science Bowl 2018 rule of
Kaggle's evaluation page) or ``greedy`` one-to-one; they differ only where masks overlap (duplicated
truth). Both are in ``--json`` and per cell type in the table, with a note naming the images whose
score the rule changed.
Every prediction counts for the competition metric (``--min-score`` drops low-confidence
results first, like a submission would); COCO AP ranks them by score with up to 2000 per image.
Images of the truth without predictions score 0 (or 1 when they have no cell either).

``--report DIR`` writes the results viewer, ``DIR/index.html`` (``cellseg.viewer``: summary,
sortable table of images, outlines by outcome, zoom; opens from the file system), and two plots.
``--compare B`` scores a second predictions file on the same truth: the page shows A and B side by
side, and the printout and ``--json`` (key ``compare``) say on how many images B is better.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.commands.common import (add_fold_args, add_matching_arg, input_path, output_dir,
                                     output_file, select_fold)
from cellseg.errors import InputError, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, action="extend", nargs="+", metavar="SRC",
                        help="train.csv / competition folder / LIVECell root / COCO JSON, "
                             "optionally PATH:SPLIT; several are pooled")
    parser.add_argument("--pred", required=True, type=Path,
                        help="submission.csv or COCO results JSON")
    parser.add_argument("--compare", type=Path, default=None, metavar="PRED_B",
                        help="a second predictions file scored on the same truth and compared "
                             "with --pred, image by image (and side by side with --report)")
    parser.add_argument("--split", default=None,
                        help="split of the truth sources that name none "
                             "(default: competition train, LIVECell val)")
    parser.add_argument("--ids", nargs="+", default=None, metavar="ID",
                        help="score only these image ids")
    add_fold_args(parser, what="score")
    add_matching_arg(parser)
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="competition metric: drop predictions scored below this")
    parser.add_argument("--images", type=Path, default=None,
                        help="image folder for --report overlays (default: the truth's paths)")
    parser.add_argument("--json", type=Path, default=None, help="write the full result here")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the results page (index.html, opens offline) and plots "
                             "into this folder")
    parser.add_argument("--report-embed", action="store_true",
                        help="put the page's pictures inside index.html (one file to copy or to "
                             "show in a viewer that serves a single HTML file)")
    parser.add_argument("--max-overlays", type=int, default=0,
                        help="with --report, also this many PNG overlays, worst images first "
                             "(default 0: the page shows every image)")
    parser.add_argument("--no-coco", action="store_true", help="skip COCO AP/AR")
    parser.add_argument("--coco-backend", default="faster", choices=("faster", "pycocotools"),
                        help="COCOeval implementation (default faster-coco-eval)")


def run(args: argparse.Namespace) -> int:
    from cellseg.core import masks, metrics
    from cellseg.io import write_json

    for spec in args.truth:
        input_path(_source_path(spec), "--truth")
    input_path(args.pred, "--pred", kind="file")
    if args.compare is not None:
        input_path(args.compare, "--compare", kind="file")
    if args.json is not None:
        output_file(args.json, "--json")
    if args.report is not None:
        output_dir(args.report, "--report")
    records = _select(_load_truth(args.truth, args.split), args)
    if not records:
        raise UserError("no truth image selected", where=f"--truth {args.truth}",
                        fix="check --ids / --fold")
    shapes = {r.image_id: r.shape for r in records}
    truth = {r.image_id: masks.runs_from_rles(r.rles, r.shape) for r in records}
    preds, scores, extras = load_predictions(args.pred, records)
    ignored = [k for k in preds if k not in truth]
    if ignored:
        print(f"note: {len(ignored)} predicted images are not in the scored truth and are "
              f"ignored (e.g. {ignored[:3]})", file=sys.stderr)
    preds = {k: v for k, v in preds.items() if k in truth}
    cell_types = {r.image_id: r.cell_type for r in records}
    comp_preds, comp_scores = _min_score(preds, scores, args.min_score)
    report = metrics.score(truth, comp_preds, cell_types=cell_types, shape=shapes,
                           matching=args.matching)
    result = report.to_dict()
    if not args.no_coco:
        from cellseg.core.metrics_coco import coco_metrics

        result["coco"] = coco_metrics(truth, preds, {k: scores[k] for k in preds},
                                      shape=shapes, backend=args.coco_backend)
    else:
        result["coco"] = None
    if extras:
        result["pred_extras"] = {k: float(np.mean(v)) for k, v in extras.items()}
    result["truth"], result["pred"] = [str(t) for t in args.truth], str(args.pred)
    print(format_result(result))
    compare = None
    if args.compare is not None:
        compare = _score_compare(args, records, truth, cell_types, shapes, report)
        result["compare"] = compare["result"]
        print(compare["text"])
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.report is not None:
        _write_reports(args, records, truth, cell_types, report, comp_preds, comp_scores, compare)
    return 0


def _min_score(preds: dict, scores: dict, min_score: float) -> tuple[dict, dict]:
    """``(preds, scores)`` without the predictions scored below ``min_score`` (as a submission
    would drop them)."""
    if min_score <= 0:
        return preds, scores
    return ({k: _keep(v, scores[k] >= min_score) for k, v in preds.items()},
            {k: scores[k][scores[k] >= min_score] for k in preds})


def _score_compare(args: argparse.Namespace, records: Sequence, truth: dict, cell_types: dict,
                   shapes: dict, report: Any) -> dict[str, Any]:
    """Score ``--compare`` like ``--pred`` (same truth, same ``--min-score``) and pair the two."""
    from cellseg.core import metrics
    from cellseg.viewer import paired

    preds_b, scores_b, _ = load_predictions(args.compare, records)
    preds_b, scores_b = _min_score({k: v for k, v in preds_b.items() if k in truth}, scores_b,
                                   args.min_score)
    report_b = metrics.score(truth, preds_b, cell_types=cell_types, shape=shapes,
                             matching=args.matching)
    ids = list(truth)
    pair = paired([report.images[i].score for i in ids], [report_b.images[i].score for i in ids])
    text = (f"\ncompare  B = {args.compare}: score {report_b.score:.4f} (A {report.score:.4f}); "
            f"B better on {pair['better']} of {pair['n']} images, worse on {pair['worse']}, "
            f"tied on {pair['tied']}; mean paired difference B - A {pair['mean_diff']:+.4f} "
            f"(sd {pair['sd_diff']:.4f})")
    result = {"pred": str(args.compare), **report_b.to_dict(), "paired": pair}
    return {"result": result, "text": text, "report": report_b, "preds": preds_b,
            "scores": scores_b}


def _write_reports(args: argparse.Namespace, records: Sequence, truth: dict, cell_types: dict,
                   report: Any, preds: dict, scores: dict, compare: dict | None) -> None:
    """``--report``: the results page (``cellseg.viewer``), the two plots and, with
    ``--max-overlays``, PNG overlays."""
    from cellseg.report import write_report
    from cellseg.viewer import ViewRun, write_viewer
    from cellseg.viewer.runinfo import read_run_info

    paths = _image_paths(records, args.images)
    files = [args.pred] + ([args.compare] if compare is not None else [])
    names = [p.name for p in files]
    if len(set(names)) < len(names):  # e.g. runs/unet/pred.csv vs runs/mrcnn/pred.csv
        names = [f"{p.parent.name}/{p.name}" for p in files]
    runs = [ViewRun(names[0], preds, scores, report.images, read_run_info(args.pred))]
    if compare is not None:
        runs.append(ViewRun(names[1], compare["preds"], compare["scores"],
                            compare["report"].images, read_run_info(args.compare)))
    argv = ["cellseg", *sys.argv[1:]] if sys.argv[1:2] == ["score"] else None
    page = write_viewer(args.report, runs, list(truth), truth=truth, cell_types=cell_types,
                        image_paths=paths, title=f"cellseg score: {runs[0].name}"
                        + (f" vs {runs[1].name}" if compare else ""), command=argv,
                        embed=args.report_embed)
    files = write_report(args.report, report, truth, preds, paths, max_images=args.max_overlays)
    print(f"wrote {page} (open it in a browser) and {len(files)} more report files to "
          f"{args.report}")


def _source_path(spec: str) -> str:
    """The path of a ``PATH[:SPLIT]`` source spec (``cellseg.data.sources.parse_source``)."""
    from cellseg.data.sources import parse_source

    return parse_source(spec)[0]


def _load_truth(paths: Sequence[str], split: str | None) -> list:
    from cellseg.data.sources import load_sources

    records: list = []
    seen: set[str] = set()
    for spec in paths:
        recs = load_sources([spec], split=split, check_images=False)
        if not any(r.rles for r in recs):  # a source without annotations: wrong split?
            raise InputError("no annotated image", where=f"--truth {spec}",
                             fix="check its split (PATH:val, PATH:train or --split)")
        dup = sorted(seen & {r.image_id for r in recs})
        if dup:
            raise UserError(f"image id(s) {dup[:3]} repeat an earlier source",
                            where=f"--truth {spec}", fix="list each source once")
        seen.update(r.image_id for r in recs)
        records += recs
    return records


def _select(records: list, args: argparse.Namespace) -> list:
    if args.ids:
        have = {r.image_id for r in records}
        unknown = [i for i in args.ids if i not in have]
        if unknown:
            raise UserError(f"{len(unknown)} id(s) not in the truth, e.g. {unknown[:3]}",
                            where="--ids", fix="use image ids of --truth")
        wanted = set(args.ids)
        records = [r for r in records if r.image_id in wanted]
    return select_fold(records, args)


def _keep(runs: Any, keep: np.ndarray) -> Any:
    from cellseg.core.masks import Runs

    idx = np.flatnonzero(keep)
    new_id = np.full(runs.n, -1, np.int64)
    new_id[idx] = np.arange(idx.size)
    sel = keep[runs.owner]
    return Runs(runs.starts[sel], runs.lengths[sel], new_id[runs.owner[sel]], int(idx.size),
                runs.shape)


def load_predictions(path: Path, records: Sequence) -> tuple[dict, dict, dict]:
    """Read predictions for the images of ``records``.

    Returns:
        ``(runs, scores, extras)``: image id -> ``masks.Runs``; image id -> (P,) float64
        scores (1.0 for submission rows); name -> all values of ``pred_iou`` / ``stability``.
    """
    from cellseg.core import masks, metrics

    shapes = {r.image_id: r.shape for r in records}
    if path.suffix.lower() == ".csv":
        from cellseg.core.submission import read_submission

        runs, scores = {}, {}
        for image_id, rles in read_submission(path).items():
            shp = shapes.get(image_id, metrics.SHAPE)
            try:
                runs[image_id] = masks.runs_from_rles(rles, shp)
            except ValueError as err:
                raise InputError(f"bad RLE of image {image_id} ({err})", where=f"--pred {path}",
                                 fix="`cellseg validate` lists every bad row") from None
            scores[image_id] = np.ones(len(rles))
        return runs, scores, {}
    if path.suffix.lower() != ".json":
        raise UserError(f"unknown predictions format {path.suffix or '(no suffix)'!r}",
                        where=f"--pred {path}",
                        fix="pass a .csv submission or a .json COCO results file")
    return _load_coco_results(path, records)


def _load_coco_results(path: Path, records: Sequence) -> tuple[dict, dict, dict]:
    from cellseg.core.masks import runs_from_coco

    with open(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err})", where=f"--pred {path}",
                             fix="pass a COCO results JSON list") from None
    if isinstance(data, dict):
        data = data.get("annotations", data)
        data = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise InputError("expected a list of COCO results", where=f"--pred {path}",
                         fix="pass [{image_id, segmentation, score}, ...]")
    alias: dict[Any, str] = {}
    for r in records:
        alias[r.image_id] = r.image_id
        for key in ("coco_id", "livecell_id"):
            if key in r.meta:
                alias[r.meta[key]] = r.image_id
        if "file_name" in r.meta:
            alias[Path(str(r.meta["file_name"])).stem] = r.image_id
    shapes = {r.image_id: r.shape for r in records}
    segs: dict[str, list] = {}
    scores: dict[str, list] = {}
    extras: dict[str, list] = {}
    unknown = set()
    for n, det in enumerate(data):
        try:
            key, seg = det["image_id"], det["segmentation"]
        except (KeyError, TypeError):
            raise InputError(f"result {n} lacks image_id or segmentation", where=f"--pred {path}",
                             fix="give each result image_id and a COCO RLE segmentation") from None
        image_id = alias.get(key, alias.get(str(key)))
        if image_id is None:
            unknown.add(key)
            continue
        if not isinstance(seg, dict) or "counts" not in seg:
            raise InputError(f"result {n}: segmentation is not a COCO RLE dict",
                             where=f"--pred {path}",
                             fix="encode masks as {size, counts} (polygons are not read)")
        segs.setdefault(image_id, []).append(seg)
        scores.setdefault(image_id, []).append(float(det.get("score", 1.0)))
        for name in ("pred_iou", "stability"):
            if name in det:
                extras.setdefault(name, []).append(float(det[name]))
    if unknown:
        print(f"note: {path}: {len(unknown)} image ids match no truth image (e.g. "
              f"{sorted(map(str, unknown))[:3]}); their results are ignored", file=sys.stderr)
    runs = {}
    for k, v in segs.items():
        try:
            runs[k] = runs_from_coco(v, shapes[k])
        except ValueError as err:
            raise InputError(f"bad COCO RLE of image {k} ({err})", where=f"--pred {path}",
                             fix="re-encode it with pycocotools.mask.encode") from None
    return runs, {k: np.asarray(v) for k, v in scores.items()}, extras


def _image_paths(records: Sequence, images: Path | None) -> dict[str, Path]:
    out = {}
    for r in records:
        if images is not None:
            hits = [p for p in (images / f"{r.image_id}{s}" for s in
                                (".png", ".tif", ".tiff")) if p.is_file()]
            if hits:
                out[r.image_id] = hits[0]
        elif r.image_path is not None and Path(r.image_path).is_file():
            out[r.image_id] = Path(r.image_path)
    return out


def format_result(result: Mapping[str, Any]) -> str:
    """The printed table: overall score, per cell type, per threshold, counts, COCO AP/AR."""
    lines = [f"competition score  {result['score']:.4f}   "
             f"({result['counts']['n_images']} images, {result['counts']['n_true']} true cells, "
             f"{result['counts']['n_pred']} predicted)", ""]
    per_type: dict[str, list[float]] = {}
    for r in result["per_image"].values():
        per_type.setdefault(r["cell_type"] or "unknown", []).append(r["score"])
    rules = list(result.get("score_by_matching") or {})
    others = [m for m in rules if m != result.get("matching")]
    by_type = result.get("per_cell_type_by_matching") or {}
    lines.append(f"{'cell type':<12} {'images':>6} {'score':>8}"
                 + "".join(f" {m + ' rule':>12}" for m in others))
    for t, s in result["per_cell_type"].items():
        lines.append(f"{t:<12} {len(per_type.get(t, [])):>6} {s:>8.4f}"
                     + "".join(f" {by_type.get(t, {}).get(m, float('nan')):>12.4f}"
                               for m in others))
    if rules:
        changed = result.get("changed_by_matching") or {}
        sbm = result["score_by_matching"]
        lines.append(f"matching rule: {result['matching']} (docs/metric.md); "
                     + ", ".join(f"{m} {sbm[m]:.4f}" for m in rules))
        if changed:
            lines.append(f"note: the matching rule changes the score of {len(changed)} image(s) "
                         f"(overlapping truth or predictions), e.g. " + ", ".join(
                             f"{k} " + "/".join(f"{v:.3f}" for v in changed[k].values())
                             for k in list(changed)[:3]) + f" ({'/'.join(rules)}); "
                         f"`cellseg data check` lists duplicated truth")
    lines.append("")
    c = result["counts"]
    lines.append(f"{'IoU >':<6} {'score':>7} {'TP':>7} {'FP':>7} {'FN':>7}")
    for t, s in result["per_threshold"].items():
        lines.append(f"{t:<6} {s:>7.4f} {c['tp'][t]:>7} {c['fp'][t]:>7} {c['fn'][t]:>7}")
    lines.append("(TP/FP/FN are summed for reading; the score averages per image)")
    coco = result.get("coco")
    if coco:
        lines.append("")
        lines.append(f"COCO mask AP/AR at maxDets={coco['max_dets']} (LIVECell size bins):")
        keys = [k for k in coco if k.startswith(("AP", "AR"))]
        for i in range(0, len(keys), 6):
            lines.append("  " + "  ".join(f"{k}={coco[k]:.4f}" for k in keys[i:i + 6]))
    if result.get("pred_extras"):
        lines.append("")
        lines.append("prediction averages: " + ", ".join(
            f"{k}={v:.4f}" for k, v in result["pred_extras"].items()))
    return "\n".join(lines)
