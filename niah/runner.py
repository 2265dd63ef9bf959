"""The runner: plan length × depth × trial cells, hand them to llama-server endpoints, record outcomes.

Every cell's outcome is decided from evidence (DESIGN.md): preflight context, the server's own
count of the rendered prompt before sending, the served prompt tokens, HTTP errors, the finish
reason and the managed process's liveness. One writer appends finished cells to results.jsonl.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from niah import __version__
from niah.cells import Cell, plan_cells
from niah.client import ChatResult
from niah.corpus import get_corpus
from niah.endpoints import Endpoint, launch_args, open_endpoint, prompt_builder
from niah.errors import (
    EXIT_FAIL_CELLS,
    EXIT_LAUNCH_INVALID,
    EXIT_NON_RETRIEVAL,
    EXIT_OK,
    NiahError,
)
from niah.gguf_meta import read_gguf_facts
from niah.haystack import Prompt
from niah.needles import load_needle_spec, make_needle, score_answer
from niah.profiles import LaunchProfile
from niah.progress import RunProgress
from niah.report import render_report
from niah.results import CellResult, ResultsFile

RESULTS_FILE = "results.jsonl"
ANSWER_BUDGET = 32
THINKING_ANSWER_BUDGET = 4096


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the CLI fills it from flags."""

    grid: tuple[tuple[int, tuple[float, ...]], ...]
    """(length, depths) rows; a length with no depths is planned but not run."""
    out_dir: Path
    trials: int = 1
    url: str | None = None
    """An already running server; otherwise `model` + `profiles` describe managed launches."""
    model: Path | None = None
    profiles: tuple[tuple[int, str], ...] = ()
    """(length, profile name or TOML path) pairs: which launch serves each length."""
    tokenizer: str = "auto"
    corpus: str = "builtin"
    needle_file: Path | None = None
    seed: int = 0
    answer_budget: int | None = None
    """Tokens the model may generate; default 32, or 4096 with thinking on."""
    thinking: str = "off"
    temperature: float = 0.0
    cache_reuse: bool = True
    stall_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    api_key: str | None = field(default=None, repr=False)
    server_bin: str | None = None
    host: str = "127.0.0.1"
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.answer_budget is not None and self.answer_budget < 1:
            raise NiahError("--answer-budget must be at least 1 token")
        if self.stall_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise NiahError("--stall-timeout and --connect-timeout must be positive seconds")
        if self.temperature < 0:
            raise NiahError("--temperature must not be negative")

    @property
    def budget(self) -> int:
        if self.answer_budget is not None:
            return self.answer_budget
        return THINKING_ANSWER_BUDGET if self.thinking == "on" else ANSWER_BUDGET

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports back to the CLI."""

    results_path: Path
    report_dir: Path
    outcomes: dict[str, int]
    prefill_tokens_computed: int
    prefill_tokens_cached: int
    grid_markdown: str
    exit_code: int


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


def run(config: RunConfig) -> RunSummary:
    """Run every unfinished cell of the grid, append results, render the report, decide the exit code."""
    corpus = get_corpus(config.corpus)
    needle_spec = load_needle_spec(config.needle_file) if config.needle_file else None
    cells = plan_cells(config.grid, config.trials)
    groups = launch_groups(config)
    fingerprint: dict[str, object] = {
        "niah": __version__,
        "corpus": corpus.name,
        "corpus_sha256": corpus.sha256,
        "needle_seed": config.seed,
        "needle_spec": str(config.needle_file) if config.needle_file else "default",
        "tokenizer": config.tokenizer,
        "answer_budget": config.budget,
        "thinking": config.thinking,
        "temperature": config.temperature,
        "cache_reuse": config.cache_reuse,
    }
    facts = read_gguf_facts(config.model) if config.model else None
    if config.model:
        fingerprint["model"] = model_identity(config.model)
    launches: dict[str, tuple[LaunchProfile, list[str]]] = {}
    if config.profiles:
        if facts is None:
            raise NiahError("a managed launch needs --model GGUF")
        launches = {name: launch_args(name, facts) for name in sorted({p for _, p in config.profiles})}
        fingerprint["launches"] = {name: args for name, (_, args) in launches.items()}
    config.out_dir.mkdir(parents=True, exist_ok=True)
    # A managed run's fingerprint is known before any launch, so finished groups start no server;
    # a --url run's fingerprint includes what the server reports.
    results = None if config.url else ResultsFile(config.results_path, fingerprint)
    progress = RunProgress(cells, enabled=config.show_progress)
    computed = cached = 0
    try:
        for profile_name, lengths in groups:
            group = [c for c in cells if c.length in lengths]
            if results is not None:
                todo = unfinished(results, group, progress)
                if not todo:
                    continue
            needed = max(lengths) + config.budget
            launch = launches[profile_name] if profile_name else None
            native = facts.context_length if facts else None
            with open_endpoint(config, launch, needed, fingerprint, native) as endpoint:
                if results is None:
                    results = ResultsFile(config.results_path, fingerprint)
                    todo = unfinished(results, group, progress)
                if not todo:
                    continue
                build = prompt_builder(endpoint, config, corpus)
                for cell in todo:
                    needle = make_needle(config.seed, cell.length, cell.depth, cell.trial, needle_spec)
                    progress.start_cell(cell)
                    if cell.length + config.budget > endpoint.served_n_ctx:
                        result = unsent_result(
                            cell, needle.value, endpoint, "CLAMPED",
                            f"served per-slot context {endpoint.served_n_ctx:,} < "
                            f"{cell.length:,} + answer budget {config.budget}",
                        )
                    else:
                        started, waited = time.monotonic(), endpoint.counter.wait_s
                        try:
                            prompt, counted = build(cell, needle)
                        except NiahError as exc:
                            if not endpoint.server_died():
                                raise
                            endpoint.restart()
                            result = unsent_result(cell, needle.value, endpoint, "CRASH", str(exc))
                        else:
                            result = run_cell(endpoint, cell, prompt, counted, config, progress)
                            server_s = ((result.prompt_ms or 0) + (result.predicted_ms or 0)) / 1000
                            waited = endpoint.counter.wait_s - waited
                            overhead = time.monotonic() - started - waited - server_s
                            result = replace(result, overhead_s=round(max(0.0, overhead), 4))
                            computed += result.prompt_n or 0
                            cached += result.cache_n or 0
                    results.append(result)
                    progress.end_cell(result.outcome, result.prompt_n or 0, result.prompt_ms)
    finally:
        progress.close()
    if results is None:  # the grid had no row to run
        results = ResultsFile(config.results_path, fingerprint)
    report = render_report(config.results_path, config.out_dir)
    outcomes = Counter(results.outcomes())
    return RunSummary(
        results_path=config.results_path,
        report_dir=config.out_dir,
        outcomes=dict(outcomes),
        prefill_tokens_computed=computed,
        prefill_tokens_cached=cached,
        grid_markdown=report.grid_markdown,
        exit_code=exit_code(outcomes),
    )


def unfinished(results: ResultsFile, group: list[Cell], progress: RunProgress) -> list[Cell]:
    """The group's cells not yet in the results; the finished ones are marked done on the bar."""
    done = results.done_keys()
    progress.skip([c for c in group if c.key in done])
    return [c for c in group if c.key not in done]


def exit_code(outcomes: Counter[str]) -> int:
    """3 clamped launch > 4 non-retrieval outcomes > 1 FAIL cells > 0 all PASS."""
    if outcomes.get("CLAMPED"):
        return EXIT_LAUNCH_INVALID
    if any(name not in ("PASS", "FAIL") for name in outcomes):
        return EXIT_NON_RETRIEVAL
    if outcomes.get("FAIL"):
        return EXIT_FAIL_CELLS
    return EXIT_OK


def unsent_result(cell: Cell, needle_value: str, endpoint: Endpoint, outcome: str, error: str) -> CellResult:
    """A cell recorded without an answer: CLAMPED (never sent) or CRASH (server gone before sending)."""
    return CellResult(
        length=cell.length,
        depth=cell.depth,
        depth_actual=None,
        trial=cell.trial,
        needle_value=needle_value,
        outcome=outcome,
        answer="",
        prompt_tokens_planned=cell.length,
        prompt_tokens_served=None,
        cache_n=None,
        prompt_ms=None,
        predicted_ms=None,
        wall_s=0.0,
        server_n_ctx=endpoint.served_n_ctx,
        profile=endpoint.profile_name,
        factor=endpoint.factor,
        error=error,
    )


def run_cell(
    endpoint: Endpoint,
    cell: Cell,
    prompt: Prompt,
    counted: int,
    config: RunConfig,
    progress: RunProgress,
) -> CellResult:
    """Send one prompt the server counted as `counted` tokens; decide its outcome from what came back.

    A prompt whose server-side count is not the cell's length is never sent.
    """
    started = time.monotonic()
    chat: ChatResult | None = None
    if counted != cell.length:
        outcome, error = "TOKEN_MISMATCH", f"server counts {counted} tokens, cell length is {cell.length}"
    else:
        chat = endpoint.client.chat(
            list(prompt.messages),
            max_tokens=config.budget,
            temperature=config.temperature,
            seed=config.seed,
            thinking=config.thinking,
            cache_prompt=config.cache_reuse,
            on_progress=progress.prefill,
        )
        outcome, error = decide_outcome(chat, prompt, endpoint)
    return CellResult(
        length=cell.length,
        depth=cell.depth,
        depth_actual=prompt.depth_actual,
        needle_offset=prompt.needle_token_offset,
        trial=cell.trial,
        needle_value=prompt.needle.value,
        outcome=outcome,
        answer=(chat.answer if chat else "")[:500],
        prompt_tokens_planned=prompt.prompt_tokens,
        prompt_tokens_served=chat.prompt_tokens if chat else None,
        cache_n=chat.cache_n if chat else None,
        prompt_ms=chat.prompt_ms if chat else None,
        predicted_n=chat.predicted_n if chat else None,
        predicted_ms=chat.predicted_ms if chat else None,
        wall_s=round(time.monotonic() - started, 3),
        server_n_ctx=endpoint.served_n_ctx,
        profile=endpoint.profile_name,
        factor=endpoint.factor,
        finish_reason=chat.finish_reason if chat else None,
        prompt_n=chat.prompt_n if chat else None,
        error=error,
    )


def decide_outcome(chat: ChatResult, prompt: Prompt, endpoint: Endpoint) -> tuple[str, str | None]:
    """Map a chat result to an outcome; restarts a managed server that died."""
    if chat.status == "context_error":
        return "CONTEXT_ERROR", chat.error
    if chat.status == "timeout":
        return "TIMEOUT", chat.error
    if chat.status in ("disconnected", "unreachable"):
        if endpoint.server_died():
            endpoint.restart()
            return "CRASH", f"llama-server died during the cell ({chat.error})"
        return "HTTP_ERROR", chat.error
    if chat.status != "ok":
        if endpoint.server_died():
            endpoint.restart()
            return "CRASH", f"llama-server died during the cell ({chat.error})"
        return "HTTP_ERROR", chat.error
    if chat.prompt_tokens != prompt.prompt_tokens:
        return "TOKEN_MISMATCH", (
            f"server counted {chat.prompt_tokens} prompt tokens, planned {prompt.prompt_tokens}"
        )
    if score_answer(chat.answer, prompt.needle.value):
        return "PASS", None
    if chat.finish_reason == "length":
        return "TRUNCATED", f"answer budget of {chat.predicted_n} tokens ran out"
    return "FAIL", None
