"""`card.md`: a run's matrix and methodology as one markdown block to paste into a model card.

Built from the tidy cell frame and the results header alone. Whatever the header does not
hold is written as "not recorded". Only file names are printed, never folders of the
user's disk (`file_names`), and API keys are masked (`results.redact`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from niah.errors import writing_in
from niah.publish.card.method import duration, launches, method_lines, model_name
from niah.publish.card.reproduce import reproduce
from niah.publish.card.screen import confirmations
from niah.publish.grid import grid_markdown, joined
from niah.publish.results import NAMED_OUTCOMES, redact
from niah.publish.runs import (
    SINGLE_TASK,
    confirmation_tasks,
    draft_acceptance,
    draft_markdown,
    length_table,
    load_run,
    task_verdicts,
    tasks_of,
    total,
    with_tasks,
)
from niah.publish.stats import ANSWERED_OUTCOMES, METHOD
from niah.publish.verdict import Verdict

CARD_NAME = "card.md"
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
    path = out / CARD_NAME
    text = render_card(run.cells, run.header, run.fingerprint)
    with writing_in(out):
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def render_card(df: pd.DataFrame, header: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """The card's markdown: grid(s), legend, method, launches, per-length rates, reproduce command.
    `fingerprint` is the run's, with the server facts recorded after the header (`read_facts`)."""
    df = with_tasks(df)
    fp = redact(fingerprint)
    model = model_name(fp)
    confirmed = confirmations(df)
    parts = [f"## Needle in a haystack: {model}\n", _intro(fp, tasks_of(df) != [SINGLE_TASK]), *_grids(df),
             *([confirmed] if confirmed else []), _legend(df)]
    parts += ["### Method\n", "\n".join(method_lines(df, fp, header)) + "\n"]
    parts += ["### Launches\n", launches(df, fp)]
    verdicts = task_verdicts(df, fp)
    judged = df[df["task"].isin(verdicts)]  # a screen's confirmations stand beside it (above), not here
    parts += ["### Per length\n", _verdict_lines(verdicts), _per_length(judged, verdicts)]
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
    """One grid per task; a screen's confirmations last, named as such."""
    tasks, confirms = tasks_of(df), confirmation_tasks(df)
    blocks = []
    for task in [t for t in tasks if t not in confirms] + confirms:
        title = (f"Task `{task}`: the screen's confirmations, one needle per prompt:\n\n" if task in confirms
                 else f"Task `{task}`:\n\n" if len(tasks) > 1 or task != SINGLE_TASK else "")
        blocks.append(f"{title}```text\n{grid_markdown(df[df['task'] == task])}```\n")
    return blocks


def _legend(df: pd.DataFrame) -> str:
    present = [o for o in NAMED_OUTCOMES if o in set(df["outcome"])]
    lines = [("`PASS` / `FAIL`: the answer did / did not contain the needle; `k/n`: k of the n answered trials "
              "passed (PASS, FAIL, WRONG_KEY and TRUNCATED count in n); `-`: not tested.")]
    lines += [f"`{o}`: {OUTCOME_MEANING[o]} ({'counted as not retrieved' if o in ANSWERED_OUTCOMES else 'not a retrieval result'})."
              for o in present]
    return " ".join(lines) + "\n"


def _verdict_lines(verdicts: dict[str, Verdict]) -> str:
    """The effective length of each task, and every length that clears after a shorter one did not."""
    if len(verdicts) == 1:
        text = next(iter(verdicts.values())).text()
        return f"**{text[0].upper()}{text[1:]}.**\n"
    return "\n".join(f"**`{task}`: {v.text()}.**\n" for task, v in verdicts.items())


def _per_length(df: pd.DataFrame, verdicts: dict[str, Verdict]) -> str:
    several = len(tasks_of(df)) > 1
    policy = next(iter(verdicts.values())).policy
    head = ["task"] if several else []
    head += ["length", "factor", "cells", "PASS/answered", f"pass rate ({METHOD})", f"vs {policy.pass_rate:.1%}",
             "other outcomes",
             "prefill tok/s", "decode tok/s", "prompt cache reused", "wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rates = length_table(df, verdicts).set_index(["task", "length"])
    for (task, length), group in df.groupby(["task", "length"], sort=True):
        r = rates.loc[(task, length)]
        rate = f"{r['pass_rate']:.0%} ({r['low']:.1%}–{r['high']:.1%})" if r["answered"] else "-"
        others = ", ".join(o.replace(":", " ") for o in r["other"].split(",") if o)
        computed, cached = total(group["prompt_n"]), total(group["cache_n"])
        row = [task] if several else []
        row += [f"{length:,}", joined(group["factor"]), str(len(group)), f"{r['passes']}/{r['answered']}", rate,
                r["decision"], others or "-",
                _rate(computed, total(group["prompt_ms"])), _rate(total(group["predicted_n"]), total(group["predicted_ms"])),
                f"{cached / (cached + computed):.0%}" if cached + computed else "-",
                duration(total(group["wall_s"]))]
        lines.append("| " + " | ".join(row) + " |")
    note = ("\nanswered = cells the model answered: PASS, FAIL, WRONG_KEY (another key's value), or TRUNCATED "
            "(the answer budget ran out before the needle, so it was not retrieved); the pass rate is over those. prefill tok/s = prompt tokens "
            "computed ÷ prefill time (tokens reused from the prompt cache excluded); decode tok/s = tokens "
            "generated ÷ generation time; both as llama-server timed them.\n")
    return "\n".join(lines) + "\n" + note


def _rate(tokens: float, ms: float) -> str:
    return f"{tokens / ms * 1000:.1f}" if ms and tokens else "-"


