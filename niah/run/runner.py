"""The runner: plan length × depth × trial cells, start or reach each launch group's servers, hand
the cells to the one dispatch loop (niah.run.dispatch) with what runs next (auto rounds, confirmations),
render the report and decide the exit code. Each cell's stages are niah.run.cell_pipeline's; one
writer appends finished cells to results.jsonl.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from niah import __version__
from niah.cells import SHARED, Cell, plan_cells
from niah.errors import (
    EXIT_FAIL_CELLS,
    EXIT_LAUNCH_INVALID,
    EXIT_NON_RETRIEVAL,
    EXIT_OK,
    NiahError,
)
from niah.launch.gguf_meta import GGUFFacts, read_gguf_facts
from niah.launch.profiles import LaunchProfile, launch_spec, load_profile, plan_launch
from niah.launch.rope_check import launch_record
from niah.launch.rpc import RPC_WARNING
from niah.launch.session import ServerSession, ServerSpec, close_sessions
from niah.prompts.corpus import Corpus, get_corpus
from niah.prompts.needles import load_needle_spec
from niah.publish.results import RETRIEVAL_OUTCOMES, ResultsFile
from niah.publish.verdict import CLEARS, TrialPolicy
from niah.run.cell_pipeline import run_cell
from niah.run.config import RETRYABLE, RunConfig
from niah.run.confirm import Confirmations, confirmation
from niah.run.dispatch import RunState, dispatch, keep_serving, start_endpoints
from niah.run.endpoints import start_endpoint
from niah.run.facts import check_endpoints
from niah.run.progress import RunProgress
from niah.run.rounds import Key, Rounds


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports back to the CLI."""

    results_path: Path
    report_dir: Path
    outcomes: dict[str, int]
    prefill_tokens_computed: int
    """Prompt tokens the servers computed for this run's cells, primers included."""
    prefill_tokens_sent: int
    """Prompt tokens of the cells the servers processed: what sending each cell cold computes."""
    prefill_tokens_reusable: int
    """Tokens the cells shared with the previous prompt on their server: the most the cache could give."""
    grid_markdown: str
    exit_code: int
    per_length: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per task, one row per length: passes, answered trials, pass rate, the confidence sequence
    and its decision (the verdict's own numbers), mean score."""
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task, summary.json's verdict: each length's decision and the effective length."""


def launch_groups(config: RunConfig) -> list[tuple[str | None, list[int]]]:
    """Which lengths run on which launch: one group per profile, or one group for `--url`."""
    lengths = sorted({length for length, depths in config.grid if depths})
    if config.url:
        return [(None, lengths)]
    by_length = dict(config.profiles)
    groups: dict[str, list[int]] = {}
    for length in lengths:
        groups.setdefault(by_length[length], []).append(length)
    return sorted(groups.items(), key=lambda item: min(item[1]))


def model_identity(path: Path) -> dict[str, object]:
    """Name, size and a hash of the first MiB (the GGUF header) of a model file."""
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
    return {"file": path.name, "bytes": path.stat().st_size, "head_sha256": head}


def needle_identity(path: Path | None) -> object:
    """`default`, or a custom needle file's name and the sha256 of its bytes (an edit changes it)."""
    if path is None:
        return "default"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NiahError(f"cannot read needle file {path}: {exc.strerror or exc.__class__.__name__}") from None
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}


def run_fingerprint(
    config: RunConfig, corpus: Corpus, launches: dict[str, tuple[LaunchProfile, ServerSpec]],
    ropes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, object]:
    """What must not change between a run and its resume (facts only a live server can tell are
    checked when it is up: `ResultsFile.check_facts`)."""
    fingerprint: dict[str, object] = {
        "niah": __version__,
        "corpus": corpus.name,
        "corpus_sha256": corpus.sha256,
        "needle_seed": config.seed,
        "needle_spec": needle_identity(config.needle_file),
        "tokenizer": config.tokenizer,
        "answer_budget": config.budget,
        "thinking": config.thinking,
        "temperature": config.temperature,
        "cache_reuse": config.cache_reuse,
    }
    if config.answer_budget is not None:  # every task gets exactly this; the default grows per answer
        fingerprint["answer_budget_explicit"] = True
    if config.policy != TrialPolicy():  # --trials auto, a threshold or clustering of its own
        fingerprint["trials"] = config.policy.record()
    screen = next((t.shared for t in config.tasks if t.shared), None)
    if screen:  # --confirm is not here: it adds single-needle cells, a screen resumed with it confirms
        fingerprint["haystack"] = SHARED
        fingerprint["shared"] = screen.identity(config.seed, config.planned_trials)
    if corpus.about:
        fingerprint["corpus_about"] = corpus.about
    custom = {t.name: needle_identity(Path(t.custom.source)) for t in config.tasks if t.custom}
    if custom:
        fingerprint["task_files"] = custom
    if config.model:
        fingerprint["model"] = model_identity(config.model)
    if launches:
        fingerprint["launches"] = {name: list(spec.args) for name, (_, spec) in launches.items()}
    if ropes:  # a fact key: checked, not compared, so runs made before the read-back still resume
        fingerprint["rope"] = ropes
    return fingerprint


def server_specs(config: RunConfig, launch: tuple[LaunchProfile, ServerSpec] | None) -> list[tuple[str, ServerSpec]]:
    """(endpoint name, spec) of every server of a group: each --url, or `servers` copies of the group's
    launch named `profile#n`, the n-th on the profile's n-th `devices` entry: `--device` DEV, or, written
    NAME=VALUE (e.g. CUDA_VISIBLE_DEVICES=1), an environment variable of that launch."""
    if launch is None:
        urls = [u for u in (config.url, *config.urls) if u]
        return [(spec.url or url, spec) for url in urls for spec in [ServerSpec(url=url, **server_options(config))]]
    profile, spec = launch
    devices = profile.devices
    if devices and config.servers > len(devices):
        raise NiahError(
            f"--servers {config.servers} needs as many devices, profile {profile.name} lists {len(devices)}"
        )
    out = []
    for n in range(1, config.servers + 1):
        device = devices[n - 1] if devices else ""
        variable, is_env, value = device.partition("=")
        flags = ("--device", device) if device and not is_env else ()
        name = profile.name if config.servers == 1 else f"{profile.name}-{n}"
        env = ((variable.strip(), value.strip()),) if is_env else spec.env
        out.append((f"{profile.name}#{n}", replace(spec, name=name, args=spec.args + flags, env=env)))
    return out


def server_options(config: RunConfig) -> dict[str, Any]:
    """The run's settings every server of it gets, reached by URL or launched (ServerSpec's fields)."""
    return {
        "host": config.host,
        "api_key": config.api_key,
        "server_bin": config.server_bin,
        "connect_timeout_s": config.connect_timeout_s,
        "stall_timeout_s": config.stall_timeout_s,
        "start_timeout_s": config.start_timeout_s,
        "thinking": config.thinking,
    }


def check_out_dir(out_dir: Path) -> None:
    """`--out` must be a folder niah can write in (made here when it does not exist yet)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NiahError(f"--out {out_dir} is a file, not a folder: name a run folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NiahError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise NiahError(f"the run folder {out_dir} is not writable")


def managed_launches(
    config: RunConfig,
) -> tuple[GGUFFacts | None, dict[str, tuple[LaunchProfile, ServerSpec]], dict[str, dict[str, Any]]]:
    """The model's GGUF facts, each profile's launch and its rope read-back: a bad model header or
    profile (or a rope that is not what the profile meant) is refused here, before anything is
    written in --out."""
    facts = read_gguf_facts(config.model) if config.model else None
    launches: dict[str, tuple[LaunchProfile, ServerSpec]] = {}
    ropes: dict[str, dict[str, Any]] = {}
    if config.profiles:
        if facts is None:
            raise NiahError("a managed launch needs --model GGUF")
        for name in sorted({p for _, p in config.profiles}):
            profile = load_profile(name)
            launches[name] = (profile, launch_spec(profile, facts, config.model, config.out_dir / "logs",
                                                   answer_budget=config.launch_budget, **server_options(config)))
            intent = plan_launch(profile, facts, answer_budget=config.launch_budget).intent
            rope = launch_record(intent, config.model, launches[name][1].args, facts, config.server_bin, name)
            if rope is not None:
                ropes[name] = rope
    return facts, launches, ropes


def run(config: RunConfig) -> RunSummary:
    """Run every unfinished cell of the grid, append results, render the report, decide the exit code."""
    check_out_dir(config.out_dir)
    corpus = get_corpus(config.corpus)
    needle_spec = load_needle_spec(config.needle_file) if config.needle_file else None
    cells = plan_cells(config.grid, config.planned_trials, tuple(t.name for t in config.tasks))
    facts, launches, ropes = managed_launches(config)
    for profile, _ in launches.values():
        if profile.rpc:
            print(f"niah: profile {profile.name} uses rpc-server at {', '.join(profile.rpc)}; {RPC_WARNING}")
    results = ResultsFile(config.results_path, run_fingerprint(config, corpus, launches, ropes), secrets=(config.api_key,))
    if ropes:
        results.check_facts({"rope": ropes})
    # --trials auto: the bar grows by the rounds the run adds
    progress = RunProgress([] if config.policy.auto else cells, enabled=config.show_progress,
                           launch_of=dict(config.profiles))
    state = RunState(config, corpus, needle_spec, results, progress)
    try:
        for profile_name, lengths in launch_groups(config):
            group = [c for c in cells if c.length in lengths]
            launch = launches[profile_name] if profile_name else None
            run_group(state, group, launch, facts)
    finally:
        state.progress.close()
    results.write_header()  # also for a grid with no row to run
    from niah.publish.report import render_report

    report = render_report(config.results_path, config.out_dir)
    # this grid's cells decide the exit code; a screen cell's confirmation, where it ran, stands for it
    twins = {c.key: confirmation(c).key for c in cells} if config.confirm else {}
    outcomes = Counter(results.outcomes({k if results.outcome(k := twins.get(c.key, c.key)) else c.key for c in cells}))
    return RunSummary(
        results_path=config.results_path,
        report_dir=config.out_dir,
        outcomes=dict(outcomes),
        prefill_tokens_computed=state.computed,
        prefill_tokens_sent=state.sent,
        prefill_tokens_reusable=state.reusable,
        grid_markdown=report.grid_markdown,
        exit_code=exit_code(outcomes, all_clear(report.summary) if config.policy.auto else None),
        per_length={task: t["per_length"] for task, t in report.summary["tasks"].items()},
        verdicts={task: t["verdict"] for task, t in report.summary["tasks"].items()},
    )


def run_group(
    state: RunState,
    group: list[Cell],
    launch: tuple[LaunchProfile, ServerSpec] | None,
    facts: GGUFFacts | None,
) -> None:
    """Run one launch group's unfinished cells on its servers (started only when cells are left),
    one server or several, by niah.run.dispatch's one set of rules."""
    config = state.config
    redo = RETRYABLE if config.retry else ()
    done = state.results.done_keys(redo=redo)
    state.progress.skip([c for c in group if c.key in done])
    rounds = Rounds(group, config.policy, state.results.outcome, redo) if config.policy.auto else None
    confirms = Confirmations(group, config.confirm, state.results.outcome, redo) if config.confirm else None

    def more(in_flight: Collection[Key]) -> list[Cell]:
        """What the loop runs next: the next rounds of --trials auto, the screen's confirmations."""
        return [*(rounds.next(in_flight) if rounds else []), *(confirms.next(in_flight) if confirms else [])]

    todo = rounds.next() if rounds else [c for c in group if c.key not in done]
    if rounds:
        state.progress.add(todo)
    later = confirms.next({c.key for c in todo}) if confirms else []  # the screen cells already recorded
    if later:  # (adding nothing would still draw the bar, before any server answered)
        state.progress.add(later)
    todo += later
    if not todo:
        return
    needed = max(c.length + config.task_budget(c.task) for c in group)
    profile = launch[0] if launch else None
    starters = [
        (name, partial(start_endpoint, spec, needed, profile, facts, name, config.arch))
        for name, spec in server_specs(config, launch)
    ]
    with ExitStack() as stack:
        sessions: list[ServerSession] = []
        stack.callback(close_sessions, sessions)  # however the group ends, its servers stop together
        endpoints = keep_serving(start_endpoints(starters, lambda e: sessions.append(e.session)))
        builders = check_endpoints(state, endpoints, several_urls=launch is None and len(starters) > 1)
        dispatch(state, endpoints, builders, todo, run_cell, more if rounds or confirms else None)


def exit_code(outcomes: Counter[str], cleared: bool | None = None) -> int:
    """3 clamped launch > 4 non-retrieval outcomes > 1 FAIL or WRONG_KEY cells > 0 all PASS. With
    `cleared` (--trials auto: whether every length's pass rate clears the threshold) a length that
    does not clear is 1, and FAIL cells of lengths that clear are not."""
    if outcomes.get("CLAMPED"):
        return EXIT_LAUNCH_INVALID
    if any(name not in RETRIEVAL_OUTCOMES for name in outcomes):
        return EXIT_NON_RETRIEVAL
    failed = outcomes.get("FAIL") or outcomes.get("WRONG_KEY") if cleared is None else not cleared
    return EXIT_FAIL_CELLS if failed else EXIT_OK


def all_clear(summary: dict[str, Any]) -> bool:
    """Whether every length of every task clears the threshold (summary.json's verdicts)."""
    return all(v["decision"] == CLEARS for t in summary["tasks"].values() for v in t["verdict"]["lengths"])
