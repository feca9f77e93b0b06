"""Faults that real runs meet, injected and survived: kill -9 (mid-step, mid-checkpoint-write,
between the checkpoint and its sidecar), SIGTERM (one process and 2-process gloo DDP), a full
disk, a vanished folder, two runs into one --out, an interrupted `cellseg predict` and corrupt
checkpoints. Each test states the promise it checks; faults are injected by
tests/fault_runner.py (a subprocess, for kills) or by monkeypatching (in-process).

Training runs here are tiny (64 px crops of 128x160 images, 4 images, batch 2: 2 optimiser
steps per epoch, 3 epochs) so the whole file runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from cellseg.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "fault_runner.py"
SETS = ["data.workers=0", "data.crop_size=64", "train.batch_size=2", "train.log_every=1",
        "train.epochs=3", "train.save_every_steps=1", "data.fold=null", "train.max_steps=null",
        "data.max_train_images=4"]
LAST_TMP = r"\.last\.pt\.\w+\.tmp"
SIDE_TMP = r"\.last\.pt\.sha256\.\w+\.tmp"


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1",
                OMP_NUM_THREADS="1", MPLBACKEND="Agg", **extra)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """6 synthetic 128x160 images in competition layout (3 cell types, 2 per sample)."""
    from conftest import write_synthetic_competition

    return write_synthetic_competition(tmp_path_factory.mktemp("faults") / "competition", seed=20)


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--config", "unet_tiny", "--data", str(data), "--out", str(out),
            "--no-progress", "--device", "cpu"]
    for kv in SETS + list(extra):
        argv += ["--set", kv]
    return argv


def _faulty(spec: str, argv: list[str], timeout: float = 300, **env: str
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *argv], cwd=ROOT, timeout=timeout,
                          env=_env(CELLSEG_FAULT=spec, **env), capture_output=True, text=True)


def _same_state(a: dict, b: dict) -> None:
    """Model, EMA, optimiser, scaler and counters identical to the last bit."""
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for key in ("model", "ema"):
        if a.get(key) is None:
            assert b.get(key) is None
            continue
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]) if torch.is_tensor(v) else v == sb[i][k]
    assert a.get("scaler") == b.get("scaler")


def _tmp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one must end identical to."""
    from cellseg.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(_train_argv(small, out)) == 0
    return load_checkpoint(out / "last.pt")


# ----------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("spec, saved_step", [
    ("kill:step:4", 3),                   # mid-epoch 2, after backward, before the update
    (f"kill:fsync:3:{LAST_TMP}", 2),      # while the 3rd last.pt is being written (torn .tmp)
    (f"kill:fsync:3:{SIDE_TMP}", 2),      # between last.pt's rename and its sidecar's
])
def test_kill_9_anywhere_then_resume_is_bit_identical(small, reference, tmp_path, capsys,
                                                      spec, saved_step):
    """Promise: after kill -9 at any moment, `--resume` continues from the last complete
    checkpoint (a torn write is never read) and ends bit-identical to an uninterrupted run."""
    from cellseg.checkpoint import load_checkpoint, verify_checkpoint

    out = tmp_path / "run"
    killed = _faulty(spec, _train_argv(small, out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert verify_checkpoint(out / "last.pt")
    assert load_checkpoint(out / "last.pt")["step"] == saved_step
    assert (out / ".lock").exists()  # kill -9 leaves the lock: the resume must see it is stale
    if "fsync" in spec and "sha256" not in spec:
        assert _tmp_files(out), "the kill did not happen mid-write"
    capsys.readouterr()
    assert main(_train_argv(small, out) + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {out / 'last.pt'}" in err and "replacing a stale lock" in err
    assert not _tmp_files(out) and not (out / ".lock").exists()
    _same_state(load_checkpoint(out / "last.pt"), reference)
    log = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3"]


# ----------------------------------------------------------------------------- SIGTERM


def test_second_run_refused_then_sigterm_writes_last_within_grace(small, tmp_path, capsys):
    """Promises: a second run into a running run's --out (with or without --resume) refuses at
    once; SIGTERM (a preempted machine) makes the run write last.pt and exit well inside
    SLURM's default 30 s grace period, releasing the lock."""
    from cellseg.checkpoint import load_checkpoint, verify_checkpoint

    out = tmp_path / "run"
    argv = _train_argv(small, out, "train.epochs=500")
    proc = subprocess.Popen([sys.executable, "-m", "cellseg", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ((out / "last.pt").exists() and (out / ".lock").exists()):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"training did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == proc.pid and lock["host"] == socket.gethostname()
        for resume in ([], ["--resume"]):
            capsys.readouterr()
            t0 = time.time()
            assert main(_train_argv(small, out) + resume) == 2
            err = capsys.readouterr().err.strip()
            assert time.time() - t0 < 30 and len(err.splitlines()) == 1, err
            what = "--resume of a running run" if resume else "another run into the same --out"
            assert f"refused: {what}; {out} is in use by pid {proc.pid}" in err
        assert proc.poll() is None  # the first run was not disturbed
        t_term = time.time()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        grace = time.time() - t_term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert grace < 30, f"took {grace:.1f} s after SIGTERM"
    assert "SIGTERM: stopping after this step and writing last.pt" in stderr
    stopped = int(re.search(r"stopped in [\d.]+ s at step (\d+)/", stderr).group(1))
    assert verify_checkpoint(out / "last.pt")
    assert load_checkpoint(out / "last.pt")["step"] == stopped
    assert not (out / ".lock").exists() and not _tmp_files(out)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_sigterm_under_ddp_stops_every_rank_at_the_same_step(small, tmp_path):
    """Promise: under DDP a SIGTERM seen by ONE rank stops every rank after the same optimiser
    step, and rank 0 writes last.pt at that step."""
    from cellseg.checkpoint import load_checkpoint

    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", str(RUNNER)] + _train_argv(small, out, "train.batch_size=1",
                                                       "train.save_every_steps=0")
    done = subprocess.run(argv, cwd=ROOT, env=_env(CELLSEG_FAULT="term:step:3",
                                                   CELLSEG_FAULT_RANK="1"),
                          capture_output=True, text=True, timeout=400)
    err = done.stderr
    assert "SIGTERM: stopping after this step" in err, err[-3000:]
    # 2 ranks x batch 1 over 4 images: 2 steps per epoch, so step 3 is mid-epoch 2
    assert "rank 0: stopped at step 3" in err and "rank 1: stopped at step 3" in err, err[-3000:]
    ck = load_checkpoint(out / "last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (3, 1, 1)
    assert not (out / ".lock").exists()


# ----------------------------------------------------------------------------- full disk


def _fail_fsync(monkeypatch, pattern: str, n: int, err: int = errno.ENOSPC) -> None:
    """The n-th fsync of a file named like ``pattern`` finds the disk full (half-written)."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if re.fullmatch(pattern, name):
            calls["n"] += 1
            if calls["n"] == n:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                raise OSError(err, os.strerror(err))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_during_checkpoint_keeps_the_previous_one(small, reference, tmp_path,
                                                            monkeypatch, capsys):
    """Promise: ENOSPC while writing last.pt: one line, exit 2, the previous last.pt intact,
    no .tmp left, no lock left; --resume then ends bit-identical."""
    from cellseg.checkpoint import load_checkpoint, verify_checkpoint

    out = tmp_path / "run"
    _fail_fsync(monkeypatch, LAST_TMP, 3)
    assert main(_train_argv(small, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"cellseg train: cannot write last.pt: no space left on device, {out}, "
                       "free space or choose another folder; the previous last.pt, if any, is "
                       "kept")
    assert not any("Traceback" in line for line in err)
    assert verify_checkpoint(out / "last.pt") and load_checkpoint(out / "last.pt")["step"] == 2
    assert not _tmp_files(out) and not (out / ".lock").exists()
    monkeypatch.undo()
    assert main(_train_argv(small, out) + ["--resume"]) == 0
    _same_state(load_checkpoint(out / "last.pt"), reference)


def test_read_only_folder_mid_run_is_one_line(small, tmp_path, monkeypatch, capsys):
    """Promise: the folder turning read-only mid-run (EROFS at the write) ends in one line and
    the last good checkpoint is kept."""
    from cellseg.checkpoint import verify_checkpoint

    out = tmp_path / "run"
    _fail_fsync(monkeypatch, LAST_TMP, 2, errno.EROFS)
    assert main(_train_argv(small, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cellseg train: cannot write last.pt: the file system is read-only")
    assert verify_checkpoint(out / "last.pt") and not _tmp_files(out)


def test_vanished_folder_mid_run_is_recreated_and_nothing_is_lost(small, tmp_path,
                                                                  monkeypatch, capsys):
    """Promise: the run folder deleted mid-run: a warning, the folder (config.yaml, lock)
    recreated, and the run still ends with its final checkpoint."""
    import shutil

    from cellseg.checkpoint import load_checkpoint
    from cellseg.training import engine

    out = tmp_path / "run"
    real, calls = engine._optimizer_step, {"n": 0}

    def step(state, clip):
        calls["n"] += 1
        if calls["n"] == 3:
            shutil.rmtree(out)
        return real(state, clip)
    monkeypatch.setattr(engine, "_optimizer_step", step)
    assert main(_train_argv(small, out)) == 0
    assert f"warning: the output folder {out} vanished mid-run" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["step"] == 6
    assert (out / "config.yaml").exists() and not (out / ".lock").exists()


def test_disk_full_during_submission_keeps_the_previous_file(tiny_unet_ckpt, small, tmp_path,
                                                              monkeypatch, capsys):
    """Promise: ENOSPC while writing submission.csv: one line, exit 2, the previous file
    byte-identical, no .tmp left."""
    sub = tmp_path / "submission.csv"
    argv = ["predict", "--weights", str(tiny_unet_ckpt), "--images", str(small / "train"),
            "--out", str(sub), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    good = sub.read_bytes()
    capsys.readouterr()
    _fail_fsync(monkeypatch, r"\.submission\.csv\.\w+\.tmp", 1)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cellseg predict: cannot write submission.csv: no space left on device, "
                   f"{tmp_path}, free space or choose another folder; the previous "
                   f"submission.csv, if any, is kept"]
    assert sub.read_bytes() == good and not _tmp_files(tmp_path)


def test_disk_full_during_report_keeps_the_previous_file(small, tmp_path, monkeypatch, capsys):
    """Promise: ENOSPC while writing a score report (JSON and PNG pages): one line, exit 2,
    the previous file intact, no .tmp left."""
    truth = small / "train.csv"
    pred = tmp_path / "pred.csv"
    ids = sorted(p.stem for p in (small / "train").glob("*.png"))
    pred.write_text("id,predicted\n" + "".join(f"{i},{100 + 5 * k} 40\n"
                                                for k, i in enumerate(ids)))
    report = tmp_path / "score.json"
    argv = ["score", "--truth", str(truth), "--pred", str(pred), "--json", str(report),
            "--no-coco"]
    assert main(argv) == 0
    good = report.read_bytes()
    capsys.readouterr()
    _fail_fsync(monkeypatch, r"\.score\.json\.\w+\.tmp", 1)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cellseg score: cannot write score.json: no space left on device")
    assert report.read_bytes() == good and not _tmp_files(tmp_path)
    monkeypatch.undo()
    pages = tmp_path / "report"
    assert main(argv[:-1] + ["--no-coco", "--report", str(pages), "--images",
                             str(small / "train")]) == 0
    page = sorted(pages.glob("*.png"))[0]
    good = page.read_bytes()
    # the disk fills while matplotlib writes the page (inside atomic_path)
    import matplotlib.figure

    real_save = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *a, **k):
        if Path(str(fname)).name.startswith(f".{page.name}."):
            Path(fname).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fname, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    capsys.readouterr()
    assert main(argv[:-1] + ["--no-coco", "--report", str(pages), "--images",
                             str(small / "train")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"cellseg score: cannot write {page.name}: no space left")
    assert page.read_bytes() == good and not _tmp_files(pages)


# ----------------------------------------------------------------------------- the lock


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_is_replaced_with_a_note_and_foreign_lock_refused(small, tmp_path, capsys):
    """Promises: a lock left by a dead process on this host (or whose pid a later process
    reused) is replaced with a note; a lock from another host (cannot be checked) is refused
    with how to remove it."""
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid()
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                           "started": "2026-01-01T00:00:00"}))
    assert main(_train_argv(small, out, "train.epochs=1", "train.max_steps=1")) == 0
    err = capsys.readouterr().err
    assert f"note: replacing a stale lock {out / '.lock'} (pid {pid}" in err
    assert not (out / ".lock").exists()
    # a pid reused by another process (pid 1 is alive, but started at another time)
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(),
                                           "pid_start": "-1"}))
    assert main(_train_argv(small, out, "train.epochs=1", "train.max_steps=1")) == 0
    assert "note: replacing a stale lock" in capsys.readouterr().err
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere-node-7"}))
    assert main(_train_argv(small, out, "train.epochs=1") + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cellseg train: refused: --resume of a running run; {out} is in use by "
                   f"pid 1 on host elsewhere-node-7 (since ?), {out / '.lock'}, if that run is "
                   f"dead, delete {out / '.lock'}; else choose another --out")


# ----------------------------------------------------------------------------- predict


def test_predict_interrupted_leaves_no_partial_submission(tiny_unet_ckpt, small, tmp_path,
                                                          capsys):
    """Promise: `cellseg predict` killed (-9) or terminated (SIGTERM) mid-way leaves no
    submission.csv at the target (and an older one untouched); re-running completes it."""
    from cellseg.core.submission import validate_submission

    sub = tmp_path / "out" / "submission.csv"
    argv = ["predict", "--weights", str(tiny_unet_ckpt), "--images", str(small / "train"),
            "--out", str(sub), "--no-progress", "--device", "cpu", "--set", "batch_size=1"]
    killed = _faulty("kill:write:3", argv)  # the 3rd image's rows are being written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not sub.exists()
    sub.write_text("id,predicted\nold,1 1\n")
    termed = _faulty("term:write:3", argv)
    assert termed.returncode == -signal.SIGTERM, termed.stderr[-2000:]
    assert sub.read_text() == "id,predicted\nold,1 1\n"
    assert main(argv) == 0
    ids = sorted(p.stem for p in (small / "train").glob("*.png"))
    assert not [p for p in validate_submission(sub, ids=ids, shape=(128, 160))
                if getattr(p, "severity", "error") == "error"]
    assert sorted({line.split(",")[0] for line in sub.read_text().splitlines()[1:]}) == ids


# ----------------------------------------------------------------------------- corrupt checkpoints


def _corruptions(good: Path, tmp: Path) -> dict[str, Path]:
    """A truncated file, a file that does not match its sidecar, a checkpoint of another family
    (UNet weights labelled Mask R-CNN)."""
    import shutil

    from cellseg.checkpoint import load_checkpoint, save_checkpoint

    tmp.mkdir(parents=True, exist_ok=True)
    cut = tmp / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    side = tmp / "side.pt"
    shutil.copy(good, side)
    (tmp / "side.pt.sha256").write_text("0" * 64 + "  side.pt\n")
    ck = load_checkpoint(good)
    ck.pop("spec", None)
    ck.pop("version", None)
    ck["family"], ck["model_args"] = "maskrcnn", {"num_classes": 2}
    other = tmp / "other.pt"
    save_checkpoint(other, **ck)
    return {"truncated": cut, "sidecar": side, "family": other}


CORRUPT_WHY = {"truncated": "cannot load checkpoint", "sidecar": "does not match its sidecar",
               "family": "maskrcnn"}


@pytest.mark.parametrize("kind", ["truncated", "sidecar", "family"])
def test_corrupt_checkpoint_in_predict_and_tune(tiny_unet_ckpt, small, tmp_path, capsys, kind):
    """Promise: predict and tune given a corrupt checkpoint say so in one line naming it."""
    bad = _corruptions(tiny_unet_ckpt, tmp_path / "bad")[kind]
    for argv in (["predict", "--weights", str(bad), "--images", str(small / "train"), "--out",
                  str(tmp_path / "s.csv"), "--no-progress", "--device", "cpu"],
                 ["tune", "--weights", str(bad), "--data", str(small), "--out",
                  str(tmp_path / "t.yaml"), "--device", "cpu", "--max-images", "2"]):
        capsys.readouterr()
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and CORRUPT_WHY[kind] in err[0], err
        assert not (tmp_path / "s.csv").exists() and not (tmp_path / "t.yaml").exists()


@pytest.mark.parametrize("kind", ["truncated", "sidecar", "family"])
def test_corrupt_checkpoint_in_resume_and_init_from(small, tmp_path, capsys, kind):
    """Promise: --resume and --init-from given a corrupt checkpoint say so in one line naming
    it, before any training step."""
    import shutil

    from cellseg.checkpoint import save_checkpoint

    src = tmp_path / "src"
    assert main(_train_argv(small, src, "train.epochs=1", "train.max_steps=1")) == 0
    bad = _corruptions(src / "last.pt", tmp_path / "bad")[kind]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(bad, run / "last.pt")
    if Path(str(bad) + ".sha256").exists():
        shutil.copy(str(bad) + ".sha256", run / "last.pt.sha256")
    if kind == "sidecar":
        (run / "last.pt.sha256").write_text("0" * 64 + "  last.pt\n")
    if kind == "family":  # a resumable state whose config is another family's
        from cellseg.checkpoint import load_checkpoint

        ck = load_checkpoint(src / "last.pt")
        ck["config"]["model"] = {"family": "maskrcnn", "args": {"num_classes": 2}}
        save_checkpoint(run / "last.pt", **ck)
    capsys.readouterr()
    assert main(_train_argv(small, run, "train.epochs=1") + ["--resume"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cellseg train:")]
    assert len(err) == 1 and str(run / "last.pt") in err[0], err
    assert CORRUPT_WHY[kind] in err[0] or (kind == "family" and "--resume" in err[0]), err
    assert not (run / ".lock").exists()
    assert main(_train_argv(small, tmp_path / "ft", "train.epochs=1")
                + ["--init-from", str(bad)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cellseg train:")]
    assert len(err) == 1 and str(bad) in err[0] and CORRUPT_WHY[kind] in err[0], err
    assert "Traceback" not in capsys.readouterr().err


def test_corrupt_weights_stop_the_kernel_entry(tmp_path, tiny_unet_ckpt):
    """Promise: the Kaggle kernel's entry refuses truncated weights with one message naming the
    file (exit 3) before anything is predicted. (The kernel checks the sha256 embedded at
    build time; its `cellseg predict` then loads through the same verified loader.)"""
    from cellseg.kaggle.kernel import build_kernel
    from cellseg.weights import add_weights

    manifest = tmp_path / "weights" / "manifest.yaml"
    add_weights(tiny_unet_ckpt, "unet_f0", manifest=manifest)
    ck = manifest.parent / "unet_f0.pt"
    b = build_kernel(["unet_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer")
    inp = tmp_path / "input"
    comp = inp / "competitions" / "sartorius-cell-instance-segmentation"
    (comp / "test").mkdir(parents=True)
    (comp / "test" / "abc.png").write_bytes(b"png")
    wheels = inp / "datasets" / "me" / "cellseg-wheels"
    wheels.mkdir(parents=True)
    (wheels / "cellseg-0.1.0-py3-none-any.whl").write_bytes(b"")
    weights = inp / "datasets" / "me" / "cellseg-weights"
    weights.mkdir(parents=True)
    (weights / "unet_f0.pt").write_bytes(ck.read_bytes()[:1000])
    env = {"PATH": os.environ["PATH"], "CELLSEG_KAGGLE_INPUT": str(inp),
           "CELLSEG_KAGGLE_WORKING": str(tmp_path / "work")}
    done = subprocess.run([sys.executable, "-I", str(b.code_file), "--verify-only"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    # the kernel's one failure message: a headline, then one line per bad file
    assert done.stderr.startswith("KERNEL FAILED (exit 3): weights do not "
                                  "match"), done.stderr
    assert str(weights / "unet_f0.pt") in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- float16 resume


def test_float16_resume_after_a_skipped_step_is_bit_identical(small, tmp_path, monkeypatch,
                                                              capsys):
    """Promise: a float16 run on CPU (autocast + GradScaler, the CUDA path) whose step 3 had an
    inf gradient (skipped, scale halved), stopped at step 4 and resumed, ends bit-identical to
    the uninterrupted run, GradScaler state included."""
    from cellseg.checkpoint import load_checkpoint
    from cellseg.training import engine

    real = engine._optimizer_step
    scales: dict[int, float] = {}

    def faulty(state, clip, stop_at=None):
        if state.step + 1 == 3:  # poison one gradient of step 3
            p = next(p for p in state.model.parameters() if p.grad is not None)
            p.grad.fill_(float("inf"))
        if stop_at is not None and state.step + 1 == stop_at:
            signal.raise_signal(signal.SIGINT)  # stop after this step, as Ctrl-C/SIGTERM does
        scales[state.step + 1] = state.scaler.get_scale()
        real(state, clip)

    fp16 = ["train.amp=true", "train.amp_dtype=float16", "train.save_every_steps=0"]
    ref = tmp_path / "ref"
    monkeypatch.setattr(engine, "_optimizer_step", faulty)
    assert main(_train_argv(small, ref, *fp16)) == 0
    full = load_checkpoint(ref / "last.pt")
    assert full["scaler"] is not None and full["scaler"]["scale"] == scales[3] / 2
    out = tmp_path / "run"
    monkeypatch.setattr(engine, "_optimizer_step", lambda s, c: faulty(s, c, stop_at=4))
    assert main(_train_argv(small, out, *fp16)) == 130
    assert load_checkpoint(out / "last.pt")["step"] == 4
    monkeypatch.setattr(engine, "_optimizer_step", faulty)
    capsys.readouterr()
    assert main(_train_argv(small, out, *fp16) + ["--resume"]) == 0
    _same_state(load_checkpoint(out / "last.pt"), full)
