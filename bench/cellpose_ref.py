"""Cellpose as a peer of the kit: trained from scratch with Cellpose's own trainer.

    python -m bench.cellpose_ref --train fold/train_data --test fold/test_data --out runs/cp \\
        --steps 300 [--tta] [--threads 1] [--pretrained ~/models/cyto3]

Cellpose 3 (``pip install cellpose==3.1.1.3``; see docs/peers.md for installing it beside a newer
numpy) with its default network (``CellposeModel``: the residual U-Net ``CPnet``, 32-256 channels,
one grayscale channel, ``channels=[0, 0]``), trained by ``cellpose.train.train_seg`` with its own
defaults: flows computed from the truth, random rotation/rescale to the mean diameter (30 px) and
224x224 crops, AdamW lr 0.005, weight decay 1e-5, batch 8. The budget is counted in optimiser steps
like the kit's: one Cellpose "epoch" is one batch here (``nimg_per_epoch`` = batch), so ``--steps``
epochs keep Cellpose's own schedule (10 warm-up epochs, then halvings over the last 50 epochs past
100 and the last 100 past 300). Held-out images are segmented by ``CellposeModel.eval`` at the
training set's mean diameter (flow threshold 0.4, cell probability 0; ``--tta``: its
``augment``). Nothing here comes from the kit except reading sources, writing ``pred.csv`` and the
metric (``bench/peer_io.py``).

A pretrained generalist (e.g. ``cyto3``) is used only when ``--pretrained`` names a LOCAL model
file: it is then the start of the training (``--steps 0``: the generalist as is, evaluated at its
own 30 px diameter). Nothing is ever downloaded (Cellpose falls back to downloading ``cyto3`` for a
path that does not exist, so the path is checked first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

INSTALL_HINT = ("pip install -e '.[peers]' && pip install --no-deps cellpose==3.1.1.3 "
                "(docs/peers.md)")


class PeerError(RuntimeError):
    """A user-fixable problem (missing package, missing model file): one line on stderr, exit 2."""


def import_cellpose():
    """``cellpose.models`` and ``cellpose.train`` of a 3.x install, or ``PeerError`` with the fix."""
    try:
        import cellpose
        from cellpose import models, train
    except ImportError as e:
        raise PeerError(f"the cellpose peer needs the cellpose package ({e}); install it: "
                        f"{INSTALL_HINT}") from None
    version = getattr(cellpose, "version", "?")
    if not str(version).startswith("3."):
        raise PeerError(f"cellpose {version} is installed; this peer is written for Cellpose 3 "
                        f"(its CPnet and train_seg): {INSTALL_HINT}")
    return models, train


def build_model(pretrained: str | None = None):
    """A ``CellposeModel`` on CPU/GPU as available: from scratch (random CPnet, diam_mean 30), or
    loaded from the local file ``pretrained``."""
    models, _ = import_cellpose()
    if pretrained is not None and not Path(pretrained).is_file():
        raise PeerError(f"--pretrained {pretrained}: no such file (a local Cellpose 3 model "
                        f"file, e.g. ~/.cellpose/models/cyto3; nothing is downloaded)")
    import torch

    gpu = torch.cuda.is_available()
    return models.CellposeModel(gpu=gpu, pretrained_model=str(pretrained) if pretrained else False,
                                diam_mean=30.0, nchan=2)


def train(model, records: Sequence, steps: int, out: Path, *, batch: int = 8, lr: float = 0.005,
          bsize: int = 224, seed: int = 0) -> Path:
    """Train ``model.net`` on ``records`` for ``steps`` optimiser steps with ``train_seg``; returns
    the saved model file (``out/models/cellpose``)."""
    import torch

    _, cp_train = import_cellpose()
    torch.manual_seed(seed)
    images = [r.read_image() for r in records]
    labels = [r.label_image() for r in records]
    (out / "models").mkdir(parents=True, exist_ok=True)
    path, _, _ = cp_train.train_seg(
        model.net, train_data=images, train_labels=labels, channels=[0, 0], normalize=True,
        batch_size=batch, learning_rate=lr, n_epochs=steps, nimg_per_epoch=batch,
        save_path=str(out), save_every=max(steps, 1), model_name="cellpose", bsize=bsize,
        )
    return Path(path)


def predict_labels(model, image: np.ndarray, tta: bool = False) -> np.ndarray:
    """(H, W) uint8 -> (H, W) int32 label image (0 = background), Cellpose's own mask step."""
    masks = model.eval(image, channels=[0, 0], augment=tta, progress=False)[0]
    return np.asarray(masks, dtype=np.int32)


def run(train_specs: Sequence[str], test_specs: Sequence[str], out: str | os.PathLike, *,
        steps: int, batch: int = 8, lr: float = 0.005, bsize: int = 224, seed: int = 0,
        tta: bool = False, pretrained: str | None = None, log=print) -> dict:
    """Train on ``train_specs`` (from scratch, or from ``pretrained``), predict ``test_specs`` into
    ``out/pred.csv``, score annotated test images; returns the ``out/scores.json`` summary."""
    import logging

    import torch

    from bench.peer_io import load_annotated, load_test, predict_and_score

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")  # cellpose's progress
    model = build_model(pretrained)
    train_records = load_annotated(train_specs)
    if steps and not train_records:
        raise PeerError(f"no annotated training image in {list(train_specs)}")
    test_records = load_test(test_specs)
    t0 = time.perf_counter()
    if steps:
        path = train(model, train_records, steps, out, batch=batch, lr=lr, bsize=bsize, seed=seed)
        model = build_model(str(path))  # as a user would: the saved file, with its diameters
    train_s = time.perf_counter() - t0
    log(f"cellpose: {steps} steps in {train_s:.0f} s; mean training diameter "
        f"{float(model.diam_labels):.1f} px")
    summary = {"peer": "cellpose", "cellpose": _version(), "steps": steps, "batch": batch,
               "lr": lr, "bsize": bsize, "seed": seed, "tta": tta, "pretrained": pretrained,
               "diam_labels": float(model.diam_labels),
               "train_images": [r.image_id for r in train_records],
               "train_seconds": round(train_s, 1), "torch_threads": torch.get_num_threads()}
    return predict_and_score(out, test_records,
                             lambda r: predict_labels(model, r.read_image(), tta), summary)


def _version() -> str:
    import cellpose

    return str(getattr(cellpose, "version", "?"))


def get_args_parser() -> argparse.ArgumentParser:
    from bench.peer_io import add_common_arguments

    p = argparse.ArgumentParser(prog="python -m bench.cellpose_ref",
                                description=__doc__.split("\n\n")[0])
    add_common_arguments(p, steps=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--bsize", type=int, default=224, help="training crop size (Cellpose's 224)")
    p.add_argument("--tta", action="store_true", help="Cellpose's own test-time augmentation")
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help="start from this LOCAL Cellpose 3 model file (e.g. cyto3); never "
                        "downloaded")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    from bench.peer_io import set_threads

    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    try:
        summary = run(args.train, args.test, args.out, steps=args.steps, batch=args.batch,
                      lr=args.lr, bsize=args.bsize, seed=args.seed, tta=args.tta,
                      pretrained=args.pretrained,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    except PeerError as e:
        print(f"bench.cellpose_ref: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("score", "train_seconds", "steps")}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
