"""Issue 23, items 3, 4, 6 and 12e: the rows browsers post to the app's /device bench - unique, capped
under concurrency, checked whole before anything is written, tied to a page load, never forgeable from
answers the server publishes; bounded JSON bodies parsed off the event loop; an app whose exports were
re-exported under it says so and refuses rows for the changed files; HEAD wherever GET answers.

A tiny run dir built here (a 32x32 ONNX classifier with a passing card, a few held-out PNGs): no
training, no smoke run."""

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

N_SAMPLES = 6


def _onnx_model(path: Path, weights: np.ndarray) -> None:
    """input float32 [N, 32, 32, 3] -> mean colour -> 3x2 linear -> softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
         helper.make_node("Div", ["mean", "scale"], ["scaled"]),
         helper.make_node("MatMul", ["scaled", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
         numpy_helper.from_array(np.array(64.0, np.float32), "scale"),
         numpy_helper.from_array(weights.astype(np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _export(exports: Path, weights: np.ndarray, name: str = "classifier-fp32.onnx") -> Path:
    """An artifact and the card the export gate would have written (verified, sha256)."""
    path = exports / name
    _onnx_model(path, weights)
    card = {"name": name, "format": "onnx", "precision": "fp32", "labels": ["normal", "abnormal"],
            "input": {"shape": [1, 32, 32, 3], "resize": {"method": "bilinear"}, "dtype": "float32"},
            "output": {"shape": [1, 2], "dtype": "float32"}, "verification": {"status": "ok"},
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    Path(str(path) + ".json").write_text(json.dumps(card))
    (exports / "manifest.json").write_text(json.dumps({
        "labels": card["labels"], "artifacts": [{"name": name, "path": name, "format": "onnx", "precision": "fp32",
                                                 "status": "ok", "sha256": card["sha256"]}]}))
    return path


W1 = np.array([[2.0, -2.0], [-1.0, 1.0], [0.5, -0.5]])


@pytest.fixture
def run_dir(tmp_path):
    from PIL import Image
    run = tmp_path / "run"
    exports = run / "exports"
    exports.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(N_SAMPLES):
        f = run / "images" / f"class{i % 2}-{i}.png"  # a name that gives its label away, as real ones do
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(f)
        lines.append(f"{f}\t{i % 2}")
    (run / "target_test.tsv").write_text("\n".join(lines) + "\n")
    _export(exports, W1)
    return run


def _app(run: Path, **kw):
    from mstl.edge.app.device import DeviceBench
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    exports = run / "exports"
    bench = DeviceBench(exports, **kw)
    return bench, create_app(Classifier(exports / "classifier-fp32.onnx", workers=1), device=bench)


@pytest.fixture
def served(run_dir):
    from starlette.testclient import TestClient
    bench, app = _app(run_dir)
    return run_dir, bench, TestClient(app)


NAME = "classifier-fp32.onnx"


def _body(session: str, probs, **over):
    body = {"artifact": NAME, "runtime": "test", "backend": "wasm", "threads": 2, "runs": 10, "load_ms": 10.0,
            "first_ms": 3.0, "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.1}, "e2e_ms": None,
            "probs": probs, "session": session,
            "device": {"user_agent": "UA", "hardware_concurrency": 8, "cross_origin_isolated": True}}
    body.update(over)
    return body


def _session(client) -> str | None:
    """A page load's session (None from an app that issues none, so that these tests show what such an
    app does with the post itself)."""
    return (client.get("/device/manifest").json().get("session") or {}).get("id")


def _rows(run: Path) -> list[Path]:
    return sorted((run / "bench" / "device").glob("*.json"))


# ---- item 3: forged answers, bad figures, provenance -------------------------------------------------

def test_manifest_publishes_no_answers_labels_or_names(served):
    """The page used to get the server's probabilities (post them back: 100% agreement), the labels and
    the file names (which often name the class). Now: ids only, and a session for this page load."""
    run, bench, client = served
    m = client.get("/device/manifest").json()
    text = json.dumps(m)
    assert len(m["samples"]) == N_SAMPLES and all(set(s) == {"id", "url"} for s in m["samples"])
    assert all("reference" not in x for x in m["models"])
    assert "class0" not in text and "class1" not in text and '"label"' not in text
    assert isinstance(m["session"]["id"], str) and len(m["session"]["id"]) >= 20
    assert _session(client) != m["session"]["id"]


def test_a_post_must_echo_a_session_this_server_issued(served):
    run, bench, client = served
    ref = bench.reference(NAME).tolist()
    for session in (None, "made-up", 12):
        r = client.post("/device/results", json=_body(session, ref))
        assert r.status_code == 403 and "session" in r.json()["error"], r.json()
    sid = _session(client)
    assert client.post("/device/results", json=_body(sid, ref)).status_code == 200
    again = client.post("/device/results", json=_body(sid, ref))
    assert again.status_code == 403 and "already posted" in again.json()["error"]
    assert len(_rows(run)) == 1


@pytest.mark.parametrize("over, why", [
    ({"probs": "REF*1e6"}, "in [0, 1]"),  # the issue's [1e6, -1e6]
    ({"probs": "HALF"}, "sum to"),
    ({"probs": "NAN"}, "NaN"),
    ({"probs": "INF"}, "in [0, 1]"),
    ({"latency_ms": {"p50": 100, "p90": 50, "p99": 0.5, "mean": 1}}, "out of order"),
    ({"latency_ms": {"p50": 100, "p99": 0, "mean": 0}}, "latency_ms.mean"),  # stored as 1e12 images/s before
    ({"latency_ms": {"p50": 100, "p99": 0, "mean": 5}}, "out of order"),
    ({"latency_ms": {"p50": -1, "mean": 5}}, "latency_ms.p50"),
    ({"latency_ms": {"p50": 1, "p90": 2, "p99": 3, "mean": 0}}, "latency_ms.mean"),
    ({"e2e_ms": {"p50": 5, "p90": 4, "p99": 6, "mean": 5}}, "e2e_ms"),
    ({"load_ms": -1}, "load_ms"),
    ({"threads": 2.5}, "threads"),
    ({"runs": 1e400}, "runs"),  # JSON's 1e400 parses as inf
    ({"device": {"hardware_concurrency": "NAN"}}, "NaN"),
    ({"device": {"hardware_concurrency": 0}}, "device.hardware_concurrency"),
    ({"device": {"device_memory_gb": 1e400}}, "device.device_memory_gb"),
    ({"device": {"webgpu": "yes"}}, "device.webgpu"),
    ({"device": {"user_agent": "x" * 501}}, "device.user_agent"),
    ({"runtime": "ok\n| forged | row |"}, "runtime"),
    ({"backend": "b" * 81}, "backend"),
    ({"device": "phone"}, "device"),
])
def test_a_bad_row_is_refused_whole_and_nothing_is_written(served, over, why):
    run, bench, client = served
    ref = bench.reference(NAME)
    sid = _session(client)
    body = {**_body(sid, ref.tolist()), **over}
    if body["probs"] == "REF*1e6":
        body["probs"] = [[1e6, -1e6]] * len(ref)
    elif body["probs"] == "HALF":
        body["probs"] = (ref / 2).tolist()
    elif body["probs"] == "NAN":
        body["probs"] = [[float("nan"), 1.0]] + ref.tolist()[1:]
    elif body["probs"] == "INF":
        body["probs"] = [[float("inf"), 0.0]] + ref.tolist()[1:]
    if isinstance(body["device"], dict) and body["device"].get("hardware_concurrency") == "NAN":
        body["device"]["hardware_concurrency"] = float("nan")
    text = json.dumps(body)  # NaN and 1e400 spelt as Python's json spells them (NaN, Infinity)
    text = text.replace("Infinity", "1e400")
    r = client.post("/device/results", content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and why in r.json()["error"], r.json()
    assert _rows(run) == []
    # the session is not spent by a refused row: the same page load can still post a good one
    assert client.post("/device/results", json=_body(sid, ref.tolist())).status_code == 200


def test_a_coarse_clock_row_is_accepted(served):
    """Without cross-origin isolation a browser's clock ticks in 0.1 ms: a fast model's p50 can be 0."""
    run, bench, client = served
    r = client.post("/device/results", json=_body(_session(client), bench.reference(NAME).tolist(),
                                                  latency_ms={"p50": 0.0, "p90": 0.1, "p99": 0.1, "mean": 0.03}))
    assert r.status_code == 200, r.json()
    assert r.json()["latency"]["2"]["images_per_s"] == pytest.approx(1000 / 0.03)


def test_nan_in_a_device_field_is_refused_not_stored_then_a_500(served):
    """It was a 500 after the row was saved, and bench.md later said 'nan cores'."""
    run, bench, client = served
    sid = _session(client)
    text = json.dumps(_body(sid, bench.reference(NAME).tolist(), device={"device_memory_gb": float("nan")}))
    r = client.post("/device/results", content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    assert _rows(run) == []


def test_a_stored_row_says_what_it_proves_and_what_it_cannot(served):
    run, bench, client = served
    ref = bench.reference(NAME)
    sid = _session(client)
    r = client.post("/device/results", json=_body(sid, ref.tolist()))
    assert r.status_code == 200, r.json()
    stored = json.loads(_rows(run)[0].read_text())
    assert stored["agreement"]["rate"] == 1.0
    prov = stored["provenance"]
    assert "self-reported" in prov["kind"] and "cannot" not in prov["kind"]
    assert "device named computed it" in prov["not_provable"] and "never published" in prov["server_checked"]
    assert prov["session_issued_at"]
    assert any("self-reported" in n for n in stored["notes"])
    assert "evil" not in stored["device"] and stored["device"]["hardware_concurrency"] == 8


def test_min_accuracy_failing_on_a_browser_row_says_so_and_names_the_file(served, tmp_path):
    """One wrong anonymous row made `mstl-bench --include-device-results --min-accuracy` fail with only
    the artifact's name, as if this machine had measured it."""
    from typer.testing import CliRunner
    from mstl.cli.bench import app as bench_cli
    run, bench, client = served
    ref = bench.reference(NAME)
    sid = _session(client)
    wrong = np.eye(2)[1 - np.asarray(bench.labels)].tolist()  # every answer the wrong label
    saved = client.post("/device/results", json=_body(sid, wrong)).json()["saved_as"]
    res = CliRunner().invoke(bench_cli, [str(run / "exports"), "--include-device-results", "--runs", "2",
                                         "--warmup", "0", "--threads", "1", "--min-accuracy", "0.5"])
    assert res.exit_code != 0
    line = " ".join(res.output.split())
    assert "below --min-accuracy" in line and "browser row" in line and saved in line, res.output


# ---- item 3: concurrency ------------------------------------------------------------------------------

def _post_many(client, sessions, ref):
    barrier = threading.Barrier(len(sessions))

    def one(sid):
        barrier.wait()
        return client.post("/device/results", json=_body(sid, ref))
    with ThreadPoolExecutor(len(sessions)) as pool:
        return list(pool.map(one, sessions))


def test_concurrent_posts_each_get_their_own_file(served):
    """20 at once: 19 x 200 but 18 files and one 500 before (names and temp names shared)."""
    from starlette.testclient import TestClient
    run, bench, _ = served
    ref = bench.reference(NAME).tolist()
    with TestClient(_app(run)[1]) as client:  # one event loop in its own thread, many posts in flight
        sessions = [_session(client) for _ in range(20)]
        answers = _post_many(client, sessions, ref)
    assert [r.status_code for r in answers] == [200] * 20, [r.json() for r in answers if r.status_code != 200]
    names = {r.json()["saved_as"] for r in answers}
    files = _rows(run)
    assert len(names) == 20 and {f.name for f in files} == names
    assert all(json.loads(f.read_text())["artifact"] == NAME for f in files)
    assert not [p for p in (run / "bench" / "device").iterdir() if p.name.endswith(".tmp")]


def test_the_cap_holds_exactly_under_concurrency(run_dir):
    """40 posts at once into a folder of 995 (cap 1000) took it past the cap before."""
    from starlette.testclient import TestClient
    folder = run_dir / "bench" / "device"
    folder.mkdir(parents=True)
    for i in range(995):
        (folder / f"old-{i:04d}.json").write_text("{}")
    bench, app = _app(run_dir)
    ref = bench.reference(NAME).tolist()
    with TestClient(app) as client:
        sessions = [_session(client) for _ in range(40)]
        codes = sorted(r.status_code for r in _post_many(client, sessions, ref))
    assert codes == [200] * 5 + [507] * 35
    assert len(list(folder.glob("*.json"))) == 1000


# ---- item 4: bounded JSON bodies, parsed off the event loop -------------------------------------------

def _maximal_body(n_samples: int, n_classes: int) -> dict:
    """The largest row a real page posts: 200 samples, each probability at its longest JSON spelling,
    every text field at its limit."""
    p = 1.2345678901234567e-7  # JSON 1.2345678901234567e-07: 23 characters
    row = [p] * (n_classes - 1) + [1 - p * (n_classes - 1)]
    return {"artifact": NAME, "runtime": "r" * 80, "backend": "b" * 80, "threads": 1024, "runs": 100000,
            "load_ms": 12345.678901234567, "download_ms": 12345.678901234567, "first_ms": 12345.678901234567,
            "latency_ms": {k: 12345.678901234567 for k in ("p50", "p90", "p99", "mean")},
            "e2e_ms": {k: 12345.678901234567 for k in ("p50", "p90", "p99", "mean")},
            "probs": [row] * n_samples, "n_samples": n_samples, "session": "s" * 32,
            "device": {"user_agent": "u" * 500, "hardware_concurrency": 4096, "platform": "p" * 100,
                       "device_memory_gb": 12345.678901234567, "cross_origin_isolated": True,
                       "viewport": "v" * 40, "webgpu": True}}


@pytest.mark.parametrize("n_samples, n_classes", [(N_SAMPLES, 2), (200, 2), (200, 10), (0, 2)])
def test_the_body_cap_fits_a_maximal_row_with_margin(n_samples, n_classes):
    from mstl.edge.app.device import body_limit
    size = len(json.dumps(_maximal_body(n_samples, n_classes)).encode())
    assert 1.5 * size <= body_limit(n_samples, n_classes) <= 3 * size + 8192
    assert body_limit(200, 2) < 100_000  # the 10 MB body is over it a hundred times


def test_a_maximal_row_is_accepted(served):
    run, bench, client = served
    body = _maximal_body(len(bench.samples), 2)
    body["session"] = _session(client)
    r = client.post("/device/results", json=body)
    assert r.status_code == 200, r.json()


def test_an_oversized_body_is_413_and_never_parsed(served, monkeypatch):
    """By Content-Length, and while streaming when there is none (chunked)."""
    import mstl.edge.app.device as device
    from mstl.edge.app.server import MAX_UPLOAD_BYTES
    run, bench, client = served
    parsed = []
    real = device.parse_body
    monkeypatch.setattr(device, "parse_body", lambda body: parsed.append(len(body)) or real(body))
    keys = b"{" + b",".join(b'"k%d":0' % i for i in range(800_000)) + b"}"  # the 10 MB, 800k keys
    assert 9_000_000 < len(keys) < MAX_UPLOAD_BYTES  # under the picture limit: the old app parsed it
    r = client.post("/device/results", content=keys, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():
        for i in range(0, len(keys), 65536):
            yield keys[i:i + 65536]
    r = client.post("/device/results", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert parsed == []
    sid = _session(client)
    assert client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist())).status_code == 200
    assert len(parsed) == 1  # a row of the right size is parsed, by parse_body
    # the picture upload keeps its own, larger limit
    assert client.post("/predict", files={"file": ("a.png", b"\x89PNG" + b"0" * 200_000, "image/png")}).status_code == 400


def test_the_body_is_parsed_off_the_event_loop(served, monkeypatch):
    import mstl.edge.app.device as device
    run, bench, client = served
    where = []
    real = device.parse_body

    def spy(body):
        import asyncio
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("worker thread")
        return real(body)
    monkeypatch.setattr(device, "parse_body", spy)
    sid = _session(client)
    assert client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist())).status_code == 200
    assert where == ["worker thread"]


# ---- item 6: re-exported under a running app ----------------------------------------------------------

def test_a_reexport_under_the_app_is_noticed_and_its_rows_refused(served):
    run, bench, client = served
    ref = bench.reference(NAME).tolist()
    m = client.get("/device/manifest").json()
    served_before = client.get(f"/device/models/{NAME}").content
    advertised = m["models"][0]["sha256"]
    assert hashlib.sha256(served_before).hexdigest() == advertised and m["stale"] is None
    assert "stale_exports" not in client.get("/health").json()

    _export(run / "exports", -W1)  # mstl-export again, same name, other weights
    # the app serves exactly the bytes it hashed and advertised, not the new file
    assert client.get(f"/device/models/{NAME}").content == served_before
    health = client.get("/health").json()
    assert health["status"] == "ok" and "replaced" in health["stale_exports"][NAME] and "restart" in health["note"]
    m2 = client.get("/device/manifest").json()
    assert m2["models"] == [] and NAME in m2["stale"] and "restart mstl-app" in m2["stale"]
    r = client.post("/device/results", json=_body(m["session"]["id"], ref))
    assert r.status_code == 409 and "restart mstl-app" in r.json()["error"]
    assert _rows(run) == []


def test_a_touched_but_identical_file_is_not_stale(served):
    import os
    run, bench, client = served
    path = run / "exports" / NAME
    os.utime(path, ns=(1, 1))
    assert bench.stale() == {}
    sid = _session(client)
    assert client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist())).status_code == 200


def test_the_reference_is_computed_from_the_pinned_bytes(served):
    """A re-export before the first manifest (the reference pass is lazy) must not change the answers
    the app compares rows with."""
    run, bench, client = served
    from mstl.edge.core.runtimes import load_runtime
    from mstl.edge.core.preprocess import Preprocess
    prep = Preprocess.from_card(bench.artifacts[NAME]["card"])
    want = load_runtime(run / "exports" / NAME).predict(prep.load_many(bench.samples))
    _export(run / "exports", -W1)
    assert np.allclose(bench.reference(NAME), want)


def test_the_bench_says_why_it_leaves_out_a_row_of_an_earlier_export(served, capsys):
    from mstl.edge.core.browser_rows import load_device_rows
    run, bench, client = served
    sid = _session(client)
    saved = client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist())).json()["saved_as"]
    assert [r["saved_as"] for r in load_device_rows(run / "exports")] == [saved]
    capsys.readouterr()
    _export(run / "exports", -W1)
    assert load_device_rows(run / "exports") == []
    err = " ".join(capsys.readouterr().err.split())
    assert "1 browser row(s) left out" in err and "re-exported since" in err and saved in err, err
    (run / "exports" / NAME).unlink()
    Path(str(run / "exports" / NAME) + ".json").unlink()
    assert load_device_rows(run / "exports") == []
    assert "is not in" in capsys.readouterr().err


# ---- item 12e: HEAD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/health", "/model", "/device", "/device/manifest",
                                  f"/device/models/{NAME}", "/device/samples/0", "/static/device.js"])
def test_head_answers_wherever_get_does(served, path):
    run, bench, client = served
    get, head = client.get(path), client.head(path)
    assert get.status_code == 200
    assert head.status_code == 200 and head.content == b""
    if "content-length" in get.headers and path not in ("/device/manifest",):  # a manifest issues a new session
        assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["cross-origin-embedder-policy"] == "require-corp"
    assert client.head("/device/results").status_code == 405  # POST only, as GET is


def test_a_bad_path_parameter_is_named_not_called_a_missing_upload(served):
    """GET /device/samples/abc said "expected a multipart form with an image in field 'file'"."""
    run, bench, client = served
    r = client.get("/device/samples/abc")
    assert r.status_code == 422 and "multipart" not in r.json()["error"]
    assert "/device/samples/abc" in r.json()["error"] and "path.i" in r.json()["error"] and "integer" in r.json()["error"]


def test_json_nested_deeper_than_the_parser_goes_is_a_400(served):
    run, bench, client = served
    body = b"[" * 4_000 + b"]" * 4_000
    assert len(body) < bench.max_body_bytes()
    r = client.post("/device/results", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested thousands deep" in r.json()["error"]


def test_a_row_that_cannot_be_written_is_a_clear_507_and_leaves_nothing(served, monkeypatch):
    """A full disk (ENOSPC) mid-write was a 500 'internal error'; no half-written row or temp file stays."""
    import errno
    run, bench, client = served
    real_write = Path.write_text

    def full(self, text, *a, **k):
        real_write(self, text[:10], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    sid = _session(client)
    r = client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist()))
    assert r.status_code == 507 and "No space left on device" in r.json()["error"] and "bench/device" in r.json()["error"]
    monkeypatch.undo()
    assert [p.name for p in (run / "bench" / "device").iterdir() if p.name != ".lock"] == []
    assert client.post("/device/results", json=_body(sid, bench.reference(NAME).tolist())).status_code == 200


def test_model_describes_the_loaded_file_and_says_when_the_disk_copy_changed(served):
    """/predict keeps the interpreters it loaded: /model must describe those, not the new file."""
    run, _, client = served
    before = client.get("/model").json()
    assert "stale" not in before
    _export(run / "exports", -W1)  # mstl-export again, same name, other weights
    after = client.get("/model").json()
    assert after["size_bytes"] == before["size_bytes"] and after["sha256"] == before["sha256"]
    assert "restart mstl-app" in after["stale"]


def test_a_broken_card_beside_another_artifact_leaves_that_one_out_not_the_app(run_dir):
    from starlette.testclient import TestClient
    other = run_dir / "exports" / "classifier-int8.onnx"
    other.write_bytes((run_dir / "exports" / NAME).read_bytes())
    Path(str(other) + ".json").write_text("{not json")
    bench, app = _app(run_dir)
    m = TestClient(app).get("/device/manifest").json()
    assert [x["name"] for x in m["models"]] == [NAME]
    assert "classifier-int8.onnx.json" in m["left_out"]["classifier-int8.onnx"]
