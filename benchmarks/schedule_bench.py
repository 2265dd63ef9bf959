"""Prefill the sending order computes, on paper, as a share of the naive sum of cell lengths.

Each cell computes its length less the haystack it shares with the cell before on the same server
(`niah.run.progress.expected_prefill`). Printed for one length at 5 depths, and for the seed's grid
(5 lengths × 5 depths to 1,010,000) on one server, on one launch per length, and as one shared
haystack on one launch (`--haystack shared`: each length computes only what extends the shorter
one, plus each cell's last sentence and question, SHARED_TAIL tokens). Nothing is asserted;
a real-server measurement is benchmarks/reuse_bench.py.

    python benchmarks/schedule_bench.py
"""

from __future__ import annotations

from niah.cells import SHARED_SUFFIX, plan_cells
from niah.run.progress import expected_prefill

DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
SEED_LENGTHS = (131072, 262144, 393216, 524288, 1010000)


def ratio(
    grid: tuple[tuple[int, tuple[float, ...]], ...], launch_of: dict[int, object] | None = None, task: str = "single"
) -> tuple[int, int]:
    cells = plan_cells(grid, trials=1, tasks=(task,))
    return sum(expected_prefill(cells, launch_of)), sum(c.length for c in cells)


def main() -> None:
    cases = {
        "4,096 × 5 depths": ratio(((4096, DEPTHS),)),
        "seed grid, one server": ratio(tuple((n, DEPTHS) for n in SEED_LENGTHS)),
        "seed grid, one launch per length": ratio(
            tuple((n, DEPTHS) for n in SEED_LENGTHS), {n: i for i, n in enumerate(SEED_LENGTHS)}
        ),
        "seed grid, shared haystack": ratio(tuple((n, DEPTHS) for n in SEED_LENGTHS), task="single" + SHARED_SUFFIX),
    }
    print(f"{'schedule':<34} {'computed':>12} {'naive':>12} {'ratio':>7}")
    for name, (computed, naive) in cases.items():
        print(f"{name:<34} {computed:>12,} {naive:>12,} {computed / naive:>7.3f}")


if __name__ == "__main__":
    main()
