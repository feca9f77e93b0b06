"""The pictures of one image in the results viewer: a JPEG of the image and transparent PNG layers
of outlines, coloured by outcome at IoU > 0.5 (the competition's first threshold).

Layers (each an RGBA PNG the size of the image, stacked by the page, toggled one by one):

* ``truth``: every true cell, blue (shared by all runs of a page);
* ``pred`` (one per run): predictions matched to a true cell, green; without truth, every
  prediction, cyan;
* ``errors`` (one per run): missed true cells (false negatives) yellow, false positives red,
  near-misses magenta (a false positive whose best IoU with a true cell lies in [0.3, 0.5):
  the right cell, a poor mask).

Outlines come from ``cellseg.report.outline_labels`` (the kit's one outline), matching from
``cellseg.core.metrics`` (the one metric): this module only colours and encodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg.core.masks import Runs
from cellseg.core.metrics import ImageResult, intersections

# palette index -> RGB of the layers' PNGs (index 0 transparent)
BLUE, GREEN, CYAN, YELLOW, RED, MAGENTA = 1, 2, 3, 4, 5, 6
PALETTE = ((0, 0, 0), (70, 140, 255), (40, 230, 60), (0, 230, 230), (255, 220, 0),
           (255, 40, 40), (240, 70, 255))
NEAR_MISS = 0.3  # lower end of a near-miss's best IoU (the upper end is the match threshold)


@dataclass(frozen=True)
class Outcome:
    """Per-instance outcome of one run on one image, at IoU > 0.5.

    Attributes:
        matched_t: (T,) bool, true cells matched by a prediction.
        matched_p: (P,) bool, predictions matched to a true cell.
        near_p: (P,) bool, unmatched predictions whose best IoU is in [0.3, 0.5).
        mean_iou: mean IoU of the matched pairs (nan without a pair).
    """

    matched_t: np.ndarray
    matched_p: np.ndarray
    near_p: np.ndarray
    mean_iou: float

    @property
    def n_near(self) -> int:
        return int(self.near_p.sum())


def outcome(truth: Runs, pred: Runs, result: ImageResult) -> Outcome:
    """Classify the cells of one image from its ``match_image`` result (matches at IoU > 0.5);
    near-misses need every pair's IoU, taken from ``metrics.intersections``."""
    matched_t = np.zeros(truth.n, bool)
    matched_p = np.zeros(pred.n, bool)
    if result.matches.size:
        matched_t[result.matches[:, 0]] = True
        matched_p[result.matches[:, 1]] = True
    best = np.zeros(pred.n)
    ti, pi, inter = intersections(truth, pred)
    if ti.size:
        iou = inter / (truth.areas[ti] + pred.areas[pi] - inter)
        np.maximum.at(best, pi, iou)
    near = ~matched_p & (best >= NEAR_MISS) & (best <= 0.5)
    mean_iou = float(np.mean(result.match_iou)) if result.match_iou.size else float("nan")
    return Outcome(matched_t, matched_p, near, mean_iou)


def base_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    """JPEG bytes of an (H, W) uint8 image, contrast stretched (0.5-99.5 percentiles to 0-255):
    phase-contrast images are dim and flat, and outlines need a readable background."""
    import cv2

    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., 0]
    sample = img[::4, ::4]
    lo, hi = np.percentile(sample, (0.5, 99.5))
    lut = np.clip((np.arange(256) - lo) * (235.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", lut[img.astype(np.uint8)],
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def layer_png(classes: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes of one layer: an (H, W) uint8 map of ``PALETTE`` indices, 0 transparent
    (a palette PNG: one byte a pixel, so encoding is fast and outlines compress well)."""
    import io

    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8), mode="P")
    im.putpalette([v for rgb in PALETTE for v in rgb])
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, compress_level=compress_level)
    return buf.getvalue()


def _lut(n: int, *rows: tuple[Any, int]) -> np.ndarray:
    """(n + 1,) uint8: 0 for label 0, then the palette index of instance k at k + 1 (``rows``:
    (selector of instances, palette index) pairs, later ones win)."""
    lut = np.zeros(n + 1, np.uint8)
    for sel, index in rows:
        lut[1:][sel] = index
    return lut


def truth_layer(truth_edge: np.ndarray, n_true: int) -> bytes:
    """The ``truth`` layer: every true cell's outline, blue.

    Args:
        truth_edge: (H, W) int ``outline_labels`` of all true cells.
    """
    return layer_png(_lut(n_true, (slice(None), BLUE))[truth_edge])


def run_layers(truth_edge: np.ndarray | None, pred_edge: np.ndarray, n_pred: int,
               out: Outcome | None) -> tuple[bytes, bytes | None]:
    """``(pred, errors)`` layers of one run; without truth (``out`` None) ``pred`` outlines
    every prediction in cyan and there is no errors layer.

    Args:
        truth_edge, pred_edge: (H, W) int ``outline_labels`` of all true / predicted cells.
    """
    if out is None:
        return layer_png(_lut(n_pred, (slice(None), CYAN))[pred_edge]), None
    assert truth_edge is not None
    pred = layer_png(_lut(n_pred, (out.matched_p, GREEN))[pred_edge])
    errors = _lut(out.matched_t.size, (~out.matched_t, YELLOW))[truth_edge]
    err_p = _lut(n_pred, (~out.matched_p, RED), (out.near_p, MAGENTA))[pred_edge]
    np.copyto(errors, err_p, where=err_p > 0)  # predictions' errors over missed truth
    return pred, layer_png(errors)
