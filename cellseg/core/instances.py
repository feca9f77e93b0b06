"""Predicted instances of one image, stored sparsely.

A model can emit up to ~2000 candidate cells per 520x704 image; a dense (N, H, W) stack would be
730 MB. So each instance keeps only its mask inside its own box:

    boxes:  (N, 4) int32, x0, y0, x1, y1 in pixels, exclusive upper bounds, inside the image
    masks:  list of N bool arrays, masks[i].shape == (y1 - y0, x1 - x0)
    scores: (N,) float32 confidence in [0, 1]
    labels: (N,) int64 class index (0 = cell, or a cell-type index for per-type heads)
    extra:  name -> (N,) array of per-instance values (e.g. "mask_prob", "pred_iou", "stability")

Postprocessing, overlap removal, RLE encoding and the metric all work on this one type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class Instances:
    image_shape: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    masks: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        self.boxes = np.asarray(self.boxes, dtype=np.int32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.masks)
        if not (len(self.boxes) == len(self.scores) == len(self.labels) == n):
            raise ValueError(f"Instances fields disagree: {len(self.boxes)} boxes, {n} masks, "
                             f"{len(self.scores)} scores, {len(self.labels)} labels")
        for k, v in self.extra.items():
            if len(v) != n:
                raise ValueError(f"Instances.extra[{k!r}] has {len(v)} values for {n} instances")

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def areas(self) -> np.ndarray:
        """(N,) int64 pixel counts."""
        return np.array([int(m.sum()) for m in self.masks], dtype=np.int64)

    def select(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> "Instances":
        """Subset by integer indices or a boolean mask, in the given order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return Instances(self.image_shape, self.boxes[idx], [self.masks[i] for i in idx],
                         self.scores[idx], self.labels[idx],
                         {k: np.asarray(v)[idx] for k, v in self.extra.items()})

    def dense(self, i: int) -> np.ndarray:
        """Instance i as an (H, W) bool mask."""
        out = np.zeros(self.image_shape, dtype=bool)
        x0, y0, x1, y1 = self.boxes[i]
        out[y0:y1, x0:x1] = self.masks[i]
        return out

    def to_label_image(self) -> np.ndarray:
        """(H, W) int32 label image, instance i -> i + 1; where masks overlap the LATER one wins
        (sort by ascending score first to let the best instance win)."""
        out = np.zeros(self.image_shape, dtype=np.int32)
        for i, ((x0, y0, x1, y1), m) in enumerate(zip(self.boxes, self.masks)):
            out[y0:y1, x0:x1][m] = i + 1
        return out

    @classmethod
    def from_label_image(cls, labels: np.ndarray, scores: np.ndarray | None = None) -> "Instances":
        """One instance per distinct nonzero label (ascending), cropped to its bounding box."""
        from scipy import ndimage  # lazy

        labels = np.asarray(labels)
        ids = np.unique(labels[labels > 0])
        boxes, masks = [], []
        slices = ndimage.find_objects(labels.astype(np.int64)) if ids.size else []
        for k in ids:
            sl = slices[int(k) - 1]
            ys, xs = sl
            boxes.append((xs.start, ys.start, xs.stop, ys.stop))
            masks.append(labels[sl] == k)
        n = len(masks)
        return cls(labels.shape[:2], np.array(boxes, np.int32).reshape(-1, 4), masks,
                   np.ones(n, np.float32) if scores is None else scores,
                   np.zeros(n, np.int64))

    @classmethod
    def from_dense(cls, masks: np.ndarray, scores: np.ndarray | None = None,
                   labels: np.ndarray | None = None, **extra: np.ndarray) -> "Instances":
        """From an (N, H, W) bool stack; empty masks are kept with a zero-size box."""
        masks = np.asarray(masks, dtype=bool)
        n, h, w = masks.shape
        boxes = np.zeros((n, 4), np.int32)
        crops = []
        for i in range(n):
            ys = np.flatnonzero(masks[i].any(axis=1))
            xs = np.flatnonzero(masks[i].any(axis=0))
            if ys.size == 0:
                crops.append(np.zeros((0, 0), bool))
                continue
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
            crops.append(masks[i, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].copy())
        return cls((h, w), boxes, crops,
                   np.ones(n, np.float32) if scores is None else scores,
                   np.zeros(n, np.int64) if labels is None else labels, dict(extra))

    def to_rles(self) -> list[str]:
        """Competition RLE of each instance (may be "" for an empty mask)."""
        from cellseg.core import rle

        return [rle.encode(self.dense(i)) for i in range(len(self))]

    @classmethod
    def concatenate(cls, parts: Sequence["Instances"]) -> "Instances":
        if not parts:
            raise ValueError("concatenate needs at least one Instances")
        shape = parts[0].image_shape
        keys = set(parts[0].extra)
        for p in parts:
            if p.image_shape != shape:
                raise ValueError(f"image shapes differ: {p.image_shape} vs {shape}")
            keys &= set(p.extra)
        return cls(shape, np.concatenate([p.boxes for p in parts]),
                   [m for p in parts for m in p.masks],
                   np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.labels for p in parts]),
                   {k: np.concatenate([np.asarray(p.extra[k]) for p in parts]) for k in keys})
