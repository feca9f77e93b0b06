"""Postprocessing of one image's instances: small pure numpy functions, composed by ``postprocess``.

Order (``postprocess``): [rescore] -> image-level cell type (``cellseg.infer.celltype``: given,
or a vote over instance labels) picks the per-type thresholds -> score threshold -> [fill holes] -> minimum area -> mask
NMS -> greedy overlap removal (every pixel in at most one cell) -> minimum area again (removal
shrinks cells) -> empty-image policy.

Empty-image policy (``InferenceConfig.empty_policy``), because the competition scorer's handling
of an image without predictions is undocumented and an image with no row may be rejected:
- "best" (default): keep the single best-scoring candidate from BEFORE the thresholds (after
  hole filling and overlap trimming); if the model produced no candidate at all, "placeholder".
- "placeholder": a 3x3 square at the image centre with score 0.
- "allow_empty": return no instance.
An image with cells in its truth scores 0 either way; the placeholder only keeps the CSV complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cellseg.core.instances import (Instances, box_pairs, filter_extra, pair_intersections,
                                    tighten)
from cellseg.infer.celltype import image_cell_type, vote_cell_type  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from cellseg.infer.config import InferenceConfig


def filter_score(inst: Instances, thresh: float) -> Instances:
    """Keep instances with score >= thresh."""
    return inst.select(inst.scores >= thresh)


def filter_area(inst: Instances, min_area: int) -> Instances:
    """Keep instances with at least ``min_area`` pixels (and never an empty mask)."""
    return inst.select(inst.areas >= max(int(min_area), 1))


def fill_holes(inst: Instances) -> Instances:
    """Fill the holes of every mask (a hole = background 4-connected to no crop border pixel,
    as ``scipy.ndimage.binary_fill_holes``; OpenCV's flood fill is ~10x faster per crop)."""
    return Instances(inst.image_shape, inst.boxes.copy(), [fill_mask_holes(m) for m in inst.masks],
                     inst.scores.copy(), inst.labels.copy(), dict(inst.extra))


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool mask with its holes filled."""
    import cv2  # lazy

    h, w = mask.shape
    if h < 3 or w < 3:
        return mask  # no room for a hole
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    # flood the outside from a corner of the 1-pixel frame (4-connected): what stays 0 is a hole
    cv2.floodFill(pad, None, (0, 0), 1, flags=4)
    return mask | (pad[1:-1, 1:-1] == 0)


def rescore(inst: Instances, key: str = "mask_prob") -> Instances:
    """score <- score x extra[key] (1st-place style: box score x mean mask probability inside the
    mask). Instances without that extra are returned unchanged."""
    if key not in inst.extra or len(inst) == 0:
        return inst
    scores = inst.scores * np.clip(np.asarray(inst.extra[key], np.float32), 0.0, 1.0)
    return Instances(inst.image_shape, inst.boxes, inst.masks, scores, inst.labels, dict(inst.extra))


def sort_by_score(inst: Instances) -> Instances:
    """Descending score, stable (ties keep their order)."""
    return inst.select(np.argsort(-inst.scores, kind="stable"))


def mask_nms(inst: Instances, iou: float) -> Instances:
    """Greedy mask NMS: visiting by descending score, drop an instance whose mask IoU with an
    already kept one exceeds ``iou``. ``iou >= 1`` disables it. Output is sorted by score."""
    inst = sort_by_score(inst)
    n = len(inst)
    if iou >= 1.0 or n < 2:
        return inst
    i, j = box_pairs(inst.boxes)  # i < j: i is the better one after sorting
    inter = pair_intersections(inst, i, None, j)
    area = inst.areas
    ious = inter / np.maximum(area[i] + area[j] - inter, 1)
    hit = ious > iou
    i, j = i[hit], j[hit]
    suppressors: list[list[int]] = [[] for _ in range(n)]
    for p, q in zip(i.tolist(), j.tolist()):
        suppressors[q].append(p)
    keep = np.ones(n, bool)
    for q in range(n):
        if any(keep[p] for p in suppressors[q]):
            keep[q] = False
    return inst.select(keep)


def remove_overlaps(inst: Instances, drop: float = 0.5) -> Instances:
    """Greedy overlap removal by score: each pixel goes to the best-scoring cell covering it.

    A cell that loses more than ``drop`` of its area to better cells is dropped entirely (a
    fragment of a duplicate is worse than nothing under the competition metric). Boxes are
    tightened to what remains. The output never overlaps; it is sorted by descending score.
    """
    inst = sort_by_score(inst)
    h, w = inst.image_shape
    taken = np.zeros((h, w), bool)
    boxes, masks, keep = [], [], []
    for k, (box, mask) in enumerate(zip(inst.boxes, inst.masks)):
        x0, y0, x1, y1 = (int(v) for v in box)
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        region = taken[y0:y1, x0:x1]
        left = mask & ~region
        n_left = int(np.count_nonzero(left))
        if n_left == 0 or n_left < (1.0 - drop) * area:
            continue
        region |= left
        if n_left == area:  # untouched: keep the crop as it is (tightening costs a scan)
            boxes.append(np.asarray(box, np.int32))
            masks.append(mask)
        else:
            tight = tighten(box, left)
            assert tight is not None
            boxes.append(tight[0])
            masks.append(tight[1])
        keep.append(k)
    idx = np.array(keep, np.int64)
    return Instances(inst.image_shape, np.array(boxes, np.int32).reshape(-1, 4), masks,
                     inst.scores[idx], inst.labels[idx],
                     {k: np.asarray(v)[idx] for k, v in inst.extra.items()})


def placeholder(image_shape: tuple[int, int], size: int = 3) -> Instances:
    """One size x size square at the image centre, score 0 (see the empty-image policy)."""
    h, w = image_shape
    s = max(1, min(size, h, w))
    y0, x0 = (h - s) // 2, (w - s) // 2
    return Instances(image_shape, np.array([[x0, y0, x0 + s, y0 + s]], np.int32),
                     [np.ones((s, s), bool)], np.zeros(1, np.float32), np.zeros(1, np.int64))


def apply_empty_policy(result: Instances, candidates: Instances, policy: str) -> Instances:
    """Return ``result`` unless it is empty; then follow ``policy`` (module docstring)."""
    if len(result) or policy == "allow_empty":
        return result
    if policy == "best":
        cand = filter_area(candidates, 1)
        if len(cand):
            best = cand.select([int(np.argmax(cand.scores))])
            return Instances(best.image_shape, best.boxes, best.masks, best.scores, best.labels,
                             {})
    if policy not in ("best", "placeholder"):
        raise ValueError(f"empty_policy={policy!r}; valid: best, placeholder, allow_empty")
    return placeholder(result.image_shape)


def postprocess(inst: Instances, cfg: "InferenceConfig", *, cell_type: str | None = None
                ) -> Instances:
    """Raw merged instances of one image -> final non-overlapping instances (module docstring).

    The thresholds are those of ``cellseg.infer.celltype.image_cell_type(inst,
    cfg.cell_type_names, cell_type)``: ``cell_type`` when given, else voted, else ``cfg.default``.
    """
    if cfg.rescore:
        inst = rescore(inst)
    th = cfg.thresholds_for(image_cell_type(inst, cfg.cell_type_names, cell_type))
    out = filter_score(inst, th.score_thresh)
    out = filter_extra(out, min_pred_iou=th.min_pred_iou, min_stability=th.min_stability)
    if cfg.fill_holes:
        out = fill_holes(out)
    out = filter_area(out, th.min_area)
    out = mask_nms(out, th.nms_iou)
    out = remove_overlaps(out, cfg.overlap_drop)
    out = filter_area(out, th.min_area)
    if len(out) == 0 and cfg.empty_policy == "best" and len(inst):
        # the fallback candidate must not overlap anything either: one instance cannot
        cand = fill_holes(inst) if cfg.fill_holes else inst
        return apply_empty_policy(out, cand, "best")
    return apply_empty_policy(out, inst, cfg.empty_policy)
