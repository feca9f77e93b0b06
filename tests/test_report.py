"""The one overlay (cellseg.report): outlines of runs, the TP/FP/FN overlay and predict's
per-instance overlay."""

import numpy as np
from scipy import ndimage

from cellseg.core.masks import runs_from_labels, runs_from_rles
from cellseg.core.rle import encode
from cellseg.report import gray_rgb, instance_overlay, outline, outline_labels


def _labels() -> np.ndarray:
    """(40, 50) label image: touching cells, a cell cut by the border, a one-pixel cell."""
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2          # touches cell 1
    lab[0:8, 40:50] = 3           # cut by the top and right borders
    yy, xx = np.mgrid[:40, :50]
    lab[(yy - 28) ** 2 + (xx - 20) ** 2 < 36] = 4
    lab[35, 45] = 5
    return lab


def _old_predict_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """predict.save_overlay's drawing before it moved to report (the reference)."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= labels > 0
    rng = np.random.default_rng(0)
    palette = rng.integers(64, 256, size=(int(labels.max(initial=0)) + 1, 3), dtype=np.uint8)
    out = np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2)
    out[edge] = palette[labels[edge]]
    return out


def test_instance_overlay_matches_old_predict_overlay_off_the_border():
    lab = _labels()
    image = np.random.default_rng(1).integers(0, 256, lab.shape, dtype=np.uint8)
    new = instance_overlay(image, runs_from_labels(lab))
    old = _old_predict_overlay(image, lab)
    assert new.dtype == np.uint8 and new.shape == (*lab.shape, 3)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(new[inner], old[inner])
    # the one intended change: a cell cut by the border now gets a closed outline there
    top_of_3 = (0, slice(41, 49))
    assert (old[top_of_3] == image[top_of_3][:, None]).all()
    assert (new[top_of_3] != image[top_of_3][:, None]).any(axis=1).all()


def test_outline_equals_per_instance_erosion_with_overlaps():
    rng = np.random.default_rng(2)
    h, w = 30, 40
    masks = []
    for _ in range(6):  # overlapping random blobs
        m = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        m[y:y + rng.integers(3, 12), x:x + rng.integers(3, 14)] = True
        masks.append(m)
    runs = runs_from_rles([encode(m) for m in masks], (h, w))
    assert runs.overlapping()
    cross = ndimage.generate_binary_structure(2, 1)
    for thickness in (1, 2):
        edges = [m & ~ndimage.binary_erosion(m, cross, iterations=thickness, border_value=0)
                 for m in masks]
        which = [4, 0, 2]
        np.testing.assert_array_equal(outline(runs, which, thickness),
                                      np.logical_or.reduce([edges[k] for k in which]))
        lab = outline_labels(runs, which, thickness)
        want = np.zeros((h, w), np.int64)
        for k in which:  # drawn in the order of ``which``: the later one wins
            want[edges[k]] = k + 1
        np.testing.assert_array_equal(lab, want)
    assert not outline_labels(runs, []).any()


def test_gray_rgb_plain_and_stretched():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    plain = gray_rgb(img, stretch=False)
    np.testing.assert_allclose(plain[..., 1], img / 255.0)
    stretched = gray_rgb(img)
    assert stretched.max() <= 0.85 + 1e-12 and stretched.min() == 0.0
