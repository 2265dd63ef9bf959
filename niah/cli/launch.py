"""`niah launch`: start llama-server from a profile, preflight it, print the verdict, stop (or keep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from niah.cells import answer_budget
from niah.cli.check import print_report
from niah.cli.run import add_answer_options
from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.api_key import api_key


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "launch",
        help="start llama-server from a profile and prove its per-slot context",
        description="Start llama-server for MODEL with a launch profile, wait for it, check that every "
        "slot holds the profile's context plus the answer budget, print the verdict and stop it (--keep leaves it serving "
        "until Ctrl-C). Exit 0 OK, 3 clamped or failed. Example: niah launch tiny-yarn-32k --model m.gguf",
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
    add_answer_options(parser)
    parser.set_defaults(func=launch_command)


def launch_command(args: argparse.Namespace) -> int:
    from niah.launch.gguf_meta import read_gguf_facts
    from niah.launch.preflight import preflight
    from niah.launch.profiles import launch_spec, load_profile
    from niah.launch.session import ServerSession

    if args.port is not None and not 0 < args.port < 65536:
        raise NiahError(f"--port {args.port} is not a TCP port (1 to 65535)")
    profile = load_profile(args.profile)
    budget = answer_budget(args.answer_budget, args.thinking)
    log_dir = args.log_dir or Path("runs") / "launch"
    spec = launch_spec(
        profile, read_gguf_facts(args.model), args.model, log_dir, answer_budget=budget,
        host=args.host,
        port=args.port,
        api_key=api_key(args.api_key),
        server_bin=args.server_bin,
        start_timeout_s=args.timeout,
    )
    if profile.rpc:
        from niah.launch.rpc import RPC_WARNING

        print(f"niah: {RPC_WARNING}", flush=True)
    print(f"niah: starting llama-server for {profile.name} (logs in {log_dir}/) ...", flush=True)
    with ServerSession(spec) as session:
        print(f"niah: command: {session.command}", flush=True)
        print(f"niah: log: {session.log_path}", flush=True)
        report = preflight(session, profile.context + budget)
        print_report(report)
        if report.verdict != "OK":
            return EXIT_LAUNCH_INVALID
        if args.keep:
            print(f"niah: serving at {session.url}; Ctrl-C stops it", flush=True)
            while not session.died(grace_s=1.0):
                pass
            print(f"niah: llama-server exited; see {session.log_path}", flush=True)
            return EXIT_LAUNCH_INVALID
    return 0
