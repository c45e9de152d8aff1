"""Export a Keras classifier to every selected format, verify each, write cards and a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.splits import stratified_sample
from ..formats import BuildOptions, Format
from ..progress import say
from ..machine import cpu_flags, cpu_model, u8s8_may_saturate
from ..preprocess import Preprocess
from ..runtimes import load_runtime
from .verify import verify

CORRECTION_IMAGES = 200  # calibration images the bias correction measures channel means on
EXPLAIN_IMAGES = 16

INTENDED_USE = ("Research prototype for evaluating on-device inference of a small medical-image classifier. "
                "NOT a medical device and not for diagnosis or treatment decisions.")


@dataclass
class ExportJob:
    model_path: Path
    out_dir: Path
    formats: list[Format]
    labels: list[str]
    image_size: int
    resize_method: str
    scaling: str
    verify_sources: list[str]
    calibration_sources: list[str]
    calibration_labels: np.ndarray | None = None
    calibration_n: int = 200
    verify_labels: np.ndarray | None = None
    explain: bool = False
    io: str = "uint8"
    thresholds: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    data_licence: str = "not recorded: state the training data's licence here"
    stem: str = "classifier"
    # ONNX int8 for every x86 CPU (7-bit u8s8 weights) instead of for the exporting one
    portable_int8: bool = False

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.resize_method)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_classifier(model) -> int:
    """The number of classes, or a clear error when the model is not an image classifier."""
    shape_in, shape_out = model.input_shape, model.output_shape
    if isinstance(shape_out, list) or isinstance(shape_in, list):
        raise ValueError("the model has several inputs or outputs; mstl exports single-image classifiers")
    if len(shape_in) != 4 or shape_in[-1] != 3 or shape_in[1] != shape_in[2]:
        raise ValueError(f"the model's input {shape_in} is not a square RGB image (None, S, S, 3)")
    last = model.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    if len(shape_out) != 2 or shape_out[-1] < 2 or act != "softmax":
        raise ValueError(f"the model is not a classifier: output {shape_out}, last activation {act or 'none'} "
                         "(need a softmax over at least 2 classes)")
    return int(shape_out[-1])


def _io_card(rt, labels, job: ExportJob) -> dict[str, Any]:
    integer_in = np.issubdtype(rt.input_dtype, np.integer)
    card_in: dict[str, Any] = {"name": "input", **job.preprocess.to_card(), "dtype": str(rt.input_dtype),
                               "trained_scaling": job.scaling}
    if integer_in:
        card_in["range"] = [int(np.iinfo(rt.input_dtype).min), int(np.iinfo(rt.input_dtype).max)]
    if rt.input_quant:
        card_in["quantization"] = {"scale": rt.input_quant.scale, "zero_point": rt.input_quant.zero_point}
        if str(rt.input_dtype) == "int8":
            card_in["meaning"] = "raw pixel values minus 128 (int8); scaling is inside the graph"
    card_out: dict[str, Any] = {"shape": [1, len(labels)], "meaning": "class probabilities (softmax), in labels order"}
    if rt.output_quant:
        card_out["dtype"] = "uint8" if job.io == "uint8" else "int8"
        card_out["quantization"] = {"scale": rt.output_quant.scale, "zero_point": rt.output_quant.zero_point}
    else:
        card_out["dtype"] = "float32"
    return {"input": card_in, "output": card_out}


class _Int8Ready:
    """The int8-ready copy of the model (bias_correction.py), made once, when a recipe first asks."""

    def __init__(self, model_path: Path, calibration: np.ndarray | None):
        self.model_path, self.calibration, self.model, self.info = model_path, calibration, None, None
        self.targets: dict = {}

    def get(self):
        if self.model is None:
            from ..model import load_classifier
            from .bias_correction import int8_ready
            self.model = load_classifier(self.model_path)
            say("  preparing the int8-ready model (kernels rounded to the int8 grid, biases corrected)")
            self.info = int8_ready(self.model, self.calibration[:CORRECTION_IMAGES], targets=self.targets)
        return self.model

    def refined_build(self, builder, work: Path, opts) -> bytes:
        """Build, correct the linear offsets for what the built int8 model's own activations do, build
        again; the shared int8-ready model is left as it was (other formats use it)."""
        from .bias_correction import activation_correct, restore_betas
        model = self.get()
        for sub in ("refine-1", "refine-2"):  # fresh folders: the SavedModel cache is per folder and model
            (work / sub).mkdir(parents=True, exist_ok=True)
        first = builder(model, work / "refine-1", opts)
        done = activation_correct(model, first, self.calibration[:CORRECTION_IMAGES], self.targets)
        try:
            return builder(model, work / "refine-2", opts)
        finally:
            restore_betas(model, done["saved"])


def run_export(job: ExportJob) -> dict[str, Any]:
    from ..model import load_classifier

    model = load_classifier(job.model_path)
    n_classes = check_classifier(model)
    if n_classes != len(job.labels):
        raise ValueError(f"{job.model_path} has {n_classes} outputs but {len(job.labels)} labels were given")
    if int(model.input_shape[1]) != job.image_size:
        raise ValueError(f"{job.model_path} takes {model.input_shape[1]} px images, the config says {job.image_size}")
    final = job.out_dir
    for line in _recover_leftovers(final):
        say(line)
    _check_out_dir(final)
    # Everything is written into a staging folder that replaces the old exports whole at the end: a
    # kill leaves the old folder as it was, and no file of an earlier export outlives its manifest.
    staging = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    job.out_dir = staging
    try:
        manifest = _export_all(job, model)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        job.out_dir = final
        raise
    _swap_in(staging, final)
    job.out_dir = final
    return manifest


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give --out a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ValueError(f"{out} is not empty and holds no mstl manifest.json: mstl replaces its exports folder whole "
                         "and will not replace this one; give --out a new or empty folder")


def _swap_in(staging: Path, final: Path) -> None:
    if final.exists() and _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old exports
        return
    # No atomic exchange here (not Linux, or a file system without it): two renames, and a kill
    # between them is repaired by the next export (_recover_leftovers).
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE): a reader, or a kill, sees the old
    exports or the new ones, never neither. False where the system cannot."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _recover_leftovers(final: Path) -> list[str]:
    """Folders an export killed mid-way left beside FINAL: a staging folder is dropped; an old folder is
    put back when FINAL itself is missing (killed between the two renames), else dropped. Folders of
    a process that is still running are left alone."""
    said = []
    prefix = f".{final.name}."  # not a glob: a folder name may hold '[' or '*'
    for path in sorted(final.parent.iterdir()) if final.parent.is_dir() else []:
        if not path.name.startswith(prefix):
            continue
        kind, _, pid = path.name[len(prefix):].rpartition("-")
        if kind not in ("staging", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            os.replace(path, final)
            said.append(f"restored {final} from an export that was killed while swapping folders")
        else:
            shutil.rmtree(path, ignore_errors=True)
            said.append(f"removed {path.name}, left by an export that was killed")
    return said


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _export_all(job: ExportJob, model) -> dict[str, Any]:
    calibration, pick = None, np.zeros(0, int)
    if any("calibration" in f.options for f in job.formats):
        n = min(job.calibration_n, len(job.calibration_sources))
        pick = (stratified_sample(job.calibration_labels, n, 0) if job.calibration_labels is not None
                else np.arange(n))
        say(f"decoding {n} calibration images (stratified from the training split)")
        calibration = job.preprocess.load_many([job.calibration_sources[i] for i in pick])
    # Agreement checks the conversion, so every image that did not calibrate it counts.
    held = set(job.verify_sources)
    used = set(int(i) for i in pick)
    extra = [i for i, s in enumerate(job.calibration_sources) if i not in used and s not in held]
    sources = list(job.verify_sources) + [job.calibration_sources[i] for i in extra]
    labels = None
    if job.verify_labels is not None and job.calibration_labels is not None:
        labels = np.concatenate([np.asarray(job.verify_labels), np.asarray(job.calibration_labels)[extra]]).astype(int)
    heldout = np.arange(len(sources)) < len(job.verify_sources)
    say(f"decoding {len(sources)} verification images through the edge path (Pillow): "
        f"{len(job.verify_sources)} held out, {len(extra)} training images not used for calibration")
    pixels = job.preprocess.load_many(sources)
    reference = model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)
    check = _Check(pixels, reference, labels, heldout)
    ready = _Int8Ready(job.model_path, calibration)
    machine = {"cpu": cpu_model(), "cpu_flags": cpu_flags()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mstl-export-") as tmp:
        work = Path(tmp)
        for fmt in job.formats:
            rows.append(_export_one(fmt, model, ready, work, job, check, calibration, machine))
    if job.explain:
        from .diagnose import explain_exports
        explain_exports(job.out_dir, rows, pixels[~heldout][:EXPLAIN_IMAGES] if (~heldout).any() else pixels[:EXPLAIN_IMAGES])
    (job.out_dir / "labels.txt").write_text("\n".join(job.labels) + "\n")
    manifest = {
        "artifacts": rows, "labels": job.labels, "source": job.source,
        "image_size": job.image_size, "resize_method": job.resize_method,
        "verification_images": len(sources), "heldout_images": len(job.verify_sources),
        "calibration": {"images": int(len(pick)), "from": "target training split, stratified by class, seed 0"},
        "machine": machine,
        "onnx_int8_built_for": "every x86 CPU (--portable-int8)" if job.portable_int8 else "this CPU",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _atomic_write(job.out_dir / "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


@dataclass
class _Check:
    pixels: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None
    heldout: np.ndarray


def _export_one(fmt: Format, model, ready: _Int8Ready, work: Path, job: ExportJob, chk: _Check,
                calibration, machine: dict[str, Any]) -> dict[str, Any]:
    """Try the format's recipes in order (fastest first) and keep the first that passes the gate. A
    format none of whose recipes passes is written under a '-rejected' name, never the default one."""
    name = fmt.filename(job.stem)
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "format": fmt.format, "precision": fmt.precision, "path": name,
                           "key": fmt.key, "size_bytes": None, "status": "failed", "agreement": None,
                           "max_abs_diff": None, "n_compared": 0}
    threshold = job.thresholds.get(fmt.precision, fmt.min_agreement)
    tried: list[dict[str, Any]] = []
    best = None
    exact_u8s8 = not job.portable_int8 and not u8s8_may_saturate(machine["cpu_flags"])
    for recipe, skip in fmt.ladder_for(exact_u8s8):
        if skip:
            tried.append({"recipe": recipe.name, "status": "skipped", "reason": skip})
            continue
        try:
            opts = BuildOptions(calibration, job.io).with_recipe(recipe)
            if recipe.refine:
                data = ready.refined_build(fmt.load_builder(), work, opts)
            else:
                data = fmt.load_builder()(ready.get() if recipe.prepared else model, work, opts)
            staged = work / name
            staged.write_bytes(data)
            rt = load_runtime(staged, threads=2)
        except Exception as e:  # a converter failure is reported per recipe; the next one may work
            reason = f"conversion failed: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
            tried.append({"recipe": recipe.name, "status": "failed", "reason": reason})
            say(f"{name} [{recipe.name}]: {reason}")
            continue
        check = verify(rt, chk.pixels, chk.reference, threshold, chk.labels, chk.heldout)
        tried.append({"recipe": recipe.name, "status": check["status"], "agreement": check["agreement"],
                      "flips": check["flips"], "n_compared": check["n_compared"],
                      "max_abs_diff": check["max_abs_diff"], **({"reason": check["reason"]} if "reason" in check else {})})
        if len(tried) > 1 or len(fmt.ladder) > 1:
            agree = "-" if check["agreement"] is None else f"{100 * check['agreement']:.2f}%"
            say(f"{name} [{recipe.name}]: agreement {agree} ({check['flips']} flips of {check['n_compared']}) -> {check['status']}")
        if best is None or check["status"] == "ok" or (check["agreement"] or 0) > (best[2]["agreement"] or 0):
            best = (recipe, data, check, rt)
        if check["status"] == "ok":
            break
    if best is None:
        row["error"] = "; ".join(t["reason"] for t in tried)
        row["recipes_tried"] = tried
        return row
    recipe, data, check, rt = best
    if check["status"] != "ok":
        name = fmt.rejected_filename(job.stem)
        row.update({"name": name, "path": name})
    card = {"name": name, "format": fmt.format, "precision": fmt.precision, "labels": job.labels,
            **_io_card(rt, job.labels, job), "source": job.source, "intended_use": INTENDED_USE,
            "data_licence": job.data_licence, "note": fmt.note, "recipe": recipe.name,
            "recipe_note": recipe.note, "builder_options": recipe.kwargs, "recipes_tried": tried,
            "built_for_cpus": recipe.cpus}
    if recipe.prepared:
        card["int8_ready"] = ready.info
    if calibration is not None and "calibration" in fmt.options:
        card["calibration"] = {"images": int(len(calibration)), "from": "target training split, stratified, seed 0"}
    card["machine"] = machine
    data = fmt.load_module().embed_metadata(data, card)
    seconds = round(time.monotonic() - t0, 2)
    card.update({"sha256": _sha256(data), "size_bytes": len(data), "verification": check,
                 "runtime": f"{rt.name} {rt.version}", "export_seconds": seconds})
    path = job.out_dir / name
    _atomic_write(path, data)
    _atomic_write(path.with_name(name + ".json"), json.dumps(card, indent=2).encode())
    row.update({"size_bytes": len(data), "status": check["status"], "agreement": check["agreement"],
                "agreement_ci95": check["agreement_ci95"], "flips": check["flips"],
                "max_abs_diff": check["max_abs_diff"], "n_compared": check["n_compared"],
                "export_seconds": seconds, "sha256": card["sha256"], "recipe": recipe.name, "recipes_tried": tried})
    if "heldout" in check:
        row["heldout"] = check["heldout"]
    for key in ("reason", "warning"):
        if key in check:
            row[key] = check[key]
    agree = "-" if check["agreement"] is None else f"{100 * check['agreement']:.2f}%"
    say(f"{name}: {len(data) / 1e6:.2f} MB, {seconds:.1f}s, recipe {recipe.name}, agreement {agree} on "
        f"{check['n_compared']} images, max |diff| {check['max_abs_diff']:.4f} -> {check['status']}"
        + (f" ({check['reason']})" if "reason" in check else ""))
    return row


def job_from_run(run_dir: Path, formats: list[Format], out_dir: Path | None, model_path: Path | None,
                 calibration_n: int, io: str, thresholds: dict[str, float], explain: bool = False) -> ExportJob:
    """An export job for a run dir: the deployable stage-2 classifier, its test split for verification
    and its training split for calibration."""
    from ..train.store import RunStore

    store = RunStore(run_dir)
    cfg = store.config()
    if model_path is None:
        sel_path = store.dir / "selection.json"
        if not sel_path.exists():
            raise FileNotFoundError(f"{run_dir}: no selection.json - stage 2 has not finished (run `mstl-train stage2`)")
        sel = json.loads(sel_path.read_text())
        model_path = store.dir / sel["model"]
        say(f"model: {model_path} (stage 2 on the bridge size {sel['size']} model, seed {sel['seed']}: {sel['why']})")
    # Held out: the test and validation splits (neither trained the model); the gate adds the training
    # images that do not calibrate.
    from ..train.store import read_split
    test_src, test_y = read_split(store.dir, "test")
    val_src, val_y = read_split(store.dir, "val") or ([], np.zeros(0, int))
    verify_src = test_src + val_src
    cal_src, cal_y = read_split(store.dir, "train")
    labels = (store.dir / "labels.txt").read_text().split("\n")[:-1]
    demo = cfg.target is None
    return ExportJob(
        model_path=Path(model_path), out_dir=out_dir or store.dir / "exports", formats=formats, labels=labels,
        image_size=cfg.data.image_size, resize_method=cfg.data.resize_method, scaling=cfg.data.scaling,
        verify_sources=verify_src, verify_labels=np.concatenate([test_y, val_y]).astype(int),
        calibration_sources=cal_src, calibration_labels=cal_y,
        calibration_n=calibration_n, io=io, thresholds=thresholds, explain=explain,
        source={"run_dir": str(store.dir.resolve()), "config_hash": store.config_hash(), "model": str(model_path),
                "preset": cfg.preset, "weights": cfg.model.weights},
        data_licence=("synthetic demo data generated by mstl: no licence restrictions, no medical meaning" if demo
                      else f"as the licence of the training data ({cfg.bridge}, {cfg.target}); mstl does not record it"),
    )
