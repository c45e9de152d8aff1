"""Export a Keras classifier to every selected format, verify each, write cards and a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.filelist import load_sources, read_list
from ..data.splits import stratified_sample
from ..formats import Format
from ..progress import say
from ..runtimes import RuntimeError_, load_runtime
from .verify import verify

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
    calibration_n: int = 300
    io: str = "uint8"
    thresholds: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    data_licence: str = "not recorded: state the training data's licence here"
    stem: str = "classifier"


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
    card_in: dict[str, Any] = {
        "name": "input", "shape": [1, job.image_size, job.image_size, 3], "layout": "NHWC, RGB",
        "dtype": str(rt.input_dtype),
        "range": [int(np.iinfo(rt.input_dtype).min), int(np.iinfo(rt.input_dtype).max)] if integer_in else [0.0, 255.0],
        "meaning": "raw pixel values; scaling to the network's range is inside the graph",
        "resize": {"method": job.resize_method, "mode": "stretch to square (aspect ratio not kept)",
                   "library": "Pillow (mstl.data.images.load_image)"},
        "orientation": "apply EXIF orientation before resizing",
        "trained_scaling": job.scaling,
    }
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


def run_export(job: ExportJob) -> dict[str, Any]:
    from ..model import load_classifier

    model = load_classifier(job.model_path)
    n_classes = check_classifier(model)
    if n_classes != len(job.labels):
        raise ValueError(f"{job.model_path} has {n_classes} outputs but {len(job.labels)} labels were given")
    if int(model.input_shape[1]) != job.image_size:
        raise ValueError(f"{job.model_path} takes {model.input_shape[1]} px images, the config says {job.image_size}")
    job.out_dir.mkdir(parents=True, exist_ok=True)
    say(f"decoding {len(job.verify_sources)} verification images through the edge path (Pillow)")
    pixels = load_sources(job.verify_sources, job.image_size, job.resize_method)
    reference = model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)
    calibration = None
    if any("calibration" in f.options for f in job.formats):
        n = min(job.calibration_n, len(job.calibration_sources))
        pick = (stratified_sample(job.calibration_labels, n, 0) if job.calibration_labels is not None
                else np.arange(n))
        say(f"decoding {n} calibration images (stratified from the training split)")
        calibration = load_sources([job.calibration_sources[i] for i in pick], job.image_size, job.resize_method)

    rows = []
    with tempfile.TemporaryDirectory(prefix="mstl-export-") as tmp:
        work = Path(tmp)
        for fmt in job.formats:
            rows.append(_export_one(fmt, model, work, job, pixels, reference, calibration))
    (job.out_dir / "labels.txt").write_text("\n".join(job.labels) + "\n")
    manifest = {
        "artifacts": rows, "labels": job.labels, "source": job.source,
        "image_size": job.image_size, "resize_method": job.resize_method,
        "verification_images": len(job.verify_sources),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _atomic_write(job.out_dir / "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


def _export_one(fmt: Format, model, work: Path, job: ExportJob, pixels, reference, calibration) -> dict[str, Any]:
    name = fmt.filename(job.stem)
    path = job.out_dir / name
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "format": fmt.format, "precision": fmt.precision, "path": name,
                           "key": fmt.key, "size_bytes": None, "status": "failed", "agreement": None,
                           "max_abs_diff": None, "n_compared": 0}
    threshold = job.thresholds.get(fmt.precision, fmt.min_agreement)
    for attempt, options in enumerate(({},) + fmt.fallbacks):
        try:
            data = fmt.load_builder()(model, work, calibration=calibration, io=job.io, **options)
        except Exception as e:  # a converter failure is reported per artifact; the others still export
            row["error"] = f"conversion failed: {str(e).splitlines()[0][:300]}"
            say(f"{name}: {row['error']}")
            return row
        staged = work / name
        staged.write_bytes(data)
        try:
            rt = load_runtime(staged, threads=2)
        except RuntimeError_ as e:
            row["error"] = str(e)
            return row
        card = {"name": name, "format": fmt.format, "precision": fmt.precision, "labels": job.labels,
                **_io_card(rt, job.labels, job), "source": job.source, "intended_use": INTENDED_USE,
                "data_licence": job.data_licence, "note": fmt.note, "builder_options": options}
        data = fmt.load_module().embed_metadata(data, card)
        staged.write_bytes(data)
        rt = load_runtime(staged, threads=2)
        check = verify(rt, pixels, reference, threshold)
        if check["status"] == "ok" or attempt == len(fmt.fallbacks):
            break
        say(f"{name}: {check['reason']}; retrying with {fmt.fallbacks[attempt]}")
    if options and check["status"] == "ok":
        check["fallback"] = f"verified with builder options {options} after the default options failed"
    seconds = round(time.monotonic() - t0, 2)
    card.update({"sha256": _sha256(data), "size_bytes": len(data), "verification": check,
                 "runtime": f"{rt.name} {rt.version}", "export_seconds": seconds})
    _atomic_write(path, data)
    _atomic_write(path.with_name(name + ".json"), json.dumps(card, indent=2).encode())
    row.update({"size_bytes": len(data), "status": check["status"], "agreement": check["agreement"],
                "max_abs_diff": check["max_abs_diff"], "n_compared": check["n_compared"],
                "export_seconds": seconds, "sha256": card["sha256"]})
    if "reason" in check:
        row["reason"] = check["reason"]
    if "warning" in check:
        row["warning"] = check["warning"]
    if options:
        row["builder_options"] = options
    agree = "-" if check["agreement"] is None else f"{100 * check['agreement']:.1f}%"
    say(f"{name}: {len(data) / 1e6:.2f} MB, {seconds:.1f}s, agreement {agree} on {check['n_compared']} images, "
        f"max |diff| {check['max_abs_diff']:.4f} -> {check['status']}" + (f" ({check['reason']})" if "reason" in check else ""))
    return row


def job_from_run(run_dir: Path, formats: list[Format], out_dir: Path | None, model_path: Path | None,
                 calibration_n: int, io: str, thresholds: dict[str, float]) -> ExportJob:
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
    # Every held-out target image (test and validation splits: neither trained the model) verifies.
    verify_src = read_list(store.dir / "target_test.tsv")[0] + read_list(store.dir / "target_val.tsv")[0]
    cal_src, cal_y = read_list(store.dir / "target_train.tsv")
    labels = (store.dir / "labels.txt").read_text().split("\n")[:-1]
    demo = cfg.target is None
    return ExportJob(
        model_path=Path(model_path), out_dir=out_dir or store.dir / "exports", formats=formats, labels=labels,
        image_size=cfg.data.image_size, resize_method=cfg.data.resize_method, scaling=cfg.data.scaling,
        verify_sources=verify_src, calibration_sources=cal_src, calibration_labels=cal_y,
        calibration_n=calibration_n, io=io, thresholds=thresholds,
        source={"run_dir": str(store.dir.resolve()), "config_hash": store.config_hash(), "model": str(model_path),
                "preset": cfg.preset, "weights": cfg.model.weights},
        data_licence=("synthetic demo data generated by mstl: no licence restrictions, no medical meaning" if demo
                      else f"as the licence of the training data ({cfg.bridge}, {cfg.target}); mstl does not record it"),
    )
