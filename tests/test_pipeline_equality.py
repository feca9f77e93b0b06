"""Speed must not change what is learned: for the same settings and seeds, the layer pipeline's
images and targets equal those of the pre-issue-12 builders (tests/reference_pipeline.py), on the
real samples and on synthetic images with overlapping truth."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations  # noqa: F401  (a hard dependency: fail, never skip)
import torch  # noqa: F401  (a hard dependency: fail, never skip)

sys.path.insert(0, str(Path(__file__).parent))
import reference_pipeline as ref  # noqa: E402

from cellseg.core import rle  # noqa: E402
from cellseg.data.datasets import InstanceDataset  # noqa: E402
from cellseg.data.record import ImageRecord  # noqa: E402
from cellseg.data.targets import (TargetSpec, layers_from_codes, masks_from_layers,  # noqa: E402
                                  unet_maps)
from cellseg.io import write_png  # noqa: E402

UNET = TargetSpec(kind="maps")
UNET_W2 = TargetSpec(kind="maps", border_width=2, channels=("centre", "cell"))
RCNN = TargetSpec(kind="instances", mask_format="layers", label_offset=1, min_mask_area=3)
PROMPT = TargetSpec(kind="instances", mask_format="full")


def overlapping_record(tmp_path: Path, seed: int, shape=(160, 200), n=60) -> ImageRecord:
    """Synthetic image with touching and overlapping ellipses (overlap depth up to ~4)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    masks = []
    for _ in range(n):
        cy, cx = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)
        ry, rx = rng.uniform(3, 16, 2)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if m.any():
            masks.append(m)
    masks.append(masks[0].copy())  # an exact duplicate, as competition masks sometimes have
    image = (rng.normal(128, 13, shape) + 40 * np.any(masks, 0)).clip(0, 255).astype(np.uint8)
    path = tmp_path / f"syn{seed}.png"
    write_png(path, image)
    return ImageRecord(f"syn{seed}", path, *shape, cell_type="shsy5y", source="synthetic",
                       rles=tuple(rle.encode(m) for m in masks))


def _reference(ds: InstanceDataset, record: ImageRecord, seed: int):
    np.random.seed(seed)
    if ds.augment is not None:
        ds.augment.set_random_seed(seed)
    labels = np.zeros(record.n_instances, np.int64)
    return ref.load_sample(record.read_image(), ref.decode_sparse(record), labels, ds.augment,
                           ds.window, ds.min_visible)


def _new(ds: InstanceDataset, seed: int):
    np.random.seed(seed)
    if ds.augment is not None:
        ds.augment.set_random_seed(seed)
    image, codes, table, classes = ds.load_codes(0)  # what __getitem__ does
    target = ds.target_from_codes(codes, table, classes)
    # the layer form (load + target) gives the same target
    again = ds.target(layers_from_codes(codes, table), classes, image.shape)
    assert target.keys() == again.keys()
    assert all(np.array_equal(target[k], again[k]) for k in target)
    return image, target


def assert_same(record: ImageRecord, spec: TargetSpec, seeds, **kwargs) -> None:
    ds = InstanceDataset([record], spec, **kwargs)
    for seed in seeds:
        img_ref, masks, labels = _reference(ds, record, seed)
        img, target = _new(ds, seed)
        assert np.array_equal(img, img_ref), seed
        if spec.kind == "maps":
            want = ref.unet_maps(masks, spec.channels, spec.border_width)
            assert np.array_equal(target["maps"], want), (seed, np.abs(target["maps"] - want).max())
            continue
        want = ref.maskrcnn_target(masks, labels, spec.min_mask_area)
        assert np.array_equal(target["boxes"], want["boxes"]), seed
        assert np.array_equal(target["labels"], want["labels"] - 1 + spec.label_offset), seed
        got = (masks_from_layers(target["layers"], len(target["boxes"])) if "layers" in target
               else target["masks"].astype(bool))
        assert np.array_equal(got, want["masks"].astype(bool)), seed


AUGMENTS = [
    dict(augment={}, crop_size=96),                       # recipe augmentation, crops
    dict(augment={"scale": (0.5, 1.5)}, crop_size=64),    # stronger zoom, smaller crops
    dict(augment={}, crop_size=None),                     # whole images (Mask R-CNN recipes)
    dict(augment=None, crop_size=None),                   # no augmentation at all
]


@pytest.mark.parametrize("kwargs", AUGMENTS, ids=["crop96", "zoom-crop64", "whole", "none"])
@pytest.mark.parametrize("spec", [UNET, UNET_W2, RCNN, PROMPT], ids=["unet", "unet-w2", "rcnn", "full"])
def test_synthetic_overlapping_truth(tmp_path, spec, kwargs):
    record = overlapping_record(tmp_path, seed=3)
    assert_same(record, spec, seeds=range(4), **kwargs)


def test_min_visible_drops_the_same_instances(tmp_path):
    record = overlapping_record(tmp_path, seed=5)
    assert_same(record, UNET, seeds=range(3), augment={}, crop_size=64, min_visible=40)
    assert_same(record, RCNN, seeds=range(3), augment={}, crop_size=64, min_visible=40)


def test_unet_maps_of_masks_equal_reference_on_overlaps(tmp_path):
    record = overlapping_record(tmp_path, seed=7)
    masks = record.masks()
    for width in (1, 3):
        assert np.array_equal(unet_maps(masks, border_width=width),
                              ref.unet_maps(masks, border_width=width))


def _real_records(shared_sartorius, shared_livecell):
    from cellseg.data import livecell, sartorius

    return sartorius.load_train(shared_sartorius) + livecell.load(shared_livecell, "val")


def test_real_samples_unet_recipe_crops(shared_sartorius, shared_livecell):
    for record in _real_records(shared_sartorius, shared_livecell):
        assert_same(record, UNET, seeds=(0, 1), augment={}, crop_size=256)


def test_real_samples_whole_image_instances(shared_sartorius, shared_livecell):
    for record in _real_records(shared_sartorius, shared_livecell):
        assert_same(record, RCNN, seeds=(0,), augment={}, crop_size=None)
