"""The app's /device page: the exported models run in a (headless, phone-sized) browser, their rows are
posted, checked by the server and shown by mstl-bench; nothing is fetched from outside the server."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

VENDOR = Path(__file__).resolve().parents[1] / "src" / "mstl" / "edge" / "app" / "static" / "vendor" / "vendor.json"


@pytest.fixture
def bench_app(smoke_exports, tmp_path):
    """The smoke run's exports in a scratch run dir (rows land in its bench/device/), served by the app."""
    from starlette.testclient import TestClient
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    run = tmp_path / "run"
    shutil.copytree(smoke_exports.parent, run, ignore=shutil.ignore_patterns("bench", "stage1", "stage2", "cache"))
    clf = Classifier(run / "exports" / "classifier-int8.tflite", workers=1, uncertain_band=0.05)
    return run, create_app(clf), TestClient(create_app(clf))


def test_manifest_lists_verified_artifacts_with_the_servers_answers(bench_app):
    run, _, client = bench_app
    r = client.get("/device/manifest")
    assert r.status_code == 200
    assert r.headers["cross-origin-opener-policy"] == "same-origin"
    assert r.headers["cross-origin-embedder-policy"] == "require-corp"
    m = r.json()
    names = {x["name"] for x in m["models"]}
    assert {"classifier-fp32.onnx", "classifier-int8.onnx", "classifier-int8.tflite"} <= names
    n = len(m["samples"])
    assert n == len((run / "target_test.tsv").read_text().splitlines()) and n > 0
    assert all("reference" not in x for x in m["models"])  # the server's answers stay on the server
    assert client.get("/device/models/../config.json").status_code == 404
    assert client.get("/device/models/config.json").status_code == 404
    assert client.get(f"/device/samples/{n}").status_code == 404
    assert client.get("/device").headers["cross-origin-embedder-policy"] == "require-corp"
    assert (m["runtimes"] is not None) == VENDOR.exists()


def _reference(run, name):
    from mstl.edge.app.device import DeviceBench
    return DeviceBench(run / "exports").reference(name).tolist()


def _post(m, name, probs, **over):
    body = {"session": m["session"]["id"], "artifact": name, "runtime": "test", "backend": "wasm", "threads": 2, "runs": 10, "load_ms": 10.0,
            "first_ms": 3.0, "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.1}, "e2e_ms": None,
            "probs": probs, "device": {"user_agent": "UA", "hardware_concurrency": 8, "evil": "x" * 10}}
    body.update(over)
    return body


def test_posted_rows_are_checked_not_trusted(bench_app):
    run, _, client = bench_app
    m = client.get("/device/manifest").json()
    onnx = next(x for x in m["models"] if x["name"] == "classifier-int8.onnx")
    reference = _reference(run, onnx["name"])
    flipped = [p[::-1] for p in reference]  # every label swapped
    r = client.post("/device/results", json=_post(m, onnx["name"], flipped))
    assert r.status_code == 200
    row = r.json()
    assert row["agreement"]["rate"] == 0.0 and row["agreement"]["low"] is True and "LOW" in " ".join(row["notes"])
    assert "evil" not in row["device"] and row["measured_in"] == "browser"
    for bad, why in ((_post(m, "nope.onnx", flipped), "not a verified artifact"),
                     (_post(m, onnx["name"], flipped[:-1]), "probabilities"),
                     (_post(m, onnx["name"], flipped, threads=0), "threads"),
                     (_post(m, onnx["name"], flipped, latency_ms={"p50": "fast"}), "latency_ms")):
        r = client.post("/device/results", json=bad)
        assert r.status_code == 422 and why in r.json()["error"], r.json()
    assert len(list((run / "bench" / "device").glob("*.json"))) == 1
    deep = client.post("/device/results", content=b"[" * 4_000 + b"]" * 4_000,  # under the body cap
                       headers={"content-type": "application/json"})
    assert deep.status_code == 400 and "expected a JSON body" in deep.json()["error"]  # was a 500
    # the card's operating point travels to the page and judges the browser's decisions there too
    assert onnx["decision"]["chosen_on"] and "threshold" in onnx["decision"]
    m = client.get("/device/manifest").json()  # one row per artifact and page load
    same = client.post("/device/results", json=_post(m, onnx["name"], reference)).json()
    at = same["agreement"]["at_operating_point"]
    assert at["decision_agreement"] == 1.0 and at["threshold"] == onnx["decision"]["threshold"]
    assert any("operating point" in n for n in same["notes"])


def _answers_are_the_apps(run, best, answers):
    """The page's own answers with its fastest agreeing model are the app's decisions (card threshold,
    temperature, the app's 'uncertain - refer' band) on the server's probabilities for the same samples."""
    from mstl.edge.core.decision import decide
    card = json.loads((run / "exports" / f"{best}.json").read_text())
    labels = card["labels"]
    server = decide(np.asarray(_reference(run, best)), card["decision"], 0.05)
    assert len(answers) == len(server) > 0
    want = ["uncertain - refer" if d["uncertain"] else labels[d["label_index"]] for d in server]
    same = np.mean([a[0] == w for a, w in zip(answers, want)])
    assert same >= 0.95, (answers, want)
    assert np.allclose([a[1] for a in answers], [d["positive_probability"] for d in server], atol=0.02)
    assert all("the operating point (sensitivity=0.95" in a[2] for a in answers), answers[:3]


def test_batch_one_copy_of_a_tflite_gives_the_same_answers(smoke_exports):
    from ai_edge_litert.interpreter import Interpreter
    from mstl.edge.app.device import fixed_batch_tflite
    data = (smoke_exports / "classifier-int8.tflite").read_bytes()
    outs = []
    for blob in (data, fixed_batch_tflite(data)):
        it = Interpreter(model_content=blob)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        outs.append((list(inp["shape_signature"]), inp))
        x = np.random.default_rng(0).integers(0, 255, inp["shape"], dtype=np.uint8)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        outs[-1] = (outs[-1][0], it.get_tensor(it.get_output_details()[0]["index"]).copy())
    assert outs[0][0][0] == -1 and outs[1][0][0] == 1
    assert np.array_equal(outs[0][1], outs[1][1])


def test_phone_browser_runs_the_models_and_its_rows_reach_mstl_bench(bench_app, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from _browser import CHROMIUM_ARGS, chromium_or_skip, serving
    chromium = chromium_or_skip()
    if not VENDOR.exists():
        pytest.skip("no in-browser runtimes: `make web` fetches them from the npm registry (needs npm)")
    from mstl.cli.bench import app as bench_cli
    run, asgi, _ = bench_app
    requests = []
    with serving(asgi) as origin, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page.on("request", lambda req: requests.append(req.url))
        page.goto(f"{origin}/device?runs=10&warmup=2")
        assert page.evaluate("self.crossOriginIsolated") is True
        page.tap("[data-testid=run]")
        page.wait_for_selector("[data-testid=done]:not([hidden])", timeout=300_000)
        saved = json.loads(page.inner_text("[data-testid=done]"))
        best = page.get_attribute("[data-testid=best]", "data-artifact")
        answers = page.eval_on_selector_all("#answers tr", "rows => rows.map(r => [r.dataset.label, "
                                            "+r.children[1].textContent, r.children[3].textContent])")
        page.screenshot(path=str(tmp_path / "device.png"), full_page=True)
        browser.close()
    outside = [u for u in requests if not u.startswith(origin) and not u.startswith(("data:", "blob:"))]
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert len(saved) >= 2 and best
    _answers_are_the_apps(run, best, answers)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench_cli, [str(run / "exports"), "--include-device-results", "--runs", "5",
                                         "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(out.read_text())["results"] if r.get("measured_in") == "browser"]
    by_name = {r["artifact"]: r for r in rows}
    for name in ("classifier-fp32.onnx", "classifier-int8.onnx"):
        assert by_name[name]["agreement"]["rate"] >= 0.98, by_name[name]["agreement"]
        assert by_name[name]["latency_ms"][str(by_name[name]["threads"])]["p50"] > 0
    assert "[browser]" in res.output


def test_no_samples_means_no_dataset_images_served_and_no_agreement(smoke_exports):
    from starlette.testclient import TestClient
    from mstl.edge.app.device import DeviceBench
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    clf = Classifier(smoke_exports / "classifier-int8.tflite", workers=1)
    client = TestClient(create_app(clf, device=DeviceBench(smoke_exports, n_samples=0)))
    m = client.get("/device/manifest").json()
    assert m["samples"] == [] and "cannot be measured" in m["note"]
    assert client.get("/device/samples/0").status_code == 404


def test_stored_rows_are_capped(smoke_exports, tmp_path):
    """Anyone who reaches the app can post rows; they must not fill the server's disk."""
    from starlette.testclient import TestClient
    from mstl.edge.app.device import DeviceBench
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    run = tmp_path / "run"
    shutil.copytree(smoke_exports.parent, run, ignore=shutil.ignore_patterns("bench", "stage1", "stage2", "cache"))
    exports = run / "exports"
    client = TestClient(create_app(Classifier(exports / "classifier-int8.tflite", workers=1),
                                   device=DeviceBench(exports, n_samples=4, max_rows=3)))
    name = "classifier-fp32.onnx"
    reference = DeviceBench(exports, n_samples=4).reference(name).tolist()
    codes = [client.post("/device/results", json=_post(client.get("/device/manifest").json(), name, reference)).status_code
             for _ in range(5)]
    assert codes == [200, 200, 200, 507, 507]
    r = client.post("/device/results", json=_post(client.get("/device/manifest").json(), name, reference))
    assert "move or delete" in r.json()["error"]
    assert len(list((run / "bench" / "device").glob("*.json"))) == 3


def test_page_preprocessing_is_the_servers(bench_app):
    """The page decodes and resizes as mstl does (Pillow's algorithm re-done in JS), pixel for pixel:
    ordinary pictures (reduced by the short side's factor) and a large sliver (reduced along its long
    side only)."""
    import base64
    import io
    from PIL import Image
    from mstl.edge.core.images import load_image
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from _browser import CHROMIUM_ARGS, chromium_or_skip, serving
    chromium = chromium_or_skip()
    rng = np.random.default_rng(0)
    pictures = {}
    # reduce factors 4 (a power of two), 3 and 6 (Pillow's fixed-point division), and a sliver
    for name, (w, h) in {"photo-f4": (1000, 800), "photo-f3": (640, 600), "photo-f6": (1300, 1200),
                         "sliver": (200, 30000)}.items():
        small = rng.integers(0, 255, (max(2, h // 50), max(2, w // 50), 3)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(buf, "PNG")
        pictures[name] = buf.getvalue()
    _, asgi, _ = bench_app
    with serving(asgi) as origin, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{origin}/device")
        page.wait_for_function("typeof self.mstlPixels === 'function'")
        for name, data in pictures.items():
            got = page.evaluate("""async ([b64, size]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                return Array.from(await self.mstlPixels(new Blob([bytes], {type: "image/png"}), size, "bilinear"));
            }""", [base64.b64encode(data).decode(), 96])
            want = load_image(data, 96, "bilinear")
            got = np.array(got, np.uint8).reshape(want.shape)
            assert np.abs(got.astype(int) - want).max() == 0, name
        browser.close()
