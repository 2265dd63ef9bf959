"""Several servers at once: the cell queue offline, then two real llama-servers sharing a grid,
one of them killed mid-cell (a `--url` one is dropped, a managed one restarted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from niah.cells import Cell, plan_cells
from niah.errors import NiahError
from niah.launch.profiles import parse_profile
from niah.launch.server import free_port
from niah.launch.session import ServerSpec
from niah.publish.results import CellResult, load_cells
from niah.run.dispatch import Batch, CellQueue, WorkerProgress, batches
from niah.run.progress import RunProgress
from niah.run.runner import RunConfig, run, server_specs

GRID = ((512, (100.0, 50.0, 0.0)), (1024, (100.0, 50.0, 0.0)))
"""Six cells in two runs of three (one per length): each server can keep a whole run."""
SERVER_ARGS = ("-c", "4096", "--parallel", "1", "-t", "1")


def child_llama_servers(parent: int | None = None) -> set[int]:
    """PIDs of llama-server processes this test process (or `parent`) started."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)
        if fields.split()[1] == str(parent or os.getpid()) and name.startswith("llama-server"):
            pids.add(int(stat.parent.name))
    return pids


def cell_records(path: Path) -> list[dict[str, object]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("record") == "cell"]


def keys(records: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(r["length"], r["depth"], r["trial"]) for r in records]


# --- the queue (offline) ---------------------------------------------------------------------


def test_batches_keep_runs_of_a_length_and_trial_in_plan_order_longest_first() -> None:
    cells = plan_cells(((1024, (0.0, 100.0)), (4096, (50.0, 0.0))), trials=2)
    runs = [b.cells for b in batches(cells)]
    assert [[(c.length, c.depth, c.trial) for c in run] for run in runs] == [
        [(4096, 0.0, 0), (4096, 50.0, 0)],
        [(4096, 0.0, 1), (4096, 50.0, 1)],
        [(1024, 0.0, 0), (1024, 100.0, 0)],
        [(1024, 0.0, 1), (1024, 100.0, 1)],
    ]


def test_a_crashed_cell_goes_back_once_and_avoids_the_server_it_crashed_on() -> None:
    a, b = Cell(1024, 50.0, 0), Cell(1024, 0.0, 0)
    cells = CellQueue([Batch([a, b])], ["s1", "s2"])
    assert cells.take("s1") == Batch([a, b])
    assert cells.retry(a, avoid="s1") is True
    assert cells.retry(a, avoid="s1") is False  # its second CRASH is its result
    cells.done()
    taken: list[Batch | None] = []
    waiter = threading.Thread(target=lambda: taken.append(cells.take("s1")))
    waiter.start()  # s1 must not take the cell back while s2 is live: it waits
    waiter.join(0.3)
    assert waiter.is_alive()
    assert cells.take("s2") == Batch([a], avoid="s1")
    cells.close()  # the main thread: nothing in flight, no round to add
    cells.done()
    waiter.join(5)
    assert taken == [None]  # nothing left, nobody busy, closed: the run is over for s1


def test_an_open_queue_waits_for_the_next_round_until_closed() -> None:
    first, later = Cell(1024, 0.0, 0), Cell(1024, 0.0, 1)
    cells = CellQueue([Batch([first])], ["s1"])
    assert cells.take("s1") == Batch([first])
    cells.done()
    taken: list[Batch | None] = []
    waiter = threading.Thread(target=lambda: taken.extend([cells.take("s1"), cells.take("s1")]))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # empty but open: the main thread may add the next round
    cells.add([Batch([later])])
    time.sleep(0.2)
    cells.done()
    cells.close()
    waiter.join(5)
    assert taken == [Batch([later]), None]


def test_the_last_live_server_takes_back_a_cell_it_crashed_on() -> None:
    cell = Cell(2048, 0.0, 0)
    cells = CellQueue([Batch([cell], avoid="s1")], ["s1", "s2"])
    cells.drop("s2")
    assert cells.take("s2") is None
    assert cells.take("s1") == Batch([cell], avoid="s1")


def test_a_worker_waits_for_the_rest_of_a_batch_another_gives_back() -> None:
    first, rest = Cell(1024, 100.0, 0), Cell(1024, 0.0, 0)
    cells = CellQueue([Batch([first, rest])], ["s1", "s2"])
    cells.take("s1")
    taken: list[Batch | None] = []
    waiter = threading.Thread(target=lambda: taken.append(cells.take("s2")))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # s1 is busy and may give cells back
    cells.drop("s1")
    cells.done([rest])
    waiter.join(5)
    assert taken == [Batch([rest])]
    assert cells.left() == 0


def test_a_cell_finished_as_ctrl_c_lands_is_kept(tmp_path: Path) -> None:
    """Ctrl-C (or a signal) reaches the main thread as the second cell starts, before the results
    the worker finished meanwhile are read from the queue: every cell it finished is recorded."""
    from types import SimpleNamespace

    from niah.launch.session import ServerSession
    from niah.prompts.corpus import get_corpus
    from niah.publish.results import ResultsFile
    from niah.run.dispatch import RunState, dispatch

    todo = plan_cells(((512, (0.0, 50.0, 100.0)),), 1)

    class InterruptAtSecondCell(RunProgress):
        def start_cell(self, cell: Cell, endpoint: str | None = None) -> None:
            super().start_cell(cell, endpoint)
            if cell == todo[1]:
                raise KeyboardInterrupt

    finished: list[tuple[int, float, int]] = []

    def answer(state: RunState, endpoint: object, build: object, cell: Cell) -> CellResult:
        state.progress.start_cell(cell)  # as run_cell does: the worker's bar event comes first
        finished.append((cell.length, cell.depth, cell.trial))
        return CellResult(task=cell.task, length=cell.length, depth=cell.depth, trial=cell.trial, outcome="PASS")

    config = RunConfig(grid=((512, (0.0, 50.0, 100.0)),), out_dir=tmp_path, url="http://127.0.0.1:9", show_progress=False)
    results = ResultsFile(tmp_path / "results.jsonl", {"test": True})
    state = RunState(config, get_corpus("builtin"), None, results, InterruptAtSecondCell(todo, enabled=False))
    endpoint = SimpleNamespace(name="s1", session=ServerSession(ServerSpec(url="http://127.0.0.1:9")),
                               reuse_shortfall_reason=lambda: "")
    with pytest.raises(KeyboardInterrupt):
        dispatch(state, [endpoint], {"s1": None}, todo, answer)  # type: ignore[list-item, dict-item]
    assert keys(cell_records(results.path)) == finished and len(finished) >= 2


def profile_with(text: str) -> object:
    return parse_profile('context = 8192\nnative_context = 8192\n' + text, "p")


def test_managed_servers_get_their_own_device_and_name(tmp_path: Path) -> None:
    profile = profile_with('devices = ["CUDA0", "CUDA1"]\n')
    config = RunConfig(grid=((1024, (50.0,)),), out_dir=tmp_path, model=Path(__file__), servers=2,
                       profiles=((1024, "p"),))
    launch = ServerSpec(model=Path(__file__), name="p", args=("-c", "8192"), log_dir=tmp_path)
    specs = server_specs(config, (profile, launch))  # type: ignore[arg-type]
    assert [name for name, _ in specs] == ["p#1", "p#2"]
    assert [spec.args for _, spec in specs] == [("-c", "8192", "--device", "CUDA0"), ("-c", "8192", "--device", "CUDA1")]
    assert [spec.name for _, spec in specs] == ["p-1", "p-2"]  # log files p-1.1.log, p-2.1.log
    by_env = server_specs(config, (profile_with('devices = ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]\n'),
                                   replace(launch, args=())))  # type: ignore[arg-type]
    assert [(spec.args, spec.env) for _, spec in by_env] == [((), (("CUDA_VISIBLE_DEVICES", "0"),)), ((), (("CUDA_VISIBLE_DEVICES", "1"),))]
    with pytest.raises(NiahError, match="--servers 3 needs as many devices"):
        server_specs(RunConfig(grid=config.grid, out_dir=tmp_path, model=Path(__file__), servers=3,
                               profiles=config.profiles), (profile, launch))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--servers", "0", "--profile", "tiny-native-8k", "--model", __file__], "--servers N"),
        (["--servers", "2", "--url", "http://127.0.0.1:1"], "--servers N"),
        (["--url", "http://127.0.0.1:1", "--url", "http://127.0.0.1:1/"], "are the same server"),
        (["--url", "http://localhost:9", "--url", "http://127.0.0.1:9"],
         "--url http://localhost:9 and --url http://127.0.0.1:9 are the same server: give each server once"),
        (["--url", "http://[::1]:9", "--url", "http://127.0.0.1:8", "--url", "http://[0:0::1]:9/"], "are the same server"),
    ],
)
def test_bad_server_options_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", "--lengths", "1k", *args, "--out", str(tmp_path / "run")],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- two real servers --------------------------------------------------------------------------


def url_config(urls: list[str], out: Path) -> RunConfig:
    return RunConfig(grid=GRID, out_dir=out, url=urls[0], urls=tuple(urls[1:]), show_progress=False)


def assert_each_cell_finished_once(records: list[dict[str, object]]) -> None:
    finished = [r for r in records if r["outcome"] != "CRASH"]
    assert sorted(keys(finished)) == sorted((c.length, c.depth, c.trial) for c in plan_cells(GRID, 1))
    for record in finished:
        assert record["prompt_tokens_served"] == record["length"], record
        assert record["outcome"] in ("PASS", "FAIL"), record


@pytest.mark.server
def test_two_url_servers_share_the_grid_one_run_each(start_llama_server, tmp_path: Path) -> None:
    servers = [start_llama_server(*SERVER_ARGS) for _ in range(2)]
    summary = run(url_config([s.url for s in servers], tmp_path))
    records = cell_records(summary.results_path)
    assert_each_cell_finished_once(records)
    assert len(records) == 6
    by_length = {length: {r["endpoint"] for r in records if r["length"] == length} for length, _ in GRID}
    assert {len(e) for e in by_length.values()} == {1}  # a length's run stayed on one server
    assert by_length[512] | by_length[1024] == {s.url for s in servers}  # both served
    for length, _ in GRID:  # ... and so kept its prefix reuse
        run_records = [r for r in records if r["length"] == length]
        assert [r["depth"] for r in run_records] == [0.0, 50.0, 100.0]  # the plan's order
        last = run_records[-1]  # shares half its haystack with the cell before on the same server
        assert int(last["cache_expected"]) > 200 and int(last["cache_n"]) >= int(last["cache_expected"]) - 8, last
    frame = load_cells(summary.results_path)
    assert set(frame["endpoint"]) == {s.url for s in servers}


class KillAtSecondCell(WorkerProgress):
    """Kills the server of the first worker to reach its second cell, in that worker's own thread:
    `count` as the cell starts (before its prompt is counted), `prefill` at its first prefill event."""

    during = "count"
    pids: ClassVar[dict[str, int]] = {}
    """Endpoint URL (or name) -> the llama-server process to kill."""
    killed: ClassVar[list[str]] = []
    environ: ClassVar[list[bytes]] = []
    """The killed process's environment."""
    lock = threading.Lock()

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.cells = 0

    def _kill(self) -> None:
        with self.lock:
            if self.killed:
                return
            process = self.endpoint.session.process
            pid = process.process.pid if process and process.process else self.pids[self.endpoint.name]
            self.environ.append(Path(f"/proc/{pid}/environ").read_bytes())
            os.kill(pid, signal.SIGKILL)
            self.killed.append(self.endpoint.name)

    def start_cell(self, cell: Cell) -> None:
        self.cells += 1
        if self.during == "count" and self.cells == 2:
            self._kill()
        super().start_cell(cell)

    def prefill(self, event: dict[str, object]) -> None:
        if self.during == "prefill" and self.cells == 2:
            self._kill()
        super().prefill(event)


def killer(during: str, pids: dict[str, int] | None = None) -> type[KillAtSecondCell]:
    return type("Killer", (KillAtSecondCell,), {"during": during, "pids": pids or {}, "killed": [], "environ": []})


@pytest.mark.server
def test_a_url_server_killed_mid_cell_is_dropped_and_the_other_finishes_every_cell(
    start_llama_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = [start_llama_server(*SERVER_ARGS) for _ in range(2)]
    kill = killer("prefill", {s.url: s.session.process.process.pid for s in servers})  # type: ignore[union-attr]
    monkeypatch.setattr("niah.run.dispatch.WorkerProgress", kill)
    summary = run(url_config([s.url for s in servers], tmp_path))
    (dead,) = kill.killed
    (alive,) = {s.url for s in servers} - {dead}
    records = cell_records(summary.results_path)
    crashes = [r for r in records if r["outcome"] == "CRASH"]
    assert [(r["endpoint"], "died during the cell" in str(r["error"])) for r in crashes] == [(dead, True)]
    assert_each_cell_finished_once(records)
    retried = [r for r in records if keys([r]) == keys(crashes) and r["outcome"] != "CRASH"]
    assert [r["endpoint"] for r in retried] == [alive]  # the lost cell went to the other server
    assert Counter(r["endpoint"] for r in records if r["outcome"] != "CRASH")[alive] >= 4
    assert f"dropped {dead} for the rest of the run" in capsys.readouterr().out
    assert summary.exit_code in (0, 1)  # the grid reads each cell's latest record: none is CRASH


@pytest.mark.server
def test_a_managed_server_killed_mid_cell_is_restarted_and_its_cell_runs_elsewhere(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "tiny-1t.toml"
    profile.write_text('context = 4096\nnative_context = 8192\nthreads = 1\n'
                       'devices = ["NIAH_TEST_DEVICE=first", "NIAH_TEST_DEVICE=second"]\n')
    kill = killer("count")
    monkeypatch.setattr("niah.run.dispatch.WorkerProgress", kill)
    config = RunConfig(grid=GRID, out_dir=tmp_path / "run", model=tiny_model, servers=2,
                       profiles=((512, str(profile)), (1024, str(profile))), show_progress=False)
    summary = run(config)
    (dead,) = kill.killed
    device = {"tiny-1t#1": b"first", "tiny-1t#2": b"second"}[dead]
    assert b"NIAH_TEST_DEVICE=" + device + b"\0" in kill.environ[0]  # launch n got the n-th devices entry
    records = cell_records(summary.results_path)
    crashes = [r for r in records if r["outcome"] == "CRASH"]
    assert [(r["endpoint"], "while the prompt was counted" in str(r["error"])) for r in crashes] == [(dead, True)]
    assert_each_cell_finished_once(records)
    retried = [r for r in records if keys([r]) == keys(crashes) and r["outcome"] != "CRASH"]
    assert [r["endpoint"] for r in retried] == [({"tiny-1t#1", "tiny-1t#2"} - {dead}).pop()]
    after = [r for r in records[records.index(crashes[0]) + 1:] if r["endpoint"] == dead]
    assert after, "the restarted server ran the rest of its run"
    logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    n = dead[-1]
    assert logs == sorted(["tiny-1t-1.1.log", "tiny-1t-2.1.log", f"tiny-1t-{n}.2.log"])


@pytest.mark.server
def test_resume_on_other_servers_runs_only_what_is_left(start_llama_server, tmp_path: Path) -> None:
    """A run started on one server resumes on two (another set of URLs) and finishes the grid."""
    first = start_llama_server(*SERVER_ARGS)
    config = RunConfig(grid=((512, (100.0, 50.0, 0.0)),), out_dir=tmp_path, url=first.url, show_progress=False)
    run(config)
    second = start_llama_server(*SERVER_ARGS)
    servers = [second.url, first.url]
    summary = run(url_config(servers, tmp_path))
    records = cell_records(summary.results_path)
    assert_each_cell_finished_once(records)
    assert [r["endpoint"] for r in records[:3]] == [first.url] * 3
    assert len(records) == 6


@pytest.mark.server
def test_an_unreachable_url_is_dropped_and_the_run_goes_on(
    start_llama_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_llama_server(*SERVER_ARGS)
    gone = f"http://127.0.0.1:{free_port()}"
    config = RunConfig(grid=((512, (50.0,)),), out_dir=tmp_path, url=gone, urls=(server.url,), show_progress=False)
    summary = run(config)
    assert [r["endpoint"] for r in cell_records(summary.results_path)] == [server.url]
    out = capsys.readouterr().out
    assert f"dropped {gone}:" in out and "unreachable" in out


@pytest.mark.server
def test_an_interrupt_stops_every_server_and_thread(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while two managed servers work: both stopped, no worker left, nothing restarted."""

    class Interrupt(RunProgress):
        def start_cell(self, cell: Cell, endpoint: str | None = None) -> None:
            super().start_cell(cell, endpoint)
            raise KeyboardInterrupt

    monkeypatch.setattr("niah.run.runner.RunProgress", Interrupt)
    before = child_llama_servers()
    config = RunConfig(grid=GRID, out_dir=tmp_path, model=tiny_model, servers=2,
                       profiles=((512, "tiny-native-8k"), (1024, "tiny-native-8k")), show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    assert child_llama_servers() <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("niah-")]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["tiny-native-8k-1.1.log", "tiny-native-8k-2.1.log"]


@pytest.mark.server
def test_an_error_the_server_answers_for_one_cell_is_that_cells_outcome(
    llama_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HTTP 500 from /apply-template for one cell: that cell is HTTP_ERROR, the one server is not
    dropped, and the other cells run."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    class FailOnce(BaseHTTPRequestHandler):
        templates = 0

        def log_message(self, *args: object) -> None:
            return

        def _relay(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
            if self.path == "/apply-template":
                type(self).templates += 1
                if type(self).templates == 2:  # the first cell's count is the first render
                    self.send_response(500)
                    self.send_header("Content-Length", "4")
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
            with httpx.Client(timeout=None, trust_env=False) as client, client.stream(
                method, llama_server.url + self.path, content=body, headers={"Content-Type": "application/json"}
            ) as response:
                self.send_response(response.status_code)
                self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
                self.end_headers()
                for chunk in response.iter_raw():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:
            self._relay("GET")

        def do_POST(self) -> None:
            self._relay("POST")

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), FailOnce)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        summary = run(RunConfig(grid=((512, (0.0, 50.0, 100.0)),), out_dir=tmp_path, url=url, show_progress=False))
    finally:
        proxy.shutdown()
        proxy.server_close()
    outcomes = [r["outcome"] for r in cell_records(summary.results_path)]
    assert outcomes.count("HTTP_ERROR") == 1 and len(outcomes) == 3, outcomes
    assert "dropped" not in capsys.readouterr().out
    assert summary.exit_code == 4
