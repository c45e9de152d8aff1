import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SHARED_DATA
from mstl.cli.train import app

runner = CliRunner()


def _jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("inspect", "full", "stage1", "stage2", "report"):
        assert cmd in res.output


def test_inspect_json_names_truncated_file(tmp_path):
    _jpeg(tmp_path / "train" / "A" / "a1.jpeg")
    _jpeg(tmp_path / "train" / "B" / "b1.jpeg", 1)
    good = tmp_path / "train" / "B" / "b1.jpeg"
    (tmp_path / "train" / "B" / "cut.jpeg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "train" / ".DS_Store").write_bytes(b"\0\0")
    res = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["layout"] == "split-folders" and info["total"] == 2
    assert info["classes"] == {"A": 1, "B": 1} and info["splits"] == {"train": {"A": 1, "B": 1}}
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in info["skipped"]["files"]}
    assert info["skipped"]["count"] == 2
    assert "truncated" in reasons["cut.jpeg"] and ".DS_Store" in reasons


def test_inspect_human_output_and_bad_path(tmp_path):
    _jpeg(tmp_path / "A" / "x.jpeg")
    res = runner.invoke(app, ["inspect", str(tmp_path), "-q"])
    assert res.exit_code == 0 and "class-folders" in res.output
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such file" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(not (SHARED_DATA / "chest-xray-pneumonia").exists(), reason="../shared/data not present")
def test_real_chest_xrays_counts():
    res = runner.invoke(app, ["inspect", str(SHARED_DATA / "chest-xray-pneumonia"), "--json"])
    info = json.loads(res.stdout)
    assert info["total"] == 5840
    assert info["splits"]["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert info["splits"]["test"] == {"NORMAL": 234, "PNEUMONIA": 390}
    assert info["patients"]["detected"]
    assert any(f["path"].endswith(".DS_Store") for f in info["skipped"]["files"])


@pytest.mark.skipif(not (SHARED_DATA / "oct2017-sample").exists(), reason="../shared/data not present")
def test_real_oct_sample():
    res = runner.invoke(app, ["inspect", str(SHARED_DATA / "oct2017-sample"), "--json"])
    info = json.loads(res.stdout)
    assert info["classes"] == {"CNV": 8, "DME": 8, "DRUSEN": 8, "NORMAL": 8}
    from mstl.edge.core.images import load_image
    from mstl.edge.core.sources import index_dataset
    arr = load_image(index_dataset(SHARED_DATA / "oct2017-sample").paths[0], 64)
    assert arr.shape == (64, 64, 3) and (arr[..., 0] == arr[..., 1]).all()  # grayscale to 3 equal channels
