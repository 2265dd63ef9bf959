"""`niah plan`: the grid's cells in sending order, the tokens and seconds each should take, and the total."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import (
    SHARED,
    SHARED_SUFFIX,
    answer_budget,
    parse_depths,
    parse_lengths,
    parse_trials,
    plan_cells,
)
from niah.cli.run import add_answer_options, add_grid_options, add_target_options, profile_mapping
from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.api_key import api_key
from niah.publish.verdict import default_max_trials

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.run.plan import PrefillPoint

EPILOG = """examples:
  niah plan --lengths 131k,262k,393k,512k,1010000 --arch qwen35 \\
            --profile-for-length 131k=native-131k,262k=native-262k,393k=yarn-393k,512k=yarn-512k,1010000=yarn-1m \\
            --rates 12k=2590,262k=1090,1m=390
  niah plan --url http://127.0.0.1:8080 --lengths 2k --depths 0,50,100 --probe
  niah plan --lengths 4k,8k --from runs/a --json
the curve: T(n) = a*n + b*n^2 seconds to prefill n tokens; a cell that reuses c cached tokens costs
T(L) - T(c). Only --probe sends anything to a server."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "plan",
        help="cells, sending order, expected tokens, memory and wall time of a grid, before running it",
        description="Cost a grid before spending the hours: each cell's tokens to compute after prompt-cache "
        "reuse and its seconds on a prefill-time curve, each launch's memory, and the total.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid_options(parser)
    add_target_options(parser, "server or launches (optional; a server is contacted only with --probe)")
    curve = parser.add_argument_group("prefill curve (one of)")
    curve.add_argument("--rates", help="LEN=TOKENS_PER_S,... full-prefill average rates, e.g. 12k=2590,262k=1090,1m=390")
    curve.add_argument("--probe", action="store_true", help="measure a few prefills on the server (prompt cache off)")
    curve.add_argument("--from", dest="from_run", type=Path, help="an earlier run folder (its results.jsonl)")
    parser.add_argument("--probe-lengths", help="token counts to probe (default 1/8, 1/4, 1/2 of the smallest length)")
    parser.add_argument("--decode-rate", type=float, help="decode tokens/s (default: measured, else assumed 20)")
    add_answer_options(parser)
    parser.add_argument("--no-cache-reuse", action="store_true", help="plan without prompt-cache reuse")
    parser.add_argument("--arch", help="GGUF architecture for the memory estimate without --model (e.g. qwen35)")
    parser.add_argument("--api-key", help="server API key for --probe (default $NIAH_API_KEY)")
    parser.add_argument("--server-bin", help="llama-server binary for a managed --probe")
    parser.add_argument("--json", action="store_true", help="the plan as one JSON object")
    parser.set_defaults(func=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    from niah.run.plan import (
        fit_curve,
        launch_memory,
        make_plan,
        parse_rates,
        plan_json,
        plan_text,
        points_from_results,
    )

    lengths = parse_lengths(args.lengths)
    shared = args.haystack == SHARED
    trials = parse_trials(args.trials) or default_max_trials("haystack" if shared else "independent")  # auto: the most
    task = "single" + (SHARED_SUFFIX if shared else "")
    cells = plan_cells(tuple((length, parse_depths(args.depths)) for length in lengths), trials, (task,))
    managed = bool(args.profile or args.profile_for_length)
    if args.url and managed:
        raise NiahError("give either --url, or launch profiles (--profile / --profile-for-length), not both")
    budget = answer_budget(args.answer_budget, args.thinking)
    if args.decode_rate is not None and not args.decode_rate > 0:
        raise NiahError("--decode-rate must be a positive number of tokens/s")
    sources = [name for name, given in (("--rates", args.rates), ("--probe", args.probe), ("--from", args.from_run)) if given]
    if not sources:
        raise NiahError("no prefill curve: give --rates LEN=TOKENS_PER_S,..., --probe, or --from RUN_DIR")
    if len(sources) > 1:
        raise NiahError(f"give one prefill curve source, not {' and '.join(sources)}")
    if args.model and not args.model.is_file():
        raise NiahError(f"model file {args.model} does not exist")
    launch_of = dict(profile_mapping(args, lengths)) if managed else {}
    facts = None
    if args.model:
        from niah.launch.gguf_meta import read_gguf_facts

        facts = read_gguf_facts(args.model)

    decode_rate: float | None = None
    served: int | None = None
    if args.rates:
        points, source = parse_rates(args.rates), f"--rates {args.rates}"
    elif args.from_run:
        points, decode_rate = points_from_results(args.from_run)
        source = f"results of {args.from_run} ({len(points)} prefills)"
    else:
        points, decode_rate, source, served = probe(args, lengths, launch_of, facts, budget)
    decode_source = "measured"
    if args.decode_rate:
        decode_rate, decode_source = args.decode_rate, "given (--decode-rate)"
    plan = make_plan(
        cells,
        fit_curve(points, source),
        launch_of=launch_of,
        answer_budget=budget,
        decode_rate=decode_rate,
        decode_source=decode_source,
        cache_reuse=not args.no_cache_reuse,
        memory={
            name: launch_memory(name, facts, args.arch, args.model, args.server_bin, budget)
            for name in sorted(set(launch_of.values()))
        },
        served=served if args.url else None,
    )
    print(json.dumps(plan_json(plan), indent=2) if args.json else plan_text(plan))
    return EXIT_LAUNCH_INVALID if plan.clamped else 0


def probe(
    args: argparse.Namespace, lengths: tuple[int, ...], launch_of: dict[int, str], facts: GGUFFacts | None,
    budget: int,
) -> tuple[list[PrefillPoint], float | None, str, int | None]:
    """A few prefills at growing lengths on `--url`, or on a managed launch of the first launch group;
    also the per-slot context the server serves."""
    from niah.launch.profiles import launch_spec, load_profile, plan_launch
    from niah.launch.rope_check import launch_record
    from niah.launch.session import ServerSession, ServerSpec
    from niah.prompts.corpus import get_corpus
    from niah.run.plan import probe_lengths, probe_points

    key = api_key(args.api_key)
    if args.url:
        spec = ServerSpec(url=args.url, api_key=key)
        where = spec.url
    elif launch_of and args.model:
        profile = load_profile(launch_of[min(lengths)])
        spec = launch_spec(
            profile, facts, args.model, Path(tempfile.gettempdir()) / "niah-plan", answer_budget=budget,
            name=f"plan-probe-{profile.name}", api_key=key, server_bin=args.server_bin,
        )
        where = f"a launch of {profile.name}"
        launch_record(plan_launch(profile, facts, answer_budget=budget).intent, args.model, spec.args, facts,
                      args.server_bin, profile.name, lambda line: print(f"niah: {line}", file=sys.stderr, flush=True))
    else:
        raise NiahError("--probe needs a server: --url, or --model with --profile / --profile-for-length")
    with ServerSession(spec) as session:
        settings = session.props().get("default_generation_settings") or {}
        served = int(settings.get("n_ctx") or 0) or None
        wanted = list(parse_lengths(args.probe_lengths)) if args.probe_lengths else probe_lengths(lengths, served)
        if not wanted:
            raise NiahError(f"{where} serves {served:,} tokens per slot: too few to probe (give --probe-lengths)")
        text = get_corpus("builtin").text

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        points, decode_rate = probe_points(session, sorted(wanted), text, log)
    listed = ", ".join(f"{n:,}" for n in sorted({p.length - p.cached for p in points}))
    return points, decode_rate, f"a probe of {where} ({listed} tokens, {len(points)} prefills, prompt cache off)", served
