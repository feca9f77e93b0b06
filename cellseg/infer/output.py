"""Every output of ``cellseg predict``, written from one label image per image.

    with PredictionWriter("submission.csv", results="results.json") as w:
        w.add(image_id, instances, image)   # final, non-overlapping Instances; image for overlays
    w.validate()                            # raises ValueError if the CSV does not validate

Per image, the final instances are painted once into a label image (``Instances.to_label_image``)
and turned into runs once (``runs_from_labels``); the runs give the competition RLE rows of the
CSV, the COCO RLE of the results JSON, the uint16 mask PNG and the outline overlay. Label k is
instance k - 1; an instance that overlap removal emptied has no label and no output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.core.instances import Instances
from cellseg.core.masks import Runs, runs_from_labels


class PredictionWriter:
    """Stream one image at a time to ``csv_path`` (atomically, via ``SubmissionWriter``) and,
    when given, to a COCO results JSON (``results``, written on a clean close; held in memory
    as compressed RLE, small), label PNGs (``save_masks`` folder) and overlays (``overlay``)."""

    def __init__(self, csv_path: str | os.PathLike, *, results: str | os.PathLike | None = None,
                 save_masks: str | os.PathLike | None = None,
                 overlay: str | os.PathLike | None = None) -> None:
        from cellseg.core.submission import SubmissionWriter

        self.csv_path = Path(csv_path)
        self.results = results
        self.save_masks = save_masks
        self.overlay = overlay
        self.shapes: dict[str, tuple[int, int]] = {}
        self.coco_results: list[dict[str, Any]] = []
        # postprocessing guarantees disjoint cells, so the per-image overlap check is skipped;
        # ``validate`` re-checks the whole file at the end
        self._csv = SubmissionWriter(csv_path, check_overlap=False)

    def __enter__(self) -> "PredictionWriter":
        self._csv.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._csv.__exit__(exc_type, exc, tb)
        if exc_type is None and self.results is not None:
            from cellseg.io import write_json

            write_json(self.results, self.coco_results)
        return False

    def add(self, image_id: str, inst: Instances, image: np.ndarray | None = None) -> None:
        """Write one image's final instances (``image``: its (H, W) uint8 pixels, for the
        overlay; None skips the overlay of this image)."""
        shape = tuple(inst.image_shape)
        labels = inst.to_label_image()
        runs = runs_from_labels(labels)
        self._csv.add(image_id, runs.to_rles(), shape=shape)
        self.shapes[str(image_id)] = shape  # type: ignore[assignment]
        if self.results is not None:
            self.coco_results.extend(coco_entries(image_id, inst, labels, runs))
        if self.save_masks is not None:
            save_label_png(Path(self.save_masks) / f"{image_id}.png", labels)
        if self.overlay is not None and image is not None:
            _write_overlay(Path(self.overlay) / f"{image_id}.png", image, runs)

    def validate(self) -> None:
        """Check the written CSV against the ids and sizes of the images added; raise
        ``ValueError`` on an error (a warning, e.g. an image left empty under "allow_empty",
        does not invalidate the file)."""
        from cellseg.core.submission import validate_submission

        problems = validate_submission(self.csv_path, image_shapes=self.shapes)
        problems = [p for p in problems if getattr(p, "severity", "error") == "error"]
        if problems:
            raise ValueError(f"{self.csv_path} does not validate: "
                             + "; ".join(map(str, problems[:10])))


def coco_entries(image_id: str, inst: Instances, labels: np.ndarray, runs: Runs
                 ) -> list[dict[str, Any]]:
    """COCO results entries of one image: ``runs = runs_from_labels(labels)`` (instance j of the
    runs is the j-th distinct nonzero label, i.e. instance ``label - 1`` of ``inst``), each
    with its COCO RLE, score and every per-instance extra (``pred_iou``, ``stability``...)."""
    ids = np.unique(labels[labels > 0]) - 1
    out = []
    for k, coco in zip(ids, runs.to_coco()):
        entry = {"image_id": image_id, "category_id": 1, "segmentation": coco,
                 "score": float(inst.scores[k])}
        entry.update({name: float(np.asarray(v)[k]) for name, v in inst.extra.items()
                      if np.ndim(v) == 1})
        out.append(entry)
    return out


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) label image (``Instances.to_label_image``) as a uint16 PNG."""
    from cellseg.io import write_png

    if labels.size and labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: {labels.max()} instances do not fit a uint16 label image")
    write_png(path, labels.astype(np.uint16))


def save_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Write the (H, W) uint8 image with each label's outline in a distinct colour (PNG), drawn
    by ``cellseg.report.instance_overlay`` (the kit's one overlay)."""
    _write_overlay(path, image, runs_from_labels(labels))


def _write_overlay(path: str | os.PathLike, image: np.ndarray, runs: Runs) -> None:
    from cellseg.io import write_png
    from cellseg.report import instance_overlay

    write_png(path, instance_overlay(image, runs))
