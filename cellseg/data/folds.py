"""Cross-validation folds: grouped by sample (or by image similarity), stratified by cell type.

    from cellseg.data.folds import make_folds
    folds = make_folds(records, n_folds=5, seed=0)      # {image_id: fold}
    val = [r for r in records if folds[r.image_id] == 0]

Time-lapse frames of one sample are near-duplicates, so a sample never straddles two folds
(a leak that inflates validation scores). Within that constraint each fold gets about the same
share of every cell type.

The group of an image (``fold_groups``), first that applies:

1. ``sample_id`` (the competition's train.csv), when any record has one;
2. ``meta["well"]`` (LIVECell: ``<type>_<well>_<location>`` of the file name);
3. image similarity (``cellseg.data.neardup``: frames of one well found by phase correlation,
   connected components), when no record has either key (a competition folder whose metadata
   columns are empty) and every image file can be read; one line on stderr says so;
4. the image itself.

Algorithm (a small deterministic greedy in the spirit of scikit-learn's StratifiedGroupKFold,
without the dependency): groups are shuffled with ``seed``, then taken largest first; each goes
to the fold that keeps the per-cell-type fold shares most even (lowest summed variance of
``fold_count[type] / total[type]`` across folds), ties broken by the smaller fold, then the lower
fold index. Same records + same seed -> same folds, on any machine.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cellseg.data.record import ImageRecord


MAX_SIMILARITY_IMAGES = 3000  # O(N^2) pairs: beyond this, group by image (and say so)
_said: set[str] = set()


def _say_once(note: str) -> None:
    import sys

    if note not in _said:  # several commands build the same folds more than once
        _said.add(note)
        print(f"folds: {note}", file=sys.stderr)


def fold_groups(records: Sequence[ImageRecord], log: Callable[[str], None] | None = _say_once
                ) -> dict[str, str]:
    """``{image_id: group key}`` (module docstring: sample_id, LIVECell well, image similarity,
    or the image); ``log`` gets one line when similarity or single images are used."""
    if any(r.sample_id is not None for r in records):
        return {r.image_id: (r.sample_id if r.sample_id is not None else f"image:{r.image_id}")
                for r in records}
    if any((r.meta or {}).get("well") for r in records):
        return {r.image_id: ((r.meta or {}).get("well") or f"image:{r.image_id}")
                for r in records}
    readable = all(r.image_path is not None and Path(r.image_path).is_file() for r in records)
    if readable and 1 < len(records) <= MAX_SIMILARITY_IMAGES:
        from cellseg.data.neardup import near_duplicate_groups

        groups, note = near_duplicate_groups(records)
        if log is not None:
            log(note)
        return groups
    if log is not None and len(records) > 1:
        why = ("image files missing" if not readable
               else f"more than {MAX_SIMILARITY_IMAGES} images")
        log(f"sample_id is empty and {why}: each image is its own group (near-duplicate "
            f"frames may leak between folds)")
    return {r.image_id: f"image:{r.image_id}" for r in records}


def make_folds(records: Sequence[ImageRecord], n_folds: int = 5, seed: int = 0,
               log: Callable[[str], None] | None = _say_once) -> dict[str, int]:
    """Assign every image to one of ``n_folds`` folds.

    Args:
        records: images; the group key comes from ``fold_groups`` (sample_id, LIVECell well,
            image similarity, or the image), the stratum is ``cell_type`` (None counts as its
            own type).
        n_folds: number of folds (>= 2).
        seed: shuffles the order groups of equal size are placed in.
        log: receives the one-line note of ``fold_groups`` (default: stderr, once per note).
    Returns:
        ``{image_id: fold}`` with folds in ``range(n_folds)``.
    Raises:
        ValueError: fewer groups than folds (some fold would be empty), duplicate image ids.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate image ids in records: {dup}")
    key_of = fold_groups(records, log)
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        groups[key_of[r.image_id]].append(r)
    if len(groups) < n_folds:
        raise ValueError(f"{len(groups)} sample group(s) cannot fill {n_folds} folds; "
                         f"use n_folds <= {len(groups)}")
    types = sorted({str(r.cell_type) for r in records})
    t_index = {t: i for i, t in enumerate(types)}
    keys = sorted(groups)
    counts = np.zeros((len(keys), len(types)), dtype=np.float64)
    for g, key in enumerate(keys):
        for r in groups[key]:
            counts[g, t_index[str(r.cell_type)]] += 1
    totals = counts.sum(axis=0)

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(keys))
    # largest groups first (hardest to place), shuffled order among equal sizes
    order = sorted(shuffled.tolist(), key=lambda g: -counts[g].sum())
    fold_counts = np.zeros((n_folds, len(types)), dtype=np.float64)
    assignment: dict[str, int] = {}
    for g in order:
        best, best_key = 0, None
        for f in range(n_folds):
            trial = fold_counts.copy()
            trial[f] += counts[g]
            spread = float((trial / totals).var(axis=0).sum())
            key = (round(spread, 12), fold_counts[f].sum(), f)
            if best_key is None or key < best_key:
                best, best_key = f, key
        fold_counts[best] += counts[g]
        for r in groups[keys[g]]:
            assignment[r.image_id] = best
    return {i: assignment[i] for i in ids}


def fold_summary(records: Sequence[ImageRecord], folds: dict[str, int]) -> dict[int, dict[str, int]]:
    """Images per cell type in each fold: ``{fold: {cell_type: n_images}}`` (for logs/tests)."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        out[folds[r.image_id]][str(r.cell_type)] += 1
    return {f: dict(v) for f, v in sorted(out.items())}


def check_fold(fold: int, n_folds: int) -> None:
    """Raise ``cellseg.errors.UserError`` unless ``0 <= fold < n_folds``."""
    from cellseg.errors import UserError

    if not 0 <= fold < n_folds:
        raise UserError(f"fold {fold} is out of range", where=f"{n_folds} folds",
                        fix=f"pick a fold in 0..{n_folds - 1}")


def split_fold(records: Sequence[ImageRecord], fold: int, n_folds: int = 5, seed: int = 0
               ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(the other folds, fold)`` of ``make_folds(records, n_folds, seed)``, in record order.

    The one fold selection used by training, ``cellseg tune`` and ``cellseg score``.
    Raises ``cellseg.errors.UserError`` when ``fold`` is not in ``0..n_folds-1`` or the records
    cannot fill ``n_folds`` folds.
    """
    from cellseg.errors import UserError

    check_fold(fold, n_folds)
    try:
        folds = make_folds(records, n_folds=n_folds, seed=seed)
    except ValueError as exc:
        raise UserError(str(exc), where=f"folds of {len(records)} images") from None
    rest = [r for r in records if folds[r.image_id] != fold]
    held = [r for r in records if folds[r.image_id] == fold]
    return rest, held
