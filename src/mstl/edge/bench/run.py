"""Collect artifacts and labelled data, measure each artifact in its own process, compare with fp32."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.filelist import labelled_folder
from ..core.sources import is_npz_ref
from ..core.formats import for_file, precision_of
from ..core.cards import MANIFEST, CardError, card_of, file_mismatch, read_manifest, unverified_reason
from ..core.preprocess import Preprocess
from ..core.progress import say
from ..core.machine import machine_info
from ..core.metrics import percent
from .measure import DEFAULT_TIMEOUT_S, measure_isolated
from .report import measured_here


class BenchError(ValueError):
    pass


@dataclass
class Artifact:
    path: Path
    format: str
    precision: str
    labels: list[str] | None
    run_dir: Path | None
    # What the exports manifest beside the file says of it, read once by collect: the sha256 it lists
    # (None: no manifest there, or the file is not in it), or why the manifest could not be read.
    listed_sha256: str | None = None
    manifest_error: str | None = None


def collect(paths: list[Path]) -> list[Artifact]:
    out = []
    manifests: dict[Path, dict | CardError | None] = {}  # a folder's manifest, read once for all its files
    for p in paths:
        if p.is_dir():
            manifest = p / MANIFEST
            if not manifest.exists():
                raise BenchError(f"{p}: no manifest.json - give an exports folder (mstl-export) or artifact files")
            m = read_manifest(p)
            run_dir = Path(m["source"]["run_dir"]) if (m.get("source") or {}).get("run_dir") else p.parent
            for a in m["artifacts"]:
                name = a.get("path") or a["name"]
                out.append(Artifact(p / name, a["format"], a.get("precision") or precision_of(name), m.get("labels"),
                                    run_dir, listed_sha256=a.get("sha256")))
        elif p.exists() or p.suffix in (".tflite", ".onnx", ".keras"):
            fam = for_file(str(p))
            card = card_of(p)
            precision = (card or {}).get("precision") or ("fp32" if fam == "keras" else precision_of(str(p)))
            run_dir = Path(card["source"]["run_dir"]) if card and card.get("source", {}).get("run_dir") else None
            artifact = Artifact(p, fam, precision, (card or {}).get("labels"), run_dir)
            if card is None and fam != "keras":
                _listing_of(artifact, manifests)
            out.append(artifact)
        else:
            raise BenchError(f"{p}: no such file or folder")
    return out


def _listing_of(artifact: Artifact, manifests: dict[Path, dict | CardError | None]) -> None:
    """Fills in what the manifest beside a card-less artifact file lists for it (its folder's manifest
    read at most once per collect)."""
    folder = artifact.path.parent
    if folder not in manifests:
        try:
            manifests[folder] = read_manifest(folder) if (folder / MANIFEST).is_file() else None
        except CardError as e:
            manifests[folder] = e
    m = manifests[folder]
    if isinstance(m, CardError):
        artifact.manifest_error = str(m)
    elif m is not None:
        name = artifact.path.name
        artifact.listed_sha256 = next((r.get("sha256") for r in m["artifacts"]
                                       if r.get("name") == name or r.get("path") == name), None)


def _map_labels(folder_classes: list[str], y: np.ndarray, model_labels: list[str] | None, data: Path) -> np.ndarray:
    if model_labels is None or list(folder_classes) == list(model_labels):
        return y
    if len(model_labels) == 2 and model_labels[0] == f"not {model_labels[1]}" and model_labels[1] in folder_classes:
        return (y == folder_classes.index(model_labels[1])).astype(np.int64)
    raise BenchError(f"{data}: its classes {folder_classes} do not match the model's labels {model_labels}; "
                     "give a folder whose class folders are named as the labels")


def labelled_data(artifacts: list[Artifact], data: Path | None
                  ) -> tuple[list[str], np.ndarray, str, dict | None] | None:
    """The images accuracy is measured on: ``--data``; else the exports' verification bundle (with the
    Keras model's answers to check agreement against); else the run's target test split."""
    labels = next((a.labels for a in artifacts if a.labels), None)
    if data is not None:
        sources, y, classes = labelled_folder(data)
        return sources, _map_labels(classes, y, labels, data), str(data), None
    from ..core.bundle import BundleError, find, read
    for folder in dict.fromkeys(a.path.parent for a in artifacts):
        if find(folder):
            try:
                b = read(folder)
            except BundleError as e:
                raise BenchError(str(e)) from None
            return (b["paths"], b["labels_array"], f"verification bundle of {folder} ({len(b['paths'])} held-out "
                    "images; agreement against the Keras model's answers on the exporting machine)", b)
    from ..core.rundir import read_split
    for a in artifacts:
        found = read_split(a.run_dir, "test") if a.run_dir else None
        if found:
            return found[0], found[1], f"target test split of {a.run_dir}", None
    return None


def run_bench(paths: list[Path], data: Path | None, threads: list[int], runs: int, warmup: int,
              extra_rows: list[dict] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    artifacts = collect(paths)
    if not artifacts and not extra_rows:
        raise BenchError("nothing to measure")
    labelled = labelled_data(artifacts, data)
    class_names = next((a.labels for a in artifacts if a.labels), None)
    decoded: dict[Preprocess, str] = {}  # decoded labelled sets, as .npy files the workers memory-map
    scratch = tempfile.TemporaryDirectory(prefix="mstl-bench-")
    results = []
    for i, a in enumerate(artifacts):
        say(f"[{i + 1}/{len(artifacts)}] {a.path.name}: measuring at {threads} thread(s)")
        pixels = y = None
        e2e = []
        card = card_of(a.path) if a.format != "keras" else None  # read once: sha256, preprocessing, gate
        problem = file_mismatch(a.path, card) if card and a.path.is_file() else None
        if card is None and a.format != "keras" and a.path.is_file():
            problem = _manifest_mismatch(a)
        if problem:
            say(f"  refused: {problem}")
            results.append({"artifact": a.path.name, "path": str(a.path), "format": a.format, "precision": a.precision,
                            "status": "failed", "error": problem})
            continue
        prep = _preprocess(a.path, card)
        if labelled and prep is not None:
            sources, y_all, _, _ = labelled
            if prep not in decoded:
                say(f"  decoding {len(sources)} labelled images at {prep.size} px ({prep.resize}, from the card)")
                decoded[prep] = str(Path(scratch.name) / f"pixels-{len(decoded)}.npy")
                np.save(decoded[prep], prep.load_many(sources))
            pixels, y = decoded[prep], y_all
            e2e = [s for s in sources if not is_npz_ref(s)][:20]
        names = class_names or ([f"class_{k}" for k in range(int(y.max()) + 1)] if y is not None else None)
        if a.format == "keras" and len(threads) > 1:
            # TensorFlow fixes its thread count once per process: one process per thread count
            parts = [measure_isolated(str(a.path), [t], runs, warmup, pixels, y, names, e2e if t == threads[-1] else [],
                                      timeout=timeout, prep=prep) for t in threads]
            r = next((p for p in parts if p["status"] != "ok"), None) or _merge_threads(parts)
        else:
            r = measure_isolated(str(a.path), threads, runs, warmup, pixels, y, names, e2e, timeout=timeout, prep=prep)
        _describe(r, a, card)
        if labelled and labelled[3] and r["status"] == "ok" and "probs" in r:
            _against_bundle(r, labelled[3], card)
        if card and y is not None and r["status"] == "ok" and "probs" in r:
            _at_operating_point(r, card, y)
        if r["status"] != "ok":
            say(f"  failed: {r['error']}")
        results.append(r)
    scratch.cleanup()
    results += extra_rows or []
    _compare_with_fp32(results)
    for r in results:
        r.pop("probs", None)
    return {"machine": machine_info(), "threads": threads, "runs": runs, "warmup": warmup,
            "data": labelled[2] if labelled else None, "n_images": int(len(labelled[1])) if labelled else 0,
            "results": results}


def _describe(r: dict, a: Artifact, card: dict | None) -> None:
    """What a row says of its artifact beside the figures: verified or not, recipe, CPUs, float share."""
    r.update({"format": a.format, "precision": a.precision, "artifact": a.path.name, "path": str(a.path)})
    if a.format != "keras":  # the Keras model is the reference the gate compares with, not an artifact
        unverified = unverified_reason(a.path, card)
        r["verified"] = unverified is None
        if unverified:
            r.setdefault("notes", []).append(f"NOT VERIFIED: {unverified}")
    if card is not None:
        r["recipe"] = card.get("recipe")
        note = _portability_note(card, a.format)
        if note:
            r.setdefault("notes", []).append(note)
        if card.get("int8_mac_share") is not None and card["int8_mac_share"] < 1:
            r["int8_mac_share"] = card["int8_mac_share"]
            r.setdefault("notes", []).append(_mixed_note(card))


def _manifest_mismatch(a: Artifact) -> str | None:
    """Without its card, an artifact is still checked against the sha256 its exports manifest lists."""
    from ..core.cards import sha256_file
    if a.manifest_error:
        return f"{a.path.name} has no card and cannot be checked against its manifest: {a.manifest_error}"
    if a.listed_sha256 and sha256_file(a.path) != a.listed_sha256:
        return (f"{a.path.name} is not the file {MANIFEST} lists (sha256 differs) and has no card: it was replaced "
                "after export; re-export it")
    return None


DISAGREE_P = 0.01  # a device's flips on the bundle count against its gate only when this unlikely by chance


def _against_bundle(r: dict, bundle: dict, card: dict | None) -> None:
    """This device's answers on the bundle against (1) the Keras model's, judged by the artifact's own
    gate as a count (a binomial test: on 100 images a 99% gate is 1 flip from failing by chance alone),
    and (2) the same file's answers on the exporting machine, image by image: any change there is a
    kernel that computes otherwise on this CPU, shown exactly, not sampled."""
    from ..core.metrics import decisive, flips_p_value, top1_agreement
    probs = np.asarray(r["probs"], np.float64)
    got = top1_agreement(probs, bundle["reference_array"])
    want = bundle["artifacts"].get(r["artifact"])
    got["same_build"] = want is not None and card is not None and card.get("sha256") == want
    threshold = ((card or {}).get("verification") or {}).get("threshold")
    got["threshold"] = threshold
    if threshold is not None and got["agreement"] is not None:
        got["p_value"] = flips_p_value(got["flips"], got["n_compared"], 1.0 - threshold)
    got["disagrees"] = bool(got["same_build"] and got.get("p_value") is not None and got["p_value"] < DISAGREE_P)
    there = bundle.get("answers_arrays", {}).get(r["artifact"]) if got["same_build"] else None
    if there is not None and there.shape == probs.shape:
        clear = decisive(bundle["reference_array"])
        got["vs_export"] = {"changed": int(np.sum((probs.argmax(1) != there.argmax(1)) & clear)),
                            "n_compared": int(clear.sum()), "max_abs_diff": float(np.abs(probs - there).max()),
                            "export_flips": int(top1_agreement(there, bundle["reference_array"])["flips"])}
    r["bundle_agreement"] = got
    # the answers themselves, so that runs on two devices can be compared image by image later
    r["bundle_probs"] = np.round(probs, 6).tolist()
    if not got["same_build"]:
        r.setdefault("notes", []).append("bundle answers were saved for another build of this artifact: "
                                         "agreement compares different models")
        return
    if got["disagrees"]:
        r.setdefault("notes", []).append(
            f"DISAGREES with the export: {got['flips']} flips of {got['n_compared']} against the Keras answers on this "
            f"device, more than its {100 * threshold:.1f}% gate lets happen by chance (p = {got['p_value']:.3g})")
    v = got.get("vs_export")
    if v and v["changed"]:
        r.setdefault("notes", []).append(
            f"computes differently from the exporting machine: {v['changed']} of {v['n_compared']} top-1 answers "
            f"changed (max |diff| {v['max_abs_diff']:.3f}; {got['flips']} flips against Keras here, {v['export_flips']} "
            "there) - other kernels on this CPU")


def _at_operating_point(r: dict, card: dict, y) -> None:
    """Sensitivity and specificity at the card's threshold (calibrated probability) beside those at 0.5."""
    from ..core.decision import rates_at
    d = card.get("decision") or {}
    probs = np.asarray(r["probs"])
    if probs.shape[1] != 2:
        return
    at = rates_at(probs, y, d)
    half = rates_at(probs, y, {"positive_index": d.get("positive_index", 1)})  # T 1, threshold 0.5
    r["operating_point"] = {"threshold": at["threshold"], "temperature": float(d.get("temperature", 1.0)),
                            "chosen": bool(d.get("chosen_on")), "at_threshold": at, "at_0.5": half}
    if d.get("chosen_on"):
        r.setdefault("notes", []).append(
            f"at the card's operating point ({d.get('target')}, threshold {at['threshold']:.3f}): sensitivity "
            f"{percent(at['sensitivity'])}, specificity {percent(at['specificity'])}; at 0.5: "
            f"{percent(half['sensitivity'])} / {percent(half['specificity'])}")
    else:
        r.setdefault("notes", []).append("no operating point in the card: decides at 0.5")


def _portability_note(card: dict, fmt: str) -> str | None:
    """An ONNX u8s8 artifact verified on a CPU with VNNI, measured here on AVX2 without it: its int8
    products may saturate here, which the export gate never saw - this row's accuracy is the check."""
    from ..core.machine import cpu_flags, u8s8_may_saturate
    options = card.get("builder_options") or {}
    if fmt != "onnx" or options.get("activations") != "uint8" or options.get("reduce_range"):
        return None
    exported_on = (card.get("machine") or {}).get("cpu_flags") or []
    if u8s8_may_saturate(cpu_flags()) and not u8s8_may_saturate(exported_on):
        return ("u8s8 verified on a CPU with VNNI; this CPU has AVX2 without VNNI, where u8s8 products can saturate: "
                "compare this row's accuracy with fp32, or re-export here so that the gate judges this CPU")
    return None


def _merge_threads(parts: list[dict]) -> dict:
    out = dict(parts[0])
    out["latency"], out["latency_ms"] = {}, {}
    for p in parts:
        out["latency"].update(p["latency"])
        out["latency_ms"].update(p["latency_ms"])
        if p.get("e2e_ms"):
            out["e2e_ms"] = p["e2e_ms"]
    out["peak_rss_mb"] = max(p["peak_rss_mb"] for p in parts)
    return out


def _preprocess(path: Path, card: dict | None) -> Preprocess | None:
    """The artifact's preprocessing from its card; without a card (or a card that gives no input shape),
    the card's resize, or a bilinear one, to the artifact's own input size."""
    if card and (card.get("input") or {}).get("shape"):
        return Preprocess.from_card(card)
    try:
        from ..core.runtimes import load_runtime
        return Preprocess.from_card(card, load_runtime(path).image_size)
    except Exception:
        return None  # reported by the measuring process


def _compare_with_fp32(results: list[dict]) -> None:
    """Accuracy change and speed against the float32 form of the same format."""
    # rows measured elsewhere (a phone, a browser) compare with nothing here
    ref = {r["format"]: r for r in results if measured_here(r) and r.get("precision") == "fp32" and r.get("status") == "ok"}
    for r in results:
        base = ref.get(r.get("format"))
        r.setdefault("delta_vs_fp32", None)
        r["notes"] = r.get("notes", [])
        if r.get("status") != "ok" or base is None or base is r or not measured_here(r):
            continue
        if r.get("accuracy") is not None and base.get("accuracy") is not None:
            r["delta_vs_fp32"] = r["accuracy"] - base["accuracy"]
        if "probs" in r and "probs" in base:
            a, b = np.asarray(r["probs"]), np.asarray(base["probs"])
            r["top1_agreement_vs_fp32"] = float(np.mean(a.argmax(1) == b.argmax(1)))
        slower = [t for t, v in r["latency_ms"].items() if t in base["latency_ms"] and v["p50"] and base["latency_ms"][t]["p50"]
                  and v["p50"] > base["latency_ms"][t]["p50"]]
        if slower:
            from ..core.machine import cpu_flags, int8_speed_hint
            why = f" ({int8_speed_hint(cpu_flags())})" if r.get("precision") in ("int8", "dynamic") else ""
            r["notes"].append(f"SLOWER than {r['format']} fp32 on this CPU at {','.join(slower)} thread(s){why}")


def _mixed_note(card: dict) -> str:
    """What a mixed-precision artifact keeps in float and what that cost where it was exported."""
    mixed = card.get("mixed") or {}
    cost = mixed.get("cost") or {}
    timed = ", ".join(f"{k.removeprefix('p50_ms ')} {v} ms" for k, v in cost.items() if k.startswith("p50_ms"))
    return (f"mixed precision: {len(card.get('float_layers') or [])} weighted layer(s) in float "
            f"(for {', '.join(mixed.get('float_layers') or [])}), {100 * card['int8_mac_share']:.1f}% of MACs in int8"
            + (f"; at export on {cost.get('cpu')}, p50 1 thread: {timed}" if timed else ""))
