"""The same small study run serially and on a local Ray instance, each through the CLI in its own
process and run dir, with the same TensorFlow threads per trial; then serially at 1 and at 2 threads;
and, with --emulate-haswell, a (smoke) study natively, serially under QEMU's Haswell CPU (AVX2 + FMA,
no AVX-512, no VNNI) and on Ray with its workers under it. Prints one name=value line per figure:

  identical_trials        1 when serial and Ray recorded the same (size, frozen, seed) set, the same optimal
                          depths and the same validation accuracy and loss to the last digit
  max_val_acc_diff        largest |val accuracy| difference over the shared trials (serial vs Ray)
  max_test_acc_diff       the same for the stage-2 test accuracies
  threads_serial / threads_ray   the TensorFlow threads every trial of each run recorded
  identical_decisions_1t_vs_2t   1 when the serial run at 2 threads per trial took the 1-thread run's
                          decisions (trials run, optimal depth and stop of every chain; decisions.json)
  max_val_acc_diff_1t_vs_2t      how far its validation accuracies moved meanwhile
  serial_s / ray_s / serial_2t_s wall time of `mstl-train full` (stage 1, stage 2, report; TF start-up included)
  speedup                 serial_s / ray_s
  ray_launched / ray_committed / speculative_efficiency   trials the Ray run started, recorded, and their ratio
  plan_speedup_<N>w       the plan's projected speedup on N workers, from the Ray run's measured trial times
  (--emulate-haswell: the --emulate-preset study natively, serially under the emulator, and on Ray with
  every worker under the emulator)
  identical_trials_haswell / max_val_acc_diff_haswell   serial vs Ray, both on the emulated CPU
  identical_decisions_haswell   1 when native, emulated serial and emulated Ray took the same decisions
  identical_trials_native_vs_haswell / max_val_acc_diff_native_vs_haswell   across the two CPU kinds
  haswell_trials_without_avx512 1 when every emulated trial recorded avx2 and no avx512f (it ran emulated)

    .venv/bin/python benchmarks/ray_sweep.py [--preset demo] [--workers 2] [--threads 1] [--weights FILE]
        [--keep DIR] [--emulate-haswell [--emulate-preset smoke] [--emulate-extra FLAGS]] [--skip-ray] [--skip-threads]
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
EMULATOR = "qemu-x86_64-static"


def run(args: list[str], env: dict, emulate: str | None = None) -> float:
    t0 = time.perf_counter()
    cmd = [str(BIN / "mstl-train"), *args]
    if emulate:  # user-mode QEMU runs this same Python as another CPU kind
        cmd = [EMULATOR, "-cpu", emulate, sys.executable, *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"mstl-train {' '.join(args[:3])}{' under ' + emulate if emulate else ''} failed "
                         f"({proc.returncode})")
    return time.perf_counter() - t0


def records(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]


def key(r: dict) -> tuple:
    return (r["size"], r["frozen"], r["seed"])


def decisions(run_dir: Path) -> list[dict]:
    """Each chain's trials, optimal depth and stop, without the figures behind them."""
    doc = json.loads((run_dir / "decisions.json").read_text())
    return [{k: c[k] for k in ("size", "seed", "trials", "optimal_frozen", "finished", "stopped")} for c in doc["chains"]]


def compare_trials(a: Path, b: Path) -> tuple[bool, float]:
    """(same trials with the same validation accuracy and loss to the last digit and the same decisions,
    largest validation accuracy difference over the shared trials)."""
    ra, rb = records(a, "results.jsonl"), records(b, "results.jsonl")
    ka, kb = {key(r): r for r in ra}, {key(r): r for r in rb}
    same_set = sorted(ka) == sorted(kb) and len(ka) == len(ra) and len(kb) == len(rb)
    same_values = all(ka[k]["val_accuracy"] == kb[k]["val_accuracy"] and ka[k]["val_loss"] == kb[k]["val_loss"]
                      for k in ka if k in kb)
    diff = max((abs(ka[k]["val_accuracy"] - kb[k]["val_accuracy"]) for k in ka if k in kb), default=float("nan"))
    return same_set and same_values and decisions(a) == decisions(b), diff


def threads_of(run_dir: Path) -> str:
    seen = sorted({r.get("threads", "unrecorded") for r in records(run_dir, "results.jsonl")}, key=str)
    return ",".join(map(str, seen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow threads per trial, both engines")
    ap.add_argument("--weights", default=str(LOCAL_WEIGHTS) if LOCAL_WEIGHTS.exists() else "none")
    ap.add_argument("--keep", type=Path, help="keep the run dirs under this folder")
    ap.add_argument("--emulate-haswell", action="store_true",
                    help="also run --emulate-preset serially under qemu-x86_64-static -cpu Haswell (slow)")
    ap.add_argument("--emulate-preset", default="smoke")
    ap.add_argument("--emulate-extra", default="", help="more mstl-train flags for the emulated study, e.g. "
                    "'--unfreeze-step 10 --min-frozen 100' (more depths, so more decisions)")
    ap.add_argument("--skip-ray", action="store_true", help="no serial-vs-Ray check on --preset")
    ap.add_argument("--skip-threads", action="store_true", help="no 1-vs-2-threads check on --preset")
    a = ap.parse_args()
    from mstl.edge.core.machine import cpu_flags
    root = a.keep or Path(tempfile.mkdtemp(prefix="ray-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    common = ["full", "--preset", a.preset, "--weights", a.weights, "--threads-per-trial", str(a.threads)]
    serial_dir, ray_dir, two_dir = root / "serial", root / "ray", root / "serial-2t"
    for d in (serial_dir, ray_dir, two_dir, root / "native", root / "haswell", root / "haswell-ray"):
        shutil.rmtree(d, ignore_errors=True)
    print(f"# preset {a.preset}, weights {Path(a.weights).name}; {a.threads} TensorFlow thread(s) per trial; "
          f"local Ray with {a.workers} CPU(s); {os.cpu_count()} cores, cpu flags: {' '.join(cpu_flags())}", flush=True)
    if not (a.skip_ray and a.skip_threads):
        serial_s = run([*common, "--run-dir", str(serial_dir)], env)
    if not a.skip_ray:
        ray_s = run([*common, "--run-dir", str(ray_dir), "--engine", "ray", "--ray-cpus", str(a.workers)], env)
        identical, diff = compare_trials(serial_dir, ray_dir)
        s2 = {(r["size"], r["seed"]): r["accuracy"] for r in records(serial_dir, "stage2.jsonl")}
        r2 = {(r["size"], r["seed"]): r["accuracy"] for r in records(ray_dir, "stage2.jsonl")}
        diff2 = max((abs(s2[k] - r2[k]) for k in s2 if k in r2), default=float("nan"))
        ray_info = json.loads((ray_dir / "ray_stage1.json").read_text())
        n_ray = len(records(ray_dir, "results.jsonl"))
        plan = subprocess.run([str(BIN / "mstl-train"), "plan", "--preset", a.preset, "--weights", a.weights,
                               "--threads-per-trial", str(a.threads), "--from-run", str(ray_dir),
                               "--workers", "1,2,4,8", "--lookahead", str(ray_info["lookahead"]), "--json"],
                              env=env, capture_output=True, text=True, check=True)
        projected = json.loads(plan.stdout)["scenarios"]["measured"]
        print(f"identical_trials={int(identical)}")
        print(f"max_val_acc_diff={diff:.6f}")
        print(f"max_test_acc_diff={diff2:.6f}")
        print(f"threads_serial={threads_of(serial_dir)}")
        print(f"threads_ray={threads_of(ray_dir)}")
        print(f"serial_s={serial_s:.1f}")
        print(f"ray_s={ray_s:.1f}")
        print(f"speedup={serial_s / ray_s:.2f}")
        print(f"ray_stage1_s={ray_info['wall_s']:.1f}")
        print(f"ray_launched={ray_info['launched']}")
        print(f"ray_committed={n_ray}")
        print(f"speculative_efficiency={n_ray / max(ray_info['launched'], 1):.2f}")
        for row in projected:
            print(f"plan_speedup_{row['workers']}w={row['speedup']}  (trials {row['trials']}, launched {row['launched']}, "
                  f"wall {row['wall_s']:.0f}s)", flush=True)
    elif not a.skip_threads:
        print(f"threads_serial={threads_of(serial_dir)}")
        print(f"serial_s={serial_s:.1f}", flush=True)
    if not a.skip_threads:
        other = 2 if a.threads != 2 else 1
        two_s = run([*common[:-1], str(other), "--run-dir", str(two_dir)], env)
        same_trials, diff_2t = compare_trials(serial_dir, two_dir)
        print(f"identical_decisions_{a.threads}t_vs_{other}t={int(decisions(serial_dir) == decisions(two_dir))}")
        print(f"identical_trials_{a.threads}t_vs_{other}t={int(same_trials)}")
        print(f"max_val_acc_diff_{a.threads}t_vs_{other}t={diff_2t:.6f}")
        print(f"threads_serial_{other}t={threads_of(two_dir)}")
        print(f"serial_{other}t_s={two_s:.1f}", flush=True)
    if a.emulate_haswell:
        emulated(a, root, env)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


def emulated(a, root: Path, env: dict) -> None:
    """The --emulate-preset study natively, then under QEMU's Haswell twice: serially (the whole
    process emulated) and on Ray (a native driver; every worker, where the trials run, emulated)."""
    args = ["full", "--preset", a.emulate_preset, "--threads-per-trial", str(a.threads), *a.emulate_extra.split()]
    if a.emulate_preset != "smoke":
        args += ["--weights", a.weights]
    native_dir, haswell_dir, haswell_ray_dir = root / "native", root / "haswell", root / "haswell-ray"
    native_s = run([*args, "--run-dir", str(native_dir)], env)
    haswell_s = run([*args, "--run-dir", str(haswell_dir)], env, emulate="Haswell")
    ray_env = {**env, "MSTL_RAY_WORKER_PYTHON": f"{EMULATOR} -cpu Haswell {sys.executable}",
               "RAY_worker_register_timeout_seconds": "900"}  # an emulated worker takes long to start
    haswell_ray_s = run([*args, "--run-dir", str(haswell_ray_dir), "--engine", "ray", "--ray-cpus", str(a.workers)],
                        ray_env)
    flags = {tuple(r.get("cpu_flags", ())) for d in (haswell_dir, haswell_ray_dir) for r in records(d, "results.jsonl")}
    same, diff = compare_trials(haswell_dir, haswell_ray_dir)
    same_native, diff_native = compare_trials(native_dir, haswell_dir)
    print(f"# emulated: preset {a.emulate_preset} {a.emulate_extra}; cpu flags the emulated trials recorded: "
          f"{' | '.join(' '.join(f) for f in sorted(flags))}")
    print(f"haswell_trials_without_avx512={int(all('avx512f' not in f and 'avx2' in f for f in flags))}")
    print(f"identical_trials_haswell={int(same)}")
    print(f"max_val_acc_diff_haswell={diff:.6f}")
    print(f"threads_serial_haswell={threads_of(haswell_dir)}")
    print(f"threads_ray_haswell={threads_of(haswell_ray_dir)}")
    print(f"identical_decisions_haswell={int(decisions(native_dir) == decisions(haswell_dir) == decisions(haswell_ray_dir))}")
    print(f"identical_trials_native_vs_haswell={int(same_native)}")
    print(f"max_val_acc_diff_native_vs_haswell={diff_native:.6f}")
    print(f"native_{a.emulate_preset}_s={native_s:.1f}")
    print(f"haswell_serial_s={haswell_s:.1f}")
    print(f"haswell_ray_s={haswell_ray_s:.1f}", flush=True)


if __name__ == "__main__":
    main()
