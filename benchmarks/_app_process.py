"""What the app benchmarks share (app_memory, container_upload, device_post_load, device_post_race): the
app in a process of its own (so its memory and its GIL are its own), started and waited for on /health;
/health polled from a third process, as a load balancer would; concurrent requests counted by status.

Imported by the benchmark scripts, which run as `python benchmarks/NAME.py` (this folder is on sys.path).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

# The /device benches serve through create_app with a DeviceBench of their own sample count, which
# the mstl-app CLI sets only together with its other defaults.
SERVE_WITH_DEVICE = """
import sys, uvicorn
from pathlib import Path
from mstl.edge.app.device import DeviceBench
from mstl.edge.app.inference import Classifier
from mstl.edge.app.server import create_app
model = Path(sys.argv[1])
app = create_app(Classifier(model, workers=1), device=DeviceBench(model.parent, n_samples=int(sys.argv[3])))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""

# A failed poll is printed at the time it took: a stall is the figure wanted, not a lost poller.
POLL_HEALTH = """
import sys, time, os, httpx
base, stop, interval, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
with httpx.Client(timeout=timeout) as c:
    while not os.path.exists(stop):
        t = time.perf_counter()
        try:
            c.get(base + "/health")
        except httpx.HTTPError:
            pass
        print(f"{(time.perf_counter() - t) * 1000:.3f}", flush=True)
        time.sleep(interval)
"""


@dataclass
class App:
    process: subprocess.Popen
    base: str  # http://127.0.0.1:PORT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mstl_app_command(model: Path | str, *flags: str) -> Callable[[int], list[str]]:
    """The mstl-app CLI next to this interpreter on MODEL with FLAGS, for a port chosen later."""
    exe = Path(sys.executable).with_name("mstl-app")
    return lambda port: [str(exe), "--model", str(model), "--port", str(port), *flags]


def device_app_command(model: Path | str, samples: int) -> Callable[[int], list[str]]:
    """The app with a /device bench of SAMPLES held-out images, for a port chosen later."""
    return lambda port: [sys.executable, "-c", SERVE_WITH_DEVICE, str(model), str(port), str(samples)]


@contextmanager
def running_app(command: Callable[[int], list[str]], startup_s: float = 120, port: int = 0) -> Iterator[App]:
    """Starts COMMAND(port) on PORT (0: a free one), waits until /health answers 200, and stops it on leaving.
    A server that exits or never answers ends the benchmark with its stderr."""
    import httpx
    port = port or free_port()
    # stderr into a file, not a pipe: a pipe nobody reads would stall a chatty server once full
    errors = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=errors, text=True)
    app = App(server, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(app.base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                errors.seek(0)
                sys.exit("server did not start: " + errors.read())
            if time.monotonic() > deadline:
                sys.exit(f"server did not answer /health within {startup_s:.0f} s")
            time.sleep(0.2)
        yield app
    finally:
        server.terminate()
        server.wait(timeout=30)
        errors.close()


def rss_mb(pid: int, key: str) -> float:
    """VmRSS, VmHWM, ... of process PID in MB; nan where /proc has none."""
    from mstl.edge.core.machine import proc_status_mb
    mb = proc_status_mb(key, pid)
    return float("nan") if mb is None else mb


@contextmanager
def health_polled(base: str, interval_s: float, timeout_s: float) -> Iterator[list[float]]:
    """Polls BASE/health every INTERVAL_S from a process of its own while the block runs; the list it
    gives holds each poll's milliseconds once the block has ended."""
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mstl-health-") as tmp:
        stop = Path(tmp) / "stop"
        poller = subprocess.Popen([sys.executable, "-c", POLL_HEALTH, base, str(stop), str(interval_s),
                                   str(timeout_s)], stdout=subprocess.PIPE, text=True)
        try:
            yield times
        finally:
            stop.touch()
            out, _ = poller.communicate(timeout=timeout_s + 60)
    times.extend(float(v) for v in out.split())


def statuses(request: Callable[[int], int], calls: int, threads: int) -> tuple[Counter, float]:
    """REQUEST(i) for i in range(CALLS) on THREADS threads: a count of the status codes it returned (an
    HTTP error by its class name), and the seconds it all took."""
    import httpx

    def one(i: int) -> int | str:
        try:
            return request(i)
        except httpx.HTTPError as e:
            return type(e).__name__
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        counted = Counter(pool.map(one, range(calls)))
    return counted, time.perf_counter() - t0
