"""Local rehearsal: the stand-in Kaggle env (no cellseg, internet off), both /kaggle/input layouts,
and one end-to-end run (train tiny -> register -> wheels -> kernel -> rehearse; slow)."""

from __future__ import annotations

import os
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
    (wheels / "cellseg-0.1.0-py3-none-any.whl").write_bytes(b"w")
    weight = tmp_path / "w.pt"
    weight.write_bytes(b"x")
    inp = make_input(tmp_path / "root", layout, competition=COMPETITION, competition_dir=comp,
                     wheels_dataset="me/cs-wheels", wheels_dir=wheels,
                     weights_dataset="you/cs-weights", weight_files=[weight])
    if layout == "old":
        expected = [f"{COMPETITION}/test", "cs-wheels/cellseg-0.1.0-py3-none-any.whl",
                    "cs-weights/w.pt"]
    else:
        expected = [f"competitions/{COMPETITION}/test",
                    "datasets/me/cs-wheels/cellseg-0.1.0-py3-none-any.whl",
                    "datasets/you/cs-weights/w.pt"]
    for rel in expected:
        assert (inp / rel).exists(), rel
    with pytest.raises(ValueError, match="layout"):
        make_input(tmp_path / "r2", "newest", competition=COMPETITION, competition_dir=comp,
                   wheels_dataset="me/a-b", wheels_dir=wheels, weights_dataset="me/c-d",
                   weight_files=[])


def test_rehearsal_end_to_end(tmp_path: Path, shared_sartorius: Path) -> None:
    """Train a tiny UNet on synthetic data, ship it, and run the kernel on the 3 real test PNGs
    in both mount layouts, internet off. CI's one rehearsal: ~1 minute idle, ~3 on 2 busy cores
    (build-wheels downloads the missing dependency wheels from PyPI)."""
    from cellseg.cli import main
    from cellseg.data.synthetic import generate
    from cellseg.kaggle.rehearse import rehearse

    generate(tmp_path / "synth", n_images=6, seed=0, n_test=1, n_semi=0, n_livecell=0)
    run = tmp_path / "run"
    assert main(["train", "--config", "unet_tiny", "--data", str(tmp_path / "synth" / "competition"),
                 "--out", str(run), "--set", "train.max_steps=2", "--set", "train.epochs=1"]) == 0
    manifest = tmp_path / "weights" / "manifest.yaml"
    assert main(["weights", "add", str(run / "best.pt"), "--name", "unet_tiny",
                 "--manifest", str(manifest)]) == 0
    wheels = tmp_path / "wheels"
    assert main(["kaggle", "build-wheels", "--out", str(wheels), "--dataset-id", "me/cellseg-wheels",
                 "--source", str(ROOT)]) == 0
    kernel = tmp_path / "kernel"
    assert main(["kaggle", "build-kernel", "--weights", "unet_tiny", "--manifest", str(manifest),
                 "--kernel-id", "me/cellseg-infer", "--config", "infer_default",
                 "--wheels-dir", str(wheels), "--out", str(kernel)]) == 0

    results = rehearse(kernel, data=shared_sartorius, workdir=tmp_path / "rehearsal", timeout=600)
    assert [r.layout for r in results] == ["old", "new"]
    test_ids = sorted(p.stem for p in (shared_sartorius / "test").glob("*.png"))
    assert len(test_ids) == 3
    for r in results:
        log = r.log.read_text()
        assert r.ok, r.summary() + "\n" + log[-3000:]
        assert r.test_ids == test_ids and r.missing_ids == [] and r.n_rows >= 3
        assert "Successfully installed cellseg-" in log  # from the wheel, not the checkout
        assert "OK: " in log  # cellseg validate passed inside the kernel
        assert "timing (3 test images)" in log
        assert (r.submission.parent / "cellseg_timing.json").is_file()


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
    (wheels / "cellseg-0.1.0-py3-none-any.whl").write_bytes(b"never installed")
    build_kernel(["w0"], tmp_path / "kernel", manifest=manifest, kernel_id="me/cellseg-infer",
                 wheels_dir=wheels)
    (manifest.parent / "w0.pt").write_bytes(b"retrained since")
    data = tmp_path / "comp"
    (data / "test").mkdir(parents=True)
    (data / "test" / "abc.png").write_bytes(b"png")
    [r] = rehearse(tmp_path / "kernel", data=data, layouts=["new"], workdir=tmp_path / "reh",
                   timeout=120, isolate=False)
    assert not r.ok and r.returncode == 3
    assert r.missing_ids == ["abc"] and r.n_rows == 0
    assert "expected sha256" in r.log.read_text() and "PASS" not in r.summary()
