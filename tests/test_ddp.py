"""DDP: `torchrun --nproc_per_node 2 -m cellseg train` on CPU (gloo) writes one checkpoint set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A competition folder of 6 synthetic 128x160 images (small: two processes share 2 cores)."""
    from conftest import write_synthetic_competition

    return write_synthetic_competition(tmp_path_factory.mktemp("synth_ddp") / "competition", seed=10)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_cpu_processes(synth, tmp_path):
    from cellseg.checkpoint import load_checkpoint, verify_checkpoint

    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", "-m", "cellseg", "train", "--config", "unet_tiny",
            "--data", str(synth), "--out", str(out), "--no-progress", "--device", "cpu"]
    for kv in ("data.workers=0", "data.crop_size=64", "data.max_val_images=1",
               "train.batch_size=1", "train.epochs=2", "data.max_train_images=4",
               "train.log_every=1"):
        argv += ["--set", kv]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1",
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["best.pt", "best.pt.sha256", "config.yaml", "curves.png", "last.pt",
                     "last.pt.sha256", "log.csv", "steps.csv"]
    # rank 0 alone logs: one "epoch N" line per epoch, not two
    assert done.stderr.count("epoch 1: loss") == 1 and done.stderr.count("epoch 2: loss") == 1
    ck = load_checkpoint(out / "last.pt")
    assert verify_checkpoint(out / "last.pt")
    n_train = ck["data"]["n_train"]
    # 2 ranks x batch 1: each optimiser step consumes 2 images (DistributedSampler pads odd counts)
    assert ck["step"] == 2 * ((n_train + 1) // 2)
    assert not any(k.startswith("module.") for k in ck["model"])  # saved unwrapped
    assert "score" in ck["metrics"]
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs
