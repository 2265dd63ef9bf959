"""`niah run`: the length × depth needle grid against a server URL or managed launch profiles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import (
    HAYSTACKS,
    SHARED,
    parse_depths,
    parse_length,
    parse_lengths,
    parse_trials,
)
from niah.errors import NiahError
from niah.launch.api_key import api_key
from niah.publish.stats import RULER_PASS_RATE, interval_text
from niah.publish.verdict import MAX_HAYSTACKS, MAX_TRIALS, TrialPolicy, default_max_trials
from niah.run.confirm import CONFIRMS

if TYPE_CHECKING:
    from niah.prompts.tasks import Task
    from niah.run.runner import RunSummary

Grid = tuple[tuple[int, tuple[float, ...]], ...]

EPILOG = """examples:
  niah run --url http://127.0.0.1:8080 --lengths 4k,8k --depths 0,50,100 --out runs/a
  niah run --url http://127.0.0.1:8080 --lengths 4k,8k --depths 0,50,100 --out runs/a --retry
           (resume, rerunning the cells that ended CRASH, TIMEOUT or HTTP_ERROR)
  niah run --url http://127.0.0.1:8080 --lengths 2k,4k,8k --depths 0,50,100 \\
           --task single,multikey:4,chain:2 --trials 3 --out runs/harder
  niah run --url http://127.0.0.1:8080 --lengths 4k,8k,16k --trials auto --out runs/verdict
           (per length, rounds until the pass rate's 95% confidence sequence is above or below 85.6%, at most 20)
  niah run --url http://127.0.0.1:8080 --lengths 131k,262k,1010000 --haystack shared --confirm --out runs/screen
           (one haystack cut at every length: about one prefill of 1,010,000; non-PASS cells rerun one needle each)
  niah run --model m.gguf --profile-for-length 131k=native-131k,1010000=yarn-1m \\
           --lengths 131k,1010000 --depths linspace:0:100:5 --out runs/seed
  several servers at once (cells go to whichever is free, a length's depths stay on one server):
  niah run --url http://gpu0:8080 --url http://gpu1:8080 --lengths 128k,256k --out runs/b
  niah run --model m.gguf --profile my-2gpu.toml --servers 2 --lengths 128k,256k --out runs/c
exit codes: 0 all PASS (--trials auto: every length clears), 1 FAIL or WRONG_KEY cells (auto: a length
            that does not clear), 2 bad input, 3 launch invalid (unreachable, clamped),
            4 cells ended in other outcomes (TIMEOUT, CRASH, TOKEN_MISMATCH, ...)"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "run",
        help="run the needle grid and write results + report",
        description="Plant needles at each depth for each length, ask the server, publish the matrix. "
        "Rerunning with the same --out resumes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid_options(parser)
    parser.add_argument(
        "--task", default="single",
        help="comma-separated: single, multikey:K, multivalue:V, multiquery:Q, chain:H, or a task .toml file",
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder: results.jsonl and the report")
    parser.add_argument("--retry", action="store_true",
                        help="on resume, also rerun the cells recorded CRASH, TIMEOUT or HTTP_ERROR")
    parser.add_argument(
        "--confirm", nargs="?", const="fails", choices=CONFIRMS,
        help="with --haystack shared: rerun every cell the screen did not pass one needle per prompt (fresh "
        "prefill), side by side with the screen; --confirm all also every cell of the longest length",
    )
    verdict = parser.add_argument_group("verdict (--trials auto)")
    verdict.add_argument("--pass-rate", type=float,
                         help=f"the threshold a length's pass rate must clear (default {RULER_PASS_RATE}, RULER's)")
    verdict.add_argument("--max-trials", type=int,
                         help=f"trials per cell auto stops at (default {MAX_TRIALS}; {MAX_HAYSTACKS} haystacks with "
                         "--haystack shared, where a length that never fails needs 35 to clear 85.6%%)")
    add_target_options(parser, several=True)
    add_common_options(parser)
    parser.set_defaults(func=run_command)


def add_grid_options(parser: argparse.ArgumentParser) -> None:
    """The grid's options, shared by `run` and `plan`."""
    parser.add_argument("--lengths", required=True, help="e.g. 131k,262144,1010000 (k=1024, m=1024²)")
    parser.add_argument("--depths", default="0,25,50,75,100", help="percents, or linspace:0:100:11")
    parser.add_argument(
        "--trials", default="1",
        help="prompts per cell (different values and distractor positions), or auto: per length, add trials "
        f"until the pass rate's 95%% confidence sequence lies above or below --pass-rate (planned at the cap, "
        f"{MAX_TRIALS})",
    )
    parser.add_argument(
        "--haystack", choices=HAYSTACKS, default="single",
        help="single: a prompt per cell (default); shared: per trial one haystack holding a keyed needle for "
        "every cell, cut at each length (a screen for about one prefill of the longest length; --confirm "
        "reruns its FAILs one needle per prompt)",
    )


def add_target_options(parser: argparse.ArgumentParser, title: str = "server (one of)", several: bool = False) -> None:
    """Where the grid runs: a URL (`several`: repeatable), or --model with launch profiles; shared by
    `run` and `plan`."""
    target = parser.add_argument_group(title)
    if several:
        target.add_argument("--url", action="append", help="an already running llama-server; repeat for several")
    else:
        target.add_argument("--url", help="an already running llama-server")
    target.add_argument(
        "--model", type=Path,
        help="GGUF for managed launches; beside --url, a copy of the served model niah reads facts from",
    )
    target.add_argument("--profile", help="launch profile for every length (with --model)")
    target.add_argument("--profile-for-length", help="LENGTH=PROFILE,... one launch per group of lengths")
    if several:
        target.add_argument("--servers", type=int, help="managed launches at once (each on the profile's next `devices`)")
        target.add_argument(
            "--arch", help="beside --url: the served model's GGUF architecture (e.g. qwen35), when niah cannot read its "
            "GGUF; without it or --model niah asks the server itself (a short reuse probe)",
        )


def add_answer_options(parser: argparse.ArgumentParser) -> None:
    """--answer-budget and --thinking: how much room past the prompt a launch and a cell leave."""
    parser.add_argument(
        "--answer-budget", type=int,
        help="max answer tokens, also reserved in every slot past the longest prompt (default 32; 4096 with thinking on)",
    )
    parser.add_argument("--thinking", choices=("off", "on"), default="off", help="let the model reason first (default off)")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `demo`."""
    parser.add_argument("--tokenizer", default="auto", help="auto (qwen3.6 if the server's vocab is), or a spec")
    parser.add_argument("--corpus", default="builtin", help="builtin, files:GLOB or noise")
    parser.add_argument("--needle", type=Path, help="TOML/JSON file with custom needle/question/answer")
    parser.add_argument("--seed", type=int, default=0, help="needle values and sampling seed")
    add_answer_options(parser)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--no-cache-reuse", action="store_true", help="strict: no prompt-cache reuse")
    parser.add_argument("--stall-timeout", type=float, default=600.0, help="seconds of stream silence = TIMEOUT")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to open each cell's connection")
    parser.add_argument(
        "--start-timeout", type=float, default=1800.0,
        help="seconds a managed launch may take to load the model and allocate its KV cache (default 1800)",
    )
    parser.add_argument("--api-key", help="server API key (default $NIAH_API_KEY); never written anywhere")
    parser.add_argument("--server-bin", help="llama-server binary for managed launches")
    parser.add_argument("--host", default="127.0.0.1", help="bind address of managed servers")
    parser.add_argument("--no-progress", action="store_true")


def common_config(args: argparse.Namespace) -> dict[str, object]:
    """RunConfig fields taken from the shared options."""
    return {
        "tokenizer": args.tokenizer,
        "corpus": args.corpus,
        "needle_file": args.needle,
        "seed": args.seed,
        "answer_budget": args.answer_budget,
        "thinking": args.thinking,
        "temperature": args.temperature,
        "cache_reuse": not args.no_cache_reuse,
        "stall_timeout_s": args.stall_timeout,
        "connect_timeout_s": args.connect_timeout,
        "start_timeout_s": args.start_timeout,
        "api_key": api_key(args.api_key),
        "server_bin": args.server_bin,
        "host": args.host,
        "show_progress": not args.no_progress,
    }


def profile_mapping(args: argparse.Namespace, lengths: tuple[int, ...]) -> tuple[tuple[int, str], ...]:
    """(length, profile) pairs from --profile or --profile-for-length."""
    if args.profile:
        return tuple((length, args.profile) for length in lengths)
    mapping: dict[int, str] = {}
    for item in (args.profile_for_length or "").split(","):
        if not item.strip():
            continue
        length_text, sep, profile = item.partition("=")
        if not sep or not profile.strip():
            raise NiahError(f"bad --profile-for-length item {item!r}: use LENGTH=PROFILE")
        mapping[parse_length(length_text)] = profile.strip()
    missing = [length for length in lengths if length not in mapping]
    if missing:
        raise NiahError(f"no launch profile for length(s) {', '.join(map(str, missing))} in --profile-for-length")
    return tuple((length, mapping[length]) for length in lengths)


def run_command(args: argparse.Namespace) -> int:
    from niah.prompts.tasks import parse_tasks
    from niah.publish.results import run_folder_lock
    from niah.run.runner import RunConfig, check_out_dir, managed_launches, run

    lengths = parse_lengths(args.lengths)
    depths = parse_depths(args.depths)
    grid = tuple((length, depths) for length in lengths)
    tasks = haystack_tasks(args, parse_tasks(args.task), grid)
    managed = bool(args.profile or args.profile_for_length)
    if bool(args.url) == managed:
        raise NiahError("give either --url, or --model with --profile / --profile-for-length")
    if managed and not args.model:
        raise NiahError("managed launches need --model GGUF")
    if args.servers is not None and (args.url or args.servers < 1):
        raise NiahError("--servers N (N ≥ 1) starts managed launches; for running servers give --url once per server")
    urls = args.url or []
    if args.model and not args.model.is_file():
        raise NiahError(f"model file {args.model} does not exist")
    config = RunConfig(
        grid=grid,
        trials=parse_trials(args.trials) or 1,
        policy=trial_policy(args),
        tasks=tasks,
        out_dir=args.out,
        url=urls[0] if urls else None,
        urls=tuple(urls[1:]),
        servers=args.servers or 1,
        model=args.model,
        arch=args.arch,
        profiles=profile_mapping(args, lengths) if managed else (),
        retry=args.retry,
        confirm=args.confirm,
        **common_config(args),  # type: ignore[arg-type]
    )
    managed_launches(config)  # a bad model header or profile is refused before --out is made
    check_out_dir(args.out)
    with run_folder_lock(args.out):
        return print_summary(run(config))


def haystack_tasks(args: argparse.Namespace, tasks: tuple[Task, ...], grid: Grid) -> tuple[Task, ...]:
    """The run's tasks: as given, or with `--haystack shared` the one task it runs, `single@shared`."""
    from niah.prompts.shared_haystack import shared_task
    from niah.prompts.tasks import SINGLE

    if args.haystack != SHARED:
        return tasks
    if [t.name for t in tasks] != [SINGLE] or args.needle:
        raise NiahError("--haystack shared plants its own keyed needles: it runs --task single, without --needle")
    return (shared_task(grid),)


def trial_policy(args: argparse.Namespace) -> TrialPolicy:
    """--trials auto with its threshold and cap; the threshold also judges a fixed number of trials
    (the effective length)."""
    auto = parse_trials(args.trials) is None
    if args.max_trials is not None and not auto:
        raise NiahError("--max-trials goes with --trials auto")
    # questions on one shared haystack are not independent: each haystack is one observation
    clusters = "haystack" if args.haystack == SHARED else "independent"
    options = {} if args.pass_rate is None else {"pass_rate": args.pass_rate}
    if auto:
        options["max_trials"] = default_max_trials(clusters) if args.max_trials is None else args.max_trials
    return TrialPolicy(auto=auto, clusters=clusters, **options)


def print_summary(summary: RunSummary) -> int:
    """The grid, the counts and where the files are; returns the exit code."""
    print(summary.grid_markdown)
    counts = ", ".join(f"{name} {count}" for name, count in sorted(summary.outcomes.items()))
    print(f"\noutcomes: {counts}")
    several = len(summary.per_length) > 1 or list(summary.per_length) != ["single"]
    for task, rows in summary.per_length.items():
        for row in rows:
            if row["answered"] and (several or row["answered"] > 1):
                rate = (f"{row['passes']}/{row['answered']} PASS, {interval_text(row['low'], row['high'])}, "
                        f"{row['decision']}")
                score = f", mean score {row['mean_score']:.2f}" if row["mean_score"] is not None else ""
                print(f"{task + ' ' if several else ''}{row['length']:,}: {rate}{score}")
    for task, verdict in summary.verdicts.items():
        print(f"{task + ': ' if several else ''}{verdict['text']}")
    sent, computed = summary.prefill_tokens_sent, summary.prefill_tokens_computed
    if sent:
        print(
            f"prefill this run: {computed:,} tokens computed (primers included) for {sent:,} prompt tokens sent; "
            f"prefix reuse saved {(sent - computed) / sent:.0%} against sending each cell cold "
            f"(the previous prompts left {summary.prefill_tokens_reusable:,} tokens to reuse)"
        )
    print(f"results: {summary.results_path}\nreport:  {summary.report_dir}")
    return summary.exit_code
