"""Folds of a competition folder whose metadata columns are empty (sartorius_409): frames of one
well are found by image similarity and kept in one fold; the kit says what it did."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.data import folds as folds_mod
from cellseg.data.neardup import near_duplicate_groups, similarity_matrix

# frames of one well (a ~28 px stage shift; full-resolution aligned correlation ~0.8)
SAME_WELL = [("e92c56871769", "eec79772cb99"), ("8e2b69117149", "9e8da786a80f"),
             ("03b27b381a5f", "e33d521aa9de")]


@pytest.fixture(scope="module")
def subset(shared_sartorius_409):
    """The 6 frames above plus the first 10 images of each cell type (a quick subset)."""
    from cellseg.data.loaders import load_records

    recs = load_records(shared_sartorius_409)
    assert len(recs) == 409 and all(r.sample_id is None for r in recs)
    want = {i for pair in SAME_WELL for i in pair}
    out = [r for r in recs if r.image_id in want]
    for t in ("astro", "cort", "shsy5y"):
        out += [r for r in recs if r.cell_type == t and r.image_id not in want][:10]
    return out


def test_similarity_finds_shifted_frames(subset):
    sim, shift = similarity_matrix(subset)
    index = {r.image_id: k for k, r in enumerate(subset)}
    pair_sims = [sim[index[a], index[b]] for a, b in SAME_WELL]
    assert min(pair_sims) > 0.3  # ~0.4-0.55 at 128x96; unrelated frames ~0.05
    others = sim[np.triu_indices(len(subset), 1)]
    assert np.median(others[others > 0]) < 0.1  # unrelated frames of one type
    a, b = (index[i] for i in SAME_WELL[0])
    dy, dx = shift[a, b]
    assert 4 <= abs(int(dx)) <= 6 and abs(int(dy)) <= 3  # ~28 px / 5.5 at 128 px wide
    assert np.array_equal(shift[b, a], -shift[a, b])
    types = np.array([r.cell_type for r in subset])
    assert not sim[np.ix_(types == "astro", types == "cort")].any()  # types never compared


def test_groups_keep_frames_of_one_well_in_one_fold(subset, capsys):
    groups, note = near_duplicate_groups(subset)
    for a, b in SAME_WELL:
        assert groups[a] == groups[b]
    assert "sample_id is empty" in note and "near-duplicate groups" in note
    folds = folds_mod.make_folds(subset, n_folds=3, seed=0)
    for a, b in SAME_WELL:
        assert folds[a] == folds[b]
    assert "folds: sample_id is empty: grouped" in capsys.readouterr().err
    # order-independent, and each type spread over the folds
    assert folds_mod.make_folds(list(reversed(subset)), n_folds=3, seed=0, log=None) == folds
    summary = folds_mod.fold_summary(subset, folds)
    assert all(summary[f].get("shsy5y", 0) >= 3 for f in range(3))


def test_sample_id_or_well_wins_over_similarity(subset):
    import dataclasses

    with_ids = [dataclasses.replace(r, sample_id=f"s{k}") for k, r in enumerate(subset)]
    keys = folds_mod.fold_groups(with_ids, log=None)
    assert len(set(keys.values())) == len(subset)  # one sample per image: the ids are used
    wells = [dataclasses.replace(r, meta={"well": "w" + str(k % 4)}) for k, r in enumerate(subset)]
    assert set(folds_mod.fold_groups(wells, log=None).values()) == {"w0", "w1", "w2", "w3"}


def test_missing_image_files_fall_back_to_images(tmp_path):
    from cellseg.data.record import ImageRecord

    recs = [ImageRecord(f"i{k}", tmp_path / f"i{k}.png", 520, 704, cell_type="cort")
            for k in range(4)]
    notes: list[str] = []
    keys = folds_mod.fold_groups(recs, log=notes.append)
    assert len(set(keys.values())) == 4
    assert notes and "image files missing" in notes[0]
