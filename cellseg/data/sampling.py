"""Epochs of a chosen length over mixed sources, and the one call that builds training data.

    from cellseg.data.sampling import build_train_data
    dataset, sampler = build_train_data(cfg.data, spec, records, sources, seed=0)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=family.collate, ...)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)           # the draw depends only on (seed, epoch)
        ...

``data.samples_per_epoch`` sets how many samples an epoch draws (null: one per training image), so
a handful of images still makes a real epoch: 6 images with ``samples_per_epoch: 240`` give 240
random crops per epoch. ``data.source_weights`` (one number per ``data.sources`` entry) sets the
share of each source in every epoch: ``[1, 3]`` draws 25% of the samples from the first source
(e.g. LIVECell) and 75% from the second (the competition images, or pseudo-labelled ones), whatever
their sizes. Without weights each source contributes in proportion to its number of images.
Within a source, images are drawn without replacement (a fresh permutation each time the source
is exhausted), so a source drawn k times its size shows every image k times.

``data.type_balance`` (0 to 1) shares each source's samples among its cell types: a type with
n_t images gets a share proportional to n_t ** (1 - type_balance), so 0 keeps the images' own
proportions and 1 draws every type equally often. The competition's types are lopsided (in
``sartorius_409``: 280 cort, 107 astro, 22 shsy5y images) while a test set weighs every image
alike, so at 0 a training run sees a shsy5y crop in one sample of twenty. Images of unknown type
form a group of their own.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from cellseg.data.record import ImageRecord
from cellseg.data.targets import TargetSpec


def source_counts(sizes: Sequence[int], n: int, weights: Sequence[float] | None = None
                  ) -> np.ndarray:
    """(S,) int64 samples per source for an epoch of ``n`` samples: proportional to ``weights``
    (default: ``sizes``), largest remainders rounded up, summing to ``n``; empty sources get 0."""
    sizes = np.asarray(sizes, np.int64)
    w = np.asarray(sizes if weights is None else weights, np.float64)
    if w.shape != sizes.shape:
        raise ValueError(f"data.source_weights has {len(w)} values for {len(sizes)} sources; "
                         "give one weight per entry of data.sources")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"data.source_weights must be finite and >= 0, got {w.tolist()}")
    w = np.where(sizes > 0, w, 0.0)
    if w.sum() <= 0:
        raise ValueError("data.source_weights gives no weight to any source that has images")
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    if short:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


class SourceSampler:
    """Indices of one epoch: ``samples_per_epoch`` draws split over sources by ``weights``.

    source_of: (N,) source index of each data set item. The order depends only on (seed, epoch):
    call ``set_epoch`` before each epoch. With ``world_size > 1`` each rank takes every
    ``world_size``-th index of the same draw (DistributedSampler-style; the draw is padded by
    repetition to a multiple of ``world_size``)."""

    def __init__(self, source_of: Sequence[int], *, samples_per_epoch: int | None = None,
                 weights: Sequence[float] | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.source_of = np.asarray(source_of, np.int64)
        if self.source_of.ndim != 1 or not len(self.source_of):
            raise ValueError("SourceSampler needs at least one item")
        n_sources = int(self.source_of.max()) + 1
        self.members = [np.flatnonzero(self.source_of == s) for s in range(n_sources)]
        if weights is not None and len(weights) != n_sources:
            raise ValueError(f"data.source_weights has {len(weights)} values for {n_sources} "
                             "sources; give one weight per entry of data.sources")
        self.samples = len(self.source_of) if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples < 1:
            raise ValueError(f"data.samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.counts = source_counts([len(m) for m in self.members], self.samples, weights)
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> np.ndarray:
        """(samples_per_epoch,) item indices of this epoch, all ranks together."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for members, count in zip(self.members, self.counts):
            reps = math.ceil(count / len(members)) if count else 0
            perms = [members[rng.permutation(len(members))] for _ in range(reps)]
            parts.append(np.concatenate(perms)[:count] if perms else members[:0])
        out = np.concatenate(parts)
        return out[rng.permutation(len(out))]

    def __iter__(self):
        idx = self.draw()
        total = len(self) * self.world_size
        if total > len(idx):  # pad so every rank gets as many batches
            idx = np.concatenate([idx, idx[:total - len(idx)]])
        return iter(idx[self.rank:total:self.world_size].tolist())

    def __len__(self) -> int:
        return math.ceil(self.samples / self.world_size)


def type_strata(source_of: Sequence[int], cell_types: Sequence[str | None],
                weights: Sequence[float] | None, balance: float) -> tuple[np.ndarray, list[float]]:
    """Split every source into one stratum per cell type for ``data.type_balance``.

    source_of: (N,) source index (0..S-1) of each item; cell_types: (N,) their types; weights:
    (S,) source weights (None: each source in proportion to its items). Returns ((N,) stratum
    index of each item, one weight per stratum): a source keeps its weight, shared among its types
    in proportion to n_t ** (1 - balance).
    """
    source_of = np.asarray(source_of, np.int64)
    n_sources = int(source_of.max()) + 1
    sizes = np.bincount(source_of, minlength=n_sources)
    src_w = np.asarray(sizes if weights is None else weights, np.float64)
    keys = sorted({(int(s), str(t)) for s, t in zip(source_of, cell_types)})
    index = {k: i for i, k in enumerate(keys)}
    stratum_of = np.array([index[(int(s), str(t))] for s, t in zip(source_of, cell_types)],
                          np.int64)
    counts = np.bincount(stratum_of, minlength=len(keys)).astype(np.float64)
    share = counts ** (1.0 - float(balance))
    totals = np.zeros(n_sources)
    np.add.at(totals, [s for s, _ in keys], share)
    strata_w = [float(src_w[s] * share[i] / totals[s]) for i, (s, _) in enumerate(keys)]
    return stratum_of, strata_w


def type_mix(sampler: SourceSampler, records: Sequence[ImageRecord]) -> str:
    """One line of the cell types in an epoch's draw, e.g. "an epoch draws 200 samples: astro
    67, cort 67, shsy5y 66" (every epoch draws the same counts per stratum)."""
    counts: dict[str, int] = {}
    for i in sampler.draw():
        t = str(records[int(i)].cell_type)
        counts[t] = counts.get(t, 0) + 1
    parts = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
    return f"an epoch draws {sampler.samples} samples: {parts}"


def build_train_data(cfg: Any, spec: TargetSpec, records: Sequence[ImageRecord],
                     sources: Sequence[int] | None = None, *, seed: int = 0, rank: int = 0,
                     world_size: int = 1) -> tuple[Any, SourceSampler]:
    """The training ``InstanceDataset`` and its epoch ``SourceSampler`` (the interface the
    training loop uses; it builds the DataLoader with the family's ``collate``).

    cfg: a ``cellseg.config.DataConfig`` (augment, crop_size, cache_dir, samples_per_epoch,
        source_weights). spec: the family's ``TargetSpec``. records: training records;
        sources: (N,) index into ``cfg.sources`` of each record (``load_data`` returns it;
        default: all from source 0). seed/rank/world_size: the sampler's draw and DDP shard.
    """
    from cellseg.data.datasets import InstanceDataset

    dataset = InstanceDataset(records, spec, augment=cfg.augment, crop_size=cfg.crop_size,
                              cache_dir=cfg.cache_dir)
    source_of = np.zeros(len(records), np.int64) if sources is None else np.asarray(sources)
    weights = cfg.source_weights
    if weights is not None:
        n_sources = max(len(cfg.sources), int(source_of.max()) + 1)
        if len(weights) != n_sources:
            raise ValueError(f"data.source_weights has {len(weights)} values for {n_sources} "
                             "sources; give one weight per entry of data.sources")
        # a source with no training image still occupies its slot in the weights
        present = np.bincount(source_of, minlength=n_sources) > 0
        remap = np.cumsum(present) - 1
        source_of = remap[source_of]
        weights = [w for w, p in zip(weights, present) if p]
    else:
        _, source_of = np.unique(source_of, return_inverse=True)
    if cfg.type_balance > 0:
        source_of, weights = type_strata(source_of, [r.cell_type for r in records], weights,
                                         cfg.type_balance)
    sampler = SourceSampler(source_of, samples_per_epoch=cfg.samples_per_epoch, weights=weights,
                            seed=seed, rank=rank, world_size=world_size)
    return dataset, sampler
