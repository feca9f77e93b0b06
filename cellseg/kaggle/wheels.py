"""Build the wheels dataset the offline kernel installs from, for Kaggle's image.

    cellseg kaggle build-wheels --out kernels/build/wheels --dataset-id me/cellseg-wheels
    cellseg kaggle upload-dataset kernels/build/wheels --notes "cellseg 0.1.1"

The folder holds a ``py3-none-any`` wheel of cellseg (``pip wheel . --no-deps --no-build-isolation``),
the wheels of every package the kernel imports that Kaggle's image lacks, including their own
dependencies the image lacks, and ``dataset-metadata.json``. What the image has comes from its
dated description (:mod:`cellseg.kaggle.image`):

1. the kernel needs cellseg's ``install_requires`` (read from the built wheel), minus
   :data:`SCORING_ONLY` (imported by ``cellseg score`` alone, never by ``cellseg predict``);
2. those the image ships are left out; the rest (e.g. segmentation-models-pytorch) are resolved
   together with the image's pins by ``pip install --dry-run --report`` for the image's Python and
   platform tags;
3. a resolved package is "in the image" when it is an image package or a dependency of one (the
   image's own pip installed it); everything else is bundled, pinned to the resolved version, and
   downloaded with ``pip download --no-deps --only-binary :all: --python-version X.Y --platform ...``.

Every bundled wheel comes with a reason (:class:`Planned`), printed by the command and written to
``bundle.json`` beside the wheels. The resolution is cached (``$CELLSEG_CACHE``), so a rebuild for
the same image and requests does not ask the index again.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from cellseg.errors import UserError
from cellseg.kaggle.image import ImageDescription, cache_root, load_image, normalize

# imported only by `cellseg score` (cellseg/core/metrics_coco.py, lazily); the kernel never scores, and
# the compiled wheel would have to match Kaggle's Python exactly.
SCORING_ONLY: tuple[str, ...] = ("faster-coco-eval",)


@dataclass(frozen=True)
class Planned:
    """One package the wheels dataset bundles (``file`` once downloaded), or leaves out."""

    name: str
    version: str | None
    reason: str
    file: str | None = None


def pinned(packages: Sequence[str]) -> list[str]:
    """``name`` -> ``name==<installed version>`` when installed here (what the tests ran with)."""
    out = []
    for p in packages:
        if any(c in p for c in "=<>!~ @;["):
            out.append(p)
            continue
        try:
            out.append(f"{p}=={metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(p)
    return out


class PipError(UserError, RuntimeError):
    """A pip step failed (an index without the pinned version, a build error). One line for the
    CLI; pip's own output is in ``output`` and printed to stderr by :func:`_pip`."""

    def __init__(self, what: str, output: str = "", fix: str | None = None):
        super().__init__(what, fix=fix)
        self.output = output


def _pip(args: Sequence[str], cwd: str | os.PathLike | None = None) -> str:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout[-2000:] + proc.stderr[-3000:]
        sys.stderr.write(output)
        raise PipError(f"`{' '.join(cmd[2:6])} ...` failed with exit code {proc.returncode} "
                       "(pip's output above)", output,
                       fix="check the package index and the versions the image description pins")
    return proc.stdout


# what a wheel build needs from the source tree (copied, so no build/ or egg-info lands in the
# checkout, and a stale build/lib cannot smuggle deleted modules into the wheel)
_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "MANIFEST.in")


# The kit's distribution is `cellseg-kit` on PyPI (the name `cellseg` belongs to another project);
# its wheel files are `cellseg_kit-<version>-py3-none-any.whl`, its import name is `cellseg`.
KIT_DIST = "cellseg-kit"
KIT_WHEEL_PREFIX = "cellseg_kit-"


def build_cellseg_wheel(out: str | os.PathLike, source: str | os.PathLike = ".") -> Path:
    """``pip wheel <copy of SOURCE> --no-deps --no-build-isolation -w OUT``; returns the wheel."""
    import shutil

    out, source = Path(out).resolve(), Path(source).resolve()
    if not (source / "cellseg" / "__init__.py").is_file():
        raise FileNotFoundError(f"{source} is not a cellseg source tree (no cellseg/__init__.py); "
                                "pass --source")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{KIT_WHEEL_PREFIX}*.whl"):
        old.unlink()  # a stale wheel beside the new one makes the kernel's pick ambiguous
    with tempfile.TemporaryDirectory(prefix="cellseg-wheel-") as tmp:
        shutil.copytree(source / "cellseg", Path(tmp) / "cellseg",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in _SOURCE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, Path(tmp) / name)
        try:
            _pip(["wheel", tmp, "--no-deps", "--no-build-isolation", "-q", "-w", str(out)])
        except PipError as exc:
            if "bdist_wheel" not in exc.output:
                raise
            # setuptools < 70.1 without the `wheel` package (a fresh venv's bundled one):
            # let pip fetch the build requirements of pyproject.toml instead
            _pip(["wheel", tmp, "--no-deps", "-q", "-w", str(out)])
    wheels = sorted(out.glob(f"{KIT_WHEEL_PREFIX}*-py3-none-any.whl"))
    if not wheels:
        raise PipError(f"pip wheel wrote no {KIT_WHEEL_PREFIX}*-py3-none-any.whl into {out}")
    return wheels[-1]


def wheel_requirements(wheel: str | os.PathLike) -> list[str]:
    """The unconditional ``Requires-Dist`` entries of a wheel (extras' entries left out)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))
    return [r for r in msg.get_all("Requires-Dist") or [] if "extra ==" not in r.replace("'", '"')]


def requirement_name(req: str) -> str:
    """``segmentation-models-pytorch>=0.3; python_version>'3'`` -> ``segmentation-models-pytorch``."""
    from packaging.requirements import Requirement

    return normalize(Requirement(req).name)


def _marker_env(img: ImageDescription) -> dict[str, str]:
    return {"python_version": img.python_short, "python_full_version": img.python,
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def _requirements(item: dict, img: ImageDescription, extras: Sequence[str] = ()
                  ) -> list["Requirement"]:  # noqa: F821
    """The requirements of a resolved package that apply on the image, for the ``extras`` it was
    requested with (``torch`` asks for ``cuda-toolkit[nvrtc,...]``, whose nvidia-* wheels are
    conditional on those extras)."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in item["metadata"].get("requires_dist") or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not any(
                req.marker.evaluate(dict(_marker_env(img), extra=e)) for e in ("", *extras)):
            continue
        out.append(req)
    return out


def _requested_extras(items: dict[str, dict], img: ImageDescription) -> dict[str, set[str]]:
    """Package name -> the extras some resolved package requires it with (to a fixed point)."""
    extras: dict[str, set[str]] = {n: set() for n in items}
    changed = True
    while changed:
        changed = False
        for name, item in items.items():
            for req in _requirements(item, img, sorted(extras[name])):
                target = extras.setdefault(normalize(req.name), set())
                if not set(req.extras) <= target:
                    target |= set(req.extras)
                    changed = True
    return extras


def _deps(item: dict, img: ImageDescription, extras: Sequence[str] = ()) -> list[str]:
    """Names a resolved package requires on the image (markers evaluated for ``extras``)."""
    return [normalize(r.name) for r in _requirements(item, img, extras)]


def split_report(report: dict, img: ImageDescription, wanted: Sequence[str]
                 ) -> tuple[list[Planned], list[Planned]]:
    """(bundle, in the image) from a ``pip install --report`` of ``wanted`` + the image's pins.

    A package is in the image when the image lists it or an image package depends on it,
    transitively (the image's pip installed it). Each bundled package says who needs it.
    """
    items = {normalize(i["metadata"]["name"]): i for i in report["install"]}
    extras = _requested_extras(items, img)
    deps = {name: _deps(item, img, sorted(extras[name])) for name, item in items.items()}
    present = {n for n in items if img.has(n)}
    todo = list(present)
    while todo:
        for d in deps.get(todo.pop(), []):
            if d in items and d not in present:
                present.add(d)
                todo.append(d)
    wanted = [normalize(w) for w in wanted]
    bundle, skipped = [], []
    for name, item in items.items():
        version = item["metadata"]["version"]
        if name in present:
            why = "in the image" if img.has(name) else "in the image (a dependency of its packages)"
            skipped.append(Planned(name, version, why))
            continue
        if name in wanted:
            why = "imported by cellseg predict; not in the Kaggle image"
        else:
            parents = sorted(p for p, ds in deps.items() if name in ds and p not in present)
            why = f"required by {', '.join(parents) or '?'}; not in the Kaggle image"
        bundle.append(Planned(name, version, why))
    return bundle, skipped


def resolve(requests: Sequence[str], img: ImageDescription, *, log: Callable[[str], None] = print
            ) -> dict:
    """``pip install --dry-run --report`` of ``requests`` plus every image pin, for the image's
    Python and platform tags; cached under ``$CELLSEG_CACHE/wheel-plans/``."""
    from cellseg.kaggle.image import requirements

    pins = requirements(img)
    key = hashlib.sha256(json.dumps([img.key(), img.python_short, img.platforms(), sorted(requests)]
                                    ).encode()).hexdigest()[:16]
    cached = cache_root() / "wheel-plans" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    log(f"resolving {', '.join(requests)} against the Kaggle image's {len(pins)} pins "
        f"(Python {img.python_short}, {img.platform}) ...")
    with tempfile.TemporaryDirectory(prefix="cellseg-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                "--only-binary", ":all:", "--python-version", img.python_short,
                "--implementation", "cp", "--target", str(Path(tmp) / "target")]
        for platform in img.platforms():
            args += ["--platform", platform]
        _pip(args + list(requests) + pins)
        data = json.loads(report.read_text())
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"install": [{"metadata": {k: i["metadata"].get(k) for k in
                                                            ("name", "version", "requires_dist")}}
                                              for i in data["install"]]}))
    return json.loads(cached.read_text())


def plan_bundle(requires: Sequence[str], img: ImageDescription, *, extra: Sequence[str] = (),
                pin: bool = True, resolver: Callable[..., dict] = resolve,
                log: Callable[[str], None] = print) -> tuple[list[Planned], list[Planned]]:
    """(bundle, left out) for cellseg's ``requires`` (+ ``extra`` packages) on ``img``.

    Left out: :data:`SCORING_ONLY` and what the image ships. ``pin``: request the versions
    installed here (what the tests ran with) for the missing top-level packages.
    """
    left_out, missing = [], []
    for req in [*requires, *extra]:
        name = requirement_name(req)
        if name in SCORING_ONLY:
            left_out.append(Planned(name, None, "scoring only (cellseg score); the kernel never "
                                                 "imports it"))
        elif img.has(name):
            left_out.append(Planned(name, img.packages[name], "in the image"))
        else:
            missing.append(name if not pin else pinned([name])[0])
    if not missing:
        return [], left_out
    bundle, present = split_report(resolver(missing, img, log=log), img,
                                   [requirement_name(m) for m in missing])
    names = {p.name for p in left_out}
    return bundle, left_out + [p for p in present if p.name not in names]


def wheel_tags(filename: str) -> tuple[str, str, str]:
    """``(python tag, abi tag, platform tag)`` of a wheel file name."""
    parts = filename[:-len(".whl")].split("-")
    return parts[-3], parts[-2], parts[-1]


def fits_image(filename: str, img: ImageDescription) -> bool:
    """True when the wheel installs on the image's Python and platform."""
    py, abi, plat = wheel_tags(filename)
    pys = set(py.split("."))
    py_ok = bool(pys & {"py3", f"py{img.python_short.replace('.', '')}", img.python_tag}) or (
        abi == "abi3" and any(p.startswith("cp3") and int(p[3:]) <= int(img.python_tag[3:])
                              for p in pys))
    return py_ok and (plat == "any" or bool(set(plat.split(".")) & set(img.platforms())))


def download_wheels(packages: Sequence[str], out: str | os.PathLike, img: ImageDescription
                    ) -> list[Path]:
    """``pip download --only-binary :all: --no-deps`` of pinned ``packages`` for the image."""
    out = Path(out).resolve()
    before = set(out.glob("*.whl"))
    if not packages:
        return []
    args = ["download", "--only-binary", ":all:", "--no-deps", "-q", "-d", str(out),
            "--python-version", img.python_short, "--implementation", "cp"]
    for platform in img.platforms():
        args += ["--platform", platform]
    _pip(args + list(packages))
    return sorted(set(out.glob("*.whl")) - before)


def build_wheels(out: str | os.PathLike, *, packages: Sequence[str] | None = None,
                 dataset_id: str | None = None, source: str | os.PathLike = ".",
                 image: ImageDescription | None = None, pin: bool = True,
                 resolver: Callable[..., dict] = resolve,
                 log: Callable[[str], None] = print) -> tuple[list[Planned], list[Planned]]:
    """Write the wheels dataset folder; returns (bundled, left out), each with its reason.

    ``dataset_id`` (owner/slug; default ``$KAGGLE_USERNAME/cellseg-wheels``) goes into
    ``dataset-metadata.json``. ``packages``: extra packages to bundle beyond what cellseg
    requires (e.g. a model family's library). ``resolver``: :func:`resolve` (tests pass a fake).
    Raises PipError when a downloaded wheel does not fit the image's Python/platform.
    """
    from cellseg.io import write_json
    from cellseg.kaggle.kernel import DEFAULT_WHEELS_SLUG, default_owner
    from cellseg.kaggle.names import check_dataset_ref, check_dataset_title

    img = image or load_image()
    out = Path(out).resolve()
    dataset_id = check_dataset_ref(dataset_id or f"{default_owner()}/{DEFAULT_WHEELS_SLUG}",
                                   "dataset id")
    check_dataset_title(dataset_title(dataset_id))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()  # a wheel left from another plan would be installed by the kernel too
    cellseg_whl = build_cellseg_wheel(out, source)
    bundle, left_out = plan_bundle(wheel_requirements(cellseg_whl), img, extra=packages or (),
                                   pin=pin, resolver=resolver, log=log)
    files = download_wheels([f"{p.name}=={p.version}" for p in bundle], out, img)
    by_name = {normalize(f.name.split("-")[0]): f.name for f in files}
    bundle = [Planned(p.name, p.version, p.reason, by_name.get(p.name)) for p in bundle]
    wrong = [f.name for f in files if not fits_image(f.name, img)]
    if wrong:
        raise PipError(f"wheels {wrong} do not fit Kaggle's Python {img.python_short} / "
                       f"{img.platform}", fix=f"check the image description ({img.path})")
    from cellseg import __version__

    bundled = [Planned("cellseg", __version__, "the kit itself (pure Python)", cellseg_whl.name),
               *bundle]
    write_json(out / "bundle.json", {"image": f"{img.name} {img.as_of}",
                                     "python": img.python, "platform": img.platform,
                                     "bundled": [asdict(p) for p in bundled],
                                     "left_out": [asdict(p) for p in left_out]})
    write_json(out / "dataset-metadata.json", {
        "title": dataset_title(dataset_id),
        "id": dataset_id,
        "licenses": [{"name": "other"}],
    })
    return bundled, left_out


def dataset_title(dataset_id: str) -> str:
    """The title Kaggle slugifies back to the slug: ``me/cellseg-wheels`` -> ``cellseg wheels``."""
    return dataset_id.split("/")[1].replace("-", " ")
