"""Predicted instances of one image, stored sparsely.

A model can emit up to ~2000 candidate cells per 520x704 image; a dense (N, H, W) stack would be
730 MB. So each instance keeps only its mask inside its own box:

    boxes:  (N, 4) int32, x0, y0, x1, y1 in pixels, exclusive upper bounds, inside the image
    masks:  list of N bool arrays, masks[i].shape == (y1 - y0, x1 - x0)
    scores: (N,) float32 confidence in [0, 1]
    labels: (N,) int64 class index (0 = cell, or a cell-type index for per-type heads)
    extra:  name -> (N,) array of per-instance values (e.g. "mask_prob", "pred_iou", "stability")

Postprocessing, overlap removal, RLE encoding and the metric all work on this one type. The crop
geometry lives here too: ``tighten`` (shrink a crop to its mask), ``union_box``, ``add_crop``
(accumulate a crop into a larger one), ``crop_intersection`` / ``box_pairs`` /
``pair_intersections`` (mask overlaps, only for pairs whose boxes meet) and the ``clip`` /
``rescale`` methods used by tiling and test-time resizing (``area_resize``: numpy, no OpenCV). Conversions to runs, RLE and label
images go through ``cellseg.core.masks``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cellseg.core.masks import mask_boxes, runs_from_instances


def tighten(box: np.ndarray | Sequence[int], mask: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Shrink a crop mask and its (4,) box to the mask's extent (``masks.mask_boxes``).

    Returns ``(box (4,) int32, mask (h, w) bool contiguous)``, or None when the mask is empty.
    """
    c0, r0, c1, r1 = mask_boxes(mask).tolist()
    if c1 == 0:
        return None
    new_box = np.array([box[0] + c0, box[1] + r0, box[0] + c1, box[1] + r1], np.int32)
    return new_box, np.ascontiguousarray(mask[r0:r1, c0:c1])


@functools.lru_cache(maxsize=4096)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64, read-only: the fraction of output pixel i that source pixel j
    covers, output pixel i spanning source coordinates [i * f, (i + 1) * f), f = n_in / n_out.
    Cached: the crops of one image come in a few dozen sizes."""
    f = n_in / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * f
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)
    out = np.clip(overlap, 0.0, None) / f
    out.flags.writeable = False
    return out


def area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) array to ``shape`` (H, W) by pixel-area averaging, in pure numpy.

    Each output pixel is the mean of the input over the area it covers (fractional pixels
    weighted), in both directions: what OpenCV's ``INTER_AREA`` computes when shrinking and
    when enlarging (tested against it). Separable: ``Wy @ image @ Wx.T``, cheap for the crops of
    single cells it serves (``Instances.rescale``).

    Returns:
        (H, W) float64.
    """
    img = np.asarray(image, dtype=np.float64)
    wy = _area_weights(int(img.shape[0]), int(shape[0]))
    wx = _area_weights(int(img.shape[1]), int(shape[1]))
    return wy @ img @ wx.T


def union_box(boxes: np.ndarray) -> np.ndarray:
    """(4,) int32 box enclosing (K, 4) boxes."""
    return np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()],
                    dtype=np.int32)


def add_crop(box: np.ndarray, acc: np.ndarray, inner_box: np.ndarray, mask: np.ndarray,
             value: float = 1.0) -> None:
    """acc (the crop of ``box``) += value inside ``mask`` (the crop of ``inner_box``, inside ``box``)."""
    x0, y0, x1, y1 = (int(v) for v in inner_box)
    acc[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0]] += value * mask


def crop_intersection(box_a: np.ndarray, mask_a: np.ndarray, box_b: np.ndarray,
                      mask_b: np.ndarray) -> int:
    """Pixel count of the intersection of two crop masks given their (4,) boxes."""
    x0, y0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    x1, y1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    ca = mask_a[y0 - box_a[1]:y1 - box_a[1], x0 - box_a[0]:x1 - box_a[0]]
    cb = mask_b[y0 - box_b[1]:y1 - box_b[1], x0 - box_b[0]:x1 - box_b[0]]
    return int(np.count_nonzero(ca & cb))


def box_pairs(a: np.ndarray, b: np.ndarray | None = None, *, block: int = 1024
              ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of boxes that intersect with positive area.

    Args:
        a: (N, 4) int boxes x0, y0, x1, y1 (exclusive upper bounds).
        b: (M, 4) boxes, or None to pair ``a`` with itself (then only i < j is returned).
    Returns:
        (i, j): two (P,) int64 arrays.
    """
    a = np.asarray(a).reshape(-1, 4)
    self_pairs = b is None
    b = a if b is None else np.asarray(b).reshape(-1, 4)
    out_i, out_j = [], []
    for s in range(0, len(a), block):  # blocks bound the (block, M) temporaries
        blk = a[s:s + block]
        w = np.minimum(blk[:, None, 2], b[None, :, 2]) - np.maximum(blk[:, None, 0], b[None, :, 0])
        h = np.minimum(blk[:, None, 3], b[None, :, 3]) - np.maximum(blk[:, None, 1], b[None, :, 1])
        hit = (w > 0) & (h > 0)
        if self_pairs:
            hit &= np.arange(s, s + len(blk))[:, None] < np.arange(len(b))[None, :]
        ii, jj = np.nonzero(hit)
        out_i.append(ii + s)
        out_j.append(jj)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def pair_intersections(a: "Instances", i: np.ndarray, b: "Instances | None" = None,
                       j: np.ndarray | None = None) -> np.ndarray:
    """(P,) int64 mask intersections of pairs (a[i[k]], b[j[k]]) (b defaults to a)."""
    b = a if b is None else b
    j = i if j is None else j
    return np.array([crop_intersection(a.boxes[p], a.masks[p], b.boxes[q], b.masks[q])
                     for p, q in zip(i.tolist(), j.tolist())], dtype=np.int64)


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
        return runs_from_instances(self).label_image()

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
        boxes = mask_boxes(masks).astype(np.int32)
        crops = [np.ascontiguousarray(m[y0:y1, x0:x1])
                 for m, (x0, y0, x1, y1) in zip(masks, boxes)]
        return cls((h, w), boxes, crops,
                   np.ones(n, np.float32) if scores is None else scores,
                   np.zeros(n, np.int64) if labels is None else labels, dict(extra))

    def to_rles(self) -> list[str]:
        """Competition RLE of each instance (may be "" for an empty mask), from the crops."""
        return runs_from_instances(self).to_rles()

    def clip(self, shape: tuple[int, int]) -> "Instances":
        """Crop instances to [0, H) x [0, W) (drops those left empty); image_shape becomes
        ``shape``."""
        h, w = shape
        boxes, masks, keep = [], [], []
        for k, (box, m) in enumerate(zip(self.boxes, self.masks)):
            x0, y0, x1, y1 = (int(v) for v in box)
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            crop = m[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            tight = tighten((cx0, cy0, cx1, cy1), crop)
            if tight is None:
                continue
            boxes.append(tight[0])
            masks.append(tight[1])
            keep.append(k)
        return self._rebuilt(shape, boxes, masks, keep)

    def rescale(self, shape: tuple[int, int]) -> "Instances":
        """Map instances of an image resized to ``image_shape`` back to ``shape`` (native).

        Each crop is pasted into the scaled extent of its native box and area-resized
        (``area_resize``: what OpenCV's INTER_AREA computes); a pixel is inside when at least
        half covered. Instances that vanish are dropped.
        """
        if tuple(self.image_shape) == tuple(shape):
            return self
        sh, sw = self.image_shape
        h, w = shape
        fy, fx = sh / h, sw / w  # scaled pixels per native pixel
        boxes, masks, keep = [], [], []
        for k, (box, m) in enumerate(zip(self.boxes, self.masks)):
            x0, y0, x1, y1 = (int(v) for v in box)
            nx0, ny0 = int(math.floor(x0 / fx)), int(math.floor(y0 / fy))
            nx1, ny1 = min(int(math.ceil(x1 / fx)), w), min(int(math.ceil(y1 / fy)), h)
            # the native box's extent in scaled pixels (rounded), then paste the crop into it
            ex0, ey0 = int(round(nx0 * fx)), int(round(ny0 * fy))
            ex1, ey1 = max(int(round(nx1 * fx)), x1), max(int(round(ny1 * fy)), y1)
            ex0, ey0 = min(ex0, x0), min(ey0, y0)
            canvas = np.zeros((ey1 - ey0, ex1 - ex0), np.float64)
            canvas[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0] = m
            small = area_resize(canvas, (ny1 - ny0, nx1 - nx0))
            # the tolerance keeps an exact half (e.g. 2 of 4 pixels at scale 2) inside despite
            # the rounding of fractional weights
            tight = tighten((nx0, ny0, nx1, ny1), small >= 0.5 - 1e-9)
            if tight is None:
                continue
            boxes.append(tight[0])
            masks.append(tight[1])
            keep.append(k)
        return self._rebuilt(shape, boxes, masks, keep)

    def _rebuilt(self, shape: tuple[int, int], boxes: list, masks: list[np.ndarray],
                 keep: list[int]) -> "Instances":
        """Instances ``keep`` with new boxes/masks on an image of ``shape``."""
        idx = np.array(keep, np.int64)
        return Instances(shape, np.array(boxes, np.int32).reshape(-1, 4), masks,
                         self.scores[idx], self.labels[idx],
                         {k: np.asarray(v)[idx] for k, v in self.extra.items()})

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


def filter_extra(inst: Instances, *, min_pred_iou: float = 0.0,
                 min_stability: float = 0.0) -> Instances:
    """Drop instances whose ``extra["pred_iou"]`` / ``extra["stability"]`` fall below the limits
    (0 = off; instances of a model that does not provide the extra are kept)."""
    keep = np.ones(len(inst), bool)
    if min_pred_iou > 0 and "pred_iou" in inst.extra:
        keep &= np.asarray(inst.extra["pred_iou"]) >= min_pred_iou
    if min_stability > 0 and "stability" in inst.extra:
        keep &= np.asarray(inst.extra["stability"]) >= min_stability
    return inst if keep.all() else inst.select(keep)
