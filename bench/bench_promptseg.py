"""promptseg cost per 520x704 image on CPU, split into box detection, mask decoding and
postprocessing, for 100 and 500 boxes per image.

    .venv/bin/python -m bench promptseg
    CELLSEG_BENCH_THREADS=2 CELLSEG_BENCH_BOXES=100,500,1000 .venv/bin/python -m bench promptseg

- detect: the tiny random-init Mask R-CNN (``maskrcnn`` family, ResNet-18 FPN-32) that the
  ``promptseg_tiny`` config attaches, on the whole image (independent of the box count).
- decode: the mask decoder on N box prompts (``FAMILY.decode_boxes``; all boxes batched in chunks of
  ``decode_chunk``), for the crop decoder at two sizes and a small SAM-architecture decoder.
  A ``one call per box`` row (decode_chunk=1) shows what batching saves.
- paste: stability score, paste-back into image pixels (``cellseg.models.paste``) and extras
  (``FAMILY.to_instances``).
- postprocess: ``cellseg.infer.postprocess.postprocess`` with the default inference thresholds (``InferenceConfig()``)
  (rescoring, score filter, hole filling, mask NMS, overlap removal).
Boxes are random cell-sized boxes (10-50 px sides) on a synthetic shsy5y frame; weights are random,
so masks are noisy (postprocessing cost is an upper bound). Linear scaling shows as a constant
``decode ms/box`` between N=100 and N=500. The default-size crop decoder (S=128, a GPU
setting) is timed at 100 boxes only to keep the bench short.
"""

from __future__ import annotations

import os
import time

import numpy as np

DETECTOR = dict(backbone="resnet18", fpn_channels=32, box_head_dim=128, mask_head_channels=32,
                rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, detections_per_img=100)
SMALL_SAM = dict(img_size=512, embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,),
                 window_size=8, prompt_dim=128, mlp_dim=512, decoder_heads=4,
                 iou_head_hidden_dim=128)
DECODERS = [
    ("crop S=64 c16 L3", dict(decoder="crop", crop_size=64, base_channels=16, levels=3), None),
    ("crop S=64 c16 L3, one call per box", dict(decoder="crop", crop_size=64, base_channels=16,
                                                levels=3, decode_chunk=1), (100,)),
    ("crop S=128 c32 L3 (default)", dict(decoder="crop", crop_size=128, base_channels=32,
                                         levels=3), (100,)),
    ("sam img512 d96x2 p128", dict(decoder="sam", crop_size=64, sam=SMALL_SAM, decode_chunk=100),
     None),
]


def _boxes(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    size = rng.uniform(10, 50, (n, 2))
    x0 = rng.uniform(0, w - size[:, 0])
    y0 = rng.uniform(0, h - size[:, 1])
    return np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], 1).astype(np.float32)


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    import torch

    from cellseg.config import from_dict
    from cellseg.data.synthetic import render
    from cellseg.infer.config import InferenceConfig
    from cellseg.infer.postprocess import postprocess
    from cellseg.models import get_family

    threads = int(os.environ.get("CELLSEG_BENCH_THREADS", "1"))
    counts = [int(v) for v in os.environ.get("CELLSEG_BENCH_BOXES", "100,500").split(",")]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fam = get_family("promptseg")
    image, _ = render("shsy5y", seed=0)
    shape = image.shape
    cfg = from_dict(InferenceConfig, {"rescore": True})
    rng = np.random.default_rng(0)
    print(f"CPU, {threads} thread(s), torch {torch.__version__}, image {shape[0]}x{shape[1]}, "
          "random weights\n")
    print("| decoder | boxes | detect s | decode s | paste s | postprocess s | total s "
          "| decode ms/box | kept |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    det_model = fam.build(detector=DETECTOR, decoder="crop", crop_size=32, base_channels=8,
                          levels=2).eval()
    with torch.inference_mode():
        x_det = fam.preprocess(det_model, image[None])
        fam.detect(det_model, x_det)  # warm-up
        t_detect, dets = _timed(lambda: fam.detect(det_model, x_det), repeat=2)
        warm = fam.predict_with_boxes(det_model, x_det, [_boxes(rng, 20, shape)])[0]
        postprocess(warm, cfg)  # warm-up: first call imports scipy etc.
    per_box: dict[str, dict[int, float]] = {}
    for name, args, only in DECODERS:
        model = fam.build(**args).eval()
        x = fam.preprocess(model, image[None])
        with torch.inference_mode():
            warm = torch.as_tensor(_boxes(rng, 8, shape))
            fam.decode_boxes(model, x, [warm], [model.regions(warm)])
            for n in counts:
                if only is not None and n not in only:
                    continue
                boxes = torch.as_tensor(_boxes(rng, n, shape))
                regions = [model.regions(boxes)]
                scores = [rng.uniform(0.5, 1.0, n).astype(np.float32)]
                t_dec, (logits, ious) = _timed(lambda: fam.decode_boxes(model, x, [boxes], regions))
                t_paste, insts = _timed(lambda: fam.to_instances(model, logits, ious, regions,
                                                                 shape, scores))
                t_post, final = _timed(lambda: postprocess(insts[0], cfg))
                total = t_detect + t_dec + t_paste + t_post
                per_box.setdefault(name, {})[n] = t_dec / n
                print(f"| {name} | {n} | {t_detect:.2f} | {t_dec:.2f} | {t_paste:.2f} | "
                      f"{t_post:.2f} | {total:.2f} | {1000 * t_dec / n:.1f} | {len(final)} |",
                      flush=True)
    print()
    for name, d in per_box.items():
        if len(d) > 1:
            lo, hi = min(d), max(d)
            print(f"- {name}: decode time x{hi * d[hi] / (lo * d[lo]):.2f} for x{hi / lo:.0f} "
                  f"boxes ({1000 * d[lo]:.1f} -> {1000 * d[hi]:.1f} ms/box)")
    print(f"\n(detector found {len(dets[0])} boxes with random weights; its time is per image, "
          "independent of the prompt count)")


if __name__ == "__main__":
    main()
