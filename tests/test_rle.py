"""The competition RLE codec: properties on random masks, goldens on the real train.csv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cellseg.core import coco_rle, rle

from cellseg.core.masks import decode_labels, encode_labels, mask_boxes, runs_from_rles

SMALL = dict(max_examples=60, deadline=None)


def shapes():
    return st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def masks(draw):
    shape = draw(shapes())
    return draw(arrays(np.bool_, shape))


@st.composite
def label_images(draw):
    shape = draw(shapes())
    return draw(arrays(np.int32, shape, elements=st.integers(0, 5)))


# ---------------------------------------------------------------- properties on random masks

@settings(**SMALL)
@given(masks())
def test_encode_decode_round_trip(mask):
    text = rle.encode(mask)
    assert np.array_equal(rle.decode(text, mask.shape), mask)
    assert rle.areas([text])[0] == mask.sum()
    assert rle.encode_indices(rle.indices(text, mask.shape)) == text


@settings(**SMALL)
@given(label_images())
def test_encode_labels_equals_per_mask_encode(labels):
    values = np.unique(labels[labels > 0])
    assert encode_labels(labels) == [rle.encode(labels == v) for v in values]


@settings(**SMALL)
@given(label_images())
def test_decode_labels_agrees_with_per_mask_decode(labels):
    values = np.unique(labels[labels > 0])
    texts = encode_labels(labels)
    expected = np.zeros(labels.shape, np.int32)
    for i, t in enumerate(texts):
        expected[rle.decode(t, labels.shape)] = i + 1
    got = decode_labels(texts, labels.shape)
    assert np.array_equal(got, expected)
    # labels renumbered 1..K in ascending order of the original values
    if values.size:
        assert np.array_equal(values[got[labels > 0] - 1], labels[labels > 0])


@settings(**SMALL)
@given(st.lists(arrays(np.bool_, (6, 7)), min_size=1, max_size=6))
def test_overlapping_masks_last_listed_wins(stack):
    texts = [rle.encode(m) for m in stack]
    expected = np.zeros((6, 7), np.int32)
    for i, m in enumerate(stack):
        expected[m] = i + 1
    assert np.array_equal(decode_labels(texts, (6, 7)), expected)


@settings(**SMALL)
@given(masks())
def test_coco_interop_matches_pycocotools(mask):
    from pycocotools import mask as mask_utils

    text = rle.encode(mask)
    ours = coco_rle.rle_to_coco(text, mask.shape)
    theirs = coco_rle.to_coco(mask)
    assert ours == theirs
    assert coco_rle.from_coco(theirs) == text
    decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run counts starting with a background run."""
    flat = np.concatenate(([0], mask.ravel(order="F").astype(np.int8), [2]))
    edges = np.flatnonzero(np.diff(flat) != 0)
    counts = np.diff(np.concatenate(([0], edges)))  # a leading 0 when it starts inside a cell
    return {"size": list(mask.shape), "counts": counts.tolist()}


@settings(**SMALL)
@given(st.lists(arrays(np.bool_, (5, 7)), min_size=1, max_size=5))
def test_batch_coco_conversions_match_pycocotools(stack):
    from pycocotools import mask as mask_utils

    texts = [rle.encode(m) for m in stack]
    refs = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in stack]
    ours = coco_rle.rles_to_coco(texts, (5, 7))
    assert [o["counts"] for o in ours] == [r["counts"].decode() for r in refs]
    assert coco_rle.coco_to_rles(refs) == texts
    assert coco_rle.coco_to_rles([_uncompressed(m) for m in stack]) == texts
    runs = runs_from_rles(texts, (5, 7))
    assert runs.areas.tolist() == [int(mask_utils.area(r)) for r in refs]
    boxes = runs.boxes()
    # one tight box: from the runs and from the dense masks alike
    np.testing.assert_array_equal(boxes, mask_boxes(np.stack(stack)))
    np.testing.assert_array_equal(boxes, [mask_boxes(m) for m in stack])  # one-mask path
    for (box, crop), m in zip(runs.crops(), stack):  # each crop is the mask inside its box
        assert np.array_equal(box, mask_boxes(m)) and crop.sum() == m.sum()
        assert np.array_equal(m[box[1]:box[3], box[0]:box[2]], crop)
    for (x0, y0, x1, y1), ref, m in zip(boxes.tolist(), refs, stack):
        if m.any():
            assert [x0, y0, x1 - x0, y1 - y0] == mask_utils.toBbox(ref).astype(int).tolist()
        else:
            assert [x0, y0, x1, y1] == [0, 0, 0, 0]


def test_decode_labels_dtype_and_empty():
    assert decode_labels([], (3, 4)).shape == (3, 4)
    out = decode_labels(["1 2", "5 1"], (2, 3), dtype=np.uint16)
    assert out.dtype == np.uint16 and out.tolist() == [[1, 1, 0], [0, 2, 0]]


# ---------------------------------------------------------------- every validation rule

@pytest.mark.parametrize("text, rule", [
    ("1 2 3", "odd number of tokens"),
    ("1 x", "non-integer token 'x'"),
    ("1 2.5", "non-integer token"),
    ("99999999999999999999 1", "out of range"),
    ("0 2", "non-positive start"),
    ("-3 2", "non-positive start"),
    ("1 0", "non-positive length"),
    ("5 1 3 1", "unsorted starts"),
    ("1 3 2 1", "overlapping runs"),
    ("12 2", "run past the image end"),
    ("1 9223372036854775807", "run past the image end"),
    ("9223372036854775807 1", "run past the image end"),
])
def test_each_rule_raises(text, rule):
    with pytest.raises(rle.RLEError, match=rule):
        rle.parse(text, (3, 4))
    with pytest.raises(rle.RLEError, match=rf"instance 1: .*{rule}") as info:
        decode_labels(["1 1", text, "12 1"], (3, 4))
    assert info.value.index == 1
    assert rle.find_errors(["1 1", text, "2 1", text], (3, 4))[0][0] == 1
    assert [i for i, _ in rle.find_errors(["1 1", text, "2 1", text], (3, 4))] == [1, 3]


def test_tolerated_whitespace_matches_reference_parser():
    # the vectorised fast path must never disagree with the per-string parser
    texts = ["1 2\t4 1", "  ", "", " 6 1 ", "-1"[1:] + " 1"]
    fast = rle.parse_many(texts, (3, 4))
    ref = [rle.parse(t, (3, 4)) for t in texts]
    assert np.array_equal(fast[0], np.concatenate([r[0] for r in ref]))
    assert fast[2].tolist() == [len(r[0]) for r in ref]


def test_from_coco_rejects_wrong_size():
    with pytest.raises(rle.RLEError, match="counts sum"):
        coco_rle.from_coco({"size": [2, 2], "counts": [1, 2]})


# ---------------------------------------------------------------- goldens on the real train.csv

@pytest.fixture(scope="module")
def real_rles(shared_sartorius):
    import pandas as pd

    df = pd.read_csv(shared_sartorius / "train.csv")
    assert len(df) == 395
    return df["annotation"].tolist(), (int(df["height"][0]), int(df["width"][0]))


def test_real_rows_decode_in_bounds_and_reencode_identically(real_rles):
    texts, shape = real_rles
    assert shape == rle.SHAPE
    for t in texts:
        starts, lengths = rle.parse(t, shape)
        assert starts.min() >= 0 and (starts + lengths).max() <= shape[0] * shape[1]
        mask = rle.decode(t, shape)
        assert mask.sum() == lengths.sum() == sum(map(int, t.split()[1::2]))
        assert rle.encode(mask) == t
    assert np.array_equal(rle.areas(texts), [rle.decode(t, shape).sum() for t in texts])
    assert rle.find_errors(texts, shape) == []


def test_real_label_path_agrees_with_per_mask_path(real_rles):
    texts, shape = real_rles
    stack = np.stack([rle.decode(t, shape) for t in texts])
    labels = decode_labels(texts, shape)
    alone = stack.sum(axis=0) == 1  # pixels covered by exactly one mask
    owner = np.argmax(stack, axis=0) + 1
    assert np.array_equal(labels[alone], owner[alone])
    # contested pixels go to the last mask listed
    covered = stack.any(axis=0)
    last = stack.shape[0] - np.argmax(stack[::-1], axis=0)
    assert np.array_equal(labels[covered], last[covered])
    assert np.array_equal(labels == 0, ~covered)
    # re-encoding the non-overlapping part from the label image gives the masks back
    non_overlapping = [i for i in range(len(texts)) if not (stack[i] & ~alone).any()]
    assert len(non_overlapping) > 20  # shsy5y train masks overlap a lot: 42 of 395 do not
    encoded = dict(zip(np.unique(labels[labels > 0]).tolist(), encode_labels(labels)))
    for i in non_overlapping:
        assert encoded[i + 1] == texts[i]


def test_real_coco_interop_matches_pycocotools(real_rles):
    from pycocotools import mask as mask_utils

    texts, shape = real_rles
    for t in texts[:80]:
        mask = rle.decode(t, shape)
        ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = coco_rle.rle_to_coco(t, shape)
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
        assert int(mask_utils.area(ref)) == rle.areas([t])[0]
        assert np.array_equal(mask_utils.decode(ref).astype(bool), mask)
        assert coco_rle.from_coco(ref) == t
        assert coco_rle.from_coco(ours) == t
