"""`python -m bench gpu_cost`: the FLOPs of one training step of a recipe, counted on a real batch;
counting fewer images and scaling to the batch (what the SAM recipes need to fit in memory) gives
the same figure as counting the whole batch; the Mask R-CNN recipe's step is counted too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_step_flops_scale_with_the_batch(shared_sartorius: Path, monkeypatch) -> None:
    from bench.bench_gpu_cost import recipe_row
    from cellseg.data.loaders import load_records

    records = load_records(shared_sartorius, "train")
    # a UNet's cost does not depend on the pixels (a Mask R-CNN's does: its heads run on the
    # proposals and cells of each random crop, 1.4x apart between two draws)
    recipe = "unet_tiny"
    full = recipe_row(recipe, records)
    assert full["batch"] == 2 and full["tflop_step"] > 0
    monkeypatch.setenv("BENCH_GPU_COUNT_BATCH", "1")
    one = recipe_row(recipe, records)
    assert one["tflop_step"] == pytest.approx(full["tflop_step"], rel=0.01)
    assert one["steps"] == full["steps"] and one["epochs"] == full["epochs"]


def test_maskrcnn_step_is_counted(shared_sartorius: Path, monkeypatch) -> None:
    from bench.bench_gpu_cost import recipe_row
    from cellseg.data.loaders import load_records

    monkeypatch.setenv("BENCH_GPU_COUNT_BATCH", "1")
    row = recipe_row("maskrcnn_tiny", load_records(shared_sartorius, "train"))
    assert row["batch"] == 2 and 0 < row["tflop_step"] < 1
