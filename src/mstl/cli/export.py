"""mstl-export: the winning Keras model to LiteRT and ONNX, each verified against the Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..edge.core.formats import IO_TYPES, select
from ..edge.core.formats import thresholds as table_thresholds
from ..edge.core.progress import say
from .common import UserError, check_at_least, check_fraction, friendly

app = typer.Typer(add_completion=False)


@app.command()
@friendly
def export(
    run_dir: Path = typer.Argument(Path("runs/latest"), help="run directory (default runs/latest)"),
    format: str = typer.Option("tflite,onnx", "--format", help="comma-separated: tflite, onnx"),
    int8: bool = typer.Option(False, "--int8", help="add full-integer TFLite and static int8 (QDQ) ONNX"),
    fp16: bool = typer.Option(False, "--fp16", help="add float16 TFLite"),
    dynamic: bool = typer.Option(False, "--dynamic", help="add dynamic-range TFLite (slower than fp32 on x86)"),
    model: Optional[Path] = typer.Option(None, help="any .keras classifier instead of the run's chosen one"),
    data: Optional[Path] = typer.Option(None, help="labelled image folder for calibration and verification "
                                        "(needed with --model outside a run dir)"),
    labels: Optional[str] = typer.Option(None, help="comma-separated class names for --model outside a run"),
    image_size: Optional[int] = typer.Option(None, help="with --model outside a run: resize to this (default: the model's input)"),
    calibration: Optional[int] = typer.Option(None, help="calibration images for int8 (default 200)"),
    io: Optional[str] = typer.Option(None, help=f"int8 TFLite input/output type: {' | '.join(IO_TYPES)} (default uint8)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default RUN_DIR/exports)"),
    min_float: Optional[float] = typer.Option(None, help="agreement threshold for float forms (default: the format table's, 0.999)"),
    min_int8: Optional[float] = typer.Option(None, help="agreement threshold for full-int8 forms (default: the table's, 0.99)"),
    explain: bool = typer.Option(False, "--explain", help="after export, compare each quantized artifact with its "
                                 "fp32 sibling tensor by tensor and print the layers that lose the most (SQNR)"),
    gate_images: Optional[int] = typer.Option(None, "--gate-images", help="confirmation images the gate asks for "
                                              "(default 2000; the demo draws extra generated images to reach it)"),
    gate_extra: Optional[list[Path]] = typer.Option(None, "--gate-extra", help="more images of the same kind for the "
                                                    "gate, labels not needed (a folder of images, or a dataset folder "
                                                    "in any layout mstl reads, e.g. the bridge when it is the same modality); repeatable"),
    bundle_samples: Optional[int] = typer.Option(None, "--bundle-samples", help="held-out images copied, with "
                                                 "their labels and the Keras model's answers, into exports/bundle "
                                                 "for mstl-bench on any device (default 100; 0: none - they are "
                                                 "dataset images)"),
    portable_int8: bool = typer.Option(False, "--portable-int8", help="build ONNX int8 exact on every x86 CPU "
                                       "(7-bit u8s8 weights), not only on this one: for artifacts that will run "
                                       "on CPUs with AVX2 and no VNNI"),
):
    """Export to .tflite / .onnx, verify each artifact in its own runtime, write cards and a manifest."""
    if io is not None and io not in IO_TYPES:
        raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    check_at_least("--calibration", calibration, 1)
    check_at_least("--gate-images", gate_images, 1)
    check_fraction("--min-float", min_float)
    check_fraction("--min-int8", min_int8)
    flags = {f for f, on in (("int8", int8), ("fp16", fp16), ("dynamic", dynamic)) if on}
    formats = select([f.strip() for f in format.split(",") if f.strip()], flags,
                     {"io": io, "calibration": calibration})
    thresholds = table_thresholds({"fp32": min_float, "fp16": min_float, "int8": min_int8})
    from ..export.gate import CONFIRM_WANTED
    from ..export.run import job_from_run, run_export
    extra = _extra_sources(gate_extra or [])
    confirm = gate_images or CONFIRM_WANTED
    if out is not None:  # before decoding and generating images: a --out that cannot be written fails now
        from ..edge.core.outputs import check_writable
        check_writable(out.parent, "--out", folder=True)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: is a file; give a folder")
    if run_dir.name == "latest" and run_dir.is_symlink():
        say(f"run dir: {run_dir} -> {run_dir.resolve()}")
    if (run_dir / "config.json").exists() and data is None:
        job = job_from_run(run_dir, formats, out, model, calibration or 200, io or "uint8", thresholds, explain,
                           confirm, extra)
    else:
        job = _standalone_job(run_dir, model, data, labels, image_size, formats, out, calibration or 200,
                              io or "uint8", thresholds, len(extra))
        job.explain, job.gate_extra_sources, job.gate_confirm = explain, extra, confirm
    job.portable_int8 = portable_int8
    if bundle_samples is not None:
        check_at_least("--bundle-samples", bundle_samples, 0)
        job.bundle_samples = bundle_samples
    manifest = run_export(job)
    say("")
    # Δacc: argmax at 0.5 on the held-out images; Δacc@op: the card's decision (operating point), when it has one
    say(f"{'artifact':<32} {'size MB':>8} {'agreement':>10} {'flips':>9} {'max|diff|':>10} {'Δacc pt (95% CI)':>22} "
        f"{'Δacc@op pt (95% CI)':>22} {'time s':>7}  recipe / status")
    failed = []
    for a in manifest["artifacts"]:
        agree = "-" if a["agreement"] is None else f"{100 * a['agreement']:.2f}%"
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        diff = "-" if a["max_abs_diff"] is None else f"{a['max_abs_diff']:.4f}"
        flips = f"{a.get('flips', '-')}/{a['n_compared']}"
        dacc, dop = (_delta(a.get("heldout")), _delta((a.get("decision_agreement") or {}).get("heldout")))
        say(f"{a['name']:<32} {size:>8} {agree:>10} {flips:>9} {diff:>10} {dacc:>22} {dop:>22} "
            f"{a.get('export_seconds', 0):>7.1f}  {a.get('recipe', '-')} / {a['status']}")
        if a["status"] != "ok":
            failed.append(f"{a['name']}: {a.get('reason') or a.get('error')}")
    say(f"manifest: {job.out_dir / 'manifest.json'}")
    if failed:
        raise UserError("verification failed for " + "; ".join(failed))


def _delta(h: dict | None) -> str:
    if not h or "accuracy_delta" not in h:
        return "-"
    lo, hi = h["accuracy_delta_ci95"]
    return f"{100 * h['accuracy_delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _standalone_job(run_dir, model, data, labels, image_size, formats, out, calibration, io, thresholds, n_extra=0):
    from ..edge.core.filelist import labelled_folder
    from ..export.run import ExportJob, calibration_apart
    from ..model import load_classifier
    if model is None:
        if not run_dir.exists():
            raise UserError(f"{run_dir}: no such run directory; train first (mstl-train full) or pass --model FILE --data DIR")
        raise UserError(f"{run_dir}: not a run directory (no config.json); pass --model FILE --data DIR")
    if data is None:
        raise UserError("--model outside a run needs --data DIR: labelled images to calibrate and verify on")
    sources, y, classes = labelled_folder(data)
    cal_src, cal_y, ver_src, ver_y = calibration_apart(sources, y, calibration, formats, data, n_extra)
    m = load_classifier(model)
    names = [s.strip() for s in labels.split(",")] if labels else None
    n_out = int(m.output_shape[-1])
    if names is None:
        names = classes if len(classes) == n_out else [f"class_{i}" for i in range(n_out)]
    size = image_size or int(m.input_shape[1])
    return ExportJob(model_path=model, out_dir=out or model.parent / "exports", formats=formats, labels=names,
                     image_size=size, resize_method="bilinear", scaling="inside the model",
                     verify_sources=ver_src, verify_labels=ver_y, calibration_sources=cal_src, calibration_labels=cal_y,
                     calibration_n=calibration, io=io, thresholds=thresholds,
                     source={"model": str(model), "data": str(data)})


def _extra_sources(paths: list[Path]) -> list[str]:
    """Agreement needs no labels, so besides every labelled layout a plain folder of images will do."""
    from ..edge.core.filelist import labelled_folder
    from ..edge.core.images import is_image_name
    out: list[str] = []
    for p in paths:
        if not p.exists():
            raise UserError(f"--gate-extra {p}: no such file or folder")
        flat = sorted(str(f) for f in p.iterdir() if f.is_file() and is_image_name(f.name)) if p.is_dir() else []
        if flat and not any(f.is_dir() for f in p.iterdir()):
            out += flat
            continue
        try:
            srcs, _, _ = labelled_folder(p)
        except ValueError as e:
            raise UserError(f"--gate-extra {p}: {e}; or a folder of image files") from None
        out += srcs
    return out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
