"""What looking all the time costs: the sequential split check against the fixed plan.

    .venv/bin/python bench/sequential_bench.py      # or: --runs 4000 --seed 2 --batch 50

For 75/25 at +-5 points, 95%, power 0.9, the fixed plan is ``plan_requests(0.25)``
requests. This simulates runs that look after every ``--batch`` requests with the
anytime-valid rule of ``SequentialVerifier`` (``sequential_decision``, the same
code, on numpy arrays of simulated counts) and reports, per scenario, how the
runs ended and the mean number of requests to the first decision as a multiple
of that plan:

- declared 50/50, real 75/25: mean requests until "mismatch" (target <= 0.3x);
- declared 75/25, real 75/25: mean requests until "verified" (target <= 1.5x);
- declared 75/25, real 70/30, right on the margin: how often it is wrongly
  verified (must stay <= 5%; the run usually ends as a mismatch instead).

Runs still undecided at ``--cap`` times the plan count at the cap. Exits 1 when a
target is missed. Fixed seed: the same command prints the same table.
"""

import argparse
import math
import sys
import time

import numpy as np

from loadtest.verifier import plan_requests, sequential_decision

# (label, declared canary share, real canary share, outcome that ends the run well, target)
SCENARIOS = [
    ("declared 50/50, real 75/25", 0.50, 0.25, "mismatch", 0.3),
    ("declared 75/25, real 75/25", 0.25, 0.25, "verified", 1.5),
    ("declared 75/25, real 70/30", 0.25, 0.30, "mismatch", None),
]
OUTCOMES = {0: "verified", 1: "mismatch", 2: "undecided"}


def simulate(rng, declared: float, real: float, runs: int, batch: int, looks: int):
    """Requests at each run's first decision, and that decision's code (2 = undecided)."""
    canary = rng.binomial(batch, real, size=(runs, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    codes = sequential_decision(canary, n, declared)
    decided = codes != 2
    first = np.where(decided.any(axis=1), decided.argmax(axis=1), looks - 1)
    return n[first], codes[np.arange(runs), first]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per scenario")
    parser.add_argument("--batch", type=int, default=20, help="requests between two looks")
    parser.add_argument("--cap", type=float, default=10.0, help="give up at this x the plan")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    plan = plan_requests(0.25)
    looks = math.ceil(args.cap * plan / args.batch)
    rng = np.random.default_rng(args.seed)
    print(f"fixed plan for 75/25 at +-5 points, 95%, power 0.9: {plan} requests")
    print(f"{args.runs} runs per scenario, a look every {args.batch} requests, "
          f"cap {args.cap:g}x the plan, seed {args.seed}\n")
    header = (f"{'scenario':<28}{'verified':>10}{'mismatch':>10}{'undecided':>11}"
              f"{'mean n':>9}{'x plan':>8}{'target':>9}")
    print(header)
    print("-" * len(header))
    missed = []
    for label, declared, real, good, target in SCENARIOS:
        requests, codes = simulate(rng, declared, real, args.runs, args.batch, looks)
        rate = {name: float(np.mean(codes == code)) for code, name in OUTCOMES.items()}
        multiple = requests.mean() / plan
        if target is None:
            shown, ok = "<=5% ver", rate["verified"] <= 0.05
        else:
            shown, ok = f"<={target:g}x", multiple <= target and rate[good] >= 0.99
        if not ok:
            missed.append(label)
        print(f"{label:<28}{rate['verified']:>10.2%}{rate['mismatch']:>10.2%}"
              f"{rate['undecided']:>11.2%}{requests.mean():>9.0f}{multiple:>8.2f}{shown:>9}"
              f"{'' if ok else '  MISSED'}")
    print(f"\n{time.perf_counter() - started:.1f} s")
    if missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
