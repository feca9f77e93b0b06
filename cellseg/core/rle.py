"""Competition run-length encoding, the one codec of the kit.

Format (Sartorius Cell Instance Segmentation): space-separated ``start length`` pairs, starts
1-indexed, pixels numbered ROW-MAJOR (C order) over ``(height, width)`` = (520, 704). The
competition page's "top to bottom, then left to right" sentence is wrong for this data: every
working decoder reshapes a flat array in C order, and so do we.

Validation is strict, because a decoder that silently accepts a malformed string hides bugs that
cost leaderboard points: odd token count, non-integer token, non-positive start or length,
unsorted or overlapping runs and runs past the image end each raise ``RLEError`` (a
``ValueError``) naming the rule. Callers that read a CSV add the row number.

Many strings at once: ``parse_many`` parses all of them with one C-level call and validates
with array operations (a bad string falls back to ``parse`` for the exact message, prefixed
``instance i:``). The other way, ``format_runs`` is the ONE formatter: every path from a mask,
a label image, pixel indices or ``Instances`` to RLE text ends there, and ``label_runs`` is the
one run extraction. Label images and ``Instances`` live in ``cellseg.core.masks`` (``Runs``,
``encode_labels`` / ``decode_labels``); COCO's RLE in ``cellseg.core.coco_rle``.

    >>> import numpy as np
    >>> m = np.zeros((2, 3), bool); m[0, 1:] = True; m[1, 0] = True
    >>> encode(m)
    '2 3'
    >>> decode("2 3", shape=(2, 3)).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np

from cellseg.errors import InputError

SHAPE: tuple[int, int] = (520, 704)  # (height, width) of every competition image


class RLEError(InputError):
    """A malformed competition RLE string; the message names the broken rule.

    An ``InputError`` (hence a ``ValueError``): the CLI reports it on one line."""


def encode(mask: np.ndarray) -> str:
    """Encode one binary mask.

    Args:
        mask: (H, W) array, nonzero = inside.
    Returns:
        ``"start length ..."`` with 1-indexed row-major starts; ``""`` for an empty mask (a
        submission must never contain one: the writer drops it).
    """
    starts, lengths, _ = label_runs(np.asarray(mask).astype(bool, copy=False))
    return format_runs(starts, lengths, np.zeros(starts.size, np.int64), 1)[0]


def label_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of nonzero values of an array read in C order: the one run extraction.

    Args:
        labels: (H, W) (or any shape) integer or bool array; 0 / False = background.
    Returns:
        ``(starts, lengths, values)``: three (R,) arrays, 0-indexed flat starts (ascending,
        int64), run lengths (int64) and the value each run holds (labels' dtype). Adjacent pixels
        of different nonzero values are different runs.
    """
    flat = np.asarray(labels).ravel(order="C")
    if flat.size == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), flat[:0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change)).astype(np.int64)
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    values = flat[starts]
    keep = values != 0
    return starts[keep], lengths[keep], values[keep]


def format_runs(starts: np.ndarray, lengths: np.ndarray, owner: np.ndarray,
                n: int) -> list[str]:
    """Runs grouped by ascending ``owner`` -> n RLE strings: the one RLE formatter of the kit.

    Args:
        starts, lengths: (R,) int 0-indexed C-order run starts and lengths; each owner's runs
            in ascending pixel order.
        owner: (R,) int in [0, n), ascending.
        n: number of strings; an owner without runs gets "".
    One ``str.join`` over every token, then the text is cut at owner boundaries: far cheaper
    than formatting each instance separately.
    """
    if np.size(starts) == 0:
        return [""] * n
    starts = np.asarray(starts, dtype=np.int64)
    tokens = list(map(str, np.stack((starts + 1, lengths), axis=1).ravel().tolist()))
    text = " ".join(tokens)
    # character offset of each token in the joined text = cumulative (token length + 1)
    widths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)) + 1
    offsets = np.concatenate(([0], np.cumsum(widths)))
    tok_end = 2 * np.cumsum(np.bincount(owner, minlength=n))
    ends = (offsets[tok_end] - 1).tolist()
    begins = offsets[np.concatenate(([0], tok_end[:-1]))].tolist()
    return [text[x:y] if y > x else "" for x, y in zip(begins, ends)]


def parse(rle: str, shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate one RLE string.

    Returns:
        ``(starts, lengths)``: two (R,) int64 arrays, starts 0-indexed into the C-order flat
        image of ``shape``.
    Raises:
        RLEError: the rule that broke (odd token count, non-integer, non-positive start or
        length, unsorted or overlapping runs, run past the image end).
    """
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"odd number of tokens ({len(tokens)}): RLE must be 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), None)
        if bad is None:  # all digits, so one of them does not fit in int64
            bad = max(tokens, key=len)
            raise RLEError(f"token {bad!r} out of range") from None
        raise RLEError(f"non-integer token {bad!r}") from None
    return _check_runs(values.reshape(-1, 2), shape)


def _check_runs(pairs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    starts, lengths = pairs[:, 0], pairs[:, 1]
    n_pixels = int(shape[0]) * int(shape[1])
    if starts.size == 0:
        return starts.copy(), lengths.copy()
    if (starts < 1).any():
        i = int(np.argmax(starts < 1))
        raise RLEError(f"non-positive start {int(starts[i])} in pair {i}: starts are 1-indexed")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise RLEError(f"non-positive length {int(lengths[i])} in pair {i}")
    if (np.diff(starts) <= 0).any():
        i = int(np.argmax(np.diff(starts) <= 0)) + 1
        raise RLEError(f"unsorted starts: pair {i} starts at {int(starts[i])}, "
                       f"not after {int(starts[i - 1])}")
    if (starts > n_pixels).any() or (lengths > n_pixels).any():  # also guards int64 overflow
        i = int(np.argmax((starts > n_pixels) | (lengths > n_pixels)))
        raise RLEError(f"run past the image end: pair {i} ({int(starts[i])} {int(lengths[i])}) "
                       f"exceeds {n_pixels} = {shape[0]}x{shape[1]} pixels; is the image size "
                       f"right?")
    ends = starts + lengths  # 1-indexed exclusive end
    if (starts[1:] < ends[:-1]).any():
        i = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise RLEError(f"overlapping runs: pair {i} starts at {int(starts[i])} inside the "
                       f"previous run ending at {int(ends[i - 1]) - 1}")
    if ends[-1] - 1 > n_pixels:
        raise RLEError(f"run past the image end: last pixel {int(ends[-1]) - 1} > "
                       f"{n_pixels} = {shape[0]}x{shape[1]}; is the image size right?")
    return starts - 1, lengths.copy()


def _fast_parse_many(rles: Sequence[str], n_pixels: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """All strings parsed by ONE C-level ``np.fromstring`` call, validated with array ops.

    Strings are joined with a ``-1`` sentinel (never a valid token), so the sentinel positions
    give each string's token count. Returns ``(starts0, lengths, n_pairs)`` or None when
    anything is off (bad token, stray ``-1``, odd count, a broken run rule): the caller then
    re-parses string by string with ``parse``, which is the reference and names the rule.
    """
    joined = " -1 ".join(rles)
    try:
        with warnings.catch_warnings():
            # numpy warns (future: raises) when a token is not an integer
            warnings.simplefilter("error")
            values = np.fromstring(joined, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    n = len(rles)
    sentinel = values == -1
    cuts = np.flatnonzero(sentinel)
    if cuts.size != n - 1:
        return None
    # tokens per string: gaps between sentinels
    bounds = np.concatenate(([-1], cuts, [values.size]))
    n_tokens = np.diff(bounds) - 1
    if (n_tokens % 2).any():
        return None
    pairs = values[~sentinel].reshape(-1, 2)
    starts, lengths = pairs[:, 0], pairs[:, 1]
    ends = starts + lengths  # 1-indexed exclusive
    n_pairs = n_tokens // 2
    # starts/lengths above n_pixels are checked on their own: their sum could overflow
    bad = (starts < 1) | (lengths < 1) | (starts > n_pixels) | (lengths > n_pixels)
    bad |= ends - 1 > n_pixels
    if starts.size > 1:
        # within one string each run must start at or after the previous run's end;
        # the first run of each string is exempt (its predecessor belongs to another string)
        first = np.zeros(starts.size, bool)
        first[(np.cumsum(n_pairs) - n_pairs)[n_pairs > 0]] = True
        bad[1:] |= (starts[1:] < ends[:-1]) & ~first[1:]
    if bad.any():
        return None
    return starts - 1, lengths, n_pairs


def parse_many(rles: Sequence[str], shape: tuple[int, int] = SHAPE
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and validate many RLE strings at once (vectorised; ~20x faster than a loop).

    Returns:
        ``(starts, lengths, n_pairs)``: (R,) int64 0-indexed starts and lengths of all runs,
        string after string, and (N,) int64 runs per string.
    Raises:
        RLEError: ``"instance i: <rule>"`` for the first bad string; ``err.index`` is ``i``.
    """
    n_pixels = int(shape[0]) * int(shape[1])
    rles = list(rles)
    if not rles:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), empty.copy()
    fast = _fast_parse_many(rles, n_pixels)
    if fast is not None:
        return fast
    all_starts, all_lengths = [], []
    for i, rle in enumerate(rles):
        try:
            starts, lengths = parse(rle, shape)
        except RLEError as err:
            new = RLEError(f"instance {i}: {err}")
            new.index = i  # type: ignore[attr-defined]
            new.reason = str(err)  # type: ignore[attr-defined]
            raise new from None
        all_starts.append(starts)
        all_lengths.append(lengths)
    n_pairs = np.array([len(s) for s in all_starts], dtype=np.int64)
    return np.concatenate(all_starts), np.concatenate(all_lengths), n_pairs


def find_errors(rles: Sequence[str], shape: tuple[int, int] = SHAPE) -> list[tuple[int, str]]:
    """Every bad string, not just the first: ``[(index, rule message), ...]`` (empty = all valid).

    Used by data checks that list all problems at the end instead of stopping at the first.
    """
    rles = list(rles)
    if not rles or _fast_parse_many(rles, int(shape[0]) * int(shape[1])) is not None:
        return []
    problems = []
    for i, rle in enumerate(rles):
        try:
            parse(rle, shape)
        except RLEError as err:
            problems.append((i, str(err)))
    return problems


def runs_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat C-order pixel indices covered by runs, in run order: (sum(lengths),) int64.

    One cumsum over the output (the metric's hot loop): each run's first pixel jumps from the
    previous run's last pixel, every other pixel steps by one. Zero-length runs are skipped.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 1).any():
        keep = lengths > 0
        starts, lengths = starts[keep], lengths[keep]
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    step = np.ones(total, dtype=np.int64)
    first = np.cumsum(lengths) - lengths  # position of each run's first pixel in the output
    step[first[0]] = starts[0]
    step[first[1:]] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
    return np.cumsum(step)


def indices(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Flat C-order pixel indices of one RLE: (area,) int64, ascending, validated."""
    return runs_to_indices(*parse(rle, shape))


def encode_indices(idx: np.ndarray) -> str:
    """Encode flat C-order pixel indices (ascending, unique; (N,) int) without a dense mask.

    ``encode_indices(indices(r, shape)) == r`` for every canonical string ``r``; the cheap path
    for small cells on large images (bbox crops, polygon rasters, hole filling).
    """
    idx = np.asarray(idx, dtype=np.int64).ravel()
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate(([0], breaks))] if idx.size else idx
    lengths = np.diff(np.concatenate(([0], breaks, [idx.size]))) if idx.size else idx
    return format_runs(starts, lengths, np.zeros(starts.size, np.int64), 1)[0]


def decode(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Decode one RLE string into an (H, W) bool mask (validated, see ``parse``)."""
    mask = np.zeros(int(shape[0]) * int(shape[1]), dtype=bool)
    mask[indices(rle, shape)] = True
    return mask.reshape(shape)


def areas(rles: Iterable[str]) -> np.ndarray:
    """Pixel count of each RLE without decoding: (N,) int64 (tokens are not validated)."""
    return np.array([sum(map(int, r.split()[1::2])) for r in rles], dtype=np.int64)
