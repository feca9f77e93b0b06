"""cellseg.models.paste: crop masks back into image pixels, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.core.instances import Instances
from cellseg.models.paste import paste_crop, paste_masks, pixel_extent


def _blob(rng: np.random.Generator, shape=(48, 64)) -> np.ndarray:
    """A random irregular blob: a thresholded smoothed noise field around an ellipse."""
    from scipy import ndimage

    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(15, h - 15), rng.uniform(15, w - 15)
    ell = ((yy - cy) / rng.uniform(6, 12)) ** 2 + ((xx - cx) / rng.uniform(6, 14)) ** 2
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2) * 4
    mask = ell + noise < 1
    lab, n = ndimage.label(mask)
    assert n >= 1
    biggest = 1 + np.argmax(ndimage.sum(mask, lab, range(1, n + 1)))
    return lab == biggest


@pytest.mark.parametrize("seed", range(5))
def test_native_size_crop_pastes_back_exactly(seed):
    rng = np.random.default_rng(seed)
    mask = _blob(rng)
    inst = Instances.from_dense(mask[None])
    x0, y0, x1, y1 = inst.boxes[0]
    crop = inst.masks[0].astype(np.float32)
    boxes, masks, mean_prob = paste_masks(crop[None], np.array([[x0, y0, x1, y1]], float),
                                          mask.shape)
    assert tuple(boxes[0]) == (x0, y0, x1, y1)
    np.testing.assert_array_equal(masks[0], inst.masks[0])
    assert mean_prob[0] == pytest.approx(1.0)
    out = Instances(mask.shape, boxes, masks, np.ones(1), np.zeros(1))
    np.testing.assert_array_equal(out.dense(0), mask)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_integer_upscaled_crop_round_trip(factor):
    """A crop at S = k x box size (nearest upscale, as a fixed-size decoder grid would hold it)
    comes back as the original mask on its integer box."""
    mask = _blob(np.random.default_rng(10 + factor))
    inst = Instances.from_dense(mask[None])
    crop = np.kron(inst.masks[0].astype(np.float32), np.ones((factor, factor), np.float32))
    boxes, masks, _ = paste_masks([crop], inst.boxes.astype(float), mask.shape)
    np.testing.assert_array_equal(boxes, inst.boxes)
    np.testing.assert_array_equal(masks[0], inst.masks[0])


def test_paste_inverts_roi_align_sampling():
    """paste_crop uses roi_align(aligned=True)'s coordinate convention: a linear ramp cropped by
    roi_align on a fractional region and pasted back is the ramp again (bilinear is exact on
    linear functions), at every pixel whose centre is inside the crop's sample grid."""
    import torch
    from torchvision.ops import roi_align

    h, w = 60, 80
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    ramp = 0.3 * xx - 0.7 * yy + 5.0
    region = np.array([10.3, 7.6, 51.9, 40.2])
    s = 24
    rois = torch.tensor([[0.0, *region]], dtype=torch.float64)
    crop = roi_align(torch.from_numpy(ramp)[None, None], rois, s, 1.0, 1, aligned=True)[0, 0]
    (x0, y0, x1, y1), values = paste_crop(crop.numpy(), region, (h, w))
    assert (x0, y0, x1, y1) == pixel_extent(region, (h, w)) == (10, 8, 52, 40)
    # pixels whose centre lies between the first and last crop sample centres are interpolated
    bw, bh = (region[2] - region[0]) / s, (region[3] - region[1]) / s
    cx = np.arange(x0, x1) + 0.5
    cy = np.arange(y0, y1) + 0.5
    inner_x = (cx >= region[0] + bw / 2) & (cx <= region[2] - bw / 2)
    inner_y = (cy >= region[1] + bh / 2) & (cy <= region[3] - bh / 2)
    got = values[np.ix_(inner_y, inner_x)]
    want = ramp[y0:y1, x0:x1][np.ix_(inner_y, inner_x)]
    assert inner_x.sum() > 30 and inner_y.sum() > 25
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_region_outside_image_is_clipped():
    crop = np.ones((16, 16), np.float32)
    boxes, masks, _ = paste_masks([crop], np.array([[-10.0, 50.0, 10.0, 70.0]]), (60, 80))
    assert tuple(boxes[0]) == (0, 50, 10, 60)
    assert masks[0].shape == (10, 10) and masks[0].all()
    # a region entirely outside the image gives an empty instance
    boxes, masks, mean_prob = paste_masks([crop], np.array([[100.0, 0.0, 120.0, 10.0]]), (60, 80))
    assert tuple(boxes[0]) == (0, 0, 0, 0) and masks[0].shape == (0, 0) and mean_prob[0] == 0


def test_mask_rcnn_style_28x28_mask_and_mean_prob():
    """A 28x28 probability map (Mask R-CNN head) pasted into a 40x30 box: the mask is where the
    bilinearly resampled probability exceeds the threshold; mean_prob averages inside it."""
    yy, xx = np.mgrid[:28, :28]
    prob = np.where((yy - 13.5) ** 2 + (xx - 13.5) ** 2 < 100, 0.9, 0.1).astype(np.float32)
    boxes, masks, mean_prob = paste_masks(prob[None], np.array([[5.0, 6.0, 45.0, 36.0]]), (50, 60),
                                          tight=False)
    assert tuple(boxes[0]) == (5, 6, 45, 36)
    assert masks[0].shape == (30, 40)
    assert masks[0][15, 20] and not masks[0][0, 0]
    assert 0.8 < mean_prob[0] <= 0.9
    frac = masks[0].mean()
    assert abs(frac - np.pi * 100 / 28 ** 2) < 0.05  # the disc keeps its relative area


def test_empty_and_bad_inputs():
    boxes, masks, mean_prob = paste_masks(np.zeros((1, 8, 8)), np.array([[0.0, 0.0, 8.0, 8.0]]),
                                          (10, 10))
    assert tuple(boxes[0]) == (0, 0, 0, 0) and masks[0].shape == (0, 0) and mean_prob[0] == 0
    boxes, masks, mean_prob = paste_masks(np.zeros((0, 8, 8)), np.zeros((0, 4)), (10, 10))
    assert boxes.shape == (0, 4) and masks == [] and mean_prob.shape == (0,)
    with pytest.raises(ValueError, match="x1 > x0"):
        paste_crop(np.ones((4, 4)), (5.0, 5.0, 5.0, 9.0), (10, 10))
    with pytest.raises(ValueError, match="2 crops for 1 regions"):
        paste_masks(np.ones((2, 4, 4)), np.zeros((1, 4)), (10, 10))
