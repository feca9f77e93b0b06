"""The image-level cell-type classifier: features, fit, predict, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.data.typeclf import TypeClassifier, type_features


def _image(kind: str, seed: int) -> np.ndarray:
    """Two textures that differ the way cort (few small blobs) and shsy5y (dense fine) do."""
    rng = np.random.default_rng(seed)
    img = np.full((130, 176), 128.0) + rng.normal(0, 3, (130, 176))
    n, r = (8, 6) if kind == "sparse" else (160, 2)
    yy, xx = np.mgrid[:130, :176]
    for y, x in zip(rng.integers(0, 130, n), rng.integers(0, 176, n)):
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] += 30
    return img.clip(0, 255).astype(np.uint8)


def test_features_ignore_brightness_and_contrast():
    img = _image("dense", 0)
    f = type_features(img)
    assert f.shape == (44,) and f.dtype == np.float32 and np.isfinite(f).all()
    brighter = np.round(img.astype(np.float32) * 1.2 - 20).astype(np.uint8)  # no clipping
    assert np.allclose(type_features(brighter), f, rtol=0.05, atol=0.02)
    assert np.allclose(type_features(np.dstack([img] * 3)), f)  # 3 equal channels = gray
    with pytest.raises(ValueError, match="at least 16x16"):
        type_features(np.zeros((8, 8), np.uint8))


def test_fit_separates_two_textures_and_round_trips():
    kinds = ["sparse", "dense"] * 10
    x = np.stack([type_features(_image(k, i)) for i, k in enumerate(kinds)])
    clf = TypeClassifier.fit(x, kinds)
    assert clf.types == ("dense", "sparse")
    held_out = np.stack([type_features(_image(k, 100 + i)) for i, k in enumerate(kinds)])
    assert clf.predict(held_out) == kinds
    again = TypeClassifier.from_dict(clf.to_dict())
    assert np.allclose(again.probabilities(held_out), clf.probabilities(held_out))
    assert clf.predict(held_out[0]) == "sparse"


def test_fit_needs_two_types_and_matching_lengths():
    x = np.zeros((4, 44), np.float32)
    with pytest.raises(ValueError, match="at least two cell types"):
        TypeClassifier.fit(x, ["cort"] * 4)
    with pytest.raises(ValueError, match="features must be"):
        TypeClassifier.fit(x, ["cort", "astro"])
    with pytest.raises(ValueError, match="refit it"):
        TypeClassifier.from_dict({"version": 0})
