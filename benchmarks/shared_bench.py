"""The shared haystack measured on real llama-servers against the default single-needle mode.

  ratio      SmolLM2 on `tiny-yarn-16k`, lengths 4,096, 8,160 and 16,352 × 5 depths: prefill tokens
             computed / naive (the sum of prompt lengths) and wall time, shared vs default, each on a
             fresh launch (issue targets: computed/naive ≤ 0.15, wall ≤ 0.4 of the default mode's);
  hybrid     the qwen35 test bed (its native 4,096), lengths 1,024 to 4,064 × 5 depths: shared
             computed/naive, primers included (target ≤ 0.25);
  agreement  SmolLM2 on `tiny-native-8k`, 5 lengths to 8,160 × 5 depths: the screen's verdict against
             the single-needle one, cell by cell (PASS or not).

Nothing is asserted; each figure is printed as measured and written as JSON (--json FILE). Run it on
a quiet machine: wall times move with load. About 20 minutes on 2 cores.

    python benchmarks/shared_bench.py [--only ratio,hybrid,agreement] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from niah.launch.server import find_tiny_model
from niah.prompts.shared_haystack import shared_task
from niah.prompts.tasks import SINGLE, Task
from niah.run.runner import RunConfig, run
from niah.testbed.model import build_testbed

DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)


def measure(out: Path, model: Path, profile: str, lengths: tuple[int, ...], shared: bool) -> dict[str, Any]:
    """One run on its own launch: computed and naive prefill tokens, wall time, each cell's outcome."""
    grid = tuple((n, DEPTHS) for n in lengths)
    tasks = (shared_task(grid),) if shared else (Task(SINGLE, SINGLE),)
    config = RunConfig(grid=grid, out_dir=out, model=model, profiles=tuple((n, profile) for n in lengths),
                       tasks=tasks, show_progress=False)
    started = time.monotonic()
    summary = run(config)
    wall = time.monotonic() - started
    records = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    cells = [r for r in records if r.get("record") == "cell"]
    return {
        "computed": summary.prefill_tokens_computed, "naive": sum(r["length"] for r in cells), "wall_s": round(wall, 1),
        "outcomes": {f"{r['length']}@{r['depth']:g}": r["outcome"] for r in cells},
    }


def ratio(work: Path) -> dict[str, Any]:
    model, lengths = find_tiny_model(), (4096, 8160, 16352)
    shared = measure(work / "ratio-shared", model, "tiny-yarn-16k", lengths, shared=True)
    single = measure(work / "ratio-single", model, "tiny-yarn-16k", lengths, shared=False)
    figures = {
        "shared_computed_over_naive": round(shared["computed"] / shared["naive"], 3),
        "default_computed_over_naive": round(single["computed"] / single["naive"], 3),
        "shared_wall_s": shared["wall_s"], "default_wall_s": single["wall_s"],
        "wall_shared_over_default": round(shared["wall_s"] / single["wall_s"], 3),
    }
    print(f"ratio (SmolLM2 tiny-yarn-16k, {', '.join(map(str, lengths))} × 5): {figures}", flush=True)
    return figures


def hybrid(work: Path) -> dict[str, Any]:
    model = work / "qwen35-testbed.gguf"
    build_testbed("qwen35", model)
    profile = work / "qwen35.toml"
    profile.write_text("context = 4064\n")
    shared = measure(work / "hybrid-shared", model, str(profile), (1024, 2048, 3072, 4064), shared=True)
    figures = {"shared_computed_over_naive": round(shared["computed"] / shared["naive"], 3),
               "computed": shared["computed"], "naive": shared["naive"]}
    print(f"hybrid (qwen35 test bed, 1,024-4,064 × 5): {figures}", flush=True)
    return figures


def agreement(work: Path) -> dict[str, Any]:
    model, lengths = find_tiny_model(), (1024, 2048, 4096, 6144, 8160)
    screen = measure(work / "agree-shared", model, "tiny-native-8k", lengths, shared=True)["outcomes"]
    single = measure(work / "agree-single", model, "tiny-native-8k", lengths, shared=False)["outcomes"]
    table = Counter(
        f"screen {'PASS' if screen[c] == 'PASS' else 'not PASS'} / single {'PASS' if single[c] == 'PASS' else 'not PASS'}"
        for c in screen if c in single
    )
    figures = {"table": dict(sorted(table.items())), "screen": screen, "single": single}
    print(f"agreement (SmolLM2 tiny-native-8k, 25 cells): {dict(sorted(table.items()))}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="ratio,hybrid,agreement")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="niah-shared-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    steps = {"ratio": ratio, "hybrid": hybrid, "agreement": agreement}
    figures = {}
    for name in args.only.split(","):
        (work / name).mkdir(parents=True, exist_ok=True)
        figures[name] = steps[name](work / name)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
