"""Does a random image split leak on a competition folder without sample_id? A leak detector.

    .venv/bin/python -m bench folds          # ~1-2 min on one core (../shared/data/sartorius_409)

No training. The "nearest-neighbour copy" predictor predicts every validation image by copying the
truth of its most similar TRAINING image (``cellseg.data.neardup`` phase correlation, same cell
type), shifted by the estimated stage offset. It knows nothing about cells: it scores well only
when a frame of the same well sits in the training folds. Scored with the kit's metric
(``cellseg.core.metrics``, both matching rules) under

* ``random``: images dealt to 5 folds at random (mean of 3 seeds), what a user gets by default
  with an empty ``sample_id`` column and no grouping;
* ``grouped``: ``cellseg.data.folds.make_folds`` (near-duplicate groups, stratified by type).

If the grouped split lowers the copy score, the random split leaks. Also printed: the groups per
cell type, and the check of the similarity threshold (for pairs in each similarity bin, the
correlation of the two full-resolution images after aligning them: ~0 for unrelated images).
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench import SHARED

N_FOLDS = 5


def shifted_truth(rles, shape, dy: int, dx: int) -> list[str]:
    """The masks of ``rles`` moved by (dy, dx) full-resolution pixels (cropped at the edges)."""
    from cellseg.core import rle as codec

    h, w = shape
    out = []
    for r in rles:
        idx = codec.indices(r, shape)
        y, x = np.divmod(idx, w)
        y, x = y + dy, x + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        if ok.any():
            out.append(codec.encode_indices(np.sort(y[ok] * w + x[ok])))
    return out


def copy_predictions(records, folds: dict[str, int], sim: np.ndarray, shift: np.ndarray
                     ) -> dict[str, list[str]]:
    """For each image: the truth of the most similar image in the other folds, aligned."""
    from cellseg.data.neardup import SIZE

    sy, sx = records[0].height / SIZE[1], records[0].width / SIZE[0]
    fold = np.array([folds[r.image_id] for r in records])
    preds = {}
    for i, r in enumerate(records):
        cand = np.flatnonzero((fold != fold[i]) & (sim[i] > 0))
        if not cand.size:
            preds[r.image_id] = []
            continue
        j = cand[np.argmax(sim[i, cand])]
        dy, dx = shift[i, j]
        # shift[i, j] aligns j onto i: the content of j at p sits at p + shift in i
        preds[r.image_id] = shifted_truth(records[j].rles, r.shape, int(round(dy * sy)),
                                          int(round(dx * sx)))
    return preds


def random_folds(records, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    return {records[k].image_id: n % N_FOLDS for n, k in enumerate(order)}


def main() -> None:
    from cellseg.core.metrics import MATCHING_RULES, score
    from cellseg.data.folds import make_folds
    from cellseg.data.loaders import load_records
    from cellseg.data.neardup import LOW, SURE, aligned_correlation, group_sizes, \
        near_duplicate_groups, similarity_matrix

    root = SHARED / "sartorius_409"
    if not (root / "train.csv").is_file():
        print(f"no {root}: nothing to measure")
        return
    records = load_records(root)
    t0, c0 = time.perf_counter(), time.process_time()
    sim, shift = similarity_matrix(records)
    groups, note = near_duplicate_groups(records)  # incl. the full-resolution checks
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{note}\n(similarity of {len(records)} images: {wall:.1f} s wall, {cpu:.1f} s CPU)\n")
    print("| cell type | images | groups | singletons | largest group |")
    print("|---|---:|---:|---:|---:|")
    for t, g in group_sizes(records, groups).items():
        print(f"| {t} | {g['images']} | {g['groups']} | {g['singletons']} | {g['largest']} |")

    # the threshold: what do pairs of each similarity bin look like at full resolution?
    iu = np.triu_indices(len(records), 1)
    s = sim[iu]
    bins = [(0.06, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 0.3), (0.3, 0.5), (0.5, 1.01)]
    print(f"\nthreshold check (linked above {SURE}, checked in {LOW}-{SURE}): aligned "
          "full-resolution correlation of up to 12 pairs per similarity bin\n")
    print("| similarity | pairs | aligned correlation (median) | min | max |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for lo, hi in bins:
        k = np.flatnonzero((s > lo) & (s <= hi))
        pick = rng.choice(k, size=min(12, k.size), replace=False) if k.size else k
        c = [aligned_correlation(records[iu[0][q]].image_path, records[iu[1][q]].image_path)
             for q in pick]
        med = f"{np.median(c):.2f} | {min(c):.2f} | {max(c):.2f}" if c else "- | - | -"
        print(f"| {lo:.2f}-{min(hi, 1):.2f} | {k.size} | {med} |")

    types = {r.image_id: r.cell_type for r in records}
    truth = {r.image_id: list(r.rles) for r in records}
    splits = {f"random (seed {k})": random_folds(records, k) for k in range(3)}
    splits["grouped (make_folds)"] = make_folds(records, N_FOLDS, seed=0, log=None)
    rows = {}
    for name, folds in splits.items():
        rep = score(truth, copy_predictions(records, folds, sim, shift), cell_types=types)
        byt = rep.per_cell_type_by_matching
        rows[name] = (rep.score_by_matching, byt)
    print(f"\nnearest-neighbour copy predictor, {N_FOLDS} folds, kit metric (dsb / greedy)\n")
    ctypes = sorted({str(t) for t in types.values()})
    print("| split | all | " + " | ".join(ctypes) + " |")
    print("|---|---:|" + "---:|" * len(ctypes))
    for name, (overall, byt) in rows.items():
        cells = " | ".join("/".join(f"{byt[t][m]:.4f}" for m in MATCHING_RULES) for t in ctypes)
        print(f"| {name} | " + "/".join(f"{overall[m]:.4f}" for m in MATCHING_RULES)
              + f" | {cells} |")
    rand = np.mean([rows[k][0]["dsb"] for k in rows if k.startswith("random")])
    grp = rows["grouped (make_folds)"][0]["dsb"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nrandom split (mean of 3 seeds) {rand:.4f} vs grouped {grp:.4f} (dsb): the random "
          f"split {'leaks' if rand > grp + 0.005 else 'does not leak measurably'}; load average "
          f"{load:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
