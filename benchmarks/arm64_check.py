"""The Raspberry Pi path, checked on an x86 Linux machine: Debian 12 arm64 (the base of 64-bit
Raspberry Pi OS) built with debootstrap and run under QEMU user-mode emulation, the project's wheel
installed there as a Pi user installs it (the edge install: no TensorFlow), and mstl-bench run there
on an exports folder with its verification bundle. Prints, per artifact, the agreement on aarch64
with the Keras answers the export saved and with the same artifact's answers on this x86 machine.
Timings under emulation mean nothing; answers are the check of ARM's kernels.

    python benchmarks/arm64_check.py [EXPORTS=runs/demo/exports] [--root DIR] [--runs N]

Needs root (chroot, mounts) and apt-get (installs qemu-user-static and debootstrap once); elsewhere it
prints one line saying why it was skipped. The arm64 root is built once and cached (--root, default
~/.cache/mstl/arm64-bookworm: about 6 minutes and 410 MB); the first pip install there takes about 9
minutes under emulation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
INSIDE = Path("/opt/mstl-check")  # in the arm64 root
VENV = Path("/opt/mstl-venv")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def why_not() -> str | None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "amd64"):
        return f"needs an x86-64 Linux host (this is {platform.system()} {platform.machine()})"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mounts)"
    if shutil.which("apt-get") is None and not (shutil.which("qemu-aarch64-static") and shutil.which("debootstrap")):
        return "needs apt-get to install qemu-user-static and debootstrap"
    return None


def tools() -> None:
    missing = [p for p, b in (("qemu-user-static", "qemu-aarch64-static"), ("debootstrap", "debootstrap"))
               if shutil.which(b) is None]
    if missing:
        say(f"installing {' '.join(missing)} (Debian packages, once)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, stdout=subprocess.DEVNULL)
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
    if not (binfmt / "qemu-aarch64").exists():
        (binfmt / "register").write_text(Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text())


def arm64_root(root: Path, mirror: str) -> None:
    if (root / "usr/bin/python3").exists():
        return
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"building the Debian 12 arm64 root in {root} (once; about 6 minutes)")
    run(["debootstrap", "--arch=arm64", f"--include={PACKAGES}", "bookworm", str(partial), mirror],
        stdout=subprocess.DEVNULL)
    partial.rename(root)


class Mounted:
    """/proc and /dev inside the root for the duration, and not /sys. Under user-mode emulation
    /proc/cpuinfo is the x86 host's; with the host's /sys CPU lists beside it the cpuinfo library that
    ONNX Runtime and XNNPACK link crashes at import (SIGSEGV, measured with QEMU 7.2), and without /sys
    it only fails to initialise: ONNX Runtime runs, and LiteRT runs without the XNNPACK delegate (its
    built-in kernels). So XNNPACK's ARM kernels are not what this check exercises - a real board is."""

    def __init__(self, root: Path):
        self.points = [root / "proc", root / "dev"]

    def __enter__(self):
        run(["mount", "-t", "proc", "proc", str(self.points[0])])
        run(["mount", "--rbind", "/dev", str(self.points[1])])
        return self

    def __exit__(self, *exc):
        for p in reversed(self.points):
            subprocess.run(["umount", "-R", "-l", str(p)], check=False)


def wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("mstl-*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], stdout=subprocess.DEVNULL)
    return next(out.glob("mstl-*.whl"))


def chroot(root: Path, *cmd: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "HTTPS_PROXY", "HTTP_PROXY"):
        if key in os.environ:
            env[key] = os.environ[key]
    exe = shutil.which("chroot") or "/usr/sbin/chroot"  # resolved here: env's PATH is the root's
    return subprocess.run([exe, str(root), *cmd], env=env, check=True, text=True,
                          capture_output=capture)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/arm64_check.py")
    ap.add_argument("exports", type=Path, nargs="?", default=REPO / "runs/demo/exports")
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/mstl/arm64-bookworm")
    ap.add_argument("--mirror", default=MIRROR)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per artifact (emulated timings mean nothing)")
    args = ap.parse_args(argv)
    reason = why_not()
    if reason:
        print(f"arm64_check=skipped: {reason}")
        return 0
    exports = args.exports.resolve()
    if not (exports / "manifest.json").is_file() or not (exports / "bundle" / "bundle.json").is_file():
        print(f"error: {exports}: no exports with a verification bundle - run make demo (or mstl-export) first",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    tools()
    arm64_root(args.root, args.mirror)
    root = args.root
    for f in ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt"):
        if Path(f).is_file():
            (root / f.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, root / f.lstrip("/"))
    inside = root / str(INSIDE).lstrip("/")
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir(parents=True)
    whl = wheel(Path(tempfile.mkdtemp(prefix="mstl-wheel-")))
    shutil.copyfile(whl, inside / whl.name)
    shutil.copytree(exports, inside / "exports")
    x86_json = inside / "x86.json"
    say("bench on this x86 machine (the reference answers)")
    run([sys.executable, "-m", "mstl.cli.bench", str(exports), "--threads", "1", "--runs", str(args.runs),
         "--warmup", "1", "--json", str(x86_json)], stdout=subprocess.DEVNULL)
    with Mounted(root):
        t1 = time.monotonic()
        if not (root / str(VENV).lstrip("/") / "bin/python").exists():
            chroot(root, "/usr/bin/python3", "-m", "venv", str(VENV))
        say("installing the wheel in the arm64 root as a Pi user would (pip install mstl-*.whl; emulated, minutes)")
        chroot(root, f"{VENV}/bin/pip", "install", "-q", str(INSIDE / whl.name))
        chroot(root, f"{VENV}/bin/pip", "install", "-q", "--force-reinstall", "--no-deps", str(INSIDE / whl.name))
        print("arm64_install=ok")
        print(f"arm64_install_seconds={time.monotonic() - t1:.0f}")
        tf = chroot(root, f"{VENV}/bin/python", "-c", "import importlib.util as u; print(u.find_spec('tensorflow') is None "
                    "and u.find_spec('keras') is None)", capture=True).stdout.strip()
        print(f"arm64_no_tensorflow={'ok' if tf == 'True' else 'FAILED: TensorFlow is installed'}")
        sizes = chroot(root, f"{VENV}/bin/python", "-c", "import importlib.metadata as m, pathlib; print(round(sum("
                       "f.locate().stat().st_size for d in m.distributions() for f in (d.files or []) "
                       "if f.locate().is_file()) / 1e6))", capture=True).stdout.strip()
        print(f"arm64_install_mb={sizes}")
        say("bench in the arm64 root (emulated: slow)")
        chroot(root, f"{VENV}/bin/mstl-bench", str(INSIDE / "exports"), "--threads", "1", "--runs", str(args.runs),
               "--warmup", "1", "--json", str(INSIDE / "arm64.json"), "--markdown", str(INSIDE / "arm64.md"))
    arm, x86 = (json.loads((inside / f).read_text()) for f in ("arm64.json", "x86.json"))
    print(f"arm64_emulated={int(bool(arm['machine'].get('emulated')))}")
    print(f"arm64_cpu={arm['machine']['cpu']!r}")
    xnn = sorted({str(r.get("xnnpack")) for r in arm["results"] if r.get("format") == "tflite"})
    print(f"arm64_litert_xnnpack={','.join(xnn)}")
    here = {r["artifact"]: r for r in x86["results"]}
    ok = tf == "True"
    for r in arm["results"]:
        name = r["artifact"].replace("-", "_").replace(".", "_")
        if r.get("status") != "ok" or "bundle_agreement" not in r:
            print(f"arm64_agreement_{name}=FAILED: {r.get('error', 'no bundle agreement')}")
            ok = False
            continue
        b, gate = r["bundle_agreement"], r["bundle_agreement"].get("threshold")
        passes = b["agreement"] is not None and not b.get("disagrees")  # the bench's count test against the gate
        ok = ok and passes
        print(f"arm64_agreement_{name}={b['agreement']:.4f} ({b['flips']} flips of {b['n_compared']}; gate "
              f"{gate if gate is not None else '-'}, p = {b.get('p_value', float('nan')):.3g}: {'pass' if passes else 'FAIL'}); "
              f"max|diff| vs Keras {b['max_abs_diff']:.4f}")
        if b.get("vs_export"):
            v = b["vs_export"]
            print(f"arm64_vs_export_{name}={v['changed']} of {v['n_compared']} top-1 answers changed, "
                  f"max|diff| {v['max_abs_diff']:.6f}")
        x = here.get(r["artifact"])
        if x and "bundle_probs" in x and "bundle_probs" in r:
            a, c = np.asarray(r["bundle_probs"]), np.asarray(x["bundle_probs"])
            print(f"arm64_vs_x86_{name}=top-1 equal {np.mean(a.argmax(1) == c.argmax(1)):.4f}, "
                  f"max|diff| {np.abs(a - c).max():.4f}")
            print(f"x86_agreement_{name}={x['bundle_agreement']['agreement']:.4f}")
    print(f"arm64_check_seconds={time.monotonic() - t0:.0f}")
    say(f"arm64 bench table: {inside / 'arm64.md'}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
