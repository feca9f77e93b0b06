"""The kernel's model check: one small image predicted at build time and again on Kaggle's device.

    # build time (cellseg kaggle build-kernel does this): the expected result, embedded in the kernel
    probe = build_probe(weights, config_yaml=text, predict_args=[], image=None)   # synthetic image
    # run time (the kernel, after installing cellseg, before the test set):
    python -m cellseg.kaggle.probe check EXPECTED.json PROBE_SUBMISSION.csv --out RESULT.json

Both runs go through ``cellseg predict`` with the same weights, inference config and arguments,
so any difference comes from the environment: a new torch or torchvision, a changed default, a
wrong device, fp16 on a GPU instead of fp32 on a CPU, a broken install, altered weights.

Tolerance (:data:`MIN_MEAN_IOU`, :data:`COUNT_TOLERANCE`): instances are matched one-to-one at
IoU > 0.5 (the competition metric's matching, :func:`cellseg.core.metrics.match_image`); the check
passes when the sum of matched IoUs divided by the LARGER of the two counts is at least 0.9
(an unmatched instance on either side counts 0) and the counts differ by at most 5% (at least one
instance of slack, for small counts). Numerical drift (fp16 vs fp32, another cuDNN kernel) moves
boundary pixels, which leaves each matched IoU well above 0.9 for cells of 100+ pixels, and can
push a borderline detection across a score threshold, which the 5% count slack absorbs. Altered
or wrong weights change most instances and fail both conditions.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

MIN_MEAN_IOU = 0.9
COUNT_TOLERANCE = 0.05
PROBE_ID = "cellseg_probe"
# a crop-sized synthetic image: small enough to embed in the code file (tens of kB of base64)
SYNTHETIC = {"cell_type": "cort", "seed": 20211014, "shape": (260, 352)}


def synthetic_probe_png() -> tuple[bytes, str]:
    """(PNG bytes, description) of the default probe: a synthetic (260, 352) uint8 cort image."""
    import cv2

    from cellseg.data.synthetic import scene

    image, _ = scene(SYNTHETIC["cell_type"], SYNTHETIC["seed"], SYNTHETIC["shape"])
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("cv2 could not encode the synthetic probe image")
    desc = (f"synthetic {SYNTHETIC['cell_type']} image {SYNTHETIC['shape'][0]}x"
            f"{SYNTHETIC['shape'][1]} (seed {SYNTHETIC['seed']})")
    return buf.tobytes(), desc


def crop_probe_png(spec: str) -> tuple[bytes, str]:
    """(PNG bytes, description) of ``PATH[:Y,X,H,W]``: a crop of an image the user names
    (default crop: the top-left 260x352)."""
    import cv2

    from cellseg.errors import InputError
    from cellseg.io import read_gray

    path, _, box = spec.partition(":")
    image = read_gray(path)
    try:
        y, x, h, w = (int(v) for v in box.split(",")) if box else (0, 0, *SYNTHETIC["shape"])
    except ValueError:
        raise InputError(f"probe crop {box!r} is not Y,X,H,W", where="--probe-image",
                         fix="write PATH or PATH:Y,X,H,W, e.g. train/0030fd0e6378.png:0,0,260,352"
                         ) from None
    crop = image[y:y + h, x:x + w]
    if crop.shape != (h, w) or h < 32 or w < 32:
        raise InputError(f"probe crop {y},{x},{h},{w} does not fit {path} ({image.shape[0]}x"
                         f"{image.shape[1]}) or is under 32 px", where="--probe-image",
                         fix="pick a crop inside the image, at least 32x32")
    ok, buf = cv2.imencode(".png", crop)
    return buf.tobytes(), f"crop {y},{x},{h},{w} of {Path(path).name}"


def run_predict(weights: Sequence[str | Path], image_png: bytes, *, config_yaml: str | None,
                predict_args: Sequence[str] = (), device: str = "cpu") -> list[str]:
    """The probe image's rows (RLE strings) as ``cellseg predict`` writes them, on ``device``.

    The same command line the kernel runs, so both sides share one inference path.
    """
    from cellseg.cli import main
    from cellseg.core.submission import read_submission
    from cellseg.errors import UserError

    with tempfile.TemporaryDirectory(prefix="cellseg-probe-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        (folder / f"{PROBE_ID}.png").write_bytes(image_png)
        out = Path(tmp) / "probe.csv"
        cmd = ["predict", "--weights", *map(str, weights), "--images", str(folder), "--out",
               str(out), "--no-progress", *predict_args]
        if "--device" not in predict_args:
            cmd += ["--device", device]
        if config_yaml:
            (Path(tmp) / "infer.yaml").write_text(config_yaml)
            cmd += ["--config", str(Path(tmp) / "infer.yaml")]
        rc = main(cmd)
        if rc != 0 or not out.is_file():
            raise UserError(f"the model(s) failed on the probe image at build time (cellseg "
                            f"predict exited {rc})", fix="run `cellseg predict` on one image to "
                            "see why, or pass --no-probe")
        return read_submission(out).get(PROBE_ID, [])


def build_probe(weights: Sequence[str | Path], *, config_yaml: str | None,
                predict_args: Sequence[str] = (), image: str | None = None) -> dict[str, Any]:
    """The expected probe result embedded in the kernel: image (base64 PNG), its instances
    (competition RLE over its (H, W)), their count, where they were computed, the tolerance."""
    import platform

    import cv2
    import numpy as np
    import torch

    png, desc = crop_probe_png(image) if image else synthetic_probe_png()
    shape = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE).shape
    rles = run_predict(weights, png, config_yaml=config_yaml, predict_args=predict_args)
    return {"id": PROBE_ID, "image": desc, "shape": [int(shape[0]), int(shape[1])],
            "png_base64": base64.b64encode(png).decode("ascii"), "rles": rles, "count": len(rles),
            "computed_on": f"cpu, torch {torch.__version__}, python {platform.python_version()}",
            "min_mean_iou": MIN_MEAN_IOU, "count_tolerance": COUNT_TOLERANCE}


def compare(expected: Sequence[str], actual: Sequence[str], shape: tuple[int, int], *,
            min_mean_iou: float = MIN_MEAN_IOU,
            count_tolerance: float = COUNT_TOLERANCE) -> dict[str, Any]:
    """Compare two instance lists (competition RLE strings over ``shape`` = (H, W)).

    Returns ``{"ok", "mean_iou", "n_expected", "n_actual", "matched", "message"}``; ``mean_iou``
    is the sum of IoUs of pairs matched one-to-one at IoU > 0.5, over max(n_expected, n_actual)
    (1.0 when both are empty).
    """
    from cellseg.core.metrics import match_image

    n_exp, n_act = len(expected), len(actual)
    if n_exp == 0 and n_act == 0:
        mean_iou, matched = 1.0, 0
    else:
        res = match_image(list(expected), list(actual), tuple(shape))
        matched = int(len(res.match_iou))
        mean_iou = float(res.match_iou.sum()) / max(n_exp, n_act)
    slack = max(1, math.floor(count_tolerance * n_exp))
    count_ok = abs(n_act - n_exp) <= slack
    ok = count_ok and mean_iou >= min_mean_iou
    message = (f"probe {'passed' if ok else 'FAILED'}: {n_act} instances (expected {n_exp}, "
               f"allowed +-{slack}), mean matched IoU {mean_iou:.3f} (needs >= {min_mean_iou})")
    return {"ok": ok, "mean_iou": round(mean_iou, 4), "n_expected": n_exp, "n_actual": n_act,
            "matched": matched, "count_slack": slack, "message": message}


def check_files(expected_json: str | Path, csv: str | Path) -> dict[str, Any]:
    """:func:`compare` of the embedded probe (JSON) with the probe rows ``csv`` holds."""
    from cellseg.core.submission import read_submission

    exp = json.loads(Path(expected_json).read_text())
    actual = read_submission(csv).get(exp["id"], [])
    result = compare(exp["rles"], actual, tuple(exp["shape"]),
                     min_mean_iou=exp.get("min_mean_iou", MIN_MEAN_IOU),
                     count_tolerance=exp.get("count_tolerance", COUNT_TOLERANCE))
    result.update(expected={"count": exp["count"], "rles": exp["rles"],
                            "computed_on": exp.get("computed_on")},
                  actual={"count": len(actual), "rles": actual})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cellseg.kaggle.probe check EXPECTED.json CSV [--out RESULT.json]``: exit 0
    when the probe matches, 1 when not (the message says by how much)."""
    parser = argparse.ArgumentParser(prog="python -m cellseg.kaggle.probe")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("check", help="compare a probe prediction with the expected one")
    p.add_argument("expected")
    p.add_argument("csv")
    p.add_argument("--out", help="write the full result (both instance lists) here")
    args = parser.parse_args(argv)
    result = check_files(args.expected, args.csv)
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    print(result["message"], flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
