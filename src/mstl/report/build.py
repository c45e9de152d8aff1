"""report.md, trials.csv and the paper's figures, regenerated from a run dir's records alone."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..config import departures_from_paper, run_config
from ..edge.core.metrics import percent, percent_with_ci
from ..edge.core.rundir import (CLAIMS, REPORT, TRIALS_CSV, RunDir, atomic_write_text, draw_dir, draw_dirs, read_selection,
                                read_split, write_via_temp)
from ..sweep import optimal_record
from .claims import PAPER_ACCURACY, PAPER_BAND, PAPER_FROZEN, evaluate, observed_text, t_interval



def collect_draws(store: RunDir) -> list[dict]:
    """This run dir and every further data draw under draws/, as the claims module takes them."""
    out = []
    for d in [store.dir] + draw_dirs(store.dir):
        st = RunDir(d)
        if not st.config_path.exists():
            continue
        trials = st.trials()
        optimal = {}
        for key in sorted({(r["size"], r["seed"]) for r in trials}):
            optimal[key] = optimal_record([r for r in trials if (r["size"], r["seed"]) == key])["frozen"]
        test = read_split(d, "test")
        out.append({"dir": d, "data_seed": run_config(d).data_seed, "optimal": optimal, "trials": trials,
                    "stage2": st.stage2_records(), "y_test": test[1] if test else np.zeros(0, int),
                    "selection": read_selection(d)})
    return out


def study_progress(store: RunDir) -> dict:
    """How much of the configured study the records hold, over every data draw: stage-1 trials (a sweep
    whose stop rule has not ended it can still run up to its whole depth grid: "at most"), stage-2
    trainings (control and every size, per seed), and the process training the run now, if any."""
    from ..sweep import next_depth, sweep_grid
    cfg = run_config(store.dir)
    grid = sweep_grid(cfg)
    seeds1 = list(cfg.seeds[: max(1, cfg.stage1_seeds)])
    jobs = {(0, s) for s in cfg.seeds if cfg.stage2.control} | {(z, s) for z in cfg.stage1.sizes for s in cfg.seeds}
    dirs = [store.dir] + [draw_dir(store.dir, k) for k in cfg.data_seeds[1:]]
    s1_done = s1_most = open_sweeps = s2_done = 0
    for d in dirs:
        st = RunDir(d)
        started = st.config_path.exists()
        trials = st.trials() if started else []
        for size in cfg.stage1.sizes:
            for seed in seeds1:
                done = {r["frozen"]: r for r in trials if r["size"] == size and r["seed"] == seed}
                finished = next_depth(grid, done, cfg.stage1.patience) is None
                s1_done += len(done)
                s1_most += len(done) if finished else len(grid)
                open_sweeps += not finished
        s2_done += len({(r["size"], r["seed"]) for r in st.stage2_records()} & jobs) if started else 0
    s2_all = len(jobs) * len(dirs)
    out = {"complete": not open_sweeps and s2_done == s2_all, "writer": store.writer(),
           "stage1_trials": s1_done, "stage1_trials_at_most": s1_most, "sweeps_unfinished": open_sweeps,
           "stage2_trainings": s2_done, "stage2_planned": s2_all}
    most = "at most " if open_sweeps else ""
    out["summary"] = None if out["complete"] else (
        f"incomplete: {s1_done + s2_done} of {most}{s1_most + s2_all} trials (stage 1: {s1_done} of {most}{s1_most}"
        + (f", {open_sweeps} sweep(s) unfinished" if open_sweeps else "") + f"; stage 2: {s2_done} of {s2_all})"
        + (f" - process {out['writer']} is training this run now" if out["writer"] else ""))
    return out


def _training_time(trials: list[dict], draws: list[dict]) -> str:
    line = f"- {len(trials)} stage-1 trials, {sum(r['seconds'] for r in trials):.0f} s of training"
    if len(draws) > 1:  # the stage-2 figures above pool every draw; so does this line
        every = [r for d in draws for r in d["trials"]]
        s2 = [r for d in draws for r in d["stage2"]]
        line += (f" in this data draw; all {len(draws)} draws: {len(every)} stage-1 trials, "
                 f"{sum(r['seconds'] for r in every):.0f} s, and {len(s2)} stage-2 trainings, "
                 f"{sum(r.get('seconds', 0) for r in s2):.0f} s")
    return line


def _agg(records: list[dict], key: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in records:
        out.setdefault(int(r[key]), []).append(r)
    return out


def _unit_accuracy(draws: list[dict], size: int) -> list[float]:
    return [r["accuracy"] for d in draws for r in d["stage2"] if r["size"] == size]


def save_figure(fig, path: Path, **kwargs) -> None:
    """``fig`` as ``path`` (its format from the suffix), written under a temporary name and renamed: a full
    disk leaves the previous figure or none, never a truncated one."""
    import os
    write_via_temp(path, path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}"),
                    lambda tmp: fig.savefig(tmp, **kwargs))


def _save_size_figure(plt, fig, ax, ylabel: str, title: str, figdir: Path, name: str) -> str:
    """Axes, legend and file of a figure over bridge size: a log axis puts a run's sizes and the
    paper's 10k..80k on one plot."""
    ax.set_xscale("log")
    ax.set_xlabel("bridge dataset size (images, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, figdir / name)
    plt.close(fig)
    return f"figures/{name}"


def _figures(run_dir: Path, trials: list[dict], s2: list[dict], optimal: dict[int, int], random_weights: bool,
             draws: list[dict]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = run_dir / "figures"
    figdir.mkdir(exist_ok=True)
    note = " (random weights: not a result)" if random_weights else ""
    by_size = _agg([r for r in s2 if r["size"] > 0], "size")
    return [_fig2a(plt, figdir, note, optimal, draws), _fig2b(plt, figdir, note, by_size, draws),
            _fig3(plt, figdir, note, optimal, by_size), _fig_sweep(plt, figdir, note, trials)]


def _fig2a(plt, figdir: Path, note: str, optimal: dict[int, int], draws: list[dict]) -> str:
    """Bridge size -> optimal frozen layers: every (draw, stage-1 seed) and their mean."""
    sizes = sorted(optimal)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    pts = [(size, f) for d in draws for (size, _), f in d["optimal"].items()]
    if len(pts) > len(sizes):
        jitter = np.exp(np.random.default_rng(0).uniform(-0.04, 0.04, len(pts)))  # multiplicative: log axis
        ax.scatter(np.array([p[0] for p in pts]) * jitter, [p[1] for p in pts], s=12, alpha=0.5, color="tab:blue",
                   label=f"each draw x seed ({len(pts)})")
    mean_depth = [np.mean([f for s2_, f in pts if s2_ == s]) for s in sizes]
    ax.plot(sizes, mean_depth, "o-", color="tab:blue", label="this run (mean)")
    paper = sorted(PAPER_FROZEN.items())
    ax.plot(*zip(*paper), "s--", color="tab:gray", mfc="none", lw=0.8, label="paper (stated or implied)")
    return _save_size_figure(plt, fig, ax, "optimal number of frozen layers", "Fig. 2a - stage 1" + note,
                             figdir, "fig2a_frozen_vs_size.png")


def _fig2b(plt, figdir: Path, note: str, by_size: dict[int, list[dict]], draws: list[dict]) -> str:
    """Bridge size -> stage-2 accuracy: every unit, the mean with a t-interval over units (Wilson for a
    single unit), the control, the majority baseline and the paper's band."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    s_sizes = sorted(by_size)
    if s_sizes:
        units = {s: _unit_accuracy(draws, s) for s in s_sizes}
        acc = np.array([np.mean(units[s]) for s in s_sizes])
        ivs = [t_interval(units[s]) or (np.mean([r["ci_low"] for r in by_size[s]]), np.mean([r["ci_high"] for r in by_size[s]]))
               for s in s_sizes]
        lo, hi = np.array([iv[0] for iv in ivs]), np.array([iv[1] for iv in ivs])
        many = any(len(units[s]) > 1 for s in s_sizes)
        ax.errorbar(s_sizes, acc * 100, yerr=[(acc - lo) * 100, (hi - acc) * 100], fmt="o-", capsize=4,
                    label="via bridge, mean (95% " + ("t-interval over draws x seeds)" if many else "Wilson, one run)"))
        if many:
            ax.scatter([s for s in s_sizes for _ in units[s]], [100 * v for s in s_sizes for v in units[s]],
                       s=10, alpha=0.5, color="tab:blue")
    ax.axhspan(100 * PAPER_BAND[0], 100 * PAPER_BAND[1], color="tab:gray", alpha=0.15, label=f"paper's range, rounded ({100 * PAPER_BAND[0]:g}-{100 * PAPER_BAND[1]:g}%)")
    if PAPER_ACCURACY:
        ax.plot(*zip(*[(k, 100 * v) for k, v in sorted(PAPER_ACCURACY.items())]), "s", color="tab:gray", mfc="none",
                label="paper (40k best, 60k lowest)")
    control = _unit_accuracy(draws, 0)
    if control:
        c = np.mean(control) * 100
        ax.axhline(c, color="tab:red", ls="--", lw=1, label=f"control, no bridge ({c:.1f}%)")
    majority = [r["majority_baseline"] for d in draws for r in d["stage2"] if r.get("majority_baseline") is not None]
    if majority:
        ax.axhline(100 * np.mean(majority), color="black", ls=":", lw=1, label=f"majority class ({100 * np.mean(majority):.1f}%)")
    return _save_size_figure(plt, fig, ax, "target test accuracy (%)", "Fig. 2b - stage 2" + note,
                             figdir, "fig2b_accuracy_vs_size.png")


def _fig3(plt, figdir: Path, note: str, optimal: dict[int, int], by_size: dict[int, list[dict]]) -> str:
    """Heatmap: size x optimal frozen -> stage-2 accuracy."""
    s_sizes = sorted(by_size)
    depths = sorted({optimal[s] for s in s_sizes if s in optimal})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    if s_sizes and depths:
        grid = np.full((len(depths), len(s_sizes)), np.nan)
        for j, s in enumerate(s_sizes):
            if s in optimal:
                grid[depths.index(optimal[s]), j] = np.mean([r["accuracy"] for r in by_size[s]]) * 100
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(s_sizes)), [str(s) for s in s_sizes], rotation=45)
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        fig.colorbar(im, ax=ax, label="stage-2 test accuracy (%)")
    ax.set_xlabel("bridge dataset size")
    ax.set_ylabel("optimal frozen layers")
    ax.set_title("Fig. 3 - size x frozen -> stage-2 accuracy" + note, fontsize=10)
    return _save_plain_figure(plt, fig, figdir, "fig3_heatmap.png")


def _fig_sweep(plt, figdir: Path, note: str, trials: list[dict]) -> str:
    """Validation accuracy against frozen depth, one line per size."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    for size, rs in sorted(_agg(trials, "size").items()):
        pts = sorted((r["frozen"], r["val_accuracy"]) for r in rs)
        ax.plot([p[0] for p in pts], [p[1] * 100 for p in pts], "o-", ms=3, label=str(size))
    ax.invert_xaxis()
    ax.set_xlabel("frozen layers (unfreezing goes right)")
    ax.set_ylabel("stage-1 validation accuracy (%)")
    ax.set_title("Stage-1 sweep per bridge size" + note, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="size", fontsize=7)
    return _save_plain_figure(plt, fig, figdir, "sweep_val_accuracy.png")


def _save_plain_figure(plt, fig, figdir: Path, name: str) -> str:
    fig.tight_layout()
    save_figure(fig, figdir / name)
    plt.close(fig)
    return f"figures/{name}"


def _mean(records: list[dict], key: str):
    vals = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _pct(v) -> str:
    return percent(v, unit="")  # the column header says %


def _rate(r: dict, key: str) -> str:
    return percent_with_ci(r.get(key), r.get(f"{key}_ci95"))


def _operating_point_section(d: dict | None) -> list[str]:
    """Threshold, validation and test rates at it, calibration before and after (the paper reports
    accuracy only, so claims.json has nothing of this)."""
    L = ["## Operating point", ""]
    if not d:
        return L + ["None chosen (this run has no target validation split): the deployed model decides at 0.5. "
                    "`mstl-train operating-point RUN_DIR` chooses one on a run that has one. The paper reports "
                    "accuracy only.", ""]
    L += [f"Target `{d['target']}` for the positive class `{d['positive_class']}`, chosen on the {d['chosen_on']}: "
          f"threshold **{d['threshold']:.4f}** on its probability after temperature scaling (T = "
          f"{d['temperature']:.3f}, fitted by NLL on the same images). The test split never chose anything.", "",
          "| split | threshold | sensitivity (95% CI) | specificity (95% CI) |", "|---|---|---|---|",
          f"| validation | {d['threshold']:.4f} | {_rate(d['validation'], 'sensitivity')} | "
          f"{_rate(d['validation'], 'specificity')} |"]
    if "test" in d:
        L += [f"| test | {d['threshold']:.4f} | {_rate(d['test'], 'sensitivity')} | {_rate(d['test'], 'specificity')} |",
              f"| test, argmax at 0.5 (before) | 0.5 | {_rate(d['test_at_0.5'], 'sensitivity')} | "
              f"{_rate(d['test_at_0.5'], 'specificity')} |"]
        c = d["calibration_test"]
        L += ["", f"Calibration on the test split ({c['ece_bins']} bins): ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}, "
              f"Brier {c['brier_before']:.3f} -> {c['brier_after']:.3f}.{_ece_floor(c)} Figures: `figures/reliability.png`, "
              "`figures/roc.png` (the operating point marked).", "",
              "![reliability](figures/reliability.png) ![roc](figures/roc.png)"]
    L += ["", "The paper reports accuracy only; claims.json tests nothing of this.", ""]
    return L


def _ece_floor(c: dict) -> str:
    """What the ECE can say at this test size (runs fitted before the floor was computed have none)."""
    f = c.get("ece_if_calibrated")
    if not f:
        return ""
    verdict = ("no more than sampling alone gives a calibrated model (this test split cannot tell a smaller "
               "ECE apart)" if c["ece_after"] <= f["ci95"][1] else "above what sampling alone explains")
    return (f" A perfectly calibrated model would show an ECE of {f['median']:.3f} (95% of draws "
            f"{f['ci95'][0]:.3f}-{f['ci95'][1]:.3f}) on these {f['images']} images: {c['ece_after']:.3f} after "
            f"scaling is {verdict}.")


def build_report(run_dir: str | Path) -> Path:
    store = RunDir(run_dir)
    cfg = run_config(store.dir)
    trials = store.trials()
    s2 = store.stage2_records()
    if not trials:
        raise ValueError(f"{run_dir}: no stage-1 trials recorded yet; run `mstl-train stage1` first")
    seeds1 = sorted({r["seed"] for r in trials})
    optimal = {size: optimal_record(rs)["frozen"]
               for size, rs in _agg([r for r in trials if r["seed"] == seeds1[0]], "size").items()}
    random_weights = cfg.model.weights == "none"
    draws = collect_draws(store)
    progress = study_progress(store)
    figs = _figures(store.dir, trials, s2, optimal, random_weights, draws)
    claims = _write_claims(store, draws if s2 else [], progress)
    _write_trials_csv(store, trials)
    selection = read_selection(store.dir)
    L = [f"# mstl run report: `{store.dir.name}`", ""] + _banners(progress, random_weights)
    L += _claims_section(claims, draws, progress) + _departures_section(cfg)
    L += _settings_lines(store, cfg, trials, draws) + _stage1_section(cfg, trials, optimal, seeds1[0])
    L += _stage2_section(draws)
    if selection:
        L += _selection_section(selection)
    L += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figs] + ["", "All trials: `trials.csv`."]
    out = store.dir / REPORT
    atomic_write_text(out, "\n".join(L) + "\n")
    return out


def _write_claims(store: RunDir, draws: list[dict], progress: dict) -> list[dict]:
    """claims.json from every draw; a partial run's claims say so in the file itself, not only in
    report.md; no stage-2 record (yet): an older claims.json would describe results the records no
    longer hold, so it goes."""
    claims = evaluate(draws) if draws else []
    for c in claims:
        c["complete"] = progress["complete"]
        if progress["summary"]:
            c["incomplete"] = progress["summary"]
    if claims:
        store.write_json(CLAIMS, claims)
    else:
        (store.dir / CLAIMS).unlink(missing_ok=True)
    return claims


TRIAL_FIELDS = ["size", "frozen", "seed", "mode", "val_accuracy", "val_loss", "train_accuracy", "train_loss",
                "epochs", "best_epoch", "trainable_params", "n_train", "n_val", "seconds"]


def _write_trials_csv(store: RunDir, trials: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TRIAL_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in sorted(trials, key=lambda r: (r["size"], r["seed"], -r["frozen"])):
        w.writerow(r)
    atomic_write_text(store.dir / TRIALS_CSV, buf.getvalue())


def _banners(progress: dict, random_weights: bool) -> list[str]:
    L = []
    if progress["summary"]:
        L += [f"> **Incomplete run - {progress['summary']}.** Every figure, table and verdict below is provisional: "
              "it covers the records so far. Finish the run (rerun `mstl-train full` with the same flags, or "
              "`mstl-train stage1` / `stage2` on this run dir), then `mstl-train report`.", ""]
    if random_weights:
        L += ["> **Random base weights (`--weights none`).** Frozen random features make the depth sweep and the "
              "transfer comparison meaningless: these numbers exercise the pipeline and are not results.", ""]
    return L


def _claims_section(claims: list[dict], draws: list[dict], progress: dict) -> list[str]:
    if not claims:
        return []
    L = ["## Claims of the paper, tested on this run", "",
         "| claim | paper | this run | test | p | 95% interval | verdict |", "|---|---|---|---|---|---|---|"]
    provisional = "" if progress["complete"] else " - provisional, the run is incomplete"
    for c in claims:
        iv = c["interval"]
        p_txt = "-" if c["p_value"] is None else f"{c['p_value']:.3g}"
        iv_txt = "-" if iv is None else f"[{iv[0]:.4f}, {iv[1]:.4f}]"
        note = f" ({c['note']})" if c.get("note") else ""
        L.append(f"| {c['claim']} | {c['paper']} | {observed_text(c['observed'])} | {c['test']} | {p_txt} | {iv_txt} | "
                 f"**{c['verdict']}**{provisional}{note} |")
    return L + ["", f"Data draws: {len(draws)}; claims.json has every entry. 'inconclusive' means the test could not "
                "decide at the 5% level - not that there is no effect.", ""]


def _departures_section(cfg) -> list[str]:
    departures = departures_from_paper(cfg)
    L = ["## Where this run departs from the paper as written", ""]
    if departures:
        L += ["| setting | paper | this run | the paper's basis |", "|---|---|---|---|"]
        L += [f"| `{d['setting']}` | {d['paper']} | {d['this_run']} | {d['paper_basis']} |" for d in departures]
    else:
        L.append("Nowhere: every setting the paper states, or that the `paper` preset reads literally, is the paper's.")
    return L + [""]


def _settings_lines(store: RunDir, cfg, trials: list[dict], draws: list[dict]) -> list[str]:
    return [f"- preset `{cfg.preset}`, config hash `{store.config_hash()}`, weights `{cfg.model.weights}`, "
            f"alpha {cfg.model.alpha}, image {cfg.data.image_size} px ({cfg.data.resize_method}), "
            f"scaling `{cfg.data.scaling}`, BatchNorm `{cfg.model.bn_mode}`, sweep mode `{cfg.stage1.mode}`",
            f"- bridge `{cfg.bridge or 'embedded demo OCT-like data'}`; target `{cfg.target or 'embedded demo X-ray-like data'}`",
            f"- stage 1: start {cfg.stage1.start_frozen} frozen, step {cfg.stage1.unfreeze_step}, floor "
            f"{cfg.stage1.min_frozen}, patience {cfg.stage1.patience}, up to {cfg.stage1.epochs} epochs per depth "
            f"(early stopping on val loss), lr {cfg.stage1.learning_rate}, batch {cfg.stage1.batch_size}",
            f"- stage 2: batch {cfg.stage2.batch_size}, up to {cfg.stage2.max_epochs} epochs, stop at training "
            f"accuracy {cfg.stage2.stop_train_accuracy}, lr {cfg.stage2.learning_rate}; seeds {list(cfg.seeds)}",
            _training_time(trials, draws), ""]


def _stage1_section(cfg, trials: list[dict], optimal: dict[int, int], seed: int) -> list[str]:
    from ..sweep import next_depth, sweep_grid
    grid = sweep_grid(cfg)
    L = ["## Stage 1: optimal frozen depth per bridge size (Fig. 2a)", "",
         "| size | optimal frozen | val acc % | depths tried | paper's optimal frozen |", "|---|---|---|---|---|"]
    for size in sorted(optimal):
        rs = [r for r in trials if r["size"] == size and r["seed"] == seed]
        b = optimal_record(rs)
        unfinished = next_depth(grid, {r["frozen"]: r for r in rs}, cfg.stage1.patience) is not None
        tried = f"{len(rs)} (sweep unfinished)" if unfinished else str(len(rs))
        L.append(f"| {size} | {b['frozen']}{' so far' if unfinished else ''} | {_pct(b['val_accuracy'])} | {tried} | "
                 f"{PAPER_FROZEN.get(size, 'n/r')} |")
    return L


def _stage2_section(draws: list[dict]) -> list[str]:
    L = ["", "## Stage 2: target test accuracy per bridge size (Fig. 2b)", "",
         "| size | frozen | units | test acc % (mean) | 95% CI | balanced acc % | majority class % | sens % | spec % | "
         "ROC AUC | val acc % | epochs | paper's acc % |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, rs in sorted(_agg([r for d in draws for r in d["stage2"]], "size").items()):
        L.append(_stage2_row(size, rs))
    return L + ["", "n/r: the paper's text reports no figure for this size. The paper's range is 69.25% (60k) to 74.5% (40k).",
                "Units are (data draw, training seed) pairs; with several, the interval is a t-interval over them, with one "
                "it is that run's Wilson interval. Compare intervals, not point values; the Claims section tests them.", ""]


def _stage2_row(size: int, rs: list[dict]) -> str:
    accs = [r["accuracy"] for r in rs]
    acc = np.mean(accs)
    spread = f" ± {100 * np.std(accs, ddof=1):.1f}" if len(rs) > 1 else ""
    # a t-interval over (draw, seed) units; one unit: that run's Wilson interval
    lo, hi = t_interval(accs) or (rs[0]["ci_low"], rs[0]["ci_high"])
    aucs = [r["roc_auc"] for r in rs if r.get("roc_auc") is not None]
    auc = f"{np.mean(aucs):.3f}" if aucs else "-"
    name = "control (no bridge)" if size == 0 else str(size)
    frozen = rs[0].get("stage1_frozen", "-") if size else "all"
    paper = PAPER_ACCURACY.get(size)
    return (f"| {name} | {frozen} | {len(rs)} | {100 * acc:.1f}{spread} | [{100 * lo:.1f}, {100 * hi:.1f}] | "
            f"{_pct(_mean(rs, 'balanced_accuracy'))} | {_pct(_mean(rs, 'majority_baseline'))} | "
            f"{_pct(_mean(rs, 'sensitivity'))} | {_pct(_mean(rs, 'specificity'))} | {auc} | "
            f"{_pct(_mean(rs, 'val_accuracy'))} | {_mean(rs, 'epochs'):.0f} | {_pct(paper) if paper else 'n/r'} |")


def _selection_section(selection: dict) -> list[str]:
    L = ["## Model chosen for deployment", "",
         f"Size {selection['size']}, seed {selection['seed']} (`{selection.get('model')}`): {selection['why']}."]
    if selection.get("warning"):
        L.append(f"**Note:** {selection['warning']}.")
    L += ["Whether the bridge beats the control is the third claim above: read its verdict, not this choice.", ""]
    return L + _operating_point_section(selection.get("decision"))
