"""Write the results viewer: ``DIR/index.html`` plus the pictures in ``DIR/img/``.

The page is one HTML file with its CSS, its plain JavaScript (``viewer.js``, no build step) and
its numbers (a JSON block) inline; the pictures are files beside it (``img/<k>.jpg`` and
``img/<k>.<layer>.png``, ``k`` the image's row number), so it opens from ``file://`` with no
server and no network. ``embed=True`` puts the pictures into the page instead (data URIs, one
``<script>`` per picture, streamed to a temporary file first): one file to copy or to show where
a viewer serves a single HTML file. Pictures are written a few images at a time (nothing
full-size is held longer); every file is written atomically, ``index.html`` last.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.core.masks import Runs
from cellseg.core.metrics import THRESHOLD_KEYS, ImageResult, ScoreReport, match_image

_STATIC = Path(__file__).with_name("static")


@dataclass
class ViewRun:
    """One set of predictions shown by the page.

    Attributes:
        name: label on the page ("A", "kit", a file name).
        pred: image id -> predicted cells; a missing id has no prediction.
        scores: image id -> (P,) per-prediction confidence, or None (submission rows have none).
        results: image id -> its ``match_image`` result, when already computed (else computed
            here); the page's summary is the ``ScoreReport`` of these.
        info: what made the predictions (inference config, checkpoints, command, when), shown
            as is.
    """

    name: str
    pred: Mapping[str, Runs]
    scores: Mapping[str, np.ndarray] | None = None
    results: Mapping[str, ImageResult] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of two runs' image scores (same images, same order): on how many
    images B is better / worse / tied (|diff| < 1e-9), and the mean and sd of ``b - a``."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    tied = np.abs(d) < 1e-9
    return {"n": int(d.size), "better": int(((d > 0) & ~tied).sum()),
            "worse": int(((d < 0) & ~tied).sum()), "tied": int(tied.sum()),
            "mean_diff": float(d.mean()) if d.size else float("nan"),
            "sd_diff": float(d.std(ddof=1)) if d.size > 1 else 0.0}


def _num(x: float | None, nd: int = 4) -> float | None:
    """JSON-safe rounding (NaN -> null)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)


def _summary(report: ScoreReport) -> dict[str, Any]:
    d = report.to_dict()
    n_types: dict[str, int] = {}
    for r in report.images.values():
        n_types[r.cell_type or "unknown"] = n_types.get(r.cell_type or "unknown", 0) + 1
    return {"score": d["score"], "per_threshold": d["per_threshold"],
            "per_cell_type": d["per_cell_type"], "n_per_cell_type": n_types,
            "counts": d["counts"]}


def write_viewer(out_dir: str | os.PathLike, runs: Sequence[ViewRun], image_ids: Sequence[str],
                 *, truth: Mapping[str, Runs] | None = None,
                 cell_types: Mapping[str, str | None] | None = None,
                 image_paths: Mapping[str, str | os.PathLike] | None = None,
                 shapes: Mapping[str, tuple[int, int]] | None = None,
                 title: str = "cellseg results", command: Sequence[str] | None = None,
                 threads: int | None = None, embed: bool = False) -> Path:
    """Write ``out_dir/index.html`` for ``runs`` over ``image_ids``; returns its path.

    With ``truth`` every run is scored (competition metric) and outlines are coloured by
    outcome; without it the page lists counts and confidences only. With two or more runs each
    later run is compared with the first (per-image difference, paired summary).

    Args:
        truth: image id -> true cells, or None (a prediction-only page).
        cell_types: image id -> cell type (None / missing: "unknown").
        image_paths: image id -> image file; an image without one is drawn on black.
        shapes: image id -> (H, W), needed for images without a file or truth (default 520x704).
        command: the command line that made the page, shown in the summary.
        threads: images rendered at once (default: up to 4, one per CPU core).
        embed: pictures inside ``index.html`` (data URIs) rather than in ``img/``.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not runs:
        raise ValueError("write_viewer needs at least one run")
    sink = _Pictures(Path(out_dir), embed)
    page_in = _PageInputs(runs, truth, cell_types or {}, image_paths or {}, shapes or {},
                          [dict(r.results or {}) for r in runs])
    rows: list[dict[str, Any]] = []
    # images in small batches over a few threads (numpy, OpenCV and PIL's encoders release the
    # GIL); a batch's pictures are on disk before the next batch starts, so memory stays flat
    n_threads = max(1, min(4, os.cpu_count() or 1)) if threads is None else max(1, threads)
    with ThreadPoolExecutor(n_threads) as pool:
        for s in range(0, len(image_ids), 4 * n_threads):
            batch = [(k, image_ids[k]) for k in range(s, min(s + 4 * n_threads, len(image_ids)))]
            rows += pool.map(lambda kv: _render_image(kv[0], kv[1], page_in, sink), batch)
    sink.drop_stale()
    data = {"title": title, "has_truth": truth is not None, "thresholds": list(THRESHOLD_KEYS),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(command) if command else None,
            "runs": _run_meta(page_in, image_ids, rows), "images": rows}
    return sink.write_page(_html(data))


@dataclass
class _PageInputs:
    """What every image of the page is drawn from; ``results[j]`` fills up as run j is scored."""

    runs: Sequence[ViewRun]
    truth: Mapping[str, Runs] | None
    cell_types: Mapping[str, str | None]
    image_paths: Mapping[str, str | os.PathLike]
    shapes: Mapping[str, tuple[int, int]]
    results: list[dict[str, ImageResult]]


class _Pictures:
    """Where the page's pictures go: ``img/<name>`` files (atomic), or data URIs streamed to a
    temporary file and copied into ``index.html`` (``embed``). Thread-safe ``put``."""

    def __init__(self, out: Path, embed: bool) -> None:
        import tempfile
        import threading

        self.out, self.embed = out, embed
        (out / "img").mkdir(parents=True, exist_ok=True)
        self._uris = tempfile.TemporaryFile("w+", encoding="ascii") if embed else None
        self._lock = threading.Lock()
        self.written: set[str] = set()

    def put(self, name: str, data: bytes) -> None:
        from cellseg.io import atomic_path

        if self._uris is not None:
            import base64

            mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
            uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            with self._lock:
                self._uris.write(f'<script>PICS["{name}"]="{uri}";</script>\n')
            return
        with atomic_path(self.out / "img" / name) as tmp:
            Path(tmp).write_bytes(data)
        with self._lock:
            self.written.add(name)

    def drop_stale(self) -> None:
        """Remove the pictures of an earlier, larger page in this folder."""
        for old in (self.out / "img").iterdir():
            if old.name not in self.written and old.name.split(".")[0].isdigit():
                old.unlink()

    def write_page(self, text: str) -> Path:
        """``index.html`` (atomically, last), with the embedded pictures where the page wants
        them; returns its path."""
        import shutil

        from cellseg.io import atomic_open

        page = self.out / "index.html"
        head, tail = text.split(_PICS_HERE, 1)
        with atomic_open(page) as fh:
            fh.write(head)
            if self._uris is not None:
                self._uris.seek(0)
                shutil.copyfileobj(self._uris, fh)
                self._uris.close()
            fh.write(tail)
        if self.embed and not any((self.out / "img").iterdir()):
            (self.out / "img").rmdir()
        return page


def _render_image(k: int, image_id: str, page_in: _PageInputs, sink: _Pictures) -> dict[str, Any]:
    """Row ``k`` of the page: the image's pictures (base, truth and per-run layers) through
    ``sink``, and its numbers per run (scored against the truth when there is one)."""
    from cellseg.io import read_gray
    from cellseg.report import outline_labels
    from cellseg.viewer import render

    runs = page_in.runs
    t = page_in.truth.get(image_id) if page_in.truth is not None else None
    path = page_in.image_paths.get(image_id)
    image = read_gray(path) if path is not None else None
    shape = (t.shape if t is not None else image.shape[:2] if image is not None else
             next((r.pred[image_id].shape for r in runs if image_id in r.pred),
                  page_in.shapes.get(image_id, (520, 704))))
    if image is None:
        image = np.zeros(shape, np.uint8)
    sink.put(f"{k}.jpg", render.base_jpeg(image))
    row: dict[str, Any] = {"id": image_id, "type": page_in.cell_types.get(image_id) or "unknown",
                           "h": int(shape[0]), "w": int(shape[1]), "runs": []}
    t_edge = None
    if t is not None:
        t_edge = outline_labels(t)
        sink.put(f"{k}.t.png", render.truth_layer(t_edge, t.n))
        row["n_true"] = int(t.n)
    for j, run in enumerate(runs):
        p = run.pred.get(image_id) or Runs(*(np.zeros(0, np.int64),) * 3, 0, shape)
        conf = run.scores.get(image_id) if run.scores is not None else None
        cell: dict[str, Any] = {"n_pred": int(p.n),
                                "conf": _num(np.mean(conf)) if conf is not None and len(conf)
                                else None}
        oc = None
        if t is not None:
            res = page_in.results[j].get(image_id)
            if res is None:
                res = match_image(t, p, shape, image_id=image_id,
                                  cell_type=page_in.cell_types.get(image_id))
                page_in.results[j][image_id] = res
            oc = render.outcome(t, p, res)
            cell.update(score=_num(res.score), tp=int(res.tp[0]), fp=int(res.fp[0]),
                        fn=int(res.fn[0]), near=oc.n_near, iou=_num(oc.mean_iou, 3),
                        s10=[_num(s, 3) for s in res.scores])
        pred_png, err_png = render.run_layers(t_edge, outline_labels(p), p.n, oc)
        sink.put(f"{k}.{j}.p.png", pred_png)
        if err_png is not None:
            sink.put(f"{k}.{j}.e.png", err_png)
        row["runs"].append(cell)
    return row


def _run_meta(page_in: _PageInputs, image_ids: Sequence[str], rows: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Per run: its name, what made it, its summary (scored, or counts only) and, for every run
    after the first, the paired comparison with the first."""
    out = []
    results = page_in.results
    for j, run in enumerate(page_in.runs):
        meta: dict[str, Any] = {"name": run.name, "info": dict(run.info)}
        if page_in.truth is not None:
            meta["summary"] = _summary(ScoreReport({i: results[j][i] for i in image_ids}))
        else:
            n = [r["runs"][j]["n_pred"] for r in rows]
            meta["summary"] = {"n_images": len(rows), "n_pred": int(sum(n))}
        if j > 0 and page_in.truth is not None:
            meta["vs_first"] = paired([results[0][i].score for i in image_ids],
                                      [results[j][i].score for i in image_ids])
        out.append(meta)
    return out


_PICS_HERE = "<!-- pictures -->\n"


def _html(data: Mapping[str, Any]) -> str:
    css = (_STATIC / "viewer.css").read_text()
    js = (_STATIC / "viewer.js").read_text()
    # "</" inside a script block would end it early
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = html.escape(str(data["title"]))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>\n{css}</style></head>\n<body>\n"
            f"<header><h1>{title}</h1><div id=\"when\"></div></header>\n"
            f"<main id=\"app\"><noscript>This page needs JavaScript.</noscript></main>\n"
            f"<script>window.PICS = {{}};</script>\n{_PICS_HERE}"
            f"<script type=\"application/json\" id=\"data\">{blob}</script>\n"
            f"<script>\n{js}</script>\n</body></html>\n")
