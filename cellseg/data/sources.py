"""Training and validation records from ``data.sources``, checked before anything is built.

    from cellseg.data.sources import load_data
    train, val, desc, source_of = load_data(cfg.data)   # cfg.data: cellseg.config.DataConfig

Each source has its own ``split`` and ``val_split`` (``data.split: [val, train]`` pairs with
``data.sources: [LIVECell root, competition folder]``; a source written ``PATH:SPLIT``, as in
``--data ../shared/data/livecell:val``, names its own split). A source with a ``val_split`` gives its
validation records from that split; the others are pooled and split into grouped folds
(``data.fold`` held out, ``make_folds``: by sample_id, stratified by cell type).

Every source is checked first: the path exists, its layout is known, the split exists for it, and
every image file its annotations name exists. A LIVECell annotation JSON given directly finds its
images under the LIVECell root it sits in. Problems raise ``SourceError`` (a ConfigError) with one
line naming the file and the fix; ``cellseg train`` calls this before building the model.

Several annotated sources at once for the evaluation commands (``cellseg cv``, ``tune --data``,
``score --truth``, the plain-UNet benchmark): a spec is ``PATH`` or ``PATH:SPLIT`` (the suffix is a
split only when the whole text is not itself an existing path); without one a LIVECell root gives
``val`` and anything else ``train``. ``list_image_files`` lists unannotated images from folders
(searched recursively) or files for ``predict`` and ``pseudo-label``.

    records = load_sources(["/data/sartorius", "/data/livecell:val"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from cellseg.errors import ConfigError
from cellseg.data.record import ImageRecord


class SourceError(ConfigError):
    """A data source is missing or unusable; the message names the file and the fix (a
    ``ConfigError``, hence a ValueError: the CLI prints it as one line)."""


def per_source(value: Any, n: int, key: str) -> list[Any]:
    """``value`` (one value or a list with one entry per source) as a list of ``n`` values."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise SourceError(f"data.{key} has {len(value)} entries for {n} data.sources; give "
                              f"one value, or one per source in the order of data.sources")
        return list(value)
    return [value] * n


def _livecell_root_of(json_path: Path) -> Path | None:
    """The LIVECell root above an annotation JSON (a folder with images/livecell_*_images)."""
    for parent in json_path.resolve().parents:
        images = parent / "images"
        if images.is_dir() and any(p.name.startswith("livecell_") for p in images.iterdir()):
            return parent
    return None


def load_source(path: str | os.PathLike, split: str, *, min_cells: int = 0,
                check_images: bool = True) -> list[ImageRecord]:
    """Records of one source and split, with every named image checked to exist (unless
    ``check_images=False``: scoring reads only the annotations)."""
    from cellseg.data import loaders

    path = Path(path)
    if not path.exists():
        raise SourceError(f"data source {path} does not exist; fix the path in --data or "
                          "data.sources")
    try:
        kind = loaders.detect(path)
    except (ValueError, FileNotFoundError) as err:
        raise SourceError(f"data source {path}: {err}") from None
    try:
        if kind == "coco" and _livecell_root_of(path) is not None:
            # a LIVECell JSON: its file names lack the <CellType>/ folder; look under the root
            from cellseg.data import livecell

            root = _livecell_root_of(path)
            records = livecell.load(root, split, annotation_file=path, min_cells=min_cells)
        else:
            records = loaders.load_records(path, split, min_cells=min_cells)
    except FileNotFoundError as err:
        raise SourceError(f"data source {path} (split {split!r}): {err}; set data.split for "
                          "this source (one entry per source) or point it at the right folder"
                          ) from None
    except ValueError as err:
        first = str(err).splitlines()[0]
        raise SourceError(f"data source {path} (split {split!r}): {first}") from None
    missing = [r for r in records if check_images and not Path(r.image_path).is_file()]
    if missing:
        fix = ("put the images next to the JSON or pass the LIVECell root folder instead"
               if kind == "coco" else "check that the image folders are complete")
        raise SourceError(f"data source {path}: {len(missing)} of {len(records)} images not "
                          f"found (first: {missing[0].image_path}); {fix}")
    return records


def load_data(cfg: Any, log: Callable[[str], None] = print
              ) -> tuple[list[ImageRecord], list[ImageRecord], dict[str, Any], list[int]]:
    """(train records, validation records, description for the checkpoint, source index of each
    training record) for a ``DataConfig``; raises ``SourceError`` before anything heavy."""
    if not cfg.sources:
        raise SourceError("no training data: pass --data PATH (competition folder, train.csv, "
                          "LIVECell root or COCO JSON) or set data.sources in the config")
    if cfg.fold is not None:  # a typo'd fold must not silently train without validation
        from cellseg.data.folds import check_fold

        check_fold(cfg.fold, cfg.n_folds)
    n = len(cfg.sources)
    splits = per_source(cfg.split, n, "split")
    val_splits = per_source(cfg.val_split, n, "val_split")
    if cfg.source_weights is not None and len(cfg.source_weights) != n:
        raise SourceError(f"data.source_weights has {len(cfg.source_weights)} values for {n} "
                          "data.sources; give one weight per source")
    train: list[tuple[ImageRecord, int]] = []
    val: list[ImageRecord] = []
    pooled: list[tuple[ImageRecord, int]] = []  # sources split into folds
    for s, (spec, split, vsplit) in enumerate(zip(cfg.sources, splits, val_splits)):
        src, own = parse_source(spec)  # "PATH:SPLIT" names this source's split
        splits[s] = split = own or split
        records = _filter(load_source(src, split, min_cells=cfg.min_cells), cfg)
        if vsplit:
            train += [(r, s) for r in records]
            val += _filter(load_source(src, vsplit, min_cells=cfg.min_cells), cfg)
        else:
            pooled += [(r, s) for r in records]
    desc: dict[str, Any] = {"sources": list(cfg.sources), "split": splits}
    if any(val_splits):
        desc["val_split"] = val_splits
    if pooled and cfg.fold is not None:
        from cellseg.data.folds import fold_groups, make_folds

        records = [r for r, _ in pooled]
        n_groups = len(set(fold_groups(records, log=None).values()))
        n_folds = min(cfg.n_folds, n_groups)
        if n_folds < cfg.n_folds:
            log(f"warning: only {n_groups} sample group(s) for {cfg.n_folds} folds; "
                f"using {n_folds} folds")
        if n_folds < 2 or cfg.fold >= n_folds:
            log("warning: too few sample groups to hold a fold out; training on all of them")
            train += pooled
        else:
            folds = make_folds(records, n_folds=n_folds, seed=cfg.fold_seed)
            val += [r for r, _ in pooled if folds[r.image_id] == cfg.fold]
            train += [(r, s) for r, s in pooled if folds[r.image_id] != cfg.fold]
        desc.update(fold=cfg.fold, n_folds=n_folds, fold_seed=cfg.fold_seed)
    else:
        train += pooled
    if cfg.max_train_images is not None:
        train = train[:cfg.max_train_images]
    if cfg.max_val_images is not None:
        val = _spread(val, cfg.max_val_images)
    if not train:
        raise SourceError(f"no training images left from {list(cfg.sources)} (split "
                          f"{cfg.split!r}, min_cells {cfg.min_cells}, cell_types "
                          f"{cfg.cell_types}); loosen those settings")
    records = [r for r, _ in train]
    desc.update(n_train=len(records), n_val=len(val),
                n_train_cells=sum(r.n_instances for r in records),
                val_ids=[r.image_id for r in val], train_ids=[r.image_id for r in records],
                cell_types=sorted({str(r.cell_type) for r in records}),
                samples_per_epoch=cfg.samples_per_epoch,
                source_weights=None if cfg.source_weights is None else list(cfg.source_weights))
    return records, val, desc, [s for _, s in train]


def _filter(records: list[ImageRecord], cfg: Any) -> list[ImageRecord]:
    if cfg.min_cells:
        records = [r for r in records if r.n_instances >= cfg.min_cells]
    if cfg.cell_types:
        keep = {t.lower() for t in cfg.cell_types}
        records = [r for r in records if str(r.cell_type).lower() in keep]
    return records


def _spread(records: Sequence[ImageRecord], n: int) -> list[ImageRecord]:
    """``n`` records evenly spaced over the list (covers every cell type of a sorted list)."""
    if len(records) <= n:
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


# ----------------------------------------------------------------------------- source specs

SPLITS: tuple[str, ...] = ("train", "val", "test", "semi", "train_semi_supervised", "unlabeled")


def parse_source(text: str | os.PathLike) -> tuple[str, str | None]:
    """``"path:val"`` -> ``("path", "val")``; ``"path"`` -> ``("path", None)``."""
    text = os.fspath(text)
    path, sep, split = text.rpartition(":")
    if sep and path and split in SPLITS and not Path(text).exists():
        return path, split
    return text, None


def default_split(path: str | os.PathLike) -> str:
    """The split a source gives when none is named: ``val`` for a LIVECell root, else ``train``."""
    from cellseg.data.loaders import detect

    return "val" if detect(path) == "livecell" else "train"


def load_sources(specs: Sequence[str | os.PathLike], *, split: str | None = None,
                 annotated: bool = False, check_images: bool = True) -> list[ImageRecord]:
    """Records of every source, in order (see the module docstring for the spec syntax).

    Args:
        specs: one or more ``PATH`` / ``PATH:SPLIT`` strings.
        split: the split of every source that names none (None: ``default_split``).
        annotated: keep only images with at least one annotated cell.
        check_images: every image file must exist (False for scoring, which needs none).
    Raises:
        SourceError (one line, a ValueError): a source does not exist or is unusable, an image
        id appears in two sources, or no spec was given.
    """
    if not specs:
        raise SourceError("no data source given; pass a competition folder, train.csv, LIVECell "
                         "root or COCO JSON")
    out: list[ImageRecord] = []
    seen: dict[str, str] = {}
    for spec in specs:
        path, own = parse_source(spec)
        if not Path(path).exists():
            raise SourceError(f"data source {path} does not exist; pass a competition "
                              f"folder, train.csv, LIVECell root or COCO JSON")
        s = own or split or default_split(path)
        for r in load_source(path, s, check_images=check_images):
            if r.image_id in seen:
                raise SourceError(f"image id {r.image_id} is in both {seen[r.image_id]} and {spec}; "
                                 f"list each source once")
            seen[r.image_id] = str(spec)
            out.append(r)
    if annotated:
        out = [r for r in out if r.rles]
    return out


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")


def list_image_files(paths: Sequence[str | os.PathLike], *, recursive: bool = True,
                     read_size: bool = False) -> list[ImageRecord]:
    """Unannotated records of every image in ``paths`` (folders, searched recursively, or files).

    ``image_id`` is the file stem; when two files share a stem, the later ones get their folder
    path relative to the given root prefixed (``sub__stem``) so ids stay unique. Sorted by path
    within each given folder. ``read_size=False`` assumes 520x704 and opens nothing (the reader
    checks the real size later).
    Raises FileNotFoundError naming a path that does not exist.
    """
    from cellseg.core import rle as rle_codec
    from cellseg.data.record import ImageRecord

    found: list[tuple[Path, Path]] = []  # (root, file)
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append((p.parent, p))
        elif p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found += [(p, f) for f in sorted(it)
                      if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise FileNotFoundError(f"image folder or file {p} does not exist; pass folders of "
                                    f"*.png / *.tif images")
    out, seen = [], set()
    for root, f in found:
        image_id = f.stem
        if image_id in seen:
            rel = f.relative_to(root).with_suffix("")
            image_id = "__".join(rel.parts)
            n = 1
            while image_id in seen:
                n, image_id = n + 1, f"{'__'.join(rel.parts)}_{n}"
        seen.add(image_id)
        if read_size:
            from PIL import Image

            with Image.open(f) as im:
                h, w = im.height, im.width
        else:
            h, w = rle_codec.SHAPE
        out.append(ImageRecord(image_id=image_id, image_path=f, height=int(h), width=int(w),
                               source="images"))
    return out
