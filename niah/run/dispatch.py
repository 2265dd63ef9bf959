"""The one dispatch loop, for one server or many: one worker thread per endpoint pulls runs of cells
from one queue; the main thread is the only writer (results, progress bar), and after each finished
cell asks what to run next (the rounds of `--trials auto`, niah.run.rounds) until nothing is left.

A run of cells is one (task, length, trial) in plan order (ascending needle position), so each
server keeps the prefix reuse of a whole run. The rules, whatever the number of servers:
- a cell lost to a server that died is recorded as CRASH and goes back to the queue once, for any
  live server (another first; a restarted managed one too);
- a dead `--url` server is dropped (and closed at once) and the run goes on while one is left; a
  dead managed server is restarted;
- an error the server answered for one cell (an HTTP 500 from /apply-template, ...) is that cell's
  HTTP_ERROR and drops nothing; bad input (exit 2) stops the run with its one line.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from niah.cells import Cell
from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.server import live_servers, stop_servers
from niah.launch.session import ServerUnreachable, close_sessions
from niah.publish.results import CellResult
from niah.run.reuse import shortfall

if TYPE_CHECKING:
    from niah.prompts.corpus import Corpus
    from niah.prompts.needles import NeedleSpec
    from niah.publish.results import ResultsFile
    from niah.run.config import RunConfig
    from niah.run.endpoints import Endpoint, PromptBuilder
    from niah.run.progress import RunProgress

@dataclass
class RunState:
    """What a run's groups share: inputs, the results file, the bar and the prefill totals."""

    config: RunConfig
    corpus: Corpus
    needle_spec: NeedleSpec | None
    results: ResultsFile
    progress: RunProgress
    computed: int = 0
    """Prompt tokens computed (chats and primers) for the cells the servers processed."""
    sent: int = 0
    """Prompt tokens of those cells: what sending each one cold would compute."""
    reusable: int = 0
    """Prompt tokens the cells shared with the previous prompt on their server (what could be cached)."""
    reuse_warned: bool = False
    """A server's reuse shortfall has been reported (once per run)."""


JOIN_ON_STOP_S = 5.0
"""Seconds an interrupted run waits for its workers before it exits anyway."""

RunCell = Callable[[RunState, "Endpoint", "PromptBuilder", Cell], CellResult]
Key = tuple[str, int, float, int]


@dataclass
class Batch:
    """Cells one server runs in order (they share prefixes)."""

    cells: list[Cell]
    avoid: str | None = None
    """The endpoint this batch's cell crashed on: others take it first."""


def batches(cells: list[Cell]) -> list[Batch]:
    """Runs of cells of one (task, length, trial), or of one shared haystack (task, trial), in plan
    order within a run; the longest runs first, so the last run to finish is a short one."""
    runs: dict[tuple[str, int, int], list[Cell]] = {}
    for cell in cells:
        runs.setdefault((cell.task, 0 if cell.shared else cell.length, cell.trial), []).append(cell)
    return sorted((Batch(run) for run in runs.values()), key=lambda b: -sum(c.length for c in b.cells))


class CellQueue:
    """The shared queue of batches; `take` blocks until a batch fits, or the run is over: nothing
    left, and the main thread has closed the queue (it may add rounds until then)."""

    def __init__(self, work: list[Batch], names: list[str]) -> None:
        self._cond = threading.Condition()
        self._batches = deque(work)
        self._live = set(names)
        self._busy = 0
        self._stopped = False
        self._closed = False
        self._retried: set[Key] = set()

    def take(self, name: str) -> Batch | None:
        """The next batch for endpoint `name`; None when the run is over for it."""
        with self._cond:
            while True:
                if self._stopped or name not in self._live:
                    return None
                for i, batch in enumerate(self._batches):
                    if batch.avoid != name or self._live == {name}:
                        del self._batches[i]
                        self._busy += 1
                        return batch
                if not self._batches and not self._busy and self._closed:
                    return None
                self._cond.wait()

    def add(self, work: list[Batch]) -> None:
        """More batches (the next rounds of `--trials auto`), after those queued."""
        with self._cond:
            self._batches.extend(work)
            self._cond.notify_all()

    def close(self) -> None:
        """Nothing more will be added: workers end once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def done(self, rest: list[Cell] | None = None) -> None:
        """A worker finished its batch; `rest` (cells it could not run) goes back to the front."""
        with self._cond:
            self._busy -= 1
            if rest:
                self._batches.appendleft(Batch(rest))
            self._cond.notify_all()

    def retry(self, cell: Cell, avoid: str, here: list[Cell] | None = None) -> bool:
        """Put a crashed cell back for another server, or at the head of `here` (the crashed server's
        own cells) when no other server is live; False when it already had its second try."""
        with self._cond:
            if cell.key in self._retried:
                return False
            self._retried.add(cell.key)
            if here is not None and self._live == {avoid}:
                here.insert(0, cell)
            else:
                self._batches.appendleft(Batch([cell], avoid=avoid))
            self._cond.notify_all()
            return True

    def drop(self, name: str) -> None:
        with self._cond:
            self._live.discard(name)
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def left(self) -> int:
        """Cells still queued."""
        with self._cond:
            return sum(len(b.cells) for b in self._batches)


class WorkerProgress:
    """What a worker's `run_cell` reports as it goes, forwarded to the main thread's progress bar."""

    def __init__(self, events: queue.Queue[tuple[str, str, Any]], endpoint: Endpoint) -> None:
        self.events = events
        self.endpoint = endpoint

    def start_cell(self, cell: Cell) -> None:
        self.events.put(("start", self.endpoint.name, cell))

    def prefill(self, event: dict[str, object], phase: str = "prefill") -> None:
        self.events.put(("prefill", self.endpoint.name, (event, phase)))


def start_endpoints(
    starters: list[tuple[str, Callable[[], Endpoint]]], register: Callable[[Endpoint], None]
) -> list[Endpoint]:
    """Start (or reach) and preflight several servers at once; one that fails is dropped with one
    line, and the first error is raised when none is left. `register` gets each one started."""
    if len(starters) == 1:
        endpoint = starters[0][1]()
        register(endpoint)
        return [endpoint]
    before = {id(server) for server in live_servers()}

    def stop_launches() -> None:
        stop_servers([server for server in live_servers() if id(server) not in before])

    pool = ThreadPoolExecutor(max_workers=len(starters), thread_name_prefix="niah-start")
    futures = [(name, pool.submit(start)) for name, start in starters]
    started: list[Endpoint] = []
    errors: list[BaseException] = []
    try:
        for name, future in futures:
            try:
                endpoint = future.result()
            except NiahError as exc:
                print(f"niah: dropped {name}: {exc}", flush=True)
                errors.append(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - raised below, once the others are registered
                errors.append(exc)
                continue
            register(endpoint)
            started.append(endpoint)
    except BaseException:  # a signal or Ctrl-C mid-start: stop every launch now, not once all have loaded
        stop_launches()
        pool.shutdown(wait=True, cancel_futures=True)  # quick once the servers are stopped: their health waits end
        stop_launches()  # one a starter forked meanwhile
        raise
    pool.shutdown(wait=True)
    fatal = [e for e in errors if not isinstance(e, NiahError)]
    if fatal:
        raise fatal[0]
    if not started:
        raise errors[0]
    return started


def keep_serving(endpoints: list[Endpoint]) -> list[Endpoint]:
    """Endpoints whose preflight is OK; clamped ones are dropped with one line each (when every one
    is clamped, those serving the most context stay, and their cells are recorded CLAMPED)."""
    ok = [e for e in endpoints if e.report.verdict == "OK"]
    if not ok:
        most = max(e.served_n_ctx for e in endpoints)
        ok = [e for e in endpoints if e.served_n_ctx == most]
    for endpoint in endpoints:
        if endpoint not in ok:
            print(f"niah: dropped {endpoint.name}: {endpoint.report.summary()}", flush=True)
            endpoint.session.close()  # stopped at once, not when the group ends
    return ok


def work(
    state: RunState, endpoint: Endpoint, build: PromptBuilder, run_cell: RunCell,
    cells: CellQueue, events: queue.Queue[tuple[str, str, Any]],
) -> None:
    """One endpoint's worker: run batches until the queue is empty, this server is dropped, or the
    run stops. Every result and failure goes to the main thread through `events`."""
    name = endpoint.name
    mine = replace(state, progress=WorkerProgress(events, endpoint))
    try:
        while (batch := cells.take(name)) is not None:
            rest = list(batch.cells)
            try:
                while rest and not cells.stopped:  # a stopped run starts no further cell
                    cell = rest[0]
                    result = replace(cell_or_error(mine, endpoint, build, run_cell, cell), endpoint=name)
                    rest.pop(0)  # a cell whose run_cell raised goes back with the rest
                    if result.outcome != "CRASH":
                        events.put(("result", name, result))
                        continue
                    if cells.stopped:  # the run is being stopped: no restart
                        return
                    again = cells.retry(cell, avoid=name, here=rest if endpoint.session.spec.managed else None)
                    events.put(("retry" if again else "result", name, result))
                    if not endpoint.session.spec.managed:
                        raise ServerUnreachable(f"{name} stopped answering (CRASH recorded)")
                    endpoint.restart()
            except ServerUnreachable as exc:  # a dead URL server, or a restart that failed
                cells.drop(name)
                endpoint.session.close()  # dropped servers are stopped at once
                events.put(("dropped", name, str(exc)))
                return
            finally:
                cells.done(rest)
                events.put(("batch", name, None))
    except Exception as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        events.put(("error", name, exc))
        cells.stop()
    finally:
        events.put(("exit", name, None))


def cell_or_error(state: RunState, endpoint: Endpoint, build: PromptBuilder, run_cell: RunCell, cell: Cell) -> CellResult:
    """`run_cell`, with an error the server answered for this cell recorded as its HTTP_ERROR (a
    server that stops answering, or bad input, is raised)."""
    try:
        return run_cell(state, endpoint, build, cell)
    except ServerUnreachable:
        raise
    except NiahError as exc:
        if exc.exit_code != EXIT_LAUNCH_INVALID:
            raise
        return CellResult(task=cell.task, length=cell.length, depth=cell.depth, trial=cell.trial,
                          outcome="HTTP_ERROR", error=str(exc), server_n_ctx=endpoint.served_n_ctx,
                          profile=endpoint.profile_name, factor=endpoint.factor)


def dispatch(
    state: RunState, endpoints: list[Endpoint], builders: dict[str, PromptBuilder], todo: list[Cell],
    run_cell: RunCell, more: Callable[[set[Key]], list[Cell]] | None = None,
) -> None:
    """Run `todo` on the endpoints (one or several) at once; the calling thread writes every result.

    `more` (the next rounds of `--trials auto`, niah.run.rounds) is asked after each finished cell and
    batch, with the cells still in flight; the run ends when none is and it adds nothing."""
    events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
    several = len(endpoints) > 1
    # one server takes every cell in plan order (the most prefix reuse, across lengths too)
    cells = CellQueue(batches(todo) if several else [Batch(list(todo))], [e.name for e in endpoints])
    in_flight = {c.key for c in todo}
    threads = [
        threading.Thread(target=work, name=f"niah-{e.name}", daemon=True,
                         args=(state, e, builders[e.name], run_cell, cells, events))
        for e in endpoints
    ]
    for thread in threads:
        thread.start()
    running, dropped = len(threads), []
    reasons = {e.name: e.reuse_shortfall_reason for e in endpoints}
    try:
        while running:
            kind, name, payload = events.get()
            if kind == "start":
                state.progress.start_cell(payload, name)
            elif kind == "prefill":
                state.progress.prefill(*payload)
            elif kind in ("result", "retry"):
                record(state, payload, again=kind == "retry", reason=reasons.get(name))
                if kind == "result":
                    in_flight.discard(payload.key)
            elif kind == "dropped":
                print(f"niah: dropped {name} for the rest of the run: {payload}", flush=True)
                dropped.append(payload)
            elif kind == "error":
                raise payload
            elif kind == "exit":
                running -= 1
            if kind in ("result", "batch"):
                added = more(set(in_flight)) if more else []
                if added:
                    state.progress.add(added)
                    in_flight.update(c.key for c in added)
                    cells.add(batches(added) if several else [Batch(added)])
                elif not in_flight:
                    cells.close()
    except BaseException as stop:
        cells.stop()
        # every managed server stopped at once, every request in flight ended: the workers return
        close_sessions([e.session for e in endpoints])
        for thread in threads:  # daemon threads: one that still does not return goes with niah
            thread.join(timeout=JOIN_ON_STOP_S / len(threads))
        if isinstance(stop, (KeyboardInterrupt, SystemExit)):
            keep_finished(state, events)
        raise
    for thread in threads:
        thread.join()
    left = cells.left()
    if left:
        raise NiahError(
            f"every server was dropped with {left} cell(s) left ({dropped[-1] if dropped else 'no server'}); "
            "rerun to resume", EXIT_LAUNCH_INVALID,
        )


def keep_finished(state: RunState, events: queue.Queue[tuple[str, str, Any]]) -> None:
    """Record the cells that finished before a stop (a signal, Ctrl-C) and were not recorded yet."""
    while True:
        try:
            kind, _, payload = events.get_nowait()
        except queue.Empty:
            return
        if kind in ("result", "retry"):
            record(state, payload, again=kind == "retry")


def record(
    state: RunState, result: CellResult, again: bool = False, reason: Callable[[], str] | None = None
) -> None:
    """Append one finished cell and count it (main thread only); `again`: its CRASH is retried.

    The first cell whose server reused much less of its prompt than it shared with the one before
    is reported once per run, with `reason()` (the endpoint's: niah.run.reuse)."""
    state.results.append(result)
    cell = Cell(result.length, result.depth, result.trial, result.task)
    computed = (result.prompt_n or 0) + (result.prime_n or 0)
    state.progress.end_cell(
        result.outcome, computed, (result.prompt_ms or 0) + (result.prime_ms or 0), cell=cell, again=again
    )
    if result.prompt_n is None:
        return  # never processed: nothing computed for it, nothing it could have reused
    state.computed += computed
    state.sent += result.prompt_tokens_served or result.length
    state.reusable += result.cache_expected or 0
    reused = result.cache_n if result.prime_n is None else result.prime_cache_n
    if reason and not state.reuse_warned and result.cache_expected and shortfall(result.cache_expected, reused):
        state.reuse_warned = True
        print(
            f"niah: llama-server reused {reused or 0:,} of the {result.cache_expected:,} prompt tokens "
            f"L={result.length:,} D={result.depth:g}% shares with the previous prompt: {reason()}",
            flush=True,
        )
