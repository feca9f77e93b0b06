"""Near-duplicate images: frames of one well, found by image similarity when ``sample_id`` is empty.

    from cellseg.data.neardup import near_duplicate_groups, similarity_matrix
    groups, note = near_duplicate_groups(records)   # {image_id: group key}, one-line summary
    sim, shifts = similarity_matrix(records)        # (N, N) float32, (N, N, 2) int (dy, dx)

Why: time-lapse frames of one well show the same field of view, shifted by the stage by tens of
pixels, with cells moved a little. Their plain pixel correlation is low (a 28 px shift decorrelates
small cells), so the score is translation-invariant: phase correlation. Each image is shrunk to
128x96 (area), its illumination removed (minus a Gaussian blur), windowed (Hann) and its Fourier
transform whitened; the peak of the inverse transform of ``F_a * conj(F_b)`` is the similarity of
a and b (1 for a shifted copy, ~0.03 between unrelated images of this size) and its position the
shift. Only images of the same cell type are compared (one well holds one cell type).

Grouping: images whose similarity exceeds ``SURE`` (0.3, ~6x the level of unrelated frames)
are linked; pairs in the mixed band ``(LOW, SURE]`` (0.15-0.3) are linked only when their two
full-resolution images, aligned by OpenCV's phase correlation, correlate above
``MIN_ALIGNED_CORR`` (0.2; unrelated frames give ~0.0, frames of one well 0.4-0.9; measured on
``sartorius_409``, see docs/validation.md). Every connected component of that graph is one group
(frames of one well chain together even when the first and last frame no longer look alike).

Cost: one small FFT per image and a batched inverse FFT per image against the later images of
its type: ~10-20 s for 409 images on one core, O(N^2). Results are kept in memory per process
(same image files -> same answer).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from cellseg.data.record import ImageRecord

SIZE = (128, 96)  # (width, height) of the shrunk image: keeps the 4:3-ish aspect of 704x520
BLUR_SIGMA = 4.0  # illumination removal, in shrunk pixels
LOW, SURE = 0.15, 0.3  # similarity: above SURE linked, in (LOW, SURE] checked at full resolution
MIN_ALIGNED_CORR = 0.2

_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _spectrum(path: Path) -> np.ndarray:
    """(96, 65) complex64 whitened spectrum of one image (module docstring)."""
    import cv2

    from cellseg.io import read_gray

    img = read_gray(path).astype(np.float32)
    small = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
    small -= cv2.GaussianBlur(small, (0, 0), BLUR_SIGMA)
    win = np.outer(np.hanning(SIZE[1]), np.hanning(SIZE[0])).astype(np.float32)
    from scipy import fft

    f = fft.rfft2(small * win)  # complex64
    return f / np.maximum(np.abs(f), 1e-9)


def _key(records: Sequence["ImageRecord"]) -> tuple:
    out = []
    for r in records:
        p = Path(r.image_path)
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns, str(r.cell_type)))
    return tuple(out)


def similarity_matrix(records: Sequence["ImageRecord"]) -> tuple[np.ndarray, np.ndarray]:
    """Phase-correlation similarity of every pair of images of the same cell type.

    Returns:
        ``(sim, shift)``: (N, N) float32 symmetric similarity (0 on the diagonal and between
        cell types) and (N, N, 2) int32 shift (dy, dx) in shrunk pixels that best aligns
        image j onto image i.
    Raises:
        OSError / cellseg.errors.InputError: an image cannot be read.
    """
    from scipy import fft  # single precision stays single (numpy's FFT would use complex128)

    key = _key(records)
    if key in _CACHE:
        return _CACHE[key]
    n = len(records)
    spectra = np.stack([_spectrum(Path(r.image_path)) for r in records]) if n else None
    types = np.array([str(r.cell_type) for r in records])
    sim = np.zeros((n, n), np.float32)
    shift = np.zeros((n, n, 2), np.int32)
    h, w = SIZE[1], SIZE[0]
    for a in range(n):
        others = np.flatnonzero(types == types[a])
        others = others[others > a]
        for chunk in np.array_split(others, max(1, int(np.ceil(others.size / 128)))):
            if not chunk.size:
                continue
            corr = fft.irfft2(spectra[a][None] * np.conj(spectra[chunk]), s=(h, w), workers=1)
            flat = corr.reshape(len(chunk), -1)
            best = flat.argmax(axis=1)
            peak = flat[np.arange(len(chunk)), best]
            dy, dx = np.divmod(best, w)
            dy = np.where(dy > h // 2, dy - h, dy)
            dx = np.where(dx > w // 2, dx - w, dx)
            sim[a, chunk] = sim[chunk, a] = peak
            shift[a, chunk] = np.stack([dy, dx], axis=1)
            shift[chunk, a] = -shift[a, chunk]
    _CACHE[key] = (sim, shift)
    return sim, shift


def aligned_correlation(a_path: str | Path, b_path: str | Path) -> float:
    """Pearson correlation of two full-resolution images (illumination removed) after OpenCV's
    phase correlation aligns the second onto the first; a 40 px margin is left out."""
    import cv2

    from cellseg.io import read_gray

    def load(p: str | Path) -> np.ndarray:
        im = read_gray(p).astype(np.float64)
        return im - cv2.GaussianBlur(im, (0, 0), 10)

    a, b = load(a_path), load(b_path)
    if a.shape != b.shape:
        return 0.0
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    moved = cv2.warpAffine(b, np.float64([[1, 0, -dx], [0, 1, -dy]]), (a.shape[1], a.shape[0]))
    m = slice(40, -40)
    return float(np.corrcoef(a[m, m].ravel(), moved[m, m].ravel())[0, 1])


def linked_pairs(records: Sequence["ImageRecord"]) -> np.ndarray:
    """(N, N) bool: frames of one well (module docstring: sure pairs, and checked band pairs)."""
    sim, _ = similarity_matrix(records)
    linked = sim > SURE
    ii, jj = np.nonzero(np.triu((sim > LOW) & ~linked, 1))
    for i, j in zip(ii.tolist(), jj.tolist()):
        if aligned_correlation(records[i].image_path, records[j].image_path) > MIN_ALIGNED_CORR:
            linked[i, j] = linked[j, i] = True
    return linked


def near_duplicate_groups(records: Sequence["ImageRecord"]) -> tuple[dict[str, str], str]:
    """Group near-duplicate frames (connected components of ``linked_pairs``).

    Returns:
        ``({image_id: group key}, note)``: keys look like ``similar:<smallest image id of the
        group>``; the note is one line saying what was done (groups, sizes, per cell type).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if not records:
        return {}, "no images to group"
    _, labels = connected_components(csr_matrix(linked_pairs(records)), directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels.tolist()):
        members[lab].append(i)
    groups = {}
    for idx in members.values():
        name = f"similar:{min(records[i].image_id for i in idx)}"  # order-independent
        for i in idx:
            groups[records[i].image_id] = name
    per_type: dict[str, list[int]] = defaultdict(list)
    for idx in members.values():
        per_type[str(records[idx[0]].cell_type)].append(len(idx))
    parts = [f"{t} {sum(s)} images -> {len(s)} groups (largest {max(s)})"
             for t, s in sorted(per_type.items())]
    note = (f"sample_id is empty: grouped {len(records)} images into {len(members)} "
            f"near-duplicate groups by image similarity (phase correlation, same cell type): "
            + "; ".join(parts))
    return groups, note


def group_sizes(records: Sequence["ImageRecord"], groups: dict[str, str]
                ) -> dict[str, dict[str, int]]:
    """Per cell type: images, groups, singletons, largest group (for docs and tests)."""
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        by_type[str(r.cell_type)][groups[r.image_id]] += 1
    out = {}
    for t, sizes in sorted(by_type.items()):
        s = np.array(list(sizes.values()))
        out[t] = {"images": int(s.sum()), "groups": int(s.size),
                  "singletons": int((s == 1).sum()), "largest": int(s.max())}
    return out
