"""The cell type of a whole image from its pixels: a few texture statistics and a softmax
regression, fitted on annotated images whose types are known.

    clf = TypeClassifier.fit(np.stack([type_features(img) for img in images]), types)
    clf.predict(type_features(test_image))          # -> "astro"
    clf.to_dict() / TypeClassifier.from_dict(d)      # plain lists: JSON, YAML, checkpoints

Every competition image holds one cell type, and the type picks the postprocessing thresholds.
A class-agnostic model (the UNet) cannot vote for a type, and a per-type detector votes with
its own mistakes; the three types look different at the pixel level (cort: sparse small round
cells; astro: large flat cells; shsy5y: dense cells with neurites), so image statistics decide
it well on their own (`python -m bench celltype` measures it on grouped folds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FEATURES_VERSION = 1
_SCALES = (1, 2, 4, 8)
_HIST_BINS = 16


def type_features(image: np.ndarray) -> np.ndarray:
    """Texture statistics of one image, invariant to its brightness and contrast.

    Args:
        image: (H, W) or (H, W, C) array, any numeric dtype (channels are averaged).
    Returns:
        (44,) float32: at 4 scales (1, 1/2, 1/4, 1/8), the standardised image's sd, mean and sd
        of |Laplacian|, mean and 90th percentile of the gradient magnitude, 1st and 99th
        percentiles; then a 16-bin histogram of the standardised values over [-4, 4].
    """
    import cv2

    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.ndim != 2 or min(img.shape) < 16:
        raise ValueError(f"type_features needs a (H, W) image of at least 16x16, got {image.shape}")
    img = (img - img.mean()) / (img.std() + 1e-6)
    h, w = img.shape
    out: list[float] = []
    for s in _SCALES:
        g = img if s == 1 else cv2.resize(img, (max(w // s, 4), max(h // s, 4)),
                                          interpolation=cv2.INTER_AREA)
        lap = cv2.Laplacian(g, cv2.CV_32F)
        mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
        p1, p99 = np.percentile(g, (1, 99))
        out += [g.std(), np.abs(lap).mean(), lap.std(), mag.mean(), np.percentile(mag, 90), p1, p99]
    hist, _ = np.histogram(img, bins=_HIST_BINS, range=(-4.0, 4.0))
    out += list(hist / max(hist.sum(), 1))
    return np.asarray(out, np.float32)


@dataclass(frozen=True)
class TypeClassifier:
    """Multinomial logistic regression on standardised ``type_features``.

    types: (K,) type names; mean, std: (F,) feature standardisation; weights: (F + 1, K), the
    last row the bias.
    """

    types: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    version: int = FEATURES_VERSION

    @classmethod
    def fit(cls, features: np.ndarray, types: Sequence[str], l2: float = 1e-3,
            steps: int = 2000, lr: float = 0.5) -> "TypeClassifier":
        """Fit on (N, F) features and N type names (at least two distinct types).

        Full-batch gradient descent on the mean cross-entropy plus ``l2`` * |W|² / 2 (bias
        excluded): N is hundreds at most, so this takes well under a second, deterministically.
        """
        x = np.asarray(features, np.float64)
        names = tuple(sorted(set(types)))
        if x.ndim != 2 or len(x) != len(types):
            raise ValueError(f"features must be (N, F) with N = {len(types)} types, got {x.shape}")
        if len(names) < 2:
            raise ValueError(f"a type classifier needs at least two cell types, got {names}")
        y = np.searchsorted(np.asarray(names), np.asarray(types))
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = np.c_[(x - mean) / std, np.ones(len(x))]
        target = np.eye(len(names))[y]
        w = np.zeros((z.shape[1], len(names)))
        decay = np.ones((z.shape[1], 1))
        decay[-1] = 0.0
        for _ in range(steps):
            p = _softmax(z @ w)
            w -= lr * (z.T @ (p - target) / len(z) + l2 * decay * w)
        return cls(names, mean.astype(np.float32), std.astype(np.float32), w.astype(np.float32))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(F,) or (N, F) features -> (K,) or (N, K) type probabilities (order: ``types``)."""
        x = np.asarray(features, np.float64)
        z = (x - self.mean) / self.std
        z = np.concatenate([z, np.ones(z.shape[:-1] + (1,))], axis=-1)
        return _softmax(z @ self.weights.astype(np.float64))

    def predict(self, features: np.ndarray) -> str | list[str]:
        """The most probable type of (F,) features, or the list of them for (N, F)."""
        p = self.probabilities(features)
        if p.ndim == 1:
            return self.types[int(p.argmax())]
        return [self.types[int(i)] for i in p.argmax(1)]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "types": list(self.types),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TypeClassifier":
        if d.get("version") != FEATURES_VERSION:
            raise ValueError(f"type classifier version {d.get('version')} is not "
                             f"{FEATURES_VERSION}: refit it with this cellseg")
        return cls(tuple(d["types"]), np.asarray(d["mean"], np.float32),
                   np.asarray(d["std"], np.float32), np.asarray(d["weights"], np.float32))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_on_records(records: Sequence[Any], log: Any = None) -> "TypeClassifier | None":
    """The classifier of a training set: fitted on the images of ``records`` whose
    ``cell_type`` is known; None when they hold fewer than two types (nothing to decide).

    Reads every such image once (~20 ms each: seconds for the competition's 606).
    """
    known = [r for r in records if getattr(r, "cell_type", None)]
    types = sorted({r.cell_type for r in known})
    if len(types) < 2:
        return None
    features = np.stack([type_features(r.read_image()) for r in known])
    clf = TypeClassifier.fit(features, [r.cell_type for r in known])
    if log is not None:
        counts = ", ".join(f"{t} {sum(r.cell_type == t for r in known)}" for t in types)
        log(f"cell-type classifier: fitted on {len(known)} images ({counts}); predict uses it "
            f"to pick each test image's thresholds")
    return clf
