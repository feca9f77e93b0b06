"""The competition metric, computed sparsely: one implementation shared by training validation,
``cellseg score`` and tuning.

    from cellseg.core.metrics import score, match_image
    report = score({"0030fd0e6378": truth_rles}, {"0030fd0e6378": pred_rles},
                   cell_types={"0030fd0e6378": "shsy5y"})
    report.score, report.per_cell_type, report.per_threshold, report.counts

Definition (Sartorius Cell Instance Segmentation):

* per image and threshold t in 0.50, 0.55, ..., 0.95 a prediction matches a true cell when
  IoU > t, strictly. The comparison is done in exact integer arithmetic
  (``20 * intersection > k * union`` for t = k / 20), so an IoU of exactly 0.5 is a miss no
  matter how floats round;
* score(t) = TP / (TP + FP + FN); the image score is the mean over the 10 thresholds; the data
  set score is the mean of image scores (counts are NEVER pooled across images);
* undefined cases (Kaggle does not say): no true cell and no prediction -> 1.0; exactly one side
  empty -> 0.0 (follows from the formula).

Matching (``matching``; docs/metric.md gives the evidence). With IoU > 0.5 and non-overlapping
masks on both sides each truth can match at most one prediction and vice versa, so every rule
agrees. Training truth overlaps (near-duplicate shsy5y annotations), and there the rules differ:

* ``"dsb"`` (the default): the Data Science Bowl 2018 rule that the competition's evaluation page
  describes and the public metric notebooks implement: at threshold t a true cell with EXACTLY
  one prediction above t is a TP, one with none is a FN; a prediction with no true cell above t
  is a FP. One prediction covering two duplicated true cells makes two TPs. (With two
  predictions above t, possible only when predictions overlap, a true cell is neither; should
  nothing be counted at all the image scores 0.)
* ``"greedy"``: pairs with IoU > 0.5 are matched one-to-one GREEDILY by IoU descending (ties:
  lower truth index, then lower prediction index); TP(t) is the number of greedy pairs with
  IoU > t (greedy on the pairs above t equals the prefix of the greedy matching above 0.5,
  because pairs above t come first in the IoU order). A duplicated true cell is a FN.

Every result carries the image score under both rules (``score_by_matching``), so a report can
say where the rule changed the result.

How it stays fast and small: masks are kept as runs over the C-order flat image
(``cellseg.core.masks.Runs``), never as one dense array per cell. All RLE strings of an image
are parsed in one call. Intersections come from the runs (two ``searchsorted`` calls against the
non-overlapping side); when both sides overlap, a scipy sparse product. COCO AP/AR lives in
``cellseg.core.metrics_coco``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cellseg.core.masks import (SHAPE, MaskInput, Runs, as_runs, runs_from_instances,
                                runs_from_rles, runs_to_indices)

if TYPE_CHECKING:
    from cellseg.core.instances import Instances
    from cellseg.data.record import ImageRecord

# t = k / 20 for k = 10..19: the integer form keeps "IoU > t" exact
_K = np.arange(10, 20, dtype=np.int64)
THRESHOLDS: np.ndarray = _K / 20.0  # 0.50, 0.55, ..., 0.95
THRESHOLD_KEYS: tuple[str, ...] = tuple(f"{t:.2f}" for t in THRESHOLDS)
MATCHING_RULES: tuple[str, ...] = ("dsb", "greedy")
DEFAULT_MATCHING = "dsb"


def check_matching(matching: str) -> str:
    """``matching`` if it names a rule of ``MATCHING_RULES``, else ValueError listing them."""
    if matching not in MATCHING_RULES:
        raise ValueError(f"unknown matching rule {matching!r}; valid: {', '.join(MATCHING_RULES)}")
    return matching


# --------------------------------------------------------------------------------------------
# Intersections and matching
# --------------------------------------------------------------------------------------------

def intersections(truth: Runs, pred: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero intersections between every truth and prediction instance.

    Works on runs, not pixels: when one side has no overlapping instances its runs, sorted,
    are disjoint intervals with ascending ends, so the runs of the other side that each one
    meets come from two ``searchsorted`` calls and the shared length from min/max arithmetic
    (a few thousand runs per image instead of ~10^5 pixels). When both sides overlap, a scipy
    sparse product of pixel indicator matrices.

    Returns:
        ``(ti, pi, inter)``: three (K,) int64 arrays, truth index, prediction index and shared
        pixel count of each overlapping pair, sorted by (ti, pi).
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth is {truth.shape}, prediction is {pred.shape} (HxW)")
    z = np.zeros(0, np.int64)
    if truth.starts.size == 0 or pred.starts.size == 0:
        return z, z, z
    sorted_pred = pred.sorted_disjoint()
    if sorted_pred is not None:
        ti, pi, inter = _run_pairs(truth, *sorted_pred, pred.n)
    else:
        sorted_truth = truth.sorted_disjoint()
        if sorted_truth is None:
            return _intersections_sparse(truth, pred)
        pi, ti, inter = _run_pairs(pred, *sorted_truth, truth.n)
        order = np.lexsort((pi, ti))
        ti, pi, inter = ti[order], pi[order], inter[order]
    return ti, pi, inter


def _run_pairs(a: Runs, bs: np.ndarray, be: np.ndarray, bo: np.ndarray,
               b_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # b's runs are disjoint and sorted, so their ends ascend too: run j meets [as, ae) iff
    # be[j] > as and bs[j] < ae, i.e. j in [i0, i1)
    a_s = a.starts
    a_e = a_s + a.lengths
    i0 = np.searchsorted(be, a_s, side="right")
    i1 = np.searchsorted(bs, a_e, side="left")
    cnt = i1 - i0
    hit = cnt > 0
    if not hit.any():
        z = np.zeros(0, np.int64)
        return z, z, z
    ai = np.repeat(np.flatnonzero(hit), cnt[hit])
    bi = runs_to_indices(i0[hit], cnt[hit])  # consecutive b runs for each a run
    length = np.minimum(a_e[ai], be[bi]) - np.maximum(a_s[ai], bs[bi])
    key = a.owner[ai] * b_n + bo[bi]
    bits = int(length.max()).bit_length()
    if int(key.max()).bit_length() + bits < 63:
        # pack (pair, length) into one int64 and sort once: cheaper than a T*P count table
        # or np.unique(return_inverse) at a few thousand pairs per image
        packed = np.sort((key << bits) | length)
        key, length = packed >> bits, packed & ((1 << bits) - 1)
        first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        uniq, inter = key[first], np.add.reduceat(length, first)
    else:
        uniq, inv = np.unique(key, return_inverse=True)
        inter = np.bincount(inv.reshape(-1), weights=length).astype(np.int64)
    return uniq // b_n, uniq % b_n, inter


def _intersections_sparse(truth: Runs, pred: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # both sides overlap: (T x HW) @ (HW x P) sparse product of indicator matrices
    from scipy import sparse  # lazy

    n_pixels = truth.shape[0] * truth.shape[1]
    tp, tid = truth.pixels()
    pp, pid = pred.pixels()
    a = sparse.csr_matrix((np.ones(tp.size, np.int64), (tid, tp)), shape=(truth.n, n_pixels))
    b = sparse.csr_matrix((np.ones(pp.size, np.int64), (pid, pp)), shape=(pred.n, n_pixels))
    prod = (a @ b.T).tocoo()
    order = np.lexsort((prod.col, prod.row))
    return (prod.row[order].astype(np.int64), prod.col[order].astype(np.int64),
            prod.data[order].astype(np.int64))


def iou_matrix(truth: MaskInput, pred: MaskInput, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Dense (T, P) float64 IoU matrix, computed from sparse intersections.

    ``truth`` / ``pred``: lists of RLE strings, (H, W) label images, ``Instances`` or ``Runs``.
    """
    t, p = as_runs(truth, shape), as_runs(pred, shape)
    ti, pi, inter = intersections(t, p)
    out = np.zeros((t.n, p.n), dtype=np.float64)
    union = t.areas[ti] + p.areas[pi] - inter
    out[ti, pi] = inter / union
    return out


def greedy_match(ti: np.ndarray, pi: np.ndarray, inter: np.ndarray,
                 union: np.ndarray) -> np.ndarray:
    """Indices into the candidate pairs kept by one-to-one greedy matching by IoU descending.

    Only pairs with IoU > 0.5 should be passed. Ties: lower truth index, then lower prediction
    index. Returns (M,) int64 positions, in IoU-descending order.
    """
    if ti.size == 0:
        return np.zeros(0, np.int64)
    iou = inter / union
    order = np.lexsort((pi, ti, -iou))
    if np.unique(ti).size == ti.size and np.unique(pi).size == pi.size:
        return order  # the usual case (IoU > 0.5, no overlaps): already one-to-one
    used_t, used_p, keep = set(), set(), []
    for k in order.tolist():
        a, b = int(ti[k]), int(pi[k])
        if a not in used_t and b not in used_p:
            used_t.add(a)
            used_p.add(b)
            keep.append(k)
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class ImageResult:
    """Metric of one image.

    Attributes:
        image_id: id, or None when scored alone.
        cell_type: cell type, or None.
        n_true, n_pred: instance counts (empty masks count: they can only be FP/FN).
        tp, fp, fn: (10,) int64 counts at each threshold of ``THRESHOLDS``.
        scores: (10,) float64 TP / (TP + FP + FN) at each threshold.
        score: mean of ``scores``.
        matches: (M, 2) int64 (truth index, prediction index) pairs of the one-to-one greedy
            matching at IoU > 0.5 (for overlays, whatever the rule).
        match_iou: (M,) float64 their IoU.
        matching: the rule of tp/fp/fn/scores/score (``MATCHING_RULES``).
        score_by_matching: the image score under every rule of ``MATCHING_RULES``.
    """

    image_id: str | None
    cell_type: str | None
    n_true: int
    n_pred: int
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    scores: np.ndarray
    score: float
    matches: np.ndarray = field(repr=False)
    match_iou: np.ndarray = field(repr=False)
    matching: str = DEFAULT_MATCHING
    score_by_matching: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"score": float(self.score), "cell_type": self.cell_type,
                "n_true": self.n_true, "n_pred": self.n_pred,
                "score_by_matching": {k: float(v) for k, v in self.score_by_matching.items()},
                "per_threshold": dict(zip(THRESHOLD_KEYS, map(float, self.scores))),
                "tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist()}


def match_image(truth: MaskInput, pred: MaskInput, shape: tuple[int, int] = SHAPE, *,
                image_id: str | None = None, cell_type: str | None = None,
                matching: str = DEFAULT_MATCHING) -> ImageResult:
    """Score one image.

    Args:
        truth: true cells: list of RLE strings (may overlap), (H, W) label image, ``Runs``.
        pred: predicted cells, same forms or ``Instances``.
        shape: (height, width), used for RLE strings.
        matching: ``"dsb"`` or ``"greedy"`` (module docstring); both scores are computed.
    """
    check_matching(matching)
    t, p = as_runs(truth, shape), as_runs(pred, shape)
    ti, pi, inter = intersections(t, p)
    union = t.areas[ti] + p.areas[pi] - inter
    cand = 2 * inter > union  # IoU > 0.5, exactly
    ti, pi, inter, union = ti[cand], pi[cand], inter[cand], union[cand]
    # hit[k, m]: candidate pair m has IoU > THRESHOLDS[k], i.e. 20 * inter > k * union
    hit = 20 * inter[None, :] > _K[:, None] * union[None, :]
    counts = {"greedy": _counts_greedy(ti, pi, inter, union, hit, t.n, p.n),
              "dsb": _counts_dsb(ti, pi, hit, t.n, p.n)}
    by_rule = {}
    for rule, (tp, fp, fn) in counts.items():
        by_rule[rule] = _scores(tp, fp, fn, t.n, p.n)
    tp, fp, fn = counts[matching]
    scores = by_rule[matching]
    keep = greedy_match(ti, pi, inter, union)
    ti, pi, inter, union = ti[keep], pi[keep], inter[keep], union[keep]
    return ImageResult(image_id, cell_type, t.n, p.n, tp, fp, fn, scores, float(scores.mean()),
                       np.stack([ti, pi], axis=1), inter / np.maximum(union, 1), matching,
                       {rule: float(by_rule[rule].mean()) for rule in MATCHING_RULES})


def _counts_greedy(ti: np.ndarray, pi: np.ndarray, inter: np.ndarray, union: np.ndarray,
                   hit: np.ndarray, n_true: int, n_pred: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TP(t) = greedy pairs with IoU > t (the prefix argument of the module docstring)
    keep = greedy_match(ti, pi, inter, union)
    tp = hit[:, keep].sum(axis=1).astype(np.int64)
    return tp, n_pred - tp, n_true - tp


def _counts_dsb(ti: np.ndarray, pi: np.ndarray, hit: np.ndarray, n_true: int, n_pred: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.zeros(len(_K), np.int64) for _ in range(3))
    for k in range(len(_K)):
        per_truth = np.bincount(ti[hit[k]], minlength=n_true)
        tp[k] = int(np.count_nonzero(per_truth == 1))
        fn[k] = int(np.count_nonzero(per_truth == 0))
        fp[k] = n_pred - int(np.unique(pi[hit[k]]).size)
    return tp, fp, fn


def _scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, n_true: int, n_pred: int
            ) -> np.ndarray:
    if n_true == 0 and n_pred == 0:
        return np.ones(len(_K))  # documented choice: nothing to find, nothing found
    denom = tp + fp + fn
    # denom 0 only under "dsb" when every true cell has 2+ overlapping predictions: score 0
    return np.where(denom > 0, tp / np.maximum(denom, 1), 0.0)


# --------------------------------------------------------------------------------------------
# Data-set score
# --------------------------------------------------------------------------------------------

@dataclass
class ScoreReport:
    """Competition metric over a set of images (mean of image scores, never pooled counts)."""

    images: dict[str, ImageResult]

    @property
    def score(self) -> float:
        if not self.images:
            return float("nan")
        return float(np.mean([r.score for r in self.images.values()]))

    @property
    def per_image(self) -> dict[str, float]:
        return {k: r.score for k, r in self.images.items()}

    @property
    def matching(self) -> str:
        """The rule of ``score`` (that of the images; ``DEFAULT_MATCHING`` when empty)."""
        rules = {r.matching for r in self.images.values()}
        return rules.pop() if len(rules) == 1 else DEFAULT_MATCHING

    @property
    def score_by_matching(self) -> dict[str, float]:
        """The data-set score under every rule of ``MATCHING_RULES``."""
        return {rule: float(np.mean([r.score_by_matching[rule] for r in self.images.values()]))
                if self.images else float("nan") for rule in MATCHING_RULES}

    @property
    def per_cell_type_by_matching(self) -> dict[str, dict[str, float]]:
        """``{cell_type: {rule: mean image score}}`` (images without a type under "unknown")."""
        groups: dict[str, list[ImageResult]] = {}
        for r in self.images.values():
            groups.setdefault(r.cell_type or "unknown", []).append(r)
        return {k: {rule: float(np.mean([r.score_by_matching[rule] for r in v]))
                    for rule in MATCHING_RULES} for k, v in sorted(groups.items())}

    @property
    def changed_by_matching(self) -> dict[str, dict[str, float]]:
        """Images whose score depends on the rule: ``{image_id: {rule: score}}`` (overlapping
        truth or predictions with two matches above 0.5)."""
        return {k: dict(r.score_by_matching) for k, r in self.images.items()
                if len(set(r.score_by_matching.values())) > 1}

    @property
    def n_images_per_cell_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.images.values():
            key = r.cell_type or "unknown"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    @property
    def per_cell_type(self) -> dict[str, float]:
        """Mean image score per cell type (images without a type under "unknown")."""
        groups: dict[str, list[float]] = {}
        for r in self.images.values():
            groups.setdefault(r.cell_type or "unknown", []).append(r.score)
        return {k: float(np.mean(v)) for k, v in sorted(groups.items())}

    @property
    def per_threshold(self) -> dict[str, float]:
        """Mean over images of score(t), keyed "0.50" .. "0.95"."""
        if not self.images:
            return {k: float("nan") for k in THRESHOLD_KEYS}
        m = np.mean([r.scores for r in self.images.values()], axis=0)
        return dict(zip(THRESHOLD_KEYS, map(float, m)))

    @property
    def counts(self) -> dict[str, Any]:
        """Totals for reading, NOT for scoring: n_images, n_true, n_pred, tp/fp/fn per threshold."""
        rs = list(self.images.values())
        out: dict[str, Any] = {"n_images": len(rs), "n_true": sum(r.n_true for r in rs),
                               "n_pred": sum(r.n_pred for r in rs)}
        for name in ("tp", "fp", "fn"):
            tot = np.sum([getattr(r, name) for r in rs], axis=0) if rs else np.zeros(10, int)
            out[name] = dict(zip(THRESHOLD_KEYS, map(int, tot)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "matching": self.matching,
                "score_by_matching": self.score_by_matching,
                "changed_by_matching": self.changed_by_matching,
                "per_image": {k: r.to_dict() for k, r in self.images.items()},
                "per_cell_type": self.per_cell_type,
                "per_cell_type_by_matching": self.per_cell_type_by_matching,
                "n_images_per_cell_type": self.n_images_per_cell_type,
                "per_threshold": self.per_threshold,
                "counts": self.counts}


def score(truth: Mapping[str, MaskInput], pred: Mapping[str, MaskInput], *,
          cell_types: Mapping[str, str | None] | None = None,
          shape: tuple[int, int] | Mapping[str, tuple[int, int]] = SHAPE,
          matching: str = DEFAULT_MATCHING) -> ScoreReport:
    """Score predictions against truth over the images of ``truth``.

    Args:
        truth: image id -> true cells (RLE strings, label image, ...). Every key is scored.
        pred: image id -> predicted cells; a missing id is an image with no prediction.
        cell_types: image id -> cell type, for the per-type breakdown.
        shape: (height, width) of every image, or image id -> shape.
        matching: the rule of ``score`` (``MATCHING_RULES``); both are reported.
    Raises:
        ValueError: ``pred`` has ids that ``truth`` lacks (wrong files, or a fold mix-up).
    """
    check_matching(matching)
    unknown = [k for k in pred if k not in truth]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted image ids are not in the truth, e.g. "
                         f"{unknown[:3]}; restrict the predictions to the scored images")
    results = {}
    for image_id, t in truth.items():
        shp = shape[image_id] if isinstance(shape, Mapping) else shape
        ct = cell_types.get(image_id) if cell_types else None
        try:
            results[image_id] = match_image(t, pred.get(image_id, []), shp,
                                            image_id=image_id, cell_type=ct,
                                            matching=matching)
        except ValueError as err:
            raise type(err)(f"image {image_id}: {err}") from None
    return ScoreReport(results)


def score_instances(records: Sequence["ImageRecord"], preds: Sequence["Instances"],
                    matching: str = DEFAULT_MATCHING) -> ScoreReport:
    """Score predicted ``Instances`` against ``ImageRecord`` truth (training validation, tune)."""
    if len(records) != len(preds):
        raise ValueError(f"{len(records)} records but {len(preds)} predictions")
    truth = {r.image_id: runs_from_rles(r.rles, r.shape) for r in records}
    if len(truth) != len(records):
        raise ValueError("duplicate image ids in records")
    for r, p in zip(records, preds):
        if tuple(p.image_shape) != r.shape:
            raise ValueError(f"image {r.image_id}: prediction is {p.image_shape}, "
                             f"truth is {r.shape} (HxW)")
    pred = {r.image_id: runs_from_instances(p) for r, p in zip(records, preds)}
    return score(truth, pred, cell_types={r.image_id: r.cell_type for r in records},
                 matching=matching)

