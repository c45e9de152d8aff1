"""The layout's rules hold without exceptions: no contract of .importlinter ignores an import, and the
report and export read a run dir with the training package unimportable (the run dir's read side is
mstl.edge.core.rundir's RunDir, the stop rule mstl.sweep's)."""

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# mstl.train made unimportable: importing it, or anything under it, raises ImportError.
NO_TRAIN = "import sys\nsys.modules['mstl.train'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_no_contract_ignores_an_import():
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / ".importlinter")
    ignored = {name: section.get("ignore_imports", "").split() for name, section in contracts.items()
               if name.startswith("importlinter:contract:")}
    assert len(ignored) == 4, ignored
    assert all(not lines for lines in ignored.values()), ignored


@pytest.fixture
def run_dir(tmp_path):
    """A smoke-preset run dir written by hand: one finished stage-1 sweep of each size, no stage 2."""
    from mstl.config import preset
    import mstl.train.store as store
    run = store.RunStore(tmp_path / "run")
    run.open(preset("smoke"), "fp")
    for size, frozen, acc in ((24, 140, 0.6), (24, 120, 0.5), (48, 140, 0.6), (48, 120, 0.7)):
        run.add_trial({"size": size, "frozen": frozen, "seed": 1, "val_accuracy": acc, "val_loss": 1 - acc,
                       "seconds": 1.0, "n_train": size, "mode": "restart"})
    os.close(store.LOCKS_HELD.pop(str(run.dir.resolve())))
    return run.dir


def test_the_report_reads_a_run_without_training_code(run_dir):
    res = _run(NO_TRAIN + "from mstl.report.build import build_report, study_progress\n"
               "from mstl.edge.core.rundir import RunDir\n"
               f"run = {str(run_dir)!r}\n"
               "p = study_progress(RunDir(run))\n"
               "print(p['stage1_trials'], p['sweeps_unfinished'], p['stage2_planned'])\n"
               "print(build_report(run))\n")
    assert res.returncode == 0, res.stderr[-3000:]
    counts, report = res.stdout.strip().splitlines()[-2:]
    assert counts == "4 0 3"  # 4 trials, both sweeps ended by the stop rule, 3 stage-2 trainings planned
    text = Path(report).read_text()
    assert "| 48 | 120 | 70.0 |" in text  # the optimal depth of size 48, by the same stop rule as training


def test_export_reads_a_run_without_training_code(run_dir):
    """Export gets as far as the run's missing selection with mstl.train unimportable: its config,
    writer and file names come from the run dir's read side."""
    res = _run(NO_TRAIN + "from mstl.export.run import job_from_run\n"
               "try:\n"
               f"    job_from_run({str(run_dir)!r}, [], None, None, 10, 'uint8', {{}})\n"
               "except FileNotFoundError as e:\n"
               "    print('refused:', e)\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused:" in res.stdout and "no selection.json - stage 2 has not finished" in res.stdout, res.stdout


def test_a_folder_without_config_is_one_line_with_no_training_code_loaded(tmp_path):
    """The CLIs' known errors include the run dir's own (RunDirError), whether or not train.store was
    imported: a report of a folder that is no run is 'error: ...' and exit 2, not a traceback."""
    res = _run(NO_TRAIN + "import typer\nfrom mstl.cli.common import friendly\n"
               "from mstl.report.build import build_report\n"
               "try:\n"
               f"    friendly(lambda: build_report({str(tmp_path)!r}))()\n"
               "except typer.Exit as e:\n"
               "    sys.exit(e.exit_code)\n")
    assert res.returncode == 2, (res.stdout, res.stderr[-3000:])
    assert "Traceback" not in res.stderr + res.stdout
    assert f"{tmp_path}: no config.json - not a run directory" in " ".join((res.stdout + res.stderr).split())
