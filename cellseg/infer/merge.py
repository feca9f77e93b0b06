"""Merging instance sets: mask overlaps, seam merging across tiles, mask voting across passes.

All functions are pure numpy on ``Instances`` (sparse: each mask is a crop inside its box), so a
2000-cell image never needs an (N, H, W) stack. Pairwise work is restricted to pairs whose boxes
intersect.

- ``overlaps``: every overlapping pair of one set (crop geometry from ``cellseg.core.instances``).
- ``merge_seams``: instances predicted per tile -> each cell once and whole.
- ``vote``: instances of several TTA passes / models -> one set, by mask voting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cellseg.core.instances import (Instances, add_crop, box_pairs, pair_intersections, tighten,
                                    union_box)


def overlaps(inst: Instances, groups: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All overlapping pairs i < j of one set: (i, j, intersection, iou) arrays of length P.
    With ``groups`` ((N,) ints), only pairs from different groups (checked before the costly
    mask intersections)."""
    i, j = box_pairs(inst.boxes)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        other = groups[i] != groups[j]
        i, j = i[other], j[other]
    inter = pair_intersections(inst, i, None, j)
    area = inst.areas
    union = area[i] + area[j] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    keep = inter > 0
    return i[keep], j[keep], inter[keep], iou[keep]


def merge_seams(inst: Instances, tile_id: np.ndarray, cut: np.ndarray, *, iou: float = 0.3,
                containment: float = 0.6, tiles: np.ndarray | None = None) -> Instances:
    """Merge instances predicted on overlapping tiles so each cell comes out once and whole.

    Args:
        inst: the instances of every tile of one image, in image coordinates.
        tile_id: (N,) int, the tile each instance came from.
        cut: (N,) bool, the instance touches an inner edge of its tile (it may be truncated).
        iou: two whole instances from different tiles with mask IoU >= iou are one cell.
        containment: a cut instance whose intersection with an instance of another tile covers
            >= this share of the cut instance's area belongs to that cell.
        tiles: (T, 4) x0, y0, x1, y1 of each tile id. Two cut pieces from different tiles are
            one cell when their IoU INSIDE the two tiles' shared area reaches ``iou`` (pieces of a
            cell larger than the overlap agree there, whatever their total areas); without
            ``tiles`` the whole-mask IoU / containment is used.
    Returns:
        Whole instances are kept (the best-scoring one of each duplicate group), cut instances
        seen whole by another tile are dropped, and cut instances of a cell that no tile saw
        whole are united (score: the maximum).
    """
    n = len(inst)
    tile_id = np.asarray(tile_id).reshape(-1)
    cut = np.asarray(cut, bool).reshape(-1)
    if n == 0 or np.unique(tile_id).size < 2:
        return inst
    i, j, inter, ious = overlaps(inst, tile_id)
    area = inst.areas
    neighbours: list[list[tuple[int, int, float]]] = [[] for _ in range(n)]
    for p, q, x, v in zip(i.tolist(), j.tolist(), inter.tolist(), ious.tolist()):
        neighbours[p].append((q, x, v))
        neighbours[q].append((p, x, v))

    alive = np.ones(n, bool)
    # 1) whole instances, best first, absorb their duplicates and the cut pieces they contain
    for p in sorted(np.flatnonzero(~cut).tolist(), key=lambda k: -float(inst.scores[k])):
        if not alive[p]:
            continue
        for q, x, v in neighbours[p]:
            if not alive[q]:
                continue
            if (not cut[q] and v >= iou) or (cut[q] and x >= containment * max(area[q], 1)):
                alive[q] = False
    # 2) cut pieces left: cells no tile saw whole -> unite pieces from different tiles
    rest = [k for k in np.flatnonzero(cut & alive).tolist()]
    parent = {k: k for k in rest}

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for p in rest:
        for q, x, v in neighbours[p]:
            if q not in parent:
                continue
            same = v >= iou or x >= containment * max(min(area[p], area[q]), 1)
            if not same and tiles is not None:
                same = _shared_iou(inst, p, q, tiles[tile_id[p]], tiles[tile_id[q]]) >= iou
            if same:
                parent[find(p)] = find(q)
    groups: dict[int, list[int]] = {}
    for k in rest:
        groups.setdefault(find(k), []).append(k)
    keep = np.flatnonzero(alive & ~cut).tolist()
    united = []
    for members in groups.values():
        if len(members) == 1:
            keep.append(members[0])
            continue
        united.append(_unite(inst, members))
    out = inst.select(np.array(sorted(keep), np.int64))
    return Instances.concatenate([out, *united]) if united else out


def _shared_iou(inst: Instances, p: int, q: int, tile_p: np.ndarray, tile_q: np.ndarray) -> float:
    """Mask IoU of instances p and q restricted to the area shared by their two tiles."""
    x0, y0 = max(tile_p[0], tile_q[0]), max(tile_p[1], tile_q[1])
    x1, y1 = min(tile_p[2], tile_q[2]), min(tile_p[3], tile_q[3])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    crops = []
    for k in (p, q):
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        b = inst.boxes[k]
        cx0, cy0 = max(b[0], x0), max(b[1], y0)
        cx1, cy1 = min(b[2], x1), min(b[3], y1)
        if cx1 > cx0 and cy1 > cy0:
            canvas[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = \
                inst.masks[k][cy0 - b[1]:cy1 - b[1], cx0 - b[0]:cx1 - b[0]]
        crops.append(canvas)
    union = int(np.count_nonzero(crops[0] | crops[1]))
    return int(np.count_nonzero(crops[0] & crops[1])) / union if union else 0.0


def _unite(inst: Instances, members: list[int]) -> Instances:
    """One instance: the union of members' masks, the best member's score, label and extras."""
    idx = np.array(members, np.int64)
    box = union_box(inst.boxes[idx])
    acc = np.zeros((box[3] - box[1], box[2] - box[0]), np.float32)
    for k in members:
        add_crop(box, acc, inst.boxes[k], inst.masks[k])
    best = int(idx[np.argmax(inst.scores[idx])])
    return Instances(inst.image_shape, box[None], [acc > 0], inst.scores[[best]],
                     inst.labels[[best]], {k: np.asarray(v)[[best]] for k, v in inst.extra.items()})


def vote(parts: Sequence[Instances], weights: Sequence[float] | None = None, *,
         iou: float = 0.5) -> Instances:
    """Mask voting across TTA passes and/or models of one image.

    Instances of different passes are clustered greedily (best weighted score first; at most one
    instance per pass joins a cluster, the one with the highest mask IoU >= ``iou``). A cluster's
    mask keeps the pixels where the members' weights sum to at least half the TOTAL weight of all
    passes, so a cell found by too few passes vanishes; its score is the weighted mean over all
    passes (a pass that missed the cell counts 0); its label is the weighted majority (labels < 0,
    "unknown", only win when no member knows better); extras are
    the weighted mean over members.

    Args:
        parts: one Instances per pass/model, all of the same image shape.
        weights: one weight > 0 per part (default all 1).
    Returns:
        The voted instances (clusters whose voted mask is empty are dropped).
    """
    if not parts:
        raise ValueError("vote needs at least one Instances")
    weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
    if len(weights) != len(parts):
        raise ValueError(f"vote: {len(weights)} weights for {len(parts)} parts")
    if len(parts) == 1:
        return parts[0]
    total = float(sum(weights))
    allinst = Instances.concatenate(list(parts))
    src = np.concatenate([np.full(len(p), k, np.int64) for k, p in enumerate(parts)])
    w = np.asarray(weights, np.float64)[src]
    n = len(allinst)
    if n == 0:
        return allinst
    i, j, _, ious = overlaps(allinst, src)
    ok = ious >= iou
    neighbours: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for p, q, v in zip(i[ok].tolist(), j[ok].tolist(), ious[ok].tolist()):
        neighbours[p].append((v, q))
        neighbours[q].append((v, p))
    assigned = np.zeros(n, bool)
    clusters = []
    for p in np.argsort(-(allinst.scores * w), kind="stable").tolist():
        if assigned[p]:
            continue
        assigned[p] = True
        members, seen = [p], {int(src[p])}
        for v, q in sorted(neighbours[p], reverse=True):
            if not assigned[q] and int(src[q]) not in seen:
                assigned[q] = True
                seen.add(int(src[q]))
                members.append(q)
        clusters.append(members)

    boxes, masks, scores, labels = [], [], [], []
    extras: dict[str, list[float]] = {k: [] for k in allinst.extra}
    for members in clusters:
        idx = np.array(members, np.int64)
        box = union_box(allinst.boxes[idx])
        acc = np.zeros((box[3] - box[1], box[2] - box[0]), np.float32)
        for k in members:
            add_crop(box, acc, allinst.boxes[k], allinst.masks[k], float(w[k]))
        tight = tighten(box, acc >= 0.5 * total - 1e-6)
        if tight is None:
            continue
        boxes.append(tight[0])
        masks.append(tight[1])
        wm = w[idx]
        scores.append(float((wm * allinst.scores[idx]).sum() / total))
        votes: dict[int, float] = {}
        for lab, ww in zip(allinst.labels[idx].tolist(), wm.tolist()):
            votes[lab] = votes.get(lab, 0.0) + ww
        known = {k: v for k, v in votes.items() if k >= 0}  # -1 = unknown type: no vote
        labels.append(max(known or votes, key=(known or votes).get))
        for k, v in allinst.extra.items():
            extras[k].append(float((wm * np.asarray(v, np.float64)[idx]).sum() / wm.sum()))
    return Instances(allinst.image_shape, np.array(boxes, np.int32).reshape(-1, 4), masks,
                     np.array(scores, np.float32), np.array(labels, np.int64),
                     {k: np.array(v, np.float32) for k, v in extras.items()})
