"""Benchmarks: `python -m bench [NAME ...]` (or `make bench`) prints one table per benchmark."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# the shared data sets beside the repository (CELLSEG_SHARED_DATA overrides)
SHARED = Path(os.environ.get("CELLSEG_SHARED_DATA",
                             Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_train_records(name: str = "sartorius_409") -> list[Any] | None:
    """The annotated train records of the shared competition folder ``name``, or None (and a
    line saying so) when it is not there, so that a bench skips instead of failing."""
    from cellseg.data.loaders import load_records

    root = SHARED / name
    if not root.is_dir():
        print(f"(skipped: {root} not found)")
        return None
    return load_records(root, "train")
