"""mstl-bench: accuracy, latency, size and memory of exported artifacts on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..edge.core.progress import say
from ..edge.bench.measure import DEFAULT_TIMEOUT_S
from .common import UserError, check_fraction, friendly, parse_ints

app = typer.Typer(add_completion=False)


@app.command()
@friendly
def bench(
    paths: List[Path] = typer.Argument(None, help="exports folder(s) with manifest.json, or .tflite/.onnx/.keras files"),
    data: Optional[Path] = typer.Option(None, help="labelled image folder (default: the run's target test split)"),
    threads: Optional[str] = typer.Option(None, help="thread counts, e.g. 1,2,4: each 1 .. this machine's logical "
                                          "CPUs (default 1,2, or 1 on a one-CPU machine)"),
    runs: int = typer.Option(100, help="timed runs per artifact and thread count"),
    warmup: int = typer.Option(10, help="untimed warm-up runs"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full report as JSON"),
    markdown: Optional[Path] = typer.Option(None, help="write the table as Markdown"),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="write JSON and Markdown named after this device and its runtime versions"),
    min_accuracy: Optional[float] = typer.Option(None, help="fail when any artifact's accuracy is below this (0..1)"),
    litert_log: List[Path] = typer.Option([], "--litert-log", help="stdout of LiteRT's benchmark_model (e.g. from a phone) to add as a row"),
    include_device_results: bool = typer.Option(False, "--include-device-results", help="add the rows that browsers "
                                                "posted from the app's /device page (RUN_DIR/bench/device/) for these exports"),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", help="seconds one artifact's measurement may take "
                                  "before its process is killed and the artifact reported as failed"),
):
    """Measure every artifact in its own process and print one row per artifact."""
    from ..edge.bench.android import parse_benchmark_model
    from ..edge.core.machine import slug
    from ..edge.bench.report import print_table, save
    from ..edge.bench.run import run_bench

    thread_list = _thread_counts(threads)
    if runs < 1 or warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    if not 0 < timeout < float("inf"):
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    check_fraction("--min-accuracy", min_accuracy)
    _check_outputs(json_out, markdown, save_dir)  # before measuring: a bench that then cannot save is lost
    if not paths and not litert_log:
        raise UserError("give an exports folder or artifact files (or --litert-log FILE)")
    extra = []
    for log in litert_log:
        if not log.is_file():
            raise UserError(f"{log}: no such file")
        extra.append(parse_benchmark_model(log.read_text(errors="replace"), str(log)))
    if include_device_results:
        from ..edge.core.browser_rows import device_dir, load_device_rows
        for p in paths or []:
            folder = p if p.is_dir() else p.parent
            found = load_device_rows(folder)
            say(f"{len(found)} browser row(s) from {device_dir(folder)}")
            extra += found
    report = run_bench(list(paths or []), data, thread_list, runs, warmup, extra, timeout=timeout)
    print_table(report)
    if json_out:
        save(report, json_out, markdown=False)
        say(f"json: {json_out}")
    if markdown:
        save(report, markdown, markdown=True)
        say(f"markdown: {markdown}")
    if save_dir:
        stem = f"bench_{slug(report['machine'])}"
        save(report, save_dir / f"{stem}.json", markdown=False)
        save(report, save_dir / f"{stem}.md", markdown=True)
        say(f"saved: {save_dir / stem}.json and .md")
    failed = [r for r in report["results"] if r.get("status") != "ok"]
    if min_accuracy is not None:
        if report["data"] is None:
            raise UserError("--min-accuracy needs labelled data (--data DIR, or exports of a run)")
        low = [r for r in report["results"] if r.get("status") == "ok" and r.get("accuracy") is not None
               and r["accuracy"] < min_accuracy]
        if low:
            from ..edge.core.browser_rows import row_name
            raise UserError("below --min-accuracy " + f"{min_accuracy}: " + ", ".join(
                f"{row_name(r)} {100 * r['accuracy']:.1f}%" for r in low))
    if failed:
        raise UserError(f"{len(failed)} artifact(s) could not be measured: " + "; ".join(r["error"] for r in failed))


def _thread_counts(threads: str | None) -> list[int]:
    """--threads, each from 1 to this machine's logical CPUs: 0 lets a runtime pick its own count (the row
    would not say what it measured), and far more than the CPUs measures contention, not the model - at
    100,000 LiteRT crashes and ONNX Runtime hangs."""
    import os
    cpus = os.cpu_count() or 1
    if threads is None:
        return [t for t in (1, 2) if t <= cpus]
    counts = list(parse_ints(threads, "--threads"))
    if any(t < 1 for t in counts):
        raise UserError(f"--threads must be 1 or more (got {threads}): a runtime given 0 picks its own count, "
                        "and the row would not say what it measured")
    if any(t > cpus for t in counts):
        raise UserError(f"--threads {threads}: this machine has {cpus} logical CPU(s); give counts from 1 to {cpus} "
                        "(more threads than CPUs measure contention, not the model)")
    if len(set(counts)) != len(counts):
        raise UserError(f"--threads {threads}: a count is given twice; list each once")
    return counts


def _check_outputs(json_out: Path | None, markdown: Path | None, save_dir: Path | None) -> None:
    from ..edge.core.outputs import check_writable
    for flag, path in (("--json", json_out), ("--markdown", markdown)):
        if path is not None:
            check_writable(path, flag)
    if save_dir is not None:
        check_writable(save_dir, "--save-dir", folder=True)
    if json_out is not None and markdown is not None and json_out.resolve() == markdown.resolve():
        raise UserError(f"--json and --markdown are both {json_out}: give each its own file")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
