"""How often is an image's cell type decided right from its pixels alone?

    .venv/bin/python -m bench celltype       # ~1-2 min on one core (../shared/data/sartorius_409)

``cellseg.data.typeclf``: texture statistics of each annotated image and a softmax regression,
fitted on 4 folds and tested on the 5th, for two splits of the 409 images: ``grouped`` (the kit's
``make_folds``: near-duplicate frames kept in one fold, stratified by type), the honest figure,
and ``random`` (frames of one well on both sides), for comparison. Prints the accuracy per true
type and the confusion matrix of the grouped split.
"""

from __future__ import annotations

import time

import numpy as np

N_FOLDS = 5


def cross_validate(features: np.ndarray, types: list[str], folds: np.ndarray) -> list[str]:
    """The held-out prediction of every image, each from a classifier fitted on the others."""
    from cellseg.data.typeclf import TypeClassifier

    pred = [""] * len(types)
    for k in np.unique(folds):
        train = np.flatnonzero(folds != k)
        clf = TypeClassifier.fit(features[train], [types[i] for i in train])
        for i, t in zip(np.flatnonzero(folds == k), clf.predict(features[folds == k])):
            pred[i] = t
    return pred


def main() -> None:
    from bench import shared_train_records
    from cellseg.data.folds import make_folds
    from cellseg.data.typeclf import type_features

    records = shared_train_records()
    if records is None:
        return
    t0 = time.perf_counter()
    features = np.stack([type_features(r.read_image()) for r in records])
    per_image = (time.perf_counter() - t0) / len(records)
    types = [r.cell_type for r in records]
    grouped = make_folds(records, n_folds=N_FOLDS, seed=0, log=lambda s: None)
    splits = {"grouped": np.array([grouped[r.image_id] for r in records])}
    rng = np.random.default_rng(0)
    splits["random"] = rng.permutation(np.arange(len(records)) % N_FOLDS)
    names = sorted(set(types))
    print(f"{len(records)} images ({', '.join(f'{types.count(t)} {t}' for t in names)}); "
          f"features {per_image * 1000:.0f} ms / image\n")
    print("| split | accuracy | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    confusion = None
    for split, folds in splits.items():
        pred = cross_validate(features, types, folds)
        right = np.array([p == t for p, t in zip(pred, types)])
        per_type = [right[[t == n for t in types]].mean() for n in names]
        print(f"| {split} | {right.mean():.3f} | " + " | ".join(f"{v:.3f}" for v in per_type) + " |")
        if split == "grouped":
            confusion = [[sum(1 for p, t in zip(pred, types) if t == a and p == b) for b in names]
                         for a in names]
    print("\nconfusion (grouped; rows: true type, columns: decided type)\n")
    print("| true \\ decided | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for a, row in zip(names, confusion):
        print(f"| {a} | " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
