"""The /device page in headless Chromium (phone viewport) against mstl-bench's native figures for the same
artifact on the same machine at 1 thread. Prints one name=value line per figure:

  browser_p50_ms       p50 of the page's pick: the fastest artifact that agrees with the server
  native_p50_ms        mstl-bench p50 of that artifact, 1 thread (LiteRT / ONNX Runtime in Python)
  browser_over_native  their ratio
  agreement            the pick's top-1 agreement with the server on the run's held-out images
  threads              WebAssembly threads the page used (cross-origin isolated: the cores)
  and per artifact: <artifact>_browser_p50_ms, _native_p50_ms, _ratio, _agreement

    .venv/bin/python benchmarks/browser_bench.py [--run-dir runs/demo] [--runs 100] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, help="WebAssembly threads (default: the page's choice)")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("needs Debian's chromium (make test installs it)")
    import uvicorn
    from playwright.sync_api import sync_playwright
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    from mstl.edge.core.machine import cpu_flags
    exports = a.run_dir / "exports"
    work = Path(tempfile.mkdtemp(prefix="browser-bench-"))
    run = work / "run"  # a scratch copy: the rows posted here do not join the real run's table
    shutil.copytree(a.run_dir, run, ignore=shutil.ignore_patterns("bench", "stage1", "stage2", "cache", "draws", "figures"))
    clf = Classifier(run / "exports" / "classifier-fp32.onnx", workers=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(clf), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    query = f"?runs={a.runs}&warmup=10" + (f"&threads={a.threads}" if a.threads else "")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        page.goto(f"http://127.0.0.1:{port}/device{query}")
        page.click("[data-testid=run]")
        page.wait_for_selector("[data-testid=done]:not([hidden])", timeout=900_000)
        best = page.get_attribute("[data-testid=best]", "data-artifact")
        browser.close()
    server.should_exit = True
    rows = {}
    for f in sorted((run / "bench" / "device").glob("*.json")):
        r = json.loads(f.read_text())
        rows[r["artifact"]] = r
    out = work / "native.json"
    subprocess.run([str(Path(sys.executable).parent / "mstl-bench"), str(exports), "--threads", "1", "--runs",
                    str(a.runs), "--json", str(out)], check=True, capture_output=True)
    native = {r["artifact"]: r for r in json.loads(out.read_text())["results"] if r.get("status") == "ok"}
    print(f"# {run.name}: {a.run_dir}; headless Chromium, phone viewport; {rows[best]['device'].get('hardware_concurrency')} "
          f"cores; cpu flags: {' '.join(cpu_flags())}")
    for name, r in rows.items():
        t = str(r["threads"])
        b, n = r["latency_ms"][t]["p50"], native[name]["latency_ms"]["1"]["p50"]
        stem = name.replace("classifier-", "").replace(".", "_")
        print(f"{stem}_browser_p50_ms={b:.2f}  ({r['runtime']} {r['backend']}, {t} thread(s))")
        print(f"{stem}_native_p50_ms={n:.2f}  ({native[name]['runtime']}, 1 thread)")
        print(f"{stem}_ratio={b / n:.2f}")
        print(f"{stem}_agreement={r['agreement']['rate']:.4f}  ({r['agreement']['agree']} of {r['agreement']['n']})")
    r = rows[best]
    t = str(r["threads"])
    print(f"pick={best}")
    print(f"browser_p50_ms={r['latency_ms'][t]['p50']:.2f}")
    print(f"native_p50_ms={native[best]['latency_ms']['1']['p50']:.2f}")
    print(f"browser_over_native={r['latency_ms'][t]['p50'] / native[best]['latency_ms']['1']['p50']:.2f}")
    fastest_native = min(native.values(), key=lambda x: x["latency_ms"]["1"]["p50"])
    print(f"browser_over_fastest_native={r['latency_ms'][t]['p50'] / fastest_native['latency_ms']['1']['p50']:.2f}  "
          f"({fastest_native['artifact']})")
    print(f"agreement={r['agreement']['rate']:.4f}")
    print(f"threads={t}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
