"""The CUDA-only code paths, run on the CPU: float16 autocast + GradScaler in training (scale,
unscale before clipping, inf/NaN steps skipped, scale lowered) and the float16 / channels_last
forward of `cellseg predict`. torch 2.14 runs float16 autocast and ``GradScaler("cpu")`` on CPU,
so these run where no GPU is. (Resume after a skipped step: tests/test_faults.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import torch

from cellseg.config import OptimConfig, ScheduleConfig  # noqa: E402
from cellseg.training import engine  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402


def _setup(n: int, dtype, init_scale: float = 2.0 ** 10):
    """A tiny UNet, ``n`` fixed 64x64 batches and its train state (a GradScaler for float16)."""
    from cellseg.models import get_family
    from cellseg.training.state import TrainState

    family = get_family("unet")
    torch.manual_seed(0)
    args = dict(encoder_name="tu-mobilenetv3_small_050", in_channels=1,
                decoder_channels=(16, 16, 8, 8, 8), norm="dataset")
    model = family.build(**args)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n):
        masks = np.zeros((2, 64, 64), bool)
        masks[0, 4:20, 4:20] = masks[1, 30:50, 24:60] = True
        image = (128 + 20 * masks.any(0) + rng.normal(0, 3, (64, 64))).astype(np.uint8)
        x = family.preprocess(model, image[None])[0]
        target = pipeline_target(family, masks, np.zeros(2, np.int64), **args)
        batches.append(family.collate([(x, target)]))
    opt = engine.build_optimizer(model, OptimConfig(name="adamw", lr=3e-3))
    sched = engine.build_scheduler(opt, 100, ScheduleConfig(warmup_steps=0, cosine=False))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if dtype == torch.float16 else None
    state = TrainState(model=model, family=family, optimizer=opt, scheduler=sched, scaler=scaler)
    return state, batches, engine.StepOptions(amp_dtype=dtype, clip_norm=10.0, log_every=1)


def test_float16_run_learns_like_float32():
    """20 steps: the float16 + GradScaler loss falls like the float32 one (final losses within
    5 %), and no step was skipped (the scale never dropped)."""
    curves = {}
    for dtype in (None, torch.float16):
        state, batches, opts = _setup(20, dtype)
        losses = []
        engine.train_one_epoch(state, batches, opts,
                               after_step=lambda s, rep: losses.append(rep["loss"]) or False)
        curves[dtype] = losses
        if state.scaler is not None:
            assert state.scaler.get_scale() == 2.0 ** 10
    fp32, fp16 = curves[None], curves[torch.float16]
    assert len(fp16) == len(fp32) == 20
    assert fp32[-1] < 0.7 * fp32[0] and fp16[-1] < 0.7 * fp16[0]
    assert abs(fp16[-1] - fp32[-1]) <= 0.05 * fp32[-1], (fp32[-1], fp16[-1])
    assert fp16 != fp32  # float16 really ran (not silently float32)


def test_injected_inf_gradient_skips_exactly_that_step_and_halves_the_scale():
    state, batches, opts = _setup(5, torch.float16)
    param = next(p for p in state.model.parameters() if p.requires_grad)
    inject = {"on": False}
    param.register_hook(lambda g: g * float("inf") if inject["on"] else g)
    snapshots, scales = [], []

    def after(s, rep):
        snapshots.append({k: v.clone() for k, v in s.model.state_dict().items()})
        scales.append(s.scaler.get_scale())
        inject["on"] = s.step == 2  # the backward of step 3 gets an inf gradient
        return False
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    engine.train_one_epoch(state, batches, opts, after_step=after)
    assert state.step == 5
    weights = [k for k, v in before.items() if v.is_floating_point() and "running" not in k]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in weights)
    history = [before] + snapshots
    changed = [not same(history[i], history[i + 1]) for i in range(5)]
    assert changed == [True, True, False, True, True]  # only step 3 was skipped
    assert scales == [2.0 ** 10, 2.0 ** 10, 2.0 ** 9, 2.0 ** 9, 2.0 ** 9]
    # the optimiser's own step counter did not count the skipped step either
    assert max(int(s["step"]) for s in state.optimizer.state_dict()["state"].values()) == 4


def test_float16_unscales_before_clipping(monkeypatch):
    """Clipping sees the true gradients (unscaled first; scaled ones are 2**10 times larger)."""
    state, batches, opts = _setup(1, torch.float16)
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm):
        params = list(params)
        seen.append(float(torch.norm(torch.stack([p.grad.norm() for p in params
                                                  if p.grad is not None]))))
        return real(params, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    engine.train_one_epoch(state, batches, opts)
    ref, batches, opts = _setup(1, None)
    ref_seen = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda p, m: ref_seen.append(float(torch.norm(torch.stack(
                            [q.grad.norm() for q in p if q.grad is not None])))) or 0.0)
    engine.train_one_epoch(ref, batches, opts)
    # float16 forward differs a little; a scaled gradient would be 2**10 times larger
    assert seen and ref_seen and 0.5 < seen[0] / ref_seen[0] < 2


def test_cli_float16_on_cpu_uses_a_grad_scaler():
    """`--set train.amp_dtype=float16` on CPU runs float16 with a GradScaler (no longer a
    silent float32 run); "auto" stays float32 on CPU."""
    from cellseg.config import load_train_config
    from cellseg.models import get_family
    from cellseg.training.distributed import DistInfo
    from cellseg.training.loop import _step_options

    dist = DistInfo(device=torch.device("cpu"))
    fam = get_family("unet")
    for dtype, want in (("float16", torch.float16), ("bfloat16", torch.bfloat16),
                        ("auto", None)):
        cfg = load_train_config("unet_tiny", ["train.amp=true", f"train.amp_dtype={dtype}"])
        assert _step_options(cfg, fam, dist, False).amp_dtype == want
    cfg = load_train_config("unet_tiny", ["train.amp=false", "train.amp_dtype=float16"])
    assert _step_options(cfg, fam, dist, False).amp_dtype is None


def test_predict_float16_channels_last_on_cpu_matches_float32(tiny_unet_ckpt):
    """The CUDA forward path of predict (float16 autocast, channels_last) run on CPU through the
    same code: instances match the float32 ones. Tolerance: counts within 5 %, and the mean
    best-IoU of each float32 instance with a float16 one >= 0.9."""
    from cellseg.models import load_model
    from cellseg.core.metrics import iou_matrix
    from cellseg.data.synthetic import render
    from cellseg.infer import predict as P
    from cellseg.infer import stitch as S
    from cellseg.infer.config import InferenceConfig

    model, family, _ = load_model(tiny_unet_ckpt)
    image, _ = render("cort", seed=1, shape=(128, 160))
    calls = []
    real_autocast = S._autocast

    def spy(device, cfg):
        ctx = real_autocast(device, cfg)
        calls.append(ctx.fast_dtype if getattr(ctx, "_enabled", True) else None)
        return ctx
    cpu = torch.device("cpu")
    # a random-init model is unsure everywhere: a low seed threshold makes it find cells to compare
    base = InferenceConfig(decode={"seed_thresh": 0.3})
    fp32 = P.predict_image([(model, family, 1.0)], image, base, device=cpu)
    S._autocast = spy
    try:
        fp16 = P.predict_image([(model, family, 1.0)], image,
                               InferenceConfig(decode={"seed_thresh": 0.3}, cuda_path_on_cpu=True),
                               device=cpu)
    finally:
        S._autocast = real_autocast
    assert calls and all(c == torch.float16 for c in calls)
    assert S._layout(torch.zeros(1, 1, 32, 32), cpu, InferenceConfig(cuda_path_on_cpu=True)
                     ).is_contiguous(memory_format=torch.channels_last)
    assert len(fp32) >= 10
    assert abs(len(fp16) - len(fp32)) <= max(1, 0.05 * len(fp32))
    iou = iou_matrix(fp32, fp16, shape=image.shape)
    assert iou.max(axis=1).mean() >= 0.9


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_if_native_follows_the_device(monkeypatch, native):
    """The CPU recipes' ``bfloat16_if_native``: bfloat16 autocast where the CPU has bf16 units,
    float32 (as "auto") where bfloat16 would only be emulated; the log line says which and why."""
    from cellseg import config
    from cellseg.config import load_train_config
    from cellseg.models import get_family
    from cellseg.training import loop
    from cellseg.training.distributed import DistInfo

    monkeypatch.setattr(config, "native_bfloat16", lambda device: native)
    dist = DistInfo(device=torch.device("cpu"))
    cfg = load_train_config("unet_competition_cpu")
    assert (cfg.train.amp, cfg.train.amp_dtype) == (True, "bfloat16_if_native")
    opts = loop._step_options(cfg, get_family("unet"), dist, False)
    line = loop.precision_line(opts, cfg)
    if native:
        assert opts.amp_dtype == torch.bfloat16 and line.startswith("precision: bfloat16 autocast")
    else:
        assert opts.amp_dtype is None and line.startswith("precision: float32 (")
        assert "no native bfloat16" in line


def test_native_bfloat16_reads_torchs_cpu_probes(monkeypatch):
    from cellseg.config import native_bfloat16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert native_bfloat16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bfloat16("cpu") is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bfloat16("cpu") is False  # private probes gone in a later torch: no
