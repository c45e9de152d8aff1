"""Embedded demo datasets, generated offline and deterministically, in the real datasets' layouts.

They exist so that ``make demo`` and the tests run anywhere. Their classes differ by structures that
loosely mimic the real findings, but numbers measured on them say NOTHING medical.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

OCT_CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
CXR_CLASSES = ("COVID-19", "Non-COVID", "Normal")
_MARKER = ".mstl-synthetic.json"


def _speckle(rng, shape, strength):
    return rng.gamma(4.0, 1.0 / 4.0, size=shape) * strength


def oct_image(cls: str, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """A B-scan-like image: retinal layer bands over a dark vitreous, with the class's lesion."""
    h = w = size
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    tilt = rng.uniform(-0.08, 0.08)
    curve = rng.uniform(0.05, 0.15)
    top = h * (0.35 + tilt * x + curve * x ** 2)  # inner limiting membrane
    thick = h * rng.uniform(0.22, 0.28)
    rpe = top + thick  # retinal pigment epithelium
    if cls == "CNV":  # sub-retinal bulge lifting the RPE, with a bright fibrovascular mass below it
        cx, wd = rng.uniform(-0.4, 0.4), rng.uniform(0.15, 0.3)
        bump = h * rng.uniform(0.08, 0.14) * np.exp(-((x - cx) / wd) ** 2)
        rpe = rpe - bump
    elif cls == "DRUSEN":  # several small bumps under the pigment layer
        for _ in range(rng.integers(3, 6)):
            cx, wd = rng.uniform(-0.7, 0.7), rng.uniform(0.03, 0.07)
            rpe = rpe - h * rng.uniform(0.025, 0.05) * np.exp(-((x - cx) / wd) ** 2)
    img = np.full((h, w), 0.06, np.float32)
    retina = (y > top) & (y < rpe)
    depth = np.clip((y - top) / np.maximum(rpe - top, 1), 0, 1)
    img = np.where(retina, 0.35 + 0.25 * np.sin(depth * np.pi * rng.uniform(3.5, 5.0)) ** 2, img)
    img = np.where(np.abs(y - top) < 2.0, 0.85, img)
    img = np.where(np.abs(y - rpe) < 3.0, 0.95, img)
    img = np.where((y > rpe + 3) & (y < rpe + 3 + h * 0.12), 0.45, img)  # choroid
    if cls == "CNV":
        mass = (y > rpe + 3) & (y < rpe + 3 + bump * 0.8) & (bump > 2)
        img = np.where(mass, 0.8, img)
    if cls == "DME":  # dark cystoid spaces inside a thickened retina
        for _ in range(rng.integers(2, 5)):
            cx = rng.uniform(-0.5, 0.5)
            cy = np.interp(cx, np.linspace(-1, 1, w), (top + 0.5 * (rpe - top))[0])
            ry, rx = h * rng.uniform(0.03, 0.06), rng.uniform(0.05, 0.12)
            cyst = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
            img = np.where(cyst, 0.08, img)
    img = img * _speckle(rng, (h, w), 1.0) + rng.normal(0, 0.03, (h, w))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def cxr_image(cls: str, rng: np.random.Generator, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A frontal chest-film-like image and its lung mask: bright body, dark lung fields, spine, ribs."""
    h = w = size
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    body = (x / 0.95) ** 2 + (y / 1.2) ** 2 < 1
    img = np.where(body, 0.62, 0.05).astype(np.float32)
    lungs = np.zeros((h, w), bool)
    centres = []
    for side in (-1, 1):
        cx, cy = side * rng.uniform(0.38, 0.45), rng.uniform(-0.05, 0.05)
        rx, ry = rng.uniform(0.26, 0.32), rng.uniform(0.55, 0.65)
        lung = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        lungs |= lung
        centres.append((cx, cy, rx, ry))
    img = np.where(lungs, 0.18, img)
    ribs = 0.06 * (np.sin((y + 0.15 * np.abs(x)) * rng.uniform(18, 22)) > 0.6)
    img = img + np.where(lungs, ribs, 0)
    img = np.where(np.abs(x) < 0.07, 0.8, img)  # spine / mediastinum
    if cls == "COVID-19":  # bilateral, peripheral, lower-zone haze
        for cx, cy, rx, ry in centres:
            periph = np.clip((np.abs(x - cx) / rx) * np.sign(x - cx) * np.sign(cx), 0, 1)
            lower = np.clip((y - cy) / ry + 0.3, 0, 1)
            haze = rng.uniform(0.15, 0.35) * periph * lower
            img = img + np.where(lungs, haze, 0)
    elif cls == "Non-COVID":  # one dense lobar opacity on one side
        cx, cy, rx, ry = centres[rng.integers(0, 2)]
        oy = cy + rng.uniform(-0.3, 0.3) * ry
        blob = np.exp(-(((x - cx) / (rx * 0.6)) ** 2 + ((y - oy) / (ry * 0.35)) ** 2))
        img = img + np.where(lungs, rng.uniform(0.2, 0.4) * blob, 0)
    # Patient-level variation that is not disease: exposure and a faint haze anywhere, so that the
    # classes overlap as real films do.
    img = img * rng.uniform(0.92, 1.08) + np.where(lungs, rng.uniform(0, 0.08), 0)
    img = img + rng.normal(0, 0.04, (h, w))
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return img, (lungs * 255).astype(np.uint8)


def _marker(root: Path) -> Path:
    # Beside the dataset, not in it: the readers would report it as a stray non-image file.
    return root.parent / f"{root.name}{_MARKER}"


def _is_complete(root: Path, spec: dict) -> bool:
    marker = _marker(root)
    return marker.exists() and json.loads(marker.read_text()) == spec


def make_oct_demo(root: str | Path, per_class: int, seed: int = 0, size: int = 160) -> Path:
    """OCT2017 layout: {train,test}/<class>/<CLASS>-<patient>-<n>.jpeg; 1-2 scans per patient."""
    root = Path(root)
    spec = {"kind": "oct", "per_class": per_class, "seed": seed, "size": size}
    if _is_complete(root, spec):
        return root
    jobs = []
    for ci, cls in enumerate(OCT_CLASSES):
        n_test = max(2, per_class // 10)
        for i in range(per_class):
            split = "test" if i < n_test else "train"
            patient = 1_000_000 + ci * 100_000 + i // 2
            jobs.append((cls, split, f"{cls}-{patient}-{i % 2 + 1}.jpeg", (seed, ci, i)))

    def write(job):
        cls, split, name, key = job
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        arr = oct_image(cls, np.random.default_rng(key), size)
        Image.fromarray(arr).save(d / name, quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, jobs))
    _marker(root).write_text(json.dumps(spec))
    return root


def make_cxr_demo(root: str | Path, per_class: int, seed: int = 0, size: int = 160) -> Path:
    """COVID-QU-Ex layout: Lung Segmentation Data/{Train,Val,Test}/<class>/{images,masks}/*.png."""
    root = Path(root)
    spec = {"kind": "cxr", "per_class": per_class, "seed": seed, "size": size, "version": 3}
    if _is_complete(root, spec):
        return root
    base = root / "Lung Segmentation Data"
    jobs = []
    for ci, cls in enumerate(CXR_CLASSES):
        for i in range(per_class):
            frac = i / per_class
            split = "Test" if frac < 0.2 else ("Val" if frac < 0.36 else "Train")
            stem = {"COVID-19": "covid", "Non-COVID": "non_COVID", "Normal": "Normal"}[cls]
            jobs.append((cls, split, f"{stem} ({i + 1}).png", (seed, 10 + ci, i)))

    def write(job):
        cls, split, name, key = job
        img, mask = cxr_image(cls, np.random.default_rng(key), size)
        for sub, arr in (("images", img), ("masks", mask)):
            d = base / split / cls / sub
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(d / name)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, jobs))
    _marker(root).write_text(json.dumps(spec))
    return root


def make_cxr_pool(root: str | Path, n: int, seed: int = 1, size: int = 160) -> list[str]:
    """``n`` more chest-X-ray-like images, unlabelled and drawn apart from the demo dataset (another
    seed), for the export gate: agreement with the Keras model needs no labels, only images of the same
    kind, and the demo's own target is too small for a verdict that is not noise. Written once as PNG
    files (the gate decodes them as a device does); returns their paths."""
    root = Path(root)
    spec = {"kind": "cxr-pool", "n": n, "seed": seed, "size": size, "version": 1}
    names = [root / f"pool-{i:05d}.png" for i in range(n)]
    if _is_complete(root, spec):
        return [str(p) for p in names]

    def write(i):
        cls = CXR_CLASSES[i % len(CXR_CLASSES)]
        img, _ = cxr_image(cls, np.random.default_rng((seed, 1000 + i)), size)
        Image.fromarray(img).save(names[i])

    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(n)))
    _marker(root).write_text(json.dumps(spec))
    return [str(p) for p in names]
