"""The card's Reproduce section: the `niah run` command for a run's grid and settings (`niah.publish.card`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pandas as pd

from niah.cells import ANSWER_BUDGET, SHARED, THINKING_ANSWER_BUDGET
from niah.publish.card.screen import confirmed_pairs
from niah.publish.filenames import file_names
from niah.publish.results import SINGLE_TASK
from niah.publish.runs import tasks_of
from niah.publish.verdict import TrialPolicy, default_max_trials, policy_of


def reproduce(df: pd.DataFrame, fp: dict[str, Any], model: str) -> str:
    """The `niah run` command that runs the same grid with the same settings."""
    lengths = sorted(df["length"].unique())
    depths = sorted(df["depth"].unique())
    trials = int(df["trial"].max()) + 1
    policy = policy_of(fp)
    profiles = df.groupby("length")["profile"].first()
    args = ["niah run"]
    if fp.get("launches") and profiles.notna().all():
        args.append(f"--model {model}")
        if profiles.nunique() == 1:
            args.append(f"--profile {file_names(str(profiles.iloc[0]))}")
        else:
            args.append("--profile-for-length " + ",".join(f"{n}={file_names(str(p))}" for n, p in profiles.items()))
    else:
        args.append("--url <your llama-server>")
    args += [f"--lengths {','.join(map(str, lengths))}", f"--depths {','.join(f'{d:g}' for d in depths)}"]
    if policy.auto:
        args.append("--trials auto")
    elif trials != 1:
        args.append(f"--trials {trials}")
    default = TrialPolicy(max_trials=default_max_trials(policy.clusters))
    args += [f"--{k.replace('_', '-')} {v}" for k, v in asdict(policy).items()
             if k in ("pass_rate", "max_trials") and v != getattr(default, k)]
    tasks = tasks_of(df)
    if fp.get("haystack") == SHARED:
        args.append("--haystack shared" + confirm_flag(df))
    elif tasks != [SINGLE_TASK]:
        files = fp.get("task_files") if isinstance(fp.get("task_files"), dict) else {}
        names = [file_names(str(files[t].get("file"))) if t in files else t for t in tasks]
        args.append(f"--task {','.join(names)}")
    args += option_flags(fp)
    args.append("--out runs/reproduce")
    untested = "" if len(df.groupby(["length", "depth"])) == len(lengths) * len(depths) else (
        "Cells marked `-` were not run; the command runs them too.\n"
    )
    body = " \\\n    ".join(args)
    return f"```sh\n{body}\n```\n{untested}"


def option_flags(fp: dict[str, Any]) -> list[str]:
    """`niah run` flags for the header's settings that differ from the defaults."""
    flags = []
    for key, flag, default in (("tokenizer", "--tokenizer", "auto"), ("corpus", "--corpus", "builtin"),
                               ("needle_seed", "--seed", 0), ("thinking", "--thinking", "off"),
                               ("temperature", "--temperature", 0.0)):
        if key in fp and fp[key] != default:
            flags.append(f"{flag} {file_names(str(fp[key]))}")
    spec = fp.get("needle_spec")
    if spec not in (None, "default"):
        flags.append(f"--needle {file_names(str(spec.get('file') if isinstance(spec, dict) else spec))}")
    default_budget = THINKING_ANSWER_BUDGET if fp.get("thinking") == "on" else ANSWER_BUDGET
    if isinstance(fp.get("answer_budget"), int) and (fp.get("answer_budget_explicit") or fp["answer_budget"] != default_budget):
        flags.append(f"--answer-budget {fp['answer_budget']}")
    if fp.get("cache_reuse") is False:
        flags.append("--no-cache-reuse")
    return flags


def confirm_flag(df: pd.DataFrame) -> str:
    """` --confirm` when the screen's cells were confirmed, ` --confirm all` when a confirmed cell had
    passed the screen (only `all` confirms those), else nothing."""
    pairs = confirmed_pairs(df)
    if pairs.empty:
        return ""
    return " --confirm all" if (pairs["outcome"] == "PASS").any() else " --confirm"
