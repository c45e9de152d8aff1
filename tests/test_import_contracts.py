"""The import rules of .importlinter hold, and a planted breach of each kind fails lint-imports."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (make test installs it)")


def _lint(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", str(ROOT / ".importlinter")], cwd=src.parent,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_the_tree_keeps_its_import_rules():
    res = _lint(ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("edge/core/formats.py", "import tensorflow", "never imports TensorFlow"),
    ("edge/app/inference.py", "from ...model import load_classifier", "never imports TensorFlow"),
    ("edge/core/rundir.py", "from ...data import splits", "never imports TensorFlow"),  # TF-free, but training's
    ("edge/bench/measure.py", "from ...train import stage1", "Nothing imports training code"),
    ("report/claims.py", "from ..export import verify", "cli -> features"),
    ("edge/app/device.py", "from ..bench import report", "cli -> features"),
    ("edge/core/cards.py", "from ..bench import report", "cli -> features"),
    # the imports the layout once let through as ignored: each is a breach again
    ("export/run.py", "from ..edge.bench import measure", "cli -> features"),
    ("export/run.py", "from ..edge.bench import emulate", "cli -> features"),
    ("report/build.py", "from ..train import schedule", "Nothing imports training code"),
    ("report/build.py", "from ..train.store import RunStore", "Nothing imports training code"),
    ("export/run.py", "from ..train import store", "Nothing imports training code"),
    ("sweep.py", "from .train import schedule", "Nothing imports training code"),
    ("edge/core/metrics.py", "from . import decision", "No import circle"),
])
def test_a_planted_breach_fails_lint_imports(tmp_path, module, line, contract):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "mstl", src / "mstl", ignore=shutil.ignore_patterns("__pycache__", "vendor"))
    target = src / "mstl" / module
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    res = _lint(src)
    assert res.returncode != 0, res.stdout[-3000:]
    broken = res.stdout.split("Broken contracts")[-1]
    assert contract in broken and "planted" not in res.stderr, res.stdout[-3000:]


def test_every_edge_module_imports_with_tensorflow_blocked():
    """Every module under mstl.edge, found by walking the package (a new one is covered without
    listing it), imports in a Python where TensorFlow, Keras and tf2onnx cannot be imported."""
    code = ("import importlib, pkgutil, sys\n"
            "for k in ('tensorflow', 'keras', 'tf2onnx'): sys.modules[k] = None\n"
            "import mstl.edge\n"
            "names = [m.name for m in pkgutil.walk_packages(mstl.edge.__path__, 'mstl.edge.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(len(names))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.strip()) >= 25, res.stdout  # core, bench and app: every module was walked
