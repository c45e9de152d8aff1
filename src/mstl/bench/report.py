"""The bench table on the terminal, in Markdown and in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(v, spec=".2f", scale=1.0, none="-"):
    return none if v is None else format(v * scale, spec)


def rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    threads = [str(t) for t in report["threads"]]
    tcol = "/".join(threads)
    head = ["artifact", "format", "precision", "status", "size MB", "accuracy %", "Δ vs fp32", f"p50 ms @{tcol}t",
            f"p90 ms @{tcol}t", f"img/s @{tcol}t", f"e2e p50 ms @{threads[-1]}t", "init ms", "peak MB", "notes"]
    out = []
    for r in report["results"]:
        if r.get("status") != "ok":
            out.append([r["artifact"], r.get("format", "?"), r.get("precision", "?"), "FAILED", "-", "-", "-", "-", "-", "-",
                        "-", "-", "-", r.get("error", "")])
            continue
        lat = r["latency"]
        ts = [t for t in threads if t in lat] or list(lat)
        acc = "n/a (no labelled data)" if r.get("accuracy") is None else _fmt(r["accuracy"], ".1f", 100)
        if r.get("metrics"):
            acc += f" [{_fmt(r['metrics']['ci_low'], '.1f', 100)}, {_fmt(r['metrics']['ci_high'], '.1f', 100)}]"
        out.append([
            r["artifact"], r["format"], r["precision"], "ok", _fmt(r.get("size_mb")), acc,
            _fmt(r.get("delta_vs_fp32"), "+.1f", 100) + (" pt" if r.get("delta_vs_fp32") is not None else ""),
            "/".join(_fmt(lat[t].get("p50")) for t in ts), "/".join(_fmt(lat[t].get("p90")) for t in ts),
            "/".join(_fmt(lat[t].get("images_per_s"), ".0f") for t in ts),
            _fmt((r.get("e2e_ms") or {}).get("p50")), _fmt(r.get("init_ms"), ".0f"), _fmt(r.get("peak_rss_mb"), ".0f"),
            "; ".join(r.get("notes", [])) + (f" [{r['source']}]" if r.get("source") else ""),
        ])
    return head, out


def header_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    rts = ", ".join(f"{k} {v}" for k, v in m["runtimes"].items())
    xnn = {r.get("xnnpack") for r in report["results"] if r.get("format") == "tflite" and r.get("status") == "ok"}
    return [
        f"machine: {m['cpu']} ({m['arch']}, {m['cores']} cores), {m['os']}, Python {m['python']}",
        f"runtimes: {rts}",
        f"threads: {report['threads']}; {report['runs']} timed runs after {report['warmup']} warm-up, batch 1; "
        f"LiteRT XNNPACK: {'on' if xnn == {True} else 'off' if xnn == {False} else 'mixed/none'}",
        f"accuracy on: {report['data'] or 'NO labelled data (accuracy not measured)'}"
        + (f" ({report['n_images']} images)" if report["n_images"] else ""),
    ]


def to_markdown(report: dict[str, Any]) -> str:
    head, body = rows(report)
    lines = ["# mstl-bench", ""] + [f"- {h}" for h in header_lines(report)] + [""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
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
    for r in body:
        t.add_row(*r)
    console.print(t)


def save(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".md":
        path.write_text(to_markdown(report))
    else:
        path.write_text(json.dumps(report, indent=2, default=float))
