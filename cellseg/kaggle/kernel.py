"""Build an offline Kaggle kernel folder: ``kernel-metadata.json`` + ONE self-contained code file.

    cellseg kaggle build-kernel --weights unet_r34_fold0 --kernel-id me/cellseg-infer \\
        --out kernels/build/cellseg-infer
    cellseg kaggle rehearse kernels/build/cellseg-infer
    cellseg kaggle push kernels/build/cellseg-infer

``kaggle kernels push`` uploads only the file named by ``code_file``, so the weights' and wheels'
names and sha256s, the cellseg version and git commit, the inference config, the Kaggle image
description it was built for and the probe (:mod:`cellseg.kaggle.probe`: one small image and the
instances the bundled model finds in it here) are embedded in it; wheels and weights come from two datasets
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
# kagglesdk's machine_shape names; enable_gpu stays in the metadata for clients before machine_shape
ACCELERATORS = {"t4": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "none": None}
P100_WARNING = ("the P100 is retired on Kaggle and torch's cu128 wheels (Kaggle's image) do not run "
                "on it (compute capability 6.0); use the default T4 unless you know better")
MAX_FAILED_SHARE = 0.5


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
    """The Kaggle user name from KAGGLE_USERNAME (ConfigError telling how to pass it otherwise)."""
    from cellseg.errors import ConfigError

    env = dict(os.environ) if env is None else env
    owner = env.get("KAGGLE_USERNAME", "").strip()
    if not owner:
        raise ConfigError("no Kaggle owner", where="--kernel-id",
                          fix="pass --kernel-id owner/slug (and dataset ids) or set KAGGLE_USERNAME")
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
                    code_file: str = CODE_FILE, accelerator: str = "t4") -> dict[str, Any]:
    """The ``kernel-metadata.json`` dict. ``enable_internet`` is written explicitly: the push
    default is True, and the competition rejects kernels with internet on. ``accelerator``
    ("t4", "p100" or "none") becomes ``machine_shape`` (kagglesdk) plus ``enable_gpu`` (older
    clients, which ignore machine_shape)."""
    from cellseg.errors import ConfigError

    check_kernel_ref(kernel_id)
    for d in datasets:
        check_dataset_ref(d, "dataset")
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"accelerator {accelerator!r} is unknown", where="--accelerator",
                          fix=f"use one of {', '.join(ACCELERATORS)}")
    shape = ACCELERATORS[accelerator]
    gpu = shape is not None
    meta = {
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
    if shape:
        meta["machine_shape"] = shape
    return meta


def wheel_hashes(wheels_dir: str | os.PathLike) -> list[dict[str, str]]:
    """``[{"file", "sha256"}]`` of every wheel in ``wheels_dir`` (cellseg's first); InputError
    when there is no cellseg wheel."""
    from cellseg.errors import InputError
    from cellseg.checkpoint import sha256_file

    files = sorted(Path(wheels_dir).glob("*.whl"))
    own = [f for f in files if f.name.split("-")[0].lower() == "cellseg_kit"]
    if not own:
        raise InputError(f"no cellseg_kit-*.whl in {wheels_dir}", where="--wheels-dir",
                         fix="run `cellseg kaggle build-wheels --out DIR` first")
    if len(own) > 1:
        raise InputError(f"{len(own)} cellseg wheels in {wheels_dir} ({', '.join(f.name for f in own)})",
                         where="--wheels-dir", fix="keep only the one to ship")
    return [{"file": f.name, "sha256": sha256_file(f)}
            for f in own + [f for f in files if f not in own]]


def build_kernel(weights: Sequence[str], out: str | os.PathLike, *,
                 manifest: str | os.PathLike = Path("weights") / "manifest.yaml",
                 kernel_id: str | None = None, wheels_dataset: str | None = None,
                 weights_dataset: str | None = None, config: str | os.PathLike | None = None,
                 wheels_dir: str | os.PathLike | None = None, predict_args: Sequence[str] = (),
                 accelerator: str = "t4", verify: bool = True, probe: bool = True,
                 probe_image: str | None = None, image: str | None = None,
                 max_failed_share: float = MAX_FAILED_SHARE) -> KernelBuild:
    """Write ``out/kernel-metadata.json``, ``out/cellseg_infer.py`` and ``out/build-info.json``.

    ``weights`` are manifest names; with ``verify`` their local files must match the manifest
    (a kernel embedding a sha256 the uploaded file does not have would fail on Kaggle).
    ``wheels_dir``: its wheels' sha256 are embedded (the kernel installs only those files).
    ``probe``: run the model(s) on ``probe_image`` (``PATH[:Y,X,H,W]``; default a synthetic image)
    and embed the result, which the kernel must reproduce before predicting the test set.
    ``image``: the Kaggle image description it is built for (``kaggle``, ``kaggle-<date>``, a path).
    ``max_failed_share``: above this share of failed test images the kernel exits non-zero.
    """
    from cellseg import __version__
    from cellseg.checkpoint import git_commit
    from cellseg.io import atomic_open, write_json
    from cellseg.kaggle.kernel_template import render
    from cellseg.errors import ConfigError
    from cellseg.kaggle.image import find_image

    if not weights:
        raise ConfigError("no weights to bundle", where="--weights",
                          fix="pass at least one --weights NAME (see `cellseg weights list`)")
    if not 0.0 <= max_failed_share < 1.0:
        raise ConfigError(f"max failed share {max_failed_share} is not in [0, 1)",
                          where="--max-failed-share", fix="e.g. 0.5: more than half failed stops")
    owner = (kernel_id.split("/")[0] if kernel_id else None) or default_owner()
    kernel_id = check_ref(kernel_id or f"{owner}/{DEFAULT_KERNEL_SLUG}", "kernel id")
    wheels_dataset = check_ref(wheels_dataset or f"{owner}/{DEFAULT_WHEELS_SLUG}", "wheels dataset")
    weights_dataset = check_ref(weights_dataset or f"{owner}/{DEFAULT_WEIGHTS_SLUG}", "weights dataset")
    manifest = Path(manifest).resolve()
    chosen = _chosen_weights(weights, manifest, verify)
    img = find_image(image or "kaggle")
    wheels = wheel_hashes(wheels_dir) if wheels_dir else []
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
        "cellseg_commit": git_commit(),
        "predict_args": [str(a) for a in predict_args],
        "wheels": wheels,
        "image": {"label": img.label, "name": img.name, "as_of": img.as_of, "python": img.python,
                  "packages": dict(img.packages)},
        "probe": None,
        "max_failed_share": float(max_failed_share),
    }
    metadata = kernel_metadata(kernel_id, datasets=[wheels_dataset, weights_dataset],
                               accelerator=accelerator)
    if probe:
        from cellseg.kaggle.probe import build_probe

        embedded["probe"] = build_probe([manifest.parent / e.file for e in chosen],
                                        config_yaml=config_yaml, predict_args=predict_args,
                                        image=probe_image)
    out = Path(out).resolve()
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


def _chosen_weights(names: Sequence[str], manifest: Path, verify: bool) -> list[Any]:
    """The manifest entries of ``names``; with ``verify`` their local files must match them.
    A bad manifest, an unknown name or a mismatching file is one ``InputError``."""
    from cellseg.errors import InputError
    from cellseg.weights import find_entry, load_manifest, verify_entry

    try:  # weights.py reports a bad manifest or an unknown name as ValueError / KeyError
        entries = load_manifest(manifest)
        if not entries:
            raise InputError(f"{manifest} lists no weights", where="--manifest",
                             fix="register them with `cellseg weights add`")
        chosen = [find_entry(entries, n) for n in names]
    except (ValueError, KeyError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(str(exc.args[0] if exc.args else exc), where="--weights/--manifest",
                         fix="see `cellseg weights list`") from exc
    if verify:
        problems = [p for p in (verify_entry(e, manifest) for e in chosen) if p]
        if problems:
            raise InputError("weights do not match the manifest: " + "; ".join(problems),
                             where=str(manifest), fix="re-register them with `cellseg weights add`")
    return chosen
