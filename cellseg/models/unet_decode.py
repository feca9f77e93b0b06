"""UNet maps -> instances: marker-controlled watershed, pure numpy.

    from cellseg.models.unet_decode import decode_unet
    inst = decode_unet(maps)          # maps: (3, H, W) float32 "cell", "border", "centre" in [0, 1]

Steps (map definitions in ``cellseg.data.targets``):
1. ``fg = cell > fg_thresh``; ``core = fg & (border <= border_thresh)``.
2. Markers: 8-connected components of ``core & (centre > seed_thresh)`` with at least
   ``min_marker_area`` pixels. The border channel cuts touching cells apart; the centre channel keeps
   necks and thin contacts the border missed from merging two cells.
3. ``skimage.segmentation.watershed`` on elevation ``1 - centre + border`` inside ``fg``
   (8-connectivity). Core pixels (elevation < 1) flood before any border pixel (elevation >= 1), so a
   border pixel is claimed by the first core next to it: its own cell when the maps are perfect.
4. Optional (``merge_thresh`` > 0): neighbouring instances whose shared contact has a mean
   ``border`` probability below ``merge_thresh`` are merged (transitively). Large irregular cells
   (astrocytes) often carry two centre peaks, so step 2 seeds them twice and the watershed cuts
   them along a line the network never marked as a border; a true contact between two cells is
   a border ridge. 0 (the default) = off, and the exactness below holds. Measured on the
   competition recipe's models it does not pay (docs/competition.md, "Why astro stays low"), so
   ``cellseg tune`` does not search it; it stays for experiments (``bench.decode_scan``).
5. Instances smaller than ``min_area`` are dropped. Score = mean ``cell`` probability over the
   instance (also ``extra["mask_prob"]``); ``extra["centre_max"]`` = peak centre value.

Exactness (pinned by tests): decoding ``unet_maps_from_labels(labels)`` with the default
thresholds returns exactly the partition of a non-overlapping label image whose cells each have an
8-connected core and whose every pixel touches that core. A cell that is a union of 3x3 squares
(unchanged by a 3x3 binary opening) always meets the second condition: the centre of a 3x3 square
inside the cell sees only its own cell, so it is core. Sharp one-pixel wedge tips in contact with
another cell do not, and no decoder can tell from the maps which side such a pixel belongs to.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cellseg.data.targets import UNET_CHANNELS
from cellseg.core.instances import Instances


# what ``cellseg tune --decode`` searches (coordinate ascent, one value at a time) for the
# keyword arguments of ``decode_unet`` (``InferenceConfig.decode``)
DECODE_GRID: dict[str, tuple[float, ...]] = {
    "seed_thresh": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "fg_thresh": (0.3, 0.4, 0.5, 0.6, 0.7),
    "border_thresh": (0.3, 0.4, 0.5, 0.6, 0.7),
    "min_marker_area": (2, 4, 8, 16, 32),
}


def decode_unet(maps: np.ndarray, *, channels: Sequence[str] = UNET_CHANNELS, fg_thresh: float = 0.5,
                border_thresh: float = 0.5, seed_thresh: float = 0.3, min_marker_area: int = 8,
                min_area: int = 8, merge_thresh: float = 0.0) -> Instances:
    """Decode (K, H, W) float maps in [0, 1] (names in ``channels``) into one image's instances.

    ``channels`` must contain "cell"; "border" and "centre" are optional (missing border = none,
    missing centre = normalised distance transform of the core). Labels are all 0 (one class).
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    maps = np.asarray(maps, dtype=np.float32)
    channels = list(channels)
    if maps.ndim != 3 or maps.shape[0] != len(channels):
        raise ValueError(f"maps must be (K={len(channels)}, H, W) for channels {channels}, "
                         f"got shape {maps.shape}")
    if "cell" not in channels:
        raise ValueError(f"decode_unet needs a 'cell' channel, got channels {channels}")
    if not np.isfinite(maps).all():
        raise ValueError("decode_unet got non-finite values in the maps (NaN/inf network output?)")
    cell = maps[channels.index("cell")]
    border = maps[channels.index("border")] if "border" in channels else np.zeros_like(cell)
    fg = cell > fg_thresh
    core = fg & (border <= border_thresh)
    if "centre" in channels:
        centre = maps[channels.index("centre")]
    else:
        centre = ndimage.distance_transform_edt(core).astype(np.float32)
        centre /= max(float(centre.max()), 1.0)

    eight = np.ones((3, 3), bool)
    markers, n_markers = ndimage.label(core & (centre > seed_thresh), structure=eight)
    if n_markers and min_marker_area > 1:
        sizes = np.bincount(markers.ravel(), minlength=n_markers + 1)
        small = sizes < min_marker_area
        small[0] = False
        markers[small[markers]] = 0
    if not markers.any():
        return Instances(cell.shape)

    elevation = 1.0 - centre + border
    labels = watershed(elevation, markers, connectivity=2, mask=fg)
    if merge_thresh > 0:
        labels = merge_weak_contacts(labels, border, merge_thresh)

    ids = np.unique(labels[labels > 0])
    areas = ndimage.sum_labels(np.ones_like(cell), labels, ids)
    keep = areas >= max(int(min_area), 1)
    if not keep.all():
        drop = np.zeros(int(labels.max()) + 1, bool)
        drop[ids[~keep]] = True
        labels[drop[labels]] = 0
        ids = ids[keep]
    if ids.size == 0:
        return Instances(cell.shape)
    mean_prob = np.asarray(ndimage.mean(cell, labels, ids), np.float32)
    centre_max = np.asarray(ndimage.maximum(centre, labels, ids), np.float32)
    inst = Instances.from_label_image(labels, scores=mean_prob)
    inst.extra["mask_prob"] = mean_prob.copy()
    inst.extra["centre_max"] = centre_max
    return inst


def merge_weak_contacts(labels: np.ndarray, border: np.ndarray, thresh: float) -> np.ndarray:
    """Merge 8-adjacent instances of an (H, W) int label image (0 = background) whose contact has
    a mean ``border`` value (H, W, in [0, 1]) below ``thresh``; merging is transitive (connected
    components of the weak-contact graph). Returns a new (H, W) int32 label image, ids 1..n.

    A contact is every pair of 8-neighbouring pixels with two different non-zero labels; its
    value is the mean of ``border`` over both pixels of every such pair.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.asarray(labels)
    n = int(labels.max())
    if n < 2:
        return labels.astype(np.int32, copy=True)
    border = np.asarray(border, np.float32)
    lows, highs, values = [], [], []
    h, w = labels.shape
    # right, down, down-right, down-left: each unordered 8-neighbour pair once
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[:h - dy, max(0, -dx):w - max(0, dx)]
        b = labels[dy:, max(0, dx):w + min(0, dx) or None]
        ba = border[:h - dy, max(0, -dx):w - max(0, dx)]
        bb = border[dy:, max(0, dx):w + min(0, dx) or None]
        touch = (a != b) & (a > 0) & (b > 0)
        if touch.any():
            lows.append(np.minimum(a[touch], b[touch]))
            highs.append(np.maximum(a[touch], b[touch]))
            values.append(0.5 * (ba[touch] + bb[touch]))
    if not lows:
        return labels.astype(np.int32, copy=True)
    lo, hi, val = np.concatenate(lows), np.concatenate(highs), np.concatenate(values)
    key = lo.astype(np.int64) * (n + 1) + hi
    pairs, inverse = np.unique(key, return_inverse=True)
    mean = np.bincount(inverse, weights=val) / np.bincount(inverse)
    weak = pairs[mean < thresh]
    graph = coo_matrix((np.ones(weak.size), (weak // (n + 1), weak % (n + 1))), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    # component ids -> 1..k (in component order), background stays 0
    lut = np.zeros(n + 1, np.int32)
    present = np.unique(labels[labels > 0])
    _, new_ids = np.unique(component[present], return_inverse=True)
    lut[present] = new_ids.astype(np.int32) + 1
    return lut[labels]
