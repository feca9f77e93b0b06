"""Build the wheels dataset the offline kernel installs from.

    cellseg kaggle build-wheels --out kernels/build/wheels --dataset-id me/cellseg-wheels
    cellseg kaggle upload-dataset kernels/build/wheels --notes "cellseg 0.1.1"

The folder holds a ``py3-none-any`` wheel of cellseg (``pip wheel . --no-deps --no-build-isolation``),
wheels of the dependencies Kaggle's image lacks (:data:`KAGGLE_MISSING`, pinned to the versions
installed here so the kernel runs what was tested), and ``dataset-metadata.json``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

# Dependencies the Kaggle Python image (2024-2025 releases) does not ship; everything else cellseg
# imports (torch, torchvision, timm, albumentations, pycocotools, opencv, scikit-image, pandas,
# pyyaml, tqdm, safetensors, huggingface_hub) is there. Installed with --no-deps, so list a
# dependency's own missing dependencies too. Override with --packages.
KAGGLE_MISSING: tuple[str, ...] = (
    "segmentation-models-pytorch",  # UNet family; pure python
    "faster-coco-eval",  # COCO AP/AR at maxDets 2000; compiled: needs the kernel's Python/platform
)
# Kaggle's image runs CPython 3.11 on glibc >= 2.35 x86_64. pip does NOT expand an explicit
# --platform to older manylinux tags (checked with pip 26), so every compatible tag is listed.
KAGGLE_PYTHON = "3.11"
KAGGLE_PLATFORMS: tuple[str, ...] = tuple(f"manylinux_2_{v}_x86_64" for v in range(35, 16, -1)) + (
    "manylinux2014_x86_64", "linux_x86_64")


def pinned(packages: Sequence[str]) -> list[str]:
    """``name`` -> ``name==<installed version>`` when installed here (what the tests ran with)."""
    out = []
    for p in packages:
        if any(c in p for c in "=<>!~ @"):
            out.append(p)
            continue
        try:
            out.append(f"{p}=={metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(p)
    return out


def _pip(args: Sequence[str], cwd: str | os.PathLike | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-3000:]}")


# what a wheel build needs from the source tree (copied, so no build/ or egg-info lands in the
# checkout, and a stale build/lib cannot smuggle deleted modules into the wheel)
_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "MANIFEST.in")


def build_cellseg_wheel(out: str | os.PathLike, source: str | os.PathLike = ".") -> Path:
    """``pip wheel <copy of SOURCE> --no-deps --no-build-isolation -w OUT``; returns the wheel."""
    import shutil
    import tempfile

    out, source = Path(out), Path(source).resolve()
    if not (source / "cellseg" / "__init__.py").is_file():
        raise FileNotFoundError(f"{source} is not a cellseg source tree (no cellseg/__init__.py); "
                                "pass --source")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("cellseg-*.whl"):
        old.unlink()  # a stale wheel beside the new one makes the kernel's pick ambiguous
    with tempfile.TemporaryDirectory(prefix="cellseg-wheel-") as tmp:
        shutil.copytree(source / "cellseg", Path(tmp) / "cellseg",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in _SOURCE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, Path(tmp) / name)
        _pip(["wheel", tmp, "--no-deps", "--no-build-isolation", "-q", "-w", str(out.resolve())])
    wheels = sorted(out.glob("cellseg-*-py3-none-any.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no cellseg-*-py3-none-any.whl into {out}")
    return wheels[-1]


def download_wheels(packages: Sequence[str], out: str | os.PathLike, *,
                    python_version: str | None = KAGGLE_PYTHON,
                    platforms: Sequence[str] = KAGGLE_PLATFORMS) -> list[Path]:
    """``pip download --only-binary :all: --no-deps`` each package for Kaggle's Python/platform."""
    out = Path(out)
    before = set(out.glob("*.whl"))
    if not packages:
        return []
    args = ["download", "--only-binary", ":all:", "--no-deps", "-q", "-d", str(out.resolve())]
    if python_version:
        args += ["--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        args += ["--platform", platform]
    _pip(args + list(packages))
    return sorted(set(out.glob("*.whl")) - before)


def build_wheels(out: str | os.PathLike, *, packages: Sequence[str] | None = None,
                 dataset_id: str | None = None, source: str | os.PathLike = ".",
                 python_version: str | None = KAGGLE_PYTHON,
                 platforms: Sequence[str] = KAGGLE_PLATFORMS,
                 pin: bool = True) -> list[Path]:
    """Write the wheels dataset folder; returns every wheel in it.

    ``dataset_id`` (owner/slug; default ``$KAGGLE_USERNAME/cellseg-wheels``) goes into
    ``dataset-metadata.json``. ``packages`` defaults to :data:`KAGGLE_MISSING`.
    """
    from cellseg.io import write_json
    from cellseg.kaggle.kernel import DEFAULT_WHEELS_SLUG, check_ref, default_owner

    out = Path(out)
    dataset_id = check_ref(dataset_id or f"{default_owner()}/{DEFAULT_WHEELS_SLUG}", "dataset id")
    build_cellseg_wheel(out, source)
    pkgs = list(KAGGLE_MISSING if packages is None else packages)
    download_wheels(pinned(pkgs) if pin else pkgs, out, python_version=python_version,
                    platforms=platforms)
    write_json(out / "dataset-metadata.json", {
        "title": dataset_id.split("/")[1].replace("-", " "),
        "id": dataset_id,
        "licenses": [{"name": "other"}],
    })
    return sorted(out.glob("*.whl"))
