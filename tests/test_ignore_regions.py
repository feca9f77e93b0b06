"""Ignored regions (``ignore.csv`` / ``ImageRecord.ignore_rles``): the pseudo-labelling teacher's
dropped cells are written, read back, carried through augmentation and left out of the UNet
loss, on the real Sartorius sample's cells."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import torch  # noqa: E402

from cellseg.core.instances import Instances  # noqa: E402
from cellseg.data.datasets import InstanceDataset, record_layers  # noqa: E402
from cellseg.data.targets import (codes_from_layers, split_ignore, split_ignore_layers,  # noqa: E402
                                  unet_maps_from_layers)
from cellseg.models import get_family  # noqa: E402


@pytest.fixture(scope="module")
def real(shared_sartorius):
    """The real sample's record and its cells as a teacher's non-overlapping final instances,
    every third cell unsure (score 0.5), the rest confident (0.95)."""
    from cellseg.data import sartorius

    record = sartorius.load_train(shared_sartorius)[0]
    labels = record.label_image()
    n = int(labels.max())
    return record, Instances.from_label_image(labels, np.where(np.arange(n) % 3 == 0, 0.5, 0.95))


def _pseudo(tmp_path, monkeypatch, record, inst, ignore_dropped: bool):
    """``pseudo_label`` on the real image with the teacher's prediction fixed to ``inst``."""
    import cellseg.infer.predict as predict
    from cellseg.infer.config import load_inference_config
    from cellseg.pseudo import PseudoSettings, pseudo_label

    monkeypatch.setattr(predict, "predict_images", lambda models, pixels, cfg, **kw: [inst])
    unlabeled = dataclasses.replace(record, rles=())
    out = tmp_path / "pl"
    prov = pseudo_label([None], [unlabeled], load_inference_config(None), out,
                        PseudoSettings(min_score=0.9, min_area=1, min_keep_fraction=0.5,
                                       cell_type="shsy5y", ignore_dropped=ignore_dropped),
                        progress=False, log=lambda m: None)
    return out, prov


def test_pseudo_label_writes_dropped_cells_and_training_reads_them(tmp_path, monkeypatch, real):
    from cellseg.data.loaders import load_records

    record, inst = real
    unsure = inst.scores < 0.9
    out, prov = _pseudo(tmp_path, monkeypatch, record, inst, ignore_dropped=True)
    assert prov["counts"]["cells"] == int((~unsure).sum())
    assert prov["counts"]["cells_ignored"] == int(unsure.sum()) > 100
    (back,) = load_records(out)
    assert back.rles == tuple(inst.select(np.flatnonzero(~unsure)).to_rles())
    assert back.ignore_rles == tuple(inst.select(np.flatnonzero(unsure)).to_rles())

    # the data set: maps of the kept cells only, "ignore" exactly on the dropped cells' pixels
    spec = get_family("unet").target_spec(encoder_name="resnet18", in_channels=1)
    _, target = InstanceDataset([back], spec)[0]
    labels = inst.to_label_image()
    dropped_px = np.isin(labels, np.flatnonzero(unsure) + 1)
    np.testing.assert_array_equal(target["ignore"].numpy(), dropped_px.astype(np.uint8))
    kept_only = dataclasses.replace(back, ignore_rles=())
    _, plain = InstanceDataset([kept_only], spec)[0]
    assert "ignore" not in plain
    torch.testing.assert_close(target["maps"], plain["maps"], rtol=0, atol=0)

    # without the switch the same labelling writes no ignore.csv (and removes a stale one)
    out2, prov2 = _pseudo(tmp_path, monkeypatch, record, inst, ignore_dropped=False)
    assert out2 == out and not (out / "ignore.csv").exists()
    assert prov2["counts"]["cells_ignored"] == 0 and load_records(out)[0].ignore_rles == ()


def test_regions_survive_augmentation_and_instances_win_overlaps(real) -> None:
    record, inst = real
    n = 40
    kept = inst.select(np.arange(n))
    # regions: the next 30 cells, and one region covering the first cell (a label wins)
    regions = tuple(inst.select(np.arange(n, n + 30)).to_rles()) + (kept.to_rles()[0],)
    rec = dataclasses.replace(record, rles=tuple(kept.to_rles()), ignore_rles=regions)
    layers = record_layers(rec)
    codes, table = codes_from_layers(layers)
    t_clean, ign = split_ignore(codes, table, n)
    l_clean, ign2 = split_ignore_layers(layers, n)
    np.testing.assert_array_equal(ign, ign2)
    assert int(t_clean.max()) == int(l_clean.max()) == n
    first = inst.to_label_image() == 1
    assert ign[first].sum() == 0 and ign.sum() == np.isin(inst.to_label_image(),
                                                          np.arange(n + 1, n + 31)).sum()
    np.testing.assert_array_equal(unet_maps_from_layers(l_clean),
                                  unet_maps_from_layers(record_layers(
                                      dataclasses.replace(rec, ignore_rles=()))))
    assert split_ignore(codes, table, n + 31)[1] is None  # no id above n: no mask at all

    # augmented crops: the ignore mask moves with the image and never covers a cell pixel
    spec = get_family("unet").target_spec(encoder_name="resnet18", in_channels=1)
    ds = InstanceDataset([rec], spec, augment=True, crop_size=128, min_visible=20)
    np.random.seed(0)
    seen = 0
    for _ in range(6):
        _, t = ds[0]
        assert t["ignore"].shape == (128, 128)
        assert not (t["ignore"].bool() & (t["maps"][0] > 0)).any()
        seen += int(t["ignore"].sum())
    assert seen > 0


def test_loss_leaves_ignored_pixels_out(real) -> None:
    record, inst = real
    fam = get_family("unet")
    torch.manual_seed(0)
    model = fam.build(encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4),
                      in_channels=1)
    img = torch.from_numpy(record.read_image()[:128, :128].astype(np.float32) / 255)[None]
    maps = torch.from_numpy(unet_maps_from_layers(
        record_layers(record)[:, :128, :128]))
    ignore = torch.zeros(128, 128, dtype=torch.uint8)
    ignore[:64] = 1
    batch = [(img, {"maps": maps, "ignore": ignore}), (img, {"maps": maps})]
    images, targets = fam.collate(batch)
    assert targets["weight"].shape == (2, 1, 128, 128)
    assert targets["weight"][0, 0, :64].sum() == 0 and targets["weight"][1].min() == 1
    model.eval()  # no batch statistics: the two losses see the same network
    a = fam.loss(model, images, targets)["loss"]
    changed = dict(targets, maps=targets["maps"].clone())
    changed["maps"][0, :, :64] = 1 - changed["maps"][0, :, :64]  # nonsense where ignored
    b = fam.loss(model, images, changed)["loss"]
    torch.testing.assert_close(a, b)
    # weight 1 everywhere is the unweighted loss
    ones = dict(targets, weight=torch.ones_like(targets["weight"]))
    torch.testing.assert_close(fam.loss(model, images, ones)["loss"],
                               fam.loss(model, images, {"maps": targets["maps"]})["loss"])


def test_bad_ignore_csv_names_the_row(tmp_path, shared_sartorius) -> None:
    from cellseg.data import sartorius
    from cellseg.export import write_competition_folder

    (rec,) = sartorius.load_train(shared_sartorius)
    out = tmp_path / "f"
    write_competition_folder([dataclasses.replace(rec, ignore_rles=rec.rles[:2])], out)
    assert sartorius.load_train(out)[0].ignore_rles == rec.rles[:2]
    lines = (out / "ignore.csv").read_text().splitlines()
    (out / "ignore.csv").write_text("\n".join(lines + ["000000000000,1 5,704,520"]) + "\n")
    with pytest.raises(sartorius.DataError, match=r"ignore.csv row 3 \(line 4, id 000000000000\)"
                                                  r": no such image"):
        sartorius.load_train(out)


def test_cellseg_train_runs_on_a_folder_with_regions(tmp_path, monkeypatch, real) -> None:
    from cellseg.training.loop import get_args_parser, main

    record, inst = real
    out, _ = _pseudo(tmp_path, monkeypatch, record, inst, ignore_dropped=True)
    argv = ["--config", "unet_tiny", "--data", str(out), "--out", str(tmp_path / "run"),
            "--no-progress"]
    for kv in ("train.epochs=1", "train.max_steps=2", "train.batch_size=2", "data.crop_size=64",
               "data.fold=null", "data.val_split=null", "data.workers=0"):
        argv += ["--set", kv]
    assert main(get_args_parser().parse_args(argv)) == 0
    assert (tmp_path / "run" / "last.pt").is_file()
