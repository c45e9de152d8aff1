"""What the numbers were measured on: CPU, cores, OS, Python, runtime versions."""

from __future__ import annotations

import os
import platform
import re
import socket
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        for key in ("model name", "Hardware", "Model", "cpu model"):
            m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
            if m:
                return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "numpy", "pillow", "tensorflow", "tensorflow-cpu", "keras"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "runtimes": runtime_versions(),
    }


def slug(info: dict[str, Any]) -> str:
    """A file-name-safe tag of device and runtime versions, so reports from several devices sit side by side."""
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", info["cpu"]).strip("-")[:40]
    rt = info["runtimes"]
    parts = [cpu or info["arch"], f"{info['cores']}c"]
    if "ai-edge-litert" in rt:
        parts.append(f"litert{rt['ai-edge-litert']}")
    if "onnxruntime" in rt:
        parts.append(f"ort{rt['onnxruntime']}")
    return "_".join(parts)
