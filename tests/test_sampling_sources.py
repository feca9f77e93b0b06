"""samples_per_epoch, per-source weights, per-source splits, source checks, and the rule that
cellseg.data never imports cellseg.models."""

from __future__ import annotations

import ast
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cellseg.config import DataConfig
from cellseg.data.sampling import SourceSampler, build_train_data, source_counts
from cellseg.data.sources import SourceError, load_data
from cellseg.data.targets import TargetSpec

ROOT = Path(__file__).resolve().parents[1]


def test_data_package_never_imports_models():
    for path in sorted((ROOT / "cellseg" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("cellseg.models") for n in names), path


def test_source_counts_follow_weights_and_sum_to_n():
    assert source_counts([6, 100], 40, [3, 1]).tolist() == [30, 10]
    assert source_counts([5, 15], 20).tolist() == [5, 15]  # default: proportional to sizes
    assert source_counts([1, 1, 1], 10, [1, 1, 1]).sum() == 10
    assert source_counts([0, 4], 8, [5, 1]).tolist() == [0, 8]  # an empty source gets nothing
    with pytest.raises(ValueError, match="one weight per entry"):
        source_counts([1, 2], 4, [1])
    with pytest.raises(ValueError, match=">= 0"):
        source_counts([1, 2], 4, [1, -1])


def test_sampler_epoch_length_mix_and_coverage():
    source_of = [0] * 6 + [1] * 100  # 6 competition images, 100 LIVECell images
    s = SourceSampler(source_of, samples_per_epoch=240, weights=[1, 1], seed=3)
    s.set_epoch(0)
    idx = list(s)
    assert len(idx) == len(s) == 240
    per_source = Counter(source_of[i] for i in idx)
    assert per_source == {0: 120, 1: 120}
    # the small source is shown evenly: each of its 6 images exactly 20 times
    assert set(Counter(i for i in idx if i < 6).values()) == {20}
    # reproducible per (seed, epoch), different across epochs
    assert list(s) == idx
    s.set_epoch(1)
    assert list(s) != idx


def test_sampler_default_is_one_pass_over_the_images_and_shards_for_ddp():
    s = SourceSampler([0, 0, 1, 1, 1], seed=0)
    assert sorted(s) == [0, 1, 2, 3, 4]
    ranks = [SourceSampler([0] * 5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 3 and set(a) | set(b) == set(range(5))


def test_build_train_data_uses_the_config(tmp_path):
    from cellseg.data.record import ImageRecord

    recs = [ImageRecord(f"i{k}", tmp_path / f"i{k}.png", 8, 8) for k in range(4)]
    cfg = DataConfig(sources=("a", "b", "c"), samples_per_epoch=12, source_weights=(1.0, 0.0, 3.0),
                     crop_size=None, augment=None)
    ds, sampler = build_train_data(cfg, TargetSpec(kind="maps"), recs, [0, 0, 2, 2], seed=0)
    assert len(ds) == 4 and len(sampler) == 12
    got = Counter(int(i) >= 2 for i in sampler)
    assert got == {False: 3, True: 9}


def _livecell_and_competition(shared_livecell, shared_sartorius):
    return DataConfig(sources=(str(shared_livecell), str(shared_sartorius)),
                      split=("val", "train"), fold=None)


def test_per_source_split_mixes_livecell_val_and_a_competition_folder(shared_livecell,
                                                                     shared_sartorius):
    cfg = _livecell_and_competition(shared_livecell, shared_sartorius)
    train, val, desc, source_of = load_data(cfg, log=lambda m: None)
    assert len(train) == 6 and not val
    assert source_of == [0] * 5 + [1]
    assert desc["split"] == ["val", "train"]
    with pytest.raises(SourceError, match="2 entries for 1 data.sources"):
        load_data(DataConfig(sources=(str(shared_livecell),), split=("val", "train")))


def test_one_split_for_both_names_the_source_and_the_fix(shared_livecell, shared_sartorius):
    cfg = DataConfig(sources=(str(shared_livecell), str(shared_sartorius)), split="val", fold=None)
    with pytest.raises(SourceError, match=f"data source {shared_sartorius} .*split 'val'"):
        load_data(cfg, log=lambda m: None)
    with pytest.raises(SourceError, match="does not exist; fix the path"):
        load_data(DataConfig(sources=("/nonexistent/folder",)))


def test_livecell_json_given_directly_finds_its_images(shared_livecell, tmp_path):
    json_path = shared_livecell / "annotations" / "LIVECell" / "livecell_coco_val.json"
    cfg = DataConfig(sources=(str(json_path),), split="val", fold=None)
    train, _, _, _ = load_data(cfg, log=lambda m: None)
    assert len(train) == 5 and all(Path(r.image_path).is_file() for r in train)
    # a copy away from its images: one line naming the file and the fix
    lonely = tmp_path / "ann.json"
    shutil.copy(json_path, lonely)
    with pytest.raises(SourceError, match=r"images not found .*LIVECell root folder"):
        load_data(DataConfig(sources=(str(lonely),), fold=None), log=lambda m: None)
    assert json.loads(lonely.read_text())["images"]


def test_type_balance_shares_a_source_among_its_cell_types(tmp_path):
    from cellseg.data.record import ImageRecord
    from cellseg.data.sampling import type_strata

    types = ["cort"] * 28 + ["astro"] * 10 + ["shsy5y"] * 2
    recs = [ImageRecord(f"i{k}", tmp_path / f"i{k}.png", 8, 8, cell_type=t)
            for k, t in enumerate(types)]

    def drawn(balance: float) -> Counter:
        cfg = DataConfig(sources=("a",), samples_per_epoch=280, crop_size=None, augment=None,
                         type_balance=balance)
        _, sampler = build_train_data(cfg, TargetSpec(kind="maps"), recs, seed=0)
        return Counter(types[i] for i in sampler)

    # 0: the images' own proportions (7 passes over 40 images)
    assert drawn(0.0) == {"cort": 196, "astro": 70, "shsy5y": 14}
    assert sorted(drawn(1.0).values()) == [93, 93, 94]
    half = drawn(0.5)  # shares ~ sqrt(n_t): 5.29 : 3.16 : 1.41
    assert half["cort"] > half["astro"] > half["shsy5y"] > 14
    # two sources keep their weights; the types share each source's part
    strata, w = type_strata([0, 0, 0, 1], ["a", "a", "b", "a"], [1.0, 3.0], 1.0)
    assert strata.tolist() == [0, 0, 1, 2] and w == [0.5, 0.5, 3.0]


def test_type_balance_on_the_competition_images(shared_sartorius_409):
    """sartorius_409's lopsided types (280 cort, 107 astro, 22 shsy5y) drawn equally often."""
    from cellseg.data.loaders import load_records

    recs = load_records(shared_sartorius_409)
    cfg = DataConfig(sources=(str(shared_sartorius_409),), samples_per_epoch=600,
                     crop_size=None, augment=None, type_balance=1.0)
    _, sampler = build_train_data(cfg, TargetSpec(kind="maps"), recs, seed=0)
    got = Counter(recs[i].cell_type for i in sampler)
    assert got == {"cort": 200, "astro": 200, "shsy5y": 200}
    # every shsy5y image is shown, about as often as the others of its type
    shown = Counter(recs[i].image_id for i in sampler if recs[i].cell_type == "shsy5y")
    assert len(shown) == 22 and max(shown.values()) - min(shown.values()) <= 1
