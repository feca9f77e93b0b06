"""The masks core: pure numpy formats and the competition metric (no torch, no cv2).

    from cellseg.core import rle                    # competition RLE strings
    from cellseg.core.metrics import score          # the competition metric
    from cellseg.core.instances import Instances    # predicted cells of one image
    from cellseg.core.submission import write_submission, validate_submission

Nothing here imports torch, and nothing outside the standard library, numpy and (lazily) scipy /
pycocotools: the Kaggle kernel, ``cellseg score`` and ``cellseg validate`` use it as is.
"""
