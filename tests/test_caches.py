"""The caches change speed, never results: float32 activation caching and the stage-2 embedding cache
reproduce the plain path."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_data():
    from mstl.config import preset
    from mstl.train.run import prepare
    return prepare(preset("smoke"), quiet=True)


def test_cut_points_match_mobilenetv2_blocks():
    from mstl.model import build_base
    from mstl.train.prefix_cache import cut_for, cut_points
    cuts = cut_points(build_base(96, 1.0, "none"))
    # single-tensor cuts listed in STACK.md for width 1.0
    for c in (80, 89, 90, 97, 106, 115, 116, 124):
        assert c in cuts, c
    for c in (81, 85, 107, 110):
        assert c not in cuts, c
    assert cut_for(85, cuts) == 80 and cut_for(120, cuts) == 119 and cut_for(116, cuts) == 115 and cut_for(1, cuts) is None


def test_activation_cache_reproduces_plain_trial(smoke_data, tmp_path):
    from mstl.train.prefix_cache import PrefixCacheStore, cut_for, cut_points
    from mstl.train.run import bn_calibration
    from mstl.train.stage1 import run_trial
    from mstl.model import base_of
    cfg = smoke_data.cfg
    size = min(smoke_data.splits)
    split = smoke_data.splits[size]
    cal = bn_calibration(smoke_data)
    images = smoke_data.bridge.images
    store = PrefixCacheStore(tmp_path / "cache", np.concatenate([split.train, split.val]), "float32", 1e9)

    def prefix(model, frozen):
        return store.get(model, cut_for(frozen, cut_points(base_of(model))), "seed1", images)

    m_plain, r_plain = run_trial(cfg, images, split, 4, 120, 1, verbose=False, calibration=cal)
    m_cache, r_cache = run_trial(cfg, images, split, 4, 120, 1, verbose=False, calibration=cal, prefix=prefix)
    assert r_cache["cache_cut"] is not None and r_plain["cache_cut"] is None
    assert r_cache["epochs"] == r_plain["epochs"]
    assert r_cache["val_accuracy"] == r_plain["val_accuracy"]
    assert r_cache["val_loss"] == pytest.approx(r_plain["val_loss"], rel=1e-4, abs=1e-5)
    x = np.asarray(images[split.val], dtype="float32")
    np.testing.assert_allclose(m_cache.predict(x, verbose=0), m_plain.predict(x, verbose=0), atol=1e-4)


def test_cache_budget_falls_back(smoke_data, tmp_path):
    from mstl.train.prefix_cache import PrefixCacheStore
    from mstl.model import build_classifier
    store = PrefixCacheStore(tmp_path / "c", np.arange(10), "float16", budget_bytes=10)
    m = build_classifier(smoke_data.cfg.model, 32, 4, "imagenet")
    assert store.get(m, 80, "x", smoke_data.bridge.images) is None
    assert not list((tmp_path).glob("c/*.npy"))


def test_depth_session_trials_match_fresh_trials(smoke_data, tmp_path):
    """Sizes sharing one built model per depth get the results fresh builds give, in any order."""
    from mstl.model import base_of
    from mstl.train.prefix_cache import PrefixCacheStore, cut_for, cut_points
    from mstl.train.run import bn_calibration
    from mstl.train.stage1 import DepthSession, run_trial
    from dataclasses import replace
    cfg = replace(smoke_data.cfg, model=replace(smoke_data.cfg.model, dropout=0.3))  # dropout's seed state too
    images = smoke_data.bridge.images
    cal = bn_calibration(smoke_data)
    rows = np.concatenate([np.concatenate([s.train, s.val]) for s in smoke_data.splits.values()])
    store = PrefixCacheStore(tmp_path / "cache", rows, "float32", 1e9)

    def prefix(model, frozen):
        return store.get(model, cut_for(frozen, cut_points(base_of(model))), "seed1", images)

    sizes = sorted(smoke_data.splits)
    session = DepthSession(cfg, 4, 120, 1, cal, prefix)
    shared = {s: run_trial(cfg, images, smoke_data.splits[s], 4, 120, 1, verbose=False, session=session)[1]
              for s in reversed(sizes)}
    for s in sizes:
        fresh = run_trial(cfg, images, smoke_data.splits[s], 4, 120, 1, verbose=False, calibration=cal, prefix=prefix)[1]
        assert shared[s]["val_accuracy"] == fresh["val_accuracy"] and shared[s]["epochs"] == fresh["epochs"]
        assert shared[s]["val_loss"] == pytest.approx(fresh["val_loss"], rel=1e-5, abs=1e-6)


def test_activation_cache_made_under_another_identity_is_rebuilt(smoke_data, tmp_path):
    """--restart with other weights or rows must not reuse an old cache file that has the same name."""
    from mstl.config import ModelConfig
    from mstl.model import base_of, build_classifier
    from mstl.train.prefix_cache import PrefixCacheStore, cut_for, cut_points
    size = min(smoke_data.splits)
    rows = np.concatenate([smoke_data.splits[size].train, smoke_data.splits[size].val])
    images = smoke_data.bridge.images
    cfg = smoke_data.cfg
    built = []
    for identity, seed in (("run-a", 1), ("run-a", 1), ("run-b", 2)):
        from mstl.tf_env import keras
        keras.utils.set_random_seed(seed)
        model = build_classifier(ModelConfig(alpha=0.35, weights="none"), cfg.data.image_size, 4, cfg.data.scaling)
        cut = cut_for(130, cut_points(base_of(model)))
        store = PrefixCacheStore(tmp_path / "cache", rows, "float32", 1e9, identity=identity)
        built.append(np.array(store.get(model, cut, "pretrained", images).array))
    np.testing.assert_array_equal(built[0], built[1])  # same identity: reused
    assert not np.allclose(built[0], built[2])  # other weights under another identity: rebuilt, not reused


def test_litert_feature_pass_equals_keras(smoke_data, monkeypatch):
    """Above its size threshold the stage-2 feature pass runs in LiteRT: the same features to float rounding."""
    from mstl.model import build_classifier
    from mstl.train import frozen_pass
    from mstl.train.stage2 import _features
    cfg = smoke_data.cfg
    t = smoke_data.target_splits
    rows = np.concatenate([t.train, t.test])
    model = build_classifier(cfg.model, cfg.data.image_size, 2, cfg.data.scaling,
                             calibration_images=np.asarray(smoke_data.target.images[t.train[:32]], np.float32))
    monkeypatch.setattr(frozen_pass, "MIN_IMAGES", 10 ** 9)
    by_keras = _features(model, smoke_data.target.images, rows)
    used = []
    real = frozen_pass.litert_runner
    monkeypatch.setattr(frozen_pass, "MIN_IMAGES", 1)
    monkeypatch.setattr(frozen_pass, "litert_runner", lambda *a: used.append(1) or real(*a))
    by_litert = _features(model, smoke_data.target.images, rows)
    assert used and by_litert.shape == by_keras.shape
    np.testing.assert_allclose(by_litert, by_keras, rtol=1e-4, atol=1e-5)


def test_litert_activation_cache_equals_keras(smoke_data, tmp_path, monkeypatch):
    """Above the same threshold the stage-1 activation cache is computed in LiteRT: the same activations
    to float rounding, whatever the last batch's size."""
    from mstl.model import base_of, build_classifier
    from mstl.train import frozen_pass
    from mstl.train.prefix_cache import PrefixCacheStore, cut_for, cut_points
    cfg = smoke_data.cfg
    split = smoke_data.splits[max(smoke_data.splits)]
    rows = np.concatenate([split.train, split.val])
    assert len(rows) % frozen_pass.BATCH  # a padded last batch is part of what is checked
    model = build_classifier(cfg.model, cfg.data.image_size, 4, cfg.data.scaling,
                             calibration_images=np.asarray(smoke_data.bridge.images[rows[:32]], np.float32))
    cut = cut_for(130, cut_points(base_of(model)))
    arrays = []
    for threshold, folder in ((10 ** 9, "keras"), (1, "litert")):
        monkeypatch.setattr(frozen_pass, "MIN_IMAGES", threshold)
        store = PrefixCacheStore(tmp_path / folder, rows, "float32", 1e9)
        arrays.append(np.array(store.get(model, cut, "pretrained", smoke_data.bridge.images).array))
    assert arrays[0].shape == arrays[1].shape
    np.testing.assert_allclose(arrays[1], arrays[0], rtol=1e-4, atol=1e-4)
