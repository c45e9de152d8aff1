import pytest

from mstl.config import RunConfig, override, preset


def test_presets_validate_and_roundtrip():
    for name in ("paper", "demo", "smoke"):
        cfg = preset(name).validate()
        assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("paper").stage1.sizes[0] == 10_000 and preset("paper").stage2.target_size == 2800


def test_identity_ignores_paths_but_not_results():
    a = preset("smoke")
    b = override(a, bridge="/somewhere/else", target="/x")
    assert a.config_hash("d") == b.config_hash("d")
    c = override(a, **{"stage2.max_epochs": 7})
    assert a.config_hash("d") != c.config_hash("d")
    assert a.config_hash("d") != a.config_hash("other data")


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="scaling"):
        override(preset("smoke"), **{"data.scaling": "weird"})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_every_config_value_can_be_set_by_name():
    from mstl.config import apply_settings, settable_keys
    cfg = preset("paper")
    keys = settable_keys(cfg)
    assert {"stage2.learning_rate", "stage2.val_fraction", "stage2.batch_size", "model.dropout", "data_seed",
            "stage1.val_fraction"} <= set(keys)
    out = apply_settings(cfg, ["stage2.learning_rate=0.01", "model.dropout=0.3", "data.patient_split=yes",
                               "stage1.sizes=10k,20k", "data_seed=4", "stage2.positive_class=COVID-19"])
    assert out.stage2.learning_rate == 0.01 and out.model.dropout == 0.3 and out.data.patient_split is True
    assert out.stage1.sizes == (10_000, 20_000) and out.data_seed == 4 and out.stage2.positive_class == "COVID-19"
    with pytest.raises(ValueError, match="unknown key 'stage2.lr'.*stage2.learning_rate"):
        apply_settings(cfg, ["stage2.lr=0.1"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_settings(cfg, ["stage2.max_epochs=many"])
    with pytest.raises(ValueError, match="val_fraction must be in"):
        apply_settings(cfg, ["stage2.val_fraction=1.5"])


def test_paper_preset_is_the_paper_and_corrected_departs_where_documented():
    from mstl.config import PAPER_READINGS, departures_from_paper
    paper = preset("paper")
    assert paper.data.scaling == "unit" and paper.stage2.val_fraction == 0.0
    # the one departure: the operating point's carve-out, named, and gone when asked for
    assert [d["setting"] for d in departures_from_paper(paper)] == ["stage2.operating_fraction"]
    assert departures_from_paper(override(paper, **{"stage2.operating_fraction": 0.0})) == []
    moved = {d["setting"] for d in departures_from_paper(preset("corrected"))}
    assert moved == {"data.scaling", "data.patient_split", "model.bn_mode", "model.dropout", "stage2.val_fraction"}
    assert all(why.startswith(("stated:", "reading:")) for _, why in PAPER_READINGS.values())


def test_base_registry_limits_the_configuration():
    with pytest.raises(ValueError, match="start_frozen 500 is more than the 154 layers"):
        override(preset("smoke"), **{"stage1.start_frozen": 500})
    with pytest.raises(ValueError, match="base network must be one of"):
        override(preset("smoke"), **{"model.base": "resnet50"})
    # run dirs made before the registry keep their identity (and so can be resumed)
    assert "base" not in preset("paper").identity()["model"]


@pytest.mark.parametrize("key,value,words", [
    ("stage1.epochs", -3, "stage1.epochs must be at least 1"),
    ("stage2.batch_size", 0, "stage2.batch_size must be at least 1"),
    ("stage1.learning_rate", float("nan"), "stage1.learning_rate must be a positive number"),
    ("model.alpha", 7.0, "not 7.0; pick one of those"),
    ("cache_budget_gb", -1.0, "cache_budget_gb must be 0 or more"),
    ("stage1_seeds", 3, "N must be 1..1"),
    ("data_seeds", (0, -1), "seeds must be integers"),
    ("model.dropout", 1.0, "model.dropout must be in [0, 1)"),
])
def test_numbers_that_would_be_capped_or_fail_deep_are_refused(key, value, words):
    """Hostile or mistyped numbers are refused up front, naming the key (they were capped, ignored or
    failed deep in TensorFlow or numpy)."""
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        override(preset("paper"), **{key: value})
    override(preset("smoke"), **{"model.alpha": 0.6})  # no ImageNet weights: any width


@pytest.mark.slow
def test_registry_layer_count_is_the_built_networks():
    from mstl.bases import BASES
    from mstl.model import build_base
    for entry in BASES.values():
        assert len(build_base(entry.min_size, 0.35, "none", entry.name).layers) == entry.n_layers
