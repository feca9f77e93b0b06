"""What every peer in ``bench/`` shares with the kit and with each other: reading annotated
sources, writing its predictions as a submission, and scoring them with the kit's metric.

    summary = predict_and_score(out, test_records, lambda r: label_image, summary)

Only input/output and scoring live here (``cellseg.data.sources``, ``cellseg.core.masks``,
``cellseg.core.submission``, ``cellseg.core.metrics``), so that every method is read and scored by
the same code; each peer's model, targets, training loop and decode stay in its own module,
written independently of the kit. A peer's ``--out`` folder holds ``pred.csv`` (submission rows for
the test images, no overlaps), ``scores.json`` (settings, timing, per test image score when the
test images are annotated) and its model file.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


def load_annotated(specs: Sequence[str]) -> list:
    """Annotated records of ``specs`` (paths, optionally ``PATH:SPLIT``)."""
    from cellseg.data.sources import load_sources

    return load_sources(specs, annotated=True)


def load_test(specs: Sequence[str]) -> list:
    """Every image of ``specs`` (annotated or not)."""
    from cellseg.data.sources import load_sources

    return load_sources(specs)


def predict_and_score(out: str | os.PathLike, test_records: Sequence,
                      predict: Callable[[Any], np.ndarray], summary: dict[str, Any]
                      ) -> dict[str, Any]:
    """Predict every test record with ``predict(record) -> (H, W) int label image`` (0 = none,
    cells 1..N, no overlap by construction), write ``out/pred.csv`` and, with the per image scores
    of annotated test images, ``predict_seconds`` and ``train_cpu_seconds`` (this process's CPU
    time, all threads, until now: loading and training, the budget ``cellseg cv`` compares) added
    to ``summary``, ``out/scores.json``. Returns the completed summary."""
    from cellseg.core import masks, metrics
    from cellseg.core.submission import SubmissionWriter
    from cellseg.io import write_json

    train_cpu = time.process_time()
    out = Path(out)
    per_image: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with SubmissionWriter(out / "pred.csv") as writer:
        for r in test_records:
            labels = predict(r)
            writer.add(r.image_id, masks.encode_labels(labels), shape=r.shape)
            if r.rles:
                res = metrics.match_image(r.rles, labels, r.shape)
                per_image[r.image_id] = {"score": res.score, "cell_type": r.cell_type,
                                         "n_true": res.n_true, "n_pred": res.n_pred}
    summary = {**summary, "predict_seconds": round(time.perf_counter() - t0, 1),
               "train_cpu_seconds": round(train_cpu, 1),
               "per_image": per_image,
               "score": (float(np.mean([v["score"] for v in per_image.values()]))
                         if per_image else None)}
    write_json(out / "scores.json", summary)
    return summary


def add_common_arguments(p: argparse.ArgumentParser, steps: int) -> None:
    """The arguments ``cellseg cv --reference`` passes to every peer."""
    p.add_argument("--train", nargs="+", required=True, metavar="SRC",
                   help="annotated training sources (PATH or PATH:SPLIT)")
    p.add_argument("--test", nargs="+", required=True, metavar="SRC",
                   help="images to predict (scored when annotated)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
