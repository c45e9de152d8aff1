"""Issue 23: a classifier ending in a Softmax layer exports (item 12a), and the app built on it refuses
container pictures and non-finite float pictures with a 4xx and the reason, opening each upload once
(items 1 and 12b)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mstl.cli.export import app as export_app

runner = CliRunner()


def _images(root, n=60, size=32):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        a = np.clip(rng.uniform(30, 225) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return root


def _model(path, ending: str):
    """A 32x32 two-class model whose last layer is ``ending``: a Softmax layer, Activation('softmax'),
    a Softmax layer inside a nested Sequential, or none (logits)."""
    from mstl.tf_env import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if ending == "nested":
        head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Softmax()], name="head")
        out = head(x)
    else:
        logits = keras.layers.Dense(2)(x)
        out = {"Softmax()": keras.layers.Softmax(), "Activation('softmax')": keras.layers.Activation("softmax"),
               "logits": None}[ending]
        out = out(logits) if out is not None else logits
    keras.Model(inp, out).save(path)
    return path


def _export(tmp_path, ending):
    model = _model(tmp_path / f"{ending.strip('()')[:9]}.keras", ending)
    out = tmp_path / f"exports-{abs(hash(ending))}"
    res = runner.invoke(export_app, [str(tmp_path / "no-run"), "--model", str(model), "--data", str(tmp_path / "data"),
                                     "--format", "tflite", "--out", str(out)])
    return res, out


@pytest.fixture(scope="module")
def softmax_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("softmax")
    _images(tmp / "data")
    res, out = _export(tmp, "Softmax()")
    return tmp, res, out


def test_a_classifier_ending_in_a_softmax_layer_exports_and_verifies(softmax_export):
    """It was refused: 'the model is not a classifier: ... last activation none'."""
    _, res, out = softmax_export
    assert res.exit_code == 0, res.output
    card = __import__("json").loads((out / "classifier-fp32.tflite.json").read_text())
    assert card["verification"]["status"] == "ok"


@pytest.mark.parametrize("ending", ["Activation('softmax')", "nested"])
def test_equivalent_softmax_endings_export(softmax_export, ending):
    tmp, _, _ = softmax_export
    res, out = _export(tmp, ending)
    assert res.exit_code == 0, res.output
    assert (out / "classifier-fp32.tflite").is_file()


def test_a_model_without_softmax_is_still_refused(softmax_export):
    tmp, _, _ = softmax_export
    res, _ = _export(tmp, "logits")
    assert res.exit_code != 0
    assert "not a classifier" in res.output and "last activation linear" in res.output


@pytest.fixture(scope="module")
def client(softmax_export):
    from starlette.testclient import TestClient
    from mstl.edge.app.inference import Classifier
    from mstl.edge.app.server import create_app
    _, res, out = softmax_export
    assert res.exit_code == 0, res.output
    clf = Classifier(out / "classifier-fp32.tflite", workers=1)
    return TestClient(create_app(clf, max_upload=2_000_000))


def _ico_with_png(side: int) -> bytes:
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\0" * (1 + 4 * side)) for _ in range(side)) + z.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def _tiff(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


def test_upload_of_a_container_picture_is_refused_unread(client, monkeypatch):
    """The issue's .ico (16x16 in its directory, a 13000x13000 RGBA PNG inside): a 413 after decoding
    it twice, 20 s per upload. Now a 400 naming the reason, with nothing decoded."""
    from PIL import ImageFile
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    r = client.post("/predict", files={"file": ("icon.ico", _ico_with_png(13000), "image/x-icon")})
    assert r.status_code == 400, r.text
    assert "icon.ico" in r.json()["error"] and "not an image mstl reads" in r.json()["error"]
    assert decoded == []


def test_upload_of_a_non_finite_float_tiff_is_refused(client):
    """An all-NaN float TIFF was classified like a picture (200, a label)."""
    for arr in (np.full((40, 40), np.nan, np.float32), np.where(np.eye(40) > 0, np.inf, 1.0).astype(np.float32)):
        r = client.post("/predict", files={"file": ("scan.tif", _tiff(arr), "image/tiff")})
        assert r.status_code == 400, r.text
        assert "non-finite pixel values" in r.json()["error"] and "scan.tif" in r.json()["error"]
    ok = client.post("/predict", files={"file": ("scan.tif", _tiff(np.linspace(0, 9, 1600, dtype=np.float32)
                                                                     .reshape(40, 40)), "image/tiff")})
    assert ok.status_code == 200, ok.text


def test_an_upload_is_opened_once(client, monkeypatch):
    """The app opened every upload twice (the second time only to decide whether to trim the heap)."""
    opened = []
    real = Image.open

    def counting(*args, **kwargs):
        opened.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(Image, "open", counting)
    buf = io.BytesIO()
    Image.new("RGB", (2100, 2000), (90, 20, 20)).save(buf, "PNG")  # large enough to trim the heap after
    r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    assert len(opened) == 1
