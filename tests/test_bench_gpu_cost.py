"""`python -m bench gpu_cost`: the FLOPs of one training step of a recipe, counted on a real batch;
counting fewer images and scaling to the batch (what the SAM recipes need to fit in memory) gives
the same figure as counting the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (a hard dependency: fail, never skip)


@pytest.mark.parametrize("recipe,rel", [("unet_tiny", 0.01), ("maskrcnn_tiny", 0.15)])
def test_step_flops_scale_with_the_batch(recipe: str, rel: float, shared_sartorius: Path, monkeypatch) -> None:
    from bench.bench_gpu_cost import recipe_row
    from cellseg.data.loaders import load_records

    records = load_records(shared_sartorius, "train")
    full = recipe_row(recipe, records)
    assert full["batch"] == 2 and full["tflop_step"] > 0
    monkeypatch.setenv("BENCH_GPU_COUNT_BATCH", "1")
    one = recipe_row(recipe, records)
    # a UNet's cost is linear in the batch; Mask R-CNN's varies with the cells in each random
    # crop (6% measured), far less than the factor 2 a missing scale would make
    assert one["tflop_step"] == pytest.approx(full["tflop_step"], rel=rel)
    assert one["steps"] == full["steps"] and one["epochs"] == full["epochs"]
