"""Tile geometry, blending of dense tiles and mapping of tile instances (pure numpy + OpenCV).

An image is optionally upscaled (``scale``), padded at the bottom/right up to at least one tile
(mirror padding, so cells at the border look natural to the network), and cut into tiles of
``tile_hw`` placed edge to edge with ``overlap`` pixels: no partial tile, the last tile of a row
or column is shifted back to end exactly at the border.

Dense outputs are blended with ``taper_window``: separable, ramping over the overlap and floored
at ``floor`` > 0, so every pixel gets a positive total weight and a tile's unreliable border
contributes little where a neighbour sees the same pixel in its centre. Instance outputs keep a
``cut`` flag: the instance touches an inner edge of its tile (it may be truncated there), which
``cellseg.infer.merge.merge_seams`` uses.
"""

from __future__ import annotations

import math
import numpy as np

from cellseg.core.instances import Instances


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length) (length >= tile, else one tile at 0).

    Consecutive tiles share at least ``overlap`` pixels; the last tile ends at ``length``.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(k * stride, length - tile) for k in range(n)]
    return sorted(set(starts))


def padded_shape(shape: tuple[int, int], tile_hw: tuple[int, int] | None,
                 pad_multiple: int = 32) -> tuple[int, int]:
    """Shape after bottom/right padding: at least one tile, or (no tiling) a multiple of
    ``pad_multiple``."""
    h, w = shape
    if tile_hw is None:
        m = max(int(pad_multiple), 1)
        return (-(-h // m) * m, -(-w // m) * m)
    return (max(h, tile_hw[0]), max(w, tile_hw[1]))


def tile_grid(shape: tuple[int, int], tile_hw: tuple[int, int] | None, overlap: int,
              pad_multiple: int = 32) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """Tiles of an image of ``shape``.

    Returns:
        (padded shape, tile (h, w), list of tile origins (y0, x0)).
    """
    ph, pw = padded_shape(shape, tile_hw, pad_multiple)
    th, tw = (ph, pw) if tile_hw is None else tile_hw
    origins = [(y, x) for y in tile_starts(ph, th, overlap) for x in tile_starts(pw, tw, overlap)]
    return (ph, pw), (th, tw), origins


def pad_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mirror-pad an (H, W) image at the bottom/right to ``shape`` (works for any pad size)."""
    h, w = image.shape[:2]
    if (h, w) == tuple(shape):
        return image
    return np.pad(image, ((0, shape[0] - h), (0, shape[1] - w)), mode="symmetric")


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(round(H * scale), round(W * scale)), at least 1 pixel each."""
    return (max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale))))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to ``shape`` (bilinear up, area down); same dtype."""
    import cv2  # lazy

    if image.shape[:2] == tuple(shape):
        return image
    down = shape[0] * shape[1] < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if down else cv2.INTER_LINEAR
    return cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=interp)


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (K, H, W) float32 maps to (K, *shape); OpenCV wants channels last (K <= 512)."""
    if maps.shape[1:] == tuple(shape):
        return maps
    out = resize_image(np.ascontiguousarray(maps.transpose(1, 2, 0)), shape)
    return np.ascontiguousarray(out.reshape(shape[0], shape[1], -1).transpose(2, 0, 1))


def taper_window(tile_hw: tuple[int, int], overlap: int, floor: float = 0.05) -> np.ndarray:
    """(th, tw) float32 blending weights: separable linear ramps over ``overlap`` pixels at each
    border (pixel centres, so no weight is 0), 1 inside, never below ``floor`` > 0."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        m = min(int(overlap), n // 2)
        if m > 0:
            edge = (np.arange(m, dtype=np.float32) + 0.5) / m
            r[:m] = edge
            r[n - m:] = np.minimum(r[n - m:], edge[::-1])
        return r

    if not floor > 0:
        raise ValueError(f"taper floor must be > 0, got {floor}")
    return np.maximum(np.outer(ramp(tile_hw[0]), ramp(tile_hw[1])), floor).astype(np.float32)


class DenseBlender:
    """Accumulates weighted dense tiles of one image; ``result`` divides by the total weight.

    Memory: (K + 1) x padded H x W float32 per image in flight.
    """

    def __init__(self, padded: tuple[int, int], image_shape: tuple[int, int], window: np.ndarray):
        self.padded = padded
        self.image_shape = image_shape
        self.window = window
        self.acc: np.ndarray | None = None
        self.weight = np.zeros(padded, np.float32)

    def add(self, tile: np.ndarray, y0: int, x0: int, weight: float = 1.0) -> None:
        """Add one (K, th, tw) tile at origin (y0, x0)."""
        if self.acc is None:
            self.acc = np.zeros((tile.shape[0], *self.padded), np.float32)
        th, tw = tile.shape[1:]
        win = self.window * weight
        self.acc[:, y0:y0 + th, x0:x0 + tw] += tile * win
        self.weight[y0:y0 + th, x0:x0 + tw] += win

    def result(self) -> np.ndarray:
        """(K, H, W) float32 blended maps cropped to the (scaled) image."""
        if self.acc is None:
            raise ValueError("no tile was added")
        h, w = self.image_shape
        if not (self.weight[:h, :w] > 0).all():
            raise AssertionError("tiling left pixels without weight: tile grid bug")
        return self.acc[:, :h, :w] / self.weight[None, :h, :w]


def place_tile_instances(inst: Instances, origin: tuple[int, int], tile_hw: tuple[int, int],
                         padded: tuple[int, int], margin: int = 1
                         ) -> tuple[Instances, np.ndarray]:
    """Shift one tile's instances into padded-image coordinates and flag cut ones.

    Returns:
        (instances with image_shape ``padded``, (N,) bool: touches an inner tile edge, i.e. an
        edge with another tile beyond it, within ``margin`` pixels).
    """
    y0, x0 = origin
    th, tw = tile_hw
    b = inst.boxes.astype(np.int64)
    inner_left, inner_top = x0 > 0, y0 > 0
    inner_right, inner_bottom = x0 + tw < padded[1], y0 + th < padded[0]
    cut = ((inner_left & (b[:, 0] <= margin)) | (inner_top & (b[:, 1] <= margin))
           | (inner_right & (b[:, 2] >= tw - margin)) | (inner_bottom & (b[:, 3] >= th - margin)))
    shifted = (b + np.array([x0, y0, x0, y0])).astype(np.int32)
    placed = Instances(padded, shifted, list(inst.masks), inst.scores, inst.labels, dict(inst.extra))
    return placed, np.asarray(cut, bool).reshape(-1)
