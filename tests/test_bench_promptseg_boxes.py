"""`python -m bench.promptseg_boxes` and the `promptseg_crop_cpu` recipe: the box-prompted
family's masks on held-out images, prompted by true boxes and by another model's cells (issue 19;
its figures are in docs/competition.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_true_boxes_are_the_cells_extents_with_exclusive_ends(shared_sartorius: Path) -> None:
    from bench.promptseg_boxes import true_boxes
    from cellseg.core import rle
    from cellseg.data.loaders import load_records

    rec = load_records(shared_sartorius, "train")[0]
    boxes = true_boxes(rec.rles, rec.shape)
    assert boxes.shape == (395, 4) and boxes.dtype == np.float32
    for k in (0, 100, 394):
        ys, xs = np.nonzero(rle.decode(rec.rles[k], rec.shape))
        assert boxes[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert true_boxes([], rec.shape).shape == (0, 4)


def test_crop_recipe_trains_on_real_cells_and_the_bench_scores_it(
        tmp_path: Path, shared_sartorius: Path, tiny_unet_ckpt: Path, capsys) -> None:
    """The recipe as shipped (no detector: prompts come from outside) for 3 steps on the real
    shsy5y sample, then the bench end to end with a UNet as the box source."""
    from bench.promptseg_boxes import main as bench_main
    from cellseg.cli import main
    from cellseg.config import load_train_config

    cfg = load_train_config("promptseg_crop_cpu")
    assert cfg.model.args.detector is None and cfg.model.args.detector_checkpoint is None
    out = tmp_path / "ps"
    assert main(["train", "--config", "promptseg_crop_cpu", "--data", str(shared_sartorius),
                 "--out", str(out), "--no-progress", "--set", "train.max_steps=3"]) == 0
    assert "sampling: an epoch draws 200 samples: shsy5y 200" in capsys.readouterr().err

    result = tmp_path / "boxes.json"
    assert bench_main(["--weights", str(out / "best.pt"), "--data", str(shared_sartorius),
                       "--boxes-from", str(tiny_unet_ckpt), "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    row = got["types"]["shsy5y"]
    assert got["types"]["all"] == row and row["n"] == 1 and row["true_cells"] == 395
    # one prompt per cell: re-masking never adds cells (postprocessing may drop some)
    assert row["cells"]["prompted"] <= row["cells"]["source"]
    assert 0 < row["cells"]["true_boxes"] <= 395
    for v in ("source", "prompted", "true_boxes"):
        assert 0.0 <= row[v] <= 1.0 and len(got["per_image"][v]) == 1
    assert "| shsy5y | 1 |" in capsys.readouterr().out
    # a checkpoint of another family is not a mask decoder: said in one line
    try:
        bench_main(["--weights", str(tiny_unet_ckpt), "--data", str(shared_sartorius),
                    "--boxes-from", str(tiny_unet_ckpt)])
    except SystemExit as exc:
        assert "not promptseg" in str(exc)
    else:
        raise AssertionError("a unet checkpoint was accepted as the mask decoder")
