"""The export gate's confirmation, run again on another x86 CPU kind by user-mode emulation.

A machine has one CPU kind at a time, and int8 kernels differ between kinds (ONNX Runtime's u8s8 on
AVX2 without VNNI sums byte pairs in int16 with saturation). QEMU's ``qemu-x86_64-static -cpu
Haswell`` runs this same Python as an AVX2+FMA CPU with no AVX-512 and no VNNI, so the runtimes pick
their AVX2 kernels; timings under it mean nothing, answers are the check. No TensorFlow here: the
reference is the Keras model's probabilities the export saved beside its gate list.

    python -m mstl.edge.bench.emulate RUN/exports [--images N] [--cpu Haswell]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.agreement import GATE_LIST, GATE_REFERENCE, SELECTION

EMULATOR = "qemu-x86_64-static"


def emulator() -> str | None:
    return shutil.which(EMULATOR)


def confirmation(exports: Path, images: int | None) -> tuple[list[str], np.ndarray]:
    """The gate's confirmation images and the Keras model's probabilities for them."""
    from ..core.filelist import read_list
    list_path, ref_path = exports / GATE_LIST, exports / GATE_REFERENCE
    if not list_path.is_file() or not ref_path.is_file():
        raise FileNotFoundError(f"{exports}: no {GATE_LIST} / {GATE_REFERENCE} - export again with this mstl")
    sources, parts = read_list(list_path)
    reference = np.load(ref_path)
    keep = np.flatnonzero(parts != SELECTION)[:images]
    return [sources[i] for i in keep], reference[keep]


def probabilities(artifacts: list[Path], sources: list[str], size: int, resize: str,
                  cpu: str | None = None) -> dict[str, np.ndarray]:
    """Each artifact's probabilities on the images, natively (``cpu`` None) or under the emulator."""
    with tempfile.TemporaryDirectory(prefix="mstl-emulate-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.npz"
        spec.write_text(json.dumps({"artifacts": [str(a) for a in artifacts], "sources": sources,
                                    "size": size, "resize": resize}))
        cmd = [sys.executable, "-m", "mstl.edge.bench.emulate", "--worker", str(spec), str(out)]
        if cpu:
            if emulator() is None:
                raise FileNotFoundError(f"{EMULATOR} not found: install Debian's qemu-user-static")
            cmd = [emulator(), "-cpu", cpu] + cmd
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{'emulated ' + cpu if cpu else 'native'} run failed: {res.stderr[-1500:]}")
        with np.load(out) as z:
            return {Path(a).name: z[f"a{i}"] for i, a in enumerate(artifacts)}


def _worker(spec_path: str, out_path: str) -> None:
    from ..core.filelist import load_sources
    from ..core.runtimes import load_runtime
    spec = json.loads(Path(spec_path).read_text())
    pixels = load_sources(spec["sources"], spec["size"], spec["resize"])
    arrays = {f"a{i}": load_runtime(a, threads=1).predict(pixels) for i, a in enumerate(spec["artifacts"])}
    np.savez(out_path, **arrays)


def check(exports: Path, images: int | None = None, cpu: str = "Haswell") -> dict[str, Any]:
    """Per int8 artifact: agreement with the Keras model on the confirmation images under the emulated
    CPU, against the artifact's own gate, and how far its outputs there are from this machine's."""
    from ..core.agreement import verify
    from ..core.cards import CardError, card_of, read_manifest
    manifest = read_manifest(exports)
    sources, reference = confirmation(exports, images)
    int8 = [a for a in manifest["artifacts"] if a.get("precision") == "int8" and a.get("size_bytes")]
    paths = [exports / a["path"] for a in int8]
    size, resize = manifest["image_size"], manifest["resize_method"]
    native = probabilities(paths, sources, size, resize)
    emulated = probabilities(paths, sources, size, resize, cpu)
    out: dict[str, Any] = {"cpu": cpu, "images": len(sources), "artifacts": {}}
    for a, p in zip(int8, paths):
        card = card_of(p)
        if card is None or not isinstance((card.get("verification") or {}).get("threshold"), (int, float)):
            raise CardError(f"{p}.json: no model card with the export gate's threshold; re-export {p.name} (mstl-export)")
        threshold = card["verification"]["threshold"]
        got = verify(None, np.zeros((len(sources), 1)), reference, threshold, probs=emulated[p.name])
        status = got["status"]
        if card.get("built_for_cpus") == "exact-u8s8":  # QEMU's TCG has no VNNI: this is not its CPU kind
            status = f"not built for this CPU kind ({card['built_for_cpus']}; export with --portable-int8)"
        out["artifacts"][a["name"]] = {
            "format": a["format"], "agreement": got["agreement"], "flips": got["flips"], "n_compared": got["n_compared"],
            "threshold": threshold, "status": status, "built_for_cpus": card.get("built_for_cpus", "any"),
            "max_abs_diff_vs_native": float(np.abs(emulated[p.name] - native[p.name]).max()),
            "top1_equal_native": float(np.mean(emulated[p.name].argmax(1) == native[p.name].argmax(1)))}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[2])
        return 0
    ap = argparse.ArgumentParser(prog="python -m mstl.edge.bench.emulate")
    ap.add_argument("exports", type=Path)
    ap.add_argument("--images", type=int, default=None, help="confirmation images to run (default: all)")
    ap.add_argument("--cpu", default="Haswell", help="QEMU CPU model (Haswell: AVX2 + FMA, no AVX-512, no VNNI)")
    args = ap.parse_args(argv)
    try:
        res = check(args.exports, args.images, args.cpu)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = True
    for name, r in res["artifacts"].items():
        fam = r["format"]
        print(f"{fam}_int8_emulated_{args.cpu.lower()}_agreement={r['agreement']:.4f}")
        print(f"{fam}_int8_emulated_{args.cpu.lower()}_flips={r['flips']}/{r['n_compared']}")
        print(f"{fam}_int8_emulated_{args.cpu.lower()}_max_abs_diff_vs_native={r['max_abs_diff_vs_native']:.6f}")
        print(f"{fam}_int8_emulated_{args.cpu.lower()}_status={r['status']}")
        ok = ok and (r["status"] == "ok" or r["built_for_cpus"] == "exact-u8s8")
    print(f"emulated_images={res['images']}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
