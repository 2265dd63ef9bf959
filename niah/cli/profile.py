"""`niah profile list|show`: the shipped launch profiles, and a profile as a pasteable command line."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict
from pathlib import Path

from niah.cells import answer_budget
from niah.cli.run import add_answer_options
from niah.errors import NiahError
from niah.launch.gguf_meta import GGUFFacts, read_gguf_facts
from niah.launch.memory import MemoryEstimate, project
from niah.launch.profiles import LaunchPlan, list_profiles, load_profile, plan_launch
from niah.launch.rope_check import RopeVerdict, verify_launch
from niah.launch.rpc import RPC_WARNING, split_lines, split_memory
from niah.launch.server import find_server_binary
from niah.launch.yarn import factor_label

PLACEHOLDER_MODEL = "MODEL.gguf"
SHOW_EXAMPLE = "niah profile show yarn-1m --native-context 262144 --arch qwen35"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "profile",
        help="list launch profiles, or show one as a llama-server command line",
        description=f"Launch profiles name the longest prompt a launch tests; the flags give every slot that plus "
        f"the answer budget. Example: {SHOW_EXAMPLE}",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    lister = actions.add_parser("list", help="the shipped profiles", description="List the shipped profiles.")
    lister.set_defaults(func=list_command)
    shower = actions.add_parser(
        "show",
        help="the full llama-server command and memory estimate",
        description=f"Print the llama-server command line (shell-quoted) and a memory estimate. Example: {SHOW_EXAMPLE}",
    )
    shower.add_argument("profile", help="a shipped profile name or a .toml file")
    shower.add_argument("--model", type=Path, help="the GGUF file: its header gives arch, native context, shape")
    shower.add_argument("--native-context", type=int, help="native context when no --model is given")
    shower.add_argument("--arch", help="GGUF architecture (e.g. qwen35) when no --model is given")
    shower.add_argument("--server-bin", help="llama-server binary to put first (default: the one niah finds)")
    shower.add_argument("--port", type=int, default=8080, help="port in the printed command (default 8080)")
    shower.add_argument("--json", action="store_true", help="argv, plan and estimate as JSON")
    add_answer_options(shower)
    shower.set_defaults(func=show_command)


def list_command(args: argparse.Namespace) -> int:
    rows = [("NAME", "LONGEST PROMPT", "FACTOR", "SLOTS", "KV K/V", "DESCRIPTION")]
    for p in list_profiles():
        factor = factor_label(p.context, p.native_context) if p.native_context else "-"
        rows.append((p.name, f"{p.context:,}", factor, str(p.parallel), f"{p.cache_type_k}/{p.cache_type_v}", p.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def _binary(explicit: str | None) -> str:
    try:
        return str(find_server_binary(explicit))
    except NiahError:
        if explicit:
            raise
        return "llama-server"


def _memory(plan: LaunchPlan, model: Path | None, binary: str) -> MemoryEstimate | None:
    """llama-fit-params' projection with the profile's flags when there is a model file, else the formula."""
    server = Path(binary) if Path(binary).is_file() else None
    return project(plan.memory, model, server, plan.args)


def full_argv(plan: LaunchPlan, binary: str, model: Path | None, port: int) -> list[str]:
    """The whole llama-server command: binary, -m, loopback host and port, then the profile's flags."""
    argv = [binary]
    if model is not None:
        argv += ["-m", str(model)]
    return [*argv, "--host", "127.0.0.1", "--port", str(port), *plan.args]


def _rope(plan: LaunchPlan, model: Path | None, facts: GGUFFacts | None, server_bin: str | None) -> RopeVerdict | str | None:
    """llama.cpp's read-back of the launch checked against its intent (with a model file), or why not."""
    if model is None or plan.intent is None:
        return None
    try:
        return verify_launch(plan.intent, model, plan.args, facts, server_bin)
    except (ValueError, NiahError) as exc:
        return f"rope read-back unavailable: {exc}"


def show_command(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    facts = read_gguf_facts(args.model) if args.model else None
    if args.native_context is not None and args.native_context <= 0:
        raise NiahError("--native-context must be a positive number of tokens")
    plan = plan_launch(profile, facts, args.native_context, args.arch, answer_budget(args.answer_budget, args.thinking))
    binary = _binary(args.server_bin)
    memory = _memory(plan, args.model, binary)
    rope = _rope(plan, args.model, facts, args.server_bin)
    if args.json:
        data = plan_json(plan, full_argv(plan, binary, args.model, args.port), memory, facts)
        data["rope"] = rope.as_json() if isinstance(rope, RopeVerdict) else rope
        print(json.dumps(data, indent=2))
        return 0
    argv = full_argv(plan, binary, args.model or Path(PLACEHOLDER_MODEL), args.port)
    print(f"# {profile.name}: {profile.description or profile.source}")
    for line in plan_lines(plan, memory, facts):
        print(f"# {line}")
    for line in rope.lines() if isinstance(rope, RopeVerdict) else [rope] if rope else []:
        print(f"# {line}")
    if args.model is None:
        print(f"# replace {PLACEHOLDER_MODEL} with your model file")
    print(shlex.join(argv))
    return 0


def plan_lines(plan: LaunchPlan, memory: MemoryEstimate | None, facts: GGUFFacts | None = None) -> list[str]:
    """What the launch should serve and what it costs, as comment lines."""
    profile = plan.profile
    budget = plan.slot_context - profile.context
    target = (
        f"prompts up to {profile.context:,} tokens + {budget:,} answer tokens = per-slot target "
        f"{plan.slot_context:,} × {profile.parallel} slot(s); -c {plan.ctx_size:,}"
    )
    lines = [target]
    if plan.predicted_slot_context is not None and plan.native_context:
        detail = (
            f" (YaRN: {plan.rope_scale} × {plan.native_context:,}, truncated, caps each slot)"
            if plan.rope_scale
            else ""
        )
        verdict = "OK" if plan.predicted_slot_context >= plan.slot_context else "CLAMPED"
        lines.append(
            f"llama-server should serve {plan.predicted_slot_context:,} per slot{detail}: {verdict}; "
            f"factor {factor_label(plan.predicted_slot_context, plan.native_context)}"
        )
    if memory is None:
        lines.append("memory: unknown (give --model GGUF, or --arch with a known shape)")
    else:
        lines.append("memory:")
        lines += [f"  {line}" for line in memory.lines()]
        if memory is not plan.memory and plan.memory is not None and memory.source != plan.memory.source:
            lines.append("memory by niah's formula:")
            lines += [f"  {line}" for line in plan.memory.lines()[1:]]
    return lines + split_lines(profile, memory, facts)


def plan_json(
    plan: LaunchPlan, argv: list[str], memory: MemoryEstimate | None, facts: GGUFFacts | None = None
) -> dict[str, object]:
    profile = plan.profile
    split = [asdict(s) for s in split_memory(profile, memory, facts)] if memory and (profile.rpc or profile.tensor_split) else None
    return {
        "profile": plan.profile.name,
        "argv": argv,
        "context": plan.profile.context,
        "slot_context": plan.slot_context,
        "parallel": plan.profile.parallel,
        "native_context": plan.native_context,
        "arch": plan.arch,
        "rope_scale": plan.rope_scale,
        "predicted_slot_context": plan.predicted_slot_context,
        "memory": None if memory is None else {**memory.as_json(), "per_device": split},
        "memory_formula": None if plan.memory is None else plan.memory.as_json(),
        "rpc": list(profile.rpc),
        "warning": RPC_WARNING if profile.rpc else None,
    }
