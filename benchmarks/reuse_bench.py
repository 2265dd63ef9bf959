"""Measured prefix reuse on real llama-servers: prefill the server computed (primers included) as a
share of the naive sum of cell lengths, per test bed, with niah's managed launches.

  SmolLM2-135M (full attention)   5 depths at 4,096               target ≤ 0.72
  SmolLM2-135M                    3 lengths × 3 depths, one launch (the order across lengths)
  Gemma 3 270M (sliding window)   5 depths at 2,048, --swa-full    target ≤ 0.75 (and without it)
  qwen35 test bed (hybrid)        5 depths at 1,536, primed        target ≤ 0.80

Nothing is asserted. Takes several minutes on 2 cores.

    python benchmarks/reuse_bench.py [--only smollm2|gemma3|qwen35]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from niah.launch.packaged_models import find_gemma3_270m
from niah.launch.server import find_tiny_model
from niah.run.runner import RunConfig, run
from niah.testbed.model import build_testbed

DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)


def measure(name: str, model: Path, profile: str, grid: tuple, tmp: Path) -> None:
    folder = tmp / str(len(list(tmp.iterdir())))
    folder.mkdir()
    (folder / "profile.toml").write_text(profile)
    lengths = [length for length, _ in grid]
    started = time.monotonic()
    summary = run(RunConfig(grid=grid, out_dir=folder / "run", model=model, show_progress=False,
                            profiles=tuple((n, str(folder / "profile.toml")) for n in lengths)))
    cells = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    cells = [c for c in cells if c.get("record") == "cell"]
    computed = sum((c["prompt_n"] or 0) + (c["prime_n"] or 0) for c in cells)
    naive = sum(c["length"] for c in cells)
    print(f"{name:<44} {len(cells):>5} {computed:>9,} {naive:>9,} {computed / naive:>7.3f} "
          f"{time.monotonic() - started:>7.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("smollm2", "gemma3", "qwen35"))
    args = parser.parse_args()
    print(f"{'test bed':<44} {'cells':>5} {'computed':>9} {'naive':>9} {'ratio':>7} {'wall':>9}", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.only in (None, "smollm2"):
            tiny = find_tiny_model()
            measure("SmolLM2, 5 depths at 4,096", tiny, "context = 8160\n", ((4096, DEPTHS),), tmp)
            measure("SmolLM2, 1,024/2,048/3,072 x 3 depths, one launch", tiny, "context = 8160\n",
                    tuple((n, (0.0, 50.0, 100.0)) for n in (1024, 2048, 3072)), tmp)
        if args.only in (None, "gemma3"):
            gemma = find_gemma3_270m()
            measure("Gemma 3 270M, 5 depths at 2,048, --swa-full", gemma, "context = 4096\n", ((2048, DEPTHS),), tmp)
            measure("Gemma 3 270M, 5 depths at 2,048, window only", gemma, "context = 4096\nswa_full = false\n",
                    ((2048, DEPTHS),), tmp)
        if args.only in (None, "qwen35"):
            testbed, _ = build_testbed("qwen35", tmp / "qwen35.gguf")
            measure("qwen35 test bed, 5 depths at 1,536, primed", testbed, "context = 4064\n", ((1536, DEPTHS),), tmp)


if __name__ == "__main__":
    main()
