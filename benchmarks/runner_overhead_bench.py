"""Per-cell suite overhead of niah (everything but waiting on the server) as a fraction of server time.

Runs one cell at ~8k (native) and one at ~32k (3.85x YaRN) with the tiny model on the bundled
llama-server, or reads cells of an earlier run with --from RESULTS.jsonl (e.g. the demo's).
Goal: overhead < 1% of server time. A 32k cell takes ~10 minutes on 2 cores; --only-8k skips it.

    python benchmarks/runner_overhead_bench.py --from reports/demo/results.jsonl
    python benchmarks/runner_overhead_bench.py --only-8k
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from niah.cells import ANSWER_BUDGET
from niah.launch.server import find_tiny_model
from niah.publish.results import load_cells
from niah.run.runner import RunConfig, run

CELLS = ((8192 - ANSWER_BUDGET, "tiny-native-8k"), (31540 - ANSWER_BUDGET, "tiny-yarn-32k"))


def measure(out_dir: Path, only_8k: bool) -> Path:
    cells = CELLS[:1] if only_8k else CELLS
    config = RunConfig(
        grid=tuple((length, (50.0,)) for length, _ in cells),
        out_dir=out_dir,
        model=find_tiny_model(),
        profiles=tuple(cells),
        cache_reuse=False,
    )
    return run(config).results_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="results.jsonl of an earlier run")
    parser.add_argument("--only-8k", action="store_true")
    args = parser.parse_args()
    source = args.source or measure(Path(tempfile.mkdtemp(prefix="niah-bench-")), args.only_8k)
    df = load_cells(source)
    df = df[df["prompt_ms"].notna() & df["overhead_s"].notna()]
    print(f"{'length':>8} {'depth':>6} {'computed':>9} {'server s':>9} {'niah s':>8} {'overhead':>9}")
    for row in df.sort_values(["length", "depth"]).itertuples():
        server_s = (row.prompt_ms + (row.predicted_ms or 0)) / 1000
        print(
            f"{row.length:>8} {row.depth:>5g}% {int(row.prompt_n or 0):>9} {server_s:>9.2f} "
            f"{row.overhead_s:>8.3f} {row.overhead_s / server_s:>8.2%}"
        )
    server_total = ((df["prompt_ms"] + df["predicted_ms"].fillna(0)) / 1000).sum()
    print(f"total: niah {df['overhead_s'].sum():.2f} s over server {server_total:.1f} s "
          f"= {df['overhead_s'].sum() / server_total:.2%} (goal < 1%)")


if __name__ == "__main__":
    main()
