"""Numeric config values are range-checked when the config is loaded: key, value, valid range,
exit 2 (like every other user mistake), before any data, model or PyTorch call."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from cellseg.cli import main
from cellseg.config import TrainConfig, config_names, load_train_config
from cellseg.configlib import ConfigError, Range
from cellseg.infer.config import InferenceConfig, TypeThresholds, load_inference_config


def _numeric(tp) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp) if a is not type(None) and a is not ...)


def _config_classes(cls, seen=None):
    seen = set() if seen is None else seen
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for cand in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(cand):
                _config_classes(cand, seen)
    return seen


def test_every_numeric_field_has_a_range_and_its_default_is_in_it():
    classes = _config_classes(TrainConfig) | {TypeThresholds}
    assert InferenceConfig in classes and len(classes) >= 8
    missing = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        ranges = getattr(cls, "RANGES", {})
        for f in dataclasses.fields(cls):
            if _numeric(hints[f.name]) and f.name not in ranges:
                missing.append(f"{cls.__name__}.{f.name}")
        default = cls()
        for name, rng in ranges.items():
            value = getattr(default, name)
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                assert v is None or v in rng, f"{cls.__name__}.{name}={v} outside {rng}"
    assert not missing, missing


def test_shipped_configs_are_in_range():
    for name in config_names():
        if name.startswith("infer"):
            load_inference_config(name)
        else:
            load_train_config(name)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0 is out of range, --set train.batch_size=0, "
                           "valid: batch_size >= 1"),
    ("optim.lr=-1e-3", "optim.lr=-0.001 is out of range, --set optim.lr=-1e-3, valid: lr >= 0"),
    ("optim.momentum=1", "valid: 0 <= momentum < 1"),
    ("train.epochs=0", "valid: epochs >= 1"),
    ("data.workers=-1", "valid: workers >= 0"),
    ("data.source_weights=[1, -0.5]", "data.source_weights[1]=-0.5 is out of range"),
    ("train.ema_decay=1.5", "valid: 0 <= ema_decay < 1"),
    ("val.infer.default.score_thresh=1.2", "val.infer.default.score_thresh=1.2 is out of range"),
    ("val.infer.types.astro.nms_iou=-0.1", "val.infer.types.astro.nms_iou=-0.1 is out of range"),
    ("val.infer.scale=0", "valid: scale > 0"),
])
def test_out_of_range_values_fail_at_load(override, message):
    with pytest.raises(ConfigError) as err:
        load_train_config("unet_tiny", [override])
    assert message in str(err.value)
    assert err.value.key == override.partition("=")[0]


def test_range_in_a_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  grad_accum: 0\n")
    with pytest.raises(ConfigError, match=r"train.grad_accum=0 is out of range, config .*bad.yaml, "
                                          r"valid: grad_accum >= 1"):
        load_train_config(p)


def test_nan_is_out_of_every_range():
    assert float("nan") not in Range(0)
    with pytest.raises(ConfigError, match="optim.lr=nan is out of range"):
        load_train_config("unet_tiny", ["optim.lr=.nan"])


def test_cli_zero_batch_size_is_one_line_exit_2(capsys, tmp_path):
    rc = main(["train", "--config", "unet_tiny", "--data", str(tmp_path), "--out",
               str(tmp_path / "run"), "--set", "train.batch_size=0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == ("cellseg train: train.batch_size=0 is out of range, "
                           "--set train.batch_size=0, valid: batch_size >= 1")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_predict_out_of_range_inference_value(capsys, tmp_path):
    rc = main(["predict", "--weights", str(tmp_path / "w.pt"), "--images", str(tmp_path),
               "--out", str(tmp_path / "s.csv"), "--set", "batch_size=0"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "batch_size=0 is out of range, --set batch_size=0, valid: batch_size >= 1" in err
