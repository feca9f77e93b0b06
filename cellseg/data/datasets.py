"""Training data sets: records -> (normalised image tensor, target), worker friendly.

    from cellseg.data.datasets import InstanceDataset
    spec = family.target_spec(**cfg.model.args)          # cellseg.data.targets.TargetSpec
    ds = InstanceDataset(records, spec, augment={}, crop_size=512, cache_dir="cache/layers")
    image, target = ds[0]      # (C, 512, 512) float32 tensor, {"maps": (3, 512, 512)} (UNet spec)

Training code builds dataset AND sampler in one call: ``cellseg.data.sampling.build_train_data``.

Per item: the image and its instances come from the per-image cache as (H, W) uint8 and (K, H, W)
uint16 label layers (instance i -> i + 1, K = overlap depth; ``cellseg.data.targets``); with
``crop_size`` a random window a little larger than the crop (room for the random zoom-out) is
sliced first; albumentations warps image and layers together (the K layers as one uint16 plane of
codes naming each pixel's tuple of ids, nearest-neighbour, so no transpose and 2 bytes a pixel);
instances with fewer than ``min_visible`` pixels left are dropped; the target is computed from the
layers by the spec (one pass over K planes, never one full-size mask per cell); the image is
normalised with the spec's norm.

Cache (what does not change between epochs): the decoded image and its label layers, stored as
one plane of codes and a code table (``cellseg.data.targets.codes_from_layers``). In memory (per
process, up to ``cache_mb``) and, with ``cache_dir``, as ``<image_id>-<hash>.{image,codes,table}.npy``
files read back memory-mapped (the OS page cache is shared by all workers and runs; a window reads
only its pages). The hash covers the image file (path, size, mtime), shape and RLEs, so a changed
image or annotation gets a new file and a stale one is never read.

The random stream is the one of the pre-issue-12 pipeline (``np.random`` window, then the
albumentations transform), so for the same seeds the targets are identical to the old builders'
(``tests/test_pipeline_equality.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.core.masks import runs_from_rles
from cellseg.data.record import ImageRecord
from cellseg.data.targets import MAX_INSTANCES, TargetSpec

CACHE_FORMAT = 3  # bump when the cached arrays change meaning


def _cache_key(record: ImageRecord) -> str:
    try:
        st = os.stat(record.image_path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "?"
    h = hashlib.sha1(f"v{CACHE_FORMAT}\n{record.image_path}\n{stamp}\n"
                     f"{record.height}x{record.width}\n".encode())
    for r in record.rles:
        h.update(r.encode())
        h.update(b"\n")
    if record.ignore_rles:  # (absent: the key of a record without regions is unchanged)
        h.update(b"ignore\n")
        for r in record.ignore_rles:
            h.update(r.encode())
            h.update(b"\n")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.image_id)
    return f"{safe}-{h.hexdigest()[:16]}"


def record_layers(record: ImageRecord) -> np.ndarray:
    """A record's instances as (K, H, W) uint16 label layers, instance i -> i + 1 (RLE decoded
    once; K = overlap depth); its ``ignore_rles`` follow as ids N + 1 ... (``split_ignore``
    separates them after augmentation). Errors name the image and instance."""
    from cellseg.data.targets import crops_to_layers

    n = record.n_instances + len(record.ignore_rles)
    if n > MAX_INSTANCES:
        raise ValueError(f"image {record.image_id} ({record.image_path}) has {n} "
                         f"instances and ignored regions; at most {MAX_INSTANCES} are supported")
    try:
        runs = runs_from_rles(record.rles + record.ignore_rles, record.shape)
    except rle_codec.RLEError as err:
        raise rle_codec.RLEError(f"image {record.image_id} ({record.image_path}): {err}") from None
    return crops_to_layers(runs.crops(), record.shape)


class InstanceDataset:
    """Map-style data set of (image (C, H, W) float32 tensor, target dict) pairs.

    Args:
        records: annotated ``ImageRecord`` objects.
        spec: the ``TargetSpec`` of the model family (``family.target_spec(**model_args)``):
            target kind, UNet channels / border width, mask format, normalisation, class map.
        augment: None (no augmentation), True (``build_augment`` defaults), a dict of
            ``build_augment`` keyword arguments, or a ready albumentations transform (it must move
            masks with nearest-neighbour geometry, as ``build_augment`` does).
        crop_size: random crop size (int or (H, W)); appended after a ready-made ``augment``.
        cache_dir: folder for the decoded image + layer files (module docstring); None = memory.
        min_visible: instances with fewer visible pixels after augmentation are dropped.
        cache_mb: bound of the in-memory cache of this process (each worker has its own).

    Targets: ``spec.kind == "maps"``: {"maps": (len(spec.channels), H, W) float32 tensor}, plus
    "ignore": (H, W) uint8 (1 = leave out of the loss) when the record has ``ignore_rles``;
    ``"instances"``: {"boxes": (M, 4) float32, "labels": (M,) int64 (class + spec.label_offset),
    "masks": (M, H, W) uint8 or "layers": (K, H, W) int16 (``spec.mask_format``)}; every target
    also has "image_id".
    """

    def __init__(self, records: Sequence[ImageRecord], spec: TargetSpec, *, augment: Any = None,
                 crop_size: int | Sequence[int] | None = None, cache_dir: str | Path | None = None,
                 min_visible: int = 1, cache_mb: float = 2048) -> None:
        from cellseg.data.transforms import build_augment, precrop_size

        if not isinstance(spec, TargetSpec):
            raise TypeError(f"InstanceDataset needs a cellseg.data.targets.TargetSpec (from "
                            f"family.target_spec(...)), got {type(spec).__name__}")
        self.records = list(records)
        self.spec = spec
        self.crop_size = crop_size
        # window cut before augmenting (see transforms.precrop_size); a ready-made augment may
        # zoom out by any amount down to 0.5
        self.window = None if crop_size is None else precrop_size(crop_size, (0.5, 1.0))
        if augment is True or isinstance(augment, Mapping):
            self.window = None if crop_size is None else precrop_size(
                crop_size, augment.get("scale", (0.75, 1.33)) if isinstance(augment, Mapping)
                else (0.75, 1.33))
        if augment is True:
            augment = build_augment(crop_size=crop_size)
        elif isinstance(augment, Mapping):
            augment = build_augment(crop_size=crop_size, **augment)
        elif augment is None or augment is False:
            augment = None if crop_size is None else build_augment(
                crop_size=crop_size, flip=False, rotate90=False, scale=None, brightness=0.0,
                contrast=0.0)
        elif crop_size is not None:
            import albumentations as A

            augment = A.Compose([augment, build_augment(crop_size=crop_size, flip=False,
                                                        rotate90=False, scale=None,
                                                        brightness=0.0, contrast=0.0)])
        self.augment = augment
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.min_visible = int(min_visible)
        self.cache_bytes = int(cache_mb * 2**20)
        self.decoded = 0  # RLE decodes done by this process (tests check the cache with it)
        self._memory: dict[str, tuple[np.ndarray, ...]] = {}
        self._keys: dict[int, str] = {}
        self._memory_bytes = 0
        if spec.class_map is not None:
            known = {k.lower() for k, _ in spec.class_map}
            missing = sorted({str(r.cell_type).lower() for r in self.records} - known)
            if missing:
                raise ValueError(f"class_map has no entry for cell type(s) {missing}; "
                                 f"it maps {sorted(known)}")

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------------- cache
    def image_and_codes(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, W) uint8 image, (H, W) uint16 codes and (C, K) uint16 code table of record
        ``index`` (``cellseg.data.targets.codes_from_layers``: ``table[codes]`` = its label
        layers, last axis), from memory, cache_dir or the files (in that order); cached arrays
        may be read-only memory maps."""
        record = self.records[index]
        key = self._keys.get(index)
        if key is None:  # hashing every RLE per sample would cost ~1 ms; images do not change
            key = self._keys[index] = _cache_key(record)
        hit = self._memory.get(key)
        if hit is not None:
            return hit
        hit = None
        names = ("image", "codes", "table")
        if self.cache_dir is not None:
            paths = [self.cache_dir / f"{key}.{name}.npy" for name in names]
            if all(p.is_file() for p in paths):
                hit = tuple(np.load(p, mmap_mode="r") for p in paths)
        if hit is None:
            from cellseg.data.targets import codes_from_layers

            image = record.read_image()
            hit = (image, *codes_from_layers(record_layers(record)))
            self.decoded += 1
            if self.cache_dir is not None:
                from cellseg.io import atomic_open

                self.cache_dir.mkdir(parents=True, exist_ok=True)
                for name, arr in zip(names, hit):
                    with atomic_open(self.cache_dir / f"{key}.{name}.npy", "wb") as fh:
                        np.save(fh, arr)
                return hit  # later reads map the files; nothing to hold in memory
        size = sum(a.nbytes for a in hit if not isinstance(a, np.memmap))
        if self._memory_bytes + size <= self.cache_bytes:
            self._memory[key] = hit
            self._memory_bytes += size
        return hit

    def image_and_layers(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) uint8 image and (K, H, W) uint16 label layers of record ``index`` (cached as
        codes, ``image_and_codes``)."""
        from cellseg.data.targets import layers_from_codes

        image, codes, table = self.image_and_codes(index)
        return image, layers_from_codes(np.asarray(codes), np.asarray(table))

    def classes(self, index: int) -> np.ndarray:
        """(N,) int64 class of each instance of record ``index`` (``spec.class_of``)."""
        record = self.records[index]
        return np.full(record.n_instances, self.spec.class_of(record.cell_type), np.int64)

    # ------------------------------------------------------------------------- samples
    def load_codes(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Augmented (image (h, w) uint8, codes (h, w), code table (C, K) uint16, classes (N,)
        int64): ``table[codes]`` are the sample's label layers (``load``), last axis.

        Ids are instance index + 1 of the record (absent ids were cut away); instances with
        fewer than ``min_visible`` pixels are already mapped to 0 in the table."""
        image, codes, table = self.image_and_codes(index)
        classes = self.classes(index)
        if self.window is not None:
            # cut a random window first: only its pixels are warped
            h, w = image.shape
            wh, ww = min(self.window[0], h), min(self.window[1], w)
            y0 = int(np.random.randint(0, h - wh + 1))
            x0 = int(np.random.randint(0, w - ww + 1))
            image = image[y0:y0 + wh, x0:x0 + ww]
            codes = codes[y0:y0 + wh, x0:x0 + ww]
        image, codes, table = np.ascontiguousarray(image), np.ascontiguousarray(codes), \
            np.asarray(table)
        if self.augment is not None:
            # all K layers travel as one plane of codes (nearest-neighbour geometry)
            out = self.augment(image=image, mask=codes) if table.shape[1] else \
                self.augment(image=image)
            image = np.asarray(out["image"])
            codes = np.asarray(out["mask"]) if table.shape[1] else \
                np.zeros(image.shape[:2], codes.dtype)
            if codes.ndim == 3:
                codes = codes[..., 0]
        else:
            image, codes = np.array(image), np.array(codes)  # never hand out cached arrays
        if self.min_visible > 1 and table.shape[1]:
            counts = np.bincount(codes.ravel(), minlength=len(table))[:len(table)]
            n_ids = len(classes) + len(self.records[index].ignore_rles)
            areas = np.zeros(n_ids + 1, np.int64)
            for j in range(table.shape[1]):
                np.add.at(areas, table[:, j], counts)
            lut = np.arange(n_ids + 1, dtype=np.uint16)
            lut[1:][areas[1:] < self.min_visible] = 0
            # a region cut down to a few pixels still marks them as not background
            lut[len(classes) + 1:] = np.arange(len(classes) + 1, n_ids + 1)
            table = lut[table]
        return image, codes, table, classes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augmented (image (h, w) uint8, layers (K, h, w) uint16, classes (N,) int64)
        (``load_codes`` with the layers expanded)."""
        from cellseg.data.targets import layers_from_codes

        image, codes, table, classes = self.load_codes(index)
        return image, layers_from_codes(codes, table), classes

    def target(self, layers: np.ndarray, classes: np.ndarray, shape: tuple[int, int]
               ) -> dict[str, Any]:
        """The spec's target (numpy arrays) from augmented layers (see ``load``)."""
        from cellseg.data.targets import (instance_target_from_layers, split_ignore_layers,
                                          unet_maps_from_layers)

        spec = self.spec
        layers, ignore = split_ignore_layers(layers, len(classes))
        if spec.kind == "maps":
            out = {"maps": unet_maps_from_layers(layers, spec.channels, spec.border_width,
                                                 shape=shape, centre=spec.centre)}
            if ignore is not None:
                out["ignore"] = ignore
            return out
        if not len(layers):
            layers = np.zeros((0, *shape), np.uint16)
        return instance_target_from_layers(layers, classes, min_mask_area=spec.min_mask_area,
                                           mask_format=spec.mask_format,
                                           label_offset=spec.label_offset)

    def target_from_codes(self, codes: np.ndarray, table: np.ndarray, classes: np.ndarray
                          ) -> dict[str, Any]:
        """The spec's target from ``load_codes`` output (what ``__getitem__`` uses; equal to
        ``target`` of the expanded layers)."""
        from cellseg.data.targets import layers_from_codes, split_ignore, unet_maps_from_codes

        table, ignore = split_ignore(codes, table, len(classes))
        if self.spec.kind == "maps":
            out = {"maps": unet_maps_from_codes(codes, table, self.spec.channels,
                                                self.spec.border_width, self.spec.centre)}
            if ignore is not None:
                out["ignore"] = ignore
            return out
        # the instance families have no ignore target: the regions are background to them
        return self.target(layers_from_codes(codes, table), classes, codes.shape)

    def __getitem__(self, index: int) -> tuple["torch.Tensor", dict[str, Any]]:  # noqa: F821
        import torch

        from cellseg.data.transforms import normalise

        image, codes, table, classes = self.load_codes(index)
        target: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v))
                                  for k, v in self.target_from_codes(codes, table, classes).items()}
        target["image_id"] = self.records[index].image_id
        return torch.from_numpy(normalise(image, self.spec.norm)), target

    def __getstate__(self) -> dict[str, Any]:
        # workers rebuild the memory cache themselves: do not ship decoded arrays through pickle
        state = self.__dict__.copy()
        state["_memory"] = {}
        state["_memory_bytes"] = 0
        return state


def _seed_worker(worker_id: int) -> None:
    """Distinct, reproducible numpy / random / albumentations streams per worker and epoch."""
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    augment = getattr(getattr(info, "dataset", None), "augment", None)
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(seed)


def build_loader(dataset: InstanceDataset, batch_size: int, shuffle: bool, workers: int, *,
                 collate_fn: Any, sampler: Any = None, drop_last: bool | None = None,
                 pin_memory: bool | None = None, prefetch_factor: int | None = None
                 ) -> "torch.utils.data.DataLoader":  # noqa: F821
    """A DataLoader over ``dataset`` batched by ``collate_fn`` (the family's ``collate``).

    drop_last defaults to ``shuffle`` (training); pin_memory to "CUDA is available"; workers stay
    alive between epochs so their caches persist, and are seeded by ``_seed_worker``.
    """
    import torch

    if sampler is not None:
        shuffle = False
    extra = {} if workers == 0 or prefetch_factor is None else {"prefetch_factor": prefetch_factor}
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
        collate_fn=collate_fn, drop_last=shuffle if drop_last is None else drop_last,
        # pinned memory when CUDA exists: UNTESTED here (no GPU; docs/status.md)
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0, worker_init_fn=_seed_worker if workers > 0 else None,
        **extra)
