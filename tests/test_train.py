"""Training: engine pieces, the `cellseg train` orchestration, resume and real-data smoke runs."""

from __future__ import annotations

import csv
import math
import signal
from pathlib import Path

import numpy as np
import pytest

import torch

from cellseg.training import engine  # noqa: E402
from cellseg.config import ScheduleConfig  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# small and fast: 64 px crops, one validation image, no workers
FAST = ["data.workers=0", "data.crop_size=64", "data.max_val_images=1", "train.batch_size=2",
        "train.log_every=1", "train.val_every=1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from cellseg.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n_images=6, seed=3, n_test=0, n_semi=0, n_livecell=0)
    return out / "competition"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A competition folder of 6 synthetic 128x160 images (3 cell types, 2 frames per sample):
    the loader and validation cost ~20x less than at 520x704."""
    from cellseg.core import rle
    from cellseg.data.record import ImageRecord
    from cellseg.data.sartorius import write_train_csv
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    root = tmp_path_factory.mktemp("small") / "competition"
    records = []
    for i, cell_type in enumerate(["shsy5y", "shsy5y", "astro", "astro", "cort", "cort"]):
        image, masks = render(cell_type, seed=i, shape=(128, 160))
        image_id = f"{i:012x}"
        write_png(root / "train" / f"{image_id}.png", image)
        records.append(ImageRecord(image_id, root / "train" / f"{image_id}.png", 128, 160,
                                   cell_type=cell_type, sample_id=f"{cell_type}_sample",
                                   rles=tuple(rle.encode(m) for m in masks)))
    write_train_csv(records, root / "train.csv")
    return root


def _train(config: str, data, out: Path, *extra: str, resume: bool = False) -> int:
    from cellseg.training.loop import get_args_parser, main

    argv = ["--config", config, "--out", str(out), "--no-progress"]
    for d in ([data] if isinstance(data, (str, Path)) else data):
        argv += ["--data", str(d)]
    for kv in list(FAST) + list(extra):
        argv += ["--set", kv]
    if resume:
        argv.append("--resume")
    return main(get_args_parser().parse_args(argv))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- engine units


def test_lr_factor_warmup_then_cosine():
    cfg = ScheduleConfig(warmup_steps=10, warmup_factor=0.1, cosine=True, min_lr_ratio=0.0)
    assert engine.lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert engine.lr_factor(5, 110, cfg) == pytest.approx(0.55)
    assert engine.lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert engine.lr_factor(60, 110, cfg) == pytest.approx(0.5)
    assert engine.lr_factor(110, 110, cfg) == pytest.approx(0.0, abs=1e-12)
    flat = ScheduleConfig(warmup_steps=0, cosine=False)
    assert engine.lr_factor(50, 100, flat) == 1.0


def _unet_batches(n: int, seed: int = 0):
    from cellseg.models import get_family

    family = get_family("unet")
    torch.manual_seed(seed)
    model = family.build(encoder_name="tu-mobilenetv3_small_050", in_channels=1,
                         decoder_channels=(16, 16, 8, 8, 8), norm="dataset")
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        masks = np.zeros((2, 64, 64), bool)  # 64 px: the encoder's deepest map is 2x2
        masks[0, 4:20, 4:20] = masks[1, 30:50, 24:60] = True
        image = (128 + 20 * masks.any(0) + rng.normal(0, 3, (64, 64))).astype(np.uint8)
        x = family.preprocess(model, image[None])[0]
        batches.append(family.collate([(x, pipeline_target(family, masks, np.zeros(2, np.int64)))]))
    return model, family, batches


def _state(model, family, *, optim=None, total=100, schedule=None, scaler=None):
    from cellseg.training.state import TrainState

    opt = engine.build_optimizer(model, optim or engine.OptimConfig(name="adamw", lr=1e-3))
    sched = engine.build_scheduler(opt, total, schedule or ScheduleConfig(warmup_steps=0,
                                                                          cosine=False))
    return TrainState(model=model, family=family, optimizer=opt, scheduler=sched, scaler=scaler)


def test_grad_accum_counts_optimiser_steps():
    model, family, batches = _unet_batches(5)
    state = _state(model, family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = engine.train_one_epoch(state, batches, engine.StepOptions(grad_accum=2, clip_norm=1.0))
    assert state.step == 3  # 2 + 2 + a trailing partial group of 1
    assert state.batch_in_epoch == 5
    assert state.scheduler.last_epoch == 3
    assert stats["batches"] == 5 and stats["images"] == 5 and math.isfinite(stats["loss"])
    assert {"loss", "bce", "dice"} <= set(stats)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # max_steps stops inside the epoch
    state = _state(model, family)
    engine.train_one_epoch(state, batches, engine.StepOptions(max_steps=1))
    assert state.step == 1 and state.batch_in_epoch == 1


def test_after_step_reports_losses_every_log_every_steps_and_can_stop():
    model, family, batches = _unet_batches(4)
    state = _state(model, family)
    calls = []

    def after_step(st, losses):
        calls.append((st.step, None if losses is None else sorted(losses)))
        return st.step == 3

    engine.train_one_epoch(state, batches, engine.StepOptions(log_every=2), after_step)
    assert [c[0] for c in calls] == [1, 2, 3] and state.step == 3
    assert calls[0][1] is None and calls[2][1] is None
    assert {"loss", "bce", "dice"} <= set(calls[1][1])


def test_grad_scaler_path_steps_like_plain_fp32():
    """The CUDA AMP code path (scale -> unscale -> clip -> step) runs; with no overflow its
    update matches the plain fp32 path (float16 autocast itself needs CUDA; see the bf16 test)."""
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)):
        model, family, batches = _unet_batches(2)
        state = _state(model, family, optim=engine.OptimConfig(name="sgd", lr=0.1), total=10,
                       scaler=scaler)
        engine.train_one_epoch(state, batches, engine.StepOptions(clip_norm=1.0))
        results.append(model.state_dict())
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_bf16_autocast_runs_the_forward_in_bf16_and_learns():
    """The mixed-precision path on CPU: convolutions run in bfloat16 under autocast, the loss is
    within bf16 rounding of the fp32 loss, and the step updates float32 weights."""
    losses, seen = [], []
    for amp_dtype in (None, torch.bfloat16):
        model, family, batches = _unet_batches(1)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        start = {k: v.clone() for k, v in model.state_dict().items()}
        state = _state(model, family, optim=engine.OptimConfig(name="sgd", lr=0.1), total=10)
        stats = engine.train_one_epoch(state, batches, engine.StepOptions(amp_dtype=amp_dtype))
        hook.remove()
        losses.append(stats["loss"])  # one batch: the loss before the update
        assert state.step == 1
        assert all(v.dtype == start[k].dtype for k, v in model.state_dict().items())
        assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert seen == [torch.float32, torch.bfloat16]
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.03)


def test_channels_last_changes_layout_not_results():
    model, family, batches = _unet_batches(2)
    images, targets = engine.to_device(batches[0], torch.device("cpu"), channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert targets["maps"].is_contiguous(memory_format=torch.channels_last)
    losses = []
    for cl in (False, True):
        model, family, batches = _unet_batches(2)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        state = _state(model, family, optim=engine.OptimConfig(name="sgd", lr=0.01))
        seen = []
        engine.train_one_epoch(state, batches, engine.StepOptions(channels_last=cl, log_every=1),
                               lambda st, losses: seen.append(losses["loss"]))
        losses.append(seen)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # before and after one update


def test_non_finite_loss_aborts_with_the_loss_dict(capsys):
    model, family, batches = _unet_batches(2)
    images, targets = batches[1]
    images = images.clone()
    images[0, 0, 3, 3] = float("nan")  # one poisoned pixel
    state = _state(model, family)
    state.epoch = 4
    with pytest.raises(engine.NonFiniteLossError) as err:
        engine.train_one_epoch(state, [batches[0], (images, targets)], engine.StepOptions())
    msg = str(err.value)
    assert "epoch 4" in msg and "optimiser step 1" in msg
    assert "'loss': nan" in msg and "'bce'" in msg and "'dice'" in msg
    assert "'loss': nan" in capsys.readouterr().err


def test_train_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from cellseg.checkpoint import load_checkpoint, save_checkpoint
    from cellseg.training.state import TrainState

    model, family, batches = _unet_batches(3)
    state = _state(model, family)
    state.ema = engine.ModelEMA(model, 0.9)
    engine.train_one_epoch(state, batches, engine.StepOptions(max_steps=2))
    state.record_validation({"score": 0.25})
    save_checkpoint(tmp_path / "s.pt", family="unet", **state.state_dict())
    model2, family2, _ = _unet_batches(1, seed=5)
    fresh = _state(model2, family2)
    fresh.ema = engine.ModelEMA(model2, 0.9)
    fresh.load_state_dict(load_checkpoint(tmp_path / "s.pt"))
    assert (fresh.step, fresh.batch_in_epoch, fresh.best_score) == (2, 2, 0.25)
    assert fresh.scheduler.last_epoch == 2 and fresh.ema.updates == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model2.state_dict()[k], v, rtol=0, atol=0)
    assert fresh.optimizer.state_dict()["state"].keys() == state.optimizer.state_dict()["state"].keys()
    assert isinstance(fresh, TrainState) and fresh.resume_rng


def test_ema_tracks_weights():
    model, family, batches = _unet_batches(1)
    ema = engine.ModelEMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    name, p = next(iter(model.named_parameters()))
    e = dict(ema.module.named_parameters())[name]
    d = min(0.5, 2 / 11)
    torch.testing.assert_close(e, (p - 1.0) * d + p * (1 - d))
    assert not e.requires_grad


# ----------------------------------------------------------------------------- orchestration


def test_tiny_train_end_to_end(synth, tmp_path):
    from cellseg.checkpoint import load_checkpoint, verify_checkpoint
    from cellseg.models import load_model

    out = tmp_path / "run"
    assert _train("unet_tiny", synth, out, "train.epochs=2", "data.max_train_images=4") == 0
    names = {p.name for p in out.iterdir()}
    assert {"best.pt", "last.pt", "best.pt.sha256", "last.pt.sha256", "log.csv", "steps.csv",
            "curves.png", "config.yaml"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["val_score"] != "" and 0.0 <= float(r["val_score"]) <= 1.0 for r in rows)
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    ck = load_checkpoint(out / "last.pt")
    n_train = ck["data"]["n_train"]
    assert 2 <= n_train <= 4  # the held-out fold is not trained on
    steps = 2 * math.ceil(n_train / 2)
    assert len(_rows(out / "steps.csv")) == steps
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert verify_checkpoint(out / "last.pt") and verify_checkpoint(out / "best.pt")
    assert ck["step"] == steps and ck["epoch"] == 2 and ck["family"] == "unet"
    assert ck["config"]["model"]["args"]["encoder_name"] == "tu-mobilenetv3_small_050"
    assert ck["data"]["n_val"] == 1 and len(ck["data"]["val_ids"]) == 1
    assert not set(ck["data"]["val_ids"]) & set(load_checkpoint(out / "best.pt")["data"]
                                                 .get("train_ids", []))
    assert ck["version"]["cellseg"]
    assert "score" in ck["metrics"]
    model, family, _ = load_model(out / "best.pt")
    image = np.full((1, 64, 96), 128, np.uint8)
    with torch.no_grad():
        maps = family.predict_dense(model, family.preprocess(model, image))
    assert maps.shape == (1, 3, 64, 96)


def _interrupt_at(monkeypatch, step: int) -> None:
    """Send this process SIGINT (a Ctrl-C) right after optimiser step ``step``."""
    from cellseg.training.log import TrainLog

    add_step = TrainLog.add_step

    def interrupting(self, row):
        add_step(self, row)
        if row["step"] == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(TrainLog, "add_step", interrupting)


def test_resume_matches_uninterrupted_run(small, tmp_path, monkeypatch, capsys):
    """2 epochs in one go == Ctrl-C after epoch 1 + resume (same weights, step, LR, EMA, best
    score), and == Ctrl-C inside epoch 2 + resume: bit-identical with the default augmentation
    and 0 workers."""
    from cellseg.checkpoint import load_checkpoint

    common = ["train.epochs=2", "train.ema_decay=0.9", "train.max_steps=null",
              "data.max_train_images=4", "schedule.warmup_steps=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train("unet_tiny", small, full, *common) == 0
    a = load_checkpoint(full / "last.pt")
    steps_per_epoch = a["step"] // 2
    assert a["step"] == 4 and a["epoch"] == 2
    _interrupt_at(monkeypatch, steps_per_epoch)
    assert _train("unet_tiny", small, part, *common) == 130  # stopped by the signal
    assert "SIGINT: stopping after this step" in capsys.readouterr().err
    mid = load_checkpoint(part / "last.pt")
    assert (mid["epoch"], mid["step"], mid["batch_in_epoch"]) == (1, steps_per_epoch, 0)
    monkeypatch.undo()
    assert _train("unet_tiny", small, part, *common, resume=True) == 0
    b = load_checkpoint(part / "last.pt")
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"]
    assert b["scheduler"]["_last_lr"] == a["scheduler"]["_last_lr"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0, msg=k)
    for k in a["ema"]:
        torch.testing.assert_close(b["ema"][k], a["ema"][k], rtol=0, atol=0, msg=k)
    assert b["best_score"] == a["best_score"] and b["metrics"] == a["metrics"]
    assert [r["epoch"] for r in _rows(part / "log.csv")] == ["1", "2"]
    # stopped inside epoch 2: the resumed run skips the batches already trained on
    cut = tmp_path / "cut"
    _interrupt_at(monkeypatch, steps_per_epoch + 1)
    assert _train("unet_tiny", small, cut, *common) == 130
    mid = load_checkpoint(cut / "last.pt")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["step"]) == (1, 1, steps_per_epoch + 1)
    monkeypatch.undo()
    assert _train("unet_tiny", small, cut, *common, resume=True) == 0
    c = load_checkpoint(cut / "last.pt")
    assert (c["epoch"], c["step"], c["batch_in_epoch"]) == (2, a["step"], 0)
    assert c["scheduler"]["_last_lr"] == a["scheduler"]["_last_lr"]
    for k in a["model"]:
        torch.testing.assert_close(c["model"][k], a["model"][k], rtol=0, atol=0, msg=k)
    assert [r["epoch"] for r in _rows(cut / "log.csv")] == ["1", "2"]


def test_max_steps_sets_the_schedule_length(small, tmp_path):
    """With max_steps below epochs x steps/epoch the cosine schedule ends at max_steps."""
    from cellseg.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert _train("unet_tiny", small, out, "train.epochs=50", "train.max_steps=3",
                  "data.fold=null", "data.max_train_images=4", "schedule.warmup_steps=0",
                  "schedule.min_lr_ratio=0.0", "optim.lr=1e-3") == 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 3 and (ck["epoch"], ck["batch_in_epoch"]) == (1, 1)
    assert ck["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # fully decayed


@pytest.mark.parametrize("save", [["train.save_every=2"],
                                  ["train.save_every=0", "train.save_every_steps=4"]])
def test_checkpoint_and_validation_cadence(small, tmp_path, monkeypatch, save):
    """4 train images, batch 2: 2 steps per epoch, 3 epochs. last.pt is written at the cadence
    (epoch 2 = step 4, by epochs or by steps) and at the end, not after every epoch; validation
    every 3 steps (inside epoch 2, and at the end); best.pt only when the score improves."""
    from cellseg.checkpoint import load_checkpoint
    from cellseg.training import checkpoints as C

    written = []
    real = C.save_checkpoint
    monkeypatch.setattr(C, "save_checkpoint", lambda path, **st: (
        written.append((Path(path).name, st["step"])), real(path, **st))[1])
    out = tmp_path / "run"
    assert _train("unet_tiny", small, out, "train.epochs=3", "train.max_steps=null",
                  "data.max_train_images=4", "train.val_every=100", "train.val_every_steps=3",
                  *save) == 0
    assert [s for n, s in written if n == "last.pt"] == [4, 6]
    best_steps = [s for n, s in written if n == "best.pt"]
    assert best_steps[0] == 3 and set(best_steps) <= {3, 6}  # the first validation is a best
    val_steps = [int(r["step"]) for r in _rows(out / "log.csv") if r.get("val_score")]
    assert val_steps == [6]  # epoch rows carry the epoch-end validations only
    best = load_checkpoint(out / "best.pt")
    assert best["selection"] == "val_score" and "optimizer" not in best
    assert best["metrics"]["score"] == load_checkpoint(out / "last.pt")["best_score"]


def test_without_validation_best_is_the_last_weights_and_says_so(small, tmp_path, capsys):
    from cellseg.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert _train("unet_tiny", small, out, "train.epochs=1", "train.max_steps=2",
                  "data.fold=null") == 0
    assert "warning: no validation images: best.pt will hold the final weights" in \
        capsys.readouterr().err
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["selection"] == "last_no_validation" and best["step"] == last["step"] == 2
    for k in last["model"]:
        torch.testing.assert_close(best["model"][k], last["model"][k], rtol=0, atol=0)


def test_resume_refuses_a_different_model(small, tmp_path):
    from cellseg.config import ConfigError

    out = tmp_path / "run"
    assert _train("unet_tiny", small, out, "train.epochs=1", "train.max_steps=1",
                  "data.fold=null") == 0
    with pytest.raises(ConfigError, match="--resume"):
        _train("unet_tiny", small, out, "train.epochs=2", "data.fold=null",
               "model.args.decoder_channels=[32,16,16,8,8]", resume=True)


def test_init_from_loads_pretrained_weights(small, tmp_path):
    from cellseg.checkpoint import load_checkpoint

    pre = tmp_path / "pre"
    assert _train("unet_tiny", small, pre, "train.epochs=1", "train.max_steps=1",
                  "data.fold=null") == 0
    ft = tmp_path / "ft"
    from cellseg.training.loop import get_args_parser, main

    argv = ["--config", "unet_tiny", "--data", str(small), "--out", str(ft), "--no-progress",
            "--init-from", str(pre / "last.pt"), "--set", "optim.lr=0", "--set",
            "schedule.warmup_steps=0", "--set", "train.max_steps=1", "--set", "data.fold=null",
            "--set", "optim.weight_decay=0"]
    for kv in FAST:
        argv += ["--set", kv]
    assert main(get_args_parser().parse_args(argv)) == 0
    a, b = load_checkpoint(pre / "last.pt"), load_checkpoint(ft / "last.pt")
    assert b["config"]["train"]["init_from"] == str(pre / "last.pt")
    k = next(k for k, v in a["model"].items() if v.is_floating_point() and "running" not in k)
    torch.testing.assert_close(b["model"][k], a["model"][k])  # lr 0: weights unchanged


def test_early_stopping_stops_at_the_first_validation_without_improvement(small, tmp_path):
    out = tmp_path / "run"
    assert _train("unet_tiny", small, out, "train.epochs=4", "train.early_stop_patience=1",
                  "optim.lr=1e-4", "schedule.warmup_steps=0", "data.max_train_images=2") == 0
    scores = [float(r["val_score"]) for r in _rows(out / "log.csv")]
    best, expected = scores[0], 4
    for k, s in enumerate(scores[1:], start=2):
        if s <= best:
            expected = k
            break
        best = s
    assert len(scores) == expected
    from cellseg.checkpoint import load_checkpoint

    assert load_checkpoint(out / "best.pt")["metrics"]["score"] == max(scores)


def test_cli_flags_replace_config_fields_without_reparsing():
    """--data/--out/--init-from/--device land in the config as given (no YAML round trip:
    quotes, commas, brackets and '=' survive), after the --set overrides."""
    from cellseg.training.loop import config_from_args, get_args_parser

    odd = "/data/it's, [odd]=1"
    args = get_args_parser().parse_args(
        ["--config", "unet_tiny", "--data", odd, "--data", "b", "--out", "r: x", "--device", "cpu",
         "--init-from", "p#1.pt", "--set", "train.out=ignored", "--set", "optim.lr=0.5"])
    cfg = config_from_args(args)
    assert cfg.data.sources == (odd, "b")
    assert (cfg.train.out, cfg.train.device, cfg.train.init_from) == ("r: x", "cpu", "p#1.pt")
    assert cfg.optim.lr == 0.5
    assert config_from_args(get_args_parser().parse_args(["--config", "unet_tiny"])).train.out \
        == "runs/unet_tiny"


def test_missing_data_is_a_clear_error(tmp_path):
    from cellseg.config import ConfigError

    with pytest.raises(ConfigError, match="--data"):
        _train("unet_tiny", [], tmp_path / "x", "train.max_steps=1")


def test_train_on_real_samples(shared_livecell, shared_sartorius, tmp_path):
    """A couple of steps on the real LIVECell val images and the real Sartorius train image."""
    from cellseg.checkpoint import load_checkpoint

    out = tmp_path / "lc"
    assert _train("unet_tiny", shared_livecell, out, "data.split=val", "data.fold=null",
                  "train.epochs=1", "train.max_steps=1", "data.max_train_images=2",
                  "data.crop_size=128") == 0
    ck = load_checkpoint(out / "best.pt")
    assert ck["step"] == 1 and ck["data"]["n_train"] == 2
    out = tmp_path / "sart"
    assert _train("unet_tiny", shared_sartorius, out, "data.fold=null", "train.epochs=1",
                  "train.max_steps=1", "data.crop_size=128") == 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["data"]["n_train"] == 1 and ck["data"]["n_train_cells"] == 395


# kill -9 then --resume (at several moments, incl. mid-checkpoint-write, bit-identical to an
# uninterrupted run) is tests/test_faults.py::test_kill_9_anywhere_then_resume_is_bit_identical


def test_inference_models_data_and_kaggle_never_import_training():
    """Layering: checkpoint format/loading, inference, models, data and the Kaggle path stand
    without cellseg.training, also inside functions (read from the source, every import form)."""
    import re

    pkg = ROOT / "cellseg"
    files = [pkg / "checkpoint.py"] + [p for sub in ("infer", "models", "data", "kaggle")
                                       for p in (pkg / sub).rglob("*.py")]
    pattern = re.compile(r"cellseg\.training|from\s+cellseg\s+import\s+[^\n]*\btraining\b"
                         r"|from\s+\.+\s*import\s+[^\n]*\btraining\b|from\s+\.+training")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(files) > 20 and not offenders, offenders
