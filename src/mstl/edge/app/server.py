"""FastAPI service: GET / (page), GET /health, GET /model, POST /predict (multipart field `file`);
GET /device (the in-browser bench page), GET /device/manifest, /device/models/NAME, /device/samples/I,
POST /device/results; HEAD wherever GET answers. Every response carries the cross-origin isolation
headers that multi-threaded WebAssembly needs (SharedArrayBuffer), so the page's runtimes can use all
of a phone's cores."""


import json
from importlib import resources
from typing import Any

from ..core.images import ImageError
from .inference import Classifier

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


OVER_LIMIT = "mstl.body_over_limit"  # set in the request's scope when UploadLimit cut its body short


class UploadLimit:
    """ASGI middleware: refuse bodies over the limit before they are read whole - by Content-Length
    when the client sends it, else by counting bytes as they arrive. ``path_limits``: smaller limits
    for some paths (a JSON row needs far less than a picture)."""

    def __init__(self, app, limit: int, path_limits: dict[str, int] | None = None):
        self.app, self.limit, self.path_limits = app, limit, dict(path_limits or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = self.path_limits.get(scope.get("path", ""), self.limit)
        what = f"body for {scope['path']}" if scope.get("path") in self.path_limits else "upload"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _json(send, 413, {"error": f"{what} of {int(length):,} bytes is over the {limit:,}-byte limit"})
        seen = 0
        over = False

        async def limited():
            # Over the limit, the body is cut short here (the app sees an early end, and OVER_LIMIT in
            # its scope) instead of raising: an exception would meet the framework's error middleware
            # first and become a 500.
            nonlocal seen, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    scope[OVER_LIMIT] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        answered = False

        async def guarded(message):
            nonlocal answered
            if not over:
                return await send(message)
            if not answered:  # whatever the app made of a cut-short body, the client gets the 413
                answered = True
                await _json(send, 413, {"error": f"{what} is over the {limit:,}-byte limit"})

        await self.app(scope, limited, guarded)
        if over and not answered:
            await _json(send, 413, {"error": f"{what} is over the {limit:,}-byte limit"})


class HeadAsGet:
    """ASGI middleware: HEAD wherever GET answers - the GET's status and headers (Content-Length
    included), no body. FastAPI's routes answer only the methods they name."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)
        await self.app({**scope, "method": "GET"}, receive, headers_only)


ISOLATION_HEADERS = [(b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"require-corp"),
                     (b"cross-origin-resource-policy", b"same-origin")]


class Isolated:
    """ASGI middleware: COOP/COEP/CORP on every response (a page is cross-origin isolated only when it
    and everything it loads say so)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", [])) +
                           [h for h in ISOLATION_HEADERS if h[0] not in names]}
            await send(message)
        await self.app(scope, receive, with_headers)


async def _json(send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(classifier: Classifier, max_upload: int = MAX_UPLOAD_BYTES, device=None):
    """``device``: a device.DeviceBench for the /device page (default: one over the served model's folder)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from .device import DeviceBench

    app = FastAPI(title="mstl app demo", description="Research prototype - not a diagnostic device.")
    static = resources.files("mstl.edge.app").joinpath("static")
    page = static.joinpath("index.html").read_text()
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    bench = device if device is not None else DeviceBench(classifier.path.parent, uncertain_band=classifier.uncertain_band)
    _error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        # stat calls only (a file that moved is re-hashed once): /health must stay instant
        stale = bench.stale()
        return {"status": "ok", **({"stale_exports": stale, "note": bench.stale_note(stale)} if stale else {})}

    @app.get("/model")
    async def model():
        return classifier.describe()

    _device_routes(app, bench, static.joinpath("device.html").read_text())
    _predict_route(app, classifier)
    return Isolated(HeadAsGet(UploadLimit(app, max_upload, {"/device/results": bench.max_body_bytes()})))


def _error_handlers(app) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # only the routes with typed parameters get here (/device/samples/{i}); /predict reads its form itself
        what = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', 'invalid')}" for e in exc.errors())
        return JSONResponse({"error": f"bad request to {request.url.path}: {what}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A fault of the app, not of the request: a JSON answer like every other, the traceback in the
        # server's log (Starlette still logs it), never in the response.
        return JSONResponse({"error": f"internal error while serving {request.url.path} "
                                      f"({type(exc).__name__}); the server's log has the details"}, status_code=500)


def _device_routes(app, bench, device_page: str) -> None:
    """The in-browser bench: its page, manifest, models and samples, and the posted rows."""
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from .device import DeviceBodyError, DeviceError, DeviceFull, DeviceSession, DeviceStale
    # most specific first: each a subclass of DeviceError (422)
    statuses = ((DeviceFull, 507), (DeviceStale, 409), (DeviceSession, 403), (DeviceBodyError, 400), (DeviceError, 422))

    @app.get("/device", response_class=HTMLResponse)
    async def device_index():
        return device_page

    @app.get("/device/manifest")
    async def device_manifest():
        return await run_in_threadpool(bench.manifest)  # the first call runs the server's reference pass

    @app.get("/device/models/{name}")
    async def device_model(name: str):
        try:
            data = await run_in_threadpool(bench.model_bytes, name)
            return Response(data, media_type="application/octet-stream")
        except DeviceError as e:
            return JSONResponse({"error": str(e)}, status_code=404)

    @app.get("/device/samples/{i}")
    async def device_sample(i: int):
        try:
            return FileResponse(bench.sample_file(i))
        except DeviceError as e:
            return JSONResponse({"error": str(e)}, status_code=404)

    @app.post("/device/results")
    async def device_results(request: Request):
        body = await request.body()  # at most bench.max_body_bytes(): UploadLimit cuts the rest
        if request.scope.get(OVER_LIMIT):
            return Response(status_code=413)  # UploadLimit answers it, unparsed
        try:
            # parsed, checked and written in a worker thread: a large body must not stall the event loop
            return await run_in_threadpool(bench.record_body, body)
        except DeviceError as e:
            status = next(code for kind, code in statuses if isinstance(e, kind))
            return JSONResponse({"error": str(e)}, status_code=status)


def _predict_route(app, classifier: Classifier) -> None:
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    @app.post("/predict")
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return JSONResponse({"error": "send the image as multipart/form-data in field 'file'"}, status_code=415)
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return JSONResponse({"error": "missing field 'file' (a multipart file upload)"}, status_code=422)
            data = await upload.read()
            name = upload.filename or "<upload>"
        finally:
            await form.close()  # spooled uploads are deleted now, not kept after the request
        if not data:
            return JSONResponse({"error": "empty upload: the file has no bytes"}, status_code=400)
        try:
            return await run_in_threadpool(classifier.classify, data, name)
        except ImageError as e:
            return JSONResponse({"error": f"{name}: {e.reason}"}, status_code=413 if e.too_large else 400)
