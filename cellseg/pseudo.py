"""Pseudo-labels: a trained model (or an ensemble, with TTA) labels unlabeled images, and the
confident part becomes one more training source in the competition layout.

    cellseg pseudo-label --weights runs/teacher/best.pt --images unlabeled/ --out data/pl_r1 --tta
    cellseg train --config unet_small_real --data data/real --data data/pl_r1 --out runs/student

Per cell: the voted score (with TTA or several models a cell's score is the weighted mean over
all passes, a pass that missed it counting 0, so it measures agreement as well as confidence)
must reach ``min_score`` and its area lie in [``min_area``, ``max_area``]. Per image: the image is
rejected when fewer than ``min_cells`` cells pass, or when the passing cells are less than
``min_keep_fraction`` of the cells predicted (the model is unsure of that image as a whole and
its missing cells would be taught as background). Kept images are written as ``train.csv`` +
``train/<id>.png``; ``pseudo_label.json`` beside them records the checkpoints (path and sha256),
the thresholds, the inference config, the date and every image's fate.

Rounds (teacher -> student): a round is "pseudo-label with the current model, then train a new
model on the labelled sources plus the new pseudo-labelled folder"; the student is the next
round's teacher. ``run_rounds`` drives that through the public commands (``python -m cellseg
train`` / this module), and ``cellseg pseudo-label --rounds N --data SRC ...`` exposes it.
Unlabeled cells the teacher missed are taught as background: keep ``min_keep_fraction`` high
and prefer ``--tta`` / ensembles. The cells it found but dropped (score or area) are taught as
background too, unless ``ignore_dropped`` writes them to ``ignore.csv``: training then leaves
their pixels out of the loss (``ImageRecord.ignore_rles``; UNet family), so a strict
``min_score`` keeps the labels clean without teaching that a cell may be background.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord
    from cellseg.infer.config import InferenceConfig
    from cellseg.core.instances import Instances

_LIVECELL_NAME = re.compile(r"^(?P<type>[A-Za-z0-9]+)_Phase_")


@dataclass(frozen=True)
class PseudoSettings:
    """Filtering thresholds (see the module docstring)."""

    min_score: float = 0.6
    min_area: int = 20
    max_area: int | None = None
    min_cells: int = 5
    min_keep_fraction: float = 0.5
    cell_type: str | None = None  # written to train.csv; None: LIVECell name prefix or empty
    ignore_dropped: bool = False  # an accepted image's dropped cells go to ignore.csv


def filter_cells(inst: "Instances", s: PseudoSettings
                 ) -> tuple["Instances", "Instances", dict[str, Any]]:
    """Keep the confident cells of one image's final instances.

    Returns (kept instances, dropped instances, {"n_pred", "n_kept", "accepted", "reason"});
    ``accepted`` False means the whole image is rejected (``reason`` says why).
    """
    areas = inst.areas
    keep = (inst.scores >= s.min_score) & (areas >= s.min_area)
    if s.max_area is not None:
        keep &= areas <= s.max_area
    kept, dropped = inst.select(np.flatnonzero(keep)), inst.select(np.flatnonzero(~keep))
    n_pred, n_kept = len(inst), int(keep.sum())
    reason = None
    if n_kept < s.min_cells:
        reason = f"{n_kept} confident cell(s) < min_cells {s.min_cells}"
    elif n_pred and n_kept / n_pred < s.min_keep_fraction:
        reason = (f"only {n_kept}/{n_pred} cells confident (< min_keep_fraction "
                  f"{s.min_keep_fraction})")
    return kept, dropped, {"n_pred": n_pred, "n_kept": n_kept, "accepted": reason is None,
                  "reason": reason, "mean_score": float(inst.scores.mean()) if n_pred else None}


def cell_type_of(record: "ImageRecord", s: PseudoSettings) -> str | None:
    if s.cell_type:
        return s.cell_type
    m = _LIVECELL_NAME.match(Path(record.image_path).name)
    return m["type"] if m else None


def _well(name: str) -> str | None:
    m = re.match(r"^([^_]+)_Phase_([A-Z]\d+)_(\d+)_", name)
    return f"{m[1]}_{m[2]}_{m[3]}" if m else None


def pseudo_label(models: Sequence[Any], records: Sequence["ImageRecord"], cfg: "InferenceConfig",
                 out: str | os.PathLike, settings: PseudoSettings, *,
                 weights_paths: Sequence[str | os.PathLike] = (), device: Any = "cpu",
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict ``records``, filter, write the competition-layout folder ``out`` and its
    provenance (``out/pseudo_label.json``); returns the provenance dict."""
    from tqdm import tqdm

    from cellseg import __version__
    from cellseg.checkpoint import sha256_file
    from cellseg.data.record import ImageRecord
    from cellseg.export import write_competition_folder
    from cellseg.infer.predict import predict_images
    from cellseg.io import write_json
    from cellseg.config import to_dict

    # an image with no confident cell must stay empty, never get a placeholder cell
    cfg = dataclasses.replace(cfg, empty_policy="allow_empty")
    out = Path(out)
    kept_records: list[ImageRecord] = []
    images: dict[str, Any] = {}
    step = max(1, int(cfg.batch_size))
    for s in tqdm(range(0, len(records), step), desc="pseudo-label", file=sys.stderr,
                  disable=not progress):
        chunk = records[s:s + step]
        pixels = [r.read_image() for r in chunk]
        ctypes = [cell_type_of(r, settings) for r in chunk]
        # a type the thresholds know is given, as predict's --cell-type; else predict decides
        finals = predict_images(models, pixels, cfg, device=device,
                                cell_types=[t if t in cfg.types else None for t in ctypes])
        for r, img, ctype, final in zip(chunk, pixels, ctypes, finals):
            kept, dropped, info = filter_cells(final, settings)
            images[r.image_id] = {"path": str(r.image_path), **info}
            if info["accepted"]:
                kept_records.append(ImageRecord(
                    image_id=r.image_id, image_path=r.image_path, height=img.shape[0],
                    width=img.shape[1], cell_type=ctype, source="pseudo",
                    sample_id=_well(Path(r.image_path).name), rles=tuple(kept.to_rles()),
                    ignore_rles=tuple(dropped.to_rles()) if settings.ignore_dropped else ()))
    write_competition_folder(kept_records, out)
    n_cells = sum(r.n_instances for r in kept_records)
    n_ignored = sum(len(r.ignore_rles) for r in kept_records)
    prov = {
        "kind": "cellseg pseudo-labels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cellseg_version": __version__,
        "models": [{"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
                   for p in weights_paths],
        "thresholds": dataclasses.asdict(settings),
        "inference": to_dict(cfg),
        "counts": {"images": len(records), "accepted": len(kept_records),
                   "rejected": len(records) - len(kept_records), "cells": n_cells,
                   "cells_ignored": n_ignored,
                   "cells_predicted": int(sum(v["n_pred"] for v in images.values()))},
        "images": images,
    }
    write_json(out / "pseudo_label.json", prov)
    log(f"pseudo-label: {len(kept_records)}/{len(records)} images accepted, {n_cells} cells"
        + (f" ({n_ignored} dropped cells in ignore.csv)" if settings.ignore_dropped else "")
        + f" -> {out}")
    return prov


def run_rounds(labelled: Sequence[str], unlabeled: Sequence[str], out: str | os.PathLike, *,
               rounds: int, config: str, steps: int | None = None, teacher: str | None = None,
               overrides: Sequence[str] = (), pseudo_args: Sequence[str] = (),
               threads: int = 1, log: Callable[[str], None] = print) -> str:
    """Teacher -> student rounds through the public commands; returns the last student.

    Round r (1-based): ``python -m cellseg pseudo-label`` with the current teacher writes
    ``out/round_r/pseudo``; ``python -m cellseg train --config config --data <labelled...>
    --data out/round_r/pseudo`` trains ``out/round_r/student`` (``train.max_steps`` = ``steps``),
    which teaches round r + 1 (``steps`` None: the config's own budget). Without ``teacher``,
    round 0 trains one on ``labelled`` alone.
    """
    from cellseg.jobs import run_logged

    out = Path(out)
    train_base = [sys.executable, "-m", "cellseg", "train", "--config", config, "--no-progress"]
    sets: list[str] = []
    for o in (*overrides, *([f"train.max_steps={steps}"] if steps is not None else [])):
        sets += ["--set", o]
    if teacher is None:
        t_out = out / "round_0" / "teacher"
        cmd = train_base + [a for src in labelled for a in ("--data", src)] + \
            ["--out", str(t_out)] + sets
        run_logged(cmd, t_out / "train.log", threads, "round 0 teacher training")
        teacher = str(t_out / "best.pt")
        log(f"round 0: teacher {teacher}")
    for r in range(1, rounds + 1):
        pl = out / f"round_{r}" / "pseudo"
        cmd = [sys.executable, "-m", "cellseg", "pseudo-label", "--weights", teacher,
               "--images", *unlabeled, "--out", str(pl), "--no-progress", *pseudo_args]
        run_logged(cmd, out / f"round_{r}" / "pseudo.log", threads, f"round {r} pseudo-label")
        s_out = out / f"round_{r}" / "student"
        cmd = train_base + [a for src in (*labelled, str(pl)) for a in ("--data", src)] + \
            ["--out", str(s_out)] + sets
        run_logged(cmd, s_out / "train.log", threads, f"round {r} student training")
        teacher = str(s_out / "best.pt")
        log(f"round {r}: pseudo-labels {pl}, student {teacher}")
    return teacher
