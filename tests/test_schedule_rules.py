"""The frozen-depth sweep's rules (train/schedule.py): the depth grid a config sweeps, how two trials
compare, where a chain stops and which depth is optimal, the order the parallel scheduler launches,
commits and cancels trials in, and the timings ``mstl-train plan`` simulates. Pure Python, no training."""

from dataclasses import replace

import pytest

from mstl.config import preset
from mstl.sweep import compare, depth_grid, next_depth, optimal_record, sweep_grid, walk
from mstl.train.schedule import Scheduler, simulate

K = (1, 24)  # one (seed, size) chain


def acc(a, **kw):
    return {"val_accuracy": a, **kw}


def img(correct, n_val=60, **kw):
    return {"val_accuracy": correct / n_val, "n_val": n_val, **kw}


# --- the depth grid -------------------------------------------------------------------------------------

def test_the_grid_walks_down_by_the_step_to_the_floor_inclusive():
    assert depth_grid(140, 120, 10, 154, False) == [140, 130, 120]
    assert depth_grid(20, 0, 10, 154, False) == [20, 10, 0]  # down to a fully trainable network
    assert depth_grid(140, 125, 10, 154, False) == [140, 130]  # a floor between steps is not passed
    assert depth_grid(120, 120, 10, 154, False) == [120]


def test_a_start_beyond_the_network_is_its_layer_count_and_head_only_comes_first_once():
    assert depth_grid(200, 140, 5, 154, False) == [154, 149, 144]
    assert depth_grid(140, 120, 10, 154, True) == [154, 140, 130, 120]
    assert depth_grid(154, 144, 10, 154, True) == [154, 144]  # already the first depth: not twice


def test_a_configs_grid_comes_from_its_stage1_settings_and_its_base_network():
    cfg = preset("smoke")  # start 140, step 20, floor 120 on MobileNetV2 (154 layers)
    assert sweep_grid(cfg) == [140, 120]
    head = replace(cfg, stage1=replace(cfg.stage1, include_head_only=True, unfreeze_step=10))
    assert sweep_grid(head) == [154, 140, 130, 120]


# --- comparing two trials -------------------------------------------------------------------------------

def test_records_without_a_common_validation_size_compare_their_accuracies_exactly():
    outcome, diff = compare(acc(0.51), acc(0.5))  # an older run dir: no n_val
    assert outcome == "better" and diff == pytest.approx(0.01)
    outcome, diff = compare(acc(0.5), acc(0.9))
    assert outcome == "worse" and diff == pytest.approx(-0.4)
    assert compare(acc(0.7), acc(0.7)) == ("tie", 0.0)
    # 51 of 100 against 30 of 60: not comparable as image counts, so no one-image margin either
    outcome, diff = compare(img(51, 100), img(30, 60))
    assert outcome == "better" and diff == pytest.approx(0.01)
    outcome, diff = compare(img(31, 60), acc(0.5))
    assert outcome == "better" and diff == pytest.approx(1 / 60)


def test_image_counts_are_rounded_not_truncated():
    # 0.29 * 100 is 28.999999999999996 in floats: 29 images, one more than 28, a tie
    assert compare(acc(0.29, n_val=100), acc(0.28, n_val=100)) == ("tie", 1)
    assert compare(acc(0.30, n_val=100), acc(0.28, n_val=100)) == ("better", 2)


# --- where a chain stops, and its optimal depth ----------------------------------------------------------

GRID = [150, 140, 130, 120, 110]


def test_the_next_depth_is_the_first_not_yet_run_until_patience_runs_out():
    assert next_depth(GRID, {}, patience=2) == 150
    assert next_depth(GRID, {150: img(30), 130: img(40)}, patience=2) == 140  # a gap (a resumed run) first
    done = {150: img(30), 140: img(29), 130: img(31)}  # a tie and a tie: two depths without a better one
    assert next_depth(GRID, done, patience=2) is None
    assert next_depth(GRID, done, patience=3) == 120
    nxt, best = walk(GRID, done, patience=3)
    assert nxt == 120 and best["val_accuracy"] == 30 / 60  # the ties moved neither the best nor the stop


def test_a_better_depth_resets_the_patience_and_the_floor_ends_the_chain():
    done = {150: img(30), 140: img(29), 130: img(33), 120: img(32)}
    assert next_depth(GRID, done, patience=2) == 110  # 130 was better: one depth without since
    done[110] = img(40)
    nxt, best = walk(GRID, done, patience=2)
    assert nxt is None and best is done[110]  # the floor: nothing left, 110 the best


def test_the_optimal_depth_does_not_depend_on_the_order_records_come_in():
    records = [img(35, frozen=120), img(30, frozen=150), img(34, frozen=130), img(31, frozen=140)]
    assert optimal_record(records)["frozen"] == 130  # 140 ties 150, 130 is better, 120 ties 130
    assert optimal_record(records[::-1])["frozen"] == 130
    with pytest.raises(ValueError, match="^no stage-1 records to choose from$"):
        optimal_record([])


# --- the parallel scheduler --------------------------------------------------------------------------------

def test_larger_sizes_launch_first_then_lower_seeds_and_wanted_depths_before_look_ahead():
    grid = [150, 140, 130]
    sched = Scheduler({(2, 100): grid, (1, 100): grid, (1, 400): grid}, {}, patience=1, lookahead=1)
    assert sched.launches(10) == [((1, 400), 150), ((1, 100), 150), ((2, 100), 150),
                                  ((1, 400), 140), ((1, 100), 140), ((2, 100), 140)]
    assert sched.launched == sched.running == 6 and sched.launches(10) == []


def test_launches_never_exceed_the_free_workers():
    sched = Scheduler({K: GRID}, {}, patience=1, lookahead=3)
    assert sched.launches(0) == []
    assert sched.launches(2) == [(K, 150), (K, 140)]
    assert sched.launches(1) == [(K, 130)]
    assert sched.launched == 3


def test_restart_mode_is_the_default_and_a_look_ahead_of_zero_or_less_runs_only_the_wanted_depth():
    assert Scheduler({K: GRID}, {}, patience=1, lookahead=1).launches(8) == [(K, 150), (K, 140)]
    for none in (0, -1):
        assert Scheduler({K: GRID}, {}, patience=1, lookahead=none).launches(8) == [(K, 150)]


def test_results_ahead_of_their_turn_wait_and_are_committed_in_grid_order():
    sched = Scheduler({K: GRID}, {}, patience=1, lookahead=2)
    assert sched.launches(3) == [(K, 150), (K, 140), (K, 130)]
    sched.done(K, 140, acc(0.8))
    assert sched.commits() == [] and sched.launches(3) == []  # 140 is held, not run again
    sched.done(K, 150, acc(0.7))
    assert sched.commits() == [(K, 150, acc(0.7)), (K, 140, acc(0.8))]
    assert sched.commits() == [] and sched.cancels() == []  # each reported once
    assert sched.launches(3) == [(K, 120), (K, 110)] and sched.running == 3  # 130 runs; 120, 110 now in reach


def test_a_stop_cancels_the_look_ahead_still_running_and_counts_it_wasted():
    sched = Scheduler({K: GRID}, {}, patience=1, lookahead=3)
    sched.launches(4)  # 150, 140, 130, 120
    sched.done(K, 150, acc(0.9))
    sched.done(K, 140, acc(0.5))  # worse, patience 1: the chain stops here
    assert [d for _, d, _ in sched.commits()] == [150, 140]
    assert sorted(sched.cancels()) == [(K, 120), (K, 130)]
    assert sched.finished and sched.running == 0 and sched.wasted == 2 and sched.launched == 4
    sched.done(K, 130, acc(1.0))  # a cancelled trial that still reports: it counts for nothing
    assert sched.commits() == [] and sched.wasted == 2 and sched.launches(4) == []


def test_a_held_result_past_the_stop_is_dropped_as_waste():
    sched = Scheduler({K: GRID}, {}, patience=1, lookahead=2)
    sched.launches(3)  # 150, 140, 130
    sched.done(K, 130, acc(0.99))
    sched.done(K, 140, acc(0.5))
    sched.done(K, 150, acc(0.9))  # 150 then 140 (worse): stop; 130 was never asked for
    assert [d for _, d, _ in sched.commits()] == [150, 140]
    assert sched.cancels() == [] and sched.wasted == 1 and sched.finished


def test_a_failed_trial_is_launched_again():
    sched = Scheduler({K: GRID}, {}, patience=1, lookahead=0)
    assert sched.launches(1) == [(K, 150)]
    sched.failed(K, 150)
    assert sched.running == 0 and sched.launched == 0
    assert sched.launches(1) == [(K, 150)] and sched.launched == 1


def test_resuming_a_finished_chain_runs_nothing_and_recommits_nothing():
    done = {150: acc(0.9), 140: acc(0.5)}
    sched = Scheduler({K: GRID, (1, 48): GRID}, {K: done}, patience=1, lookahead=1)
    assert sched.launches(8) == [((1, 48), 150), ((1, 48), 140)]  # only the chain not yet swept
    assert sched.commits() == [] and sched.wasted == 0
    assert Scheduler({K: GRID}, {K: done}, patience=1).finished


# --- the simulation mstl-train plan prints -----------------------------------------------------------------

def test_a_serial_simulation_adds_up_the_trials_and_stage2_packs_longest_first():
    records = {K: {150: acc(0.5), 140: acc(0.7), 130: acc(0.6)}}
    out = simulate({K: GRID}, records, lambda k, d: d / 10, 1, patience=1, lookahead=0,
                   stage2_seconds=[5, 4, 3, 3, 1])
    # 150, 140 (better), 130 (worse: stop) one after another; stage 2's five trials on one worker
    assert out == {"workers": 1, "sweep_s": 15 + 14 + 13, "stage2_s": 16.0, "wall_s": 42 + 16.0,
                   "trials": 3, "launched": 3, "wasted": 0}
    two = simulate({K: GRID}, records, lambda k, d: d / 10, 2, patience=1, lookahead=0,
                   stage2_seconds=[5, 4, 3, 3, 1])
    assert two["sweep_s"] == 42 and two["stage2_s"] == 8.0  # 5+3 | 4+3+1, the longest-first packing
    assert simulate({K: GRID}, records, lambda k, d: 1.0, 2, patience=1, lookahead=0)["stage2_s"] == 0.0


def test_continue_mode_and_a_zero_look_ahead_simulate_no_speculation():
    records = {K: {d: acc(0.5 + d / 1000) for d in GRID}}  # each depth a little worse than the last
    for kw in ({"continue_mode": True, "lookahead": 3}, {"lookahead": 0}):
        out = simulate({K: GRID}, records, lambda k, d: 10.0, 4, patience=2, **kw)
        assert (out["trials"], out["launched"], out["wasted"], out["sweep_s"]) == (3, 3, 0, 30.0)
    spec = simulate({K: GRID}, records, lambda k, d: 10.0, 4, patience=2, lookahead=3)
    # 150..120 at once, 110 on the worker 150 frees; 130's stop cancels 120 and 110
    assert (spec["trials"], spec["launched"], spec["wasted"], spec["sweep_s"]) == (3, 5, 2, 10.0)


def test_a_cancelled_trial_frees_its_worker_for_another_chain_at_once_and_only_its_worker():
    a, b = (1, 400), (1, 100)
    grids = {a: [150, 140, 130], b: [150, 140, 130, 120]}
    records = {a: {150: acc(0.9), 140: acc(0.5), 130: acc(0.5)}, b: {d: acc(0.5 + (150 - d) / 100) for d in grids[b]}}
    secs = {(a, 150): 10, (a, 140): 15, (a, 130): 100, **{(b, d): 20 for d in grids[b]}}
    out = simulate(grids, records, lambda k, d: secs[(k, d)], 3, patience=1, lookahead=3)
    # t=0: a150, b150, a140; t=10: a130 (look-ahead); t=15: a140 is worse, a stops, a130 is cancelled and
    # its worker and a140's run b140 and b130 (15 -> 35) - two workers, so b120 waits for b150's (20 -> 40).
    # The sweep ends at 40: not at a130's 110, and not at 35 as a fourth worker would make it
    assert out["sweep_s"] == 40.0
    assert (out["trials"], out["launched"], out["wasted"]) == (6, 7, 1)


def test_results_committed_together_fill_every_free_worker():
    records = {K: {d: acc(0.5 + (150 - d) / 100) for d in GRID}}  # every depth better: no stop
    secs = {150: 30, 140: 10, 130: 10, 120: 10, 110: 10}
    out = simulate({K: GRID}, records, lambda k, d: secs[d], 3, patience=1, lookahead=2)
    # t=0: 150, 140, 130; 140 and 130 end first and wait; at 30 all three commit and 120, 110 start
    # on the two free workers together
    assert out["sweep_s"] == 40.0 and (out["trials"], out["launched"], out["wasted"]) == (5, 5, 0)


def test_trials_that_end_together_are_handled_in_launch_order_as_the_ray_driver_does():
    """ray.wait keeps the order of the trials it is given (the driver's, launch order): the first to be
    handled of 150, 140, 130 ending at once is 150, whose commit sends look-ahead out that 130's tie
    then cancels."""
    records = {K: {150: acc(0.7), 140: acc(0.9), 130: acc(0.9), 120: acc(0.7), 110: acc(0.9)}}
    out = simulate({K: GRID}, records, lambda k, d: 10.0, 4, patience=1, lookahead=2)
    assert out["sweep_s"] == 10.0 and (out["trials"], out["launched"], out["wasted"]) == (3, 5, 2)


def test_depths_the_measured_run_never_reached_count_as_worse():
    """plan --from-run has records only for the trials the run made; another chain or a deeper depth
    that only look-ahead reaches must not look better than what was measured."""
    records = {K: {150: acc(0.9)}}  # (1, 48) not in the run at all
    out = simulate({K: GRID, (1, 48): [150, 140]}, records, lambda k, d: 10.0, 1, patience=1, lookahead=0)
    # K: 150, then 140 (unmeasured: worse) stops; (1, 48): 150, then 140 ties it and stops
    assert out["trials"] == 4 and out["sweep_s"] == 40.0
