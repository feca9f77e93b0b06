"""`python -m bench.pseudo_quality`: a teacher's cells on held-out annotated images, by score bin
(the diagnosis of issue 19's pseudo-labels; its figures are in docs/competition.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_cell_quality_of_the_truth_itself_is_perfect(shared_sartorius: Path) -> None:
    from bench.pseudo_quality import cell_quality
    from cellseg.core.instances import Instances
    from cellseg.data.loaders import load_records

    rec = load_records(shared_sartorius, "train")[0]
    inst = Instances.from_label_image(rec.label_image())
    scores, best = cell_quality(rec.rles, inst, rec.shape)
    assert len(scores) == len(inst) > 300
    # a cell of the label image is its true cell less the pixels an overlapping cell took
    # (this shsy5y image overlaps a lot: median 0.99)
    assert np.median(best) > 0.95 and (best > 0.5).mean() > 0.95


def test_pseudo_quality_end_to_end(tmp_path: Path, shared_sartorius: Path,
                                   tiny_unet_ckpt: Path, capsys) -> None:
    from bench.pseudo_quality import main

    out = tmp_path / "q.json"
    assert main(["--weights", str(tiny_unet_ckpt), "--data", str(shared_sartorius),
                 "--cell-type", "shsy5y", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["images"] == [{"image_id": "0030fd0e6378", "cell_type": "shsy5y", "n_true": 395,
                              "n_pred": got["images"][0]["n_pred"]}]
    assert sum(b["cells"] for b in got["bins"]) == got["images"][0]["n_pred"]
    for b in got["bins"]:
        assert 0.0 <= b["precision_75"] <= b["precision_50"] <= 1.0
    assert "| score | cells |" in capsys.readouterr().out
    # a type with no annotated image is a user error
    assert main(["--weights", str(tiny_unet_ckpt), "--data", str(shared_sartorius),
                 "--cell-type", "astro"]) == 2
