"""Fetch the in-browser runtimes from the npm registry into the package (build time, never at run time).

The device page (`mstl-app`, /device) runs the exported model in the browser with onnxruntime-web and
LiteRT.js. Hospitals and phones on a closed network have no CDN, so the JavaScript and WebAssembly
files ship inside the package: this script downloads the pinned npm packages (`npm pack`: the
registry's tarballs, integrity-checked by npm), copies the files the page loads into
src/mstl/edge/app/static/vendor/, and writes vendor.json (versions, integrity, each file's size and
sha256). `make install` runs it once; the wheel then carries the files.

    python scripts/fetch_web_assets.py [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "src" / "mstl" / "edge" / "app" / "static" / "vendor"
PACKAGES = {  # npm package@version -> {file in the tarball: where the page loads it from, under vendor/}
    "onnxruntime-web@1.30.0": {
        "package/dist/ort.wasm.min.mjs": "ort/ort.wasm.min.mjs",
        "package/dist/ort-wasm-simd-threaded.mjs": "ort/ort-wasm-simd-threaded.mjs",
        "package/dist/ort-wasm-simd-threaded.wasm": "ort/ort-wasm-simd-threaded.wasm",
        "package/package.json": "ort/package.json",  # its licence field (MIT)
    },
    "@litertjs/core@2.5.3": {
        "package/dist/index.js": "litert/index.js",
        "package/package.json": "litert/package.json",  # its licence field (Apache-2.0)
        "package/wasm/litert_wasm_internal.js": "litert/wasm/litert_wasm_internal.js",
        "package/wasm/litert_wasm_internal.wasm": "litert/wasm/litert_wasm_internal.wasm",
        "package/wasm/litert_wasm_threaded_internal.js": "litert/wasm/litert_wasm_threaded_internal.js",
        "package/wasm/litert_wasm_threaded_internal.wasm": "litert/wasm/litert_wasm_threaded_internal.wasm",
    },
    "@litertjs/wasm-utils@2.5.3": {
        "package/dist/index.js": "litert-wasm-utils/index.js",
    },
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def current() -> bool:
    """Whether vendor/ holds exactly the pinned packages' files, unaltered."""
    meta = VENDOR / "vendor.json"
    if not meta.exists():
        return False
    info = json.loads(meta.read_text())
    if sorted(info.get("packages", {})) != sorted(PACKAGES):
        return False
    return all((VENDOR / f).exists() and (VENDOR / f).stat().st_size == e["bytes"] for f, e in info["files"].items())


def fetch() -> dict:
    npm = shutil.which("npm")
    if not npm:
        raise SystemExit("npm is not installed: the device page's runtimes come from the npm registry at build time "
                         "(Debian: apt-get install npm). The rest of mstl works without them.")
    staging = Path(tempfile.mkdtemp(prefix="mstl-vendor-"))
    try:
        out = subprocess.run([npm, "pack", "--json", "--pack-destination", str(staging), *PACKAGES],
                             capture_output=True, text=True, cwd=staging)
        if out.returncode:
            raise SystemExit(f"npm pack failed ({out.returncode}): {out.stderr.strip()[-800:]}")
        packed = json.loads(out.stdout)
        new = staging / "vendor"
        info = {"packages": {}, "files": {}}
        for spec, entry in zip(PACKAGES, packed):
            info["packages"][spec] = {"integrity": entry.get("integrity"), "tarball": entry["filename"]}
            with tarfile.open(staging / entry["filename"]) as tar:
                for member, dest in PACKAGES[spec].items():
                    src = tar.extractfile(member)
                    if src is None:
                        raise SystemExit(f"{spec}: {member} is not in the package")
                    target = new / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(src.read())
                    info["files"][dest] = {"bytes": target.stat().st_size, "sha256": _sha256(target), "from": spec}
        info["total_bytes"] = sum(f["bytes"] for f in info["files"].values())
        (new / "vendor.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(VENDOR, ignore_errors=True)
        shutil.move(str(new), VENDOR)
        return info
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="fetch again even when vendor/ is current")
    a = ap.parse_args()
    if current() and not a.force:
        print(f"web assets: current ({VENDOR})")
        return
    info = fetch()
    print(f"web assets: {len(info['files'])} files, {info['total_bytes'] / 1e6:.1f} MB from "
          f"{', '.join(info['packages'])} -> {VENDOR}")


if __name__ == "__main__":
    sys.exit(main())
