"""`niah check`: does every slot of a running llama-server have the context a test needs, and does
its rope stretch the model the way its flags mean?"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import answer_budget, parse_length
from niah.cli.run import add_answer_options
from niah.errors import EXIT_LAUNCH_INVALID, EXIT_ROPE_MISMATCH, NiahError
from niah.launch.api_key import api_key

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.launch.preflight import PreflightReport
    from niah.launch.rope_check import RopeVerdict
    from niah.launch.session import ServerSession

PROBE_OUT = Path("runs") / "yarn-probe"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "check",
        help="preflight a running server: per-slot context vs. what a test needs, and its rope",
        description="Exit 0 when every slot of the server at URL has at least CONTEXT + ANSWER_BUDGET "
        "tokens, 3 with the numbers and the likely cause when not, 3 when unreachable. Given the server's "
        "flags (--server-args) or its log at -lv 4, also the rope llama.cpp uses against what the flags mean "
        "(exit 5 on a mismatch, with the fix). --yarn-probe asks the server and a reference launch of --model "
        "without rope scaling the same short prompt and compares their log-probabilities. "
        "Example: niah check --url http://127.0.0.1:8080 --context 1010000 --model m.gguf "
        "--server-args \"-c 1010000 --rope-scaling yarn --rope-scale 3.853 --yarn-orig-ctx 262144\"",
    )
    parser.add_argument("--url", required=True, help="the llama-server base URL")
    parser.add_argument("--context", required=True, help="prompt length to test, e.g. 1010000 or 131k")
    add_answer_options(parser)
    parser.add_argument("--log", type=Path, help="the server's log file, for the cause of a clamp (and its rope at -lv 4)")
    parser.add_argument("--model", type=Path, help="the GGUF the server loaded (default: its /props model_path, when readable here)")
    parser.add_argument("--server-args", help="the server's command line or flags, for llama-fit-params' read-back of its rope")
    parser.add_argument("--yarn-probe", action="store_true", help="A/B probe: do the YaRN flags change the model's output?")
    parser.add_argument("--probe-out", type=Path, help="folder for the probe's log-probabilities and the reference's log "
                        f"(default {PROBE_OUT})")
    parser.add_argument("--probe-args", default="", help="flags that put the probe's reference on another device "
                        "(e.g. \"-ngl 0\" for the CPU beside a GPU server); a second reference with the server's own "
                        "flags (--server-args) then runs there too, and the server counts as stretched when it is nearer that one")
    parser.add_argument("--server-bin", help="llama-server binary (llama-fit-params beside it) for the read-back and the reference")
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
        rope = rope_check(args, report, needed)
        probe_ok = probe_command(args, session, report) if args.yarn_probe else True
    if report.verdict != "OK":
        return EXIT_LAUNCH_INVALID
    return 0 if (rope is None or not rope.problems) and probe_ok else EXIT_ROPE_MISMATCH


def check_model(args: argparse.Namespace, report: PreflightReport) -> tuple[Path | None, GGUFFacts | None]:
    """The server's model file and header facts: --model, else -m in --server-args, else /props'."""
    from niah.launch.gguf_meta import read_gguf_facts
    from niah.launch.rope_check import server_flags

    model = args.model
    if model is None and args.server_args:
        named = server_flags(args.server_args)[1]
        model = Path(named) if named else None
    if model is None and report.model_facts is not None:
        return Path(report.model_facts.path), report.model_facts
    return (model, read_gguf_facts(model)) if model is not None else (None, None)


def rope_check(args: argparse.Namespace, report: PreflightReport, needed: int) -> RopeVerdict | None:
    """The rope verdict when the server's flags or log can tell it, printed; None (said why) otherwise."""
    from niah.launch.rope_check import check_server_rope, server_flags

    model, facts = check_model(args, report)
    if model is None or facts is None:
        if args.server_args or args.yarn_probe:
            raise NiahError("the rope check needs the model file: give --model GGUF")
        return None
    argv = server_flags(args.server_args)[0] if args.server_args else None
    log_text = None
    if args.log is not None:
        try:
            log_text = args.log.read_text(errors="replace")
        except OSError as exc:
            raise NiahError(f"cannot read --log {args.log}: {exc.strerror or exc}") from None
    try:
        verdict = check_server_rope(facts, model, argv, log_text, needed, args.server_bin)
    except ValueError as exc:
        print(f"niah: rope not checked: {exc}", flush=True)
        return None
    for line in verdict.lines():
        print(f"niah: {line}", flush=True)
    return verdict


def probe_command(args: argparse.Namespace, session: ServerSession, report: PreflightReport) -> bool:
    """The YaRN A/B probe (niah.launch.yarn_probe): ask the running server, then a reference launch of
    the model without rope scaling (on this machine, after it), the same prompt; with --probe-args (a
    reference on another device) also one with the server's own flags there. True when the flags act."""
    from niah.launch.rope_check import server_flags
    from niah.launch.yarn_probe import (
        NO_EFFECT_BELOW,
        ProbeResult,
        ask,
        distance,
        probe_prompt,
        reference_answer,
        reference_args,
        write_result,
    )

    model, _ = check_model(args, report)
    if model is None:
        raise NiahError("--yarn-probe needs the model file for its reference launch: give --model GGUF")
    try:
        extra = shlex.split(args.probe_args or "")
    except ValueError as exc:
        raise NiahError(f"--probe-args: {exc}") from None
    flags = server_flags(args.server_args)[0] if args.server_args else []
    if extra and not flags:
        raise NiahError("a reference on another device (--probe-args) is read against a second one with the "
                        "server's own flags there: give --server-args")
    prompt = probe_prompt(session)
    launch = ask(session, prompt)
    out_dir = args.probe_out or PROBE_OUT
    print(f"niah: yarn probe: reference launch without rope scaling (logs and answers in {out_dir}/) ...", flush=True)
    plain, _, seconds = reference_answer(model, [*reference_args(flags, len(prompt)), *extra], out_dir, prompt,
                                         args.server_bin)
    stretched = None
    if extra:
        print("niah: yarn probe: reference launch with the server's flags on the same device ...", flush=True)
        stretched, _, more = reference_answer(model, [*reference_args(flags, len(prompt), stretched=True), *extra],
                                              out_dir, prompt, args.server_bin, "yarn-stretched")
        seconds += more
    result = ProbeResult(distance(launch, plain), NO_EFFECT_BELOW, launch, plain, seconds, stretched)
    print(f"niah: {write_result(result, out_dir).line()}", flush=True)
    return result.applied
