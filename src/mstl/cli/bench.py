"""mstl-bench: accuracy, latency, size and memory of exported artifacts on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..progress import say
from .common import UserError, check_fraction, friendly, parse_ints

app = typer.Typer(add_completion=False)


@app.command()
@friendly
def bench(
    paths: List[Path] = typer.Argument(None, help="exports folder(s) with manifest.json, or .tflite/.onnx/.keras files"),
    data: Optional[Path] = typer.Option(None, help="labelled image folder (default: the run's target test split)"),
    threads: str = typer.Option("1,2", help="thread counts, e.g. 1,2,4"),
    runs: int = typer.Option(100, help="timed runs per artifact and thread count"),
    warmup: int = typer.Option(10, help="untimed warm-up runs"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full report as JSON"),
    markdown: Optional[Path] = typer.Option(None, help="write the table as Markdown"),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="write JSON and Markdown named after this device and its runtime versions"),
    min_accuracy: Optional[float] = typer.Option(None, help="fail when any artifact's accuracy is below this (0..1)"),
    litert_log: List[Path] = typer.Option([], "--litert-log", help="stdout of LiteRT's benchmark_model (e.g. from a phone) to add as a row"),
    include_device_results: bool = typer.Option(False, "--include-device-results", help="add the rows that browsers "
                                                "posted from the app's /device page (RUN_DIR/bench/device/) for these exports"),
):
    """Measure every artifact in its own process and print one row per artifact."""
    from ..bench.android import parse_benchmark_model
    from ..machine import slug
    from ..bench.report import print_table, save
    from ..bench.run import run_bench

    thread_list = list(parse_ints(threads, "--threads"))
    if any(t < 1 for t in thread_list):
        raise UserError(f"--threads must be 1 or more (got {threads}): a runtime given 0 picks its own count, "
                        "and the row would not say what it measured")
    if runs < 1 or warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    check_fraction("--min-accuracy", min_accuracy)
    if not paths and not litert_log:
        raise UserError("give an exports folder or artifact files (or --litert-log FILE)")
    extra = []
    for log in litert_log:
        if not log.is_file():
            raise UserError(f"{log}: no such file")
        extra.append(parse_benchmark_model(log.read_text(errors="replace"), str(log)))
    if include_device_results:
        from ..bench.browser_rows import device_dir, load_device_rows
        for p in paths or []:
            folder = p if p.is_dir() else p.parent
            found = load_device_rows(folder)
            say(f"{len(found)} browser row(s) from {device_dir(folder)}")
            extra += found
    report = run_bench(list(paths or []), data, thread_list, runs, warmup, extra)
    print_table(report)
    if json_out:
        save(report, json_out)
        say(f"json: {json_out}")
    if markdown:
        save(report, markdown)
        say(f"markdown: {markdown}")
    if save_dir:
        stem = f"bench_{slug(report['machine'])}"
        save(report, save_dir / f"{stem}.json")
        save(report, save_dir / f"{stem}.md")
        say(f"saved: {save_dir / stem}.json and .md")
    failed = [r for r in report["results"] if r.get("status") != "ok"]
    if min_accuracy is not None:
        if report["data"] is None:
            raise UserError("--min-accuracy needs labelled data (--data DIR, or exports of a run)")
        low = [r for r in report["results"] if r.get("status") == "ok" and r.get("accuracy") is not None
               and r["accuracy"] < min_accuracy]
        if low:
            from ..bench.browser_rows import row_name
            raise UserError("below --min-accuracy " + f"{min_accuracy}: " + ", ".join(
                f"{row_name(r)} {100 * r['accuracy']:.1f}%" for r in low))
    if failed:
        raise UserError(f"{len(failed)} artifact(s) could not be measured: " + "; ".join(r["error"] for r in failed))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
