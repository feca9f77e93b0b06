"""Local rehearsal: the stand-in Kaggle env (no cellseg, internet off), both /kaggle/input layouts,
and one end-to-end run (train tiny -> register -> wheels -> kernel -> rehearse; slow)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
import subprocess
import sys
from pathlib import Path

import pytest

from cellseg.kaggle.rehearse import clean_env, make_env, make_input, network_wrapper

ROOT = Path(__file__).resolve().parents[1]
COMPETITION = "sartorius-cell-instance-segmentation"

PROBE = r"""
import socket, sys
try:
    import cellseg
    print("cellseg importable")
except ImportError:
    print("no cellseg")
try:
    import segmentation_models_pytorch
    print("smp importable")
except ImportError:
    print("no smp")
import numpy
print("numpy", numpy.__version__)
for what, call in [("connect", lambda: socket.socket().connect(("10.255.255.1", 80))),
                   ("dns", lambda: socket.create_connection(("pypi.org", 443), timeout=3))]:
    try:
        call()
        print(what, "CONNECTED")
    except OSError as exc:
        print(what, "refused:", exc)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname(), timeout=3)
print("loopback ok")
"""


@pytest.fixture(scope="module")
def env_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_env(tmp_path_factory.mktemp("env") / "env", hide=["segmentation-models-pytorch"])


def test_env_has_base_packages_but_no_cellseg_and_no_internet(env_python: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(env_python), "-c", PROBE], env=clean_env(tmp_path / "home"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "no cellseg" in lines  # the editable install of this checkout is hidden
    assert "no smp" in lines  # hidden: the wheels dataset must bring it
    assert any(line.startswith("numpy ") for line in lines)  # the "Kaggle image" part is there
    assert any(line.startswith("connect refused:") and "internet is off" in line for line in lines)
    assert any(line.startswith("dns refused:") and "internet is off" in line for line in lines)
    assert "loopback ok" in lines


def test_clean_env_drops_pip_config_and_credentials(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    env = clean_env(tmp_path / "home", {"X": "1"})
    assert not any(k.startswith(("PIP_FIND", "KAGGLE_", "PYTHONPATH")) for k in env)
    assert env["PIP_CONFIG_FILE"] == os.devnull and env["HOME"] == str(tmp_path / "home")
    assert env["X"] == "1"


def test_network_namespace_blocks_raw_sockets(tmp_path: Path) -> None:
    prefix, how = network_wrapper()
    if not prefix:
        pytest.skip(f"unshare -n not permitted here ({how} only)")
    # -S: no site, so no sitecustomize; only the empty namespace stands between us and the net
    code = "import socket; socket.socket().connect(('10.255.255.1', 80))"
    out = subprocess.run([*prefix, sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "unreachable" in out.stderr.lower()


@pytest.mark.parametrize("layout", ["old", "new"])
def test_make_input_layouts(tmp_path: Path, layout: str) -> None:
    comp = tmp_path / "comp"
    (comp / "test").mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(b"w")
    weight = tmp_path / "w.pt"
    weight.write_bytes(b"x")
    inp = make_input(tmp_path / "root", layout, competition=COMPETITION, competition_dir=comp,
                     wheels_dataset="me/cs-wheels", wheels_dir=wheels,
                     weights_dataset="you/cs-weights", weight_files=[weight])
    if layout == "old":
        expected = [f"{COMPETITION}/test", "cs-wheels/cellseg_kit-0.2.0-py3-none-any.whl",
                    "cs-weights/w.pt"]
    else:
        expected = [f"competitions/{COMPETITION}/test",
                    "datasets/me/cs-wheels/cellseg_kit-0.2.0-py3-none-any.whl",
                    "datasets/you/cs-weights/w.pt"]
    for rel in expected:
        assert (inp / rel).exists(), rel
    with pytest.raises(ValueError, match="layout"):
        make_input(tmp_path / "r2", "newest", competition=COMPETITION, competition_dir=comp,
                   wheels_dataset="me/a-b", wheels_dir=wheels, weights_dataset="me/c-d",
                   weight_files=[])


def sharpen(src: Path, dst: Path) -> None:
    """Save ``src``'s UNet with its head sharpened (cell logit +4, border -4, weights x20), so
    that its watershed finds ~100 instances on the probe image instead of none: a briefly trained
    tiny model finds nothing, and a probe of nothing could not tell two environments apart. The
    encoder and decoder stay as trained."""
    from cellseg.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    for key in ("model", "ema"):
        sd = ckpt.get(key)
        if isinstance(sd, dict) and "segmentation_head.0.weight" in sd:
            sd["segmentation_head.0.weight"] = sd["segmentation_head.0.weight"] * 20.0
            bias = sd["segmentation_head.0.bias"].clone()
            bias[0], bias[1] = 4.0, -4.0
            sd["segmentation_head.0.bias"] = bias
    save_checkpoint(dst, **{k: v for k, v in ckpt.items() if k not in ("version", "format")})


@pytest.fixture(scope="module")
def shipped_kernel(tmp_path_factory: pytest.TempPathFactory, shared_sartorius: Path) -> Path:
    """A folder with kernel/ + wheels/ + weights/ (a tiny UNet trained HERE, on this machine's
    torch, head sharpened for the probe) and comp/test/: the 3 real test PNGs plus a truncated
    PNG and a file that is no PNG; comp_corrupt/test/ holds only the two broken files."""
    from cellseg.cli import main
    from cellseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("shipped")
    generate(root / "synth", n_images=6, seed=0, n_test=1, n_semi=0, n_livecell=0)
    run = root / "run"
    assert main(["train", "--config", "unet_tiny", "--data", str(root / "synth" / "competition"),
                 "--out", str(run), "--set", "train.max_steps=2", "--set", "train.epochs=1"]) == 0
    sharpen(run / "best.pt", run / "sharp.pt")
    manifest = root / "weights" / "manifest.yaml"
    assert main(["weights", "add", str(run / "sharp.pt"), "--name", "unet_tiny",
                 "--manifest", str(manifest)]) == 0
    assert main(["kaggle", "build-wheels", "--out", str(root / "wheels"), "--dataset-id",
                 "me/cellseg-wheels", "--source", str(ROOT)]) == 0
    assert main(["kaggle", "build-kernel", "--weights", "unet_tiny", "--manifest", str(manifest),
                 "--kernel-id", "me/cellseg-infer", "--config", "infer_default",
                 "--wheels-dir", str(root / "wheels"), "--out", str(root / "kernel")]) == 0
    test = root / "comp" / "test"
    test.mkdir(parents=True)
    for png in sorted((shared_sartorius / "test").glob("*.png")):
        (test / png.name).symlink_to(png)
    real = next(iter(sorted((shared_sartorius / "test").glob("*.png")))).read_bytes()
    (test / "truncated.png").write_bytes(real[:200])  # a download cut short: header, no pixels
    (test / "notapng.png").write_bytes(b"<html>404</html>")  # not even a PNG header
    corrupt = root / "comp_corrupt" / "test"
    corrupt.mkdir(parents=True)
    for name in ("truncated.png", "notapng.png"):
        (corrupt / name).write_bytes((test / name).read_bytes())
    return root


def _rehearse_cli(root: Path, image: str, *, data: str = "comp", layout: str = "both",
                  workdir: str | None = None, kernel: str = "kernel") -> subprocess.CompletedProcess:
    """The real CLI, every path RELATIVE to its working directory (what a user types)."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "rehearse", kernel,
                           "--data", data, "--layout", layout, "--workdir",
                           workdir or f"reh-{image}", "--image", image, "--timeout", "900"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=3000)


def _check_rehearsal(root: Path, image: str, out: subprocess.CompletedProcess,
                     workdir: str | None = None) -> list[str]:
    """Both layouts passed: exit 0 although two images are broken, every id in the CSV, the
    broken ones in failures.json and in a loud summary. Returns the two kernel logs."""
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    ids = sorted(p.stem for p in (root / "comp" / "test").iterdir())
    assert len(ids) == 5
    logs = []
    for layout in ("old", "new"):
        assert f"PASS layout={layout} image={image}" in out.stdout
        layout_root = root / (workdir or f"reh-{image}") / layout
        log = (layout_root / "kernel.log").read_text()
        present = {row.split(",")[0] for row in
                   (layout_root / "working" / "submission.csv").read_text().splitlines()[1:]}
        assert sorted(present) == ids, log[-3000:]
        failures = json.loads((layout_root / "working" / "failures.json").read_text())
        assert sorted(f["id"] for f in failures["failed"]) == ["notapng", "truncated"], log[-3000:]
        assert "FAILED IMAGES: 2 of 5 test image(s)" in log
        assert "Successfully installed cellseg-" in log  # from the wheel, not the checkout
        assert "wheels verified: " in log and "cellseg 0." in log  # sha256 + installed version
        assert "probe passed" in log, log[-3000:]  # the build machine's instances, reproduced
        assert "OK: " in log  # cellseg validate passed inside the kernel
        record = json.loads((layout_root / "working" / "kaggle_image.json").read_text())
        assert record["python"] == log.split()[1] and "numpy" in record["distributions"]
        assert "cellseg" not in record["distributions"]  # recorded before the install
        logs.append(log)
    return logs


def test_rehearsal_local_image_relative_paths_and_broken_images(shipped_kernel: Path) -> None:
    """`--image local` (this interpreter's packages, what `make demo` runs): a few CPU minutes."""
    out = _rehearse_cli(shipped_kernel, "local")
    for log in _check_rehearsal(shipped_kernel, "local", out):
        assert log.startswith(f"python {sys.version.split()[0]} ")


def test_rehearsal_where_every_image_is_corrupt_exits_non_zero(shipped_kernel: Path) -> None:
    """A complete CSV of placeholders would be scored near 0: the kernel stops with exit 8."""
    out = _rehearse_cli(shipped_kernel, "local", data="comp_corrupt", layout="new",
                        workdir="reh-corrupt")
    assert out.returncode == 1 and "FAIL layout=new" in out.stdout and "exit=8" in out.stdout
    working = shipped_kernel / "reh-corrupt" / "new" / "working"
    report = json.loads((working / "failures.json").read_text())
    assert "every test image failed (2)" in report["systemic"]
    assert sorted(f["id"] for f in report["failed"]) == ["notapng", "truncated"]


def test_rehearsal_of_an_altered_model_fails_the_probe(shipped_kernel: Path) -> None:
    """One weight tensor zeroed after the build (its sha256 re-embedded, so only the probe can
    notice): the kernel stops before the test set with exit 7 and both results in failures.json."""
    import shutil

    import torch

    from cellseg.checkpoint import load_checkpoint, save_checkpoint, sha256_file
    from cellseg.kaggle.kernel_template import embedded_of, render

    alt = shipped_kernel / "altered"
    shutil.copytree(shipped_kernel / "kernel", alt / "kernel")
    ckpt = load_checkpoint(shipped_kernel / "weights" / "unet_tiny.pt")
    zeroed = []
    for key in ("model", "ema"):
        sd = ckpt.get(key)
        convs = [n for n, t in (sd if isinstance(sd, dict) else {}).items()
                 if n.startswith("encoder") and getattr(t, "ndim", 0) == 4]
        for name in convs:  # state-dict order: the encoder's first convolution
            sd[name] = torch.zeros_like(sd[name])
            zeroed.append(f"{key}:{name}")
            break
    assert zeroed, sorted(ckpt["model"])[:5]
    (alt / "weights").mkdir()
    save_checkpoint(alt / "weights" / "unet_tiny.pt",
                    **{k: v for k, v in ckpt.items() if k not in ("version", "format")})
    code = alt / "kernel" / "cellseg_infer.py"
    emb = embedded_of(code.read_text())
    emb["weights"][0]["sha256"] = sha256_file(alt / "weights" / "unet_tiny.pt")
    code.write_text(render(emb))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    out = subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "rehearse", "altered/kernel",
                          "--data", "comp", "--layout", "new", "--workdir", "reh-altered",
                          "--image", "local", "--weights-dir", "altered/weights",
                          "--wheels-dir", "wheels"],
                         cwd=shipped_kernel, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 1 and "exit=7" in out.stdout, out.stdout[-3000:]
    layout_root = shipped_kernel / "reh-altered" / "new"
    log = (layout_root / "kernel.log").read_text()
    assert "probe FAILED" in log and "does not give on this device what it gave at build time" in log
    assert log.count(" -m cellseg predict ") == 1  # the probe's; the test set never ran
    report = json.loads((layout_root / "working" / "failures.json").read_text())
    assert report["probe"]["expected"]["count"] == emb["probe"]["count"] > 0
    assert report["probe"]["actual"]["count"] != emb["probe"]["count"]
    assert not (layout_root / "working" / "submission.csv").exists()


@pytest.mark.skipif(os.environ.get("CELLSEG_KAGGLE_IMAGE") != "1",
                    reason="Kaggle-image rehearsal: opt in with CELLSEG_KAGGLE_IMAGE=1 "
                           "(`make test-kaggle`, run by .ci/run); its env, ~5 GB, is built once")
def test_rehearsal_on_kaggles_image(shipped_kernel: Path) -> None:
    """The kernel on the newest description of Kaggle's image (Python 3.13, torch 2.11), with a
    checkpoint trained here on a newer torch, internet off, both layouts, two broken test images;
    the probe computed here on torch 2.14 must be reproduced there. Then the image record the run
    wrote is imported and the kernel rehearsed again on that description."""
    from cellseg.kaggle.image import cache_dir, find_image

    spec = os.environ.get("CELLSEG_REHEARSE_IMAGE", "kaggle")  # an older image: kaggle-<date>
    img = find_image(spec)
    out = _rehearse_cli(shipped_kernel, spec)
    for log in _check_rehearsal(shipped_kernel, img.label, out, workdir="reh-kaggle"):
        head = log.splitlines()
        assert head[0].startswith(f"python {img.python_short}.")  # the image's Python, first
        assert head[1].startswith("device cpu")
        versions = {line.split()[0]: line.split(None, 1)[1] for line in head[2:8]}
        assert versions["torch"].split("+")[0] == img.packages["torch"]
        assert versions["torchvision"].split("+")[0] == img.packages["torchvision"]
        assert versions["numpy"] == img.packages["numpy"]
        # not in the image: it comes from the wheels dataset
        assert versions["segmentation-models-pytorch"].startswith("not installed (bundled wheel")
    bundle = json.loads((shipped_kernel / "wheels" / "bundle.json").read_text())
    assert bundle["python"] == img.python
    for entry in bundle["bundled"]:  # every binary wheel carries the image's Python tag
        tag = entry["file"][:-4].split("-")[-3]
        assert tag in ("py3", "py2.py3", img.python_tag) or "abi3" in entry["file"], entry
    # the run's own record -> a description -> a rehearsal on it (same pins: same cached env)
    from cellseg.cli import main

    desc = shipped_kernel / "imported.json"
    assert main(["kaggle", "image", "--import", str(shipped_kernel / "reh-kaggle" / "new" /
                                                    "working"), "--out", str(desc)]) == 0
    imported = find_image(str(desc))
    assert imported.python_short == img.python_short
    assert imported.as_of == datetime.now(timezone.utc).date().isoformat()
    if spec != "kaggle":
        return  # described against the newest image's package list: another env, not built here
    assert imported.packages == img.packages and cache_dir(imported) == cache_dir(img)
    again = _rehearse_cli(shipped_kernel, str(desc), layout="new", workdir="reh-imported")
    assert again.returncode == 0 and "PASS layout=new" in again.stdout, again.stdout[-3000:]


def test_rehearsal_reports_a_failing_kernel(tmp_path: Path) -> None:
    """The harness must not pass a kernel that stops: weights changed after the kernel was built."""
    import torch

    from cellseg.checkpoint import save_checkpoint
    from cellseg.kaggle.kernel import build_kernel
    from cellseg.kaggle.rehearse import rehearse
    from cellseg.weights import add_weights

    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, model={"w": torch.ones(2)}, family="unet", model_args={}, config={})
    manifest = tmp_path / "weights" / "manifest.yaml"
    add_weights(ckpt, "w0", manifest=manifest)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(b"never installed")
    build_kernel(["w0"], tmp_path / "kernel", manifest=manifest, kernel_id="me/cellseg-infer",
                 wheels_dir=wheels, probe=False)
    (manifest.parent / "w0.pt").write_bytes(b"retrained since")
    data = tmp_path / "comp"
    (data / "test").mkdir(parents=True)
    (data / "test" / "abc.png").write_bytes(b"png")
    [r] = rehearse(tmp_path / "kernel", data=data, layouts=["new"], workdir=tmp_path / "reh",
                   timeout=120, isolate=False, image="local")
    assert not r.ok and r.returncode == 3
    assert r.missing_ids == ["abc"] and r.n_rows == 0
    assert "expected sha256" in r.log.read_text() and "PASS" not in r.summary()
