"""The deployed model's operating point and calibration, as figures: chosen on the validation split,
measured on the test split at that threshold (mstl-train operating-point does the work).

    python benchmarks/operating_point.py RUN_DIR [--operating-point sensitivity=0.95] [--reuse]

--reuse prints what selection.json holds instead of fitting again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/operating_point.py")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--operating-point", default="sensitivity=0.95")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    if args.reuse:
        d = json.loads((args.run_dir / "selection.json").read_text()).get("decision")
        if d is None:
            print(f"error: {args.run_dir}: no operating point in selection.json", file=sys.stderr)
            return 2
    else:
        from mstl.train.operating import NoValidationSplit, fit
        try:
            d = fit(args.run_dir, args.operating_point)
        except NoValidationSplit as e:
            print(f"operating_point=none: {e}")
            return 0
    print(f"rule={d['target']}")
    print(f"chosen_on={d['chosen_on']!r}")
    print(f"threshold={d['threshold']:.4f}")
    print(f"temperature={d['temperature']:.4f}")
    for split in ("validation", "test"):
        r = d.get(split)
        if not r:
            continue
        for key in ("sensitivity", "specificity"):
            lo, hi = r[f"{key}_ci95"] or (float("nan"), float("nan"))
            print(f"{'val' if split == 'validation' else split}_{key}={r[key]:.4f} [{lo:.4f}, {hi:.4f}] "
                  f"(n={r['n_positive'] if key == 'sensitivity' else r['n_negative']})")
    if "test_at_0.5" in d:
        print(f"test_sensitivity_at_0.5={d['test_at_0.5']['sensitivity']:.4f}")
        print(f"test_specificity_at_0.5={d['test_at_0.5']['specificity']:.4f}")
    c = d.get("calibration_test")
    if c:
        for key in ("ece_before", "ece_after", "brier_before", "brier_after"):
            print(f"{key}={c[key]:.4f}")
        if c.get("ece_if_calibrated"):
            f = c["ece_if_calibrated"]
            print(f"ece_if_calibrated={f['median']:.4f} [{f['ci95'][0]:.4f}, {f['ci95'][1]:.4f}] (n={f['images']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
