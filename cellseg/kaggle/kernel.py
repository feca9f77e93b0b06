"""Build an offline Kaggle kernel folder: ``kernel-metadata.json`` + ONE self-contained code file.

    cellseg kaggle build-kernel --weights unet_r34_fold0 --kernel-id me/cellseg-infer \\
        --config infer_default --out kernels/build/cellseg-infer
    cellseg kaggle rehearse kernels/build/cellseg-infer
    cellseg kaggle push kernels/build/cellseg-infer

``kaggle kernels push`` uploads only the file named by ``code_file``, so the weights' names and
sha256s and the inference config are embedded in it; wheels and weights come from two datasets
(``--wheels-dataset``, ``--weights-dataset``; default ``<owner>/cellseg-wheels`` and
``<owner>/cellseg-weights``). ``build-info.json`` (local only, never uploaded) records where the
manifest and wheels live, for ``cellseg kaggle rehearse``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cellseg.kaggle.api import COMPETITION
from cellseg.kaggle.names import check_dataset_ref, check_kernel_ref, check_kernel_title

CODE_FILE = "cellseg_infer.py"
BUILD_INFO = "build-info.json"
DEFAULT_WHEELS_SLUG = "cellseg-wheels"
DEFAULT_WEIGHTS_SLUG = "cellseg-weights"
DEFAULT_KERNEL_SLUG = "cellseg-infer"


@dataclass(frozen=True)
class KernelBuild:
    """What :func:`build_kernel` wrote."""

    folder: Path
    metadata: dict[str, Any]
    code_file: Path
    embedded: dict[str, Any]


def check_ref(ref: str, what: str) -> str:
    """Validate an ``owner/slug`` reference: datasets need a slug of 6+ characters, kernels 3+
    (``cellseg.kaggle.names``)."""
    if "dataset" in what:
        return check_dataset_ref(ref, what)
    return check_kernel_ref(ref, what)


def default_owner(env: dict[str, str] | None = None) -> str:
    """The Kaggle user name from KAGGLE_USERNAME (ValueError telling how to pass it otherwise)."""
    env = dict(os.environ) if env is None else env
    owner = env.get("KAGGLE_USERNAME", "").strip()
    if not owner:
        raise ValueError("no Kaggle owner: pass --kernel-id owner/slug (and dataset ids) or set "
                         "KAGGLE_USERNAME")
    return owner


def title_for(slug: str) -> str:
    """A title that Kaggle slugifies back to ``slug`` (push warns otherwise): 'cellseg infer'."""
    return slug.replace("-", " ")


def read_config_text(config: str | os.PathLike) -> tuple[str, str]:
    """(name, YAML text) of an inference config given as a path or a shipped config name.

    The text is validated with ``cellseg.infer.config.load_inference_config`` now, so a typo
    fails here rather than on Kaggle after the upload.
    """
    from importlib import resources

    import yaml

    from cellseg.infer.config import load_inference_config

    path = Path(config)
    if path.is_file():
        name, text = path.stem, path.read_text()
    else:
        shipped = resources.files("cellseg") / "configs" / f"{Path(str(config)).stem}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"inference config {config} is neither a file nor a shipped "
                                    "config name (see cellseg/configs/*.yaml)")
        name, text = Path(str(config)).stem, shipped.read_text()
    load_inference_config(yaml.safe_load(text) or {})
    return name, text


def kernel_metadata(kernel_id: str, *, datasets: Sequence[str], title: str | None = None,
                    code_file: str = CODE_FILE, gpu: bool = True) -> dict[str, Any]:
    """The ``kernel-metadata.json`` dict. ``enable_internet`` is written explicitly: the push
    default is True, and the competition rejects kernels with internet on."""
    check_kernel_ref(kernel_id)
    for d in datasets:
        check_dataset_ref(d, "dataset")
    return {
        "id": kernel_id,
        "title": check_kernel_title(title or title_for(kernel_id.split("/")[1])),
        "code_file": code_file,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": list(dict.fromkeys(datasets)),
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
    }


def build_kernel(weights: Sequence[str], out: str | os.PathLike, *,
                 manifest: str | os.PathLike = Path("weights") / "manifest.yaml",
                 kernel_id: str | None = None, wheels_dataset: str | None = None,
                 weights_dataset: str | None = None, config: str | os.PathLike | None = None,
                 wheels_dir: str | os.PathLike | None = None, predict_args: Sequence[str] = (),
                 gpu: bool = True, verify: bool = True) -> KernelBuild:
    """Write ``out/kernel-metadata.json``, ``out/cellseg_infer.py`` and ``out/build-info.json``.

    ``weights`` are manifest names; with ``verify`` their local files must match the manifest
    (a kernel embedding a sha256 the uploaded file does not have would fail on Kaggle).
    """
    from cellseg import __version__
    from cellseg.io import atomic_open, write_json
    from cellseg.kaggle.kernel_template import render
    from cellseg.weights import find_entry, load_manifest, verify_entry

    if not weights:
        raise ValueError("pass at least one --weights NAME (see `cellseg weights list`)")
    owner = (kernel_id.split("/")[0] if kernel_id else None) or default_owner()
    kernel_id = check_ref(kernel_id or f"{owner}/{DEFAULT_KERNEL_SLUG}", "kernel id")
    wheels_dataset = check_ref(wheels_dataset or f"{owner}/{DEFAULT_WHEELS_SLUG}", "wheels dataset")
    weights_dataset = check_ref(weights_dataset or f"{owner}/{DEFAULT_WEIGHTS_SLUG}", "weights dataset")
    manifest = Path(manifest).resolve()
    entries = load_manifest(manifest)
    if not entries:
        raise ValueError(f"{manifest} lists no weights: register them with `cellseg weights add`")
    chosen = [find_entry(entries, n) for n in weights]
    if verify:
        problems = [p for p in (verify_entry(e, manifest) for e in chosen) if p]
        if problems:
            raise ValueError("weights do not match the manifest:\n  " + "\n  ".join(problems))
    config_name, config_yaml = read_config_text(config) if config else (None, None)
    embedded = {
        "competition": COMPETITION,
        "wheels_dataset": wheels_dataset,
        "weights_dataset": weights_dataset,
        "weights": [{"name": e.name, "file": e.file, "sha256": e.sha256, "size": e.size,
                     "family": e.family} for e in chosen],
        "config_name": config_name,
        "config_yaml": config_yaml,
        "cellseg_version": __version__,
        "predict_args": [str(a) for a in predict_args],
    }
    out = Path(out).resolve()
    metadata = kernel_metadata(kernel_id, datasets=[wheels_dataset, weights_dataset], gpu=gpu)
    code = out / metadata["code_file"]
    with atomic_open(code, "w") as fh:
        fh.write(render(embedded))
    write_json(out / "kernel-metadata.json", metadata)
    write_json(out / BUILD_INFO, {
        "manifest": str(Path(manifest).resolve()),
        "weights_dir": str(Path(manifest).resolve().parent),
        "wheels_dir": str(Path(wheels_dir).resolve()) if wheels_dir else None,
        "note": "local only: push uploads just the code file",
    })
    return KernelBuild(folder=out, metadata=metadata, code_file=code, embedded=embedded)
