"""Validate a data folder and summarise it: ``cellseg data check DIR``.

    cellseg data check data/sartorius          # competition folder
    cellseg data check data/LIVECell_dataset_2021
    cellseg data check data/synth              # a folder holding competition/ and livecell/

Every problem (bad CSV row, bad annotation, missing, truncated or wrongly sized image) is collected
and listed at the end instead of stopping at the first; the exit code is 1 when there is any.
Every image is decoded fully with the reader training and prediction use (``cellseg.io.read_gray``),
so a truncated PNG whose header is intact fails here, not hours into training.
Known, harmless quirks (LIVECell duplicate entries, degenerate polygons) are listed as notes.
Duplicated and heavily overlapping truth is listed per image (pairs of true masks with IoU > 0.5,
and how many of them are identical): on such images the metric's matching rule changes the score
(docs/metric.md).
The summary gives, per cell type: images, cells, cells per image (min / median / max) and cell
area percentiles (5 / 50 / 95, pixels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.data.record import ImageRecord


@dataclass
class CheckReport:
    """The outcome of checking one data folder."""

    path: Path
    kind: str
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_counts: dict[str, int] = field(default_factory=dict)  # e.g. test / semi images
    # image id -> (pairs of true masks with IoU > 0.5, identical pairs), images with any only
    duplicates: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def stats(self) -> dict[str, dict[str, float]]:
        """Per cell type (and "all"): images, cells, cells/image min/median/max, area p5/50/95."""
        groups: dict[str, list[ImageRecord]] = {}
        for r in self.records:
            groups.setdefault(str(r.cell_type), []).append(r)
        if len(groups) > 1:
            groups["all"] = list(self.records)
        out = {}
        for name, recs in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
            cells = np.array([r.n_instances for r in recs])
            area = rle_codec.areas([s for r in recs for s in r.rles])
            pct = np.percentile(area, [5, 50, 95]) if area.size else [np.nan] * 3
            out[name] = {"images": len(recs), "cells": int(cells.sum()),
                         "cells_min": int(cells.min()), "cells_median": float(np.median(cells)),
                         "cells_max": int(cells.max()), "area_p5": float(pct[0]),
                         "area_p50": float(pct[1]), "area_p95": float(pct[2])}
        return out

    def format(self) -> str:
        """A Markdown summary, then notes, then every problem."""
        lines = [f"# {self.kind}: {self.path}", ""]
        stats = self.stats()
        if stats:
            lines += ["| cell type | images | cells | cells/image min | median | max "
                      "| area p5 | p50 | p95 |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, s in stats.items():
                lines.append(f"| {name} | {s['images']} | {s['cells']} | {s['cells_min']} | "
                             f"{s['cells_median']:g} | {s['cells_max']} | {s['area_p5']:.0f} | "
                             f"{s['area_p50']:.0f} | {s['area_p95']:.0f} |")
        else:
            lines.append("no annotated images")
        for what, n in self.extra_counts.items():
            lines.append(f"- {what}: {n}")
        if self.duplicates:
            types = {r.image_id: r.cell_type for r in self.records}
            n_pairs = sum(p for p, _ in self.duplicates.values())
            n_same = sum(i for _, i in self.duplicates.values())
            lines += ["", f"duplicated / heavily overlapping truth: {len(self.duplicates)} "
                          f"image(s), {n_pairs} pair(s) of true masks with IoU > 0.5, {n_same} "
                          f"identical (the matching rule changes their score: docs/metric.md)",
                      "", "| image | cell type | pairs IoU > 0.5 | identical |",
                      "|---|---|---:|---:|"]
            for image_id, (p, i) in sorted(self.duplicates.items(), key=lambda kv: -kv[1][0]):
                lines.append(f"| {image_id} | {types.get(image_id)} | {p} | {i} |")
        if self.notes:
            lines += ["", "notes:"] + [f"- {n}" for n in self.notes]
        lines.append("")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"- {p}" for p in self.problems]
        else:
            lines.append("OK: no problems found")
        return "\n".join(lines)


def duplicated_truth(rles: Sequence[str], shape: tuple[int, int]) -> tuple[int, int]:
    """(pairs of masks with IoU > 0.5, identical pairs) among the true masks of one image."""
    from cellseg.core.masks import runs_from_rles
    from cellseg.core.metrics import intersections

    runs = runs_from_rles(rles, shape)
    if runs.n < 2 or not runs.overlapping():
        return 0, 0
    a, b, inter = intersections(runs, runs)
    pair = a < b
    a, b, inter = a[pair], b[pair], inter[pair]
    area = runs.areas
    union = area[a] + area[b] - inter
    heavy = 2 * inter > union  # IoU > 0.5, exactly
    same = (inter == area[a]) & (inter == area[b])
    return int(heavy.sum()), int(same.sum())


def find_duplicates(records: Sequence[ImageRecord]) -> dict[str, tuple[int, int]]:
    """``{image_id: (pairs IoU > 0.5, identical pairs)}`` of the records that have any."""
    out = {}
    for r in records:
        n, same = duplicated_truth(r.rles, r.shape)
        if n:
            out[r.image_id] = (n, same)
    return out


def _check_image(path: Path, shape: tuple[int, int], problems: list[str]) -> None:
    from cellseg.io import read_gray

    if not path.is_file():
        problems.append(f"image {path} is missing")
        return
    try:
        # a full decode: a header-only read passes truncated files
        size = read_gray(path).shape[:2]
    except Exception as err:  # noqa: BLE001 - any unreadable file is a problem to list
        from cellseg.errors import InputError

        why = "" if isinstance(err, InputError) else f": {type(err).__name__}: {err}"
        problems.append(f"image {path} cannot be decoded (truncated or corrupt{why})")
        return
    if tuple(size) != tuple(shape):
        problems.append(f"image {path} is {size[0]}x{size[1]} (HxW), the annotations expect "
                        f"{shape[0]}x{shape[1]}")


def check_competition(root: str | os.PathLike) -> CheckReport:
    """Check a competition folder (or a bare train.csv): every CSV row, image and folder."""
    from cellseg.data import sartorius

    root = Path(root)
    csv = root if root.is_file() else root / "train.csv"
    folder = csv.parent
    report = CheckReport(path=root, kind="competition")
    if csv.is_file():
        try:
            df = sartorius.read_train_csv(csv, problems=report.problems)
        except sartorius.DataError as err:  # missing columns: nothing else can be checked
            report.problems.extend(err.problems)
            return report
        report.records = sartorius.records_from_frame(df, folder / "train")
        report.duplicates = find_duplicates(report.records)
        if not report.records:
            report.problems.append(f"{csv} has a header but no rows")
        for rec in report.records:
            _check_image(rec.image_path, rec.shape, report.problems)
        annotated = {r.image_id for r in report.records}
        if (folder / "train").is_dir():
            unannotated = [p.name for p in sorted((folder / "train").iterdir())
                           if p.suffix.lower() == ".png" and p.stem not in annotated]
            if unannotated:
                report.notes.append(f"{len(unannotated)} image(s) in train/ have no rows in "
                                    f"train.csv, e.g. {unannotated[0]}")
    else:
        report.notes.append(f"no train.csv in {folder}")
    for sub in ("test", "train_semi_supervised"):
        if (folder / sub).is_dir():
            recs = sartorius.list_images(folder / sub, read_size=False)
            report.extra_counts[f"{sub}/ images"] = len(recs)
            for rec in recs:
                _check_image(rec.image_path, rec.shape, report.problems)
    if not report.records and not report.extra_counts and not csv.is_file():
        report.problems.append(f"{root}: no train.csv, test/ or train_semi_supervised/ found")
    return report


def check_livecell(root: str | os.PathLike, splits: Sequence[str] = ("train", "val", "test")
                   ) -> CheckReport:
    """Check a LIVECell root: every split whose annotations exist, and their images."""
    from cellseg.data import livecell
    from cellseg.data.sartorius import DataError

    root = Path(root)
    report = CheckReport(path=root, kind="livecell")
    found = 0
    for split in splits:
        try:
            files = livecell.find_annotation_files(root, split)
        except FileNotFoundError:
            continue
        found += 1
        try:
            recs = livecell.load(root, split, annotation_file=files,
                                 problems=report.problems, notes=report.notes)
        except (ValueError, DataError) as err:
            report.problems.append(f"{split}: {err}")
            continue
        report.extra_counts[f"{split} images"] = len(recs)
        for rec in recs:
            _check_image(rec.image_path, rec.shape, report.problems)
        report.records.extend(recs)
    if not found:
        report.problems.append(f"{root}: no LIVECell annotation file for any of {list(splits)}")
    return report


def check_coco(path: str | os.PathLike, image_root: str | os.PathLike | None = None
               ) -> CheckReport:
    """Check a COCO JSON file (segmentations decodable, images present under ``image_root``,
    default the JSON's folder)."""
    from cellseg.data import coco

    path = Path(path)
    report = CheckReport(path=path, kind="coco")
    try:
        report.records = coco.coco_to_records(path, image_root, notes=report.notes)
    except (ValueError, KeyError, OSError) as err:
        report.problems.append(f"{path}: {err}")
        return report
    for rec in report.records:
        _check_image(rec.image_path, rec.shape, report.problems)
    return report


def check_path(path: str | os.PathLike, image_root: str | os.PathLike | None = None
               ) -> list[CheckReport]:
    """Check whatever lives at ``path``; a folder holding ``competition/`` and/or ``livecell/``
    (``cellseg data synth`` output) gives one report each. ``image_root``: COCO files only."""
    from cellseg.data.loaders import detect

    path = Path(path)
    if path.is_dir() and not (path / "train.csv").exists():
        subs = [path / s for s in ("competition", "livecell") if (path / s).is_dir()]
        if subs:
            return [r for s in subs for r in check_path(s)]
    try:
        kind = detect(path)
    except (ValueError, FileNotFoundError) as err:
        return [CheckReport(path=path, kind="unknown", problems=[str(err)])]
    if kind in ("competition", "csv"):
        return [check_competition(path)]
    if kind == "coco":
        return [check_coco(path, image_root)]
    if kind == "livecell":
        return [check_livecell(path)]
    from cellseg.data.sartorius import list_images

    report = CheckReport(path=path, kind="images")
    recs = list_images(path, read_size=False)
    report.extra_counts["images"] = len(recs)
    for rec in recs:
        _check_image(rec.image_path, rec.shape, report.problems)
    return [report]
