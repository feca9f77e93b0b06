"""What made a predictions file, kept beside it: ``<file>.info.json``.

    cellseg predict ... --out sub.csv --results res.json   # writes sub.csv.info.json, res.json.info.json
    read_run_info("sub.csv")  # -> {"command": ..., "config": {...}, "weights": [...], "created": ...}

``cellseg predict`` writes one for its submission and its COCO results file; ``cellseg score``
shows it on the results page. A COCO results JSON may also carry it inline, as
``{"info": {...}, "annotations": [...]}`` (what ``cellseg score`` already reads).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


def info_path(pred_path: str | os.PathLike) -> Path:
    """``<pred_path>.info.json``."""
    p = Path(pred_path)
    return p.with_name(p.name + ".info.json")


def make_run_info(config: Any, weights: Sequence[str | os.PathLike],
                  command: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The record of one prediction run: inference config (a dataclass or mapping), checkpoint
    paths and sizes, the command line, the time (UTC) and the cellseg version."""
    from cellseg import __version__
    from cellseg.configlib import to_dict

    ckpts = []
    for w in weights:
        p = Path(w)
        ckpts.append({"path": str(p.resolve()) if p.exists() else str(w),
                      "bytes": p.stat().st_size if p.is_file() else None})
    return {"created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(command) if command else None,
            "cellseg": __version__, "weights": ckpts,
            "config": to_dict(config) if not isinstance(config, Mapping) else dict(config),
            **extra}


def write_run_info(pred_path: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``info`` to ``<pred_path>.info.json`` (atomically); returns its path."""
    from cellseg.io import write_json

    path = info_path(pred_path)
    write_json(path, dict(info))
    return path


def read_run_info(pred_path: str | os.PathLike) -> dict[str, Any]:
    """The run info of a predictions file: its ``.info.json`` sidecar, else the ``info`` of a
    ``{"info", "annotations"}`` results JSON, else ``{}`` (a file from elsewhere)."""
    side = info_path(pred_path)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
            return dict(data) if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}
    p = Path(pred_path)
    if p.suffix.lower() == ".json" and p.is_file():
        with open(p) as fh:
            head = fh.read(64).lstrip()[:1]
        if head == "{":  # a list of results has no room for it; read only dict forms
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError:
                return {}
            info = data.get("info") if isinstance(data, dict) else None
            return dict(info) if isinstance(info, dict) else {}
    return {}
