"""The results viewer: one self-contained HTML page per scoring run (``DIR/index.html``).

    cellseg score --truth T --pred A.json --report DIR                 # one run
    cellseg score --truth T --pred A.json --compare B.json --report DIR  # A and B side by side
    cellseg cv ... --out runs/cv --report                               # methods of a CV run
    cellseg predict ... --out sub.csv --report DIR                      # no truth: outlines, counts

    from cellseg.viewer import ViewRun, write_viewer
    write_viewer("report/", [ViewRun("A", pred_runs)], image_ids, truth=truth_runs)

The page opens from ``file://`` with no server and no network: CSS, JavaScript and numbers are
inline; pictures are files in ``DIR/img/``. It shows a summary (score, score per IoU threshold,
per cell type, TP/FP/FN, counts, what made the predictions, when), a table of images (sortable,
filterable by cell type, worst first) and each image with outlines coloured by outcome, layer
toggles and 2x/4x zoom on a clicked point (``cellseg.viewer.render`` says what the colours mean).
"""

from cellseg.viewer.page import ViewRun, paired, write_viewer

__all__ = ["ViewRun", "paired", "write_viewer"]
