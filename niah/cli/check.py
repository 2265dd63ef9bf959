"""`niah check`: does every slot of a running llama-server have the context a test needs?"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import answer_budget, parse_length
from niah.cli.run import add_answer_options
from niah.errors import EXIT_LAUNCH_INVALID
from niah.launch.api_key import api_key

if TYPE_CHECKING:
    from niah.launch.preflight import PreflightReport



def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "check",
        help="preflight a running server: per-slot context vs. what a test needs",
        description="Exit 0 when every slot of the server at URL has at least CONTEXT + ANSWER_BUDGET "
        "tokens, 3 with the numbers and the likely cause when not, 3 when unreachable. "
        "Example: niah check --url http://127.0.0.1:8080 --context 1010000",
    )
    parser.add_argument("--url", required=True, help="the llama-server base URL")
    parser.add_argument("--context", required=True, help="prompt length to test, e.g. 1010000 or 131k")
    add_answer_options(parser)
    parser.add_argument("--log", type=Path, help="the server's log file, for the cause of a clamp")
    parser.add_argument("--api-key", help="server API key (default $NIAH_API_KEY)")
    parser.set_defaults(func=check_command)


def print_report(report: PreflightReport) -> None:
    """The verdict line, then the log lines that explain it."""
    print(f"niah: preflight {report.summary()}", flush=True)
    for line in report.evidence:
        print(f"  log: {line}")


def check_command(args: argparse.Namespace) -> int:
    from niah.launch.preflight import preflight
    from niah.launch.session import ServerSession, ServerSpec

    needed = parse_length(args.context) + answer_budget(args.answer_budget, args.thinking)
    with ServerSession(ServerSpec(url=args.url, api_key=api_key(args.api_key))) as session:
        report = preflight(session, needed, args.log)
    print_report(report)
    return 0 if report.verdict == "OK" else EXIT_LAUNCH_INVALID
