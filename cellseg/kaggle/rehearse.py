"""Run a generated kernel the way Kaggle would, internet off, before spending a submission on it.

    cellseg kaggle build-wheels --out kernels/build/wheels --dataset-id me/cellseg-wheels
    cellseg kaggle build-kernel --weights unet_tiny --kernel-id me/cellseg-infer \\
        --wheels-dir kernels/build/wheels --out kernels/build/cellseg-infer
    cellseg kaggle rehearse kernels/build/cellseg-infer --data ../shared/data/sartorius  # --image kaggle

What Kaggle provides, and the stand-in used here:
- ``/kaggle/input``: a temporary folder (``CELLSEG_KAGGLE_INPUT``) holding the competition data, the
  wheels dataset and the weights dataset, as symlinks, in the old layout (``input/<slug>/``) or the
  new one (``input/competitions/<slug>/``, ``input/datasets/<owner>/<slug>/``).
- ``/kaggle/working``: an empty folder (``CELLSEG_KAGGLE_WORKING``), also the working directory.
- Kaggle's Python image (torch etc., no cellseg): a fresh ``venv --without-pip`` whose
  site-packages gets a ``.pth`` adding an *overlay* folder of symlinks to a base site-packages
  MINUS cellseg (including an editable install's finder or a .pth pointing at a checkout) and
  minus every package the wheels dataset supplies (e.g. segmentation-models-pytorch). The base is,
  with ``image="kaggle"`` (the default), a cached env with the Python and package pins of Kaggle's
  image (:mod:`cellseg.kaggle.image`, built once per machine), or with ``image="local"`` this
  interpreter's site-packages. ``import cellseg`` is checked to fail in it before the kernel
  runs, so cellseg can only come from the wheels.
- Internet off: a ``sitecustomize.py`` in the env refuses every non-loopback connect and DNS
  lookup, and when ``unshare -n`` works (root, or ``unshare -rn`` with user namespaces) the kernel
  also runs in an empty network namespace. pip configuration (``/etc/pip.conf``, ``PIP_*``) is
  dropped from the environment, as on Kaggle.

Passes when the kernel exits 0 and ``submission.csv`` covers every test image.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

LAYOUTS = ("old", "new")

SITECUSTOMIZE = '''\
"""cellseg rehearsal: Kaggle kernels run with the internet off; refuse non-loopback connections."""
import errno as _errno
import socket as _socket

_LOCAL = ("127.", "::1", "0.0.0.0", "localhost", "::ffff:127.")


def _is_local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host == "" or host.startswith(_LOCAL)


def _refuse(what):
    return OSError(_errno.ENETUNREACH, "cellseg rehearsal: internet is off (as on Kaggle): " + what)


_connect, _connect_ex, _getaddrinfo = (_socket.socket.connect, _socket.socket.connect_ex,
                                       _socket.getaddrinfo)


def _check(sock, address):
    if sock.family in (_socket.AF_INET, _socket.AF_INET6) and not _is_local(address[0]):
        raise _refuse("connect to %r refused" % (address,))


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    try:
        _check(self, address)
    except OSError as exc:
        return exc.errno
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local(host):
        raise _socket.gaierror(_socket.EAI_NONAME, "cellseg rehearsal: internet is off: " + str(host))
    return _getaddrinfo(host, *args, **kwargs)


_socket.socket.connect = connect
_socket.socket.connect_ex = connect_ex
_socket.getaddrinfo = getaddrinfo
'''


@dataclass
class RehearsalResult:
    """One kernel run in one mount layout."""

    layout: str
    returncode: int
    seconds: float
    root: Path
    submission: Path
    log: Path
    test_ids: list[str] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    n_rows: int = 0
    isolation: str = ""
    image: str = ""  # "local" or the image description's label (kaggle-<as_of>)
    python: str = ""  # from the kernel's log header
    ok: bool = False  # exit 0, submission.csv written, every test image in it (set when run)

    def summary(self) -> str:
        state = "PASS" if self.ok else "FAIL"
        return (f"{state} layout={self.layout} image={self.image} python={self.python or '?'} "
                f"exit={self.returncode} {self.seconds:.1f} s, "
                f"{self.n_rows} rows for {len(self.test_ids)} test images"
                + (f", missing {self.missing_ids}" if self.missing_ids else "")
                + f", network: {self.isolation}"
                + (f"; log {self.log}" if self.log.exists() else ""))


# ---------------------------------------------------------------- environment


def _top_level_entries(dist_name: str, site_dirs: Sequence[str | os.PathLike]) -> set[str]:
    """Top-level site-packages entries (package dirs, modules, dist-info) of ``dist_name`` as
    installed in ``site_dirs`` (read from its RECORD, so it works for another interpreter's env)."""
    from cellseg.kaggle.image import normalize

    want = normalize(dist_name)
    names: set[str] = set()
    for sp in site_dirs:
        for info in Path(sp).glob("*.dist-info"):
            if normalize(info.name[:-len(".dist-info")].rsplit("-", 1)[0]) != want:
                continue
            names.add(info.name)
            record = info / "RECORD"
            if record.is_file():
                for line in record.read_text().splitlines():
                    top = Path(line.split(",")[0]).parts[:1]
                    if top and not top[0].startswith(".."):
                        names.add(top[0])
    return {n for n in names if n not in ("__pycache__", "bin")}


def excluded_entries(dists: Sequence[str], site_dirs: Sequence[str | os.PathLike]) -> set[str]:
    """Site-packages names hidden from the rehearsal env: the given dists' files."""
    out: set[str] = set()
    for d in dists:
        out |= _top_level_entries(d, site_dirs)
    return out


def _is_cellseg(name: str) -> bool:
    low = name.lower()
    return (low == "cellseg" or low.startswith(("cellseg-", "cellseg.", "cellseg_kit", "__editable__.cellseg",
                                               "__editable___cellseg")))


def _filtered_pth(pth: Path, site_dirs: Sequence[str | os.PathLike]) -> str | None:
    """The text of a ``.pth`` file minus the path lines that lead to a cellseg source tree (a
    path-based editable install or a development checkout) or to one of ``site_dirs`` (already
    overlaid, minus the hidden packages), or None when it has no such line."""
    try:
        lines = pth.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    sites = {os.path.realpath(d) for d in site_dirs}

    def keep(line: str) -> bool:
        if line.startswith(("import ", "import\t", "#")) or not line.strip():
            return True
        path = Path(line.strip())
        return not ((path / "cellseg" / "__init__.py").is_file() or os.path.realpath(path) in sites)

    kept = [line for line in lines if keep(line)]
    return None if len(kept) == len(lines) else "\n".join(kept) + "\n"


def local_site_dirs() -> list[str]:
    """This interpreter's site-packages, plus any chained in by ``.pth`` path lines (a venv
    layered on another one), in ``sys.path`` order."""
    dirs = list(site.getsitepackages())
    dirs += [p for p in sys.path if p.rstrip("/").endswith("site-packages") and p not in dirs]
    return [d for d in dirs if Path(d).is_dir()]


def make_env(env_dir: str | os.PathLike, *, hide: Sequence[str] = (),
             site_dirs: Sequence[str | os.PathLike] | None = None,
             base_python: str | os.PathLike | None = None) -> Path:
    """Create the rehearsal virtual environment; returns its python.

    ``base_python``: the interpreter of the env (default: this one); ``site_dirs``: the
    site-packages whose packages the env sees (default: this interpreter's), e.g. the cached
    Kaggle-image env's. ``hide``: distributions to leave out (cellseg is always left out).
    Raises RuntimeError when cellseg is still importable in the new env.
    """
    env_dir = Path(env_dir).resolve()  # the probe below runs with cwd=env_dir
    site_dirs = list(site_dirs) if site_dirs is not None else local_site_dirs()
    subprocess.run([str(base_python or sys.executable), "-m", "venv", "--without-pip", "--clear",
                    str(env_dir)], check=True, capture_output=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    overlay = env_dir / "base-site-packages"
    overlay.mkdir()
    hidden = excluded_entries(hide, site_dirs)
    for sp in site_dirs:
        for entry in sorted(Path(sp).iterdir()) if Path(sp).is_dir() else []:
            if _is_cellseg(entry.name) or entry.name in hidden or (overlay / entry.name).exists():
                continue
            if entry.suffix == ".pth" and entry.is_file():
                kept = _filtered_pth(entry, site_dirs)
                if kept is not None:  # it put a cellseg source tree on sys.path: filtered copy
                    (overlay / entry.name).write_text(kept)
                    continue
            (overlay / entry.name).symlink_to(entry)
    # ``import`` lines of a .pth run at startup: addsitedir also processes the overlay's own .pth files
    Path(purelib, "_cellseg_rehearsal_base.pth").write_text(
        f"import site; site.addsitedir({str(overlay)!r})\n")
    Path(purelib, "sitecustomize.py").write_text(SITECUSTOMIZE)
    probe = subprocess.run([str(python), "-c", "import cellseg"], capture_output=True, text=True,
                           env=clean_env(env_dir / "home"), cwd=env_dir)
    if probe.returncode == 0:
        raise RuntimeError(f"cellseg is importable in the fresh rehearsal env {env_dir}; the "
                           "rehearsal would not prove the wheels install it")
    return python


def clean_env(home: str | os.PathLike, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: no PYTHONPATH, no PIP_* (no local index or find-links), no Kaggle
    credentials, a private HOME."""
    Path(home).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PIP_CONFIG_FILE": os.devnull,  # pip loads no config file at all
        "PYTHONNOUSERSITE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    for key in ("TMPDIR", "CUDA_VISIBLE_DEVICES"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def network_wrapper() -> tuple[list[str], str]:
    """The command prefix that gives the kernel an empty network namespace, if this machine allows."""
    exe = shutil.which("unshare")
    if exe:
        for flags in (["-n"], ["-rn"]):
            try:
                ok = subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                return [exe, *flags, "--"], f"unshare {' '.join(flags)} + sitecustomize"
    return [], "sitecustomize socket block"


# ---------------------------------------------------------------- /kaggle/input stand-in


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(target).resolve())


def make_input(root: str | os.PathLike, layout: str, *, competition: str, competition_dir: Path,
               wheels_dataset: str, wheels_dir: Path, weights_dataset: str,
               weight_files: Sequence[Path]) -> Path:
    """Build ``root/input`` in Kaggle's ``old`` or ``new`` mount layout; returns it."""
    if layout not in LAYOUTS:
        from cellseg.errors import ConfigError

        raise ConfigError(f"layout {layout!r} is unknown", where="--layout",
                          fix=f"use one of {', '.join(LAYOUTS)}")
    inp = Path(root) / "input"
    inp.mkdir(parents=True, exist_ok=True)

    def dataset_dir(ref: str) -> Path:
        owner, slug = ref.split("/")
        return inp / slug if layout == "old" else inp / "datasets" / owner / slug

    _link(competition_dir, inp / competition if layout == "old" else inp / "competitions" / competition)
    wd = dataset_dir(wheels_dataset)
    wd.mkdir(parents=True)
    for whl in sorted(Path(wheels_dir).glob("*.whl")):
        _link(whl, wd / whl.name)
    if weights_dataset == wheels_dataset:
        wt = wd
    else:
        wt = dataset_dir(weights_dataset)
        wt.mkdir(parents=True)
    for f in weight_files:
        _link(f, wt / Path(f).name)
    return inp


# ---------------------------------------------------------------- run


def list_test_ids(competition_dir: Path) -> list[str]:
    """Ids (file stems) of competition_dir/test/*.png, as the kernel will see them."""
    return sorted(p.stem for p in (Path(competition_dir) / "test").glob("*.png"))


def submission_ids(path: Path) -> tuple[set[str], int]:
    """(image ids present, number of rows) of a submission.csv."""
    ids, rows = set(), 0
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            ids.add(row.get("id", ""))
            rows += 1
    return ids, rows


def run_kernel(python: Path, code_file: Path, input_dir: Path, working: Path, *,
               env_home: Path, prefix: Sequence[str] = (), timeout: float = 1800.0,
               args: Sequence[str] = ()) -> tuple[int, float, Path]:
    """Run the code file like Kaggle (cwd = working); returns (exit code, seconds, log path)."""
    working.mkdir(parents=True, exist_ok=True)
    log = working.parent / "kernel.log"
    env = clean_env(env_home, {"CELLSEG_KAGGLE_INPUT": str(input_dir),
                               "CELLSEG_KAGGLE_WORKING": str(working)})
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run([*prefix, str(python), str(code_file), *args], cwd=working, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\nREHEARSAL: killed after {timeout:.0f} s\n")
            rc = 124
    return rc, time.perf_counter() - start, log


IMAGES = ("kaggle", "kaggle-<date>", "a description JSON path", "local")


def rehearse(kernel_dir: str | os.PathLike, *, data: str | os.PathLike | None = None,
             layouts: Sequence[str] = LAYOUTS, wheels_dir: str | os.PathLike | None = None,
             weights_dir: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None,
             timeout: float = 1800.0, isolate: bool = True, image: str = "kaggle",
             log: Callable[[str], None] = print) -> list[RehearsalResult]:
    """Rehearse ``kernel_dir`` (from ``build-kernel``) once per layout.

    ``image``: "kaggle" runs the kernel on the Python and package pins of the newest description
    of Kaggle's image (``cellseg.kaggle.image``; the env is built once per machine and cached),
    ``kaggle-<as_of>`` on an older shipped one, a path on a description JSON (e.g. one written by
    ``cellseg kaggle image --import``), "local" on this interpreter's packages (fast, but not
    Kaggle's versions).
    ``data``: competition folder with ``test/*.png`` (default: a 3-test-image synthetic set).
    ``wheels_dir`` / ``weights_dir`` default to what ``build-info.json`` recorded.
    ``workdir``: keep everything there (default: a temporary folder, removed afterwards unless a
    run failed, so its log can be read). Relative paths are taken from the current directory.
    """
    from cellseg.kaggle.image import ensure_image_env, find_image, purelib
    from cellseg.kaggle.kernel import BUILD_INFO
    from cellseg.kaggle.kernel_template import embedded_of

    img = None if image == "local" else find_image(image)  # a wrong label fails before any work

    # every path is made absolute now: the kernel and its env run with other working directories
    kernel_dir = Path(kernel_dir).resolve()
    meta_path = kernel_dir / "kernel-metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; build the kernel first with "
                                "`cellseg kaggle build-kernel ... --out KERNEL_DIR`")
    meta = json.loads(meta_path.read_text())
    code_file = kernel_dir / meta["code_file"]
    embedded = embedded_of(code_file.read_text())
    info_path = kernel_dir / BUILD_INFO
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    wheels_dir = wheels_dir or info.get("wheels_dir")
    wheels_dir = Path(wheels_dir).resolve() if wheels_dir else None
    if not wheels_dir or not any(wheels_dir.glob("cellseg_kit-*.whl")):
        raise FileNotFoundError(f"no cellseg wheel in {wheels_dir or '(no --wheels-dir)'}: run "
                                "`cellseg kaggle build-wheels --out DIR` and pass --wheels-dir DIR")
    weights_dir = Path(weights_dir or info.get("weights_dir") or "weights").resolve()
    weight_files = [weights_dir / w["file"] for w in embedded["weights"]]
    missing = [str(f) for f in weight_files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"weight files {missing} not found; pass --weights-dir")

    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="cellseg-rehearsal-") if own_tmp else workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if data is None:
        from cellseg.data.synthetic import generate

        generate(work / "synthetic", n_images=2, seed=0, n_test=3, n_semi=0, n_livecell=0)
        data = work / "synthetic" / "competition"
    data = Path(data).resolve()
    ids = list_test_ids(data)
    if not ids:
        raise FileNotFoundError(f"{data}/test has no .png images; pass --data COMPETITION_DIR")

    if img is not None:
        image = img.label
        base_python = ensure_image_env(img, log=log)
        site_dirs: list[str | os.PathLike] | None = [purelib(base_python)]
    else:
        base_python, site_dirs = Path(sys.executable), None
    # the env hides cellseg and every package the wheels dataset brings, so installing is exercised
    hide = sorted({w.name.split("-")[0] for w in wheels_dir.glob("*.whl")} - {"cellseg_kit"})
    prefix, isolation = network_wrapper() if isolate else ([], "sitecustomize socket block")
    results = []
    for layout in layouts:
        root = work / layout
        if root.exists():
            shutil.rmtree(root)
        # fresh per run, as every Kaggle session is
        python = make_env(root / "env", hide=hide, site_dirs=site_dirs, base_python=base_python)
        inp = make_input(root, layout, competition=embedded["competition"], competition_dir=data,
                         wheels_dataset=embedded["wheels_dataset"], wheels_dir=wheels_dir,
                         weights_dataset=embedded["weights_dataset"], weight_files=weight_files)
        working = root / "working"
        rc, seconds, log_path = run_kernel(python, code_file, inp, working, env_home=root / "home",
                                           prefix=prefix, timeout=timeout)
        sub = working / "submission.csv"
        present, rows = submission_ids(sub) if sub.is_file() else (set(), 0)
        missing_ids = sorted(set(ids) - present)
        results.append(RehearsalResult(layout=layout, returncode=rc, seconds=seconds, root=root,
                                       submission=sub, log=log_path, test_ids=ids,
                                       missing_ids=missing_ids, n_rows=rows, isolation=isolation,
                                       image=image, python=kernel_python(log_path),
                                       ok=rc == 0 and sub.is_file() and not missing_ids))
    if own_tmp and all(r.ok for r in results):
        shutil.rmtree(work, ignore_errors=True)
    return results


def kernel_python(log: Path) -> str:
    """The Python version the kernel reported in its log header ("" when absent)."""
    if not log.is_file():
        return ""
    for line in log.read_text(errors="replace").splitlines()[:20]:
        if line.startswith("python "):
            return line.split()[1]
    return ""
