"""`niah plan`: the grid's cells in sending order, the tokens and seconds each should take, and the total."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import (
    SHARED,
    SHARED_SUFFIX,
    answer_budget,
    parse_depths,
    parse_length,
    parse_lengths,
    parse_trials,
    plan_cells,
)
from niah.cli.run import add_answer_options, add_grid_options, add_target_options, profile_mapping
from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.api_key import api_key
from niah.publish.verdict import default_max_trials
from niah.run.fit import ASSUMED_DECODE_RATE
from niah.run.probe import PROBE_BUDGET_S

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.run.probe import ProbeResult

EPILOG = """examples:
  niah plan --lengths 131k,262k,393k,512k,1010000 --arch qwen35 \\
            --profile-for-length 131k=native-131k,262k=native-262k,393k=yarn-393k,512k=yarn-512k,1010000=yarn-1m \\
            --rates 12k=2590,262k=1090,1m=390
  niah plan --url http://127.0.0.1:8080 --lengths 2k --depths 0,50,100 --probe
  niah plan --model m.gguf --profile-for-length 131k=native-131k,1010000=yarn-1m --lengths 131k,1010000 \
            --probe --probe-up-to 256k      (each launch probed at 64k, 128k, 256k: 1M is 3.9x past it)
  niah plan --lengths 4k,8k --from runs/a --json
the curves: T(n) = a*n + b*n^2 seconds to prefill n tokens (a cell that reuses c cached tokens costs
T(L) - T(c)); decode d(n) = c + e*n seconds per token at context n. Every estimate has a 90% interval
from the fit (a bootstrap over the timings) and says how far past the longest probe it reaches; a fit
that cannot tell its two terms apart gives the whole range instead. Only --probe sends anything to a
server."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "plan",
        help="cells, sending order, expected tokens, memory and wall time of a grid, before running it",
        description="Cost a grid before spending the hours: each cell's tokens to compute after prompt-cache "
        "reuse, its seconds on its launch's prefill and decode curves with an interval and how far past the "
        "longest probe it extrapolates, each launch's memory, and the total.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid_options(parser)
    add_target_options(parser, "server or launches (optional; a server is contacted only with --probe)")
    curve = parser.add_argument_group("cost curves (one of)")
    curve.add_argument("--rates", help="LEN=TOKENS_PER_S,... full-prefill average rates, e.g. 12k=2590,262k=1090,1m=390")
    curve.add_argument("--probe", action="store_true",
                       help="time prefills and decodes on each launch group's own launch (prompt cache off)")
    curve.add_argument("--from", dest="from_run", type=Path, help="an earlier run folder (its results.jsonl)")
    probe = parser.add_argument_group("how far --probe reaches (default: as far as --probe-budget lets)")
    probe.add_argument("--probe-up-to", help="the longest probe, e.g. 64k: probes N/4, N/2 and N tokens")
    probe.add_argument("--probe-lengths", help="the token counts to probe, e.g. 8k,16k,32k")
    probe.add_argument("--probe-budget", type=float, default=PROBE_BUDGET_S,
                       help=f"seconds of probing per launch (default {PROBE_BUDGET_S:g}): lengths double from 1/64 "
                       "of the launch's longest length while the next fits")
    parser.add_argument("--decode-rate", type=float, help="decode tokens/s at any context (default: measured by "
                        f"context with --probe or --from, else assumed {ASSUMED_DECODE_RATE:g})")
    add_answer_options(parser)
    parser.add_argument("--no-cache-reuse", action="store_true", help="plan without prompt-cache reuse")
    parser.add_argument("--arch", help="GGUF architecture for the memory estimate without --model (e.g. qwen35)")
    parser.add_argument("--api-key", help="server API key for --probe (default $NIAH_API_KEY)")
    parser.add_argument("--server-bin", help="llama-server binary for a managed --probe")
    parser.add_argument("--json", action="store_true", help="the plan as one JSON object")
    parser.set_defaults(func=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    from niah.run.fit import assumed_decode, constant_decode, fit_decode, fit_prefill
    from niah.run.plan import Costs, launch_memory, make_plan, parse_rates, points_from_results
    from niah.run.plan_text import plan_json, plan_text

    lengths = parse_lengths(args.lengths)
    shared = args.haystack == SHARED
    trials = parse_trials(args.trials) or default_max_trials("haystack" if shared else "independent")  # auto: the most
    task = "single" + (SHARED_SUFFIX if shared else "")
    cells = plan_cells(tuple((length, parse_depths(args.depths)) for length in lengths), trials, (task,))
    managed = bool(args.profile or args.profile_for_length)
    if args.url and managed:
        raise NiahError("give either --url, or launch profiles (--profile / --profile-for-length), not both")
    budget = answer_budget(args.answer_budget, args.thinking)
    if args.decode_rate is not None and not 0 < args.decode_rate < math.inf:
        raise NiahError("--decode-rate must be a positive number of tokens/s")
    sources = [name for name, given in (("--rates", args.rates), ("--probe", args.probe), ("--from", args.from_run)) if given]
    if not sources:
        raise NiahError("no cost curve: give --rates LEN=TOKENS_PER_S,..., --probe, or --from RUN_DIR")
    if len(sources) > 1:
        raise NiahError(f"give one cost curve source, not {' and '.join(sources)}")
    if not args.probe and (args.probe_up_to or args.probe_lengths):
        raise NiahError("--probe-up-to and --probe-lengths go with --probe")
    if args.probe_up_to and args.probe_lengths:
        raise NiahError("give --probe-up-to or --probe-lengths, not both")
    if not args.probe_budget > 0:
        raise NiahError("--probe-budget must be a positive number of seconds")
    if args.model and not args.model.is_file():
        raise NiahError(f"model file {args.model} does not exist")
    launch_of = dict(profile_mapping(args, lengths)) if managed else {}
    facts = None
    if args.model:
        from niah.launch.gguf_meta import read_gguf_facts

        facts = read_gguf_facts(args.model)

    given = constant_decode(args.decode_rate, "given (--decode-rate)") if args.decode_rate else None
    costs: Costs | dict[str | None, Costs]
    if args.rates:
        costs = Costs(fit_prefill(parse_rates(args.rates), f"--rates {args.rates}"), given or assumed_decode())
    elif args.from_run:
        prefills, decodes = points_from_results(args.from_run)
        source = f"results of {args.from_run} ({len(prefills)} prefills)"
        costs = Costs(fit_prefill(prefills, source), given or fit_decode(decodes, source) or assumed_decode())
    else:
        costs = {}
        for name, probed in probe(args, lengths, launch_of, facts, budget).items():
            decode = given or fit_decode(probed.decodes, probed.source) or assumed_decode()
            costs[name] = Costs(fit_prefill(probed.prefills, probed.source), decode, probed)
    plan = make_plan(
        cells,
        costs,
        launch_of=launch_of,
        answer_budget=budget,
        cache_reuse=not args.no_cache_reuse,
        memory={
            name: launch_memory(name, facts, args.arch, args.model, args.server_bin, budget)
            for name in sorted(set(launch_of.values()))
        },
    )
    print(json.dumps(plan_json(plan), indent=2) if args.json else plan_text(plan))
    return EXIT_LAUNCH_INVALID if plan.clamped else 0


def probe(
    args: argparse.Namespace, lengths: tuple[int, ...], launch_of: dict[int, str], facts: GGUFFacts | None,
    budget: int,
) -> dict[str | None, ProbeResult]:
    """Each launch group probed on its own launch (or the one --url server), in sending order."""
    from niah.launch.profiles import launch_spec, load_profile, plan_launch
    from niah.launch.rope_check import launch_record
    from niah.launch.session import ServerSpec
    from niah.prompts.corpus import get_corpus
    from niah.run.probe import probe_launch

    if not args.url and not (launch_of and args.model):
        raise NiahError("--probe needs a server: --url, or --model with --profile / --profile-for-length")
    key = api_key(args.api_key)
    text = get_corpus("builtin").text
    up_to = parse_length(args.probe_up_to) if args.probe_up_to else None
    wanted = list(parse_lengths(args.probe_lengths)) if args.probe_lengths else None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.url:
        spec = ServerSpec(url=args.url, api_key=key)
        return {None: probe_launch(spec, spec.url or "", max(lengths), text, up_to=up_to, lengths=wanted,
                                   budget_s=args.probe_budget, log=log)}
    results: dict[str | None, ProbeResult] = {}
    groups: dict[str, list[int]] = {}
    for length in sorted(lengths):
        groups.setdefault(launch_of[length], []).append(length)
    for name, group in groups.items():
        profile = load_profile(name)
        spec = launch_spec(
            profile, facts, args.model, Path(tempfile.gettempdir()) / "niah-plan", answer_budget=budget,
            name=f"plan-probe-{profile.name}", api_key=key, server_bin=args.server_bin,
        )
        launch_record(plan_launch(profile, facts, answer_budget=budget).intent, args.model, spec.args, facts,
                      args.server_bin, profile.name, lambda line: print(f"niah: {line}", file=sys.stderr, flush=True))
        log(f"probe: starting a launch of {profile.name} for lengths {', '.join(f'{n:,}' for n in group)}")
        results[name] = probe_launch(spec, f"a launch of {profile.name}", max(group), text, up_to=up_to,
                                     lengths=wanted, budget_s=args.probe_budget, log=log)
    return results
