"""Export a Keras classifier to every selected format, verify each, write cards and a manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..edge.core.agreement import GATE_LIST, GATE_REFERENCE, SELECTION
from ..edge.core.bundle import DEFAULT_SAMPLES
from ..edge.core.filelist import write_list
from ..data.splits import stratified_sample
from ..edge.core.formats import MIN_INT8_MAC_SHARE, BuildOptions, Format, Recipe
from ..edge.core.progress import say
from ..edge.core.machine import cpu_flags, cpu_model, u8s8_may_saturate
from ..edge.core.preprocess import Preprocess
from ..edge.core.outputs import OutputError, write_then_rename
from ..edge.core.runtimes import load_runtime
from ..edge.core import rundir
from ..edge.core.rundir import LABELS, SPLIT_LISTS, read_labels, read_selection, read_split, write_labels
from .gate import CONFIRM_WANTED, ERROR_POOL, SELECTION_MARGIN, SELECTION_SHARE, SPLIT_SEED, Gate
from .mixed import OUTLIER_DB, RANK_IMAGES, sure_agreement

CORRECTION_IMAGES = 200  # calibration images the bias correction measures channel means on
# How the int8-ready kernels are rounded is a recipe's choice (BuildOptions.rounding): nearest on every
# rung but the last full-int8 one of the TFLite and the 7-bit ONNX ladders, which use GPTQ
# (export/gptq.py; the TFLite rung's figures are in edge/core/formats.py). Measured: on the 8-bit grid GPTQ
# took the paper-rule X-ray model's float-activation error from 0.106 to 0.066 but its simulated int8
# build's only from 0.216 to 0.210 (Intel Xeon); on the 7-bit grid it took that model's shipped ONNX
# int8 from 33 to 19 flips (AVX2-only AMD EPYC) and from 29 to 15 (--portable-int8, Intel Xeon), but the
# converged head's from 30 to 40 (AMD) and the demo's from 3 to 5 of 2,019, at 2.4x the ONNX int8
# export time - so it is a rung the gate measures, after the nearest-rounded ones, not a default.
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
    # unlabelled images of the same kind for the gate (the demo's generated ones, --gate-extra)
    gate_extra_sources: list[str] = field(default_factory=list)
    gate_confirm: int = CONFIRM_WANTED  # confirmation images the gate asks for
    bundle_samples: int = DEFAULT_SAMPLES  # held-out images copied into the verification bundle (0: none)
    decision: dict[str, Any] | None = None  # the run's operating point and temperature (selection.json)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.resize_method)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    write_then_rename(path, path.with_name(f".{path.name}.partial{os.getpid()}"), lambda tmp: tmp.write_bytes(data))


def final_activation(model) -> str:
    """The name of the function the model's output goes through last: a layer's own activation
    (Dense(..., activation="softmax"), Activation("softmax")) or a Softmax layer over the class axis,
    looked for inside a nested model (a Sequential wrapping the network) too."""
    last = model.layers[-1] if model.layers else None
    while getattr(last, "layers", None):  # a nested Model/Sequential: its own last layer decides
        last = last.layers[-1]
    if last is None:
        return ""
    if type(last).__name__ == "Softmax" and getattr(last, "axis", -1) in (-1, 1):
        return "softmax"
    return getattr(getattr(last, "activation", None), "__name__", "")


def check_classifier(model) -> int:
    """The number of classes, or a clear error when the model is not an image classifier."""
    shape_in, shape_out = model.input_shape, model.output_shape
    if isinstance(shape_out, list) or isinstance(shape_in, list):
        raise ValueError("the model has several inputs or outputs; mstl exports single-image classifiers")
    if len(shape_in) != 4 or shape_in[-1] != 3 or shape_in[1] != shape_in[2]:
        raise ValueError(f"the model's input {shape_in} is not a square RGB image (None, S, S, 3)")
    act = final_activation(model)
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
    """Int8-ready copies of the model (bias_correction.py), one per weight grid (127 levels, or 64 for
    ONNX Runtime's 7-bit weights), each made once, when a recipe first asks."""

    def __init__(self, model_path: Path, calibration: np.ndarray | None):
        self.model_path, self.calibration = model_path, calibration
        self.copies: dict[tuple[int, str], tuple[Any, dict, dict]] = {}
        self.noise: dict[int, list] = {}  # export/noise.py's measurement, per model, shared by the formats

    @staticmethod
    def key(opts: BuildOptions) -> tuple[int, str]:
        """(weight levels, rounding): one int8-ready copy each."""
        from .bias_correction import INT7_MAX, INT8_MAX
        return (INT7_MAX if opts.reduce_range else INT8_MAX), opts.rounding

    def get(self, opts: BuildOptions):
        key = self.key(opts)
        if key not in self.copies:
            from ..model import load_classifier
            from .bias_correction import int8_ready
            model, targets = load_classifier(self.model_path), {}
            levels, rounding = key
            say(f"  preparing the int8-ready model (kernels rounded to the {levels}-level weight grid by {rounding}, "
                "biases corrected)")
            info = int8_ready(model, self.calibration[:CORRECTION_IMAGES], targets=targets, levels=levels,
                              rounding=rounding)
            self.copies[key] = (model, info, targets)
        return self.copies[key][0]

    def info(self, opts: BuildOptions) -> dict:
        return self.copies[self.key(opts)][1]

    def refined_build(self, builder, work: Path, opts) -> bytes:
        """Build, correct the linear offsets for what the built int8 model's own activations do, build
        again; the shared int8-ready model is left as it was (other formats use it)."""
        from .bias_correction import activation_correct, restore_betas
        model = self.get(opts)
        targets = self.copies[self.key(opts)][2]
        for sub in ("refine-1", "refine-2"):  # fresh folders: the SavedModel cache is per folder and model
            (work / sub).mkdir(parents=True, exist_ok=True)
        first = builder(model, work / "refine-1", opts)
        done = activation_correct(model, first, self.calibration[:CORRECTION_IMAGES], targets)
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
    try:
        staging.mkdir(parents=True)
    except OSError as e:  # before any work: a read-only or full --out fails now, not after the export
        raise _write_failed(e, final) from None
    job.out_dir = staging
    try:
        with _scratch_in(staging / SCRATCH):
            manifest = _export_all(job, model)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        job.out_dir = final
        if isinstance(e, OSError):
            raise _write_failed(e, final) from None
        raise
    _swap_in(staging, final)
    job.out_dir = final
    return manifest


SCRATCH = ".scratch"  # inside the staging folder: a killed export's scratch goes with it (_recover_leftovers)


def _write_failed(e: OSError, final: Path) -> Exception:
    from ..edge.core.outputs import reason
    why = reason(e)
    if why is None:
        return e
    kept = "the previous exports there are as they were" if final.exists() else "nothing was written"
    return OutputError(f"{final}: cannot write the exports: {why}; {kept}. Free some space (or choose another --out) "
                    "and export again")


@contextmanager
def _scratch_in(folder: Path):
    """Every temporary file of the export (converters, LiteRT, ONNX Runtime, the explain pass) inside
    ``folder``, removed at the end; a ``kill -9`` leaves it inside the staging folder, which the next
    export removes - never megabytes in /tmp that nothing cleans."""
    folder.mkdir(parents=True, exist_ok=True)
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)


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
    """Another process's export still running (this process's own leftovers are not alive)."""
    from ..edge.core.rundir import process_running
    return pid != os.getpid() and process_running(pid)


def _gate_sources(job: ExportJob, pick: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every image that did not calibrate: held-out target images (labelled), training images left
    over, then the extra unlabelled ones. Returns (sources, labels or -1, held-out mask); no source
    appears twice and none is a calibration image."""
    used = {job.calibration_sources[int(i)] for i in pick}
    seen = set(used)
    sources: list[str] = []
    labels: list[int] = []
    heldout: list[bool] = []
    groups = [(job.verify_sources, job.verify_labels, True),
              (job.calibration_sources, job.calibration_labels, False),
              (job.gate_extra_sources, None, False)]
    for srcs, ys, held in groups:
        for i, src in enumerate(srcs):
            if src in seen:
                continue
            seen.add(src)
            sources.append(src)
            labels.append(-1 if ys is None else int(ys[i]))
            heldout.append(held and ys is not None)
    return sources, np.asarray(labels, int), np.asarray(heldout, bool)


def _export_all(job: ExportJob, model) -> dict[str, Any]:
    calibration, pick = None, np.zeros(0, int)
    if any("calibration" in f.options for f in job.formats):
        n = min(job.calibration_n, len(job.calibration_sources))
        pick = (stratified_sample(job.calibration_labels, n, 0) if job.calibration_labels is not None
                else np.arange(n))
        say(f"decoding {n} calibration images (stratified from the training split)")
        calibration = job.preprocess.load_many([job.calibration_sources[i] for i in pick])
    # Agreement checks the conversion, so every image that did not calibrate it counts.
    sources, labels, heldout = _gate_sources(job, pick)
    kept = set(sources)
    n_extra = sum(1 for s in job.gate_extra_sources if s in kept)
    say(f"decoding {len(sources)} gate images through the edge path (Pillow): {int(heldout.sum())} held out, "
        f"{len(sources) - int(heldout.sum()) - n_extra} training images not used for calibration, {n_extra} extra")
    pixels = job.preprocess.load_many(sources)
    reference = model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)
    gate = Gate.build(pixels, reference, labels if heldout.any() else None, heldout)
    n_conf = int(gate.confirmation.sum())
    say(f"gate: {int(gate.selection.sum())} selection images (choose recipes and layers), {n_conf} confirmation "
        f"images (the verdict){'' if n_conf >= job.gate_confirm else f' - fewer than the {job.gate_confirm} wanted'}")
    write_list(job.out_dir / GATE_LIST, sources, np.where(gate.selection, SELECTION, labels))
    np.save(job.out_dir / GATE_REFERENCE, reference.astype(np.float32))
    ready = _Int8Ready(job.model_path, calibration)
    machine = {"cpu": cpu_model(), "cpu_flags": cpu_flags()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mstl-export-", dir=tempfile.gettempdir()) as tmp:  # in the staging folder
        work = Path(tmp)
        for fmt in job.formats:
            rows.append(_export_one(fmt, model, ready, work, job, gate, calibration, machine))
    if job.explain:
        from .diagnose import explain_exports
        cal_like = ~heldout
        explain_exports(job.out_dir, rows, pixels[cal_like][:EXPLAIN_IMAGES] if cal_like.any() else pixels[:EXPLAIN_IMAGES])
    write_labels(job.out_dir, job.labels)
    bundle = _bundle(job, rows, sources, labels, heldout, reference)
    manifest = {
        "artifacts": rows, "labels": job.labels, "source": job.source,
        "image_size": job.image_size, "resize_method": job.resize_method,
        "verification_images": len(sources), "heldout_images": int(heldout.sum()), "extra_images": n_extra,
        "gate": {"selection_images": int(gate.selection.sum()), "confirmation_images": n_conf,
                 "split": f"fixed seed {SPLIT_SEED}, {SELECTION_SHARE:.0%} selection",
                 "list": f"{GATE_LIST}: every gate image; label -2 = selection, else confirmation "
                         "(its label, -1 when unlabelled)",
                 "selection_margin": SELECTION_MARGIN,
                 "selection_rule": "a build passes selection when its measured agreement and the agreement its "
                                   f"errors on the {ERROR_POOL} decisive selection images nearest the boundary "
                                   "predict (export/gate.py expected_agreement) both clear the target"},
        "calibration": {"images": int(len(pick)), "from": "target training split, stratified by class, seed 0"},
        "machine": machine,
        "onnx_int8_built_for": "every x86 CPU (--portable-int8)" if job.portable_int8 else "this CPU",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if bundle:
        manifest["bundle"] = bundle
    _atomic_write(job.out_dir / "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


def _bundle(job: ExportJob, rows: list[dict], sources: list[str], labels: np.ndarray, heldout: np.ndarray,
            reference: np.ndarray) -> dict[str, Any] | None:
    """Up to ``job.bundle_samples`` held-out images, stratified by class, with the Keras model's answers:
    what mstl-bench checks each artifact against on any device (src/mstl/edge/core/bundle.py)."""
    from ..edge.core.bundle import write
    held = np.flatnonzero(heldout)
    if job.bundle_samples <= 0 or not len(held):
        if job.bundle_samples > 0:
            say("verification bundle: no held-out labelled images, none written")
        return None
    take = held[stratified_sample(labels[held], min(job.bundle_samples, len(held)), 0)]
    shipped = {r["name"]: r["sha256"] for r in rows if r.get("sha256")}

    def answers(files: list[str]) -> dict[str, np.ndarray]:
        pixels = job.preprocess.load_many(files)  # the bench's decoding of the same files
        return {name: load_runtime(job.out_dir / name, threads=1).predict(pixels)
                for name in shipped if (job.out_dir / name).is_file()}

    entry = write(job.out_dir, [sources[i] for i in take], labels[take], reference[take], job.labels,
                  job.image_size, job.resize_method, shipped, answers)
    say(f"verification bundle: {entry['images']} held-out images, their labels and the Keras model's answers in "
        f"{entry['path']} (mstl-bench checks every artifact against them on any device; --bundle-samples 0 for none)")
    return entry


@dataclass
class _Attempt:
    recipe: Recipe
    opts: BuildOptions
    data: bytes
    rt: Any
    choose: dict[str, Any]  # the gate's selection figures
    selection_probs: np.ndarray  # what they were computed from (the verdict reuses them)
    mixed: dict[str, Any] | None = None
    offset: dict[str, Any] | None = None  # the decision offset taken off the head (int8: export/offset.py)

    def summary(self) -> dict[str, Any]:
        c = self.choose
        out = {"recipe": self.recipe.name, "status": "passes selection" if c["passes"] else "below the selection target",
               "selection_agreement": c["agreement"], "flips": c["flips"], "n_compared": c["n_compared"],
               "expected_agreement": c.get("expected_agreement"), "max_abs_diff": c["max_abs_diff"], "target": c["target"]}
        if self.mixed:
            out.update(float_layers=len(self.mixed["float_layers"]), int8_mac_share=self.mixed["int8_mac_share"])
        return out


def _build(fmt: Format, recipe: Recipe, model, ready: _Int8Ready, work: Path, job: ExportJob, calibration):
    opts = BuildOptions(calibration, job.io).with_recipe(recipe)
    if recipe.refine:
        return opts, ready.refined_build(fmt.load_builder(), work, opts)
    return opts, fmt.load_builder()(ready.get(opts) if recipe.prepared else model, work, opts)


def _runtime(work: Path, name: str, data: bytes, threads: int = 2):
    staged = work / name
    staged.write_bytes(data)
    return load_runtime(staged, threads=threads)


def _centred(fmt: Format, data: bytes, work: Path, name: str, gate: Gate) -> tuple[bytes, dict[str, Any] | None]:
    """An int8 build with its decision offset taken off its head (export/offset.py), and what was done."""
    if fmt.precision != "int8":
        return data, None
    from .offset import MAX_SHIFT_SHARE, logit_shift, remove
    pool = gate.near_boundary
    if not len(pool):
        return data, {"removed": False, "reason": "no decisive selection image to measure it on"}
    shift = logit_shift(_runtime(work, f"uncentred-{name}", data).predict(gate.pixels[pool]), gate.reference[pool])
    info = {"logit_shift": [round(float(v), 5) for v in shift], "images": int(len(pool)),
            "on": f"the {len(pool)} decisive selection images nearest the boundary"}
    spread = gate.logit_spread
    if (np.abs(shift) > MAX_SHIFT_SHARE * spread).any():
        return data, {**info, "removed": False,
                      "reason": f"a shift over {MAX_SHIFT_SHARE:.0%} of the Keras model's logit spread "
                                f"({', '.join(f'{v:.3f}' for v in spread)}) is a wrong build, not a rounding mean: "
                                "left for the gate to judge"}
    got = remove(fmt.format, data, shift)
    if got is None:
        return data, {**info, "removed": False, "reason": "the softmax does not read a dense layer with a bias"}
    say(f"  decision offset taken off the head: logit shift {', '.join(f'{v:+.3f}' for v in shift)} "
        f"({len(pool)} selection images nearest the boundary)")
    return got[0], {**info, "removed": True, **got[1]}


def _try_recipe(fmt, recipe, model, ready, work, job, gate: Gate, calibration, threshold) -> _Attempt | str:
    """The recipe built, its decision offset removed, and measured on the selection images - or the
    reason it could not be built."""
    name = fmt.filename(job.stem)
    try:
        opts, data = _build(fmt, recipe, model, ready, work, job, calibration)
        data, offset = _centred(fmt, data, work, name, gate)
        rt = _runtime(work, name, data)
    except Exception as e:  # a converter failure is reported per recipe; the next one may work
        return f"conversion failed: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
    probs = rt.predict(gate.pixels[gate.selection])
    return _Attempt(recipe, opts, data, rt, gate.choose(probs, threshold), probs, offset=offset)


def _try_mixed(fmt, base: _Attempt, model, ready, work, job, gate: Gate, threshold) -> _Attempt | str:
    """The base rung with the fewest regions (and outlier layers) kept in float (export/mixed.py)."""
    from .mixed import fewest_float, outliers, regions
    from .noise import NEAR_IMAGES, measure
    try:
        source = ready.get(base.opts) if base.recipe.prepared else model
        builder = fmt.load_module().MixedBuilder(source, work / f"mixed-{fmt.key}", base.opts)
        sel_pixels = gate.pixels[gate.selection]
        noise = ready.noise.get(id(source))
        if noise is None:
            say(f"  measuring each activation tensor's share of the int8 error on the {NEAR_IMAGES} selection "
                "images nearest the boundary")
            noise = ready.noise[id(source)] = measure(source, base.opts.calibration, sel_pixels,
                                                      gate.reference[gate.selection])
        node_macs = builder.node_macs()
        layers = outliers(builder.rank(sel_pixels))
        found_units = builder.unit_nodes({u for t in noise for u in t.units})
        candidates = layers + regions(noise, found_units, node_macs, tuple(layers))
    except Exception as e:
        return f"mixed precision failed: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
    built: dict[tuple[str, ...], tuple[bytes, Any, dict, np.ndarray, dict | None]] = {}

    def attempt(names: tuple[str, ...]) -> dict[str, Any]:
        staged = f"k{len(names)}-{fmt.filename(job.stem)}"
        data, offset = _centred(fmt, builder.build(names), work, staged, gate)
        rt = _runtime(work, staged, data)
        probs = rt.predict(sel_pixels)
        built[names] = (data, rt, gate.choose(probs, threshold), probs, offset)
        c = built[names][2]
        say(f"  {len(names)} op(s) in float: selection agreement {100 * (c['agreement'] or 0):.2f}% "
            f"({c['flips']} flips of {c['n_compared']}; {100 * (c.get('expected_agreement') or 0):.2f}% predicted)")
        return {k: c[k] for k in ("passes", "agreement", "expected_agreement", "expected_agreement_se", "flips",
                                  "n_compared", "max_abs_diff")}

    say(f"{fmt.filename(job.stem)} [mixed on {base.recipe.name}]: {len(layers)} outlier layer(s) and "
        f"{len(candidates) - len(layers)} tensor regions ranked; searching the fewest kept in float")
    found = fewest_float(candidates, node_macs, attempt)
    if not found["chosen"]:
        return "mixed precision: nothing can stay in float within the int8 MAC floor"
    names = tuple(found["float_nodes"])
    data, rt, choose, probs, offset = built[names]
    recipe = dataclasses.replace(base.recipe, name=f"{base.recipe.name}+mixed", mixed=True, refine=False,
                                 note=f"{base.recipe.note}; {len(found['float_labels'])} noisiest tensor region(s) "
                                      "or outlier layer(s) kept in float")
    mixed = {"base_recipe": base.recipe.name, "float_layers": list(found["float_labels"]), "float_nodes": list(names),
             "int8_mac_share": found["chosen"]["int8_mac_share"], "min_int8_mac_share": MIN_INT8_MAC_SHARE,
             "ranked_by": f"outlier layers first (own SQNR drop >= {OUTLIER_DB} dB on {min(RANK_IMAGES, len(sel_pixels))} "
                          "selection images), then activation tensors by their share of the int8 error per MAC "
                          f"(first order, {NEAR_IMAGES} selection images nearest the boundary; export/noise.py)",
             "steps": found["steps"], "ranking": found["ranking"],
             "cost": _cost({"full int8 (" + base.recipe.name + ")": base.data, "mixed": data}, work, fmt, job)}
    return _Attempt(recipe, dataclasses.replace(base.opts, float_nodes=names), data, rt, choose, probs, mixed, offset)


def _cost(builds: dict[str, bytes], work: Path, fmt: Format, job: ExportJob, runs: int = 60) -> dict[str, Any]:
    """What keeping layers in float costs on this CPU: p50 latency at 1 thread, batch 1, of each build
    (the bench measures the shipped artifact against fp32 again, on every device)."""
    from ..edge.core.timing import latency
    out: dict[str, Any] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": 1, "runs": runs}
    x = np.zeros((1, job.image_size, job.image_size, 3), np.uint8)
    for label, data in builds.items():
        rt = _runtime(work, f"cost-{fmt.filename(job.stem)}", data, threads=1)
        out[f"p50_ms {label}"] = round(latency(rt, rt.prepare(x), runs, 10)["p50"], 3)
    return out


def _ladder(fmt, model, ready, work, job, gate, calibration, threshold, machine) -> tuple[_Attempt | None, list]:
    """Try the format's recipes in order (fastest first) until one clears the selection target; the
    mixed rung builds on the best full-int8 rung when none did."""
    tried: list[dict[str, Any]] = []
    best: _Attempt | None = None
    searched: dict[str, Any] | None = None  # the mixed rung's search, shipped or not
    exact_u8s8 = not job.portable_int8 and not u8s8_may_saturate(machine["cpu_flags"])
    name = fmt.filename(job.stem)
    for recipe, skip in fmt.ladder_for(exact_u8s8):
        if skip:
            tried.append({"recipe": recipe.name, "status": "skipped", "reason": skip})
            continue
        if recipe.mixed:
            if best is None or best.choose["passes"]:
                continue
            got = _try_mixed(fmt, best, model, ready, work, job, gate, threshold)
        else:
            got = _try_recipe(fmt, recipe, model, ready, work, job, gate, calibration, threshold)
        if isinstance(got, str):
            tried.append({"recipe": recipe.name, "status": "failed", "reason": got})
            say(f"{name} [{recipe.name}]: {got}")
            continue
        tried.append(got.summary())
        searched = got.mixed or searched
        if len(fmt.ladder) > 1:
            c = got.choose
            say(f"{name} [{got.recipe.name}]: selection agreement {100 * (c['agreement'] or 0):.2f}% ({c['flips']} flips "
                f"of {c['n_compared']}; {100 * (c.get('expected_agreement') or 0):.2f}% as its errors predict; "
                f"target {100 * c['target']:.2f}%)")
        if best is None or got.choose["passes"] or sure_agreement(got.choose) > sure_agreement(best.choose):
            best = got
        if got.choose["passes"]:
            break
    if best is not None and searched is not None and best.mixed is None:
        best.mixed = {**searched, "shipped": False}
    return best, tried


def _export_one(fmt: Format, model, ready: _Int8Ready, work: Path, job: ExportJob, gate: Gate,
                calibration, machine: dict[str, Any]) -> dict[str, Any]:
    """The ladder chooses on the selection images; the confirmation images give the verdict. A format
    whose chosen build fails it is written under a '-rejected' name, never the default one."""
    name = fmt.filename(job.stem)
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "format": fmt.format, "precision": fmt.precision, "path": name,
                           "key": fmt.key, "size_bytes": None, "status": "failed", "agreement": None,
                           "max_abs_diff": None, "n_compared": 0}
    threshold = job.thresholds.get(fmt.precision, fmt.min_agreement)
    best, tried = _ladder(fmt, model, ready, work, job, gate, calibration, threshold, machine)
    if best is None:
        row["error"] = "; ".join(t.get("reason", t["status"]) for t in tried)
        row["recipes_tried"] = tried
        return row
    probs = np.zeros_like(gate.reference)
    probs[gate.selection] = best.selection_probs
    probs[gate.confirmation] = best.rt.predict(gate.pixels[gate.confirmation])
    check = gate.judge(probs, threshold)
    if job.decision:
        check["decision_agreement"] = _decision_agreement(gate, probs, job.decision)
    if check["status"] != "ok":
        name = fmt.rejected_filename(job.stem)
        row.update({"name": name, "path": name})
    card = _card(fmt, name, best, tried, job, calibration, machine, ready)
    data = fmt.load_module().embed_metadata(best.data, card)
    seconds = round(time.monotonic() - t0, 2)
    card.update({"sha256": _sha256(data), "size_bytes": len(data), "verification": check,
                 "runtime": f"{best.rt.name} {best.rt.version}", "export_seconds": seconds})
    path = job.out_dir / name
    _atomic_write(path, data)
    _atomic_write(path.with_name(name + ".json"), json.dumps(card, indent=2).encode())
    row.update({"size_bytes": len(data), "status": check["status"], "agreement": check["agreement"],
                "agreement_ci95": check["agreement_ci95"], "flips": check["flips"],
                "max_abs_diff": check["max_abs_diff"], "n_compared": check["n_compared"],
                "selection": check["selection"], "provisional": check["provisional"],
                "export_seconds": seconds, "sha256": card["sha256"], "recipe": best.recipe.name, "recipes_tried": tried})
    if "int8_mac_share" in card:
        row["int8_mac_share"] = card["int8_mac_share"]
    for key in ("heldout", "reason", "warning"):
        if key in check:
            row[key] = check[key]
    agree = "-" if check["agreement"] is None else f"{100 * check['agreement']:.2f}%"
    say(f"{name}: {len(data) / 1e6:.2f} MB, {seconds:.1f}s, recipe {best.recipe.name}, agreement {agree} on "
        f"{check['n_compared']} confirmation images, max |diff| {check['max_abs_diff']:.4f} -> {check['status']}"
        + (f" ({check['reason']})" if "reason" in check else "")
        + (" [provisional]" if check["provisional"] else ""))
    if "decision_agreement" in check:
        d = check["decision_agreement"]
        row["decision_agreement"] = d
        h = d.get("heldout") or {}
        say(f"  decisions at the operating point (threshold {d['threshold']:.4f}, T {d['temperature']:.3f}): "
            f"{100 * d['agreement']:.2f}% the Keras model's ({d['flips']} differ of {d['n_compared']})"
            + (f"; held-out accuracy there {100 * h['accuracy']:.2f}% against Keras' {100 * h['accuracy_keras']:.2f}% "
               f"({h['n']} images)" if h.get("n") else ""))
    return row


def _decision_agreement(gate: Gate, probs: np.ndarray, decision: dict[str, Any]) -> dict[str, Any]:
    """How often the artifact's decision at the card's operating point (threshold on the calibrated
    positive probability) is the Keras model's, on the confirmation images."""
    from ..edge.core.decision import decide
    from ..edge.core.metrics import DECISIVE_MARGIN, wilson_interval
    # every gate image decided once; the confirmation and held-out figures are slices of these
    ref_d, got_d = decide(gate.reference, decision), decide(probs, decision)
    ref_all, got_all = (np.array([d["label_index"] for d in ds]) for ds in (ref_d, got_d))
    conf = gate.confirmation
    # as for top-1 agreement, images the Keras model itself puts at the threshold say nothing: a binary
    # top-1 margin of DECISIVE_MARGIN is a distance of half that from 0.5
    at_threshold = np.array([abs(d["positive_probability"] - d["threshold"]) <= DECISIVE_MARGIN / 2 for d in ref_d])
    clear = ~at_threshold[conf]
    ref, got = ref_all[conf][clear], got_all[conf][clear]
    same, n = int(np.sum(ref == got)), int(clear.sum())
    out = {"agreement": same / n if n else None, "ci95": list(wilson_interval(same, n)) if n else None,
           "flips": n - same, "n_compared": n, "n_at_threshold": int((~clear).sum()),
           "threshold": decision["threshold"], "temperature": decision["temperature"]}
    if gate.labels is not None and gate.heldout.any():
        # The accuracy a user of the card gets: every held-out image decided at the operating point, the
        # ones at the threshold included (argmax at 0.5, the other delta, is not the card's decision).
        from ..edge.core.agreement import paired_accuracy_delta
        h = gate.heldout
        out["heldout"] = paired_accuracy_delta(np.asarray(gate.labels)[h], ref_all[h], got_all[h])
    return out


def _card(fmt: Format, name: str, best: _Attempt, tried: list, job: ExportJob, calibration, machine, ready) -> dict:
    recipe = best.recipe
    card = {"name": name, "format": fmt.format, "precision": fmt.precision, "labels": job.labels,
            **_io_card(best.rt, job.labels, job), "source": job.source, "intended_use": INTENDED_USE,
            "data_licence": job.data_licence, "note": fmt.note, "recipe": recipe.name,
            "recipe_note": recipe.note, "builder_options": recipe.kwargs, "recipes_tried": tried,
            "built_for_cpus": recipe.cpus}
    card["decision"] = (_card_decision(job.decision) if job.decision else
                        {"threshold": 0.5, "temperature": 1.0, "chosen_on": None,
                         "note": "no operating point chosen (the run had no validation split): argmax at 0.5"})
    if recipe.prepared:
        card["int8_ready"] = ready.info(best.opts)
    if calibration is not None and "calibration" in fmt.options:
        card["calibration"] = {"images": int(len(calibration)), "from": "target training split, stratified, seed 0"}
    if fmt.precision == "int8":
        from .macs import summary
        macs = summary(best.data)
        card["int8_mac_share"], card["float_layers"] = macs["int8_mac_share"], macs["float_layers"]
        if best.mixed:
            card["mixed"] = {"shipped": True, **best.mixed}
        if best.offset:
            card["decision_offset"] = best.offset
    card["machine"] = machine
    return card


def _card_decision(d: dict[str, Any]) -> dict[str, Any]:
    keep = ("positive_class", "positive_index", "threshold", "target", "chosen_on", "temperature", "applies_to")
    out = {k: d[k] for k in keep if k in d}
    v = d.get("validation") or {}
    out["validation_sensitivity"], out["validation_specificity"] = v.get("sensitivity"), v.get("specificity")
    if d.get("test"):
        out["test_sensitivity"], out["test_specificity"] = d["test"]["sensitivity"], d["test"]["specificity"]
    return out


MIN_GATE_IMAGES = 100


def calibration_apart(sources, y, calibration: int, formats, data, n_extra: int = 0):
    """Calibration images and verification images drawn apart from one labelled folder: an artifact is
    never verified on the images that calibrated it."""
    if not any("calibration" in f.options for f in formats):
        return [], None, sources, y
    n_cal = min(calibration, len(sources))
    pick = set(int(i) for i in stratified_sample(y, n_cal, 0))
    rest = [i for i in range(len(sources)) if i not in pick]
    if len(rest) + n_extra < MIN_GATE_IMAGES:
        extra = f" (+{n_extra} from --gate-extra)" if n_extra else ""
        raise ValueError(f"{data}: {len(sources)} images, {n_cal} of them to calibrate int8, leaves {len(rest)} to "
                         f"verify on{extra}; the gate needs at least {MIN_GATE_IMAGES} images that did not calibrate: "
                         "add images, lower --calibration, or add unlabelled ones with --gate-extra DIR")
    cal = sorted(pick)
    return ([sources[i] for i in cal], np.asarray(y)[cal], [sources[i] for i in rest], np.asarray(y)[rest])


def job_from_run(run_dir: Path, formats: list[Format], out_dir: Path | None, model_path: Path | None,
                 calibration_n: int, io: str, thresholds: dict[str, float], explain: bool = False,
                 gate_confirm: int = CONFIRM_WANTED, gate_extra: list[str] | None = None) -> ExportJob:
    """An export job for a run dir: the deployable stage-2 classifier, its test split for verification
    and its training split for calibration."""
    from ..config import run_config

    store = rundir.RunDir(run_dir)
    cfg = run_config(run_dir)
    writer = store.writer()
    if writer:
        from ..edge.core.progress import warn
        warn(f"{run_dir} is being trained now (process {writer}): its selection.json may not be its final choice; "
             "export again when the run has finished")
    decision = None  # an operating point belongs to the run's own deployed model, not to --model FILE
    if model_path is None:
        sel = read_selection(store.dir)
        if sel is None:
            raise FileNotFoundError(f"{run_dir}: no {rundir.SELECTION} - stage 2 has not finished (run `mstl-train stage2`)")
        decision = sel.get("decision")
        model_path = store.dir / sel["model"]
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: the model selection.json chose for deployment is missing; run "
                                    f"`mstl-train stage2 {run_dir}` to train it again (or pass --model FILE)")
        say(f"model: {model_path} (stage 2 on the bridge size {sel['size']} model, seed {sel['seed']}: {sel['why']})")
    # Held out: the test and validation splits and the operating-point carve-out (none trained the
    # model); the gate adds the training images that do not calibrate.
    for split in ("test", "train"):
        if read_split(store.dir, split) is None:
            raise FileNotFoundError(f"{store.dir / SPLIT_LISTS[split]}: missing - the run dir's {split} split list "
                                    "(written by mstl-train); copy the run dir whole, or pass --model FILE --data DIR")
    if not (store.dir / LABELS).is_file():
        raise FileNotFoundError(f"{store.dir / LABELS}: missing (written by mstl-train); copy the run dir whole, "
                                "or pass --model FILE --data DIR --labels A,B")
    test_src, test_y = read_split(store.dir, "test")
    val_src, val_y = read_split(store.dir, "val") or ([], np.zeros(0, int))
    op_src, op_y = read_split(store.dir, "operating") or ([], np.zeros(0, int))  # held out of training too
    val_src, val_y = val_src + op_src, np.concatenate([val_y, op_y])
    verify_src = test_src + val_src
    cal_src, cal_y = read_split(store.dir, "train")
    labels = read_labels(store.dir)
    demo = cfg.target is None
    extra = list(gate_extra or [])
    if demo and any("calibration" in f.options for f in formats):
        extra += _demo_gate_pool(cfg, gate_confirm, len(verify_src) + len(cal_src) - calibration_n + len(extra))
    return ExportJob(
        model_path=Path(model_path), out_dir=out_dir or store.dir / "exports", formats=formats, labels=labels,
        image_size=cfg.data.image_size, resize_method=cfg.data.resize_method, scaling=cfg.data.scaling,
        verify_sources=verify_src, verify_labels=np.concatenate([test_y, val_y]).astype(int),
        calibration_sources=cal_src, calibration_labels=cal_y,
        calibration_n=calibration_n, io=io, thresholds=thresholds, explain=explain,
        gate_extra_sources=extra, gate_confirm=gate_confirm, decision=decision,
        source={"run_dir": str(store.dir.resolve()), "config_hash": store.config_hash(), "model": str(model_path),
                "preset": cfg.preset, "weights": cfg.model.weights},
        data_licence=("synthetic demo data generated by mstl: no licence restrictions, no medical meaning" if demo
                      else f"as the licence of the training data ({cfg.bridge}, {cfg.target}); mstl does not record it"),
    )


def _demo_gate_pool(cfg, confirm: int, have: int) -> list[str]:
    """Generated target-like images enough for ``confirm`` confirmation images (the demo target holds
    a few hundred; a verdict on 2,000 is not noise)."""
    from ..data.cache import default_cache_root
    from ..data.synthetic import make_cxr_pool
    from .gate import images_needed
    n = max(0, images_needed(confirm) - have)
    n = -(-n // 250) * 250  # one pool for nearby needs
    if not n:
        return []
    root = default_cache_root() / "demo-data" / f"cxr-gate-{n}"
    if not root.is_dir():
        say(f"drawing {n} extra demo X-ray-like images for the gate (once; cached in {root})")
    return make_cxr_pool(root, n)
