"""InstanceDataset, mask cache, joint augmentation and loaders; real-data training smoke tests."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import torch

from cellseg.core import rle  # noqa: E402
from cellseg.data.datasets import InstanceDataset, build_loader, record_layers  # noqa: E402
from cellseg.data.record import ImageRecord  # noqa: E402
from cellseg.data.targets import TargetSpec, masks_from_layers  # noqa: E402
from cellseg.data.transforms import apply_augment, build_augment, normalise, resolve_norm  # noqa: E402
from cellseg.io import write_png  # noqa: E402
from cellseg.models import get_family  # noqa: E402


def spec_of(name: str, **build_args) -> TargetSpec:
    """The family's target spec (what train.py hands the data pipeline)."""
    return get_family(name).target_spec(**build_args)

UNET_TINY = dict(encoder_name="tu-mobilenetv3_small_050", decoder_channels=(32, 16, 16, 8, 8))
RCNN_TINY = dict(backbone="resnet18", fpn_channels=32, box_head_dim=128, mask_head_channels=32,
                 rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200,
                 box_batch_size_per_image=64)


def make_record(tmp_path, name: str = "img0", cell_type: str = "shsy5y", seed: int = 1,
                shape=(96, 112)) -> tuple[ImageRecord, np.ndarray, np.ndarray]:
    """A synthetic image written as PNG and its record with RLE annotations."""
    from cellseg.data.synthetic import render

    image, masks = render(cell_type, seed, shape=shape)
    path = tmp_path / f"{name}.png"
    write_png(path, image)
    masks = np.stack(masks)
    record = ImageRecord(name, path, shape[0], shape[1], cell_type=cell_type, source="synthetic",
                         rles=tuple(rle.encode(m) for m in masks))
    return record, image, masks


def test_record_layers_keep_every_instance_and_overlap(tmp_path):
    record, _, masks = make_record(tmp_path)
    over = masks.copy()
    over[1] |= over[0]  # an overlapping pair, as in competition training masks
    rec = ImageRecord("o", record.image_path, *record.shape, rles=tuple(rle.encode(m) for m in over))
    layers = record_layers(rec)
    assert layers.dtype == np.uint16 and len(layers) >= 2  # the overlap needs a second layer
    assert np.array_equal(masks_from_layers(layers, len(over)), over)


def test_window_and_layers_keep_every_instance_and_overlap(tmp_path):
    import albumentations as A

    from cellseg.data.targets import crops_from_masks, crops_to_layers

    record, image, masks = make_record(tmp_path)
    masks[1] |= masks[0]  # overlap
    masks[2, 40:60, 40:60] = True
    layers = crops_to_layers(crops_from_masks(masks), masks.shape[1:])
    assert layers.dtype == np.uint16 and 2 <= len(layers) < len(masks)
    assert np.array_equal(masks_from_layers(layers, len(masks)), masks)
    # an identity augmentation returns the overlapping masks unchanged
    img, got, labels = apply_augment(A.Compose([]), image, masks, np.arange(len(masks)))
    assert np.array_equal(img, image) and np.array_equal(got, masks)
    assert labels.tolist() == list(range(len(masks)))


def test_bad_rle_names_the_image_and_instance(tmp_path):
    record, _, _ = make_record(tmp_path)
    bad = ImageRecord("bad", record.image_path, *record.shape, rles=("5 3", "9 2 4 1"))
    with pytest.raises(rle.RLEError, match="image bad .*instance 1"):
        record_layers(bad)


def test_dataset_without_augment_returns_aligned_image_and_target(tmp_path):
    record, image, masks = make_record(tmp_path)
    norm = resolve_norm("dataset", 1)
    ds = InstanceDataset([record], spec_of("unet", norm="dataset", in_channels=1))
    x, target = ds[0]
    assert x.shape == (1, 96, 112) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(normalise(image, norm)))
    assert np.array_equal(target["maps"][0].numpy() > 0, masks.any(0))
    assert target["image_id"] == "img0"


def test_flip_moves_image_and_masks_together(tmp_path):
    import albumentations as A

    record, image, masks = make_record(tmp_path)
    ds = InstanceDataset([record], spec_of("maskrcnn"),
                         augment=A.Compose([A.HorizontalFlip(p=1.0)]))
    img, layers, labels = ds.load(0)
    assert np.array_equal(img, image[:, ::-1])
    assert np.array_equal(masks_from_layers(layers, len(masks)), masks[:, :, ::-1])
    assert labels.tolist() == [0] * len(masks)


def test_random_augment_keeps_alignment_and_drops_vanished_masks():
    # image intensity encodes mask membership, so alignment can be checked after any warp
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 200, 200), bool)
    for i in range(40):
        y, x = rng.integers(0, 184, 2)
        masks[i, y:y + 16, x:x + 16] = True
    image = np.where(masks.any(0), 220, 30).astype(np.uint8)
    aug = build_augment(crop_size=64, brightness=0.0, contrast=0.0)
    aug.set_random_seed(0)
    seen = set()
    for _ in range(6):
        img, got, labels = apply_augment(aug, image, masks, np.arange(40))
        assert img.shape == (64, 64) and got.shape[1:] == (64, 64)
        assert len(got) == len(labels) < 40  # a 64 px crop cannot keep all 40 squares
        assert all(m.any() for m in got)
        agree = ((img > 125) == got.any(0)).mean() if len(got) else float((img <= 125).all())
        assert agree > 0.99  # only rescaled edges may disagree (bilinear image, nearest masks)
        seen.add(tuple(labels))
    assert len(seen) > 1  # the augmentation is random


def test_mask_cache_is_used_after_first_access(tmp_path, monkeypatch):
    record, _, masks = make_record(tmp_path)
    cache = tmp_path / "cache"
    ds = InstanceDataset([record], spec_of("unet"), cache_dir=cache)
    ds[0]
    ds[0]
    assert ds.decoded == 1
    files = list(cache.glob("img0-*.codes.npy"))
    assert len(files) == 1 and len(list(cache.glob("img0-*.image.npy"))) == 1
    # a fresh data set (another worker or run) reads the file and never decodes RLE
    import cellseg.data.datasets as datasets

    def boom(*a, **k):
        raise AssertionError("RLE decoded although the cache holds this image")

    monkeypatch.setattr(datasets.rle_codec, "indices", boom)
    monkeypatch.setattr(ImageRecord, "read_image", boom)
    fresh = pickle.loads(pickle.dumps(InstanceDataset([record], spec_of("unet"), cache_dir=cache)))
    _, target = fresh[0]
    assert fresh.decoded == 0
    assert np.array_equal(target["maps"][0].numpy() > 0, masks.any(0))
    # changed annotations use another file
    monkeypatch.undo()
    edited = ImageRecord(record.image_id, record.image_path, *record.shape, rles=record.rles[:-1])
    InstanceDataset([edited], spec_of("unet"), cache_dir=cache)[0]
    assert len(list(cache.glob("img0-*.codes.npy"))) == 2


def test_class_map_labels_and_errors(tmp_path):
    record, _, masks = make_record(tmp_path, cell_type="cort", seed=2)
    spec = spec_of("maskrcnn", class_per_cell_type=True, cell_types=("shsy5y", "astro", "CORT"))
    _, target = InstanceDataset([record], spec)[0]
    assert target["labels"].tolist() == [3] * len(masks)
    with pytest.raises(ValueError, match="cort"):
        InstanceDataset([record], spec_of("maskrcnn", class_per_cell_type=True,
                                          cell_types=("shsy5y",)))


def test_loader_batches_crops_with_a_worker(tmp_path):
    records = [make_record(tmp_path, f"im{i}", seed=i)[0] for i in range(3)]
    ds = InstanceDataset(records, spec_of("unet"), augment=True, crop_size=64,
                         cache_dir=tmp_path / "c")
    loader = build_loader(ds, batch_size=2, shuffle=True, workers=1,
                          collate_fn=get_family("unet").collate)
    batches = list(loader)
    assert len(batches) == 1  # drop_last while shuffling
    images, targets = batches[0]
    assert images.shape == (2, 3, 64, 64) and targets["maps"].shape == (2, 3, 64, 64)
    assert len(list((tmp_path / "c").glob("*.codes.npy"))) == 2  # written by the worker


def _one_step(family, model, ds, batch_size=1):
    images, targets = family.collate([ds[i] for i in range(batch_size)])
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = family.loss(model, images, targets)
    assert torch.isfinite(losses["loss"]), losses
    losses["loss"].backward()
    opt.step()
    return losses


def test_real_sartorius_crop_trains_both_families(shared_sartorius, tmp_path):
    from cellseg.data import sartorius

    records = sartorius.load_train(shared_sartorius)
    assert records and records[0].n_instances == 395
    torch.manual_seed(0)
    for name, kwargs in (("unet", UNET_TINY), ("maskrcnn", RCNN_TINY)):
        family = get_family(name)
        model = family.build(**kwargs)
        ds = InstanceDataset(records, family.target_spec(**kwargs), augment=True, crop_size=128,
                             cache_dir=tmp_path / "cache")
        _one_step(family, model, ds)
    # the two data sets shared one cache file
    assert len(list((tmp_path / "cache").glob("*.codes.npy"))) == 1


def test_real_livecell_crop_trains_unet(shared_livecell):
    from cellseg.data import livecell

    records = livecell.load(shared_livecell, split="val")[:1]
    torch.manual_seed(0)
    family = get_family("unet")
    model = family.build(**UNET_TINY, norm="dataset")
    ds = InstanceDataset(records, family.target_spec(**UNET_TINY, norm="dataset"), augment=True,
                         crop_size=128)
    x, target = ds[0]
    assert x.shape == (3, 128, 128) and target["maps"].shape == (3, 128, 128)
    _one_step(family, model, ds)


@pytest.mark.parametrize("family_name", ["unet", "maskrcnn"])
@pytest.mark.parametrize("augment", [None, {}])
def test_image_without_cells_gives_empty_targets(tmp_path, family_name, augment):
    record, _, _ = make_record(tmp_path)
    empty = ImageRecord("empty", record.image_path, *record.shape)
    x, target = InstanceDataset([empty], spec_of(family_name), augment=augment, crop_size=64)[0]
    assert x.shape == (3, 64, 64)
    if family_name == "unet":
        assert target["maps"].shape == (3, 64, 64) and not target["maps"].any()
    else:
        assert target["boxes"].shape == (0, 4) and target["layers"].shape[1:] == (64, 64)
        assert not target["layers"].any()


def test_codes_carry_overlapping_layers_exactly():
    from cellseg.data.targets import codes_from_layers, layers_from_codes

    rng = np.random.default_rng(1)
    layers = rng.integers(0, 6, (3, 40, 50)).astype(np.uint16)
    layers[:, :5] = 0
    codes, table = codes_from_layers(layers)
    assert codes.dtype == np.uint16 and not table[0].any()
    assert np.array_equal(np.moveaxis(table[codes], -1, 0), layers)
    assert np.array_equal(layers_from_codes(codes, table), layers)
    # planes with nothing left (here: outside a crop) are skipped
    assert len(layers_from_codes(codes[:5], table)) == 0
    # more than 65535 distinct id tuples: the codes widen instead of wrapping
    yy, xx = np.mgrid[:300, :300]
    wide = np.stack([yy + 1, xx + 1]).astype(np.uint16)
    codes, table = codes_from_layers(wide)
    assert codes.dtype == np.int32 and np.array_equal(layers_from_codes(codes, table), wide)
