"""What a GPU recipe costs before you start it: FLOPs per training step, measured, and the
expected wall time on a T4 and an A100.

    .venv/bin/python -m bench gpu_cost      # ~10 min on one core (builds SAM ViT-B twice)
    BENCH_GPU_RECIPES=unet_competition_finetune .venv/bin/python -m bench gpu_cost   # some only
    BENCH_GPU_RECIPES=promptseg_livecell_pretrain BENCH_GPU_COUNT_BATCH=1 .venv/bin/python -m bench gpu_cost

For each GPU recipe (``*_livecell_pretrain``, ``*_competition_finetune``) one real training step
(a batch from the real competition sample through the kit's loader, the family's loss,
backward) runs on the CPU under ``torch.utils.flop_counter.FlopCounterMode`` with random
weights (pretrained names are switched off: the FLOPs do not depend on them). The run's length
is the config's epochs x (training images / batch): the competition's 606 train images less the
held-out fold (485), LIVECell's 3,253 train images. ``BENCH_GPU_COUNT_BATCH=N`` counts a step
of N images and scales it to the recipe's batch (a UNet's FLOPs grow linearly with the batch,
a detector's about so, with the cells of each crop; SAM ViT-B's
backward at batch 8 needs more memory than a 24 GB machine has).

Time = FLOPs / sustained throughput. The throughput is not a datasheet peak: it is calibrated on
a published figure, torchvision's own Mask R-CNN R50-FPN training time (0.2728 s per iteration
of 2 images on a V100, fp32, COCO-sized images; torchvision's "Runtime characteristics" table),
whose FLOPs this bench counts the same way (two 800x1088 images, 10 objects each) -> the V100's
sustained fp32 rate for this kind of network. T4 and A100 follow by their datasheet fp32 peaks
(T4 8.1, V100 15.7, A100 19.5 TFLOPS); mixed precision (the recipes use ``amp``) gains up to
x2 ("roughly x2" is what Inria's Nef GPU benchmark of ResNet-50 training found on V100 and T4),
so each time is given as a range: with that x2 .. without it.
Both factors are assumptions, stated so they can be replaced by a measured epoch time
(``make gpu-check`` on the machine itself). The A100 figure is conservative: it does not count
TF32.
Data loading, validation and checkpoints are not counted: the estimate is a lower bound on a
loader-bound machine (Kaggle's 2-4 CPU cores; ``python -m bench train`` says whether the
loader keeps up).
"""

from __future__ import annotations

import os

from bench import SHARED

RECIPES = ("unet_livecell_pretrain", "unet_competition_finetune", "maskrcnn_livecell_pretrain",
           "maskrcnn_competition_finetune", "promptseg_livecell_pretrain",
           "promptseg_competition_finetune")
TRAIN_IMAGES = {"livecell": 3253, "competition": 485}
# torchvision docs, "Runtime characteristics": Mask R-CNN ResNet-50 FPN, 8 V100, 2 images/GPU
V100_REF_S_PER_ITER = 0.2728
V100_FP32_PEAK = 15.7
# datasheet fp32 peaks (TFLOPS), and the speed-up of mixed precision on convnets
GPUS = {"T4": 8.1, "A100": 19.5}
AMP_SPEEDUP = 2.0
NO_PRETRAINED = {"unet": ["model.args.encoder_weights=null"],
                 "maskrcnn": ["model.args.weights=null", "model.args.backbone_weights=null"],
                 "promptseg": ["model.args.sam_checkpoint=null"]}
# promptseg's detector from a stage-1 checkpoint: the same R50-FPN, built from its arguments
DETECTOR = "{backbone: resnet50, norm: imagenet, detections_per_img: 2000}"


def step_flops(model, family, batch) -> float:
    """FLOPs of one training step (forward + backward) of ``family.loss`` on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        family.loss(model, *batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def reference_flops() -> float:
    """FLOPs of torchvision's Mask R-CNN R50-FPN training iteration behind the published time."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).train()
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, 800, 1088))
        xy = torch.randint(0, 600, (10, 2)).float()
        boxes = torch.cat([xy, xy + torch.randint(40, 200, (10, 2)).float()], 1)
        masks = torch.zeros(10, 800, 1088, dtype=torch.uint8)
        for k, b in enumerate(boxes.long()):
            masks[k, b[1]:b[3], b[0]:b[2]] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (10,)), "masks": masks})
    with FlopCounterMode(display=False) as counter:
        sum(model(images, targets).values()).backward()
    return float(counter.get_total_flops())


def recipe_row(name: str, records) -> dict:
    import torch

    from bench.bench_train import _loader_rate
    from cellseg.config import load_train_config
    from cellseg.models import get_family

    base = load_train_config(name)
    off = NO_PRETRAINED[base.model.family] + ["train.init_from=null"]
    args = base.model.args
    if getattr(args, "detector_checkpoint", None):
        off += ["model.args.detector_checkpoint=null", f"model.args.detector={DETECTOR}"]
    elif getattr(args, "detector", None):
        off += ["model.args.detector.weights=null"]
    cfg = load_train_config(name, off)
    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    model = family.build(**cfg.model.args)
    # the sample holds fewer images than a batch: repeat them (a full batch is what a GPU runs)
    count = min(int(os.environ.get("BENCH_GPU_COUNT_BATCH", "0")) or cfg.train.batch_size,
                cfg.train.batch_size)
    records = (list(records) * -(-count // len(records)))[:count]
    _, batches = _loader_rate(cfg, family, model, records, count)
    n = len(batches[0][0])
    if n != count:
        raise RuntimeError(f"{name}: a batch of {n} images, not {count}")
    flops = step_flops(model, family, batches[0]) * cfg.train.batch_size / count
    data = "livecell" if "livecell" in name else "competition"
    steps = cfg.train.epochs * -(-TRAIN_IMAGES[data] // cfg.train.batch_size)
    return {"name": name, "batch": cfg.train.batch_size, "crop": cfg.data.crop_size,
            "tflop_step": flops / 1e12, "steps": steps, "epochs": cfg.train.epochs}


def main() -> None:
    import torch

    from cellseg.data.loaders import load_records

    root = SHARED / "sartorius"
    if not root.is_dir():
        print(f"(skipped: {root} not found)")
        return
    torch.set_num_threads(1)
    records = load_records(root, "train")
    ref = reference_flops()
    v100 = ref / V100_REF_S_PER_ITER / 1e12  # sustained fp32 TFLOPS on this kind of network
    rate = {g: v100 * peak / V100_FP32_PEAK for g, peak in GPUS.items()}  # without amp's gain
    print(f"calibration: torchvision Mask R-CNN R50-FPN, 2 images 800x1088, counted "
          f"{ref / 1e12:.2f} TFLOP per iteration; published 0.2728 s on a V100 -> "
          f"{v100:.1f} TFLOPS sustained (fp32). Assumed (fp32 .. amp x{AMP_SPEEDUP:g}): "
          + ", ".join(f"{g} {r:.1f} .. {r * AMP_SPEEDUP:.1f} TFLOPS" for g, r in rate.items())
          + "\n")
    print("| recipe | batch x crop | TFLOP / step | steps (epochs) | T4 hours | A100 hours |")
    print("|---|---|---:|---:|---:|---:|")
    only = os.environ.get("BENCH_GPU_RECIPES")  # e.g. "promptseg_livecell_pretrain,..."
    for name in (only.split(",") if only else RECIPES):
        row = recipe_row(name, records)
        total = row["tflop_step"] * row["steps"]
        crop = row["crop"] or "520x704"
        hours = {g: total / r / 3600 for g, r in rate.items()}
        print(f"| {name} | {row['batch']} x {crop} | {row['tflop_step']:.2f} | "
              f"{row['steps']} ({row['epochs']}) | "
              + " | ".join(f"{h / AMP_SPEEDUP:.2f} - {h:.2f}" for h in hours.values()) + " |",
              flush=True)


if __name__ == "__main__":
    main()
