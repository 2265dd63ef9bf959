"""The card's Method and Launches sections: how a run was made, read back from its results header
and recorded cells (model file, server, tokenizer, template, corpus, needle, each task's sentences and
answer budget, generation, trials, wall time; each launch's command and the context it served)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from niah.cells import BUDGET_PER_EXTRA_ANSWER, SHARED_SUFFIX
from niah.errors import NiahError
from niah.prompts.needles import DEFAULT_INTRO, DEFAULT_NEEDLE, DEFAULT_QUESTION
from niah.prompts.tasks import AROUND, parse_task
from niah.publish.card.screen import shared_meaning
from niah.publish.filenames import file_names
from niah.publish.grid import joined
from niah.publish.runs import SINGLE_TASK, tasks_of, total
from niah.publish.stats import METHOD
from niah.publish.verdict import policy_of

NOT_RECORDED = "not recorded"
TASK_MEANING = {
    "multikey": "{n} keyed numbers planted (\"The special magic number for KEY is: N.\"), one key asked; "
    "the other {m} are distractors within {around:g}% of the target's depth, before and after it, their "
    "keys sharing no word with the asked one; PASS = the asked number and no other planted one",
    "multivalue": "one key with {n} numbers, the target at the depth and the rest at seeded depths; "
    "PASS = all {n} numbers",
    "multiquery": "{n} keyed numbers, all {n} keys asked at once; PASS = all {n} numbers",
    "chain": "variable tracking: \"VAR A = N.\" at the depth, then {m} hops \"VAR B = VAR A.\" after it, and "
    "a distractor chain of as many hops from another number at a seeded depth; asked which variables hold N; "
    "PASS = all {n} names and none of the distractor chain's",
}


def task_budgets(df: pd.DataFrame, fp: dict[str, Any]) -> dict[str, int]:
    """Each task's answer budget: `--answer-budget` for every task when one was given, else the
    default plus BUDGET_PER_EXTRA_ANSWER per expected value past the first (the values each cell
    recorded in `needle_value`, comma-joined). Empty when the run recorded no budget."""
    base = fp.get("answer_budget")
    if not isinstance(base, int):
        return {}
    budgets = {}
    for task, group in df.groupby("task"):
        answers = max((len(v.split(",")) for v in group["needle_value"] if isinstance(v, str) and v), default=1)
        budgets[str(task)] = base if fp.get("answer_budget_explicit") else base + BUDGET_PER_EXTRA_ANSWER * (answers - 1)
    return budgets


def task_example(df: pd.DataFrame, fp: dict[str, Any], task: str) -> tuple[str, bool]:
    """The task's first cell (shortest length, lowest depth, trial 0) as an example: every sentence it
    planted with its role and depth, then its question (empty when the cells recorded no sentences);
    and whether today's generator makes those same sentences from the recorded seed."""
    cells = df[df["task"] == task].sort_values(["length", "depth", "trial"])
    first = cells.iloc[0]
    planted = first["planted"] if isinstance(first["planted"], list) else []
    if not planted:
        return "", False
    sentences = ", ".join(f"\"{p['text']}\" ({p.get('role', 'target')}, {float(p.get('depth_actual', p.get('depth', 0))):.0f}%)"
                          for p in planted)
    question = _question(fp, task, first, planted)
    asked = f"; asked \"{question}\"" if question else "; its question is not recorded"
    return (f"at {int(first['length']):,} tokens, depth {float(first['depth']):g}%, trial {int(first['trial'])}: "
            f"planted {sentences}{asked}"), question is not None


def _question(fp: dict[str, Any], task: str, cell: pd.Series, planted: list[dict[str, Any]]) -> str | None:
    """The cell's question, regenerated from the recorded seed; None unless the regenerated sentences
    are the recorded ones (another niah, a custom needle or task file: not known here)."""
    seed = fp.get("needle_seed")
    if not isinstance(seed, int) or (task == SINGLE_TASK and fp.get("needle_spec") not in (None, "default")):
        return None
    try:
        needle = parse_task(task).needle(seed, int(cell["length"]), float(cell["depth"]), int(cell["trial"]))
    except NiahError:
        return None
    texts = [p.text for p in needle.plants] or [needle.text]
    return needle.question if sorted(texts) == sorted(str(p.get("text")) for p in planted) else None


def method_lines(df: pd.DataFrame, fp: dict[str, Any], header: dict[str, Any]) -> list[str]:
    sent = df[df["prompt_tokens_served"].notna()]
    exact = int((sent["prompt_tokens_served"] == sent["length"]).sum())
    trials = df.groupby(["task", "length", "depth"])["trial"].count()
    trial_text = f"{trials.min()}" if trials.min() == trials.max() else f"{trials.min()}–{trials.max()}"
    tokenizer = _tokenizer_name(str(fp.get("tokenizer", NOT_RECORDED)))
    if fp.get("tokenizer") == "auto":
        tokenizer += " (Qwen3.6's own when the server's vocabulary is Qwen3.6's, else the server's /tokenize)"
    if fp.get("tokenizer_resolved"):
        tokenizer += f", resolved to {_tokenizer_name(str(fp['tokenizer_resolved']))}"
    corpus = f"`{file_names(str(fp.get('corpus', NOT_RECORDED)))}`"
    if fp.get("corpus_about"):
        corpus += f", {fp['corpus_about']}"
    elif fp.get("corpus") == "builtin":
        corpus += ", generated English essays without digits (the built-in corpus before it carried numbers)"
    if fp.get("corpus_sha256"):
        corpus += f", sha256 `{fp['corpus_sha256']}`"
    generation = (
        f"temperature {fp.get('temperature', NOT_RECORDED)}, thinking {fp.get('thinking', NOT_RECORDED)}, "
        f"answer budget {fp.get('answer_budget', NOT_RECORDED)} tokens"
        f"{' (--answer-budget, every task)' if fp.get('answer_budget_explicit') else ''}, "
        f"prompt-cache reuse {_on_off(fp.get('cache_reuse'))}"
    )
    requests = duration(total(df["wall_s"]))
    tasks = tasks_of(df)
    only_single = tasks == [SINGLE_TASK]
    return [
        f"- **Model file:** {_model_line(fp)}",
        f"- **llama-server:** {_server_version(fp)}",
        (f"- **Tokenizer:** {tokenizer}; every prompt was counted by llama-server before sending, and "
        f"{exact} of {len(sent)} sent prompts were served at exactly the cell's length (usage.prompt_tokens)."),
        f"- **Chat template:** {_template(fp)}",
        f"- **Haystack:** corpus {corpus}.",
        *([f"- **{'Needle' if only_single else 'Needle (task `single`)'}:** {_needle(fp)}"]
          if SINGLE_TASK in tasks else []),
        *_tasks_line(df, fp),
        f"- **Generation:** {generation}.",
        (f"- **Trials:** {trial_text} per cell, {len(df)} cells in all; the pass rate's {METHOD} is "
        f"given per length below (depths pooled). Verdict: {policy_of(fp).describe()}."),
        (f"- **Wall time:** {requests} in requests; {_span(df, header)} from the results header to the "
        "last cell (server starts included)."),
    ]


def _tokenizer_name(spec: str) -> str:
    """A tokenizer spec as the card names it: a file name, or the server's own for `server:URL` (a
    launch's address is gone once the run ends)."""
    if spec == "server" or spec.startswith("server:"):
        return "the server's own tokenizer (llama-server's /tokenize)"
    return f"`{file_names(spec)}`"


def model_name(fp: dict[str, Any]) -> str:
    model = fp.get("model")
    if isinstance(model, dict) and model.get("file"):
        return file_names(str(model["file"]))
    server = fp.get("server")
    if isinstance(server, dict) and server.get("model_path"):
        return file_names(str(server["model_path"]))
    return "model " + NOT_RECORDED


def _model_line(fp: dict[str, Any]) -> str:
    model = fp.get("model") if isinstance(fp.get("model"), dict) else {}
    name = model_name(fp)
    facts = [f"`{name}`"]
    if model.get("bytes"):
        facts.append(f"{int(model['bytes']):,} bytes")
    facts.append(f"sha256 of the first MiB (GGUF header) `{model['head_sha256']}`" if model.get("head_sha256") else "header hash " + NOT_RECORDED)
    return ", ".join(facts) + "."


def _server_version(fp: dict[str, Any]) -> str:
    """`llama-server --version` of managed launches, or the /props build of a --url server."""
    server = fp.get("server") if isinstance(fp.get("server"), dict) else {}
    version = fp.get("server_version") or server.get("build_info")
    return f"`{' '.join(str(version).split())}`." if version else NOT_RECORDED + "."


def _template(fp: dict[str, Any]) -> str:
    for key in ("template", "chat_template"):
        value = fp.get(key)
        if isinstance(value, dict):
            return ", ".join(f"{k} `{file_names(str(v))}`" for k, v in sorted(value.items())) + "."
        if value:
            return f"`{file_names(str(value))}`."
    for key in ("template_sha256", "chat_template_sha256"):
        if fp.get(key):
            return f"the model's own, rendered by llama-server; sha256 `{fp[key]}`."
    return f"the model's own, rendered by llama-server (/apply-template); its text or hash is {NOT_RECORDED}."


def _needle(fp: dict[str, Any]) -> str:
    seed = f"7-digit values from seed {fp.get('needle_seed', NOT_RECORDED)}, a different one per cell and trial"
    spec = fp.get("needle_spec")
    if spec == "default":
        return (
            f"niah's default. Before the haystack: \"{DEFAULT_INTRO}\" Planted: \"{DEFAULT_NEEDLE}\" "
            f"Asked after it: \"{DEFAULT_QUESTION}\" ({seed})."
        )
    if not spec:
        return f"wording {NOT_RECORDED} ({seed})."
    if isinstance(spec, dict):  # {"file": name, "sha256": hash of its bytes}
        return f"custom needles from `{file_names(str(spec.get('file')))}`, sha256 `{spec.get('sha256')}` ({seed})."
    return f"custom needles from `{file_names(str(spec))}`; its hash is {NOT_RECORDED} ({seed})."


def _tasks_line(df: pd.DataFrame, fp: dict[str, Any]) -> list[str]:
    """The tasks' method lines, one per task: what it plants and asks, its answer budget, its first
    cell as an example (none when the run holds only `single`)."""
    tasks = tasks_of(df)
    if tasks == [SINGLE_TASK]:
        return []
    files = fp.get("task_files") if isinstance(fp.get("task_files"), dict) else {}
    budgets = task_budgets(df, fp)
    lines = [(f"- **Tasks:** values from seed {fp.get('needle_seed', NOT_RECORDED)}, different per cell and trial; "
              "every planted sentence's token offset is recorded; the score is the fraction of expected values "
              "the answer contains. Per task:")]
    for task in tasks:
        kind, _, count = task.partition(":")
        example, regenerates = task_example(df, fp, task)
        if task.endswith(SHARED_SUFFIX):
            example, meaning = "", shared_meaning(df[df["task"] == task])
        elif task == SINGLE_TASK:
            meaning = "one planted fact (the Needle above); PASS = its number"
        elif kind in TASK_MEANING and count.isdigit() and regenerates:
            n = int(count) + (1 if kind == "chain" else 0)
            meaning = TASK_MEANING[kind].format(n=n, m=n - 1, around=AROUND)
        elif kind in TASK_MEANING:
            meaning = ("planted by an earlier niah: today's generator makes other sentences from this seed"
                       if example else "its planted sentences are " + NOT_RECORDED)
        elif task in files:
            meaning = f"custom, from `{file_names(str(files[task].get('file')))}`, sha256 `{files[task].get('sha256')}`"
        else:
            meaning = "custom; its file is " + NOT_RECORDED
        budget = f"; answer budget {budgets[task]} tokens" if task in budgets else ""
        lines.append(f"  - `{task}`: {meaning}{budget}." + (f" Example {example}." if example else ""))
    return lines


def launches(df: pd.DataFrame, fp: dict[str, Any]) -> str:
    launches = fp.get("launches") if isinstance(fp.get("launches"), dict) else {}
    model = model_name(fp)
    budgets = task_budgets(df, fp)
    lines = ["| lengths | profile | factor | command | per-slot context served |", "|---|---|---|---|---|"]
    for profile, group in df.groupby(df["profile"].fillna("-"), sort=False):
        lengths = sorted(group["length"].unique())
        argv = launches.get(profile)
        if isinstance(argv, dict):  # {"argv": [...], ...} when a launch records more than its flags
            argv = argv.get("argv", argv.get("args"))
        if isinstance(argv, list):
            command = " ".join(["llama-server", "-m", model, *(file_names(str(a)) for a in argv)])
            name = f"`{file_names(str(profile))}`"
        else:
            command = "started outside niah (--url); " + NOT_RECORDED
            name = "external server" if str(profile).startswith("url:") else f"`{file_names(str(profile))}`"
        lines.append(
            f"| {', '.join(map(str, lengths))} | {name} | {joined(group['factor'])} | `{command}` | "
            f"{_served(group, budgets)} |"
        )
    note = "\nniah adds `--host 127.0.0.1 --port <free port>` to each command; argv as recorded in the results header.\n"
    return "\n".join(lines) + "\n" + (note if launches else "") + _rope_lines(fp)


def _rope_lines(fp: dict[str, Any]) -> str:
    """llama.cpp's rope read-back of each launch and its verdict, as recorded (runs before it have none)."""
    ropes = fp.get("rope") if isinstance(fp.get("rope"), dict) else {}
    if not ropes:
        return ""
    out = ["\nRope read back from llama.cpp (llama-fit-params on each command, before any prefill):\n"]
    for name, record in sorted(ropes.items()):
        recorded = record.get("lines") if isinstance(record, dict) else None
        if isinstance(recorded, list) and recorded:
            out.append(f"- `{file_names(str(name))}`: {_verbatim(recorded[0])}")
            out += [f"  - {_verbatim(line)}" for line in recorded[1:]]
        else:
            why = record.get("unavailable") if isinstance(record, dict) else None
            out.append(f"- `{file_names(str(name))}`: read-back unavailable ({why or NOT_RECORDED})")
    return "\n".join(out) + "\n"


def _verbatim(line: Any) -> str:
    """A recorded rope line: its label (`rope OK`, a problem's name, `note`) as words, the rest as
    code, since it quotes the flags and the numbers llama.cpp printed as they were."""
    label, _, rest = str(line).strip().replace("`", "'").partition(": ")
    return f"{label}: `{rest}`" if rest else f"`{label}`"


def _served(group: pd.DataFrame, budgets: dict[str, int]) -> str:
    """The served per-slot context against what the launch's cells need: the longest prompt plus its
    task's answer budget, for the task that needs most (named when the launch ran several)."""
    served = sorted({int(v) for v in group["server_n_ctx"].dropna()})
    if not served:
        return NOT_RECORDED
    text = "/".join(f"{v:,}" for v in served)
    longest = group.groupby("task")["length"].max()
    if not budgets:
        return f"{text} (longest prompt {longest.max():,})"
    task = max(longest.index, key=lambda t: (longest[t] + budgets.get(t, 0), t == SINGLE_TASK))
    needed = longest[task] + budgets.get(task, 0)
    verdict = "not clamped" if min(served) >= needed else "CLAMPED"
    whose = f" (`{task}`'s answer budget; {verdict})" if len(longest) > 1 else f" ({verdict})"
    return f"{text} {'≥' if verdict == 'not clamped' else '<'} {longest[task]:,} + {budgets.get(task, 0)}{whose}"


def _span(df: pd.DataFrame, header: dict[str, Any]) -> str:
    try:
        start = pd.Timestamp(header["created"])
        end = pd.to_datetime(df["finished"].dropna()).max()
    except (KeyError, ValueError, TypeError):
        return NOT_RECORDED
    if pd.isna(end):
        return NOT_RECORDED
    return duration((end - start).total_seconds())


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _on_off(value: Any) -> str:
    return NOT_RECORDED if value is None else ("on" if value else "off")
