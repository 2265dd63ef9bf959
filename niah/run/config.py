"""What one run is asked to do: the grid, the servers, the prompts and the limits (`RunConfig`),
filled by the CLI and passed down, unchanged, through the runner, dispatch and endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from niah.cells import BUDGET_PER_EXTRA_ANSWER, answer_budget
from niah.errors import NiahError
from niah.launch.session import check_distinct_servers
from niah.prompts.tasks import SINGLE, Task
from niah.publish.verdict import TrialPolicy

RESULTS_FILE = "results.jsonl"
RETRYABLE = ("CRASH", "TIMEOUT", "HTTP_ERROR")
"""Outcomes a second try may change: `niah run --retry` reruns recorded ones on resume."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the CLI fills it from flags."""

    grid: tuple[tuple[int, tuple[float, ...]], ...]
    """(length, depths) rows; a length with no depths is planned but not run."""
    out_dir: Path
    trials: int = 1
    """Trials per cell; with `policy.auto`, the most a length may get is `policy.max_trials`."""
    policy: TrialPolicy = field(default_factory=TrialPolicy)
    """How pass rates are decided, and whether trials are added until decided (`--trials auto`)."""
    tasks: tuple[Task, ...] = (Task(SINGLE, SINGLE),)
    """What each cell plants and asks (niah.prompts.tasks); every task runs the whole grid."""
    url: str | None = None
    """An already running server; otherwise `model` + `profiles` describe managed launches."""
    urls: tuple[str, ...] = ()
    """Further running servers (`--url` given several times): cells go to whichever is free."""
    servers: int = 1
    """Managed launches per launch group, run at once (each on its profile's next `devices` entry)."""
    model: Path | None = None
    """The GGUF of managed launches; beside `url`, a local copy of the served model for its facts."""
    arch: str | None = None
    """The served model's GGUF architecture (beside `url`, when niah cannot read its GGUF)."""
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
    start_timeout_s: float = 1800.0
    """Seconds a managed launch may take to load its model and allocate its cache."""
    api_key: str | None = field(default=None, repr=False)
    server_bin: str | None = None
    host: str = "127.0.0.1"
    show_progress: bool = True
    retry: bool = False
    """Resume reruns the recorded RETRYABLE cells too (otherwise every recorded cell is skipped)."""
    confirm: str | None = None
    """A shared-haystack screen's cells rerun one needle per prompt: `fails` or `all` (niah.run.confirm)."""

    def __post_init__(self) -> None:
        if self.answer_budget is not None and self.answer_budget < 1:
            raise NiahError("--answer-budget must be at least 1 token")
        if min(self.stall_timeout_s, self.connect_timeout_s, self.start_timeout_s) <= 0:
            raise NiahError("--stall-timeout, --connect-timeout and --start-timeout must be positive seconds")
        if self.temperature < 0:
            raise NiahError("--temperature must not be negative")
        if self.servers < 1:
            raise NiahError(f"--servers must be at least 1, not {self.servers}")
        if self.urls and not self.url:
            raise NiahError("further --url servers need a first --url")
        check_distinct_servers([u for u in (self.url, *self.urls) if u])
        if self.confirm is not None and not self.shared:
            raise NiahError("--confirm reruns a shared-haystack screen's cells: it goes with --haystack shared")
        if self.servers > 1 and self.url:
            raise NiahError("--servers starts managed launches; with --url, give --url once per server instead")

    @property
    def planned_trials(self) -> int:
        """Trials per cell the run may send: `trials`, or the cap of `--trials auto`."""
        return self.policy.max_trials if self.policy.auto else self.trials

    @property
    def budget(self) -> int:
        return answer_budget(self.answer_budget, self.thinking)

    @property
    def launch_budget(self) -> int:
        """Room a launch leaves past its longest prompt: the largest answer budget of the run's tasks."""
        return max(self.task_budget(t.name) for t in self.tasks)

    def task_budget(self, name: str) -> int:
        """The answer budget of a task's cells: `budget`, plus BUDGET_PER_EXTRA_ANSWER per expected
        value past the first unless --answer-budget was given."""
        if self.answer_budget is not None:
            return self.answer_budget
        return self.budget + BUDGET_PER_EXTRA_ANSWER * (self.task(name).answers - 1)

    def task(self, name: str) -> Task:
        """The task named `name` (`single` also for a shared screen's confirmations)."""
        found = next((t for t in self.tasks if t.name == name), None)
        if found is None and name != SINGLE:
            raise KeyError(name)
        return found or Task(SINGLE, SINGLE)

    @property
    def shared(self) -> bool:
        """Cells are cut from one shared haystack per trial (`--haystack shared`)."""
        return any(t.shared for t in self.tasks)

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE
