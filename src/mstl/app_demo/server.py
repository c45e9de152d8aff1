"""FastAPI service: GET / (page), GET /health, GET /model, POST /predict (multipart field `file`)."""


import json
from importlib import resources
from typing import Any

from ..data.images import ImageError
from .inference import Classifier

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class UploadLimit:
    """ASGI middleware: refuse bodies over the limit before they are read whole - by Content-Length
    when the client sends it, else by counting bytes as they arrive."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _json(send, 413, {"error": f"upload of {int(length):,} bytes is over the {self.limit:,}-byte limit"})
        seen = 0
        over = False

        async def limited():
            # Over the limit, the body is cut short here (the app sees an early end) instead of raising:
            # an exception would meet the framework's error middleware first and become a 500.
            nonlocal seen, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        answered = False

        async def guarded(message):
            nonlocal answered
            if not over:
                return await send(message)
            if not answered:  # whatever the app made of a cut-short body, the client gets the 413
                answered = True
                await _json(send, 413, {"error": f"upload is over the {self.limit:,}-byte limit"})

        await self.app(scope, limited, guarded)
        if over and not answered:
            await _json(send, 413, {"error": f"upload is over the {self.limit:,}-byte limit"})


async def _json(send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(classifier: Classifier, max_upload: int = MAX_UPLOAD_BYTES):
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="mstl app demo", description="Research prototype - not a diagnostic device.")
    page = resources.files("mstl.app_demo").joinpath("static/index.html").read_text()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        missing = [".".join(str(p) for p in e.get("loc", [])) for e in exc.errors()]
        return JSONResponse({"error": f"bad request: expected a multipart form with an image in field 'file' ({', '.join(missing)})"},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return classifier.describe()

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
            status = 413 if "too many pixels" in e.reason or "decompression bomb" in e.reason else 400
            return JSONResponse({"error": f"{name}: {e.reason}"}, status_code=status)

    return UploadLimit(app, max_upload)
