"""Shared by the browser tests: Debian's chromium (installed by `make test`'s setup, never by a test),
and the app served on a free local port for the duration of a block."""

import contextlib
import shutil
import socket
import threading
import time

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium: `make test` installs Debian's package where it can (root and apt-get)")
    return found


@contextlib.contextmanager
def serving(asgi_app):
    """``asgi_app`` on 127.0.0.1:<free port> in a thread; yields its origin, stops it afterwards."""
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
