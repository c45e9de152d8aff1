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
    ("formats.py", "import tensorflow", "never imports TensorFlow"),
    ("bench/measure.py", "from ..train import stage1", "Nothing imports training code"),
    ("report/claims.py", "from ..export import verify", "cli -> features"),
    ("metrics.py", "from . import decision", "No import circle"),
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
