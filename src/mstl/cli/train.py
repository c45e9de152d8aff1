"""mstl-train: inspect data, run the two-stage study, regenerate its report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..config import PRESETS, RunConfig, apply_settings, override, preset
from ..edge.core.decision import DEFAULT_RULE
from ..edge.core.progress import say, warn
from .common import UserError, check_at_least, friendly, parse_ints

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reproduce the two-stage MobileNetV2 transfer-learning study on any bridge/target pair.")

RUNS_ROOT = Path("runs")


@app.command()
@friendly
def inspect(path: Path = typer.Argument(..., help="dataset folder or MedMNIST .npz"),
            as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")):
    """Decode every file of a dataset source and report its layout, classes, splits and unreadable files."""
    from ..data.inspect import inspect_source

    _, info = inspect_source(path, quiet=quiet or as_json)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    say(f"{info['path']}: layout {info['layout']}, {info['total']} readable images")
    for split, counts in info["splits"].items():
        say(f"  {split:<6} " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    p = info["patients"]
    say(f"  patient ids: {'detected' if p['detected'] else 'not detected'} ({p['unique']} patients, "
        f"{p['images_with_id']} images with an id)")
    if info["ignored_masks"]:
        say(f"  segmentation masks ignored: {info['ignored_masks']}")
    sk = info["skipped"]
    say(f"  skipped: {sk['count']}")
    for f in sk["files"][:10]:
        say(f"    {f['path']}: {f['reason']}")
    if sk["count"] > 10:
        say(f"    ... and {sk['count'] - 10} more (--json lists all)")


def _weights_default(cfg: RunConfig, weights: Optional[str]) -> RunConfig:
    from dataclasses import replace

    chosen = weights or os.environ.get("MSTL_WEIGHTS")
    if chosen and chosen not in ("imagenet", "none"):
        chosen = str(Path(chosen).expanduser().resolve())
    if chosen:
        return replace(cfg, model=replace(cfg.model, weights=chosen))
    if cfg.preset == "demo":
        from ..model import WeightsError, build_base
        from ..train.run import fix_threads
        fix_threads(cfg)  # the check below builds a model: TensorFlow's threads are fixed from then on
        try:
            build_base(cfg.data.image_size, cfg.model.alpha, "imagenet")
        except WeightsError:
            warn("ImageNet weights cannot be had here (no Keras cache, no network, no --weights FILE, no "
                 "MSTL_WEIGHTS): the demo falls back to RANDOM weights. Pass --weights FILE (or make demo "
                 "WEIGHTS=FILE) for real pretrained features.")
            return replace(cfg, model=replace(cfg.model, weights="none"))
    return cfg


def _config_from_options(o: dict) -> RunConfig:
    cfg = preset(o["preset"])
    cfg = override(
        cfg,
        bridge=o["bridge"] and str(Path(o["bridge"]).resolve()),
        target=o["target"] and str(Path(o["target"]).resolve()),
        seeds=parse_ints(o["seeds"], "--seeds"),
        data_seeds=parse_ints(o["data_seeds"], "--data-seeds"),
        data_seed=(parse_ints(o["data_seeds"], "--data-seeds") or (None,))[0],
        **{
            "stage1.sizes": parse_ints(o["sizes"], "--sizes"),
            "stage1.start_frozen": o["start_frozen"], "stage1.min_frozen": o["min_frozen"],
            "stage1.unfreeze_step": o["unfreeze_step"], "stage1.patience": o["patience"],
            "stage1.mode": o["mode"], "stage1.epochs": o["epochs"], "stage1.learning_rate": o["lr"],
            "stage1.batch_size": o["batch_size"], "stage1.include_head_only": o["head_only"] or None,
            "stage2.positive_class": o["positive_class"], "stage2.target_size": o["target_size"],
            "stage2.max_epochs": o["stage2_epochs"], "stage2.stop_train_accuracy": o["stop_accuracy"],
            "data.image_size": o["image_size"], "data.scaling": o["scaling"],
            "data.resize_method": o["resize_method"], "data.patient_split": False if o["no_patient_split"] else None,
            "model.alpha": o["alpha"], "model.bn_mode": o["bn_mode"],
        },
        stage1_seeds=o["stage1_seeds"], mixed_precision=o["mixed_precision"] or None,
        cache=False if o["no_cache"] else None, prefix_cache=o["prefix_cache"], cache_budget_gb=o["cache_budget_gb"],
        trial_threads=o.get("threads_per_trial"),
    )
    cfg = apply_settings(cfg, list(o.get("set_") or []))
    _refuse_repeats(cfg)
    return _weights_default(cfg, o["weights"])


def _refuse_repeats(cfg: RunConfig) -> None:
    """A size or seed given twice would train the same trials twice (and count them as two units in the
    claims): almost always a typo, so it is refused rather than quietly dropped."""
    for flag, values in (("--sizes", cfg.stage1.sizes), ("--seeds", cfg.seeds)):
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise UserError(f"{flag} {','.join(map(str, values))}: {', '.join(map(str, repeated))} given more than "
                            "once; list each value once")


def _pick_run_dir(cfg: RunConfig, data, run_dir: Optional[Path]) -> Path:
    """--run-dir if given; else runs/latest when it holds the same config (so rerunning resumes);
    else a new runs/<preset>-<time>."""
    if run_dir:
        return run_dir
    from ..train.prepare import data_fingerprint
    latest = RUNS_ROOT / "latest"
    cfg_file = latest / "config.json"
    if cfg_file.exists():
        if json.loads(cfg_file.read_text()).get("config_hash") == cfg.config_hash(data_fingerprint(data.bridge, data.target)):
            say(f"resuming {latest.resolve()} (same configuration)")
            return latest.resolve()
    return RUNS_ROOT / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


ENGINE_HELP = "serial (this process) | ray (trials as Ray tasks; needs the ray extra of mstl)"
ADDRESS_HELP = "Ray cluster to join (auto | HOST:PORT); default: a local Ray instance sized to this machine"


def _engine(engine: str, ray_address: Optional[str], trial_cpus: Optional[float], trial_gpus: float, lookahead: int,
            ray_cpus: Optional[int] = None):
    from ..train.trials import EngineOptions
    opts = EngineOptions(engine, ray_address, trial_cpus, trial_gpus, lookahead, ray_cpus).validate()
    if opts.name == "serial" and (ray_address or trial_gpus or ray_cpus):
        warn("--ray-address, --ray-cpus and --trial-gpus apply with --engine ray only: ignored")
    return opts


def _study_flags(
    bridge: Optional[Path] = typer.Option(None, help="bridge dataset (e.g. OCT2017 folder); default: embedded demo"),
    target: Optional[Path] = typer.Option(None, help="target dataset (e.g. COVID-QU-Ex); default: embedded demo"),
    preset_name: str = typer.Option("demo", "--preset", help=f"one of {', '.join(PRESETS)}"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/<preset>-<time>, or runs/latest to resume)"),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | PATH to a .h5 weights file (env MSTL_WEIGHTS)"),
    sizes: Optional[str] = typer.Option(None, help="bridge sizes, e.g. 10000,20000 or 10k,20k"),
    seeds: Optional[str] = typer.Option(None, help="training seeds, e.g. 1,2,3 (stage 2 repeats per seed)"),
    data_seeds: Optional[str] = typer.Option(None, help="data draws to repeat the whole study over, e.g. 0,1,2 "
                                             "(bridge subsets and target splits; the first is the run dir's own, "
                                             "the others go to RUN_DIR/draws/data-seed-<k>)"),
    stage1_seeds: Optional[int] = typer.Option(None, help="how many of the seeds also repeat stage 1 (default 1)"),
    positive_class: Optional[str] = typer.Option(None, help="target class that is positive (default COVID-19)"),
    target_size: Optional[int] = typer.Option(None, help="target images drawn (paper 2800)"),
    start_frozen: Optional[int] = typer.Option(None, help="first frozen depth of the sweep (default: the preset's; 150 for paper/corrected)"),
    min_frozen: Optional[int] = typer.Option(None, help="floor of the sweep"),
    unfreeze_step: Optional[int] = typer.Option(None, help="layers unfrozen per cycle (paper 5)"),
    patience: Optional[int] = typer.Option(None, help="cycles without a better val accuracy before the sweep stops"),
    mode: Optional[str] = typer.Option(None, help="restart (each depth from the pretrained start) | continue"),
    head_only: bool = typer.Option(False, "--head-only", help="also run the head-only trial (every base layer frozen)"),
    epochs: Optional[int] = typer.Option(None, help="max epochs per stage-1 cycle (early stopping on val loss)"),
    lr: Optional[float] = typer.Option(None, help="stage-1 learning rate"),
    batch_size: Optional[int] = typer.Option(None, help="stage-1 batch size"),
    stage2_epochs: Optional[int] = typer.Option(None, help="max stage-2 epochs (paper 25)"),
    stop_accuracy: Optional[float] = typer.Option(None, help="stage 2 stops at this training accuracy (paper 0.85)"),
    image_size: Optional[int] = typer.Option(None, help="input size in pixels (paper 150)"),
    scaling: Optional[str] = typer.Option(None, help="imagenet ([-1,1], default) | unit ([0,1], the paper's)"),
    resize_method: Optional[str] = typer.Option(None, help="bilinear | bicubic | nearest | area | lanczos"),
    alpha: Optional[float] = typer.Option(None, help="width multiplier of the base network (MobileNetV2 alpha)"),
    bn_mode: Optional[str] = typer.Option(None, help="inference (default, Keras guide) | train"),
    no_patient_split: bool = typer.Option(False, "--no-patient-split", help="split by image, not by patient"),
    no_cache: bool = typer.Option(False, "--no-cache", help="plain path: no activation or embedding caches"),
    prefix_cache: Optional[str] = typer.Option(None, help="stage-1 activation cache storage: float32 (exact) | float16"),
    cache_budget_gb: Optional[float] = typer.Option(None, help="largest activation cache (default 8 GB)"),
    threads_per_trial: Optional[int] = typer.Option(None, help="TensorFlow threads of every trial, serial or Ray "
                                                    "(default 1; part of the configuration: a trial's last digits "
                                                    "depend on it)"),
    mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute on GPUs"),
    restart: bool = typer.Option(False, "--restart", help="discard the run dir's results and start over"),
    set_: List[str] = typer.Option([], "--set", help="any configuration value by its dotted name, e.g. "
                                   "--set stage2.learning_rate=0.01 --set model.dropout=0 (repeatable; "
                                   "`mstl-train config --json` lists them)"),
) -> None:
    """The study's flags: `full`, `config` and `plan` take exactly these (typer reads this signature;
    the commands receive the values as keyword arguments)."""


ENGINE_FLAGS = (
    ("engine", str, typer.Option("serial", help=ENGINE_HELP)),
    ("ray_address", Optional[str], typer.Option(None, help=ADDRESS_HELP)),
    ("trial_cpus", Optional[float], typer.Option(None, help="CPUs a Ray trial reserves (default: --threads-per-trial)")),
    ("trial_gpus", float, typer.Option(0.0, help="GPUs per Ray trial (0.5: two trials share a card)")),
    ("lookahead", int, typer.Option(2, help="Ray: depths a size's sweep may run ahead of its stop rule (restart mode)")),
    ("ray_cpus", Optional[int], typer.Option(None, help="CPUs of the local Ray instance (default: all of this machine's)")),
)
ENGINE_KEYS = tuple(name for name, _, _ in ENGINE_FLAGS)


OPERATING_HELP = ("the deployed model's decision threshold, chosen on the target's validation split: sensitivity=S "
                  f"(default {DEFAULT_RULE}), specificity=S, youden or threshold=T")
OPERATING_FLAG = (("operating_point", str, typer.Option(DEFAULT_RULE, "--operating-point", help=OPERATING_HELP)),)


def _full(**o):
    """Stage-1 sweep, stage 2 and report, end to end (resumable: rerun to continue)."""
    t0 = time.monotonic()
    rule = o.pop("operating_point")
    from ..edge.core.decision import parse_rule
    parse_rule(rule)  # a typo fails now, not after the sweep
    eng = _engine(*(o.pop(k) for k in ENGINE_KEYS))
    run_dir, restart = o.pop("run_dir"), o.pop("restart")
    o["preset"] = o.pop("preset_name")
    cfg = _config_from_options(o)
    store, data = _open(cfg, run_dir, restart)
    from ..train.engines import run_stage1, run_stage2
    run_stage1(store, data, eng)
    run_stage2(store, data, eng)
    _run_draws(cfg, store, restart, eng)
    _fit_operating_point(store.dir, rule)
    _finish(store, t0)


def _fit_operating_point(run_dir: Path, rule: str) -> None:
    from ..train.operating import NoValidationSplit, fit
    try:
        fit(run_dir, rule)
    except NoValidationSplit as e:
        say(f"operating point: not chosen - {e}; the deployed model decides at 0.5")


def _operating_point(run_dir: Path = typer.Argument(Path("runs/latest"), help="an existing run dir"),
                     operating_point: str = typer.Option(DEFAULT_RULE, "--operating-point", help=OPERATING_HELP)):
    """Choose (again) the deployed model's decision threshold and temperature on the validation split,
    measure the test split at that threshold, and regenerate the report."""
    from ..edge.core.decision import parse_rule
    from ..report.build import build_report
    from ..train.operating import fit
    parse_rule(operating_point)
    fit(run_dir, operating_point)
    say(f"report: {build_report(run_dir)}")


app.command("operating-point")(friendly(_operating_point))


def _run_draws(cfg: RunConfig, store, restart: bool, eng=None) -> None:
    """The further data draws, each a complete run dir under draws/ (resumable like any other)."""
    from dataclasses import replace
    from ..edge.core.rundir import draw_dir
    for k in cfg.data_seeds[1:]:
        say(f"data draw {k} ({list(cfg.data_seeds).index(k) + 1} of {len(cfg.data_seeds)})")
        sub_store, sub = _open(replace(cfg, data_seed=k, data_seeds=()), draw_dir(store.dir, k),
                               restart, link=False)
        from ..train.engines import run_stage1, run_stage2
        run_stage1(sub_store, sub, eng)
        run_stage2(sub_store, sub, eng)


def _config(**options):
    """Print the fully resolved configuration without running anything (the same flags as `full`)."""
    as_json = options.pop("as_json")
    for unused in ("run_dir", "restart"):
        options.pop(unused, None)
    options["preset"] = options.pop("preset_name")
    cfg = _config_from_options(options).validate()
    resolved = {"preset": cfg.preset, "config": cfg.to_dict()}
    if as_json:
        print(json.dumps(resolved, indent=2))
        return
    for group, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                say(f"{group}.{k} = {v}")
        else:
            say(f"{group} = {values}")


JSON_FLAG = (("as_json", bool, typer.Option(False, "--json", help="print exactly one JSON object on stdout")),)


def _keyword_params(flags: tuple) -> list:
    """(name, type, typer.Option) triples as keyword-only signature parameters."""
    import inspect as _inspect
    return [_inspect.Parameter(name, _inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
            for name, annotation, option in flags]


def _with_flags(fn, extra: tuple = ()):
    """``fn`` taking the study's flags (``_study_flags``) plus ``extra`` ((name, type, typer.Option) each)."""
    import inspect as _inspect
    import typing
    hints = typing.get_type_hints(_study_flags)  # real types, not the strings of `from __future__ import annotations`
    sig = _inspect.signature(_study_flags)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params + _keyword_params(extra), return_annotation=_inspect.Signature.empty)
    return fn


app.command("full")(friendly(_with_flags(_full, ENGINE_FLAGS + OPERATING_FLAG)))
app.command("config")(friendly(_with_flags(_config, JSON_FLAG)))


def _plan(**options):
    """Estimate a sweep before running it: trials, cache sizes and wall time on N workers (a simulation
    of the Ray engine's schedule with measured trial times: --from-run RUN_DIR, else one calibration trial)."""
    from ..train.plan import cache_sizes, plan
    from ..sweep import sweep_grid
    as_json, workers, from_run = options.pop("as_json"), options.pop("workers"), options.pop("from_run")
    lookahead = options.pop("lookahead")
    for unused in ("run_dir", "restart"):
        options.pop(unused, None)
    options["preset"] = options.pop("preset_name")
    if from_run is not None:  # before the configuration, which may look for ImageNet weights
        from ..train.store import RunStore, is_run_dir
        if not is_run_dir(from_run):
            raise ValueError(f"--from-run {from_run}: not an mstl run dir (no config.json written by mstl-train)")
    cfg = _config_from_options(options).validate()
    n_workers = parse_ints(workers, "--workers") or [1, 2, 4, 8]
    if any(w < 1 for w in n_workers):
        raise UserError(f"--workers {workers}: each worker count must be 1 or more")
    check_at_least("--lookahead", lookahead, 0)
    bridge_images = None
    if from_run is not None:
        store = RunStore(from_run)
        trials, stage2 = store.trials(), store.stage2_records()
        if not trials:
            raise ValueError(f"--from-run {from_run}: no stage-1 trial recorded yet; run some, or leave --from-run out "
                             "for a calibration trial")
        source = f"trial times measured in {from_run} ({len(trials)} stage-1, {len(stage2)} stage-2 record(s))"
    else:
        from ..train.plan import calibrate
        trials, stage2, bridge_images, source = calibrate(cfg)
    out = plan(cfg, n_workers, lookahead, trials, stage2, source, 1 - cfg.stage1.val_fraction)
    out["caches"] = cache_sizes(cfg, sweep_grid(cfg), bridge_images)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    say(f"plan for preset {cfg.preset}: {out['chains']} chain(s) x depths {out['grid']}")
    say(f"  trial times: {source}; line through them {out['trial_time_model']['a_s']}s + "
        f"{out['trial_time_model']['b_s_per_train_image'] * 1000:.3f}s per 1,000 training images")
    say(f"  {out['stage2']}")
    c = out["caches"]
    say(f"  caches: decoded images {c['decoded_image_bytes_each'] / 1e3:.0f} kB each "
        f"({c['decoded_largest_size_bytes'] / 1e9:.2f} GB for the largest size"
        + (f", {c['decoded_bridge_bytes'] / 1e9:.2f} GB for the whole bridge" if c["decoded_bridge_bytes"] else "")
        + f"); largest activation cache {c['largest_activation_cache_bytes'] / 1e9:.2f} GB "
        f"(budget {c['activation_cache_budget_bytes'] / 1e9:.0f} GB)")
    for name, rows in out["scenarios"].items():
        say(f"  scenario '{name}':")
        say(f"    {'workers':>7} {'trials':>6} {'launched':>8} {'wasted':>6} {'sweep':>9} {'stage 2':>9} {'wall':>9} {'speedup':>7}")
        for r in rows:
            say(f"    {r['workers']:>7} {r['trials']:>6} {r['launched']:>8} {r['wasted']:>6} {_hms(r['sweep_s']):>9} "
                f"{_hms(r['stage2_s']):>9} {_hms(r['wall_s']):>9} {r['speedup']:>6}x")
    say(f"  ({out['statement']})")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


app.command("plan")(friendly(_with_flags(_plan, JSON_FLAG + (
    ("lookahead", int, typer.Option(2, help="depths a size's sweep may run ahead of its stop rule (restart mode)")),
    ("workers", Optional[str], typer.Option("1,2,4,8", help="worker counts to simulate, e.g. 1,2,4,8")),
    ("from_run", Optional[Path], typer.Option(None, "--from-run", help="a run dir whose measured trial times to use")),
))))


def _open(cfg: RunConfig, run_dir: Optional[Path], restart: bool, link: bool = True):
    from ..train.prepare import data_fingerprint
    from ..train.run import prepare, setup_runtime
    from ..train.store import RunStore, link_latest

    cfg.validate()
    if run_dir is not None:  # before any data is read: a wrong folder fails in a second, not after decoding
        RunStore(run_dir).check_target()
    if cfg.model.weights == "none":
        from ..train.run import RANDOM_WEIGHTS_NOTICE
        warn(RANDOM_WEIGHTS_NOTICE)
    else:
        from ..model import describe_weights
        say(f"weights: {describe_weights(cfg.model.weights)}")
    setup_runtime(cfg)
    data = prepare(cfg)
    chosen = _pick_run_dir(cfg, data, run_dir)
    store = RunStore(chosen)
    store.open(cfg, data_fingerprint(data.bridge, data.target), restart=restart)
    from ..train.prepare import write_split_files
    write_split_files(store.dir, data.target_splits, data.target)
    if link and (chosen.parent.resolve() == RUNS_ROOT.resolve() or run_dir is None):
        link_latest(chosen)
    elif link and (RUNS_ROOT / "latest").exists():
        say(f"note: {RUNS_ROOT / 'latest'} still points at {(RUNS_ROOT / 'latest').resolve()} (this run dir is "
            f"outside {RUNS_ROOT}/): give {chosen} to mstl-export and mstl-bench explicitly")
    say(f"run dir: {chosen}")
    return store, data


def _reopen(run_dir: Path):
    from ..train.store import RunStore
    store = RunStore(run_dir)
    cfg = store.config()
    return _open(cfg, run_dir, restart=False)


def _finish(store, t0: float) -> None:
    from ..report.build import build_report
    report = build_report(store.dir)
    trials = store.trials()
    say("")
    say(f"{'size':>8} {'optimal frozen':>15} {'stage-2 test acc':>17} {'95% CI':>16}")
    best = {}
    from ..sweep import optimal_record
    for size in sorted({r["size"] for r in trials}):
        best[size] = optimal_record([r for r in trials if r["size"] == size])["frozen"]
    for r in sorted(store.stage2_records(), key=lambda r: (r["size"], r["seed"])):
        say(f"{(r['size'] or 'control'):>8} {best.get(r['size'], 'all'):>15} {100 * r['accuracy']:>16.1f}% "
            f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]")
    say(f"{len(trials)} stage-1 trials; wall time {time.monotonic() - t0:.0f}s")
    say(f"report: {report}")


def _with_engine_flags(fn):
    """``fn(run_dir, **engine flags)`` as a command: an existing run dir plus ENGINE_FLAGS."""
    import inspect as _inspect
    run_dir = _inspect.Parameter("run_dir", _inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                                 default=typer.Argument(Path("runs/latest"), help="an existing run dir"))
    fn.__signature__ = _inspect.Signature([run_dir, *_keyword_params(ENGINE_FLAGS)])
    return fn


def _stage1(run_dir: Path, **flags):
    """Run (or resume) the stage-1 sweep of an existing run dir."""
    eng = _engine(*(flags[k] for k in ENGINE_KEYS))
    store, data = _reopen(run_dir)
    from ..train.engines import run_stage1
    run_stage1(store, data, eng)


def _stage2(run_dir: Path, **flags):
    """Run (or resume) stage 2 of an existing run dir, on its stage-1 models."""
    eng = _engine(*(flags[k] for k in ENGINE_KEYS))
    store, data = _reopen(run_dir)
    from ..train.engines import run_stage2
    run_stage2(store, data, eng)


app.command("stage1")(friendly(_with_engine_flags(_stage1)))
app.command("stage2")(friendly(_with_engine_flags(_stage2)))


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(Path("runs/latest"), help="an existing run dir")):
    """Regenerate report.md, trials.csv and the figures from a run dir's records (a run still in progress
    is reported as incomplete, with how many of its trials are done)."""
    from ..report.build import build_report, study_progress
    from ..train.store import RunStore
    out = build_report(run_dir)
    summary = study_progress(RunStore(run_dir))["summary"]
    if summary:
        said = "report.md and claims.json say" if (Path(run_dir) / "claims.json").exists() else "report.md says"
        warn(f"{summary}: {said} so; every figure and verdict is provisional")
    say(f"report: {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
