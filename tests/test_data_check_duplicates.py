"""`cellseg data check` lists duplicated and heavily overlapping truth per image."""

from __future__ import annotations

import numpy as np

from cellseg.cli import main
from cellseg.core import rle
from cellseg.data import sartorius
from cellseg.data.check import duplicated_truth, find_duplicates
from cellseg.data.record import ImageRecord

SHAPE = (520, 704)


def _rect(r0, r1, c0, c1) -> str:
    m = np.zeros(SHAPE, bool)
    m[r0:r1, c0:c1] = True
    return rle.encode(m)


def test_duplicated_truth_counts_pairs():
    a, b = _rect(0, 10, 0, 10), _rect(0, 10, 2, 12)  # IoU 80/120 > 0.5
    c = _rect(0, 10, 5, 15)  # IoU with a: 50/150, with b: 70/130 > 0.5
    far = _rect(100, 110, 100, 110)
    assert duplicated_truth([a, far], SHAPE) == (0, 0)
    assert duplicated_truth([a, a, far], SHAPE) == (1, 1)
    assert duplicated_truth([a, b, c, a], SHAPE) == (4, 1)  # ab, bc, a-a, (copy of a)b


def test_check_cli_reports_duplicates(tmp_path, capsys):
    import cv2

    root = tmp_path / "comp"
    (root / "train").mkdir(parents=True)
    a, far = _rect(0, 10, 0, 10), _rect(100, 110, 100, 110)
    recs = [ImageRecord("dup000000001", root / "train" / "dup000000001.png", 520, 704,
                        cell_type="shsy5y", rles=(a, a, far)),
            ImageRecord("clean0000002", root / "train" / "clean0000002.png", 520, 704,
                        cell_type="cort", rles=(a, far))]
    sartorius.write_train_csv(recs, root / "train.csv")
    for r in recs:
        cv2.imwrite(str(r.image_path), np.full(SHAPE, 128, np.uint8))
    assert main(["data", "check", str(root)]) == 0  # a data quirk, not a problem
    out = capsys.readouterr().out
    assert "duplicated / heavily overlapping truth: 1 image(s), 1 pair(s)" in out
    assert "| dup000000001 | shsy5y | 1 | 1 |" in out and "clean0000002 |" not in out


def test_real_duplicates_in_sartorius_409(shared_sartorius_409):
    ids = ["de504eaa5349", "a7b1db2a42fc", "ce5d0de993bd", "0140b3c8f445"]
    recs = sartorius.load_train(shared_sartorius_409, ids=ids)
    dup = find_duplicates(recs)
    assert dup == {"de504eaa5349": (3, 1), "a7b1db2a42fc": (2, 2), "ce5d0de993bd": (19, 0)}
    # on that shsy5y image, predicting each distinct true mask once: the DSB rule counts the
    # duplicated true cell as found twice, greedy one-to-one matching as one hit and one miss
    from cellseg.core.metrics import match_image

    r = next(x for x in recs if x.image_id == "de504eaa5349")
    distinct = list(dict.fromkeys(r.rles))
    assert len(distinct) == len(r.rles) - 1
    res = match_image(r.rles, distinct, r.shape).score_by_matching
    assert res["dsb"] > res["greedy"]
    assert res["greedy"] < 1.0
