"""Wall time of `niah --help`, `niah --version` and `niah profile list` (median of N starts).

Measures this checkout, or another one with --repo (e.g. a `git worktree` of an older commit), so
start-up time can be compared before and after a change. Nothing is asserted.

    python benchmarks/cli_start_bench.py [--repo PATH] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["--version"], ["profile", "list"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo.resolve())}
    print(f"checkout: {args.repo.resolve()}  ({args.runs} starts each, median)")
    for argv in COMMANDS:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "niah", *argv], env=env, cwd=args.repo,
                           capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(f"niah {' '.join(argv):<14} {statistics.median(times) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
