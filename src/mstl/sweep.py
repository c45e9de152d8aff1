"""A stage-1 sweep's depth grid and its stop rule - pure, no TensorFlow, no Ray: which depth a chain
trains next, when its sweep is over, and which of its records is optimal. Training runs its sweeps by
these rules (train/stage1, train/schedule for the Ray engine's look-ahead) and the report reads the
records back by the same ones."""

from __future__ import annotations


def depth_grid(start_frozen: int, min_frozen: int, step: int, n_layers: int, include_head_only: bool) -> list[int]:
    """Frozen depths in sweep order: start, start - step, ... down to the floor."""
    start = min(start_frozen, n_layers)
    grid = list(range(start, min_frozen - 1, -step))
    if include_head_only and n_layers not in grid:
        grid.insert(0, n_layers)
    return grid


def sweep_grid(cfg) -> list[int]:
    """The depth grid of a run config (its base network's layer count from the registry, no TensorFlow)."""
    from .bases import get_base
    s1 = cfg.stage1
    return depth_grid(s1.start_frozen, s1.min_frozen, s1.unfreeze_step, get_base(cfg.model.base).n_layers,
                      s1.include_head_only)


# Two trials whose validation accuracies differ by at most this many images are tied. Why one: the
# same trial run with another thread count or on another CPU kind (AVX2 vs AVX-512 sum floats in other
# orders) ends with weights that differ in their last digits, and measured that flips at most a single
# borderline validation image (issue 24: 0.7667 vs 0.7833 at 60 images). Without a margin that one
# image decides which depth is optimal and where the sweep stops; with it, a depth replaces the best
# so far only with at least two more images right, and a tie goes to the more frozen depth (the one
# met first in grid order, cheaper to fine-tune and to cache).
TIE_MARGIN_IMAGES = 1


def correct_images(record: dict) -> int:
    """A record's validation accuracy as a count of images (exact: accuracies are k / n_val)."""
    n = record.get("n_val") or 0
    return int(round(record["val_accuracy"] * n)) if n else 0


def compare(record: dict, best: dict) -> tuple[str, float]:
    """("better" | "tie" | "worse", difference in validation images) of ``record`` against the best so
    far. Records without ``n_val`` (older run dirs) compare their accuracies exactly."""
    if record.get("n_val") and best.get("n_val") == record.get("n_val"):
        diff: float = correct_images(record) - correct_images(best)
        margin = TIE_MARGIN_IMAGES
    else:
        diff, margin = record["val_accuracy"] - best["val_accuracy"], 0.0
    if diff > margin:
        return "better", diff
    return ("tie" if abs(diff) <= margin else "worse"), diff


def walk(grid: list[int], done: dict[int, dict], patience: int) -> tuple[int | None, dict | None]:
    """The stop rule over the records in grid order: (the next depth to train or None once the peak is
    found - ``patience`` depths without a better record - or the floor is reached, the best record)."""
    best, since = None, 0
    for d in grid:
        if d not in done:
            return d, best
        if best is None or compare(done[d], best)[0] == "better":
            best, since = done[d], 0
        else:
            since += 1
            if since >= patience:
                return None, best
    return None, best


def next_depth(grid: list[int], done: dict[int, dict], patience: int) -> int | None:
    """The next depth to train, or None when the sweep of this chain is over. Depends on the records only."""
    return walk(grid, done, patience)[0]


def optimal_record(records: list[dict]) -> dict:
    """The optimal frozen depth of one chain: the best record met walking from the most frozen depth
    down, each replacing the best only when ``compare`` says better - the same walk as the stop rule,
    so a tie can move neither."""
    best = None
    for r in sorted(records, key=lambda r: -r["frozen"]):
        if best is None or compare(r, best)[0] == "better":
            best = r
    if best is None:
        raise ValueError("no stage-1 records to choose from")
    return best
