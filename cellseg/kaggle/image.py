"""Kaggle's notebook image, written down: Python, platform tag and the packages the kernel touches.

    cellseg kaggle image                      # print the newest description (the default)
    cellseg kaggle image --image kaggle-2026-08-12   # an older one, by its date
    cellseg kaggle image --import KERNEL_OUTPUT_DIR  # a new description from kaggle_image.json
    from cellseg.kaggle.image import find_image, ensure_image_env
    img = find_image("kaggle")                # newest cellseg/kaggle/images/*.json
    python = ensure_image_env(img)            # a cached env with its Python and pins

The description is a dated JSON file shipped in the package (``cellseg/kaggle/images/``). Refresh
it when Kaggle moves (docs/kaggle.md): every kernel run writes ``kaggle_image.json`` (what it
really ran on), and ``cellseg kaggle image --import`` turns that into a new dated file; the newest
``as_of`` wins, older ones stay selectable by date (``--image kaggle-<as_of>``).
``build-wheels`` downloads for its Python and platform tags, and ``rehearse --image kaggle`` runs
the kernel in an environment built from its pins (CPU: the GPU build of torch runs on a machine
without one).

The environment is built once per machine and description, under
``$CELLSEG_CACHE`` (default ``~/.cache/cellseg``) as ``kaggle-image-<hash of the description>``;
the first build downloads a few GB (torch's CUDA wheels), later runs reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

# the builder's own inputs: bump when the way the env is built changes, so caches are rebuilt
_BUILDER_VERSION = "1"
_COMPLETE = ".complete.json"


@dataclass(frozen=True)
class ImageDescription:
    """One dated description of Kaggle's image (see ``cellseg/kaggle/images/*.json``)."""

    name: str
    as_of: str
    python: str  # full version, e.g. "3.12.13"
    platform: str  # newest manylinux tag the image's glibc accepts, e.g. "manylinux_2_35_x86_64"
    packages: dict[str, str]  # distribution name -> version installed in the image
    absent: tuple[str, ...] = ()  # packages the kit uses that the image does NOT have
    os: str = ""
    accelerator: str = ""
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # per package (or "python"): "confirmed ..." or whose approximation it is
    confidence: dict[str, str] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """``"kaggle-2026-10-06"``: what ``--image`` takes to select this description."""
        return f"kaggle-{self.as_of}"

    @property
    def python_short(self) -> str:
        """``"3.12"`` (what ``pip download --python-version`` takes)."""
        return ".".join(self.python.split(".")[:2])

    @property
    def python_tag(self) -> str:
        """``"cp312"``: the tag every compiled wheel for this image must carry."""
        return "cp" + self.python_short.replace(".", "")

    def platforms(self) -> list[str]:
        """Every platform tag the image accepts, newest first.

        pip does NOT expand an explicit ``--platform`` to older manylinux tags, so they are listed:
        manylinux_2_35 ... manylinux_2_17, manylinux2014 (= 2_17) and linux (sdists never: only
        binaries are downloaded).
        """
        parts = self.platform.split("_")  # manylinux_2_35_x86_64
        try:
            major, minor, arch = int(parts[1]), int(parts[2]), "_".join(parts[3:])
        except (IndexError, ValueError):
            return [self.platform]
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
        return tags + [f"manylinux2014_{arch}", f"linux_{arch}"]

    def has(self, dist: str) -> bool:
        """True when the image ships ``dist`` (names compared PEP 503-normalised)."""
        return normalize(dist) in {normalize(n) for n in self.packages}

    def key(self) -> str:
        """Short hash of what the rehearsal env is built from (cache folder name)."""
        blob = json.dumps({"python": self.python_short, "packages": self.packages,
                           "builder": _BUILDER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def normalize(name: str) -> str:
    """PEP 503 name: ``Segmentation_Models.PyTorch`` -> ``segmentation-models-pytorch``."""
    out = name.strip().lower()
    for ch in "_.":
        out = out.replace(ch, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def image_files() -> list[Path]:
    """The shipped descriptions, oldest first (file names carry the date)."""
    folder = resources.files("cellseg.kaggle") / "images"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def load_image(path: str | os.PathLike | None = None) -> ImageDescription:
    """The description in ``path``, or the newest shipped one (largest ``as_of``).

    Raises ValueError naming the file and the missing key when a description is incomplete.
    """
    if path is None:
        files = image_files()
        if not files:
            raise FileNotFoundError("no Kaggle image description in cellseg/kaggle/images/")
        descs = [load_image(p) for p in files]
        return max(descs, key=lambda d: d.as_of)
    path = Path(path)
    data = json.loads(path.read_text())
    for key in ("name", "as_of", "python", "platform", "packages"):
        if key not in data:
            from cellseg.errors import InputError

            raise InputError(f"Kaggle image description {path} lacks {key!r}",
                             fix="see cellseg/kaggle/images/ for the format")
    return ImageDescription(
        name=data["name"], as_of=data["as_of"], python=data["python"], platform=data["platform"],
        packages={normalize(k): str(v) for k, v in data["packages"].items()},
        absent=tuple(normalize(a) for a in data.get("absent", ())), os=data.get("os", ""),
        accelerator=data.get("accelerator", ""), sources=tuple(data.get("sources", ())),
        notes=tuple(data.get("notes", ())),
        confidence={normalize(k) if k != "python" else k: str(v)
                    for k, v in data.get("confidence", {}).items()}, path=path)


def find_image(spec: str | os.PathLike | None = "kaggle") -> ImageDescription:
    """The description ``spec`` names: ``"kaggle"`` (or None) the newest shipped one,
    ``"kaggle-<as_of>"`` (e.g. ``kaggle-2026-08-12``) a shipped one by date, else a JSON path.

    Raises ConfigError listing the shipped labels when a label matches none.
    """
    from cellseg.errors import ConfigError

    if spec is None or str(spec) == "kaggle":
        return load_image()
    text = str(spec)
    if text.startswith("kaggle-") and not text.endswith(".json"):
        shipped = [load_image(p) for p in image_files()]
        for img in shipped:
            if img.label == text or f"{img.name}-{img.as_of}" == text:
                return img
        raise ConfigError(f"no shipped Kaggle image description {text!r}", where="--image",
                          fix="use one of: kaggle (the newest), "
                              + ", ".join(i.label for i in sorted(shipped, key=lambda i: i.as_of))
                              + ", or a description JSON path")
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{text!r} is neither an image label nor a file", where="--image",
                          fix="use kaggle, kaggle-<date> (see `cellseg kaggle image --list`) or "
                              "a description JSON written by `cellseg kaggle image --import`")
    return load_image(path)


def format_image(img: ImageDescription) -> str:
    """Human-readable description (what ``cellseg kaggle image`` prints)."""
    lines = [f"Kaggle image '{img.name}' as of {img.as_of} ({img.path}); select with "
             f"--image {img.label}",
             f"  python      {img.python} ({img.python_tag})"
             + (f"  {img.confidence['python']}" if "python" in img.confidence else ""),
             f"  platform    {img.platform} (also older manylinux tags)",
             f"  os          {img.os}", f"  accelerator {img.accelerator}", "  packages:"]
    lines += [f"    {name:<26} {ver:<12} {img.confidence.get(name, '')}".rstrip()
              for name, ver in sorted(img.packages.items())]
    lines.append("  not in the image: " + (", ".join(img.absent) or "-"))
    lines.append("  sources:")
    lines += [f"    - {s}" for s in img.sources]
    if img.notes:
        lines.append("  notes:")
        lines += [f"    - {n}" for n in img.notes]
    lines.append(f"  rehearsal env cache: {cache_dir(img)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the rehearsal environment


def cache_root() -> Path:
    """``$CELLSEG_CACHE`` or ``~/.cache/cellseg``."""
    return Path(os.environ.get("CELLSEG_CACHE") or Path.home() / ".cache" / "cellseg")


def cache_dir(img: ImageDescription) -> Path:
    """Where the env for ``img`` lives (built or not)."""
    return cache_root() / f"kaggle-image-{img.key()}"


def find_python(version: str) -> Path:
    """An interpreter of ``version`` ("3.12"): ``$CELLSEG_KAGGLE_PYTHON``, ``pythonX.Y`` on PATH,
    then pyenv's ``~/.pyenv/versions/X.Y.*``. FileNotFoundError with the fix when none exists."""
    candidates: list[str] = []
    if os.environ.get("CELLSEG_KAGGLE_PYTHON"):
        candidates.append(os.environ["CELLSEG_KAGGLE_PYTHON"])
    if shutil.which(f"python{version}"):
        candidates.append(shutil.which(f"python{version}") or "")
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")),
                         reverse=True)
    for c in candidates:
        try:
            out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return Path(c)
    raise FileNotFoundError(
        f"no Python {version} interpreter (Kaggle's) found on PATH or under {pyenv}/versions; "
        f"install one (`pyenv install {version}`) or set CELLSEG_KAGGLE_PYTHON=/path/to/python{version}")


def requirements(img: ImageDescription) -> list[str]:
    """``name==version`` for every package of the image (what the env installs)."""
    return [f"{name}=={ver}" for name, ver in sorted(img.packages.items())]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: parallel test workers and CI steps build the env once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def purelib(python: str | os.PathLike) -> Path:
    """The site-packages folder of ``python``."""
    out = subprocess.run([str(python), "-I", "-c",
                          "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def ensure_image_env(img: ImageDescription | None = None, *, log: Callable[[str], None] = print,
                     python: str | os.PathLike | None = None) -> Path:
    """The python of a virtual env holding ``img``'s Python and package pins; built when absent.

    Built from PyPI (binary wheels only) into :func:`cache_dir` under a lock, and marked complete
    only when every pin installed, so an interrupted build is redone, never half-used.
    Raises UserError (pip's last output on stderr) when the install fails.
    """
    img = img or load_image()
    env = cache_dir(img)
    done = env / _COMPLETE
    with _locked(env.with_name(env.name + ".lock")):
        if done.is_file():
            return env_python(env)
        base = Path(python) if python else find_python(img.python_short)
        log(f"building the Kaggle-image env ({img.name} {img.as_of}: Python {img.python_short}, "
            f"{len(img.packages)} pinned packages) in {env}; once per machine, a few GB")
        if env.exists():
            shutil.rmtree(env)
        t0 = time.perf_counter()
        subprocess.run([str(base), "-m", "venv", str(env)], check=True, capture_output=True)
        py = env_python(env)
        cmd = [str(py), "-m", "pip", "install", "--no-input", "--only-binary", ":all:",
               "--progress-bar", "off", *requirements(img)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            import sys

            from cellseg.errors import UserError

            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
            raise UserError(f"building the Kaggle-image env failed: `{' '.join(cmd)}` exited "
                            f"{proc.returncode} (pip's output above)",
                            fix="check that the package index has every pinned version for "
                                f"Python {img.python_short}")
        freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True,
                                check=True).stdout.split()
        seconds = time.perf_counter() - t0
        done.write_text(json.dumps({"image": img.name, "as_of": img.as_of, "python": _version_of(py),
                                    "seconds": round(seconds, 1), "freeze": freeze}, indent=1))
        log(f"Kaggle-image env built in {seconds:.0f} s: {env}")
    return py


def _version_of(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def env_info(img: ImageDescription | None = None) -> dict | None:
    """The completion record of the cached env (python, build seconds, pip freeze), or None."""
    path = cache_dir(img or load_image()) / _COMPLETE
    return json.loads(path.read_text()) if path.is_file() else None
