"""How often the verdict errs, and what it costs: the operating characteristics of `--trials auto`.

For the default plans (independent trials at 5 depths; a shared haystack with 5 depths whose
questions are uncorrelated or all alike; caps 20 and 40) and true pass rates from 0.50 to 1.00, the
chance a length ends below 85.6%, clears it, or is still undecided at the cap, and the trials per cell
it runs on average, computed exactly over every path the stopping rule can take
(niah.publish.error_rates). Then the cost: the observations a length that never fails needs to
clear, and one that always fails to be called below. Nothing is asserted (tests/test_verdict.py
asserts the error bounds at 85.6%); the markdown is the table in README.md and docs/verdicts.md.

    python benchmarks/verdict_bench.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from niah.publish.error_rates import DEFAULT_PLANS, RATES, markdown_table, operating_point
from niah.publish.stats import decide


def first_decided(outcome: float, decision: str) -> int:
    """How many observations all equal to `outcome` it takes to reach `decision`."""
    return next(n for n in range(1, 1000) if decide([outcome] * n) == decision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write every number as JSON here")
    args = parser.parse_args()
    points = {plan.label(): [operating_point(plan, p) for p in RATES] for plan in DEFAULT_PLANS}
    print(markdown_table(points))
    clear, below = first_decided(1.0, "clears"), first_decided(0.0, "below")
    print(f"\nnever fails: clears 85.6% after {clear} observations ({-(-clear // 5)} rounds of 5 independent depths, "
          f"or {clear} haystacks); always fails: below after {below} observations (1 round, or {below} haystacks)")
    if args.json:
        args.json.write_text(json.dumps({"rates": RATES, "plans": {k: [asdict(p) for p in v] for k, v in points.items()},
                                         "never_fails_clears_after": clear, "always_fails_below_after": below},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
