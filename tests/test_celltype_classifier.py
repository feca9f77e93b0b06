"""The cell-type decision of an image whose type nobody gives: the training images' pixel
classifier, stored in the checkpoint, picks its thresholds (cellseg.infer.celltype)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import torch  # noqa: F401  (a hard dependency: fail, never skip)


@pytest.fixture(scope="module")
def real_records(shared_sartorius_409: Path) -> list:
    """8 real images of each of the three types from sartorius_409 (truth not needed)."""
    from cellseg.data.sources import load_sources

    records = load_sources([str(shared_sartorius_409)], annotated=True)
    by_type: dict[str, list] = {}
    for r in records:
        by_type.setdefault(r.cell_type, []).append(r)
    return [r for t in sorted(by_type) for r in by_type[t][:8]]


def _member(clf, weight: float = 1.0):
    return (SimpleNamespace(type_classifier=clf), None, weight)


def test_fit_on_records_and_pixel_type_on_other_images(real_records: list) -> None:
    from cellseg.data.typeclf import fit_on_records
    from cellseg.infer.celltype import pixel_cell_type

    train = [r for i, r in enumerate(real_records) if i % 2 == 0]
    held = [r for i, r in enumerate(real_records) if i % 2 == 1]
    lines: list[str] = []
    clf = fit_on_records(train, log=lines.append)
    assert clf is not None and clf.types == ("astro", "cort", "shsy5y")
    assert "fitted on 12 images" in lines[0]
    got = [pixel_cell_type([_member(clf)], r.read_image()) for r in held]
    right = sum(g == r.cell_type for g, r in zip(got, held))
    wrong = [(g, r.cell_type) for g, r in zip(got, held) if g != r.cell_type]
    assert right >= 9, wrong  # 4 training images per type; chance is 4 of 12
    # one type only: nothing to decide, no classifier
    assert fit_on_records([r for r in train if r.cell_type == "cort"]) is None
    # members without a classifier: no pixel decision (the vote / default applies)
    assert pixel_cell_type([(SimpleNamespace(), None, 1.0)], held[0].read_image()) is None


def test_ensemble_averages_member_probabilities() -> None:
    from cellseg.data.typeclf import TypeClassifier
    from cellseg.infer.celltype import pixel_cell_type

    def fixed(types, probs):  # a classifier whose probabilities ignore the features
        k = len(types)
        w = np.zeros((45, k), np.float32)
        w[-1] = np.log(np.asarray(probs, np.float32))
        return TypeClassifier(tuple(types), np.zeros(44, np.float32), np.ones(44, np.float32), w)

    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    a = fixed(("astro", "cort"), (0.6, 0.4))
    b = fixed(("astro", "cort"), (0.1, 0.9))
    assert pixel_cell_type([_member(a)], image) == "astro"
    assert pixel_cell_type([_member(a), _member(b)], image) == "cort"  # 0.35 vs 0.65
    assert pixel_cell_type([_member(a, 10.0), _member(b)], image) == "astro"  # weighted


def test_predict_images_given_type_then_classifier(monkeypatch, real_records: list) -> None:
    """predict_images hands postprocess the given type first, else the classifier's."""
    import cellseg.infer.predict as P
    from cellseg.core.instances import Instances
    from cellseg.data.typeclf import fit_on_records
    from cellseg.infer.config import load_inference_config

    clf = fit_on_records(real_records)
    images = [r.read_image() for r in real_records[::8]]  # one per type: astro, cort, shsy5y
    seen: list = []
    monkeypatch.setattr(P, "predict_raw", lambda models, ims, cfg, **kw: [
        Instances.from_label_image(np.zeros(im.shape[:2], np.int32)) for im in ims])
    monkeypatch.setattr(P, "postprocess", lambda inst, cfg, cell_type=None: seen.append(cell_type))
    P.predict_images([_member(clf)], images, load_inference_config())
    assert seen == ["astro", "cort", "shsy5y"]
    seen.clear()
    P.predict_images([_member(clf)], images, load_inference_config(),
                     cell_types=["cort", None, None])
    assert seen == ["cort", "cort", "shsy5y"]


def test_tune_tunes_per_type_when_the_checkpoint_can_tell_types(real_records: list) -> None:
    from cellseg.data.typeclf import fit_on_records
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.tune import predict_knows_types

    cfg = load_inference_config()
    assert predict_knows_types(cfg, [_member(fit_on_records(real_records))])
    assert not predict_knows_types(cfg, [(SimpleNamespace(), None, 1.0)])
