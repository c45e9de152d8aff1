"""`mstl-train config` and refusing a target that cannot measure a classifier."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from mstl.cli.train import app

runner = CliRunner()


def test_config_prints_the_resolved_configuration_with_overrides():
    res = runner.invoke(app, ["config", "--preset", "paper", "--sizes", "500,1000", "--scaling", "unit",
                              "--stop-accuracy", "0.9", "--weights", "none", "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)["config"]
    assert cfg["preset"] == "paper" and cfg["stage1"]["sizes"] == [500, 1000]
    assert cfg["data"]["scaling"] == "unit" and cfg["stage2"]["stop_train_accuracy"] == 0.9
    assert cfg["data"]["image_size"] == 150 and cfg["model"]["weights"] == "none"


def test_config_refuses_invalid_values_with_one_line():
    res = runner.invoke(app, ["config", "--preset", "smoke", "--scaling", "bogus", "--json"])
    assert res.exit_code == 2 and "scaling must be one of" in res.output and "Traceback" not in res.output


def test_target_with_a_class_missing_from_a_split_is_refused(tmp_path, demo_data):
    rng = np.random.default_rng(0)
    for cls, n in (("NORMAL", 40), ("RARE", 1)):
        (tmp_path / "t" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "t" / cls / f"{i}.png")
    res = runner.invoke(app, ["full", "--preset", "smoke", "--bridge", str(demo_data["oct"]), "--target",
                              str(tmp_path / "t"), "--positive-class", "RARE", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "no 'RARE' image in the" in res.output and "split" in res.output
    assert not (tmp_path / "run" / "stage2.jsonl").exists()
