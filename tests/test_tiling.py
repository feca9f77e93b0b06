"""Tiling: tile geometry, exact reconstruction of dense outputs, seam merging of instance outputs.

Fake families implement the ``cellseg.models.base`` contract with trivial networks, so what is
tested is the tiling/blending/merging code, not a model.
"""

from __future__ import annotations

import numpy as np
import pytest

import torch
from scipy import ndimage  # noqa: E402

from cellseg.infer import predict, stitch, tiling  # noqa: E402
from cellseg.infer.config import InferenceConfig, TypeThresholds  # noqa: E402
from cellseg.infer.merge import merge_seams, vote  # noqa: E402
from cellseg.core.instances import Instances  # noqa: E402


class Linear(torch.nn.Module):
    """y = a * x + b per pixel (a float parameter so the model has a device)."""

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = b

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.a * x + self.b


class DenseFamily:
    """Dense family: one channel = intensity / 255; decode = connected components > 0.5."""

    name, kind = "fake_dense", "dense"

    def preprocess(self, model, images):
        return torch.from_numpy(np.ascontiguousarray(images)).float()[:, None] / 255.0

    def predict_dense(self, model, images):
        return model(images)

    def decode(self, dense, **params):
        lab, _ = ndimage.label(dense[0] > 0.5)
        return Instances.from_label_image(lab)


class ComponentFamily:
    """Instance family: connected components of each tile's foreground (> 127), score 0.9.
    A cell cut by a tile border comes out truncated in that tile, like a real detector's."""

    name, kind = "fake_components", "instances"

    def preprocess(self, model, images):
        return torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]

    def predict_instances(self, model, images):
        out = []
        for img in images[:, 0].cpu().numpy():
            lab, _ = ndimage.label(img > 127)
            inst = Instances.from_label_image(lab)
            inst.scores[:] = 0.9
            out.append(inst)
        return out


def _cfg(**kw) -> InferenceConfig:
    base = dict(tile_size=64, overlap=24, batch_size=3, fill_holes=False,
                default=TypeThresholds(score_thresh=0.1, min_area=1, nms_iou=1.0))
    base.update(kw)
    return InferenceConfig(**base)


@pytest.mark.parametrize("length,tile,overlap", [(100, 64, 16), (64, 64, 8), (520, 256, 64),
                                                 (704, 512, 96), (65, 64, 0), (30, 64, 8)])
def test_tile_starts_cover_edge_to_edge(length, tile, overlap):
    starts = tiling.tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # last tile ends at the border, no partial tile
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= tile - overlap).all()  # overlap at least `overlap`


def test_taper_window_strictly_positive():
    w = tiling.taper_window((64, 80), 24, floor=0.05)
    assert w.shape == (64, 80) and w.min() >= 0.05 and w.max() == 1.0
    assert w[32, 40] > w[0, 0]
    with pytest.raises(ValueError):
        tiling.taper_window((8, 8), 2, floor=0.0)


@pytest.mark.parametrize("shape", [(100, 150), (40, 50), (64, 64), (97, 131)])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_linear_dense_model_reconstructs_input(shape, scale):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    cfg = _cfg(scale=scale, tta=("h", "v", "hv"))
    prep = [stitch._prepare(img, cfg)]
    maps = stitch._dense_maps(Linear(2.0, 0.5), DenseFamily(), prep, cfg, stitch.Timer())[0]
    expected = 2.0 * tiling.resize_image(img, prep[0].scaled).astype(np.float32) / 255 + 0.5
    assert maps.shape == (1, *prep[0].scaled)
    np.testing.assert_allclose(maps[0], expected, atol=1e-5)


def test_dense_tiles_of_several_images_batched_together():
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(90, 70), (64, 64), (130, 100)]]
    cfg = _cfg(batch_size=5)
    prep = [stitch._prepare(i, cfg) for i in imgs]
    sizes = [len(b) for b, _ in stitch._tile_batches(prep, cfg.batch_size)]
    assert sum(sizes) == sum(len(p.origins) for p in prep) and max(sizes) == 5
    maps = stitch._dense_maps(Linear(), DenseFamily(), prep, cfg, stitch.Timer())
    for img, m in zip(imgs, maps):
        np.testing.assert_allclose(m[0], img / 255.0, atol=1e-6)


def _cells_image(shape, boxes) -> np.ndarray:
    img = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = 255
    return img


@pytest.mark.parametrize("scale", [1.0, 1.5, 2.0])
def test_cell_across_a_seam_comes_out_once_and_whole(scale):
    # tile 64, overlap 24, width 150 (at scale 1): tiles start at 0, 40, 80, 86 -> seams
    # everywhere; the big cell spans several tiles, the small ones sit on tile edges
    boxes = [(30, 20, 75, 50), (60, 70, 70, 82), (2, 2, 10, 10), (100, 60, 148, 98)]
    img = _cells_image((100, 150), boxes)
    cfg = _cfg(tile_size=int(64 * scale), overlap=int(24 * scale), scale=scale)
    out = predict.predict_image([(torch.nn.Linear(1, 1), ComponentFamily(), 1.0)], img, cfg)
    got = sorted(tuple(int(v) for v in b) for b in out.boxes)
    assert got == sorted(boxes)
    np.testing.assert_array_equal(out.to_label_image() > 0, img > 0)


def test_cell_larger_than_overlap_cut_everywhere_is_united():
    # a cell wider than any tile: no tile sees it whole, the pieces are united
    img = _cells_image((64, 200), [(10, 20, 190, 40)])
    cfg = _cfg(tile_size=64, overlap=16)
    out = predict.predict_image([(torch.nn.Linear(1, 1), ComponentFamily(), 1.0)], img, cfg)
    assert len(out) == 1
    np.testing.assert_array_equal(out.dense(0), img > 0)


def test_merge_seams_keeps_the_whole_copy():
    shape = (50, 100)
    whole = np.zeros(shape, bool)
    whole[10:30, 40:70] = True
    piece = whole.copy()
    piece[:, 60:] = False  # the part the left tile saw, cut at its right edge x = 60
    inst = Instances.from_dense(np.stack([piece, whole]), scores=np.array([0.95, 0.8]))
    out = merge_seams(inst, np.array([0, 1]), np.array([True, False]))
    assert len(out) == 1 and out.areas[0] == whole.sum()
    # two different cells in different tiles are not merged
    other = np.zeros(shape, bool)
    other[35:45, 0:10] = True
    inst = Instances.from_dense(np.stack([whole, other]))
    assert len(merge_seams(inst, np.array([0, 1]), np.array([True, True]))) == 2


def test_vote_majority_pixels_and_weighted_score():
    shape = (40, 40)
    a = np.zeros(shape, bool)
    a[5:25, 5:25] = True
    b = np.zeros(shape, bool)
    b[5:25, 5:27] = True  # 2 extra columns in one pass only
    lone = np.zeros(shape, bool)
    lone[30:35, 30:35] = True
    p1 = Instances.from_dense(a[None], scores=np.array([0.8]))
    p2 = Instances.from_dense(b[None], scores=np.array([0.6]))
    p3 = Instances.from_dense(np.stack([a, lone]), scores=np.array([1.0, 0.9]))
    out = vote([p1, p2, p3], [1.0, 1.0, 1.0], iou=0.5)
    # the lone cell has 1 of 3 votes: dropped; the extra columns have 1 of 3: dropped
    assert len(out) == 1
    np.testing.assert_array_equal(out.dense(0), a)
    assert out.scores[0] == pytest.approx((0.8 + 0.6 + 1.0) / 3)
    # with weights 1, 1, 2 the third pass alone is half the votes: the lone cell survives
    out = vote([p1, p2, p3], [1.0, 1.0, 2.0], iou=0.5)
    assert len(out) == 2
    assert sorted(out.scores.tolist()) == pytest.approx(sorted([0.9 * 2 / 4, (0.8 + 0.6 + 2) / 4]))


def test_unknown_labels_do_not_outvote_typed_ones():
    m = np.zeros((20, 20), bool)
    m[2:10, 2:10] = True
    typed = Instances.from_dense(m[None], scores=np.array([0.9]), labels=np.array([2]))
    agnostic = Instances.from_dense(m[None], scores=np.array([0.9]), labels=np.array([-1]))
    out = vote([agnostic, typed], [2.0, 1.0])
    assert out.labels.tolist() == [2]


class TypedComponentFamily(ComponentFamily):
    """Per-type head: every component is labelled class 1."""

    def predict_instances(self, model, images):
        out = super().predict_instances(model, images)
        for inst in out:
            inst.labels[:] = 1
        return out


def test_model_class_names_drive_the_cell_type_vote():
    from cellseg.models.base import ModelSpec, attach_spec

    model = attach_spec(torch.nn.Linear(1, 1),
                        ModelSpec("maskrcnn", class_map={"shsy5y": 0, "astro": 1}))
    img = _cells_image((64, 64), [(5, 5, 15, 15), (30, 30, 45, 40)])
    cfg = _cfg(tile_size=None, empty_policy="allow_empty",
               types={"astro": {"score_thresh": 0.1, "min_area": 10_000, "nms_iou": 1.0}})
    spec = [(model, TypedComponentFamily(), 1.0)]
    assert len(predict.predict_image(spec, img, cfg)) == 0  # voted "astro": all too small
    assert len(predict.predict_image(spec, img, cfg, cell_type="shsy5y")) == 2


@pytest.mark.parametrize("src, dst", [((40, 36), (20, 18)), ((45, 33), (30, 22)),
                                      ((17, 23), (34, 46)), ((12, 10), (21, 17)),
                                      ((30, 30), (30, 30))])
def test_area_resize_is_opencvs_inter_area(src, dst):
    import cv2

    from cellseg.core.instances import area_resize

    img = np.random.default_rng(sum(src)).random(src)
    ref = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(area_resize(img, dst), ref, atol=1e-6)


@pytest.mark.parametrize("scale", [2.0, 1.5, 1.37, 0.5, 0.8])
def test_rescale_in_numpy_equals_the_opencv_rescale(scale, monkeypatch):
    """Instances.rescale (numpy) gives the instances the former cv2.INTER_AREA route gave.

    cv2 works in float32: an exact half cover can come out 0.49999997 and lose the pixel that
    "at least half covered" keeps, so the reference rounds cv2's values to 6 decimals."""
    import cv2

    from cellseg.core import instances as core_instances

    rng = np.random.default_rng(int(scale * 100))
    native = (61, 83)
    scaled = tiling.scaled_shape(native, scale)
    masks = np.zeros((25, *scaled), bool)
    yy, xx = np.mgrid[:scaled[0], :scaled[1]]
    for m in masks:  # ellipses of 1-15 px radius anywhere, some cut by the border
        cy, cx = rng.uniform(0, scaled[0]), rng.uniform(0, scaled[1])
        ry, rx = rng.uniform(0.6, 15, 2)
        m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = True
    inst = Instances.from_dense(masks[masks.any(axis=(1, 2))])
    ours = inst.rescale(native)
    monkeypatch.setattr(core_instances, "area_resize", lambda c, s: np.round(cv2.resize(
        c.astype(np.float32), (s[1], s[0]), interpolation=cv2.INTER_AREA), 6))
    ref = inst.rescale(native)
    assert ours.image_shape == ref.image_shape == native
    np.testing.assert_array_equal(ours.boxes, ref.boxes)
    assert len(ours) > 0 and all(np.array_equal(a, b) for a, b in zip(ours.masks, ref.masks))
