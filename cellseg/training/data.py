"""The training data: records and their train/validation split, the epoch order, the DataLoader.

    train, val, desc, sources = cellseg.data.sources.load_data(cfg.data, log)
    dataset, sampler = build_dataset(cfg, family.target_spec(**cfg.model.args), train, sources, dist)
    loader = make_loader(cfg, dataset, sampler, family.collate, dist)

Records come from ``cellseg.data.sources.load_data`` (every ``data.sources`` entry checked before
anything heavy; ``data.split`` / ``data.val_split`` per source; the held-out ``data.fold`` of
``make_folds``, grouped by sample_id and stratified by cell type, for the others).

``make_loader`` builds the training DataLoader through ``cellseg.data.datasets.build_loader`` (the
one DataLoader builder): pinned memory on CUDA (the step
copies with ``non_blocking``), workers that persist across epochs (their mask caches too) with
``train.prefetch`` batches each in flight. Each epoch's order depends only on (seed, epoch)
(``cellseg.data.sampling.SourceSampler``); ``SkipSampler`` drops the batches a resumed run already trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

from cellseg.config import TrainConfig


class SkipSampler:
    """Yield the indices of ``base`` after dropping the first ``skip`` (mid-epoch resume)."""

    def __init__(self, base: Any, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self):
        for i, idx in enumerate(self.base):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def build_dataset(cfg: TrainConfig, spec: Any, records: Sequence, sources: Sequence[int],
                  dist: Any) -> tuple[Any, Any]:
    """(training Dataset, epoch sampler) from ``cellseg.data.sampling.build_train_data``: the
    family's ``TargetSpec`` says which targets to build; the sampler draws
    ``data.samples_per_epoch`` samples mixed by ``data.source_weights``, seeded by (seed, epoch)
    and sharded by DDP rank."""
    from cellseg.data.sampling import build_train_data

    return build_train_data(cfg.data, spec, records, sources, seed=cfg.train.seed,
                            rank=dist.rank, world_size=dist.world_size)


def make_loader(cfg: TrainConfig, dataset: Any, sampler: Any, collate: Any, dist: Any, *,
                skip: int = 0) -> "torch.utils.data.DataLoader":  # noqa: F821
    """The DataLoader of one epoch (``cellseg.data.datasets.build_loader``): ``sampler`` order
    without its first ``skip`` samples, ``train.prefetch`` batches in flight per worker."""
    from cellseg.data.datasets import build_loader

    return build_loader(dataset, cfg.train.batch_size, shuffle=False, workers=cfg.data.workers,
                        collate_fn=collate, sampler=SkipSampler(sampler, skip) if skip else sampler,
                        drop_last=False,
                        # UNTESTED here (no GPU; docs/status.md): pinned memory on CUDA, which the
                        # step's non_blocking copies rely on
                        pin_memory=dist.device.type == "cuda",
                        prefetch_factor=max(1, cfg.train.prefetch))
