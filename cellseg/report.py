"""Visual report of a scoring run: per-image overlays and summary plots (PNG).

    from cellseg.report import write_report
    write_report("report/", score_report, truth_runs, pred_runs, image_paths)

* ``overlay_<id>.png``: the grayscale image with outlines, matched at IoU > 0.5: predicted
  cells that match (true positives) green, unmatched predictions (false positives) red, true
  cells nobody found (false negatives) yellow.
* ``score_per_cell_type.png``: bar chart of the mean image score per cell type.
* ``score_vs_threshold.png``: score against the IoU threshold, overall and per cell type.

matplotlib (Agg backend) is imported only here, only when a report is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cellseg.core.masks import Runs, runs_to_indices
from cellseg.core.metrics import THRESHOLDS, ImageResult

if TYPE_CHECKING:
    from cellseg.core.metrics import ScoreReport

# RGB in 0..1
GREEN, RED, YELLOW = (0.1, 0.9, 0.2), (1.0, 0.15, 0.15), (1.0, 0.85, 0.0)


def outline_labels(runs: Runs, which: Sequence[int] | np.ndarray | None = None,
                   thickness: int = 1) -> np.ndarray:
    """(H, W) int64: ``i + 1`` on the inner boundary pixels of instance i, 0 elsewhere: the one
    outline of the kit (score reports and ``cellseg predict --overlay``).

    A boundary pixel is a pixel of the instance with a 4-neighbour outside it (the image border
    counts as outside, so a cell cut by the border gets a closed outline); ``thickness`` > 1
    erodes further in. Overlapping instances are allowed: each is rasterised alone inside its
    bounding box, and where outlines cross the instance listed later in ``which`` wins.

    Args:
        runs: the instances of one image.
        which: instance indices to outline (default: all, in index order).
    """
    h, w = runs.shape
    out = np.zeros((h, w), dtype=np.int64)
    which = np.arange(runs.n) if which is None else np.asarray(which, dtype=np.int64).ravel()
    if which.size == 0 or runs.starts.size == 0:
        return out
    chosen = np.isin(runs.owner, which)
    if thickness == 1:
        sub = Runs(runs.starts[chosen], runs.lengths[chosen], runs.owner[chosen], runs.n,
                   runs.shape)
        if not sub.overlapping():  # the usual case: one label paint and a neighbour test
            return _edges(sub.label_image(np.int32))
    from scipy import ndimage  # lazy (and slow to look up: keep it off the fast path)

    pix = runs_to_indices(runs.starts[chosen], runs.lengths[chosen])
    owner = np.repeat(runs.owner[chosen], runs.lengths[chosen])
    rank = np.full(runs.n, -1, np.int64)
    rank[which] = np.arange(which.size)  # drawing order: the order of ``which``
    order = np.argsort(rank[owner], kind="stable")
    pix, owner = pix[order], owner[order]
    bounds = np.flatnonzero(np.diff(owner)) + 1
    structure = ndimage.generate_binary_structure(2, 1)
    for p, k in zip(np.split(pix, bounds), owner[np.concatenate(([0], bounds))]):
        r, c = p // w, p % w
        r0, c0 = r.min(), c.min()
        crop = np.zeros((r.max() - r0 + 3, c.max() - c0 + 3), dtype=bool)  # 1 px margin
        crop[r - r0 + 1, c - c0 + 1] = True
        inner = ndimage.binary_erosion(crop, structure, iterations=thickness)
        er, ec = np.nonzero(crop & ~inner)
        out[er + r0 - 1, ec + c0 - 1] = k + 1
    return out


def _edges(lab: np.ndarray) -> np.ndarray:
    """(H, W) int64: ``lab`` where a 4-neighbour holds another label (or lies off the image),
    else 0; for disjoint instances this is exactly the per-instance inner boundary."""
    edge = np.zeros(lab.shape, bool)
    edge[0] = edge[-1] = True
    edge[:, 0] = edge[:, -1] = True
    ne = lab[1:] != lab[:-1]  # each comparison serves both pixels of the pair
    edge[1:] |= ne
    edge[:-1] |= ne
    ne = lab[:, 1:] != lab[:, :-1]
    edge[:, 1:] |= ne
    edge[:, :-1] |= ne
    return np.where(edge, lab, 0).astype(np.int64, copy=False)


def outline(runs: Runs, which: Sequence[int] | np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: the inner boundary pixels of the chosen instances (``outline_labels`` > 0)."""
    return outline_labels(runs, which, thickness) > 0


def gray_rgb(image: np.ndarray, *, stretch: bool = True) -> np.ndarray:
    """(H, W, 3) float64 RGB in [0, 1] of an (H, W) uint8 image.

    ``stretch``: map the 0.5-99.5 percentiles to [0, 0.85] (phase-contrast images are low
    contrast; the headroom keeps outlines visible); else the plain ``image / 255``.
    """
    img = np.asarray(image, dtype=np.float64)
    if stretch:
        lo, hi = np.percentile(img, (0.5, 99.5))
        gray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 0.85
    else:
        gray = img / 255.0
    return np.repeat(gray[..., None], 3, axis=2)


def overlay(image: np.ndarray, truth: Runs, pred: Runs, result: ImageResult) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1]: ``image`` (H, W) uint8 with TP/FP/FN outlines."""
    rgb = gray_rgb(image)
    matched_t = result.matches[:, 0] if result.matches.size else np.zeros(0, np.int64)
    matched_p = result.matches[:, 1] if result.matches.size else np.zeros(0, np.int64)
    fn = np.setdiff1d(np.arange(truth.n), matched_t)
    fp = np.setdiff1d(np.arange(pred.n), matched_p)
    for which, runs, color in ((fn, truth, YELLOW), (fp, pred, RED), (matched_p, pred, GREEN)):
        rgb[outline(runs, which)] = color
    return rgb


def instance_overlay(image: np.ndarray, runs: Runs) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the (H, W) uint8 ``image`` as is, each instance outlined in its own
    colour (a fixed palette: instance i always gets the same colour)."""
    edge = outline_labels(runs)
    rng = np.random.default_rng(0)
    palette = rng.integers(64, 256, size=(runs.n + 1, 3), dtype=np.uint8)
    out = np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2)
    hit = edge > 0
    out[hit] = palette[edge[hit]]
    return out


def write_report(out_dir: str | os.PathLike, report: "ScoreReport",
                 truth: Mapping[str, Runs], pred: Mapping[str, Runs],
                 image_paths: Mapping[str, str | os.PathLike], *,
                 max_images: int = 20) -> list[Path]:
    """Write overlays for up to ``max_images`` images (worst scores first) and the plots.

    Images without a readable path get no overlay. Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from cellseg.io import atomic_path, read_gray

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(path)

    ranked = sorted(report.images.values(), key=lambda r: r.score)
    shown = [r for r in ranked if r.image_id in image_paths][:max_images]
    for res in shown:
        image = read_gray(image_paths[res.image_id])
        t = truth[res.image_id]
        p = pred.get(res.image_id) or Runs(*(np.zeros(0, np.int64),) * 3, 0, t.shape)
        rgb = overlay(image, t, p, res)
        h, w = rgb.shape[:2]
        fig = plt.figure(figsize=(w / 100, h / 100 + 0.45))
        ax = fig.add_axes((0, 0, 1, h / (h + 45)))
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        n_tp = int(res.tp[0])
        fig.text(0.01, 1 - 22 / (h + 45), f"{res.image_id}  {res.cell_type or ''}   "
                 f"score {res.score:.3f}   at IoU>0.5: TP {n_tp}  FP {int(res.fp[0])}  "
                 f"FN {int(res.fn[0])}", fontsize=10, va="center")
        ax.legend(handles=[Patch(color=GREEN, label="true positive"),
                           Patch(color=RED, label="false positive"),
                           Patch(color=YELLOW, label="missed (FN)")],
                  loc="lower right", fontsize=8, framealpha=0.8)
        save(fig, f"overlay_{res.image_id}.png")

    per_type = report.per_cell_type
    n_per_type: dict[str, int] = {}
    for r in report.images.values():
        n_per_type[r.cell_type or "unknown"] = n_per_type.get(r.cell_type or "unknown", 0) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(per_type) + 2), 3.6))
    names = list(per_type)
    bars = ax.bar(names, [per_type[k] for k in names], color="#4c72b0", width=0.55)
    ax.set_xlim(-0.8, len(names) - 0.2)
    for b, k in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01,
                f"{per_type[k]:.3f}\n(n={n_per_type[k]})", ha="center", va="bottom", fontsize=8)
    ax.axhline(report.score, color="k", ls="--", lw=1, label=f"all: {report.score:.3f}")
    ax.set_ylim(0, min(1.0, max(per_type.values(), default=0) + 0.2) or 1.0)
    ax.set_ylabel("mean image score")
    ax.set_title("Competition score per cell type")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save(fig, "score_per_cell_type.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(THRESHOLDS, list(report.per_threshold.values()), "o-", color="k", lw=2,
            label=f"all ({report.score:.3f})")
    if len(per_type) > 1:
        for name in names:
            rs = [r.scores for r in report.images.values() if (r.cell_type or "unknown") == name]
            ax.plot(THRESHOLDS, np.mean(rs, axis=0), ".-", lw=1,
                    label=f"{name} ({per_type[name]:.3f})")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("TP / (TP + FP + FN)")
    ax.set_xticks(THRESHOLDS)
    ax.set_xticklabels([f"{t:.2f}" for t in THRESHOLDS], fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("Score vs IoU threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "score_vs_threshold.png")
    return written
