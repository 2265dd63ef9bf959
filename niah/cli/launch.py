"""`niah launch`: start llama-server from a profile, preflight it, print the verdict, stop (or keep)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import answer_budget
from niah.cli.check import print_report
from niah.cli.run import add_answer_options
from niah.errors import EXIT_LAUNCH_INVALID, EXIT_ROPE_MISMATCH, NiahError
from niah.launch.api_key import api_key

if TYPE_CHECKING:
    from niah.launch.session import ServerSession
    from niah.launch.yarn_probe import ProbeAnswer


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "launch",
        help="start llama-server from a profile and prove its per-slot context",
        description="Start llama-server for MODEL with a launch profile, wait for it, check that every "
        "slot holds the profile's context plus the answer budget, print the verdict and stop it (--keep leaves it serving "
        "until Ctrl-C). Before it starts, llama.cpp's read-back of the rope (llama-fit-params on the same flags) is "
        "checked against the profile's intent. Exit 0 OK, 3 clamped or failed, 5 rope mismatch. "
        "Example: niah launch tiny-yarn-32k --model m.gguf",
    )
    parser.add_argument("profile", help="a shipped profile name or a .toml file")
    parser.add_argument("--model", type=Path, required=True, help="the GGUF file")
    parser.add_argument("--port", type=int, help="port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address; anything else needs an API key")
    parser.add_argument("--api-key", help="server API key (default $NIAH_API_KEY)")
    parser.add_argument("--server-bin", help="llama-server binary")
    parser.add_argument("--log-dir", type=Path, help="folder for the server log, PROFILE.N.log (default runs/launch)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the model to load")
    parser.add_argument("--keep", action="store_true", help="keep the server running until Ctrl-C")
    parser.add_argument("--yarn-probe", action="store_true", help="A/B probe first: a reference launch without rope "
                        "scaling answers a short prompt, then the launch; exit 5 when the YaRN flags change nothing")
    add_answer_options(parser)
    parser.set_defaults(func=launch_command)


def launch_command(args: argparse.Namespace) -> int:
    from niah.launch.gguf_meta import read_gguf_facts
    from niah.launch.preflight import preflight
    from niah.launch.profiles import launch_spec, load_profile, plan_launch
    from niah.launch.rope_check import launch_record
    from niah.launch.session import ServerSession

    if args.port is not None and not 0 < args.port < 65536:
        raise NiahError(f"--port {args.port} is not a TCP port (1 to 65535)")
    profile = load_profile(args.profile)
    budget = answer_budget(args.answer_budget, args.thinking)
    log_dir = args.log_dir or Path("runs") / "launch"
    facts = read_gguf_facts(args.model)
    plan = plan_launch(profile, facts, answer_budget=budget)
    launch_record(plan.intent, args.model, plan.args, facts, args.server_bin, profile.name,
                  lambda line: print(f"niah: {line}", flush=True))
    spec = launch_spec(
        profile, facts, args.model, log_dir, answer_budget=budget,
        host=args.host,
        port=args.port,
        api_key=api_key(args.api_key),
        server_bin=args.server_bin,
        start_timeout_s=args.timeout,
    )
    if profile.rpc:
        from niah.launch.rpc import RPC_WARNING

        print(f"niah: {RPC_WARNING}", flush=True)
    if args.yarn_probe and plan.rope_scale is None:
        print(f"niah: yarn probe: {profile.name} does not stretch the model; nothing to probe", flush=True)
    reference = _reference(args, plan.args, log_dir) if args.yarn_probe and plan.rope_scale else None
    print(f"niah: starting llama-server for {profile.name} (logs in {log_dir}/) ...", flush=True)
    with ServerSession(spec) as session:
        print(f"niah: command: {session.command}", flush=True)
        print(f"niah: log: {session.log_path}", flush=True)
        report = preflight(session, profile.context + budget)
        print_report(report)
        if report.verdict != "OK":
            return EXIT_LAUNCH_INVALID
        if reference is not None and not _probe(session, reference, log_dir):
            return EXIT_ROPE_MISMATCH
        if args.keep:
            print(f"niah: serving at {session.url}; Ctrl-C stops it", flush=True)
            while not session.died(grace_s=1.0):
                pass
            print(f"niah: llama-server exited; see {session.log_path}", flush=True)
            return EXIT_LAUNCH_INVALID
    return 0


def _reference(args: argparse.Namespace, launch_args: tuple[str, ...], log_dir: Path) -> tuple[ProbeAnswer, list[int], float]:
    """The probe's reference answer, asked before the launch starts (the two never run side by side)."""
    from niah.launch.yarn_probe import reference_answer, reference_args

    print(f"niah: yarn probe: reference launch without rope scaling first (answers kept in {log_dir}/) ...", flush=True)
    return reference_answer(args.model, reference_args(launch_args, 0), log_dir, None, args.server_bin)


def _probe(session: ServerSession, reference: tuple[ProbeAnswer, list[int], float], log_dir: Path) -> bool:
    from niah.launch.yarn_probe import NO_EFFECT_BELOW, ProbeResult, ask, distance, write_result

    answer, prompt, seconds = reference
    launch = ask(session, prompt)
    result = write_result(ProbeResult(distance(launch, answer), NO_EFFECT_BELOW, launch, answer, seconds), log_dir)
    print(f"niah: {result.line()}", flush=True)
    return result.applied
