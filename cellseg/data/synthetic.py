"""Synthetic phase-contrast cell images with instance masks, in both real data layouts.

The demo and most tests train on this data, so it imitates the real images rather than drawing
blobs: background mean 128 with noise, faint row striping and a very mild illumination gradient;
cells as optical phase height maps turned into phase contrast by a high-pass filter (bright halo
outside each border, darker rim and textured body inside) plus a slight directional relief; the
three competition morphologies (spindle-shaped ``shsy5y`` with neurites, large star-shaped flat
``astro``, small round ``cort``) and four LIVECell types; unannotated neurites and debris; touching
cells, with a few instance masks overlapping their neighbours as in the competition's train.csv.
Morphologies live in ``cellseg.data.synth_shapes``.

    from cellseg.data.synthetic import generate, render
    counts = generate("data/synth", n_images=24, seed=0)   # competition/ and livecell/ folders
    image, masks = render("cort", seed=3, shape=(128, 128))  # (128,128) uint8, list of bool masks

Everything is a pure function of the seed: the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.core.rle import SHAPE  # (height, width) of both real data sets
from cellseg.data.coco import records_to_coco
from cellseg.data.record import ImageRecord
from cellseg.data.sartorius import COLUMNS, write_train_csv
from cellseg.data.synth_shapes import (MORPHOLOGIES, Morphology, _uniform, draw_debris,
                                       draw_neurite, draw_shape, draw_sheet, phase_height)
from cellseg.io import atomic_open, atomic_path, write_json, write_png

COMPETITION_TYPES: tuple[str, ...] = ("shsy5y", "astro", "cort")
LIVECELL_TYPES: tuple[str, ...] = ("A172", "BT474", "MCF7", "SHSY5Y")
CSV_COLUMNS = COLUMNS  # train.csv's nine columns (``cellseg.data.sartorius``)
_SAMPLE_TAGS = {"shsy5y": "diff", "astro": "hippo", "cort": "pre-treat"}  # as in real sample_ids
_MIN_AREA = 20  # px: smaller slivers left after resolving overlaps are dropped


@dataclass(frozen=True)
class CropMask:
    """One instance mask stored as a crop: ``mask`` (h, w) bool placed at (y0, x0) in the frame."""

    y0: int
    x0: int
    mask: np.ndarray

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool mask in the frame."""
        out = np.zeros(shape, bool)
        h, w = self.mask.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return out

    def rle(self, shape: tuple[int, int]) -> str:
        """Competition RLE over the frame, from the crop's pixels only (no frame-sized mask)."""
        ys, xs = np.nonzero(self.mask)  # row-major: flat indices come out ascending
        return rle_codec.encode_indices((ys + self.y0).astype(np.int64) * shape[1] + xs + self.x0)


def _morphology(cell_type: str) -> Morphology:
    try:
        return MORPHOLOGIES[cell_type]
    except KeyError:
        raise KeyError(f"unknown synthetic cell type {cell_type!r}; "
                       f"valid: {', '.join(MORPHOLOGIES)}") from None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _place(rng: np.random.Generator, layout: np.random.Generator, m: Morphology,
           shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) float cell centres (x, y): clusters shared through ``layout``, minimum spacing."""
    h, w = shape
    scale = h * w / (SHAPE[0] * SHAPE[1])
    n = max(1, int(round(_uniform(rng, m.n_cells) * scale)))
    k = max(1, int(round(_uniform(layout, m.n_clusters) * scale)))
    clusters = layout.uniform((0, 0), (w, h), (k, 2))
    spread = _uniform(layout, m.cluster_spread)
    min_d = m.min_sep * 2 * float(np.mean(m.radius))
    centres = np.empty((n, 2))
    count = 0
    # draw candidates in vectorised batches, accept each one unless it crowds an accepted centre
    for _ in range(6):
        cand = rng.uniform((0, 0), (w, h), (4 * n, 2))
        in_cluster = rng.random(4 * n) < m.cluster_prob
        pick = rng.integers(0, k, 4 * n)
        cand[in_cluster] = (clusters[pick[in_cluster]]
                            + rng.normal(0, spread, (int(in_cluster.sum()), 2)))
        cand = cand[(cand[:, 0] >= 0) & (cand[:, 0] < w) & (cand[:, 1] >= 0) & (cand[:, 1] < h)]
        for c in cand:
            if count and np.min(np.sum((centres[:count] - c) ** 2, 1)) < min_d ** 2:
                continue
            centres[count] = c
            count += 1
            if count == n:
                return centres
    return centres[:count]


def _phase_contrast(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    """Turn a (H, W) float32 phase map into an (H, W) uint8 phase-contrast image, mean ~128."""
    import cv2

    h, w = phi.shape
    f32 = np.float32
    halo = cv2.GaussianBlur(phi, (0, 0), rng.uniform(1.5, 2.2))
    # thick regions darker than their surroundings and the surroundings brighter: the halo.
    # Real halos are brighter than cell bodies are dark, hence two gains.
    gain = rng.uniform(75, 95)
    hp = phi - halo
    img = np.where(hp < 0, f32(-1.4 * gain) * hp, f32(-0.8 * gain) * hp)
    # a directional relief (one side of each edge bright, the other dark), as in the real images
    smooth = cv2.GaussianBlur(phi, (0, 0), 0.6)
    a = rng.uniform(0, 2 * np.pi)
    k = rng.uniform(25, 40) / 8  # a 3x3 Sobel answers 8 to a unit slope
    img += f32(k * np.cos(a)) * cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    img += f32(k * np.sin(a)) * cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    # faint unannotated texture of the substrate
    tex = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=f32), (0, 0), 1.5)
    img += f32(rng.uniform(0.5, 1.5)) * tex
    # real images are flat-fielded: keep the illumination gradient to ~1 grey level
    g = rng.normal(0, 1, 3)
    x = np.arange(w, dtype=f32) / w
    y = np.arange(h, dtype=f32)[:, None] / h
    img += (g[0] * (x - 0.5) + 0.5 * g[2] * np.cos(np.pi * x)).astype(f32)
    img += (g[1] * (y - 0.5)).astype(f32)
    # camera noise (an empty real background has std ~1.2-1.6) and faint row striping
    img += f32(rng.uniform(0.9, 1.5)) * rng.standard_normal((h, w), dtype=f32)
    img += f32(0.25) * rng.standard_normal((h, 1), dtype=f32)
    img += f32(128 - float(img.mean()))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _scene(cell_type: str, rng: np.random.Generator, shape: tuple[int, int],
           layout: np.random.Generator | None = None) -> tuple[np.ndarray, list[CropMask]]:
    """Render one image: (H, W) uint8 and its instance masks as crops (may overlap slightly)."""
    import cv2

    m = _morphology(cell_type)
    layout = rng if layout is None else layout
    h, w = shape
    phi = np.zeros(shape, np.float32)
    occupied = np.zeros(shape, bool)
    kept = []
    tips = []
    amp_mean = float(np.mean(m.amplitude))
    for cx, cy in _place(rng, layout, m, shape):
        s = draw_shape(rng, m, cx, cy, shape)
        if s is None:
            continue
        sh, sw = s.mask.shape
        occ = occupied[s.y0:s.y0 + sh, s.x0:s.x0 + sw]
        overlap = (s.mask & occ).sum()
        full_area = int(s.mask.sum())
        # most cells give way to earlier neighbours (touching, not overlapping); a few keep a
        # small overlap, like the competition's train masks
        if overlap and not (rng.random() < m.overlap_keep and overlap < 0.3 * full_area):
            mask = _largest_component(s.mask & ~occ)
        else:  # one piece even where an arm leaves the frame and comes back
            mask = _largest_component(s.mask)
        area = int(mask.sum())
        if area < max(_MIN_AREA, 0.45 * full_area):
            continue
        occ |= mask
        kept.append((s, mask))
        tips.extend(s.tips)
    if not kept:  # tiny frames: every image gets at least one cell, centred so it fits
        s = draw_shape(rng, m, w / 2, h / 2, shape)
        if s is not None and s.mask.any():
            mask = _largest_component(s.mask)
            occupied[s.y0:s.y0 + mask.shape[0], s.x0:s.x0 + mask.shape[1]] |= mask
            kept.append((s, mask))
            tips.extend(s.tips)
    # heights once every mask is final, so packed neighbours can share one plateau
    for s, mask in kept:
        sh, sw = mask.shape
        phi[s.y0:s.y0 + sh, s.x0:s.x0 + sw] += phase_height(
            rng, m, s, mask, occupied[s.y0:s.y0 + sh, s.x0:s.x0 + sw])
    cells = [CropMask(s.y0, s.x0, mask) for s, mask in kept]
    # unannotated structures: neurites continuing from arm tips, debris clumps
    clutter = np.zeros(shape, np.float32)
    for x, y, a in tips:
        if rng.random() < m.neurite_prob:
            draw_neurite(rng, clutter, x, y, a, _uniform(rng, m.neurite_length),
                         amp_mean * rng.uniform(0.2, 0.4), m.neurite_curl)
    scale = h * w / (SHAPE[0] * SHAPE[1])
    for _ in range(int(round(_uniform(rng, m.n_debris) * scale))):
        draw_debris(rng, clutter, rng.uniform(0, w), rng.uniform(0, h), amp_mean)
    phi += cv2.GaussianBlur(clutter, (0, 0), 0.7)  # rounder granules, softer neurite edges
    for _ in range(int(round(_uniform(rng, m.n_sheets) * scale))):
        draw_sheet(rng, phi, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 45),
                   amp_mean * rng.uniform(0.25, 0.5))
    return _phase_contrast(rng, phi), cells


def _rng(seed: int | Sequence[int], cell_type: str) -> np.random.Generator:
    key = zlib.crc32(cell_type.encode())  # stable across runs, unlike hash()
    seq = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    return np.random.default_rng([*seq, key])


def scene(cell_type: str, seed: int | Sequence[int], shape: tuple[int, int] = SHAPE, *,
          layout_seed: int | Sequence[int] | None = None) -> tuple[np.ndarray, list[CropMask]]:
    """One synthetic image and its instances as crops (cheap: no full-frame mask per cell).

    Args:
        cell_type: a key of ``MORPHOLOGIES``: ``shsy5y``, ``astro``, ``cort`` or a LIVECell type
            (``A172``, ``BT474``, ``MCF7``, ``SHSY5Y``). Cell counts scale with the image area.
        seed: an int or a sequence of ints; equal arguments give identical output.
        shape: (H, W).
        layout_seed: seeds where the cell clusters sit; frames sharing it look like one sample
            filmed over time. Defaults to following ``seed``.
    Returns:
        ``(image, cells)``: (H, W) uint8 and one ``CropMask`` per cell (non-empty, one connected
        piece; a few overlap their neighbours slightly).
    """
    rng = _rng(seed, cell_type)
    layout = None if layout_seed is None else _rng(layout_seed, cell_type)
    return _scene(cell_type, rng, (int(shape[0]), int(shape[1])), layout)


def render(cell_type: str, seed: int,
           shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, list[np.ndarray]]:
    """One synthetic image and its instance masks as full frames (see ``scene`` for crops).

    Args:
        cell_type: ``shsy5y``, ``astro``, ``cort`` or a LIVECell type (``A172``, ``BT474``,
            ``MCF7``, ``SHSY5Y``).
        seed: the same (cell_type, seed, shape) always gives the same result.
        shape: (H, W), e.g. (128, 128) for fast tests.
    Returns:
        ``(image, masks)``: (H, W) uint8 and a list of (H, W) bool masks, one per cell, each
        non-empty; a few overlap their neighbours slightly. At 520x704 a dense image holds
        ~400 masks (~150 MB): prefer ``scene`` there.
    """
    image, cells = scene(cell_type, seed, shape)
    return image, [c.full(image.shape) for c in cells]


# --------------------------------------------------------------------------------------------
# writing the two data layouts


def _polygon(cell: CropMask) -> list[float]:
    """The outline of a crop mask as a COCO polygon in frame coordinates (``coco.mask_polygon``)."""
    from cellseg.data.coco import mask_polygon

    h, w = cell.mask.shape
    return mask_polygon((cell.x0, cell.y0, cell.x0 + w, cell.y0 + h), cell.mask)


def _write_tif(path: Path, image: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".tif", image)
        if not ok:
            raise ValueError(f"cannot encode {path} as TIFF")
        Path(tmp).write_bytes(buf.tobytes())


def _hex_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        i = rng.bytes(6).hex()  # 12 lowercase hex chars, like the competition's ids
        if i not in taken:
            taken.add(i)
            out.append(i)
    return out


def _timedelta(minutes: int) -> tuple[str, str]:
    """(plate_time, elapsed_timedelta) as in train.csv: ``11h30m00s``, ``0 days 11:30:00``."""
    d, rest = divmod(minutes, 24 * 60)
    hh, mm = divmod(rest, 60)
    return f"{d * 24 + hh:02d}h{mm:02d}m00s", f"{d} days {hh:02d}:{mm:02d}:00"


def _write_competition(out: Path, seed: int, n_images: int, n_test: int, n_semi: int,
                       bar: Any) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng([seed, 1])
    taken: set[str] = set()
    records: list[ImageRecord] = []
    per_image: dict[str, int] = {}
    frame = 0
    sample = 0
    per_type = dict.fromkeys(COMPETITION_TYPES, 0)
    while frame < n_images:
        # the type with the fewest images so far: small sets stay balanced across types
        cell_type = min(COMPETITION_TYPES, key=per_type.__getitem__)
        # 1-3 time-lapse frames per sample, leaving room for every cell type to appear once
        unseen = max(0, len(COMPETITION_TYPES) - 1 - sample)
        n_frames = max(1, min(int(rng.integers(1, 4)), n_images - frame - unseen))
        well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}-{rng.integers(1, 5)}"
        sample_id = (f"{cell_type}[{_SAMPLE_TAGS[cell_type]}]_{well}_Vessel-"
                     f"{rng.integers(300, 800)}_Ph_{rng.integers(1, 5)}")
        date = f"2019-{rng.integers(3, 13):02d}-{rng.integers(1, 29):02d}"
        start, step = int(rng.integers(2, 20)) * 60, int(rng.integers(1, 4)) * 180
        for k, image_id in enumerate(_hex_ids(rng, n_frames, taken)):
            image, cells = scene(cell_type, (seed, 3, frame), layout_seed=(seed, 2, sample))
            write_png(out / "train" / f"{image_id}.png", image)
            plate_time, elapsed = _timedelta(start + k * step)
            records.append(ImageRecord(
                image_id=image_id, image_path=out / "train" / f"{image_id}.png",
                height=SHAPE[0], width=SHAPE[1], cell_type=cell_type, source="synthetic",
                sample_id=sample_id, rles=tuple(c.rle(SHAPE) for c in cells),
                meta={"plate_time": plate_time, "sample_date": date,
                      "elapsed_timedelta": elapsed}))
            per_image[image_id] = len(cells)
            per_type[cell_type] += 1
            frame += 1
            bar.update()
        sample += 1
    write_train_csv(records, out / "train.csv")
    test_ids = []
    for folder, n, tag in (("test", n_test, 4), ("train_semi_supervised", n_semi, 5)):
        ids = _hex_ids(rng, n, taken)
        for i, image_id in enumerate(ids):
            cell_type = COMPETITION_TYPES[(i + tag) % len(COMPETITION_TYPES)]
            image, _ = scene(cell_type, (seed, tag, i))
            write_png(out / folder / f"{image_id}.png", image)
            bar.update()
        if folder == "test":
            test_ids = ids
        (out / folder).mkdir(parents=True, exist_ok=True)  # an empty folder still exists
    with atomic_open(out / "sample_submission.csv", "w", newline="") as fh:
        fh.write("id,predicted\n" + "".join(f"{i},1 1\n" for i in test_ids))
    return {"train": {"images": n_images, "cells": sum(per_image.values()), "per_image": per_image},
            "test": {"images": n_test},
            "train_semi_supervised": {"images": n_semi}}


def _livecell_splits(n: int) -> list[str]:
    if n < 3:
        return ["train"] * n
    n_val = n_test = max(1, int(round(0.2 * n)))
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def _livecell_type(i: int) -> str:
    return LIVECELL_TYPES[i % len(LIVECELL_TYPES)]


def _livecell_scene(seed: int, i: int) -> tuple[str, np.ndarray, list[CropMask]]:
    """LIVECell image ``i`` of a data set generated with ``seed``: (cell_type, image, cells)."""
    cell_type = _livecell_type(i)
    return (cell_type, *scene(cell_type, (seed, 7, i)))


def _write_livecell(out: Path, seed: int, n: int, bar: Any) -> dict[str, dict[str, Any]]:
    """LIVECell's layout: TIFFs under ``images/`` and one COCO JSON per split, written like the
    real files (polygons, LIVECell-style image ids, bare file names) by ``coco.records_to_coco``."""
    rng = np.random.default_rng([seed, 6])
    splits = {s: ([], []) for s in ("train", "val", "test")}  # (records, COCO image ids)
    names: set[str] = set()
    for i, split in enumerate(_livecell_splits(n)):
        cell_type = _livecell_type(i)
        while True:  # official name: <Type>_Phase_<Well>_<Loc>_<ddHHhMMm>_<crop>.tif
            well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}"
            name = (f"{cell_type}_Phase_{well}_{rng.integers(1, 3)}_{rng.integers(0, 5):02d}d"
                    f"{4 * rng.integers(0, 6):02d}h00m_{rng.integers(1, 5)}.tif")
            if name not in names:
                names.add(name)
                break
        _, image, cells = _livecell_scene(seed, i)
        folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        path = out / "images" / folder / cell_type / name
        _write_tif(path, image)
        records, ids = splits[split]
        records.append(ImageRecord(image_id=Path(name).stem, image_path=path, height=SHAPE[0],
                                   width=SHAPE[1], cell_type=cell_type, source="synthetic",
                                   rles=tuple(c.rle(SHAPE) for c in cells)))
        ids.append(100_000 + 1_000 * i + int(rng.integers(0, 1000)))
        bar.update()
    counts = {}
    for split, (records, ids) in splits.items():
        data = records_to_coco(records, image_ids=ids, polygons=True)
        data["info"] = {"year": "2021", "version": "1.0", "contributor": "cellseg.data.synthetic",
                        "description": "synthetic LIVECell-like data", "url": "",
                        "date_created": "2021/01/19"}
        data["licenses"] = [{"id": 1, "name": "synthetic", "url": ""}]
        # compact, like the real files (indented polygons would be ~3x larger)
        with atomic_open(out / "annotations" / "LIVECell" / f"livecell_coco_{split}.json") as fh:
            json.dump(data, fh, separators=(",", ":"))
        counts[split] = {"images": len(records), "cells": sum(r.n_instances for r in records),
                         "per_image": {r.image_id: r.n_instances for r in records}}
    for folder in ("livecell_train_val_images", "livecell_test_images"):
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
    return counts


def generate(out_dir: str | Path, n_images: int = 24, seed: int = 0, *, n_test: int = 3,
             n_semi: int = 4, n_livecell: int | None = None) -> dict[str, Any]:
    """Write a synthetic data set in both real layouts and return its counts.

    Writes ``out_dir/competition/`` (``train.csv`` with the nine real columns, ``train/<id>.png``,
    ``test/``, ``train_semi_supervised/``, ``sample_submission.csv``), ``out_dir/livecell/``
    (official layout: ``images/livecell_{train_val,test}_images/<Type>/*.tif`` and
    ``annotations/LIVECell/livecell_coco_{train,val,test}.json`` with polygons) and
    ``out_dir/synth_summary.json``. Images are 520x704 uint8.

    Args:
        n_images: annotated competition train images (cell types in turn, 1-3 time-lapse frames
            per ``sample_id``).
        seed: the same seed writes byte-identical files.
        n_test, n_semi: unlabeled competition images.
        n_livecell: LIVECell images over train/val/test (~60/20/20; fewer than 3: all train);
            default ``max(3, n_images // 2)``. Cell types A172, BT474, MCF7, SHSY5Y in turn.
    Returns:
        ``{"seed", "competition": {split: {"images", "cells", "per_image"}}, "livecell": {...}}``
        where ``per_image`` maps image id (LIVECell: file stem) to its number of cells; the same
        dict is written to ``synth_summary.json``.
    """
    from tqdm import tqdm

    for name, v in (("n_images", n_images), ("n_test", n_test), ("n_semi", n_semi),
                    ("n_livecell", n_livecell or 0)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    n_livecell = max(3, n_images // 2) if n_livecell is None else int(n_livecell)
    out = Path(out_dir)
    with tqdm(total=n_images + n_test + n_semi + n_livecell, desc="synth", unit="img",
              disable=None) as bar:
        counts = {"seed": int(seed),
                  "competition": _write_competition(out / "competition", int(seed), n_images,
                                                    n_test, n_semi, bar),
                  "livecell": _write_livecell(out / "livecell", int(seed), n_livecell, bar)}
    write_json(out / "synth_summary.json", counts)
    return counts

