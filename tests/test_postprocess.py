"""Postprocessing: thresholds per cell type, NMS, holes, rescoring, overlap removal, empty policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellseg.infer import postprocess as pp
from cellseg.infer.config import InferenceConfig, TypeThresholds, load_inference_config
from cellseg.core.instances import Instances

SHAPE = (40, 50)


def _square(y0, x0, size, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def _inst(masks, scores, labels=None, **extra) -> Instances:
    return Instances.from_dense(np.stack(masks), scores=np.asarray(scores, np.float32),
                                labels=None if labels is None else np.asarray(labels), **extra)


@st.composite
def random_instances(draw):
    n = draw(st.integers(0, 12))
    h, w = 24, 30
    masks, scores = [], []
    for _ in range(n):
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        if draw(st.booleans()):  # punch a hole / make it irregular
            m[(y0 + y1) // 2, :] = False
        masks.append(m)
        scores.append(draw(st.floats(0.0, 1.0)))
    if n == 0:
        return Instances((h, w))
    return _inst(masks, scores, idx=np.arange(n))


@settings(max_examples=60, deadline=None)
@given(random_instances(), st.floats(0.0, 1.0))
def test_remove_overlaps_output_never_overlaps(inst, drop):
    out = pp.remove_overlaps(inst, drop)
    labels = np.zeros(inst.image_shape, np.int32)
    for i in range(len(out)):
        d = out.dense(i)
        assert d.any()
        assert not (labels[d] > 0).any(), "two output cells share a pixel"
        labels[d] = i + 1
    # every kept cell is inside its original and keeps at least (1 - drop) of its area
    for i, k in enumerate(out.extra.get("idx", np.zeros(0)).astype(int)):
        orig = inst.dense(k)
        assert not (out.dense(i) & ~orig).any()
        assert out.areas[i] >= (1 - drop) * orig.sum() - 1e-9
        assert out.scores[i] == inst.scores[k]
    assert (np.diff(out.scores) <= 0).all()


@settings(max_examples=40, deadline=None)
@given(random_instances())
def test_full_postprocess_never_overlaps(inst):
    cfg = InferenceConfig(default=TypeThresholds(score_thresh=0.3, min_area=2, nms_iou=0.6),
                          overlap_drop=0.4)
    out = pp.postprocess(inst, cfg)
    total = sum(int(out.dense(i).sum()) for i in range(len(out)))
    assert total == int((out.to_label_image() > 0).sum())
    assert len(out) >= 1  # "best" policy: never an empty image (see test_empty_policy)


def test_remove_overlaps_drops_cells_that_lose_too_much():
    a = _square(0, 0, 10)      # 100 px, best
    b = _square(0, 5, 10)      # loses 50 of 100 px to a
    c = _square(20, 20, 10)    # untouched
    inst = _inst([a, b, c], [0.9, 0.8, 0.7])
    out = pp.remove_overlaps(inst, drop=0.4)  # b loses 50% > 40%: dropped
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    out = pp.remove_overlaps(inst, drop=0.6)  # b keeps its 50 free pixels
    assert out.areas.tolist() == [100, 50, 100]
    assert out.boxes[1].tolist() == [10, 0, 15, 10]  # box tightened to what remains


def test_mask_nms_keeps_best_of_duplicates():
    a = _square(0, 0, 10)
    b = _square(0, 1, 10)      # IoU 90/110 = 0.82 with a
    c = _square(20, 20, 10)
    inst = _inst([b, a, c], [0.5, 0.9, 0.7])
    out = pp.mask_nms(inst, 0.7)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    assert len(pp.mask_nms(inst, 0.9)) == 3
    assert len(pp.mask_nms(inst, 1.0)) == 3


def test_fill_holes_and_rescore():
    ring = _square(5, 5, 10)
    ring[8:12, 8:12] = False
    inst = _inst([ring], [0.8], mask_prob=np.array([0.5], np.float32))
    assert pp.fill_holes(inst).areas[0] == 100
    assert pp.rescore(inst).scores[0] == pytest.approx(0.4)
    assert pp.rescore(_inst([ring], [0.8])).scores[0] == pytest.approx(0.8)


def test_per_type_thresholds_and_cell_type_vote():
    cfg = load_inference_config(None, ["cell_type_names=[shsy5y,astro,cort]",
                                       "types.astro.score_thresh=0.6", "types.astro.min_area=50",
                                       "types.cort.score_thresh=0.2", "types.cort.min_area=1",
                                       "fill_holes=false"])
    small = _square(0, 0, 5)          # 25 px
    big = _square(10, 10, 10)         # 100 px
    low = _square(25, 30, 8)          # 64 px, score 0.3
    inst = _inst([small, big, low], [0.9, 0.9, 0.3], labels=[1, 1, 2])
    assert pp.vote_cell_type(inst, cfg.cell_type_names) == "astro"  # 1.8 vs 0.3
    out = pp.postprocess(inst, cfg)   # astro: score >= 0.6 and area >= 50 -> only `big`
    assert out.areas.tolist() == [100]
    out = pp.postprocess(inst, cfg, cell_type="cort")  # forced type: everything passes
    assert sorted(out.areas.tolist()) == [25, 64, 100]
    out = pp.postprocess(inst, cfg, cell_type="unknown")  # default: score 0.5, min_area 0
    assert sorted(out.areas.tolist()) == [25, 100]


def test_empty_policy():
    weak = _inst([_square(3, 3, 4), _square(20, 20, 6)], [0.1, 0.2])
    base = dict(default=TypeThresholds(score_thresh=0.5, min_area=0, nms_iou=0.5))
    best = pp.postprocess(weak, InferenceConfig(**base, empty_policy="best"))
    assert len(best) == 1 and best.scores[0] == pytest.approx(0.2) and best.areas[0] == 36
    ph = pp.postprocess(weak, InferenceConfig(**base, empty_policy="placeholder"))
    assert len(ph) == 1 and ph.scores[0] == 0 and ph.areas[0] == 9
    assert len(pp.postprocess(weak, InferenceConfig(**base, empty_policy="allow_empty"))) == 0
    nothing = Instances(SHAPE)
    out = pp.postprocess(nothing, InferenceConfig(**base, empty_policy="best"))
    assert len(out) == 1 and out.areas[0] == 9  # no candidate at all: the placeholder
    # a full-size placeholder fits tiny images too
    assert pp.placeholder((2, 2)).areas.tolist() == [4]


def test_default_yaml_loads_and_rejects_unknown_keys():
    cfg = load_inference_config("infer_default")
    assert cfg.thresholds_for("astro").min_area > 0
    from cellseg.config import ConfigError

    with pytest.raises(ConfigError, match="valid keys"):
        load_inference_config(None, ["types.astro.score=0.3"])
    with pytest.raises(ConfigError, match="unknown flip"):
        load_inference_config(None, ["tta=[x]"])


def test_filter_extra_drops_low_pred_iou_and_stability_only_when_present() -> None:
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.postprocess import filter_extra, postprocess

    masks = np.zeros((3, 20, 20), bool)
    masks[0, 1:5, 1:5] = masks[1, 8:12, 8:12] = masks[2, 14:19, 14:19] = True
    inst = Instances.from_dense(masks, scores=np.array([0.9, 0.8, 0.7], np.float32),
                                pred_iou=np.array([0.95, 0.4, 0.9]),
                                stability=np.array([0.99, 0.99, 0.5]))
    assert len(filter_extra(inst)) == 3  # 0 = off
    assert filter_extra(inst, min_pred_iou=0.5).scores.tolist() == pytest.approx([0.9, 0.7])
    assert filter_extra(inst, min_stability=0.8).scores.tolist() == pytest.approx([0.9, 0.8])
    plain = Instances.from_dense(masks)  # no extras: never dropped by these filters
    assert len(filter_extra(plain, min_pred_iou=0.9, min_stability=0.9)) == 3
    cfg = load_inference_config(None, ["default.score_thresh=0.1", "default.min_pred_iou=0.5",
                                       "default.min_stability=0.8", "default.min_area=1"])
    assert postprocess(inst, cfg).scores.tolist() == pytest.approx([0.9])


# ----------------------------------------------------------------------------- one default, one type rule


def test_one_default_config_and_how_files_and_overrides_change_it(tmp_path):
    """The dataclass defaults are the kit's one default: no config, the shipped name and
    ``InferenceConfig()`` agree; a file replaces the top-level keys it names; --set edits inside."""
    default = load_inference_config()
    assert default == load_inference_config("infer_default") == InferenceConfig()
    assert default.decode == {"seed_thresh": 0.7}
    assert {k: v.min_area for k, v in default.types.items()} == {"shsy5y": 40, "astro": 120,
                                                                  "cort": 60}
    own = tmp_path / "own.yaml"
    own.write_text("tile_size: 512\ntypes: {astro: {score_thresh: 0.4}}\n")
    cfg = load_inference_config(own)
    assert cfg.tile_size == 512 and cfg.decode == default.decode  # untouched keys: defaults
    assert list(cfg.types) == ["astro"] and cfg.types["astro"].min_area == 0  # replaced whole
    cfg = load_inference_config(None, ["types.astro.score_thresh=0.4"])
    assert cfg.types["astro"] == TypeThresholds(score_thresh=0.4, min_area=120)
    assert cfg.types["cort"] == default.types["cort"]  # an override edits inside
    from cellseg.config import ConfigError

    with pytest.raises(ConfigError, match="own.yaml"):  # a bad key is blamed on its file
        own.write_text("tile_sise: 512\n")
        load_inference_config(own)


def test_image_cell_type_given_then_vote_then_unknown():
    from cellseg.infer.celltype import image_cell_type, label_names
    from cellseg.models.base import ModelSpec, attach_spec
    import torch

    inst = _inst([_square(0, 0, 5), _square(10, 10, 5)], [0.9, 0.4], labels=[1, 0])
    assert image_cell_type(inst, ("shsy5y", "astro"), "cort") == "cort"  # --cell-type wins
    assert image_cell_type(inst, ("shsy5y", "astro")) == "astro"  # 0.9 vs 0.4
    assert image_cell_type(inst, ()) is None  # labels name no type: default thresholds
    typed = attach_spec(torch.nn.Linear(1, 1), ModelSpec("maskrcnn", class_map={"a": 1, "b": 0}))
    agnostic = torch.nn.Linear(1, 1)
    cfg = InferenceConfig()
    assert label_names(cfg, [(agnostic, None, 1.0)]) == ()
    assert label_names(cfg, [(agnostic, None, 1.0), (typed, None, 1.0)]) == ("b", "a")
    assert label_names(InferenceConfig(cell_type_names=("x",)), [(typed, None, 1.0)]) == ("x",)
