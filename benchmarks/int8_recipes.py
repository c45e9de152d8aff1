"""Int8 on a run dir: export with the recipe ladder, then time each int8 artifact against its fp32
sibling on this CPU. Prints one name=value line per figure.

    .venv/bin/python benchmarks/int8_recipes.py runs/xray [--runs 200] [--threads 1] [--reuse] [--portable-int8]
                                                          [--emulate N] [--gate-extra DIR] [--exports DIR]

--reuse takes the exports folder (RUN/exports, or --exports DIR) as it is instead of exporting again; --portable-int8
exports ONNX int8 as for an x86 CPU without VNNI (what such a CPU's export would ship); --emulate N
re-runs N of the gate's confirmation images through each int8 artifact under qemu-x86_64-static -cpu
Haswell (AVX2, no AVX-512/VNNI; Debian's qemu-user-static) and prints its agreement there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--portable-int8", action="store_true")
    ap.add_argument("--emulate", type=int, default=0, help="confirmation images to re-run on an emulated AVX2 CPU")
    ap.add_argument("--gate-extra", action="append", default=[], help="passed to mstl-export --gate-extra")
    ap.add_argument("--exports", type=Path, default=None, help="the exports folder (default RUN/exports)")
    args = ap.parse_args()
    exports = args.exports or args.run_dir / "exports"
    if not args.reuse:
        cli = Path(sys.executable).with_name("mstl-export")
        extra = [a for d in args.gate_extra for a in ("--gate-extra", d)]
        res = subprocess.run([str(cli), str(args.run_dir), "--int8", "--out", str(exports)]
                             + (["--portable-int8"] if args.portable_int8 else []) + extra, capture_output=True, text=True)
        if res.returncode not in (0, 2):  # 2: a gate failed; the figures still say by how much
            print(res.stdout[-2000:] + res.stderr[-2000:], file=sys.stderr)
            return res.returncode
    from mstl.edge.bench.measure import measure_isolated
    from mstl.edge.core.machine import cpu_flags, cpu_model, int8_speed_hint
    manifest = json.loads((exports / "manifest.json").read_text())
    rows = {a["key"]: a for a in manifest["artifacts"]}
    print(f"cpu={cpu_model()}")
    print(f"cpu_flags={','.join(cpu_flags())}")
    print(f"verification_images={manifest['verification_images']}")
    print(f"onnx_int8_built_for={manifest.get('onnx_int8_built_for', 'this CPU')}")
    x = None
    for fmt in ("tflite", "onnx"):
        q, f = rows.get(f"{fmt}-int8"), rows.get(f"{fmt}-fp32")
        if not q or not f:
            continue
        print(f"{fmt}_int8_confirm_agreement={q['agreement']:.4f}")
        print(f"{fmt}_int8_confirm_ci95={q['agreement_ci95'][0]:.4f},{q['agreement_ci95'][1]:.4f}")
        print(f"{fmt}_int8_confirm_flips={q.get('flips')}/{q['n_compared']}")
        print(f"{fmt}_int8_selection_agreement={q['selection']['agreement']:.4f}")
        print(f"{fmt}_int8_mac_share={q.get('int8_mac_share')}")
        print(f"{fmt}_int8_provisional={int(q.get('provisional', True))}")
        print(f"{fmt}_int8_status={q['status']}")
        print(f"{fmt}_int8_recipe={q.get('recipe')}")
        print(f"{fmt}_int8_recipes_tried=" + ";".join(
            f"{t['recipe']}:{t['status']}:{'-' if t.get('selection_agreement') is None else round(t['selection_agreement'], 4)}"
            for t in q.get("recipes_tried", [])))
        if "heldout" in q:
            h = q["heldout"]
            print(f"{fmt}_int8_heldout_accuracy_delta={h['accuracy_delta']:+.4f}")
            if "roc_auc_delta" in h:
                print(f"{fmt}_int8_heldout_auc_delta={h['roc_auc_delta']:+.4f}")
        if q.get("decision_agreement"):
            d = q["decision_agreement"]
            print(f"{fmt}_int8_decision_agreement={d['agreement']:.4f}")
            print(f"{fmt}_int8_decision_flips={d['flips']}/{d['n_compared']}")
            if (d.get("heldout") or {}).get("n"):
                print(f"{fmt}_int8_heldout_accuracy_delta_at_operating_point={d['heldout']['accuracy_delta']:+.4f}")
        print(f"{fmt}_int8_size_mb={q['size_bytes'] / 1e6:.2f}")
        p50 = {}
        for key, row in (("fp32", f), ("int8", q)):
            r = measure_isolated(str(exports / row["path"]), [args.threads], args.runs, 20, x, None, None, [])
            p50[key] = r["latency"][str(args.threads)]["p50"]
            print(f"{fmt}_{key}_p50_ms={p50[key]:.3f}")
        print(f"{fmt}_int8_speedup={p50['fp32'] / p50['int8']:.3f}")
    if args.emulate:
        from mstl.edge.bench.emulate import check
        emu = check(exports, args.emulate)
        for r in emu["artifacts"].values():
            print(f"{r['format']}_int8_emulated_avx2_agreement={r['agreement']:.4f}")
            print(f"{r['format']}_int8_emulated_avx2_max_abs_diff_vs_native={r['max_abs_diff_vs_native']:.6f}")
        print(f"emulated_images={emu['images']}")
    print(f"threads={args.threads}")
    print(f"int8_hint={int8_speed_hint(cpu_flags())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
