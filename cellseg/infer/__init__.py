"""Inference: tiled prediction, flip TTA, ensembles, postprocessing, submission, threshold tuning.

    from cellseg.infer.predict import load_models, predict_image
    models = load_models(["runs/unet/best.pt"], device="cpu")
    instances = predict_image(models, image, InferenceConfig())

Modules: ``config`` (InferenceConfig), ``tiling`` (tiles, blending, seams), ``tta`` (flips),
``merge`` (seam merging and mask voting), ``postprocess`` (thresholds, NMS, overlap removal),
``predict`` (the pipeline and submission writing), ``tune`` (per-cell-type thresholds).
Nothing heavy is imported here.
"""
