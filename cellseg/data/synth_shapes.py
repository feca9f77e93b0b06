"""Cell morphologies for the synthetic generator: outlines, phase-height maps and clutter.

A synthetic cell is drawn in two layers, each into its own bounding-box crop (never a full frame
per cell, so a 400-cell image stays well under a second):

- the instance mask: a radial outline (ellipse + random harmonics) plus tapered processes
  (neurite stubs, astrocyte arms) drawn with cv2 into a crop (``draw_shape``);
- the optical phase height (``phase_height``): a plateau that rises from the edge over a few
  pixels, a nucleus and granules. ``cellseg.data.synthetic`` sums the heights of all cells into one
  full-frame phase map and turns it into a phase-contrast image with one global high-pass filter,
  which is what creates the bright halos outside and the dark rims inside cell borders.

Unannotated structures that real images contain and a model must learn to ignore (long thin
neurites, clumps of debris, flat membrane sheets whose edges show as lines) are drawn straight
into the full-frame phase map (``draw_neurite``, ``draw_debris``, ``draw_sheet``). ``MORPHOLOGIES`` holds one parameter set per cell type: the three competition
types (``shsy5y``, ``astro``, ``cort``) and four LIVECell types reusing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Range = tuple[float, float]


@dataclass(frozen=True)
class Morphology:
    """Parameters of one cell type. Ranges are (low, high), sampled uniformly per image or cell.

    Lengths are in pixels at the native 520x704 scale.
    """

    n_cells: Range            # cells per 520x704 image
    radius: Range             # equivalent body radius
    elongation: Range         # major/minor axis ratio of the body
    roughness: float          # amplitude of the outline's random harmonics (fraction of radius)
    n_processes: Range        # annotated tapered arms per cell
    process_length: Range     # arm length (px)
    process_width: Range      # arm width at the body (px)
    neurite_prob: float       # chance that an arm continues as an unannotated neurite
    neurite_length: Range
    cluster_prob: float       # fraction of cells placed around cluster centres
    n_clusters: Range
    cluster_spread: Range     # cluster standard deviation (px)
    min_sep: float            # minimum centre distance, as a fraction of the radius sum
    amplitude: Range          # plateau phase height (contrast of the cell)
    edge_tau: float           # px over which the height rises from the border
    nucleus: Range            # extra height of the nucleus (may be negative: a flat nucleus)
    granules: int             # granules per 100 px^2 of cell area
    rounded_prob: float       # fraction of compact, thick (bright-haloed) rounded cells
    n_debris: Range           # unannotated debris clumps per image
    overlap_keep: float       # fraction of cells whose mask keeps its overlap with neighbours
    n_sheets: Range = (0, 0)  # unannotated flat membrane sheets per image (their edges show)
    merge: float = 0.3        # 0: touching cells keep their own edges; 1: a colony is one plateau
    neurite_curl: float = 0.2  # radians of random turn per 4 px of neurite (astrocytes: straight)


MORPHOLOGIES: dict[str, Morphology] = {
    # neuroblastoma: small spindle bodies with 1-3 neurites, dense and clustered, on a carpet of
    # flat lamellae, with clumps of debris (real train image: 395 cells, median area 268 px)
    "shsy5y": Morphology(
        n_cells=(250, 450), radius=(6.5, 10.5), elongation=(1.4, 3.6), roughness=0.10,
        n_processes=(1, 3), process_length=(4, 14), process_width=(2.5, 4.5),
        neurite_prob=0.8, neurite_length=(25, 130), cluster_prob=0.55, n_clusters=(8, 20),
        cluster_spread=(15, 40), min_sep=0.7, amplitude=(1.0, 1.6), edge_tau=1.5,
        nucleus=(0.2, 0.6), granules=4, rounded_prob=0.04, n_debris=(8, 24),
        overlap_keep=0.5, n_sheets=(60, 120)),
    # astrocytes: large flat star-shaped cells with long arms and straight fibres, sparse
    "astro": Morphology(
        n_cells=(25, 100), radius=(15, 28), elongation=(1.3, 3.0), roughness=0.22,
        n_processes=(2, 6), process_length=(25, 80), process_width=(4, 8),
        neurite_prob=0.5, neurite_length=(30, 160), cluster_prob=0.4, n_clusters=(3, 8),
        cluster_spread=(40, 90), min_sep=0.6, amplitude=(0.7, 1.2), edge_tau=1.5,
        nucleus=(0.1, 0.3), granules=1, rounded_prob=0.03, n_debris=(0, 6),
        overlap_keep=0.3, n_sheets=(4, 14), neurite_curl=0.06),
    # cortical neurons: small round dense bodies, few short processes, clean background
    "cort": Morphology(
        n_cells=(15, 90), radius=(6.0, 10.0), elongation=(1.0, 1.5), roughness=0.06,
        n_processes=(0, 2), process_length=(3, 9), process_width=(2, 3.5),
        neurite_prob=0.5, neurite_length=(15, 80), cluster_prob=0.5, n_clusters=(3, 10),
        cluster_spread=(12, 35), min_sep=0.8, amplitude=(1.2, 1.9), edge_tau=1.3,
        nucleus=(0.2, 0.6), granules=3, rounded_prob=0.15, n_debris=(2, 12),
        overlap_keep=0.08, n_sheets=(0, 3)),
    # LIVECell types, reusing the three morphologies with their own sizes and densities
    "A172": Morphology(
        n_cells=(80, 200), radius=(10, 17), elongation=(1.2, 2.6), roughness=0.18,
        n_processes=(1, 4), process_length=(8, 28), process_width=(3, 6),
        neurite_prob=0.35, neurite_length=(20, 80), cluster_prob=0.6, n_clusters=(5, 12),
        cluster_spread=(25, 60), min_sep=0.65, amplitude=(0.6, 1.0), edge_tau=2.0,
        nucleus=(0.3, 0.7), granules=6, rounded_prob=0.05, n_debris=(2, 10),
        overlap_keep=0.1, n_sheets=(5, 20)),
    "BT474": Morphology(  # packed epithelial colonies: faint seams between neighbours
        n_cells=(150, 380), radius=(8, 13), elongation=(1.0, 1.5), roughness=0.10,
        n_processes=(0, 1), process_length=(3, 8), process_width=(3, 5),
        neurite_prob=0.0, neurite_length=(0, 0), cluster_prob=0.9, n_clusters=(4, 9),
        cluster_spread=(25, 55), min_sep=0.6, amplitude=(0.7, 1.1), edge_tau=1.0,
        nucleus=(0.2, 0.5), granules=8, rounded_prob=0.06, n_debris=(4, 16),
        overlap_keep=0.06, n_sheets=(0, 6), merge=0.8),
    "SHSY5Y": Morphology(
        n_cells=(100, 300), radius=(6.5, 10.5), elongation=(1.4, 3.4), roughness=0.10,
        n_processes=(1, 3), process_length=(4, 14), process_width=(2.5, 4.5),
        neurite_prob=0.8, neurite_length=(25, 130), cluster_prob=0.5, n_clusters=(8, 20),
        cluster_spread=(15, 40), min_sep=0.7, amplitude=(1.0, 1.6), edge_tau=1.5,
        nucleus=(0.2, 0.6), granules=4, rounded_prob=0.05, n_debris=(4, 14),
        overlap_keep=0.08, n_sheets=(10, 40)),
    "MCF7": Morphology(  # polygonal epithelial cells with pointed corners, in colonies
        n_cells=(120, 320), radius=(10, 16), elongation=(1.0, 1.7), roughness=0.12,
        n_processes=(0, 3), process_length=(4, 10), process_width=(4, 7),
        neurite_prob=0.0, neurite_length=(0, 0), cluster_prob=0.85, n_clusters=(4, 10),
        cluster_spread=(25, 60), min_sep=0.6, amplitude=(0.7, 1.1), edge_tau=1.0,
        nucleus=(0.2, 0.5), granules=6, rounded_prob=0.05, n_debris=(2, 10),
        overlap_keep=0.06, n_sheets=(0, 6), merge=0.8),
}


@dataclass
class Shape:
    """One cell's mask in a crop of the frame, before overlaps with neighbours are resolved.

    Attributes:
        y0, x0: top-left corner of the crop in the frame.
        mask: (h, w) bool crop, already clipped to the frame.
        center: (x, y) body centre in crop coordinates.
        tips: (x, y, angle) of each arm's tip in frame coordinates (where neurites start).
        rounded: a compact, thick cell (drawn with more phase height).
    """

    y0: int
    x0: int
    mask: np.ndarray
    center: tuple[float, float]
    tips: list[tuple[float, float, float]]
    rounded: bool


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _outline(rng: np.random.Generator, radius: float, elong: float, rough: float,
             n: int = 72) -> np.ndarray:
    """(n, 2) float polygon around (0, 0): an ellipse of equal-area radius with random harmonics."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amp = rough * rng.normal(size=(5, 1)) / k ** 0.8  # rougher at low orders, like real membranes
    phase = rng.uniform(0, 2 * np.pi, size=(5, 1))
    r = 1 + (amp * np.cos(k * theta + phase)).sum(0)
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    return np.stack([a * r * np.cos(theta), b * r * np.sin(theta)], 1)


def _arm(rng: np.random.Generator, x: float, y: float, angle: float, length: float,
         width: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A slightly curved arm tapering from ``width`` to ~1 px.

    Returns:
        ``(polygon, tip)``: (2N, 2) float outline (left side out, right side back) and the tip's
        (x, y, direction).
    """
    n = max(2, int(length / 4))
    angles = angle + np.cumsum(rng.normal(0, 0.12, n))
    step = length / n
    centre = np.stack([x + np.concatenate([[0], np.cumsum(step * np.cos(angles))]),
                       y + np.concatenate([[0], np.cumsum(step * np.sin(angles))])], 1)
    direction = np.concatenate([angles[:1], angles])
    normal = np.stack([-np.sin(direction), np.cos(direction)], 1)
    half = (width * (1 - np.linspace(0, 1, n + 1)) + 1.0)[:, None] / 2  # taper to a point
    poly = np.concatenate([centre + half * normal, (centre - half * normal)[::-1]])
    return poly, (float(centre[-1, 0]), float(centre[-1, 1]), float(angles[-1]))


def draw_shape(rng: np.random.Generator, m: Morphology, cx: float, cy: float,
               frame: tuple[int, int], angle: float | None = None) -> Shape | None:
    """Draw one cell mask centred at (cx, cy) into a crop; None when it falls outside the frame."""
    import cv2

    rounded = rng.random() < m.rounded_prob
    radius = _uniform(rng, m.radius) * (0.8 if rounded else 1.0)
    elong = 1.0 + 0.15 * rng.random() if rounded else _uniform(rng, m.elongation)
    angle = rng.uniform(0, np.pi) if angle is None else angle
    poly = _outline(rng, radius, elong, m.roughness * (0.4 if rounded else 1.0))
    poly = poly @ _rotation(angle).T
    arms = []
    n_arms = 0 if rounded else int(rng.integers(int(m.n_processes[0]), int(m.n_processes[1]) + 1))
    for j in range(n_arms):
        # arms leave mostly along the long axis of elongated bodies (spindle-shaped neurons)
        if elong > 1.5 and j < 2:
            a = angle + np.pi * j + rng.normal(0, 0.2)
        else:
            a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        start = poly[np.argmax(poly @ d)] * 0.8  # leave from just inside the outline
        arms.append(_arm(rng, start[0], start[1], a, _uniform(rng, m.process_length),
                         _uniform(rng, m.process_width)))
    pts = np.concatenate([poly] + [p for p, _ in arms])
    lo = np.floor(pts.min(0) - 3).astype(int) + (int(cx), int(cy))
    hi = np.ceil(pts.max(0) + 3).astype(int) + (int(cx), int(cy))
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], frame[1]), min(hi[1], frame[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    ox, oy = cx - x0, cy - y0  # centre in crop coordinates
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4  # sub-pixel vertex precision: smoother outlines than integer vertices
    tips = []
    # one fillPoly call per polygon: a single call with several would XOR their overlaps
    for p in [poly] + [p for p, _ in arms]:
        cv2.fillPoly(mask, [np.round((p + (ox, oy)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift)
    for _, tip in arms:
        tips.append((tip[0] + cx, tip[1] + cy, tip[2]))
    return Shape(y0, x0, mask.astype(bool), (ox, oy), tips, rounded)


def phase_height(rng: np.random.Generator, m: Morphology, shape: Shape, mask: np.ndarray,
                 union: np.ndarray) -> np.ndarray:
    """(h, w) float32 phase height of a cell whose final mask (same crop as ``shape``) is ``mask``.

    A plateau rising over ``edge_tau`` px from the border (thin arms stay low, so they look faint),
    a nucleus ellipse and granules of both signs (the texture phase contrast shows inside cells).
    ``union`` (same crop, bool) is every cell's mask: with ``m.merge`` > 0 the height rises from
    the colony's edge rather than from the seams between packed neighbours, which stay faint as
    in real epithelial colonies.
    """
    import cv2

    m8 = mask.astype(np.uint8)
    dist = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
    if m.merge > 0:
        dist_union = cv2.distanceTransform((union | mask).astype(np.uint8), cv2.DIST_L2, 3)
        dist = (1 - m.merge) * dist + m.merge * dist_union
    amp = _uniform(rng, m.amplitude) * (1.8 if shape.rounded else 1.0)
    tau = m.edge_tau * (0.6 if shape.rounded else 1.0)
    h = amp * (1 - np.exp(-dist / tau))
    area = int(m8.sum())
    r_eq = np.sqrt(area / np.pi)
    extra = np.zeros_like(h)
    cx, cy = shape.center
    if mask[min(int(cy), mask.shape[0] - 1), min(int(cx), mask.shape[1] - 1)] and r_eq > 4:
        ax = (max(2, int(r_eq * rng.uniform(0.35, 0.5))),
              max(2, int(r_eq * rng.uniform(0.3, 0.45))))
        cv2.ellipse(extra, (int(cx), int(cy)), ax, float(rng.uniform(0, 180)), 0, 360,
                    float(_uniform(rng, m.nucleus) * amp), -1)
        cv2.circle(extra, (int(cx + rng.normal(0, 1)), int(cy + rng.normal(0, 1))), 1,
                   float(0.6 * amp), -1)  # nucleolus
    n_gran = int(m.granules * area / 100)
    if n_gran:
        ys, xs = np.nonzero(mask)
        pick = rng.integers(0, len(ys), n_gran)
        vals = rng.normal(0.15 * amp, 0.4 * amp, n_gran)  # mostly dark dots, a few bright
        for y, x, v in zip(ys[pick], xs[pick], vals):
            cv2.circle(extra, (int(x), int(y)), 1, float(v), -1)
    h += cv2.GaussianBlur(extra, (0, 0), 0.6)
    # blur after masking: anti-aliases the stair-stepped binary outline, which the high-pass
    # filter of the image formation would otherwise turn into a saw-tooth edge
    return cv2.GaussianBlur((h * mask).astype(np.float32), (0, 0), 0.55)


def draw_neurite(rng: np.random.Generator, canvas: np.ndarray, x: float, y: float, angle: float,
                 length: float, amp: float, curl: float = 0.2, depth: int = 0) -> None:
    """Draw an unannotated neurite (a thin wandering line that may branch) into ``canvas``.

    Values are SET, not added: draw into a clutter layer that is then added to the phase map.
    """
    import cv2

    n = max(1, int(length / 4.0))
    angles = angle + np.cumsum(rng.normal(0, curl, n))  # a random walk in direction, 4 px steps
    pts = np.stack([x + np.concatenate([[0], np.cumsum(4.0 * np.cos(angles))]),
                    y + np.concatenate([[0], np.cumsum(4.0 * np.sin(angles))])], 1)
    if depth < 2:
        for i in np.flatnonzero(rng.random(n) < 0.03):  # side branches, shorter and fainter
            draw_neurite(rng, canvas, pts[i + 1, 0], pts[i + 1, 1],
                         angles[i] + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2),
                         length * rng.uniform(0.2, 0.5), amp * 0.8, curl, depth + 1)
    poly = np.round(pts * 16).astype(np.int32)
    cv2.polylines(canvas, [poly], False, float(amp), 1 + int(rng.random() < 0.15), cv2.LINE_8, 4)


def draw_debris(rng: np.random.Generator, canvas: np.ndarray, x: float, y: float,
                amp: float) -> None:
    """Draw an unannotated clump of small round granules (dead cells, debris) into ``canvas``.

    Values are SET, not added: draw into a clutter layer that is then added to the phase map.
    """
    import cv2

    n = int(rng.integers(3, 12))
    xs = x + rng.normal(0, 5, n)
    ys = y + rng.normal(0, 5, n)
    for bx, by in zip(xs, ys):
        r = int(rng.integers(2, 5))
        a = amp * rng.uniform(1.5, 3.0) / r
        for k in range(r, 0, -1):  # nested discs of rising height: a dome, so it looks round
            cv2.circle(canvas, (int(bx), int(by)), k, float(a * (r - k + 1)), -1)


def draw_sheet(rng: np.random.Generator, canvas: np.ndarray, x: float, y: float, radius: float,
               amp: float) -> None:
    """Add an unannotated flat membrane sheet (a large faint irregular region) to ``canvas``.

    Real SH-SY5Y and astrocyte cultures are carpeted with flat lamellae whose edges show as a
    network of lines; only the cell bodies are annotated, so a model must learn to ignore them.
    """
    import cv2

    poly = _outline(rng, radius, rng.uniform(1.0, 2.5), 0.3) @ _rotation(rng.uniform(0, np.pi)).T
    poly += (x, y)
    lo = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, (canvas.shape[1], canvas.shape[0]))
    if (hi - lo).min() < 2:
        return
    crop = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
    cv2.fillPoly(crop, [np.round((poly - lo) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    height = (amp * (1 - np.exp(-dist / 1.0))).astype(np.float32)
    canvas[lo[1]:hi[1], lo[0]:hi[0]] += cv2.GaussianBlur(height, (0, 0), 0.55)  # anti-alias


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
