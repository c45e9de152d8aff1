"""The bench table on the terminal, in Markdown and in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.metrics import percent_with_ci


def _fmt(v, spec=".2f", scale=1.0, none="-"):
    return none if v is None else format(v * scale, spec)


def measured_here(row: dict[str, Any]) -> bool:
    """A row this machine measured (not one from a phone's benchmark_model log or a browser)."""
    return not row.get("source")


def rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    threads = [str(t) for t in report["threads"]]
    tcol = "/".join(threads)
    head = ["artifact", "format", "precision", "status", "size MB", "accuracy %", "Δ vs fp32", "agree vs export %",
            f"p50 ms @{tcol}t",
            f"p90 ms @{tcol}t", f"img/s @{tcol}t", f"e2e p50 ms @{threads[-1]}t", "init ms", "peak MB", "notes"]
    out = []
    for r in report["results"]:
        if r.get("status") != "ok":
            out.append([r["artifact"], r.get("format", "?"), r.get("precision", "?"), "FAILED", "-", "-", "-", "-", "-", "-",
                        "-", "-", "-", "-", r.get("error", "")])
            continue
        lat = r["latency"]
        ts = [t for t in threads if t in lat] or list(lat)
        acc = "n/a (no labelled data)" if r.get("accuracy") is None else _fmt(r["accuracy"], ".1f", 100)
        if r.get("metrics"):
            acc += f" [{_fmt(r['metrics']['ci_low'], '.1f', 100)}, {_fmt(r['metrics']['ci_high'], '.1f', 100)}]"
        out.append([
            r["artifact"] + (" [browser]" if r.get("measured_in") == "browser" else ""), r["format"], r["precision"], "ok", _fmt(r.get("size_mb")), acc,
            _fmt(r.get("delta_vs_fp32"), "+.1f", 100) + (" pt" if r.get("delta_vs_fp32") is not None else ""),
            _bundle_cell(r.get("bundle_agreement")),
            "/".join(_fmt(lat[t].get("p50")) for t in ts), "/".join(_fmt(lat[t].get("p90")) for t in ts),
            "/".join(_fmt(lat[t].get("images_per_s"), ".0f") for t in ts),
            _fmt((r.get("e2e_ms") or {}).get("p50")), _fmt(r.get("init_ms"), ".0f"), _fmt(r.get("peak_rss_mb"), ".0f"),
            "; ".join(r.get("notes", [])) + (f" [{r['source']}]" if r.get("source") else ""),
        ])
    return head, out


def _bundle_cell(b: dict[str, Any] | None) -> str:
    """Top-1 agreement with the export's Keras answers (95% interval), the largest probability gap, and
    how many answers differ from the same file's on the exporting machine."""
    if not b or b.get("agreement") is None:
        return "-"
    v = b.get("vs_export")
    there = "" if not v else (", answers = export's" if not v["changed"] else f", {v['changed']} answers differ from export's")
    return (f"{percent_with_ci(b['agreement'], b['ci95'], unit='')} "
            f"max|Δ| {b['max_abs_diff']:.3f}" + ("" if b.get("same_build") else " (other build)") + there)


def header_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    rts = ", ".join(f"{k} {v}" for k, v in m["runtimes"].items())
    xnn = {r.get("xnnpack") for r in report["results"] if r.get("format") == "tflite" and r.get("status") == "ok"}
    lines = [
        f"machine: {m['cpu']} ({m['arch']}, {m['cores']} cores), {m['os']}, Python {m['python']}"
        + (f"; board: {m['board']}" if m.get("board") else ""),
        f"cpu flags (int8-relevant): {' '.join(m.get('cpu_flags') or []) or 'none detected'}",
        f"runtimes: {rts}",
        f"threads: {report['threads']}; {report['runs']} timed runs after {report['warmup']} warm-up, batch 1; "
        f"LiteRT XNNPACK: {'on' if xnn == {True} else 'off' if xnn == {False} else 'mixed/none'}",
        f"accuracy on: {report['data'] or 'NO labelled data (accuracy not measured)'}"
        + (f" ({report['n_images']} images)" if report["n_images"] else ""),
    ]
    if m.get("emulated"):
        lines.insert(1, f"EMULATED: this {m['arch']} process runs under an emulator on another CPU - timings are not "
                        "this device's and no speed recommendation is made; answers (accuracy, agreement) still count")
    return lines


SAME_SPEED = 0.10  # within 10% counts as the same speed on these noisy machines


def recommendations(report: dict[str, Any]) -> list[str]:
    """One line per format: which artifact to deploy on this device, and why (speed, size, accuracy)."""
    from ..core.machine import int8_speed_hint
    if report["machine"].get("emulated"):
        return ["none: measured under emulation, so the timings say nothing about a real device of this kind"]
    hint = int8_speed_hint(report["machine"].get("cpu_flags", []))
    out = []
    local = [r for r in report["results"] if measured_here(r)]
    for fmt in sorted({r.get("format") for r in local if r.get("status") == "ok" and r.get("latency")}):
        ok = [r for r in local if r.get("format") == fmt and r.get("status") == "ok" and r.get("latency")]
        t = str(report["threads"][0])
        ok = [r for r in ok if t in r["latency"] and r["latency"][t].get("p50")]
        fp32 = next((r for r in ok if r["precision"] == "fp32"), None)
        # The export gate (agreement with Keras on hundreds of images) decides whether a quantized form
        # qualifies; a test-split accuracy delta on a few dozen images is reported, not used to decide.
        quant = [r for r in ok if r["precision"] != "fp32" and r.get("verified") is True]  # unverified by default
        if fp32 is None or not quant:
            if fp32 is not None:
                out.append(f"{fmt}: deploy {fp32['artifact']} - no verified quantized form was measured")
            elif ok:
                best = min(ok, key=lambda r: r["latency"][t]["p50"])
                out.append(f"{fmt}: deploy {best['artifact']} - the fastest measured (no fp32 reference to compare)")
            continue
        q = min(quant, key=lambda r: r["latency"][t]["p50"])
        speed = fp32["latency"][t]["p50"] / q["latency"][t]["p50"]
        smaller = (fp32.get("size_mb") or 0) / (q.get("size_mb") or 1)
        acc = "" if q.get("delta_vs_fp32") is None else f", accuracy {100 * q['delta_vs_fp32']:+.1f} pt vs fp32"
        if q.get("int8_mac_share") is not None:
            acc += f" (mixed precision: {100 * q['int8_mac_share']:.0f}% of MACs in int8)"
        if speed >= 1 + SAME_SPEED:
            out.append(f"{fmt}: deploy {q['artifact']} - {speed:.2f}x faster than fp32 at {t} thread(s), "
                       f"{smaller:.1f}x smaller{acc}")
        elif speed >= 1 - SAME_SPEED:
            out.append(f"{fmt}: deploy {q['artifact']} - {smaller:.1f}x smaller at about the speed of fp32 "
                       f"({speed:.2f}x at {t} thread(s)){acc}; {hint}")
        else:
            out.append(f"{fmt}: deploy {fp32['artifact']} where speed matters - {q['artifact']} is {1 / speed:.2f}x "
                       f"slower here ({hint}); {q['artifact']} only where its {smaller:.1f}x smaller size matters{acc}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    head, body = rows(report)
    lines = ["# mstl-bench", ""] + [f"- {h}" for h in header_lines(report)] + [""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    recs = recommendations(report)
    if recs:
        lines += ["", "## Recommendation for this device", ""] + [f"- {r}" for r in recs]
    browser = [r for r in report["results"] if r.get("measured_in") == "browser"]
    if browser:
        lines += ["", "## Measured in a browser (mstl-app /device)", "",
                  "Rows marked [browser] were posted to the app's /device page, not measured on the machine above. "
                  "The app checked their answers (agreement: its own comparison with its native run on held-out "
                  "images whose answers it never published), not who computed them: the timings and the device "
                  "are the page's word.", ""]
        for r in browser:
            a = r.get("agreement") or {}
            d = r.get("device") or {}
            agree = f"{100 * a['rate']:.1f}% of {a['n']}" + (" **LOW**" if a.get("low") else "") if a else "not measured"
            lines.append(f"- {r['artifact']}: {r.get('runtime')} {r.get('backend')}, {r.get('threads')} thread(s); "
                         f"{d.get('hardware_concurrency', '?')} cores; agreement {agree}; {d.get('user_agent', '')}")
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=200)
    for h in header_lines(report):
        console.print(h, markup=False, highlight=False)
    head, body = rows(report)
    t = Table(show_lines=False)
    for h in head:
        t.add_column(h, overflow="fold")
    from rich.text import Text
    for r in body:
        t.add_row(*(Text(c) for c in r))  # plain text: "[browser]" or a "[source]" note is not markup
    console.print(t)
    for line in recommendations(report):
        console.print(f"recommend {line}", markup=False, highlight=False)


def save(report: dict[str, Any], path: Path, markdown: bool | None = None) -> None:
    """The report as Markdown (``markdown``, or by default a ``.md`` name) or else as JSON, written under a
    temporary name and renamed: a full disk leaves the old file, never a truncated one."""
    import os
    from ..core.outputs import write_error, write_then_rename
    as_md = path.suffix == ".md" if markdown is None else markdown
    text = to_markdown(report) if as_md else json.dumps(report, indent=2, default=float)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_then_rename(path, path.with_name(f".{path.name}.tmp{os.getpid()}"), lambda tmp: tmp.write_text(text))
    except OSError as e:
        raise write_error(e, path) or e from None
