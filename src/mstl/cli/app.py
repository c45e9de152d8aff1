"""mstl-app: serve an exported model behind a phone-friendly page and a JSON API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..edge.core.progress import say, warn
from .common import UserError, check_at_least, friendly

app = typer.Typer(add_completion=False)
DEFAULT_MODEL = Path("runs/latest/exports/classifier-int8.tflite")


@app.command()
@friendly
def serve(
    model: Optional[Path] = typer.Option(None, help=f"a .tflite or .onnx artifact (default {DEFAULT_MODEL})"),
    host: str = typer.Option("127.0.0.1", help="127.0.0.1 = this machine only; 0.0.0.0 = phones on your network"),
    port: int = typer.Option(8000),
    workers: Optional[int] = typer.Option(None, help="interpreters serving requests in parallel (default: cores)"),
    max_upload_mb: float = typer.Option(10.0, help="largest accepted upload"),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="serve an artifact that failed (or "
                                          "never had) export verification; the page and /model say so"),
    ssl_certfile: Optional[Path] = typer.Option(None, help="HTTPS certificate (PEM): a phone's browser runs the /device "
                                                "bench multi-threaded only over HTTPS or on localhost"),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="the certificate's private key (PEM)"),
    device_samples: int = typer.Option(100, help="held-out test images the /device bench serves to browsers to check "
                                       "agreement (0: none; they are your dataset's images)"),
    uncertain_band: float = typer.Option(0.05, help="answer 'uncertain - refer' when the calibrated probability is "
                                         "within this of the card's operating point (0: always a label)"),
):
    """Serve the model: open http://HOST:PORT on a phone or a laptop."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("the app needs FastAPI and uvicorn: pip install 'mstl[app]'") from None
    from ..edge.app.inference import Classifier
    from ..edge.app.server import create_app
    if model is None:
        model = DEFAULT_MODEL
        if not model.is_file():
            raise UserError(f"no model given and {model} does not exist: run `make demo` (or mstl-export --int8), "
                            "or pass --model FILE")
        say(f"model: {model.resolve()} (the int8 TFLite of runs/latest)")
    if model.suffix not in (".tflite", ".onnx"):
        raise UserError(f"{model}: the app serves .tflite or .onnx artifacts")
    check_at_least("--device-samples", device_samples, 0)
    if not 0 <= uncertain_band < 0.5:
        raise UserError(f"--uncertain-band must be in [0, 0.5), got {uncertain_band}")
    check_at_least("--workers", workers, 1)
    if not 0 < max_upload_mb < float("inf"):
        raise UserError(f"--max-upload-mb must be a positive size, got {max_upload_mb}")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0..65535, got {port}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {host}: anyone on this network can reach the app. It is a research prototype with no "
             "authentication; use it on a trusted network only."
             + (f" Its /device bench serves up to {device_samples} held-out images of the run's dataset; "
                "--device-samples 0 serves none." if device_samples else ""))
    from ..edge.app.inference import UnverifiedModel
    from ..edge.core.runtimes import RuntimeError_
    try:
        clf = Classifier(model, workers=workers, allow_unverified=allow_unverified, uncertain_band=uncertain_band)
    except (UnverifiedModel, RuntimeError_, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if clf.problem:
        warn(f"serving an UNVERIFIED model: {clf.problem}")
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UserError("--ssl-certfile and --ssl-keyfile go together")
    for f in (ssl_certfile, ssl_keyfile):
        if f and not f.is_file():
            raise UserError(f"{f}: no such file")
    scheme = "https" if ssl_certfile else "http"
    op = clf.operating_point()
    say(f"decision: {op['target']} operating point, threshold {op['threshold']:.4f} on the calibrated "
        f"{op.get('positive_class')} probability (T {op['temperature']:.3f}); 'uncertain - refer' within {uncertain_band}"
        if op else "decision: no operating point in the model card - the most probable class (0.5)")
    say(f"serving {clf.path.name} ({clf.runtime}, labels {clf.labels}) on {scheme}://{host}:{port}; "
        f"the in-browser bench is at {scheme}://{host}:{port}/device")
    from ..edge.app.device import DeviceBench
    device = DeviceBench(clf.path.parent, n_samples=device_samples, uncertain_band=uncertain_band)
    uvicorn.run(create_app(clf, int(max_upload_mb * 1024 * 1024), device), host=host, port=port, log_level="warning",
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None, ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
