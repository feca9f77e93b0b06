"""Which cell type's thresholds apply to an image: decided here, once.

    from cellseg.infer.celltype import image_cell_type, label_names
    names = label_names(cfg, models)                 # label index -> type name, or ()
    ctype = image_cell_type(raw, names, given=None)  # "astro", or None: cfg.default applies

The rule, the same for ``cellseg predict``, the Kaggle kernel, training validation, ``cv`` and
``pseudo-label``: a type the caller gives (``--cell-type``) wins; otherwise the models' pixel
classifier decides (``cellseg.data.typeclf``: fitted on the training images at training time and
stored in the checkpoint as ``type_classifier``; an ensemble averages its members'
probabilities); otherwise the image's instances vote through their labels when the labels name
types (a per-type head: ``model.spec.class_map``, or ``cfg.cell_type_names``); otherwise the type
is unknown and ``cfg.default`` applies. A record's own ``cell_type`` (known for training data,
never for test images) is not used: validation must pick thresholds the way predict will on the
test set. The classifier comes before the vote because it is right more often
(docs/validation.md, "Cell-type decision").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.core.instances import Instances
    from cellseg.infer.config import InferenceConfig


def type_classifiers(models: Sequence[tuple[Any, Any, float]]) -> list[tuple[Any, float]]:
    """(classifier, member weight) of the members whose checkpoint carried a type classifier
    (``model.type_classifier``, set by ``cellseg.infer.predict.load_models`` and by training)."""
    return [(clf, w) for model, _, w in models
            if (clf := getattr(model, "type_classifier", None)) is not None]


def pixel_cell_type(models: Sequence[tuple[Any, Any, float]], image: np.ndarray) -> str | None:
    """The type the models' pixel classifiers give one (H, W) image: the weighted mean of their
    probabilities over the types they share; None when no member has a classifier."""
    clfs = type_classifiers(models)
    if not clfs:
        return None
    from cellseg.data.typeclf import type_features

    feats = type_features(image)
    names = sorted(set.intersection(*(set(c.types) for c, _ in clfs)))
    if not names:
        return None
    total = np.zeros(len(names))
    for clf, w in clfs:
        p = clf.probabilities(feats)
        total += max(w, 1e-12) * np.array([p[clf.types.index(n)] for n in names])
    return names[int(np.argmax(total))]


def class_names(models: Sequence[tuple[Any, Any, float]]) -> tuple[str, ...]:
    """Cell type names of the label indices of per-type heads (``model.spec.class_map``,
    {name: index}), from the first (model, family, weight) member that has one; () when none has."""
    for model, _, _ in models:
        cmap = class_map(model)
        if cmap:
            return tuple(name for name, _ in sorted(cmap.items(), key=lambda kv: kv[1]))
    return ()


def class_map(model: Any) -> dict[str, int] | None:
    """``model.spec.class_map``; None for a class-agnostic model or a network built elsewhere
    (no ``spec``)."""
    spec = getattr(model, "spec", None)
    return spec.class_map if spec is not None else None


def label_names(cfg: "InferenceConfig", models: Sequence[tuple[Any, Any, float]] = ()
                ) -> tuple[str, ...]:
    """Label index -> cell type name for the type vote: ``cfg.cell_type_names`` when set, else
    the models' class names; () when labels carry no type (class-agnostic models)."""
    return tuple(cfg.cell_type_names) or class_names(models)


def vote_cell_type(inst: "Instances", names: Sequence[str]) -> str | None:
    """Image-level cell type: the label with the largest summed score, mapped through ``names``
    (label index -> name). None when ``names`` is empty or no instance has a named label."""
    if not names or len(inst) == 0:
        return None
    labels = inst.labels
    valid = (labels >= 0) & (labels < len(names))
    if not valid.any():
        return None
    sums = np.bincount(labels[valid], weights=inst.scores[valid].astype(np.float64),
                       minlength=len(names))
    return names[int(np.argmax(sums))]


def image_cell_type(inst: "Instances", names: Sequence[str], given: str | None = None
                    ) -> str | None:
    """The cell type whose thresholds apply to one image (module docstring): ``given`` when not
    None, else the vote of ``inst`` (raw instances, before thresholds) through ``names``."""
    return given if given is not None else vote_cell_type(inst, names)
