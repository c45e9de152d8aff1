"""What the numbers were measured on: CPU, cores, OS, Python, runtime versions."""

from __future__ import annotations

import copy
import functools
import os
import platform
import re
import socket
from typing import Any


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


# Instruction-set extensions that decide whether int8 kernels beat float ones (x86: VNNI dot products;
# ARM: the dot-product extension "asimddp", the int8 matrix multiply "i8mm", the scalable vectors "sve").
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd", "asimddp",
              "i8mm", "sve", "sve2")

# Flags whose int8 dot products accumulate in int32 (x86); without them AVX2 adds pairs in int16.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

# Arm's own cores by the "CPU part" of /proc/cpuinfo (implementer 0x41), the ones boards ship with.
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520",
             "0xd81": "Cortex-A720"}


def _field(text: str, key: str) -> str | None:
    m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def cpuinfo_family(text: str) -> str | None:
    """Which kind of CPU a /proc/cpuinfo text describes: "x86", "arm", or None (unknown)."""
    if re.search(r"^(vendor_id|flags)\s*:", text, re.MULTILINE):
        return "x86"
    if re.search(r"^(CPU implementer|Features)\s*:", text, re.MULTILINE):
        return "arm"
    return None


def parse_cpu(text: str, arch: str, board: str | None = None) -> dict[str, Any]:
    """CPU model, int8-relevant flags, board and whether the process is emulated, from a /proc/cpuinfo
    text and the process's own architecture. User-mode QEMU (an aarch64 Python on an x86 host) shows
    the host's cpuinfo: a text of the other family is the sign, and its flags are not this CPU's."""
    family = cpuinfo_family(text)
    arch_family = "arm" if arch in ("aarch64", "arm64") or arch.startswith("arm") else \
        "x86" if arch in ("x86_64", "amd64", "i386", "i686") else None
    emulated = bool(family and arch_family and family != arch_family)
    model = next((v for k in ("model name", "cpu model") if (v := _field(text, k))), None)
    if family == "arm" and not model:
        parts = sorted(set(re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", text, re.MULTILINE)))
        implementer = _field(text, "CPU implementer")
        names = [ARM_CORES.get(p.lower(), p) if implementer == "0x41" else f"part {p}" for p in parts]
        model = " + ".join(names) if names else None
    board = board or _field(text, "Model")  # Raspberry Pi OS puts the board in cpuinfo too
    if board and model and family == "arm":
        model = f"{model} ({board})"
    if emulated:
        model = f"{arch} emulated on {model or family}"
    flags_line = _field(text, "flags") or _field(text, "Features") or ""
    have = set(flags_line.split())
    return {"cpu": model or _field(text, "Hardware") or arch, "cpu_flags": [] if emulated else
            [f for f in INT8_FLAGS if f in have], "board": board, "emulated": emulated,
            "host_cpu_flags": [f for f in INT8_FLAGS if f in have] if emulated else None}


@functools.lru_cache(maxsize=1)
def _this_cpu() -> dict[str, Any]:
    text = _read("/proc/cpuinfo")
    board = _read("/proc/device-tree/model").strip("\x00\n ") or None
    cpu = parse_cpu(text, platform.machine(), board)
    if not text:  # not Linux
        cpu["cpu"] = platform.processor() or platform.machine()
    return cpu


def this_cpu() -> dict[str, Any]:
    """This process's CPU (read once: the bench asks per artifact)."""
    return copy.deepcopy(_this_cpu())


def cpu_model() -> str:
    return _this_cpu()["cpu"]


def cpu_flags() -> list[str]:
    """The int8-relevant instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere, and
    empty under emulation, where cpuinfo describes the host)."""
    return list(_this_cpu()["cpu_flags"])


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
    cpu = this_cpu()
    return {
        "cpu": cpu["cpu"],
        "board": cpu["board"],
        "emulated": cpu["emulated"],
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "runtimes": runtime_versions(),
        "cpu_flags": cpu["cpu_flags"],
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
