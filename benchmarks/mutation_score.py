"""Mutation score per module: mutmut plants small bugs (a flipped comparison, a changed constant, a
dropped argument) in one module at a time and runs the fast tests that concern it; a mutant the tests
fail on is killed. Not part of make test (minutes per module).

    PYTHONPATH=src python benchmarks/mutation_score.py src/mstl/edge/core/metrics.py [MODULE ...]
    make mutation

Prints, per module, ``mutation_score_<module>=<killed / (total - equivalent)>`` and the counts. The
tests for a module come from pyproject.toml's [tool.mstl.mutation.tests] (any other module: pass
``--tests FILE ...``); [tool.mstl.mutation.equivalent] lists surviving mutants that cannot change
behaviour, with the reason, and they are left out of the total. Each module runs in its own scratch
folder (build/mutation/<module>/) so that mutmut's mutants/ never mixes two modules.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "build" / "mutation"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def module_name(module: str) -> str:
    """``src/mstl/report/claims.py`` -> ``report_claims``."""
    rel = Path(module).with_suffix("")
    parts = rel.parts[2:] if rel.parts[:2] == ("src", "mstl") else rel.parts
    return "_".join(parts)


def prepare(module: str, tests: list[str]) -> Path:
    """A scratch project: src/ and tests/ copied, and a pyproject.toml whose [tool.mutmut] mutates only
    ``module`` and runs only ``tests``."""
    base = _project()["tool"]["mutmut"]
    work = SCRATCH / module_name(module)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "vendor"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        f"source_paths = {_toml_list(base.get('source_paths', ['src']))}\n"
        f"only_mutate = {_toml_list([module])}\n"
        f"pytest_add_cli_args = {_toml_list(base.get('pytest_add_cli_args', []))}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        # pytest's own settings (markers, warning filters) as the project has them
        "[tool.pytest.ini_options]\n"
        f"markers = {_toml_list(_project()['tool']['pytest']['ini_options'].get('markers', []))}\n"
        f"filterwarnings = {_toml_list(_project()['tool']['pytest']['ini_options'].get('filterwarnings', []))}\n")
    return work


def score(module: str, tests: list[str], equivalent: dict[str, str], children: int) -> dict:
    work = prepare(module, tests)
    env = {**os.environ, "PYTHONPATH": "src", "TF_CPP_MIN_LOG_LEVEL": "2"}
    mutmut = [str(Path(sys.executable).with_name("mutmut"))]
    run = subprocess.run(mutmut + ["run", "--max-children", str(children)], cwd=work, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stdout + run.stderr)[-3000:]
        raise SystemExit(f"mutmut run failed for {module} (exit {run.returncode}):\n{tail}")
    subprocess.run(mutmut + ["export-cicd-stats"], cwd=work, env=env, check=True, capture_output=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = _survivors(work, mutmut, env)
    excluded = sorted(m for m in survivors if m in equivalent)
    total = stats["total"] - stats["skipped"] - len(excluded)
    stats.update({"module": module, "equivalent_excluded": excluded,
                  "survivors": sorted(m for m in survivors if m not in equivalent),
                  "score": stats["killed"] / total if total else None, "scored_total": total})
    return stats


def _survivors(work: Path, mutmut: list[str], env: dict) -> list[str]:
    out = subprocess.run(mutmut + ["results"], cwd=work, env=env, capture_output=True, text=True).stdout
    return [line.split(":")[0].strip() for line in out.splitlines() if line.strip().endswith(": survived")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="+", help="source files, e.g. src/mstl/edge/core/metrics.py")
    ap.add_argument("--tests", nargs="*", help="test files for a module not in [tool.mstl.mutation.tests]")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--show-survivors", action="store_true", help="print each surviving mutant's name")
    a = ap.parse_args()
    conf = _project()["tool"].get("mstl", {}).get("mutation", {})
    for module in a.modules:
        named = a.tests or conf.get("tests", {}).get(module) or []
        tests = [t for t in named if (ROOT / t.split("::")[0]).exists()]  # a test file not written yet is skipped
        if not tests:
            raise SystemExit(f"{module}: no tests named for it in [tool.mstl.mutation.tests]; pass --tests FILE ...")
        s = score(module, tests, conf.get("equivalent", {}), a.max_children)
        name = module_name(module)
        frac = "n/a" if s["score"] is None else f"{s['score']:.3f}"
        print(f"mutation_score_{name}={frac} killed={s['killed']} survived={len(s['survivors'])} "
              f"timeout={s['timeout']} suspicious={s['suspicious']} no_tests={s['no_tests']} "
              f"equivalent_excluded={len(s['equivalent_excluded'])} total={s['total']}", flush=True)
        if a.show_survivors:
            for m in s["survivors"]:
                print(f"  survived: {m}")


if __name__ == "__main__":
    main()
