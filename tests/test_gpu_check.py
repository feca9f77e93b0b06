"""scripts/gpu_check.py (`make gpu-check`) runs its CPU-only parts here, so the device check is
ready for the day a GPU is there: float16 training through `cellseg train`, predict on the
"device" (the CUDA path run on CPU) vs CPU float32, loader vs step, the DDP row SKIPped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    from cellseg.core import rle
    from cellseg.data.record import ImageRecord
    from cellseg.data.sartorius import write_train_csv
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    root = tmp_path_factory.mktemp("gc") / "competition"
    records = []
    for i, cell_type in enumerate(["shsy5y", "astro", "cort", "cort"]):
        image, masks = render(cell_type, seed=40 + i, shape=(128, 160))
        path = root / "train" / f"{i:012x}.png"
        write_png(path, image)
        records.append(ImageRecord(path.stem, path, 128, 160, cell_type=cell_type,
                                   sample_id=f"s{i}", rles=tuple(map(rle.encode, masks))))
    write_train_csv(records, root / "train.csv")
    return root


def test_gpu_check_cpu_dry_run_prints_one_table(small, tmp_path, capsys):
    gc = _script()
    rc = gc.main(["--device", "cpu", "--data", str(small), "--out", str(tmp_path / "gc"),
                  "--unet-steps", "4", "--maskrcnn-steps", "0", "--predict-images", "1",
                  "--loader-batches", "2", "--workers", "0"])
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert table[:2] == ["| check | result | status |", "|---|---|---|"]
    rows = {ln.split(" | ")[0].lstrip("| "): ln.rstrip(" |").rsplit(" | ", 1)[-1]
            for ln in table[2:]}
    assert rows["float16 train unet (cpu)"] in ("OK", "FAIL")  # 4 steps may not lower the loss
    assert "float16 train unet (cpu) | 4 steps" in out and "scale 65536.0" in out
    assert rows["predict unet cpu vs cpu"] == "OK"
    assert rows["loader vs step (unet_tiny, 0 workers)"] in ("OK", "FAIL")
    assert rows["float16 train maskrcnn"] == "SKIP" and rows["2-process nccl DDP"] == "SKIP"
    assert rc == (1 if "FAIL" in rows.values() else 0)


def test_gpu_check_rows_judge_results():
    gc = _script()
    good = {"steps": 300, "seconds": 30.0, "loss_first": 1.5, "loss_last": 0.7, "skipped": 3,
            "scale": 32768.0}
    assert gc.train_row("unet", good, "cuda")[2] == "OK"
    assert gc.train_row("unet", dict(good, loss_last=1.6), "cuda")[2] == "FAIL"
    assert gc.train_row("unet", dict(good, scale=None), "cuda")[2] == "FAIL"  # no GradScaler
    assert gc.train_row("unet", dict(good, skipped=100), "cuda")[2] == "FAIL"
    assert gc.predict_row("unet", 100, 101, 0.97, "cuda")[2] == "OK"
    assert gc.predict_row("unet", 100, 130, 0.97, "cuda")[2] == "FAIL"
    assert gc.predict_row("unet", 100, 100, 0.5, "cuda")[2] == "FAIL"
    assert gc.table([("a", "b", "OK")]).splitlines()[-1] == "| a | b | OK |"
