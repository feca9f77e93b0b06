"""Is the type predict decides for an image right? Each checkpoint alone and their ensemble.

    python -m bench.celltype_decided --weights RUN/kit/best.pt RUN/mrcnn/best.pt \\
        --data RUN/fold_0/test_data

``predict`` decides an image's type with ``cellseg.infer.celltype.pixel_cell_type`` (the pixel
classifier every trained checkpoint carries, fitted on that run's training images; an ensemble
averages its members' probabilities). Give annotated images none of the checkpoints trained on
(a ``cellseg cv`` fold's ``test_data``): prints the accuracy per true type for each checkpoint
and for all of them together.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="trained checkpoint(s)")
    p.add_argument("--data", nargs="+", required=True, help="annotated images (with types)")
    return p


def accuracy(decided: list[str | None], truth: list[str]) -> dict[str, float]:
    """{"all": share right, <type>: share right among images of that true type}."""
    out = {"all": sum(d == t for d, t in zip(decided, truth)) / len(truth)}
    for name in sorted(set(truth)):
        idx = [i for i, t in enumerate(truth) if t == name]
        out[name] = sum(decided[i] == name for i in idx) / len(idx)
    return out


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from cellseg.data.sources import load_sources
    from cellseg.infer.celltype import pixel_cell_type, type_classifiers
    from cellseg.infer.predict import load_models

    records = [r for r in load_sources(args.data, annotated=True) if r.cell_type]
    truth = [r.cell_type for r in records]
    images = [r.read_image() for r in records]
    members = load_models(args.weights)
    rows = [(os.path.relpath(w), [m]) for w, m in zip(args.weights, members)]
    if len(members) > 1:
        rows.append(("ensemble of all", members))
    names = sorted(set(truth))
    print("| checkpoint(s) | accuracy | " + " | ".join(f"{n} ({truth.count(n)})" for n in names)
          + " |\n|---|---:|" + "---:|" * len(names))
    for label, models in rows:
        if not type_classifiers(models):
            print(f"| {label} | no pixel classifier in the checkpoint |")
            continue
        acc = accuracy([pixel_cell_type(models, im) for im in images], truth)
        print(f"| {label} | {acc['all']:.3f} | " + " | ".join(f"{acc[n]:.3f}" for n in names)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
