"""Training validation predicts the way `cellseg predict` does: the validation score logged at the
last step equals `cellseg score` of `cellseg predict` on the same images with the same checkpoint.

Both sides run through the CLI as a user would (`cellseg train`, `cellseg predict`, `cellseg
score`), with no inference config given on either side: the kit's one default applies to both.
The data has three cell types whose default thresholds differ (min_area 40 / 120 / 60), so
validation choosing thresholds by the records' true types (which predict cannot know) would
show up here, as would validation and predict using different decode settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch  # noqa: F401  (a hard dependency: fail, never skip)


@pytest.fixture(scope="module")
def three_types(tmp_path_factory) -> Path:
    """A competition folder of 9 synthetic 128x160 images, 3 per cell type, one sample each."""
    from cellseg.core import rle
    from cellseg.data.record import ImageRecord
    from cellseg.data.sartorius import write_train_csv
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    root = tmp_path_factory.mktemp("three_types") / "competition"
    records = []
    for i, cell_type in enumerate(["shsy5y", "astro", "cort"] * 3):
        image, masks = render(cell_type, seed=10 + i, shape=(128, 160))
        image_id = f"{i:012x}"
        write_png(root / "train" / f"{image_id}.png", image)
        records.append(ImageRecord(image_id, root / "train" / f"{image_id}.png", 128, 160,
                                   cell_type=cell_type, sample_id=f"s{i}",
                                   rles=tuple(rle.encode(m) for m in masks)))
    write_train_csv(records, root / "train.csv")
    return root


def test_validation_score_equals_score_of_predict(three_types: Path, tmp_path: Path) -> None:

    from cellseg.checkpoint import load_checkpoint
    from cellseg.cli import main

    torch.manual_seed(0)
    run = tmp_path / "run"
    rc = main(["train", "--config", "unet_tiny", "--data", str(three_types), "--out", str(run),
               "--no-progress", "--set", "train.max_steps=30", "--set", "train.val_every=1000",
               "--set", "optim.lr=1e-2",
               "--set", "data.crop_size=96", "--set", "data.max_val_images=3",
               "--set", "data.workers=0"])
    assert rc == 0
    ckpt = load_checkpoint(run / "last.pt")
    val_ids = list(ckpt["data"]["val_ids"])
    val_score = float(ckpt["metrics"]["score"])  # the validation at the last step
    assert ckpt["step"] == 30 and len(val_ids) == 3
    # the training images' pixel classifier rides in the checkpoint: validation and predict
    # both pick each image's thresholds with it (the test images' types are unknown)
    assert sorted(ckpt["type_classifier"]["types"]) == ["astro", "cort", "shsy5y"]

    sub = tmp_path / "submission.csv"
    images = [str(three_types / "train" / f"{i}.png") for i in val_ids]
    assert main(["predict", "--weights", str(run / "last.pt"), "--images", *images,
                 "--out", str(sub), "--device", "cpu", "--no-progress"]) == 0
    result = tmp_path / "score.json"
    assert main(["score", "--truth", str(three_types), "--pred", str(sub), "--ids", *val_ids,
                 "--no-coco", "--json", str(result)]) == 0
    predicted = json.loads(result.read_text())["score"]
    print(f"validation score at the last step {val_score:.6f}, cellseg score of cellseg "
          f"predict {predicted:.6f}")
    # a model that predicts nothing would make both 0 and this test meaningless
    assert val_score > 0.0
    assert predicted == pytest.approx(val_score, abs=1e-12)
    # the logged value is the same number
    last = (run / "log.csv").read_text().strip().splitlines()
    header, row = last[0].split(","), last[-1].split(",")
    assert float(row[header.index("val_score")]) == pytest.approx(val_score, abs=1e-4)
