"""The training data: records and their train/validation split, the epoch order, the DataLoader.

    train, val, desc = load_data(cfg.data, log)
    dataset = build_dataset(cfg, family, train, model)
    loader = make_loader(cfg, dataset, epoch_sampler(cfg, dataset, dist), dist)

Records come from ``cellseg.data.loaders.load_records`` for every ``data.sources`` entry.
Validation images are ``data.val_split`` of the same sources (LIVECell's val split) or else the
held-out ``data.fold`` of ``make_folds`` (grouped by sample_id, stratified by cell type).

``make_loader`` is the one place a training DataLoader is built: pinned memory on CUDA (the step
copies with ``non_blocking``), workers that persist across epochs (their mask caches too) with
``train.prefetch`` batches each in flight. Each epoch's order depends only on (seed, epoch)
(``EpochPermutation``); ``SkipSampler`` drops the batches a resumed run already trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

from cellseg.config import ConfigError, DataConfig, TrainConfig


def load_data(cfg: DataConfig, log=print) -> tuple[list, list, dict[str, Any]]:
    """(train records, validation records, description for the checkpoint)."""
    from cellseg.data.loaders import load_records

    if not cfg.sources:
        raise ConfigError("no training data: pass --data PATH (competition folder, train.csv, "
                          "LIVECell root or COCO JSON) or set data.sources in the config")
    records = [r for src in cfg.sources for r in load_records(src, split=cfg.split)]
    records = _filter(records, cfg)
    desc: dict[str, Any] = {"sources": list(cfg.sources), "split": cfg.split}
    if cfg.val_split:
        val = _filter([r for src in cfg.sources for r in load_records(src, split=cfg.val_split)], cfg)
        train = records
        desc["val_split"] = cfg.val_split
    elif cfg.fold is not None:
        from cellseg.data.folds import make_folds

        n_groups = len({r.sample_id or f"image:{r.image_id}" for r in records})
        n_folds = min(cfg.n_folds, n_groups)
        if n_folds < cfg.n_folds:
            log(f"warning: only {n_groups} sample group(s) for {cfg.n_folds} folds; "
                f"using {n_folds} folds")
        if n_folds < 2 or cfg.fold >= n_folds:
            log("warning: too few sample groups to hold a fold out; training without validation")
            train, val = records, []
        else:
            folds = make_folds(records, n_folds=n_folds, seed=cfg.fold_seed)
            val = [r for r in records if folds[r.image_id] == cfg.fold]
            train = [r for r in records if folds[r.image_id] != cfg.fold]
        desc.update(fold=cfg.fold, n_folds=n_folds, fold_seed=cfg.fold_seed)
    else:
        train, val = records, []
    if cfg.max_train_images is not None:
        train = train[:cfg.max_train_images]
    if cfg.max_val_images is not None:
        val = _spread(val, cfg.max_val_images)
    if not train:
        raise ConfigError(f"no training images left from {list(cfg.sources)} (split "
                          f"{cfg.split!r}, min_cells {cfg.min_cells}, cell_types {cfg.cell_types})")
    desc.update(n_train=len(train), n_val=len(val),
                n_train_cells=sum(r.n_instances for r in train),
                val_ids=[r.image_id for r in val], train_ids=[r.image_id for r in train],
                cell_types=sorted({str(r.cell_type) for r in train}))
    return train, val, desc


def _filter(records: list, cfg: DataConfig) -> list:
    if cfg.min_cells:
        records = [r for r in records if r.n_instances >= cfg.min_cells]
    if cfg.cell_types:
        keep = {t.lower() for t in cfg.cell_types}
        records = [r for r in records if str(r.cell_type).lower() in keep]
    return records


def _spread(records: list, n: int) -> list:
    """``n`` records evenly spaced over the list (covers every cell type of a sorted list)."""
    if len(records) <= n:
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


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


class EpochPermutation:
    """A seeded shuffle of ``range(n)`` that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_dataset(cfg: TrainConfig, family: Any, records: Sequence, model: Any) -> Any:
    """The training Dataset of ``records`` (augmented, cropped, targets built in the workers)."""
    from cellseg.data.datasets import InstanceDataset

    return InstanceDataset(records, family, augment=cfg.data.augment,
                           crop_size=cfg.data.crop_size, cache_dir=cfg.data.cache_dir,
                           norm=getattr(model, "cellseg_norm", None),
                           class_map=getattr(model, "cellseg_class_map", None))


def epoch_sampler(cfg: TrainConfig, dataset: Any, dist: Any) -> Any:
    """A sampler with ``set_epoch`` whose order depends only on (seed, epoch [, rank])."""
    import torch

    if dist.enabled:
        return torch.utils.data.DistributedSampler(dataset, num_replicas=dist.world_size,
                                                   rank=dist.rank, shuffle=True,
                                                   seed=cfg.train.seed)
    return EpochPermutation(len(dataset), cfg.train.seed)


def make_loader(cfg: TrainConfig, dataset: Any, sampler: Any, dist: Any, *,
                skip: int = 0) -> "torch.utils.data.DataLoader":  # noqa: F821
    """The DataLoader of one epoch: ``sampler`` order without its first ``skip`` samples."""
    import torch

    from cellseg.data.datasets import _seed_worker  # per-worker augmentation streams

    workers = cfg.data.workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train.batch_size, sampler=SkipSampler(sampler, skip) if skip
        else sampler, num_workers=workers, collate_fn=dataset.family.collate, drop_last=False,
        pin_memory=dist.device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=max(1, cfg.train.prefetch) if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None)
