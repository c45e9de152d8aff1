import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own decoded-image cache and demo data, never the user's."""
    os.environ["MSTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("mstl-cache"))
    os.environ.pop("MSTL_WEIGHTS", None)
    yield


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from mstl.data.synthetic import make_cxr_demo, make_oct_demo
    root = tmp_path_factory.mktemp("demo")
    return {"oct": make_oct_demo(root / "oct", 16), "cxr": make_cxr_demo(root / "cxr", 20)}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One end-to-end smoke run shared by the training, export and bench tests."""
    from typer.testing import CliRunner
    from mstl.cli.train import app
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    res = CliRunner().invoke(app, ["full", "--preset", "smoke", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return run_dir


@pytest.fixture(scope="session")
def smoke_exports(smoke_run):
    """The smoke run exported to every format of the table. ONNX int8 for every x86 CPU: its integer
    products are then exact on the CI machine of either kind (with VNNI or without), so the tests see
    the same artifact on both; the CPU-dependent ladder has tests of its own."""
    from typer.testing import CliRunner
    from mstl.cli.export import app
    res = CliRunner().invoke(app, [str(smoke_run), "--int8", "--fp16", "--dynamic", "--portable-int8"])
    assert res.exit_code == 0, res.output
    return smoke_run / "exports"
