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
