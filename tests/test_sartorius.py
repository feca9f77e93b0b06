"""Competition folder loading, CSV validation with row numbers, hole filling and folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg.core import rle
from cellseg.data import folds as folds_mod
from cellseg.data import sartorius
from cellseg.data.record import ImageRecord

HEADER = "id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def row(image_id: str, annotation: str, w: int = 8, h: int = 6, cell_type: str = "astro",
        sample: str = "s1") -> str:
    return f"{image_id},{annotation},{w},{h},{cell_type},11h30m00s,2019-06-16,{sample},0 days"


# ---------------------------------------------------------------- the real sample

def test_load_real_sample(shared_sartorius):
    records = sartorius.load_train(shared_sartorius)
    assert len(records) == 1
    rec = records[0]
    assert rec.image_id == "0030fd0e6378" and rec.cell_type == "shsy5y"
    assert rec.n_instances == 395 and rec.shape == (520, 704) and rec.source == "sartorius"
    assert rec.sample_id == "shsy5y[diff]_E10-4_Vessel-714_Ph_3"
    assert rec.meta["elapsed_timedelta"] == "0 days 11:30:00"
    assert rec.image_path == shared_sartorius / "train" / "0030fd0e6378.png"
    assert rec.read_image().shape == (520, 704)
    # the CSV file itself works as well as the folder, and ids= filters
    assert sartorius.load_train(shared_sartorius / "train.csv")[0].rles == rec.rles
    with pytest.raises(KeyError, match="unknown image id"):
        sartorius.load_train(shared_sartorius, ids=["nope"])


def test_fill_holes_on_real_sample(shared_sartorius):
    from scipy import ndimage

    plain = sartorius.load_train(shared_sartorius)[0]
    filled = sartorius.load_train(shared_sartorius, fill_holes=True)[0]
    changed = [i for i, (a, b) in enumerate(zip(plain.rles, filled.rles)) if a != b]
    assert changed, "the real sample has masks with holes"
    for i in changed[:10] + [j for j in range(5) if j not in changed]:
        full = ndimage.binary_fill_holes(rle.decode(plain.rles[i]))
        assert np.array_equal(rle.decode(filled.rles[i]), full)


def test_load_records_detects_competition_layouts(shared_sartorius):
    from cellseg.data.loaders import detect, load_records

    assert detect(shared_sartorius) == "competition"
    assert detect(shared_sartorius / "train.csv") == "csv"
    assert detect(shared_sartorius / "test") == "images"
    assert load_records(shared_sartorius / "train.csv")[0].n_instances == 395
    assert len(load_records(shared_sartorius, "test")) == 3
    assert len(load_records(shared_sartorius / "test")) == 3
    with pytest.raises(ValueError, match="split must be"):
        load_records(shared_sartorius, "val")


def test_list_test_images(shared_sartorius):
    test = sartorius.list_test(shared_sartorius)
    assert [r.image_id for r in test] == sorted(r.image_id for r in test)
    assert len(test) == 3 and all(r.rles == () and r.shape == (520, 704) for r in test)


# ---------------------------------------------------------------- validation

def test_bad_rows_are_all_named(tmp_path):
    csv = write_csv(tmp_path / "train.csv", [
        row("aaa", "1 3"),
        row("aaa", "1 3 2 2"),      # row 2: overlapping runs
        row("bbb", "1 2 3"),        # row 3: odd tokens
        row("bbb", "40 20"),        # row 4: past the end of 6x8
        row("ccc", "", ),           # row 5: empty
        row("ddd", "1 1", w=0),     # row 6: bad width
    ])
    with pytest.raises(sartorius.DataError) as info:
        sartorius.read_train_csv(csv)
    problems = info.value.problems
    assert problems[0].startswith("train.csv row 2 (line 3, id aaa): overlapping runs")
    assert any(p.startswith("train.csv row 3 (line 4, id bbb): odd number of tokens")
               for p in problems)
    assert any("row 4" in p and "run past the image end" in p for p in problems)
    assert any("row 5" in p and "empty annotation" in p for p in problems)
    assert any("row 6" in p and "width '0'" in p for p in problems)
    # collecting mode drops the bad rows and keeps the good one
    collected: list[str] = []
    df = sartorius.read_train_csv(csv, problems=collected)
    assert len(collected) == len(problems) and df.index.tolist() == [1]


def test_inconsistent_image_rows(tmp_path):
    csv = write_csv(tmp_path / "train.csv", [row("aaa", "1 3"), row("aaa", "9 2", cell_type="cort")])
    with pytest.raises(sartorius.DataError, match=r"rows 1-2 \(id aaa\): cell_type differs"):
        sartorius.read_train_csv(csv)


def test_missing_columns(tmp_path):
    csv = write_csv(tmp_path / "train.csv", ["aaa,1 3"], header="id,predicted")
    with pytest.raises(sartorius.DataError, match="missing column.*annotation") as info:
        sartorius.read_train_csv(csv)
    assert str(csv) in str(info.value)


def test_width_without_height(tmp_path):
    csv = write_csv(tmp_path / "train.csv", ["aaa,1 3,704"], header="id,annotation,width")
    with pytest.raises(sartorius.DataError, match="missing column.*height"):
        sartorius.read_train_csv(csv)


def test_minimal_csv_gets_defaults(tmp_path):
    write_csv(tmp_path / "train.csv", ["aaa,1 3", "aaa,704 2", "bbb,5 5"], header="id,annotation")
    records = sartorius.load_train(tmp_path)
    assert [r.image_id for r in records] == ["aaa", "bbb"]
    assert records[0].shape == (520, 704) and records[0].cell_type is None
    assert records[0].rles == ("1 3", "704 2") and records[0].sample_id is None


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="competition folder"):
        sartorius.load_train(tmp_path)


def test_write_train_csv_round_trip(tmp_path):
    rows = [row("aaa", "1 3"), row("aaa", "9 2 17 2"), row("bbb", "5 5", cell_type="cort", sample="s2")]
    csv = write_csv(tmp_path / "train.csv", rows)
    records = sartorius.load_train(csv)
    assert sartorius.write_train_csv(records, tmp_path / "out.csv") == 3
    assert (tmp_path / "out.csv").read_text() == csv.read_text()


# ---------------------------------------------------------------- folds

def fake_records(seed: int = 0) -> list[ImageRecord]:
    """12 samples of 3 cell types, 2-7 frames each (frames of a sample share its sample_id)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(12):
        cell_type = ["shsy5y", "astro", "cort"][s % 3]
        for f in range(int(rng.integers(2, 8))):
            out.append(ImageRecord(image_id=f"img{s:02d}_{f}", image_path=Path("x.png"), height=520,
                                   width=704, cell_type=cell_type, sample_id=f"sample{s}"))
    return out


def test_folds_grouped_stratified_deterministic():
    records = fake_records()
    folds = folds_mod.make_folds(records, n_folds=3, seed=0)
    assert set(folds) == {r.image_id for r in records} and set(folds.values()) == {0, 1, 2}
    by_sample: dict[str, set[int]] = {}
    for r in records:
        by_sample.setdefault(r.sample_id, set()).add(folds[r.image_id])
    assert all(len(v) == 1 for v in by_sample.values()), "a sample straddles two folds"
    summary = folds_mod.fold_summary(records, folds)
    for cell_type in ("shsy5y", "astro", "cort"):  # 4 samples per type: every fold gets one
        assert all(summary[f].get(cell_type, 0) > 0 for f in range(3)), summary
    assert folds_mod.make_folds(records, n_folds=3, seed=0) == folds
    assert folds_mod.make_folds(list(reversed(records)), n_folds=3, seed=0) == folds


def test_folds_without_sample_id_group_by_image():
    records = [ImageRecord(image_id=f"i{k}", image_path=Path("x"), height=1, width=1,
                           cell_type="a" if k % 2 else "b") for k in range(10)]
    folds = folds_mod.make_folds(records, n_folds=5)
    assert sorted(folds.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="cannot fill 11 folds"):
        folds_mod.make_folds(records, n_folds=11)


# ---------------------------------------------------------------- hole filling

def test_fill_holes_many_equals_scipy_on_random_masks():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    masks = []
    for k in range(60):  # blobby masks, many with holes, some touching the image edge
        m = np.zeros((24, 30), bool)
        m[rng.integers(0, 24, 40), rng.integers(0, 30, 40)] = True
        masks.append(ndimage.binary_dilation(m, iterations=int(rng.integers(0, 3))))
    masks.append(np.zeros((24, 30), bool))
    ring = np.zeros((24, 30), bool)
    ring[5:15, 5:15] = True
    ring[8:12, 8:12] = False
    masks.append(ring)
    texts = [rle.encode(m) for m in masks]
    filled = sartorius.fill_holes_many(texts, (24, 30))
    for text, got, m in zip(texts, filled, masks):
        assert np.array_equal(rle.decode(got, (24, 30)), ndimage.binary_fill_holes(m))
        if not (ndimage.binary_fill_holes(m) ^ m).any():
            assert got == text  # unchanged masks keep their string
    assert filled[-1] != texts[-1]
