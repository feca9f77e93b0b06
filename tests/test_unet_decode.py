"""UNet targets (cellseg.data.targets) and the watershed decoder (cellseg.models.unet_decode)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellseg.data.targets import (CENTRES, UNET_CHANNELS, boxes_from_masks, contact_border,
                                  unet_maps, unet_maps_from_labels)
from cellseg.models.unet_decode import decode_unet

EIGHT = np.ones((3, 3), bool)


def touching_cells(seed: int, shape=(128, 128), n: int = 14, radius: float = 18.0) -> np.ndarray:
    """Voronoi cells cut by disks around their seeds: cells that touch along straight contacts,
    with background between groups; each cell is then opened with a 3x3 square (sharp wedge tips,
    which no decoder can assign from the maps, become background). (H, W) int32 label image."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, shape[0], (n, 2))
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = np.hypot(yy[None] - pts[:, 0, None, None], xx[None] - pts[:, 1, None, None])
    raw = np.where(d.min(0) < radius, d.argmin(0) + 1, 0)
    out = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        opened, count = ndimage.label(ndimage.binary_opening(raw == k, EIGHT), EIGHT)
        if count:
            largest = 1 + int(np.argmax(np.bincount(opened.ravel())[1:]))
            out[opened == largest] = k
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renaming of the labels, with background 0 fixed."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs.T) == len(np.unique(a)) == len(np.unique(b))


def decodable(labels: np.ndarray) -> bool:
    """The documented precondition of exact decoding: each cell's core (cell minus contact border)
    is one 8-connected piece and every pixel of the cell touches it."""
    border = contact_border(labels)
    for k in np.unique(labels[labels > 0]):
        own = labels == k
        core = own & ~border
        if ndimage.label(core, EIGHT)[1] != 1:
            return False
        if (own & ~ndimage.binary_dilation(core, EIGHT)).any():
            return False
    return True


def test_border_marks_both_sides_of_a_contact_only():
    lab = np.zeros((5, 8), np.int32)
    lab[1:4, 1:4] = 1
    lab[1:4, 4:7] = 2
    border = contact_border(lab)
    expected = np.zeros_like(border)
    expected[1:4, 3:5] = True
    assert np.array_equal(border, expected)
    # width 2 reaches one more column on each side
    assert contact_border(lab, width=2)[1:4, 2:6].all() and not contact_border(lab, width=2)[2, 1]


def test_diagonal_contact_is_a_border():
    lab = np.zeros((4, 4), np.int32)
    lab[0:2, 0:2] = 1
    lab[2:4, 2:4] = 2
    border = contact_border(lab)
    assert border[1, 1] and border[2, 2] and not border[0, 0] and not border[3, 3]


def test_overlapping_masks_give_border_and_centre_peaks():
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:18, 2:16] = True
    masks[1, 2:18, 12:28] = True  # overlaps columns 12..15
    maps = unet_maps(masks)
    assert maps.shape == (3, 20, 30) and maps.dtype == np.float32
    cell, border, centre = maps
    assert np.array_equal(cell > 0, masks.any(0))
    assert border[2:18, 12:16].all()  # overlap pixels
    assert not border[10, 5] and not border[0, 0]
    for m in masks:  # each cell peaks at exactly 1, zero outside cells
        assert centre[m].max() == pytest.approx(1.0)
    assert (centre[~masks.any(0)] == 0).all() and (centre[masks.any(0)] > 0).all()


def test_empty_masks_give_zero_maps():
    maps = unet_maps(np.zeros((0, 16, 16), bool))
    assert maps.shape == (3, 16, 16) and not maps.any()
    assert len(decode_unet(maps)) == 0
    assert boxes_from_masks(np.zeros((0, 4, 4), bool)).shape == (0, 4)


@pytest.mark.parametrize("centre", CENTRES)
def test_decoder_recovers_touching_cells_exactly(centre):
    checked = 0
    for seed in range(12):
        labels = touching_cells(seed)
        if not decodable(labels):
            continue
        checked += 1
        inst = decode_unet(unet_maps_from_labels(labels, centre=centre))
        out = inst.to_label_image()
        assert same_partition(labels, out), f"seed {seed}: decoded partition differs"
        assert len(inst) == len(np.unique(labels)) - 1
        assert np.allclose(inst.scores, 1.0) and np.allclose(inst.extra["mask_prob"], 1.0)
    assert checked >= 6, f"only {checked} synthetic images met the precondition"


def test_decoder_without_border_channel_merges_touching_cells():
    # the border channel is what separates touching cells: dropping it must merge a pair
    lab = np.zeros((20, 40), np.int32)
    lab[2:18, 2:20] = 1
    lab[2:18, 20:38] = 2
    maps = unet_maps_from_labels(lab, channels=("cell", "centre"))
    assert len(decode_unet(maps, channels=("cell", "centre"), seed_thresh=0.0)) == 1
    full = unet_maps_from_labels(lab)
    assert same_partition(lab, decode_unet(full).to_label_image())


def test_decoder_thresholds_and_scores():
    lab = touching_cells(3)
    maps = unet_maps_from_labels(lab)
    noisy = np.clip(maps * 0.8 + 0.1, 0, 1).astype(np.float32)  # soft, network-like maps
    inst = decode_unet(noisy)
    assert 0 < len(inst) <= len(np.unique(lab)) - 1
    assert ((inst.scores > 0.5) & (inst.scores <= 1.0)).all()
    assert inst.areas.min() >= 8
    big = decode_unet(noisy, min_area=10_000)
    assert len(big) == 0
    # a foreground threshold above every probability yields nothing
    assert len(decode_unet(noisy, fg_thresh=0.95)) == 0


def test_decoder_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        decode_unet(np.full((3, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        decode_unet(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="'cell'"):
        decode_unet(np.zeros((1, 8, 8), np.float32), channels=("border",))
    with pytest.raises(ValueError, match="unknown UNet target channel"):
        unet_maps(np.zeros((1, 4, 4), bool), channels=("cell", "distance"))


def test_channel_names_are_the_documented_ones():
    assert UNET_CHANNELS == ("cell", "border", "centre")


def test_perfect_maps_of_real_annotations_decode_to_a_high_score(shared_sartorius, shared_livecell):
    """The target encoding's ceiling on real cells: decoding the maps built from the true masks
    (overlapping Sartorius masks, LIVECell polygons) must score close to 1 with the competition
    metric. Measured: 0.90 (Sartorius shsy5y, 395 cells), 0.95-0.99 (LIVECell)."""
    from cellseg.core import metrics
    from cellseg.data import livecell, sartorius

    cases = [(sartorius.load_train(shared_sartorius)[0], 0.88),
             (livecell.load(shared_livecell, split="val")[2], 0.94)]
    for record, floor in cases:
        inst = decode_unet(unet_maps(record.masks()))
        score = metrics.match_image(list(record.rles), inst.to_rles(), shape=record.shape).score
        assert score > floor, (record.image_id, score)


def _two_lobes(border_ridge: float) -> np.ndarray:
    """(3, 40, 60) maps of one dumbbell-shaped foreground region with two centre peaks (the two
    lobes) and a border ridge of ``border_ridge`` across the neck."""
    yy, xx = np.mgrid[:40, :60]
    lobe1 = np.hypot(yy - 20, xx - 17) < 12
    lobe2 = np.hypot(yy - 20, xx - 43) < 12
    neck = (abs(yy - 20) < 5) & (xx > 17) & (xx < 43)
    cell = (lobe1 | lobe2 | neck).astype(np.float32)
    centre = np.maximum(np.clip(1 - np.hypot(yy - 20, xx - 17) / 12, 0, 1),
                        np.clip(1 - np.hypot(yy - 20, xx - 43) / 12, 0, 1)).astype(np.float32)
    border = np.zeros_like(cell)
    border[:, 29:31] = border_ridge
    border *= cell
    return np.stack([cell, border, centre])


def test_merge_joins_a_cell_split_without_a_border_and_keeps_a_real_contact():
    # two centre peaks seed two markers; with no border between them the merge joins them
    no_ridge = _two_lobes(0.0)
    assert len(decode_unet(no_ridge, seed_thresh=0.5)) == 2
    merged = decode_unet(no_ridge, seed_thresh=0.5, merge_thresh=0.3)
    assert len(merged) == 1
    assert merged.areas[0] == int((no_ridge[0] > 0.5).sum())
    # a predicted border ridge across the neck (two touching cells) keeps them apart
    ridge = _two_lobes(0.45)
    assert len(decode_unet(ridge, seed_thresh=0.5, merge_thresh=0.3)) == 2
    assert len(decode_unet(ridge, seed_thresh=0.5, merge_thresh=0.5)) == 1


def test_merge_is_off_by_default_and_exact_on_perfect_maps():
    labels = touching_cells(3)
    maps = unet_maps_from_labels(labels)
    plain = decode_unet(maps)
    # on perfect maps every contact is a border ridge (value 1), so no merge happens at all
    merged = decode_unet(maps, merge_thresh=0.5)
    assert len(plain) == len(merged) == len(np.unique(labels)) - 1
    assert (plain.to_label_image() == merged.to_label_image()).all()
