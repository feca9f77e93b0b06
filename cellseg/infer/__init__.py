"""Inference: tiled prediction, flip TTA, ensembles, postprocessing, submission, threshold tuning.

    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models, predict_image
    models = load_models(["runs/unet/best.pt"], device="cpu")
    instances = predict_image(models, image, load_inference_config())

Modules: ``config`` (InferenceConfig and its defaults, ``load_inference_config``), ``tiling``
(tiles, blending, seams), ``tta`` (flips), ``merge`` (seam merging and mask voting), ``stitch``
(models + images -> stitched maps and instance passes; their decode and vote), ``celltype``
(which type's thresholds apply), ``postprocess`` (thresholds, NMS, overlap removal), ``predict``
(the pipeline), ``output`` (submission CSV, COCO results, mask PNGs, overlays), ``tune``
(per-cell-type and decode thresholds). Nothing heavy is imported here.
"""
