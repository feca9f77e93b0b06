"""What a kernel run reports about itself: its image (``kaggle_image.json``) and its failures.

    cellseg kaggle image --import kernels/build/cellseg-infer/output     # a new dated description
    from cellseg.kaggle.image_report import import_report, image_drift, read_failures

Every kernel run writes ``kaggle_image.json`` into ``/kaggle/working`` before installing anything
(format: ``cellseg/kaggle/templates/kernel_main.py``, ``record_image``): Python, platform tag,
every installed distribution, torch/CUDA/cuDNN, GPUs, ``/etc/git_commit`` and ``/etc/build_date``,
the ``/kaggle/input`` layout. :func:`import_report` turns it into a description in the format of
``cellseg/kaggle/images/*.json`` (pins taken from the run, so "confirmed"), which ``rehearse
--image PATH`` and ``build-wheels --image-file PATH`` accept. :func:`image_drift` compares it with
the description a kernel was built for; :func:`read_failures` summarises ``failures.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from cellseg.kaggle.image import ImageDescription, load_image, normalize

RECORD = "kaggle_image.json"
FAILURES = "failures.json"


def _record_path(path: str | os.PathLike) -> Path:
    from cellseg.errors import InputError

    p = Path(path)
    if p.is_dir():
        p = p / RECORD
    if not p.is_file():
        raise InputError(f"{p} not found", where="--import",
                         fix="pass the output folder of a kernel run (`cellseg kaggle output "
                             "owner/slug --out DIR`) or its kaggle_image.json")
    return p


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``kaggle_image.json`` (a folder holding it, or the file)."""
    from cellseg.errors import InputError

    p = _record_path(path)
    try:
        rec = json.loads(p.read_text())
    except ValueError as exc:
        raise InputError(f"{p} is not JSON ({exc})", fix="download the kernel output again") from None
    for key in ("python", "platform_tag", "distributions", "recorded_at"):
        if key not in rec:
            raise InputError(f"{p} lacks {key!r}", fix="it must come from a kernel built by this kit")
    return rec


def _public(version: str) -> str:
    """``2.11.0+cu128`` -> ``2.11.0`` (PyPI has no local versions)."""
    return str(version).split("+")[0]


def describe(rec: Mapping[str, Any], reference: ImageDescription | None = None) -> dict[str, Any]:
    """A description dict (``cellseg/kaggle/images`` format) from a kernel's record.

    Packages: those the reference description (default: the newest shipped) pins, plus every
    package of the reference's ``absent`` list that the run found installed, each at the version
    the run reported; those the run did not find go to ``absent``.
    """
    ref = reference or load_image()
    dists = {normalize(k): str(v) for k, v in rec["distributions"].items()}
    wanted = list(ref.packages) + [a for a in ref.absent if a in dists]
    packages = {n: _public(dists[n]) for n in wanted if n in dists}
    absent = sorted(n for n in set(ref.packages) | set(ref.absent) if n not in dists)
    as_of = str(rec["recorded_at"])[:10]
    torch = rec.get("torch") or {}
    gpus = torch.get("gpus") or []
    accel = ", ".join(f"{g.get('name')} (compute capability {g.get('capability')})" for g in gpus)
    accel = accel or "no GPU visible to the run"
    if torch.get("version"):
        accel += (f"; torch {torch['version']}, CUDA {torch.get('cuda')}, "
                  f"cuDNN {torch.get('cudnn')}")
    etc = rec.get("etc") or {}
    kernel = rec.get("kernel") or {}
    source = (f"kaggle_image.json written by a cellseg kernel run at {rec['recorded_at']} "
              f"(cellseg {kernel.get('cellseg_version')}, built for "
              f"{kernel.get('built_for_image')})")
    if etc:
        source += "; image " + ", ".join(f"{k} {v}" for k, v in sorted(etc.items()))
    notes = ["recorded by the kernel itself: every version below is what the run found "
             "installed (local versions such as +cu128 dropped for PyPI)",
             f"{len(dists)} distributions were installed in all; the list is in the record"]
    return {
        "name": ref.name, "as_of": as_of, "sources": [source],
        "confidence": {"python": "confirmed (kernel record)",
                       **{n: "confirmed (kernel record)" for n in packages}},
        "python": str(rec["python"]), "os": str(rec.get("platform", "")),
        "platform": str(rec["platform_tag"]), "accelerator": accel,
        "packages": packages, "absent": absent, "notes": notes,
        "input_layout": rec.get("input_layout", []),
    }


def import_report(path: str | os.PathLike, *, out: str | os.PathLike | None = None
                  ) -> tuple[Path, ImageDescription]:
    """Write the description of the run recorded in ``path`` and return (file, description).

    ``out`` defaults to ``cellseg/kaggle/images/kaggle-gpu-<date>.json`` beside the shipped ones
    (in a checkout, so it ships with the next wheel). Written atomically.
    """
    from cellseg.io import write_json

    desc = describe(read_record(path))
    if out is None:
        out = Path(__file__).resolve().parent / "images" / f"{desc['name']}-{desc['as_of']}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, desc)
    return out, load_image(out)


def image_drift(output_dir: str | os.PathLike, built_for: Mapping[str, Any] | None) -> list[str]:
    """Lines saying how the image a run reported differs from the one the kernel was built for
    (``built_for``: the kernel's embedded ``image``: label, python, packages); [] when the
    record is absent or nothing differs."""
    path = Path(output_dir) / RECORD
    if not path.is_file() or not built_for:
        return [] if built_for else [f"({RECORD} not checked: the kernel embeds no image)"]
    rec = read_record(path)
    dists = {normalize(k): _public(v) for k, v in rec["distributions"].items()}
    diffs = []
    want_py = str(built_for.get("python", ""))
    if want_py and ".".join(want_py.split(".")[:2]) != ".".join(str(rec["python"]).split(".")[:2]):
        diffs.append(f"python {want_py} -> {rec['python']}")
    for name, ver in sorted((built_for.get("packages") or {}).items()):
        have = dists.get(normalize(name))
        if have != ver:
            diffs.append(f"{name} {ver} -> {have or 'not installed'}")
    if not diffs:
        return [f"Kaggle's image matches {built_for.get('label')} (python {rec['python']})"]
    return [f"Kaggle's image differs from {built_for.get('label')}, the description this kernel "
            f"was built for: " + ", ".join(diffs),
            f"  record it with: cellseg kaggle image --import {Path(output_dir)}"]


def read_failures(output_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """(number of failed images, report lines) from a run's ``failures.json`` (0, [] without one)."""
    path = Path(output_dir) / FAILURES
    if not path.is_file():
        return 0, []
    try:
        rep = json.loads(path.read_text())
    except ValueError:
        return 0, [f"{path} is not JSON"]
    failed = rep.get("failed") or []
    n = int(rep.get("images") or 0)
    lines = []
    if rep.get("systemic"):
        lines.append(f"KERNEL STOPPED: {rep['systemic']}")
        probe = rep.get("probe")
        if probe and probe.get("message"):
            lines.append(f"  {probe['message']}")
    if failed:
        lines.append(f"{len(failed)} of {n} test image(s) failed (placeholders in submission.csv):")
        lines += [f"  {f.get('id')}: {f.get('reason')}" for f in failed[:20]]
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more ({path})")
    elif not rep.get("systemic"):
        lines.append(f"all {n} test images predicted (failures.json)")
    return len(failed) + (1 if rep.get("systemic") else 0), lines
