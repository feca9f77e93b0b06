"""A plain torchvision Mask R-CNN as a peer of the kit, trained the torchvision-references way.

    python -m bench.plain_maskrcnn --train fold/train_data --test fold/test_data --out runs/mr \\
        --steps 300 [--weights coco] [--threads 1]
    # tiny CPU configuration (tests): a ResNet-18 FPN on images scaled to 128 px
    python -m bench.plain_maskrcnn ... --backbone resnet18 --min-size 128 --max-size 176 --steps 2

torchvision's ``maskrcnn_resnet50_fpn`` (``--backbone resnet18``: the same Mask R-CNN on a
ResNet-18 FPN, for tests) with two classes (background, cell), trained as in torchvision's
``references/detection`` (``train.py`` / ``engine.train_one_epoch``): SGD momentum 0.9, weight
decay 1e-4, lr 0.02 scaled linearly by the batch (0.02 x batch / 16), a linear warm-up from 0.001 x
lr over the first min(1000, steps / 10) steps, and x0.1 at 16/26 and 22/26 of the run (the
references' 26-epoch schedule ``--lr-steps 16 22``, counted in steps here); whole images, random
horizontal and vertical flips, batch 2; a non-finite loss stops the run with the loss dict. Targets
come from the truth masks per image (boxes = the masks' extents, label 1, the masks themselves;
overlaps kept, as Mask R-CNN allows). Images are grayscale repeated to 3 channels in [0, 1] and
normalised by the model's own transform; ``--min-size/--max-size`` are that transform's resize
(default 520/704: native size). Raised from torchvision's defaults because cells are many:
``box_detections_per_img`` 1000. Inference keeps detections with score >= 0.5, thresholds mask
probabilities at 0.5, and removes overlaps by giving each pixel to the highest-scoring cell;
cells left under 16 pixels are dropped.

Weights: random initialisation by default (``--weights none``). ``--weights coco`` (the COCO
model; its box and mask predictors replaced for 2 classes) and ``--weights imagenet`` (an ImageNet
backbone) are read from the torch hub cache only (``$TORCH_HOME/hub/checkpoints``); a missing file
is an error naming it, never a download. Nothing here comes from the kit except reading sources,
writing ``pred.csv`` and the metric (``bench/peer_io.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np


class PeerError(RuntimeError):
    """A user-fixable problem (e.g. pretrained weights not in the cache): one line, exit 2."""


# ----------------------------------------------------------------------------- model


def _cached(weights_enum) -> None:
    """Raise ``PeerError`` unless torchvision's file for ``weights_enum`` is in the hub cache."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)
    if not path.is_file():
        raise PeerError(f"{path} is missing: put torchvision's {weights_enum} file there (this "
                        f"peer never downloads), or pass --weights none")


def build_model(backbone: str = "resnet50", weights: str = "none", min_size: int = 520,
                max_size: int = 704, detections: int = 1000):
    """A torchvision Mask R-CNN with 2 classes (background, cell)."""
    from torch import nn
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import (MaskRCNN_ResNet50_FPN_Weights,
                                                        MaskRCNNPredictor)

    kw = {"min_size": min_size, "max_size": max_size, "box_detections_per_img": detections}
    if backbone == "resnet18":
        if weights != "none":
            raise PeerError("--backbone resnet18 is the random-init test configuration; "
                            "pass --weights none")
        fpn = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                  norm_layer=nn.BatchNorm2d, trainable_layers=5)
        return MaskRCNN(fpn, num_classes=2, **kw)
    if backbone != "resnet50":
        raise PeerError(f"--backbone {backbone}: valid are resnet50, resnet18")
    if weights == "coco":
        _cached(MaskRCNN_ResNet50_FPN_Weights.COCO_V1)
        model = maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1, **kw)
        # the torchvision fine-tuning recipe: new predictors for our classes
        model.roi_heads.box_predictor = FastRCNNPredictor(
            model.roi_heads.box_predictor.cls_score.in_features, 2)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(
            model.roi_heads.mask_predictor.conv5_mask.in_channels, 256, 2)
        return model
    if weights == "imagenet":
        _cached(ResNet50_Weights.IMAGENET1K_V1)
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=ResNet50_Weights.IMAGENET1K_V1,
                                     num_classes=2, **kw)
    if weights != "none":
        raise PeerError(f"--weights {weights}: valid are none, imagenet, coco")
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **kw)


# ----------------------------------------------------------------------------- data


def to_tensor(image: np.ndarray):
    """(H, W) uint8 -> (3, H, W) float32 tensor in [0, 1] (gray repeated)."""
    import torch

    return torch.from_numpy(image).float().div_(255.0)[None].expand(3, -1, -1).contiguous()


def sample(record, rng: np.random.Generator):
    """One training pair: the image tensor and its target dict (boxes (N, 4) x1 y1 x2 y2 float32,
    labels (N,) int64 ones, masks (N, H, W) uint8), randomly flipped."""
    import torch

    image, masks = record.read_image(), record.masks()
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    masks = masks[masks.reshape(len(masks), -1).any(1)] if len(masks) else masks
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    target = {"boxes": torch.from_numpy(boxes),
              "labels": torch.ones(len(masks), dtype=torch.int64),
              "masks": torch.from_numpy(np.ascontiguousarray(masks).astype(np.uint8))}
    return to_tensor(np.ascontiguousarray(image)), target


# ----------------------------------------------------------------------------- loop


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the base lr at 0-based ``step``: linear warm-up from 0.001, then x0.1 at
    16/26 and 22/26 of ``steps`` (torchvision references' warm-up and MultiStepLR)."""
    if step < warmup:
        alpha = step / warmup
        warm = 0.001 * (1 - alpha) + alpha
    else:
        warm = 1.0
    decays = sum(step >= math.floor(steps * m / 26) for m in (16, 22))
    return warm * 0.1 ** decays


def train(model, records: Sequence, steps: int, *, batch: int = 2, lr: float | None = None,
          seed: int = 0, log_every: int = 20, log=print):
    """Train ``model`` on ``records`` for ``steps`` SGD steps of ``batch`` whole images."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    base_lr = 0.02 * batch / 16 if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    warmup = min(1000, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        pairs = [sample(records[int(rng.integers(len(records)))], rng) for _ in range(batch)]
        images = [im.to(device) for im, _ in pairs]
        targets = [{k: v.to(device) for k, v in t.items()} for _, t in pairs]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"plain Mask R-CNN: non-finite loss at step {step}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps):
            parts = " ".join(f"{k[5:] if k.startswith('loss_') else k} {float(v.detach()):.3f}"
                             for k, v in losses.items())
            log(f"maskrcnn step {step}/{steps}: loss {float(loss):.4f} ({parts}) lr "
                f"{opt.param_groups[0]['lr']:.5f} ({(time.perf_counter() - t0) / step:.2f} s/step)")
    return model


def predict_labels(model, image: np.ndarray, *, score_thresh: float = 0.5,
                   mask_thresh: float = 0.5, min_area: int = 16) -> np.ndarray:
    """(H, W) uint8 -> (H, W) int32 label image: detections above ``score_thresh``, masks above
    ``mask_thresh``, each pixel to the highest-scoring cell, cells under ``min_area`` dropped."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model([to_tensor(image).to(device)])[0]
    keep = out["scores"] >= score_thresh
    scores = out["scores"][keep].cpu().numpy()
    masks = (out["masks"][keep, 0] > mask_thresh).cpu().numpy()
    labels = np.zeros(image.shape, np.int32)
    n = 0
    for i in np.argsort(-scores, kind="stable"):
        free = masks[i] & (labels == 0)
        if free.sum() >= min_area:
            n += 1
            labels[free] = n
    return labels


# ----------------------------------------------------------------------------- CLI


def run(train_specs: Sequence[str], test_specs: Sequence[str], out: str | os.PathLike, *,
        steps: int, batch: int = 2, lr: float | None = None, seed: int = 0,
        backbone: str = "resnet50", weights: str = "none", min_size: int = 520,
        max_size: int = 704, score_thresh: float = 0.5, log=print) -> dict:
    """Train on ``train_specs``, predict ``test_specs`` into ``out/pred.csv``, score annotated
    test images; returns (and writes to ``out/scores.json``) the summary."""
    import torch

    from bench.peer_io import load_annotated, load_test, predict_and_score

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(backbone, weights, min_size, max_size)
    if torch.cuda.is_available():
        model = model.cuda()
    train_records = load_annotated(train_specs)
    if not train_records:
        raise PeerError(f"no annotated training image in {list(train_specs)}")
    test_records = load_test(test_specs)
    t0 = time.perf_counter()
    train(model, train_records, steps, batch=batch, lr=lr, seed=seed, log=log)
    train_s = time.perf_counter() - t0
    torch.save(model.state_dict(), out / ".model.pt.tmp")
    os.replace(out / ".model.pt.tmp", out / "model.pt")
    summary = {"peer": "plain_maskrcnn", "steps": steps, "batch": batch,
               "lr": 0.02 * batch / 16 if lr is None else lr, "seed": seed,
               "backbone": backbone, "weights": weights, "min_size": min_size,
               "max_size": max_size, "score_thresh": score_thresh,
               "train_images": [r.image_id for r in train_records],
               "train_seconds": round(train_s, 1), "torch_threads": torch.get_num_threads()}
    return predict_and_score(
        out, test_records,
        lambda r: predict_labels(model, r.read_image(), score_thresh=score_thresh), summary)


def get_args_parser() -> argparse.ArgumentParser:
    from bench.peer_io import add_common_arguments

    p = argparse.ArgumentParser(prog="python -m bench.plain_maskrcnn",
                                description=__doc__.split("\n\n")[0])
    add_common_arguments(p, steps=300)
    p.add_argument("--batch", type=int, default=2, help="images per step (references: 2)")
    p.add_argument("--lr", type=float, default=None, help="default 0.02 * batch / 16")
    p.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet18"))
    p.add_argument("--weights", default="none", choices=("none", "imagenet", "coco"),
                   help="start (from the torch hub cache only; never downloaded)")
    p.add_argument("--min-size", type=int, default=520, help="the model transform's min_size")
    p.add_argument("--max-size", type=int, default=704, help="the model transform's max_size")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--tta", action="store_true",
                   help="not supported (a flipped Mask R-CNN needs its own instance merge); "
                        "accepted so cellseg cv can pass it, and ignored with a warning")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    from bench.peer_io import set_threads

    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.tta:
        log("plain Mask R-CNN: --tta is not supported; predicting without it")
    try:
        summary = run(args.train, args.test, args.out, steps=args.steps, batch=args.batch,
                      lr=args.lr, seed=args.seed, backbone=args.backbone, weights=args.weights,
                      min_size=args.min_size, max_size=args.max_size,
                      score_thresh=args.score_thresh, log=log)
    except PeerError as e:
        print(f"bench.plain_maskrcnn: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("score", "train_seconds", "steps")}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
