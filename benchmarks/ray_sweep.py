"""The same small study (demo preset) run serially and on a local Ray instance, each through the CLI in its
own process and run dir. Prints one name=value line per figure:

  identical_trials        1 when both runs recorded the same (size, frozen, seed) set and optimal depths
  max_val_acc_diff        largest |val accuracy| difference over the shared trials
  max_test_acc_diff       the same for the stage-2 test accuracies
  serial_s / ray_s        wall time of `mstl-train full` (stage 1, stage 2, report; TensorFlow start-up included)
  speedup                 serial_s / ray_s
  ray_launched / ray_committed / speculative_efficiency   trials the Ray run started, recorded, and their ratio
  plan_speedup_<N>w       the plan's projected speedup on N workers, from the Ray run's measured trial times
  threads                 serial: TensorFlow's default (all cores); Ray: --trial-cpus per trial

    .venv/bin/python benchmarks/ray_sweep.py [--workers 2] [--trial-cpus 1] [--weights FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCAL_WEIGHTS = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "mstl-train"), *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"mstl-train {' '.join(args[:3])} failed ({proc.returncode})")
    return time.perf_counter() - t0


def records(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--trial-cpus", type=float, default=1.0)
    ap.add_argument("--weights", default=str(LOCAL_WEIGHTS) if LOCAL_WEIGHTS.exists() else "none")
    ap.add_argument("--keep", type=Path, help="keep the two run dirs under this folder")
    a = ap.parse_args()
    from mstl.machine import cpu_flags
    root = a.keep or Path(tempfile.mkdtemp(prefix="ray-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    common = ["full", "--preset", "demo", "--weights", a.weights]
    serial_dir, ray_dir = root / "serial", root / "ray"
    for d in (serial_dir, ray_dir):
        shutil.rmtree(d, ignore_errors=True)
    serial_s = run([*common, "--run-dir", str(serial_dir)], env)
    ray_s = run([*common, "--run-dir", str(ray_dir), "--engine", "ray", "--trial-cpus", str(a.trial_cpus),
                 "--ray-cpus", str(a.workers)], env)
    s1, r1 = records(serial_dir, "results.jsonl"), records(ray_dir, "results.jsonl")
    key = lambda r: (r["size"], r["frozen"], r["seed"])  # noqa: E731
    sk, rk = {key(r): r for r in s1}, {key(r): r for r in r1}

    def optimal(recs):
        from mstl.train.store import best_record
        return {(s, seed): best_record([r for r in recs if (r["size"], r["seed"]) == (s, seed)])["frozen"]
                for s, _, seed in map(key, recs)}
    identical = sorted(sk) == sorted(rk) and len(sk) == len(s1) and len(rk) == len(r1) and optimal(s1) == optimal(r1)
    diff = max((abs(sk[k]["val_accuracy"] - rk[k]["val_accuracy"]) for k in sk if k in rk), default=float("nan"))
    s2 = {(r["size"], r["seed"]): r["accuracy"] for r in records(serial_dir, "stage2.jsonl")}
    r2 = {(r["size"], r["seed"]): r["accuracy"] for r in records(ray_dir, "stage2.jsonl")}
    diff2 = max((abs(s2[k] - r2[k]) for k in s2 if k in r2), default=float("nan"))
    ray_info = json.loads((ray_dir / "ray_stage1.json").read_text())
    plan = subprocess.run([str(BIN / "mstl-train"), "plan", "--preset", "demo", "--weights", a.weights, "--from-run",
                           str(ray_dir), "--workers", "1,2,4,8", "--lookahead", str(ray_info["lookahead"]), "--json"],
                          env=env, capture_output=True, text=True, check=True)
    projected = json.loads(plan.stdout)["scenarios"]["measured"]
    print(f"# demo preset, weights {Path(a.weights).name}; local Ray with {a.workers} CPU(s), {a.trial_cpus:g} per trial; "
          f"{os.cpu_count()} cores, cpu flags: {' '.join(cpu_flags())}")
    print(f"identical_trials={int(identical)}")
    print(f"max_val_acc_diff={diff:.6f}")
    print(f"max_test_acc_diff={diff2:.6f}")
    print(f"serial_s={serial_s:.1f}")
    print(f"ray_s={ray_s:.1f}")
    print(f"speedup={serial_s / ray_s:.2f}")
    print(f"ray_stage1_s={ray_info['wall_s']:.1f}")
    print(f"ray_launched={ray_info['launched']}")
    print(f"ray_committed={len(r1)}")
    print(f"speculative_efficiency={len(r1) / max(ray_info['launched'], 1):.2f}")
    for row in projected:
        print(f"plan_speedup_{row['workers']}w={row['speedup']}  (trials {row['trials']}, launched {row['launched']}, "
              f"wall {row['wall_s']:.0f}s)")
    print(f"threads=serial:default ray:{a.trial_cpus:g}")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
