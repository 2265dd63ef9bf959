"""`card.md`: a run's matrix and methodology as one markdown block to paste into a model card.

Built from the tidy cell frame and the results header alone. Whatever the header does not
hold is written as "not recorded". Only file names are printed, never folders of the
user's disk (`file_names`), and API keys are masked (`results.redact`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from niah.card_reproduce import reproduce
from niah.card_shared import confirmations, shared_meaning
from niah.card_tasks import task_budgets, task_example
from niah.cells import SHARED_SUFFIX
from niah.filenames import file_names
from niah.grid import grid_markdown, joined
from niah.needles import DEFAULT_INTRO, DEFAULT_NEEDLE, DEFAULT_QUESTION
from niah.results import NAMED_OUTCOMES, redact
from niah.runs import (
    SINGLE_TASK,
    draft_acceptance,
    draft_markdown,
    length_table,
    load_run,
    task_verdicts,
    tasks_of,
    total,
    with_tasks,
)
from niah.stats import ANSWERED_OUTCOMES
from niah.tasks import AROUND
from niah.verdict import Verdict, policy_of

CARD_NAME = "card.md"
NOT_RECORDED = "not recorded"
OUTCOME_MEANING = {
    "WRONG_KEY": "the answer held a value planted for another key, not (only) the asked one",
    "CLAMPED": "the server's per-slot context was below the prompt + answer budget; never sent",
    "CONTEXT_ERROR": "the server refused the prompt as too long",
    "TRUNCATED": "the answer budget ran out before the needle appeared",
    "TIMEOUT": "the stream stalled past the stall timeout",
    "CRASH": "llama-server died",
    "HTTP_ERROR": "the request failed",
    "TOKEN_MISMATCH": "the server counted a different prompt length; never scored",
}
def write_card(target: Path, out_dir: Path | None = None) -> Path:
    """Write `card.md` for the run at `target` (folder or results file) into `out_dir` (default: the run's folder)."""
    run = load_run(Path(target))
    out = Path(out_dir) if out_dir is not None else run.results_path.parent
    out.mkdir(parents=True, exist_ok=True)
    path = out / CARD_NAME
    path.write_text(render_card(run.cells, run.header, run.fingerprint), encoding="utf-8")
    return path


def render_card(df: pd.DataFrame, header: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The card's markdown: grid(s), legend, method, launches, per-length rates, reproduce command.
    `fingerprint` is the run's, with the server facts recorded after the header (`read_facts`)."""
    df = with_tasks(df)
    fp = redact(fingerprint)
    model = _model_name(fp)
    confirmed = confirmations(df)
    parts = [f"## Needle in a haystack: {model}\n", _intro(fp, tasks_of(df) != [SINGLE_TASK]), *_grids(df),
             *([confirmed] if confirmed else []), _legend(df)]
    parts += ["### Method\n", "\n".join(_method(df, fp, header)) + "\n"]
    parts += ["### Launches\n", _launches(df, fp)]
    verdicts = task_verdicts(df, fp)
    parts += ["### Per length\n", _verdict_lines(verdicts), _per_length(df, verdicts)]
    drafts = draft_markdown(draft_acceptance(df))
    if drafts:
        parts += ["### MTP acceptance by context length\n", drafts]
    parts += ["### Reproduce\n", reproduce(df, fp, model)]
    return "\n".join(parts)


def _intro(fp: dict[str, Any], tasks: bool = False) -> str:
    what = (
        "one grid per task, each prompt planting one fact or several in a haystack of filler text and "
        "asking for one or all of them (see Tasks below)"
        if tasks else "each prompt plants one fact in a haystack of filler text and asks for it back"
    )
    return (
        f"Needle retrieval measured with niah {fp.get('niah', '?')}: {what}. Each grid has one row per "
        "prompt length (tokens as llama-server counts the whole chat request) and one column per needle "
        "depth (where the asked fact sits, in % of the haystack).\n"
    )


def _grids(df: pd.DataFrame) -> list[str]:
    tasks = tasks_of(df)
    blocks = []
    for task in tasks:
        title = f"Task `{task}`:\n\n" if len(tasks) > 1 or task != SINGLE_TASK else ""
        blocks.append(f"{title}```text\n{grid_markdown(df[df['task'] == task])}```\n")
    return blocks


def _legend(df: pd.DataFrame) -> str:
    present = [o for o in NAMED_OUTCOMES if o in set(df["outcome"])]
    lines = [("`PASS` / `FAIL`: the answer did / did not contain the needle; `k/n`: k of the n answered trials "
              "passed (PASS, FAIL, WRONG_KEY and TRUNCATED count in n); `-`: not tested.")]
    lines += [f"`{o}`: {OUTCOME_MEANING[o]} ({'counted as not retrieved' if o in ANSWERED_OUTCOMES else 'not a retrieval result'})."
              for o in present]
    return " ".join(lines) + "\n"


def _method(df: pd.DataFrame, fp: dict[str, Any], header: dict[str, Any]) -> list[str]:
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
    requests = _duration(total(df["wall_s"]))
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
        (f"- **Trials:** {trial_text} per cell, {len(df)} cells in all; the 95% Wilson score interval "
        f"of the pass rate is given per length below (depths pooled). Verdict: {policy_of(fp).describe()}."),
        (f"- **Wall time:** {requests} in requests; {_span(df, header)} from the results header to the "
        "last cell (server starts included)."),
    ]


def _tokenizer_name(spec: str) -> str:
    """A tokenizer spec as the card names it: a file name, or the server's own for `server:URL` (a
    launch's address is gone once the run ends)."""
    if spec == "server" or spec.startswith("server:"):
        return "the server's own tokenizer (llama-server's /tokenize)"
    return f"`{file_names(spec)}`"


def _model_name(fp: dict[str, Any]) -> str:
    model = fp.get("model")
    if isinstance(model, dict) and model.get("file"):
        return file_names(str(model["file"]))
    server = fp.get("server")
    if isinstance(server, dict) and server.get("model_path"):
        return file_names(str(server["model_path"]))
    return "model " + NOT_RECORDED


def _model_line(fp: dict[str, Any]) -> str:
    model = fp.get("model") if isinstance(fp.get("model"), dict) else {}
    name = _model_name(fp)
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


def _launches(df: pd.DataFrame, fp: dict[str, Any]) -> str:
    launches = fp.get("launches") if isinstance(fp.get("launches"), dict) else {}
    model = _model_name(fp)
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
    return "\n".join(lines) + "\n" + (note if launches else "")


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


def _verdict_lines(verdicts: dict[str, Verdict]) -> str:
    """The effective length of each task, and every length that clears after a shorter one did not."""
    if len(verdicts) == 1:
        text = next(iter(verdicts.values())).text()
        return f"**{text[0].upper()}{text[1:]}.**\n"
    return "\n".join(f"**`{task}`: {v.text()}.**\n" for task, v in verdicts.items())


def _per_length(df: pd.DataFrame, verdicts: dict[str, Verdict]) -> str:
    several = len(tasks_of(df)) > 1
    policy = next(iter(verdicts.values())).policy
    own = policy.interval != "wilson" or policy.clusters != "independent"  # the verdict's interval is not Wilson's
    head = ["task"] if several else []
    head += ["length", "factor", "cells", "PASS/answered", "pass rate (95% Wilson)", f"vs {policy.pass_rate:.1%}",
             "other outcomes",
             "prefill tok/s", "decode tok/s", "prompt cache reused", "wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rates = length_table(df).set_index(["task", "length"])
    decided = {(task, v.length): v for task, verdict in verdicts.items() for v in verdict.lengths}
    for (task, length), group in df.groupby(["task", "length"], sort=True):
        r = rates.loc[(task, length)]
        rate = f"{r['pass_rate']:.0%} ({r['wilson_low']:.0%}–{r['wilson_high']:.0%})" if r["answered"] else "-"
        others = ", ".join(o.replace(":", " ") for o in r["other"].split(",") if o)
        computed, cached = total(group["prompt_n"]), total(group["cache_n"])
        row = [task] if several else []
        v = decided[(task, length)]
        row += [f"{length:,}", joined(group["factor"]), str(len(group)), f"{r['passes']}/{r['answered']}", rate,
                v.decision + (f" ({v.low:.0%}–{v.high:.0%})" if own else ""), others or "-",
                _rate(computed, total(group["prompt_ms"])), _rate(total(group["predicted_n"]), total(group["predicted_ms"])),
                f"{cached / (cached + computed):.0%}" if cached + computed else "-",
                _duration(total(group["wall_s"]))]
        lines.append("| " + " | ".join(row) + " |")
    note = ("\nanswered = cells the model answered: PASS, FAIL, WRONG_KEY (another key's value), or TRUNCATED "
            "(the answer budget ran out before the needle, so it was not retrieved); the pass rate is over those. prefill tok/s = prompt tokens "
            "computed ÷ prefill time (tokens reused from the prompt cache excluded); decode tok/s = tokens "
            "generated ÷ generation time; both as llama-server timed them.\n")
    return "\n".join(lines) + "\n" + note


def _span(df: pd.DataFrame, header: dict[str, Any]) -> str:
    try:
        start = pd.Timestamp(header["created"])
        end = pd.to_datetime(df["finished"].dropna()).max()
    except (KeyError, ValueError, TypeError):
        return NOT_RECORDED
    if pd.isna(end):
        return NOT_RECORDED
    return _duration((end - start).total_seconds())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _rate(tokens: float, ms: float) -> str:
    return f"{tokens / ms * 1000:.1f}" if ms and tokens else "-"


def _on_off(value: Any) -> str:
    return NOT_RECORDED if value is None else ("on" if value else "off")
