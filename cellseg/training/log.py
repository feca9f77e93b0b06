"""Training logs: ``log.csv`` (one row per epoch), ``steps.csv`` (every few optimiser steps) and
``curves.png`` (losses, learning rate and validation score), all in the run's output folder.

Files are rewritten atomically from the rows held in memory, so a run killed at any moment leaves
complete CSVs; ``TrainLog.resume(step)`` reloads them and drops rows written after the checkpoint
the run resumes from.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from cellseg.io import atomic_open, atomic_path


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = []
        for row in csv.DictReader(fh):
            rows.append({k: _num(v) for k, v in row.items()})
        return rows


def _num(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        f = float(text)
    except ValueError:
        return text
    return int(f) if f.is_integer() and "." not in text and "e" not in text.lower() else f


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class TrainLog:
    """Rows of per-epoch and per-step metrics for one run folder."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.epochs: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    @property
    def epoch_csv(self) -> Path:
        return self.out_dir / "log.csv"

    @property
    def step_csv(self) -> Path:
        return self.out_dir / "steps.csv"

    @property
    def curves_png(self) -> Path:
        return self.out_dir / "curves.png"

    def resume(self, step: int, epoch: int) -> None:
        """Reload existing CSVs, keeping step rows up to optimiser step ``step`` and epoch rows of
        the ``epoch`` finished epochs (a row of a partial epoch, cut by max_steps, is dropped: the
        resumed run writes that epoch's row when it completes)."""
        self.epochs = [r for r in _read_rows(self.epoch_csv)
                       if (r.get("step") or 0) <= step and (r.get("epoch") or 0) <= epoch]
        self.steps = [r for r in _read_rows(self.step_csv) if (r.get("step") or 0) <= step]

    def add_step(self, row: Mapping[str, Any]) -> None:
        self.steps.append(dict(row))

    def add_epoch(self, row: Mapping[str, Any]) -> None:
        self.epochs.append(dict(row))

    def write(self, plot: bool = True) -> None:
        """Rewrite the CSVs (and the PNG when ``plot``)."""
        if self.epochs:
            _write_rows(self.epoch_csv, self.epochs)
        if self.steps:
            _write_rows(self.step_csv, self.steps)
        if plot and (self.epochs or self.steps):
            plot_curves(self.epochs, self.steps, self.curves_png)


def plot_curves(epochs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]],
                path: str | os.PathLike, title: str | None = None) -> None:
    """Three panels: training losses vs step, learning rate vs step, validation score vs epoch."""
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss, ax_lr, ax_val = axes
    # step-level rows give smooth curves; fall back to epoch rows for short runs
    src = steps if len(steps) >= 2 else epochs
    loss_keys = sorted({k for r in src for k in r if k not in _NOT_LOSSES
                        and not k.startswith("val_") and isinstance(r[k], (int, float))},
                       key=lambda k: (k != "loss", k))
    for k in loss_keys:
        xs, ys = _series(src, "step", k)
        if xs:
            ax_loss.plot(xs, ys, label=k, lw=2 if k == "loss" else 1)
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("training loss")
    values = [r.get(k) for r in src for k in loss_keys if r.get(k) is not None]
    if values and all(_positive(v) for v in values):
        ax_loss.set_yscale("log")
    if loss_keys:
        ax_loss.legend(fontsize=8)
    xs, ys = _series(src, "step", "lr")
    ax_lr.plot(xs, ys)
    ax_lr.set_xlabel("optimiser step")
    ax_lr.set_ylabel("learning rate")
    val_keys = sorted({k for r in epochs for k in r if k.startswith("val_score")})
    for k in val_keys:
        xs, ys = _series(epochs, "epoch", k)
        if xs:
            ax_val.plot(xs, ys, marker="o", label=k[4:], lw=2 if k == "val_score" else 1)
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation score (competition metric)")
    if val_keys:
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_val.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


_NOT_LOSSES = {"step", "epoch", "lr", "seconds", "images_per_s"}


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and v > 0


def _series(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        vx, vy = r.get(x), r.get(y)
        if isinstance(vx, (int, float)) and isinstance(vy, (int, float)) and math.isfinite(vy):
            xs.append(float(vx))
            ys.append(float(vy))
    return xs, ys
