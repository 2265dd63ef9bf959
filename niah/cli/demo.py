"""`niah demo`: a miniature of the seed's experiment on the bundled CPU llama-server and SmolLM2-135M.

The seed validated a Qwen3.6 model (native 262,144) at native, 1.5x, 2x and 3.85x YaRN. The demo
keeps those factors on SmolLM2's native 8,192: each row runs on its own launch profile, whose
longest prompt is the row's length (the launch adds the answer budget per slot).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from niah.cli.run import add_common_options, common_config, print_summary
from niah.launch.server import find_tiny_model

ALL_DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
# (length, launch profile, depths of the default demo); --full runs ALL_DEPTHS on every row.
DEMO_ROWS = (
    (4096, "tiny-native-8k", ALL_DEPTHS),
    (8160, "tiny-native-8k", (50.0,)),
    (12256, "tiny-yarn-12k", (50.0,)),
    (16352, "tiny-yarn-16k", (50.0,)),
    (31508, "tiny-yarn-32k", ()),
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "demo",
        help="miniature seed experiment on the bundled CPU server and tiny model",
        description="Run native/1.5x/2x/3.85x rows with SmolLM2-135M on the bundled llama-server and "
        "write results and report to runs/demo/. Rerunning resumes. --full adds every depth on every "
        "row up to 3.85x (about 2 hours on 2 cores: one 31K-token prefill alone took 14 minutes). Example: niah demo",
    )
    parser.add_argument("--full", action="store_true", help="every depth on every row, 3.85x row included")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"),
        help="run folder (default runs/demo; the published report was made with --full --out reports/demo)",
    )
    add_common_options(parser)
    parser.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from niah.publish.results import run_folder_lock
    from niah.run.runner import RunConfig, check_out_dir, run

    config = RunConfig(
        grid=tuple((length, ALL_DEPTHS if args.full else depths) for length, _, depths in DEMO_ROWS),
        out_dir=args.out,
        model=find_tiny_model(),
        profiles=tuple((length, profile) for length, profile, _ in DEMO_ROWS),
        **common_config(args),  # type: ignore[arg-type]
    )
    check_out_dir(args.out)
    with run_folder_lock(args.out):
        code = print_summary(run(config))
    if not args.full:
        skipped = ", ".join(f"{length:,} ({profile})" for length, profile, depths in DEMO_ROWS if not depths)
        print(f"not run by default: {skipped}; `niah demo --full` runs every row at every depth")
    return code
