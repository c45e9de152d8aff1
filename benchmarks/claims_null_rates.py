"""How often the claims' tests decide when there is nothing to find: each claim's test on synthetic
run records with no effect built in (tests/test_claims.py's generator), many times, fixed seeds.

    PYTHONPATH=src python benchmarks/claims_null_rates.py [RUNS]

Prints ``null_rate_<claim>=<fraction>`` with its 95% Wilson interval. The claims' own resample counts
are used (PERMUTATIONS, BOOTSTRAP), not the tests' reduced ones."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_claims import _draws  # noqa: E402  (the one generator of synthetic records)

from mstl.edge.core.metrics import wilson_interval  # noqa: E402
from mstl.report import claims as C  # noqa: E402

# claim -> (how one null run is made, the verdicts that are false decisions)
NULLS = {
    "depth_rises": (lambda rng: C.claim_depth_rises(_draws(rng)), ("supported",)),
    "bridge_beats_control_1x1": (lambda rng: C.claim_bridge_beats_control(_draws(rng, n_draws=1, seeds=(1,))),
                                 ("supported", "contradicted")),
    "bridge_beats_control_3x2": (lambda rng: C.claim_bridge_beats_control(_draws(rng)), ("supported", "contradicted")),
    "intermediate_best": (lambda rng: C.claim_intermediate_best(_draws(rng)), ("supported",)),
}


def main(runs: int) -> None:
    for name, (one, false) in NULLS.items():
        t0 = time.monotonic()
        hits = sum(one(np.random.default_rng(100_000 + i))["verdict"] in false for i in range(runs))
        lo, hi = wilson_interval(hits, runs)
        print(f"null_rate_{name}={hits / runs:.4f} ({hits}/{runs}, 95% CI {lo:.4f}-{hi:.4f}, "
              f"{time.monotonic() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
