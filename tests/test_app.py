import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(smoke_exports):
    from mstl.edge.app.inference import Classifier
    return Classifier(smoke_exports / "classifier-int8.tflite", workers=2)


@pytest.fixture(scope="module")
def client(classifier):
    from starlette.testclient import TestClient
    from mstl.edge.app.server import create_app
    return TestClient(create_app(classifier, max_upload=200_000))


def _jpeg(size=(64, 64), exif_orientation=None, seed=0):
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_health_and_model(client, classifier):
    assert client.get("/health").json() == {"status": "ok"}
    card = client.get("/model").json()
    assert card["precision"] == "int8" and card["labels"] == classifier.labels and card["verification"]["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text and "not a diagnostic device" in page.text


def test_predict(client, classifier):
    r = client.post("/predict", files={"file": ("x.jpeg", _jpeg(), "image/jpeg")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["probabilities"]) == set(classifier.labels) and out["label"] in classifier.labels
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-9 and out["latency_ms"] > 0
    op = out["operating_point"]
    if op["chosen"]:  # decided at the card's threshold on the calibrated positive probability
        (pos, p), = out["calibrated_probability"].items()
        other = next(lab for lab in classifier.labels if lab != pos)
        assert out["label"] == (pos if p >= op["threshold"] else other)
        assert op["text"].startswith(("above the operating point", "below the operating point"))
    else:
        assert out["label"] == max(out["probabilities"], key=out["probabilities"].get)


def test_exif_orientation_applied_before_inference(classifier):
    """The app's decode turns an EXIF-rotated photo upright: the same picture stored rotated with an
    orientation tag and stored upright classify from the same pixels."""
    rng = np.random.default_rng(3)
    arr = np.zeros((40, 20, 3), np.uint8)
    arr[:10] = 220  # a bright band at the top of the upright picture
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    upright, rotated = io.BytesIO(), io.BytesIO()
    Image.fromarray(arr).save(upright, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotates 90 degrees clockwise
    Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90).save(rotated, "PNG", exif=exif.tobytes())
    a = classifier.preprocess.load(upright.getvalue())
    b = classifier.preprocess.load(rotated.getvalue())
    assert a[:4].mean() > 150 and a[-4:].mean() < 60  # the band is on top
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


@pytest.mark.parametrize("files,status,words", [
    ({"file": ("notes.txt", b"hello there", "text/plain")}, 400, "not an image"),
    ({"file": ("cut.jpeg", _jpeg()[:200], "image/jpeg")}, 400, "truncated"),
    ({"file": ("empty.jpeg", b"", "image/jpeg")}, 400, "empty upload"),
    ({"other": ("x.jpeg", _jpeg(), "image/jpeg")}, 422, "missing field 'file'"),
    ({"file": ("big.jpeg", b"\xff" * 300_000, "image/jpeg")}, 413, "limit"),
])
def test_bad_uploads(client, files, status, words):
    r = client.post("/predict", files=files)
    assert r.status_code == status and words in r.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_too_many_pixels(classifier, monkeypatch):
    from starlette.testclient import TestClient
    from mstl.edge.app.server import create_app
    monkeypatch.setattr(classifier, "max_pixels", 1000)
    r = TestClient(create_app(classifier)).post("/predict", files={"file": ("x.jpeg", _jpeg(), "image/jpeg")})
    assert r.status_code == 413 and "too many pixels" in r.json()["error"]


def test_sliver_under_the_pixel_cap_is_refused(client):
    """2 x 19,000,000 is under the 40-megapixel cap, but Pillow keeps a pointer per row: 1.4 GB peak for
    60 such uploads before the per-side limit."""
    buf = io.BytesIO()
    Image.new("L", (2, 19_000_000), 9).save(buf, "PNG")
    r = client.post("/predict", files={"file": ("sliver.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "in one side" in r.json()["error"]


def test_a_fault_of_the_app_is_a_json_500_without_traceback(classifier, monkeypatch):
    from starlette.testclient import TestClient
    from mstl.edge.app.server import create_app

    def broken(*args, **kwargs):
        raise KeyError("secret/server/path")
    monkeypatch.setattr(classifier, "classify", broken)
    r = TestClient(create_app(classifier), raise_server_exceptions=False).post(
        "/predict", files={"file": ("x.jpeg", _jpeg(), "image/jpeg")})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert "KeyError" in r.json()["error"] and "secret" not in r.text and "Traceback" not in r.text


def test_not_multipart(client):
    r = client.post("/predict", content=b"abc", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]


def test_concurrent_requests_are_consistent(client):
    from concurrent.futures import ThreadPoolExecutor
    data = _jpeg(seed=3)
    first = client.post("/predict", files={"file": ("x.jpeg", data, "image/jpeg")}).json()["probabilities"]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: client.post("/predict", files={"file": ("x.jpeg", data, "image/jpeg")}).json(), range(32)))
    assert all(o["probabilities"] == first for o in outs)


def test_browser_upload_shows_label(classifier, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from _browser import CHROMIUM_ARGS, chromium_or_skip, serving
    from mstl.edge.app.server import create_app
    chromium = chromium_or_skip()
    from mstl.data.synthetic import cxr_image
    img = tmp_path / "chest-film.jpeg"
    Image.fromarray(cxr_image("COVID-19", np.random.default_rng(7), 224)[0]).save(img, quality=92)
    with serving(create_app(classifier)) as origin, pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
        page.goto(f"{origin}/")
        page.wait_for_selector("#model dd >> text=int8")
        page.set_input_files("#file", str(img))
        label = page.wait_for_selector("[data-testid=label]:not(:empty)", timeout=20000)
        assert label.inner_text() in classifier.labels
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-demo.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "app-demo.png").stat().st_size > 5000


def test_chunked_upload_over_the_limit_gets_413_json(client):
    """No Content-Length (chunked): the limit is found while the body streams, and answered as JSON 413."""
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpeg\"\r\n\r\n" + b"\xff" * 300_000 + b"\r\n--b--\r\n"

    def chunks():
        for i in range(0, len(body), 16_384):
            yield body[i:i + 16_384]
    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert client.get("/health").status_code == 200


def test_unverified_or_altered_artifacts_are_refused(smoke_exports, tmp_path):
    import json
    import shutil as sh
    from mstl.edge.app.inference import Classifier, UnverifiedModel
    src = smoke_exports / "classifier-int8.tflite"
    nocard = tmp_path / "nocard.tflite"
    sh.copy(src, nocard)
    with pytest.raises(UnverifiedModel, match="no model card"):
        Classifier(nocard, workers=1)
    failed = tmp_path / "failed.tflite"
    sh.copy(src, failed)
    card = json.loads((smoke_exports / "classifier-int8.tflite.json").read_text())
    (tmp_path / "failed.tflite.json").write_text(json.dumps({**card, "verification": {"status": "failed", "reason": "87% agreement"}}))
    with pytest.raises(UnverifiedModel, match="failed its export verification"):
        Classifier(failed, workers=1)
    altered = tmp_path / "altered.tflite"
    altered.write_bytes(src.read_bytes() + b"\0")
    (tmp_path / "altered.tflite.json").write_text(json.dumps(card))
    with pytest.raises(UnverifiedModel, match="sha256 differs"):
        Classifier(altered, workers=1)
    served = Classifier(failed, workers=1, allow_unverified=True).describe()
    assert served["verified"] is False and "87% agreement" in served["unverified_reason"]


def test_model_card_shows_no_server_paths(client):
    card = client.get("/model").json()
    text = json.dumps(card)
    assert card["file"] == "classifier-int8.tflite" and "/tmp" not in text and os.path.expanduser("~") + "/" not in text


def test_huge_pictures_in_parallel_keep_memory_bounded(smoke_exports):
    """Concurrent uploads of a small PNG with 16 megapixels: decodes are bounded by the interpreter
    pool, pictures shrink before colour conversion, and freed memory goes back (benchmarks/app_memory.py)."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "app_memory.py"
    res = subprocess.run([sys.executable, str(script), "--model", str(smoke_exports / "classifier-int8.tflite"),
                          "--uploads", "12", "--side", "4000"], capture_output=True, text=True, timeout=600)
    figures = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert res.returncode == 0, res.stdout + res.stderr
    assert figures["statuses"] == "{200: 12}"
    assert float(figures["server_peak_rss_mb"]) < 400, figures
    assert float(figures["server_rss_after_mb"]) < float(figures["server_rss_idle_mb"]) + 100, figures


def test_app_cli_missing_or_corrupt_model_gets_one_line(tmp_path):
    import hashlib
    from typer.testing import CliRunner
    from mstl.cli.app import app as app_cli
    runner = CliRunner()
    res = runner.invoke(app_cli, ["--model", str(tmp_path / "nope.tflite")])
    assert res.exit_code == 2 and "no such model file" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    card = {"verification": {"status": "ok"}, "sha256": hashlib.sha256(bad.read_bytes()).hexdigest()}
    (tmp_path / "bad.tflite.json").write_text(json.dumps(card))
    res = runner.invoke(app_cli, ["--model", str(bad)])
    assert res.exit_code == 2 and "LiteRT cannot load it" in res.output and "Traceback" not in res.output
    # were a traceback (port), or silently the default (workers 0) or a limit no upload meets
    for flags, words in ((["--port", "99999"], "--port must be 0..65535"),
                         (["--workers", "0"], "--workers must be 1 or more"),
                         (["--max-upload-mb", "-1"], "--max-upload-mb must be a positive size")):
        res = runner.invoke(app_cli, ["--model", str(bad), *flags])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
