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


# Instruction-set extensions that decide whether int8 kernels beat float ones (x86: VNNI dot products;
# ARM: the dot-product extension, "asimddp" in /proc/cpuinfo).
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd", "asimddp", "i8mm")


# Flags whose int8 dot products accumulate in int32 (x86); without them AVX2 adds pairs in int16.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> list[str]:
    """The int8-relevant instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return []
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    have = set(m.group(1).split()) if m else set()
    return [f for f in INT8_FLAGS if f in have]


def int8_speed_hint(flags: list[str]) -> str:
    """Why int8 may or may not beat float32 on this CPU, in one clause."""
    f = set(flags)
    if f & VNNI_FLAGS:
        return "VNNI int8 dot products present: int8 kernels are usually faster than fp32 here"
    if "asimddp" in f or "i8mm" in f:
        return "ARM int8 dot-product instructions present: int8 is usually faster than fp32 here"
    if "avx2" in f:
        return "AVX2 without VNNI: int8 dot products take extra instructions, so int8 often gains size, not speed"
    if f & {"neon", "asimd"}:
        return "NEON without the dot-product extension: int8 gains are modest"
    return "no int8 dot-product instructions detected: expect int8 to gain size, not speed"


def u8s8_may_saturate(flags: list[str]) -> bool:
    """x86 with AVX2 but no VNNI: ONNX Runtime's u8s8 kernels multiply-add byte pairs into int16 with
    saturation (VPMADDUBSW), so 8-bit weights can overflow there; VNNI accumulates in int32. (ONNX
    Runtime's quantization guide: reduce_range, 7-bit weights, exists for these machines.)"""
    f = set(flags)
    return "avx2" in f and not f & VNNI_FLAGS


def proc_status_mb(key: str, pid: int | str = "self") -> float | None:
    """A memory line of /proc/PID/status ("VmRSS", "VmHWM", ...) in MB; None where there is none (not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


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
        "cpu_flags": cpu_flags(),
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
