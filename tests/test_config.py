"""cellseg.config: from_dict / overrides / shipped configs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from cellseg.config import (ConfigError, TrainConfig, apply_overrides, config_names, from_dict,
                            load_train_config, load_yaml, parse_value, replace, save_yaml, to_dict)


@dataclass(frozen=True)
class Inner:
    size: int = 3
    ratio: float = 0.5
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: tuple[int, ...] = ()
    flag: bool = False


def test_from_dict_nested_and_defaults():
    cfg = from_dict(Outer, {"inner": {"size": 7}, "items": [1, 2]})
    assert cfg == Outer(Inner(size=7), (1, 2))
    assert from_dict(Outer, {}) == Outer()
    with pytest.raises(Exception):  # frozen
        cfg.flag = True  # type: ignore[misc]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"sise": 4}})
    msg = str(err.value)
    assert "inner.sise" in msg and "size, ratio, name" in msg
    with pytest.raises(ConfigError, match="valid keys: inner, items, flag"):
        from_dict(Outer, {"bogus": 1})


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="inner.size"):
        from_dict(Outer, {"inner": {"size": "big"}})
    with pytest.raises(ConfigError, match="flag"):
        from_dict(Outer, {"flag": "yes please"})
    with pytest.raises(ConfigError, match="inner.ratio"):
        from_dict(Outer, {"inner": {"ratio": None}})
    # coercions that are unambiguous
    cfg = from_dict(Outer, {"inner": {"ratio": "5e-4", "size": 4.0}})
    assert cfg.inner.ratio == 5e-4 and isinstance(cfg.inner.size, int)


def test_parse_value_is_yaml_typed():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-3") == 1e-3  # PyYAML alone would give the string "1e-3"
    assert parse_value("0.5") == 0.5
    assert parse_value("null") is None
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("adamw") == "adamw"
    assert parse_value("runs/x") == "runs/x"


def test_apply_overrides_does_not_mutate_and_types():
    base = {"optim": {"lr": 0.1}}
    out = apply_overrides(base, ["optim.lr=1e-3", "train.epochs=2", "train.ema_decay=null"])
    assert base == {"optim": {"lr": 0.1}}
    assert out == {"optim": {"lr": 1e-3}, "train": {"epochs": 2, "ema_decay": None}}
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(base, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(base, ["optim.lr.x=1"])


def test_train_config_roundtrip_yaml(tmp_path):
    cfg = from_dict(TrainConfig, {"data": {"sources": ["a", "b"]}, "optim": {"name": "sgd"}})
    assert cfg.data.sources == ("a", "b")
    path = tmp_path / "c.yaml"
    save_yaml(path, cfg)
    again = from_dict(TrainConfig, load_yaml(path))
    assert again == cfg
    assert replace(cfg, ["optim.lr=0.2"]).optim.lr == 0.2
    with pytest.raises(ConfigError, match="valid values"):
        replace(cfg, ["optim.name=rmsprop"])


def test_single_source_is_wrapped():
    cfg = from_dict(TrainConfig, {"data": {"sources": "data/comp"}})
    assert cfg.data.sources == ("data/comp",)


def test_shipped_configs_all_load():
    names = config_names()
    for expected in ("unet_tiny", "maskrcnn_tiny", "unet_livecell_pretrain",
                     "unet_competition_finetune", "maskrcnn_livecell_pretrain",
                     "maskrcnn_competition_finetune"):
        assert expected in names
    for name in names:
        if name.startswith("infer"):
            continue  # inference configs (cellseg.infer) share the folder
        cfg = load_train_config(name)
        assert cfg.model.family in ("unet", "maskrcnn", "promptseg")
    seed = load_train_config("maskrcnn_livecell_pretrain")
    assert (seed.optim.name, seed.optim.lr, seed.train.batch_size, seed.train.epochs) == \
        ("sgd", 1e-3, 2, 8)
    unet = load_train_config("unet_livecell_pretrain")
    assert (unet.optim.name, unet.optim.lr, unet.train.epochs) == ("adam", 5e-4, 12)


def test_load_train_config_overrides_and_errors(tmp_path):
    cfg = load_train_config("unet_tiny", ["train.epochs=3", "optim.lr=2e-3"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 2e-3
    with pytest.raises(ConfigError, match="train.epoch, --set train.epoch=3, did you mean "
                                          "train.epochs\\? valid keys"):
        load_train_config("unet_tiny", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="no config named 'unet_tny'.*did you mean 'unet_tiny'"
                                          ".*shipped configs: .*unet_tiny"):
        load_train_config("unet_tny")
    p = tmp_path / "mine.yaml"
    p.write_text("model: {family: unet}\ntrain: {epochs: 1}\n")
    assert load_train_config(p).train.epochs == 1
    # a typo in the file itself names the file
    p.write_text("optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(p)
    assert err.value.key == "optim.lrr" and f"config {p}" in str(err.value)
    assert "did you mean optim.lr?" in str(err.value)
    assert "\n" not in str(err.value)


def test_val_infer_is_typed_and_checked_at_load_time():
    from cellseg.infer.config import InferenceConfig, TypeThresholds

    cfg = load_train_config("unet_tiny", ["val.infer.tta=[h]",
                                          "val.infer.types.astro.min_area=50"])
    assert isinstance(cfg.val.infer, InferenceConfig)
    assert cfg.val.infer.tta == ("h",)
    assert cfg.val.infer.types["astro"] == TypeThresholds(min_area=50)
    assert from_dict(TrainConfig, {}).val.infer == InferenceConfig()
    with pytest.raises(ConfigError) as err:
        load_train_config("unet_tiny", ["val.infer.tile_sise=256"])
    assert err.value.key == "val.infer.tile_sise"
    assert "did you mean val.infer.tile_size?" in str(err.value)
    # per-type thresholds are typed too: a typo deep inside fails with its full path
    with pytest.raises(ConfigError, match="val.infer.types.astro.score_thres,.*did you mean "
                                          "val.infer.types.astro.score_thresh"):
        load_train_config("unet_tiny", ["val.infer.types.astro.score_thres=0.4"])
    # cross-field rules of InferenceConfig name the nested key
    with pytest.raises(ConfigError) as err:
        load_train_config("unet_tiny", ["val.infer.tile_size=64", "val.infer.overlap=96"])
    assert err.value.key == "val.infer.overlap" and "--set val.infer.overlap=96" in str(err.value)
    # a training config round-trips through its plain dict (checkpoints store that)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_one_loader_for_both_configs(tmp_path):
    from cellseg.configlib import load_config
    from cellseg.infer.config import InferenceConfig, load_inference_config

    p = tmp_path / "tuned.yaml"
    p.write_text("infer: {scale: 2.0}\n")  # a tuned file nested under "infer"
    assert load_inference_config(p).scale == 2.0
    assert load_config(InferenceConfig, p, section="infer") == load_inference_config(p)
    assert load_config(TrainConfig, "unet_tiny") == load_train_config("unet_tiny")
    cfg = load_inference_config(None, ["scale=1.5"])
    assert load_inference_config(cfg, ["tta=[v]"]) == InferenceConfig(scale=1.5, tta=("v",))
    with pytest.raises(ConfigError, match="out of range, --set scale=-1, valid: scale > 0") as err:
        load_inference_config(None, ["scale=-1"])
    assert err.value.key == "scale"


def test_model_args_are_typed_by_the_family_args_class():
    from cellseg.models.args import FAMILY_ARGS, MaskRCNNArgs

    for name in config_names():  # every shipped training config types its model.args
        if not name.startswith("infer"):
            cfg = load_train_config(name)
            assert type(cfg.model.args) is FAMILY_ARGS[cfg.model.family], name
    cfg = load_train_config("unet_tiny")
    assert cfg.model.args.in_channels == 1 and cfg.model.args["norm"] == "dataset"
    assert cfg.model.args.encoder_depth == 5  # defaults filled in, once, from UNetArgs
    assert dict(**cfg.model.args)["decoder_channels"] == (64, 32, 16, 16, 8)  # reads as a mapping
    mr = load_train_config("maskrcnn_tiny", ["model.args.input_scale=2", "model.args.heads=v2"])
    assert mr.model.args.input_scale == 2.0 and isinstance(mr.model.args.input_scale, float)
    assert from_dict(TrainConfig, to_dict(mr)) == mr  # checkpoints store the plain dict
    with pytest.raises(ConfigError, match="unknown key model.args.not_an_arg, --set model.args."
                                          "not_an_arg=1, valid keys: encoder_name, "):
        load_train_config("unet_tiny", ["model.args.not_an_arg=1"])
    with pytest.raises(ConfigError, match="did you mean model.args.encoder_name\\?") as err:
        load_train_config("unet_tiny", ["model.args.encoder_nam=x"])
    assert err.value.key == "model.args.encoder_nam"
    # the detector of promptseg is typed with the detector family's class
    assert isinstance(load_train_config("promptseg_tiny").model.args.detector, MaskRCNNArgs)
    with pytest.raises(ConfigError, match="model.args.detector.backbon.*did you mean "
                                          "model.args.detector.backbone\\?"):
        load_train_config("promptseg_tiny", ["model.args.detector.backbon=resnet18"])
    # wrong values and cross-field rules fail when the config is loaded, naming the key
    with pytest.raises(ConfigError, match="heads='v3' is not allowed.*valid values: 'v1', 'v2'"):
        load_train_config("maskrcnn_tiny", ["model.args.heads=v3"])
    with pytest.raises(ConfigError, match="--set model.args.decoder_channels=.*one channel count"
                       ) as err:
        load_train_config("unet_tiny", ["model.args.decoder_channels=[8, 8]"])
    assert err.value.key == "model.args.decoder_channels"
    with pytest.raises(ConfigError, match="in_channels='x' must be an integer"):
        load_train_config("unet_tiny", ["model.args.in_channels=x"])
    with pytest.raises(ConfigError, match="unknown model family 'unett'.*valid families: "
                                          "maskrcnn, promptseg, unet"):
        load_train_config("unet_tiny", ["model.family=unett"])


def test_to_dict_is_plain():
    d = to_dict(from_dict(TrainConfig, {"data": {"sources": ["x"]}}))
    assert d["data"]["sources"] == ["x"] and isinstance(d["model"], dict)


def test_a_config_starts_from_its_base(tmp_path):
    """``base:`` loads a shipped config or a YAML (relative to the file) and changes only the
    keys the file names, section by section."""
    small = load_train_config("unet_small_real")
    mine = tmp_path / "sub" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("base: unet_small_real\ndata: {crop_size: 320}\ntrain: {epochs: 5}\n"
                    "model: {args: {centre: distance}}\n")
    cfg = load_train_config(mine)
    assert (cfg.data.crop_size, cfg.train.epochs) == (320, 5)
    # everything else, inside the changed sections too, is the base's: model.args key by key
    assert cfg.data.samples_per_epoch == small.data.samples_per_epoch
    assert cfg.train.batch_size == small.train.batch_size
    assert small.model.args["centre"] == "peak"
    assert cfg.model.args == dataclasses.replace(small.model.args, centre="distance")
    assert cfg.model.family == small.model.family
    # a chain through a relative path, then overrides on top
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: mine.yaml\noptim: {lr: 3.0e-4}\n")
    cfg = load_train_config(child, ["train.epochs=2"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.data.crop_size, cfg.train.epochs) == \
        (3e-4, small.optim.name, 320, 2)
    # a loop is one clear error
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="config bases loop"):
        load_train_config(loop)
    with pytest.raises(ConfigError, match="no config named 'unet_smal'"):
        mine.write_text("base: unet_smal\n")
        load_train_config(mine)
