"""The competition metric: golden hand-built cases and a cross-check against a naive dense
implementation on the real Sartorius sample (395 overlapping cells) with perturbed predictions."""

from __future__ import annotations

import csv
from fractions import Fraction

import numpy as np
import pytest

from cellseg.core import rle

from cellseg.core.masks import decode_labels, encode_labels
from cellseg.core.instances import Instances
from cellseg.core.masks import as_runs, runs_from_instances, runs_from_labels, runs_from_rles
from cellseg.core.metrics import (THRESHOLDS, intersections, iou_matrix, match_image, score,
                                  score_instances)

SHAPE = (10, 12)


def _mask(cells: list[tuple[int, int]], shape=SHAPE) -> str:
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return rle.encode(m)


def _rect(r0, r1, c0, c1, shape=SHAPE) -> str:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return rle.encode(m)


# ---------------------------------------------------------------------------- golden cases

def test_thresholds():
    assert np.allclose(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


def test_perfect_prediction_scores_one():
    truth = [_rect(0, 3, 0, 3), _rect(5, 9, 5, 10)]
    r = match_image(truth, list(reversed(truth)), SHAPE)
    assert r.score == 1.0 and r.tp.tolist() == [2] * 10 and r.fp.sum() == 0 and r.fn.sum() == 0


def test_iou_exactly_half_is_a_miss():
    truth = [_rect(0, 1, 0, 4)]          # 4 px
    pred = [_rect(0, 1, 0, 2)]           # 2 px inside: IoU = 2/4 = 0.5 exactly
    r = match_image(truth, pred, SHAPE)
    assert r.tp.tolist() == [0] * 10 and r.score == 0.0
    # IoU exactly 0.55 (11/20): a hit at 0.50 only, a miss at 0.55 (strict >)
    truth = [_rect(0, 2, 0, 10)]         # 20 px
    pred = [_mask([(0, c) for c in range(10)] + [(1, 0)])]  # row 0 + one pixel of row 1: 11 px
    r = match_image(truth, pred, SHAPE)
    assert r.tp.tolist() == [1] + [0] * 9
    assert r.score == pytest.approx(0.1)


def test_prediction_touching_two_cells():
    a, b = _rect(0, 1, 0, 10), _rect(1, 2, 0, 10)  # two 10-px cells
    pred = [_mask([(0, c) for c in range(10)] + [(1, c) for c in range(5)])]  # A + half B
    r = match_image([a, b], pred, SHAPE)
    # IoU(A) = 10/15 = 0.667 -> hit for t in .50, .55, .60, .65; IoU(B) = 5/20 never
    assert r.tp.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert r.fn.tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert r.fp.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert r.score == pytest.approx(4 * 0.5 / 10)


def test_per_image_mean_differs_from_pooling():
    one = [_rect(0, 2, 0, 2)]
    nine = [_rect(r, r + 1, c, c + 1) for r in range(0, 6, 2) for c in range(0, 6, 2)]
    rep = score({"a": one, "b": nine}, {"a": one}, shape=SHAPE)
    assert rep.per_image == {"a": 1.0, "b": 0.0}
    assert rep.score == pytest.approx(0.5)  # pooled counts would give 1 / 10
    assert rep.counts["tp"]["0.50"] == 1 and rep.counts["fn"]["0.50"] == 9
    assert rep.counts["n_true"] == 10 and rep.counts["n_images"] == 2


def test_empty_cases():
    cell = [_rect(0, 2, 0, 2)]
    assert match_image([], [], SHAPE).score == 1.0  # documented choice
    assert match_image([], cell, SHAPE).score == 0.0
    r = match_image(cell, [], SHAPE)
    assert r.score == 0.0 and r.fn.tolist() == [1] * 10
    # an empty predicted mask is a false positive, never a match
    r = match_image(cell, cell + [""], SHAPE)
    assert r.tp.tolist() == [1] * 10 and r.fp.tolist() == [1] * 10


def test_overlapping_truth_greedy_is_one_to_one():
    a, b = _rect(0, 1, 0, 10), _rect(0, 1, 2, 12)  # overlap 8 px: IoU(A, B) = 8/12
    r = match_image([a, b], [a], SHAPE, matching="greedy")
    assert r.tp.tolist() == [1] * 10 and r.fn.tolist() == [1] * 10 and r.score == 0.5
    # overlapping predictions: two predictions above 0.5 with one truth -> one TP, one FP
    almost = _rect(0, 1, 0, 9)
    r = match_image([a], [almost, a], SHAPE, matching="greedy")
    assert r.tp.tolist() == [1] * 10 and r.fp.tolist() == [1] * 10
    # both sides overlapping (scipy sparse path)
    r = match_image([a, b], [almost, a], SHAPE, matching="greedy")
    assert r.tp[0] == 2 and r.matches.shape == (2, 2)


def test_overlapping_truth_dsb_counts_each_true_cell():
    a, b = _rect(0, 1, 0, 10), _rect(0, 1, 2, 12)  # IoU(A, B) = 8/12 = 0.667
    r = match_image([a, b], [a], SHAPE)  # dsb is the default
    assert r.matching == "dsb"
    # t = .50-.65: both true cells have exactly one prediction above t -> 2 TP, no error
    assert r.tp.tolist() == [2] * 4 + [1] * 6
    assert r.fn.tolist() == [0] * 4 + [1] * 6 and r.fp.tolist() == [0] * 10
    assert r.score == pytest.approx((4 * 1.0 + 6 * 0.5) / 10)
    assert r.score_by_matching == {"dsb": pytest.approx(0.7), "greedy": 0.5}
    # two predictions above t on one true cell (overlapping predictions): neither TP nor FN,
    # and neither prediction is a FP; nothing counted at all -> 0 (t < 0.9). At t >= 0.9 only
    # the exact copy is above t: 1 TP, and the other prediction is a FP
    almost = _rect(0, 1, 0, 9)  # IoU with A: 9/10
    r = match_image([a], [almost, a], SHAPE)
    assert r.tp.tolist() == [0] * 8 + [1] * 2 and r.fp.tolist() == [0] * 8 + [1] * 2
    assert r.fn.tolist() == [0] * 10
    assert r.score == pytest.approx(0.1) and r.score_by_matching["greedy"] == 0.5


def test_duplicated_truth_one_prediction():
    """Two identical true masks and one prediction equal to them: the rules disagree."""
    a = _rect(2, 6, 2, 7)
    other = _rect(0, 1, 8, 12)
    dsb = match_image([a, a, other], [a, other], SHAPE, matching="dsb")
    greedy = match_image([a, a, other], [a, other], SHAPE, matching="greedy")
    assert dsb.tp.tolist() == [3] * 10 and dsb.fp.sum() == 0 and dsb.fn.sum() == 0
    assert dsb.score == 1.0
    assert greedy.tp.tolist() == [2] * 10 and greedy.fn.tolist() == [1] * 10
    assert greedy.score == pytest.approx(2 / 3)
    assert dsb.score_by_matching == greedy.score_by_matching == {"dsb": 1.0,
                                                                 "greedy": pytest.approx(2 / 3)}
    rep = score({"x": [a, a, other], "y": [other]}, {"x": [a, other], "y": [other]},
                shape=SHAPE, matching="greedy")
    assert rep.matching == "greedy" and rep.score == pytest.approx((2 / 3 + 1) / 2)
    assert rep.score_by_matching["dsb"] == 1.0
    assert list(rep.changed_by_matching) == ["x"]
    d = rep.to_dict()
    assert d["score_by_matching"]["greedy"] == pytest.approx(rep.score)
    assert d["per_image"]["x"]["score_by_matching"]["dsb"] == 1.0


def test_unknown_matching_rule_is_refused():
    with pytest.raises(ValueError, match="valid: dsb, greedy"):
        match_image([], [], SHAPE, matching="hungarian")
    with pytest.raises(ValueError, match="unknown matching"):
        score({"a": []}, {}, shape=SHAPE, matching="pooled")


def test_pred_ids_not_in_truth_raise():
    with pytest.raises(ValueError, match="not in the truth"):
        score({"a": []}, {"b": []}, shape=SHAPE)


def test_bad_rle_names_instance():
    with pytest.raises(rle.RLEError, match="instance 1: .*overlapping runs"):
        runs_from_rles(["1 2", "5 3 6 1"], SHAPE)
    with pytest.raises(rle.RLEError, match="instance 0: run past the image end"):
        runs_from_rles(["119 5"], SHAPE)
    with pytest.raises(rle.RLEError, match="instance 2: non-integer"):
        runs_from_rles(["1 2", "4 1", "7 x"], SHAPE)


def test_non_canonical_whitespace_parses_like_canonical():
    canon = runs_from_rles(["1 2 13 2", "", "30 3"], SHAPE)
    messy = runs_from_rles([" 1  2\t13 2 ", "", "30 3\n"], SHAPE)
    for f in ("starts", "lengths", "owner"):
        assert np.array_equal(getattr(canon, f), getattr(messy, f))
    assert canon.n == messy.n == 3 and canon.areas.tolist() == [4, 0, 3]


def test_inputs_agree_labels_instances_rles():
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 50), np.int32)
    for k in range(1, 12):
        r, c = rng.integers(0, 35), rng.integers(0, 45)
        lab[r:r + rng.integers(2, 8), c:c + rng.integers(2, 8)] = k
    rles = encode_labels(lab)
    a, b = runs_from_rles(rles, lab.shape), runs_from_labels(lab)
    c = runs_from_instances(Instances.from_label_image(lab))
    for other in (b, c):
        assert np.array_equal(a.starts, other.starts) and np.array_equal(a.lengths, other.lengths)
        assert np.array_equal(a.owner, other.owner)
    assert np.array_equal(a.label_image().reshape(lab.shape) > 0, lab > 0)
    assert np.array_equal(np.sort(a.pixels()[0]), rle.runs_to_indices(np.sort(a.starts),
                                                                       a.lengths[np.argsort(a.starts)]))
    assert not a.overlapping() and runs_from_rles([rles[0], rles[0]], lab.shape).overlapping()
    assert as_runs(lab) is not None and iou_matrix(lab, rles, lab.shape).diagonal().min() == 1.0


# ------------------------------------------------ naive dense reference on the real sample

def naive_image_score(truth: list[str], pred: list[str], shape, matching: str = "greedy"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Deliberately naive: dense masks, full IoU matrix by loops, greedy per threshold (or the
    DSB 2018 counts: true cells with exactly one prediction above t)."""
    t_pix = [set(np.flatnonzero(rle.decode(r, shape)).tolist()) for r in truth]
    p_pix = [set(np.flatnonzero(rle.decode(r, shape)).tolist()) if r else set() for r in pred]
    inter = np.zeros((len(truth), len(pred)), np.int64)
    union = np.ones((len(truth), len(pred)), np.int64)
    for i, tp in enumerate(t_pix):
        for j, pp in enumerate(p_pix):
            n = len(tp & pp)
            inter[i, j], union[i, j] = n, len(tp) + len(pp) - n
    tps, scores = [], []
    for k in range(10, 20):
        t = Fraction(k, 20)
        pairs = [(Fraction(int(inter[i, j]), int(union[i, j])), i, j)
                 for i in range(len(truth)) for j in range(len(pred))
                 if inter[i, j] and Fraction(int(inter[i, j]), int(union[i, j])) > t]
        if matching == "dsb":
            per_t = [sum(1 for _, i, _ in pairs if i == a) for a in range(len(truth))]
            tp = sum(1 for c in per_t if c == 1)
            fn = sum(1 for c in per_t if c == 0)
            fp = len(pred) - len({j for _, _, j in pairs})
            tps.append(tp)
            scores.append(1.0 if not truth and not pred else tp / (tp + fp + fn)
                          if tp + fp + fn else 0.0)
            continue
        pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
        used_t, used_p, tp = set(), set(), 0
        for _, i, j in pairs:
            if i not in used_t and j not in used_p:
                used_t.add(i)
                used_p.add(j)
                tp += 1
        fp, fn = len(pred) - tp, len(truth) - tp
        tps.append(tp)
        scores.append(1.0 if not truth and not pred else tp / (tp + fp + fn))
    return np.array(tps), np.array(scores)


def _read_truth(folder) -> tuple[str, list[str]]:
    with open(folder / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = {r["id"] for r in rows}
    assert len(ids) == 1
    return ids.pop(), [r["annotation"] for r in rows]


def perturb(truth: list[str], seed: int, shape=(520, 704), overlap: bool = False) -> list[str]:
    """Eroded, shifted, merged, split, dropped and extra cells (non-overlapping by default)."""
    import cv2

    rng = np.random.default_rng(seed)
    masks = []
    order = rng.permutation(len(truth))
    kernel = np.ones((3, 3), np.uint8)
    skip = set()
    for n, i in enumerate(order):
        if i in skip:
            continue
        m = rle.decode(truth[i], shape)
        kind = n % 7
        if kind == 0:
            continue  # dropped
        if kind == 1:
            m = cv2.erode(m.astype(np.uint8), kernel).astype(bool)
        elif kind == 2:
            m = np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        elif kind == 3 and n + 1 < len(order):
            j = order[n + 1]
            m = m | rle.decode(truth[j], shape)  # merged with another cell
            skip.add(j)
        elif kind == 4:
            ys, xs = np.nonzero(m)
            if xs.size > 4:
                mid = int(np.median(xs))
                left = m.copy()
                left[:, mid:] = False
                m[:, :mid] = False
                masks.append(left)  # split in two
        masks.append(m)
    for _ in range(15):  # extra cells
        e = np.zeros(shape, bool)
        r, c = rng.integers(0, shape[0] - 20), rng.integers(0, shape[1] - 20)
        e[r:r + rng.integers(4, 20), c:c + rng.integers(4, 20)] = True
        masks.append(e)
    if overlap:
        return [rle.encode(m) for m in masks if m.any()]
    lab = np.zeros(shape, np.int32)
    for k, m in enumerate(masks, start=1):
        lab[m] = k  # later wins: non-overlapping predictions, as a submission must be
    return encode_labels(lab)


@pytest.mark.parametrize("overlap,matching", [(False, "greedy"), (True, "greedy"),
                                              (False, "dsb"), (True, "dsb")])
def test_matches_naive_dense_on_real_sample(shared_sartorius, overlap, matching):
    image_id, truth = _read_truth(shared_sartorius)
    assert len(truth) == 395
    pred = perturb(truth, seed=1 + overlap, overlap=overlap)
    want_tp, want_scores = naive_image_score(truth, pred, (520, 704), matching)
    got = match_image(truth, pred, (520, 704), matching=matching)
    assert got.tp.tolist() == want_tp.tolist()
    assert got.scores.tolist() == want_scores.tolist()
    assert 0.2 < got.score < 0.9  # the perturbations really change the score
    # the IoU matrix agrees with the naive one where it is nonzero
    iou = iou_matrix(truth, pred, (520, 704))
    assert iou.shape == (395, len(pred)) and iou.max() <= 1.0


def test_real_sample_perfect_and_instances_path(shared_sartorius):
    image_id, truth = _read_truth(shared_sartorius)
    # overlapping truth scored against itself: every cell matches itself
    assert match_image(truth, truth).score == 1.0
    pred = perturb(truth, seed=3)
    lab = decode_labels(pred)
    from cellseg.data.record import ImageRecord

    rec = ImageRecord(image_id, shared_sartorius / "train" / f"{image_id}.png", 520, 704,
                      cell_type="shsy5y", rles=tuple(truth))
    a = score_instances([rec], [Instances.from_label_image(lab)])
    b = score({image_id: truth}, {image_id: pred}, cell_types={image_id: "shsy5y"})
    c = score({image_id: truth}, {image_id: lab}, cell_types={image_id: "shsy5y"})
    assert a.score == b.score == c.score
    assert a.per_cell_type == {"shsy5y": a.score}
    d = b.to_dict()
    assert set(d) == {"score", "matching", "score_by_matching", "changed_by_matching",
                      "per_image", "per_cell_type", "per_cell_type_by_matching",
                      "n_images_per_cell_type", "per_threshold", "counts"}
    assert list(d["per_threshold"]) == [f"{t:.2f}" for t in THRESHOLDS]


def test_intersections_symmetric_paths():
    # same intersections whichever side overlaps
    rng = np.random.default_rng(5)
    rles = []
    for _ in range(30):
        m = np.zeros((30, 40), bool)
        r, c = rng.integers(0, 25), rng.integers(0, 35)
        m[r:r + rng.integers(1, 6), c:c + rng.integers(1, 6)] = True
        rles.append(rle.encode(m))
    over = runs_from_rles(rles, (30, 40))
    flat = runs_from_labels(decode_labels(rles, (30, 40)))
    ti, pi, inter = intersections(over, flat)
    pj, tj, inter2 = intersections(flat, over)
    o = np.lexsort((pj, tj))
    assert np.array_equal(ti, tj[o]) and np.array_equal(pi, pj[o])
    assert np.array_equal(inter, inter2[o])
    dense = np.zeros((30, 30 * 40), bool)
    for i, r in enumerate(rles):
        dense[i] = rle.decode(r, (30, 40)).ravel()
    lab = decode_labels(rles, (30, 40)).ravel()
    present = np.unique(lab[lab > 0]).tolist()  # runs_from_labels numbers labels 0.. in order
    want = {(i, present.index(int(v))): int(((lab == v) & dense[i]).sum())
            for i in range(30) for v in np.unique(lab[dense[i]]) if v}
    assert {(int(a), int(b)): int(n) for a, b, n in zip(ti, pi, inter)} == want


@pytest.mark.parametrize("matching", ["greedy", "dsb"])
@pytest.mark.parametrize("seed", range(40))
def test_random_small_images_match_naive(seed, matching):
    """Rectangles give many IoUs of exactly k/20 and many ties: exact comparison and the
    greedy order must agree with the naive reference, whichever side overlaps."""
    rng = np.random.default_rng(seed)
    shape = (12, 16)
    n = int(rng.integers(0, 9))
    boxes = np.stack([rng.integers(0, 9, n), rng.integers(2, 5, n),
                      rng.integers(0, 12, n), rng.integers(2, 6, n)], axis=1)
    truth = [_rect(r, r + h, c, c + w, shape) for r, h, c, w in boxes]
    pred = []
    for r, h, c, w in boxes:  # jittered copies, some dropped, some doubled
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            d = rng.integers(-1, 2, 4)
            r0, c0 = max(0, r + d[0]), max(0, c + d[2])
            pred.append(_rect(r0, max(r0 + 1, r + h + d[1]), c0, max(c0 + 1, c + w + d[3]), shape))
    pred += [_rect(r, r + 2, c, c + 3, shape) for r, c in rng.integers(0, 10, (2, 2))]
    if seed % 2:  # non-overlapping truth half of the time
        truth = encode_labels(decode_labels(truth, shape))
    if seed % 3:  # non-overlapping predictions two thirds of the time
        pred = encode_labels(decode_labels(pred, shape))
    want_tp, want_scores = naive_image_score(truth, pred, shape, matching)
    got = match_image(truth, pred, shape, matching=matching)
    assert got.tp.tolist() == want_tp.tolist()
    assert np.allclose(got.scores, want_scores)


def test_training_validation_config_names_the_rule():
    from cellseg.config import load_train_config
    from cellseg.errors import UserError

    assert load_train_config("unet_tiny").val.matching == "dsb"
    cfg = load_train_config("unet_tiny", ["val.matching=greedy"])
    assert cfg.val.matching == "greedy"
    with pytest.raises(UserError, match="val.matching 'foo' is not a matching rule"):
        load_train_config("unet_tiny", ["val.matching=foo"])
