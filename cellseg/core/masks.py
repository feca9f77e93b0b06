"""Masks of one image as runs: the one run representation, overlap test and label paint.

    from cellseg.core import masks
    runs = masks.runs_from_rles(rles, (520, 704))    # or runs_from_labels / _instances / _coco
    runs.areas, runs.boxes(), runs.overlapping(), runs.label_image(), runs.to_rles(), runs.to_coco()
    rles = masks.encode_labels(label_image)          # (H, W) ints -> one RLE per label
    labels = masks.decode_labels(rles, (520, 704))   # RLE strings -> (H, W) label image
    boxes = masks.mask_boxes(stack)                  # (N, H, W) bool -> (N, 4) tight boxes

Every format the kit meets converts to and from ``Runs`` here: competition RLE strings
(``cellseg.core.rle`` parses and formats them), (H, W) label images, ``Instances`` (crop masks
in boxes) and COCO RLE dicts (``cellseg.core.coco_rle``). A run is ``[start, start + length)``
over the C-order flat image; a cell of ~300 px is ~20 runs, so a whole image is a few thousand
runs instead of an (N, H, W) stack. Pure numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from cellseg.core import coco_rle, rle

if TYPE_CHECKING:
    from cellseg.core.instances import Instances

SHAPE = rle.SHAPE
runs_to_indices = rle.runs_to_indices  # flat pixel indices of runs (the codec's one expansion)


@dataclass(frozen=True)
class Runs:
    """The instances of one image as runs over its C-order flat pixel array.

    Attributes:
        starts: (R,) int64 0-indexed run starts; the runs of one instance are ascending.
        lengths: (R,) int64 run lengths (>= 1).
        owner: (R,) int64 instance index of each run, in [0, n).
        n: number of instances (an instance may have no run: an empty mask).
        shape: (height, width) of the image.
    """

    starts: np.ndarray
    lengths: np.ndarray
    owner: np.ndarray
    n: int
    shape: tuple[int, int]

    @property
    def areas(self) -> np.ndarray:
        """(n,) int64 pixel count of each instance."""
        return np.bincount(self.owner, weights=self.lengths, minlength=self.n).astype(np.int64)

    def boxes(self) -> np.ndarray:
        """(n, 4) int64 tight boxes ``x0, y0, x1, y1`` (exclusive upper bounds), zeros for an
        empty instance: the tight box of runs, O(runs), no mask drawn (``mask_boxes`` is the
        same box of a dense mask; the two are tested equal)."""
        h, w = self.shape
        boxes = np.zeros((self.n, 4), dtype=np.int64)
        if self.starts.size == 0:
            return boxes
        g = self.grouped()
        r0, c0 = np.divmod(g.starts, w)
        r1, c1 = np.divmod(g.starts + g.lengths - 1, w)  # inclusive ends
        wraps = r1 > r0  # a run spilling over a row end covers every column in between
        x_lo = np.where(wraps, 0, c0)
        x_hi = np.where(wraps, w - 1, c1)
        first = np.flatnonzero(np.concatenate(([True], g.owner[1:] != g.owner[:-1])))
        boxes[g.owner[first]] = np.stack((np.minimum.reduceat(x_lo, first),
                                          np.minimum.reduceat(r0, first),
                                          np.maximum.reduceat(x_hi, first) + 1,
                                          np.maximum.reduceat(r1, first) + 1), axis=1)
        return boxes

    def crops(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per instance ``(box (4,) int64 x0, y0, x1, y1, mask (y1 - y0, x1 - x0) bool)``: each
        mask drawn only inside its tight box (``boxes``); an empty instance gets a zero box and
        a (0, 0) mask."""
        h, w = self.shape
        boxes = self.boxes()
        out = [(b, np.zeros((b[3] - b[1], b[2] - b[0]), dtype=bool)) for b in boxes]
        idx, owner = self.pixels()
        r, c = np.divmod(idx, w)
        for k in np.unique(owner):
            sel = owner == k
            box, mask = out[k]
            mask[r[sel] - box[1], c[sel] - box[0]] = True
        return out

    def sorted_disjoint(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(starts, ends, owner) of all runs sorted by start, or None when two instances share
        a pixel (the one overlap test of the kit; runs of one instance never overlap)."""
        order = np.argsort(self.starts, kind="stable")  # radix sort: faster than quicksort here
        s = self.starts[order]
        e = s + self.lengths[order]
        if (s[1:] < e[:-1]).any():
            return None
        return s, e, self.owner[order]

    def overlapping(self) -> bool:
        """True when two instances share a pixel."""
        return self.starts.size > 1 and self.sorted_disjoint() is None

    def overlap_pairs(self) -> np.ndarray:
        """(K, 2) int64 instance pairs ``(a, b)``, a < b, that share a pixel, sorted; a pair
        is found through the run of the earlier-ending instance that a later run starts in."""
        order = np.argsort(self.starts, kind="stable")
        s, e, o = self.starts[order], (self.starts + self.lengths)[order], self.owner[order]
        if s.size < 2:
            return np.zeros((0, 2), np.int64)
        # a run that starts before the running max end of earlier runs overlaps the run
        # holding that max (first occurrence)
        best_end = np.maximum.accumulate(e)
        is_new = np.concatenate(([True], e[1:] > best_end[:-1]))
        best_idx = np.maximum.accumulate(np.where(is_new, np.arange(e.size), 0))
        clash = np.flatnonzero(s[1:] < best_end[:-1]) + 1
        a, b = o[best_idx[clash - 1]], o[clash]
        pairs = np.stack((np.minimum(a, b), np.maximum(a, b)), axis=1)[a != b]
        return np.unique(pairs, axis=0) if pairs.size else np.zeros((0, 2), np.int64)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel indices and their instance index: two (sum(lengths),) int64 arrays."""
        return runs_to_indices(self.starts, self.lengths), np.repeat(self.owner, self.lengths)

    def grouped(self) -> "Runs":
        """The same runs ordered by (owner, start): what the formatters need."""
        if self.starts.size < 2 or (np.all(np.diff(self.owner) >= 0)
                                    and _ascending_within(self)):
            return self
        order = np.lexsort((self.starts, self.owner))
        return Runs(self.starts[order], self.lengths[order], self.owner[order], self.n,
                    self.shape)

    def label_image(self, dtype: np.dtype | type = np.int32) -> np.ndarray:
        """(H, W) label image, instance i -> label i + 1: the one label paint of the kit.

        Where instances overlap (competition training masks do), the pixel goes to the
        instance listed LAST, deterministically.
        """
        h, w = self.shape
        n_pixels = h * w
        dtype = np.dtype(dtype)
        if self.starts.size == 0:
            return np.zeros(self.shape, dtype=dtype)
        labels = self.owner + 1
        if not self.overlapping():
            # no overlap: a difference array (+label at run start, -label at run end) and one
            # in-place cumulative sum paint every run. Starts are distinct and so are ends (an
            # end may equal another run's start: start assignment first, then subtract).
            # Working in a signed 32-bit array in place avoids fresh int64 temporaries, which
            # cost ~5 ms of page faults on a 520x704 image.
            work = np.int32 if self.n < 2**31 - 1 else np.int64
            delta = np.zeros(n_pixels + 1, dtype=work)
            delta[self.starts] = labels
            delta[self.starts + self.lengths] -= labels.astype(work)
            np.cumsum(delta, out=delta)
            return delta[:-1].astype(dtype, copy=False).reshape(self.shape)
        # overlaps: the largest label (the instance listed last) wins each contested pixel
        out = np.zeros(n_pixels, dtype=dtype)
        idx, owner = self.pixels()
        np.maximum.at(out, idx, (owner + 1).astype(dtype))
        return out.reshape(self.shape)

    def to_rles(self) -> list[str]:
        """One competition RLE string per instance ("" for an empty one), in instance order."""
        g = self.grouped()
        return rle.format_runs(g.starts, g.lengths, g.owner, self.n)

    def to_coco(self) -> list[Any]:
        """One COCO compressed RLE dict per instance; ``None`` for an empty instance (COCO cannot
        rate it)."""
        g = self.grouped()
        n_pairs = np.bincount(g.owner, minlength=self.n)
        cocos = coco_rle.runs_to_coco(g.starts, g.lengths, n_pairs, self.shape)
        return [c if k else None for c, k in zip(cocos, n_pairs)]


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of dense masks: the kit's one dense tight-box helper (``Runs.boxes`` is the
    same box of runs; ``instances.tighten`` crops with it).

    Args:
        masks: (N, H, W) bool stack, or one (H, W) mask.
    Returns:
        (N, 4) int64 (or (4,) for one mask) ``x0, y0, x1, y1``, exclusive upper bounds; zeros
        for an empty mask.
    """
    m = np.asarray(masks, dtype=bool)
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {m.shape}")
    if m.ndim == 2:  # one mask (tighten's case, called per crop): skip the stack bookkeeping
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            return np.zeros(4, dtype=np.int64)
        cols = np.flatnonzero(m.any(axis=0))
        return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)
    rows, cols = m.any(axis=2), m.any(axis=1)  # (N, H), (N, W) projections
    boxes = np.zeros((len(m), 4), dtype=np.int64)
    full = rows.any(axis=1)
    if full.any():
        rows, cols = rows[full], cols[full]
        # argmax finds the first True; on the reversed projection, the last one
        boxes[full] = np.stack((cols.argmax(1), rows.argmax(1),
                                cols.shape[1] - cols[:, ::-1].argmax(1),
                                rows.shape[1] - rows[:, ::-1].argmax(1)), axis=1)
    return boxes


def _ascending_within(runs: Runs) -> bool:
    same = runs.owner[1:] == runs.owner[:-1]
    return bool(np.all(runs.starts[1:][same] > runs.starts[:-1][same]))


def runs_from_rles(rles: Sequence[str], shape: tuple[int, int] = SHAPE) -> Runs:
    """Parse and validate all RLE strings of one image in one go (``rle.parse_many``).

    Args:
        rles: competition RLE strings (``"start length ..."``, 1-indexed, C order); "" is an
            empty instance.
        shape: (height, width) of the image.
    Raises:
        rle.RLEError: naming the instance index and the broken rule.
    """
    shape = (int(shape[0]), int(shape[1]))
    starts, lengths, n_pairs = rle.parse_many(rles, shape)
    owner = np.repeat(np.arange(len(n_pairs), dtype=np.int64), n_pairs)
    return Runs(starts, lengths, owner, len(n_pairs), shape)


def runs_from_labels(labels: np.ndarray) -> Runs:
    """Runs of an (H, W) integer label image (0 = background); instance order = ascending label."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be (H, W), got shape {labels.shape}")
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    starts, lengths, values = rle.label_runs(labels)
    if values.size == 0:
        z = np.zeros(0, np.int64)
        return Runs(z, z.copy(), z.copy(), 0, shape)
    # a stable sort by label keeps each instance's runs in ascending pixel order
    order = np.argsort(values, kind="stable")
    values = values[order]
    owner = np.concatenate(([0], np.cumsum(values[1:] != values[:-1]))).astype(np.int64)
    return Runs(starts[order], lengths[order], owner, int(owner[-1]) + 1, shape)


def runs_from_instances(inst: "Instances") -> Runs:
    """Runs of ``Instances`` (crop masks placed at their boxes), in instance order."""
    h, w = inst.image_shape
    starts, lengths, owner = [], [], []
    for i, ((x0, y0, x1, y1), m) in enumerate(zip(inst.boxes, inst.masks)):
        m = np.asarray(m, dtype=bool)
        if m.size == 0 or not m.any():
            continue
        if m.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"instance {i}: mask shape {m.shape} does not fit box "
                             f"{(int(x0), int(y0), int(x1), int(y1))}")
        pad = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
        pad[:, 1:-1] = m
        d = np.diff(pad, axis=1)
        r0, c0 = np.nonzero(d == 1)  # row-major order: ascending flat position
        _, c1 = np.nonzero(d == -1)
        s = (r0.astype(np.int64) + int(y0)) * w + c0 + int(x0)
        starts.append(s)
        lengths.append((c1 - c0).astype(np.int64))
        owner.append(np.full(s.size, i, np.int64))
    if not starts:
        z = np.zeros(0, np.int64)
        return Runs(z, z.copy(), z.copy(), len(inst), (h, w))
    return Runs(np.concatenate(starts), np.concatenate(lengths), np.concatenate(owner),
                len(inst), (h, w))


def runs_from_coco(segmentations: Sequence[dict], shape: tuple[int, int] = SHAPE) -> Runs:
    """``Runs`` (C order) of COCO RLE dicts (compressed str/bytes or uncompressed list counts)."""
    h, w = int(shape[0]), int(shape[1])
    for i, seg in enumerate(segmentations):
        size = [int(v) for v in seg["size"]]
        if size != [h, w]:
            raise ValueError(f"segmentation {i} is {size[0]}x{size[1]}, expected {h}x{w}")
    starts, lengths, owner, _ = coco_rle.coco_runs(segmentations)
    return Runs(starts, lengths, owner, len(segmentations), (h, w))


MaskInput = Union[Runs, Sequence[str], np.ndarray, "Instances"]


def as_runs(masks: MaskInput, shape: tuple[int, int] | None = None) -> Runs:
    """Runs from RLE strings, an (H, W) label image, ``Instances`` or ``Runs``."""
    if isinstance(masks, Runs):
        return masks
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2 and masks.dtype != object:
            return runs_from_labels(masks)
        masks = masks.tolist()
    if hasattr(masks, "boxes") and hasattr(masks, "image_shape"):
        return runs_from_instances(masks)  # type: ignore[arg-type]
    return runs_from_rles(list(masks), SHAPE if shape is None else shape)


def encode_labels(labels: np.ndarray) -> list[str]:
    """Encode every instance of an (H, W) label image (0 = background) in one pass.

    Returns one RLE string per distinct nonzero label, in ascending label order (the order of
    ``np.unique(labels[labels > 0])``).
    """
    return runs_from_labels(labels).to_rles()


def decode_labels(rles: Sequence[str], shape: tuple[int, int] = SHAPE,
                  dtype: np.dtype | type = np.int32) -> np.ndarray:
    """Decode RLE strings into one (H, W) label image, instance i -> label i + 1.

    Where masks overlap, the pixel goes to the instance listed LAST. Raises ``RLEError``
    naming the instance index on a bad string.
    """
    return runs_from_rles(rles, shape).label_image(dtype)
