"""What several test files run in a process of its own: mstl with TensorFlow blocked (what a board
without it sees), and a trainer holding a run dir's lock (what a running mstl-train does)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Any import of tensorflow, keras or tf2onnx (or of a submodule) fails, as it does where none is installed.
BLOCK_TENSORFLOW = ("import sys, importlib.abc\n"
                    "class Block(importlib.abc.MetaPathFinder):\n"
                    "    def find_spec(self, name, path, target=None):\n"
                    "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'):\n"
                    "            raise ImportError('blocked: ' + name)\n"
                    "sys.meta_path.insert(0, Block())\n")

HOLD_LOCK = ("import sys, time; from mstl.train.store import RunStore; RunStore(sys.argv[1]).lock(); "
             "print('locked', flush=True); time.sleep(60)")


def _env() -> dict[str, str]:
    """This process's import path for the child, so that it imports the same mstl."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def run_without_tensorflow(code: str, *args: str) -> subprocess.CompletedProcess:
    """Python ``code`` (with ``args`` in sys.argv[1:]) in a process where TensorFlow cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW + code, *args], capture_output=True, text=True,
                          env=_env())


@contextmanager
def trainer_holding(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holding ``run_dir``'s lock, as a running mstl-train does; killed when the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
