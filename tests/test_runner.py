"""The runner end to end against a real llama-server with SmolLM2 (and a fault-injecting proxy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from niah.cells import Cell, parse_depths, parse_lengths, plan_cells
from niah.errors import NiahError
from niah.launch.server import find_server_binary
from niah.prompts.corpus import get_corpus
from niah.publish.results import ResultsFile
from niah.run.dispatch import WorkerProgress
from niah.run.runner import RunConfig, run, run_fingerprint


def cell_records(path: Path) -> list[dict[str, object]]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip() and json.loads(line).get("record") == "cell"]


def url_config(url: str, out: Path, lengths: tuple[int, ...], depths: tuple[float, ...], **kw: object) -> RunConfig:
    return RunConfig(
        grid=tuple((length, depths) for length in lengths),
        out_dir=out,
        url=url,
        show_progress=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.server
def test_grid_2x3_counts_exact_and_passes(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 2048), (0.0, 50.0, 100.0)))
    records = cell_records(summary.results_path)
    assert len(records) == 6
    for record in records:
        assert record["prompt_tokens_served"] == record["length"]  # the server's own count of what it served
        assert record["tokenizer"] == "server"  # auto: SmolLM2's vocabulary is not Qwen3.6's
        assert record["outcome"] == "PASS", record
    assert summary.exit_code == 0
    grid = (tmp_path / "grid.md").read_text()
    assert grid.splitlines()[0].split()[:4] == ["length", "0%", "50%", "100%"]


@pytest.mark.server
def test_answer_budget_of_one_token_is_truncated_live(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (512,), (50.0,), answer_budget=1))
    (record,) = cell_records(summary.results_path)
    assert (record["outcome"], record["finish_reason"], record["predicted_n"]) == ("TRUNCATED", "length", 1)
    assert summary.exit_code == 4


@pytest.mark.server
def test_a_tokenizer_the_server_disagrees_with_is_replaced_by_the_servers_own(llama_server, tmp_path: Path) -> None:
    """qwen3.6 counts SmolLM2 prompts wrong: each prompt is rebuilt with the server's tokenizer first."""
    summary = run(url_config(llama_server.url, tmp_path, (1024,), (0.0, 100.0), tokenizer="qwen3.6"))
    records = cell_records(summary.results_path)
    assert [r["tokenizer"] for r in records] == ["server", "server"]
    assert [r["prompt_tokens_served"] for r in records] == [1024, 1024]
    facts = [json.loads(line) for line in summary.results_path.read_text().splitlines()][1]
    assert facts["record"] == "facts" and facts["facts"]["tokenizer_resolved"] == "qwen3.6"


@pytest.mark.server
def test_resume_refuses_an_edited_needle_file(llama_server, tmp_path: Path) -> None:
    needles = tmp_path / "needles.toml"
    needles.write_text('[[needle]]\ntext = "The vault code is {value}."\nquestion = "What is the vault code?"\n'
                       'answer = "{value}"\n')
    config = url_config(llama_server.url, tmp_path / "run", (512,), (50.0,), needle_file=needles)
    run(config)
    needles.write_text(needles.read_text().replace("vault", "locker"))
    size = config.results_path.stat().st_size
    with pytest.raises(NiahError, match=r"fingerprint differs in: needle_spec\.sha256"):
        run(config)
    assert config.results_path.stat().st_size == size


@pytest.mark.server
def test_duplicate_lengths_are_planned_and_sent_once(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 1024), (50.0, 50.0)))
    assert [(r["length"], r["depth"]) for r in cell_records(summary.results_path)] == [(1024, 50.0)]


@pytest.mark.server
def test_each_prompt_reuses_what_it_shares_with_the_one_before(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 2048), (50.0, 100.0)))
    records = cell_records(summary.results_path)
    assert [(r["length"], r["depth"]) for r in records] == [(1024, 50.0), (1024, 100.0), (2048, 50.0), (2048, 100.0)]
    for record in records[1:]:  # the server's cache_n against what niah expected it to reuse
        expected, cached = int(record["cache_expected"]), int(record["cache_n"])  # type: ignore[call-overload]
        # at least that much (the shared server may also hold an identical prompt from an earlier test)
        assert expected > 400 and cached >= expected - 8, record
    computed = sum(int(r["prompt_n"]) for r in records)  # type: ignore[call-overload]
    naive = sum(int(r["length"]) for r in records)  # type: ignore[call-overload]
    assert computed <= 0.6 * naive, (computed, naive)


@pytest.mark.server
def test_cell_beyond_served_context_is_clamped_not_sent(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 9000), (50.0,)))
    by_length = {r["length"]: r for r in cell_records(summary.results_path)}
    assert by_length[9000]["outcome"] == "CLAMPED"
    assert by_length[9000]["prompt_tokens_served"] is None
    assert by_length[9000]["server_n_ctx"] == 8192
    assert by_length[1024]["outcome"] in ("PASS", "FAIL")
    assert summary.exit_code == 3


@pytest.mark.server
def test_sigkill_mid_grid_then_resume_runs_each_cell_once(llama_server, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        sys.executable, "-m", "niah", "run", "--url", llama_server.url, "--lengths", "1024",
        "--depths", "0,25,50,75,100", "--out", str(out), "--no-progress",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if results.exists() and len(cell_records(results)) >= 2:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(cell_records(results))
    assert 2 <= killed_at < 5
    rerun = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    assert rerun.returncode in (0, 1), rerun.stderr
    keys = [(r["length"], r["depth"], r["trial"]) for r in cell_records(results)]
    assert sorted(keys) == sorted((1024, float(d), 0) for d in (0, 25, 50, 75, 100))


def test_fingerprint_tells_an_explicit_answer_budget_from_the_default(tmp_path: Path) -> None:
    """`--answer-budget 32` gives every task 32 tokens; the default gives all-of tasks more: a run
    made one way does not resume the other."""
    corpus = get_corpus("builtin")
    default = run_fingerprint(RunConfig(grid=((1024, (50.0,)),), out_dir=tmp_path), corpus, {})
    explicit = run_fingerprint(RunConfig(grid=((1024, (50.0,)),), out_dir=tmp_path, answer_budget=32), corpus, {})
    assert default["answer_budget"] == explicit["answer_budget"] == 32
    assert "answer_budget_explicit" not in default and explicit["answer_budget_explicit"] is True
    ResultsFile(tmp_path / "results.jsonl", default).write_header()
    with pytest.raises(NiahError, match="fingerprint differs in: answer_budget_explicit"):
        ResultsFile(tmp_path / "results.jsonl", explicit)


@pytest.mark.parametrize("lengths", ["131k,128k", "131072,131k"])
def test_the_same_length_twice_is_planned_once(lengths: str) -> None:
    cells = plan_cells(tuple((length, (0.0, 50.0)) for length in parse_lengths(lengths)), trials=1)
    assert cells == [Cell(131072, 0.0, 0), Cell(131072, 50.0, 0)]


def test_plan_orders_cells_by_needle_position_across_lengths() -> None:
    cells = plan_cells(((2048, (0.0, 50.0)), (1024, (100.0, 0.0, 50.0))), trials=2)
    assert cells == [
        Cell(1024, 0.0, 0), Cell(1024, 0.0, 1), Cell(2048, 0.0, 0), Cell(2048, 0.0, 1),
        Cell(1024, 50.0, 0), Cell(1024, 50.0, 1),  # needle at token 512
        Cell(1024, 100.0, 0), Cell(1024, 100.0, 1), Cell(2048, 50.0, 0), Cell(2048, 50.0, 1),  # at 1024
    ]


def test_length_and_depth_forms() -> None:
    assert parse_lengths("131k,128k,4k,393k,1m,1010000") == (131072, 131072, 4096, 393216, 1048576, 1010000)
    assert parse_depths("linspace:0:100:11")[1] == 10.0
    for bad in ("0", "0k", "-5", "abc", "1.5"):
        with pytest.raises(NiahError):
            parse_lengths(bad)
    with pytest.raises(NiahError):
        parse_depths("0,101")


def child_llama_servers() -> list[int]:
    """PIDs of llama-server processes this test process started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if fields[1] == str(os.getpid()) and name.startswith("llama-server"):
            pids.append(int(stat.parent.name))
    return pids


def zombie_or_gone(pid: int) -> bool:
    """Whether a process has exited (a zombie not yet reaped counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_server_at_cell(at: int, during: str = "count") -> type[WorkerProgress]:
    """A worker's progress reporter that also SIGKILLs the managed llama-server in cell `at`, in the
    worker thread itself (so the kill lands in the stage named, whatever the machine's speed): when
    the cell starts (`count`: before niah counts its prompt through the server) or at its first
    prefill progress event (`prefill`: during the chat). Servers running before are spared."""
    spare = set(child_llama_servers())

    class Killer(WorkerProgress):
        seen: ClassVar[list[Cell]] = []
        killed: ClassVar[list[int]] = []

        def kill(self) -> None:
            for pid in set(child_llama_servers()) - spare:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            deadline = time.monotonic() + 10
            while any(zombie_or_gone(pid) is False for pid in self.killed) and time.monotonic() < deadline:
                time.sleep(0.01)  # dead (its sockets closed) before the worker goes on

        def start_cell(self, cell: Cell) -> None:
            super().start_cell(cell)
            self.seen.append(cell)
            if during == "count" and len(self.seen) == at:
                self.kill()

        def prefill(self, event: dict[str, object], phase: str = "prefill") -> None:
            super().prefill(event, phase)
            if during == "prefill" and len(self.seen) == at and not self.killed:
                self.kill()

    return Killer


def managed_config(model: Path, out: Path, **kw: object) -> RunConfig:
    return RunConfig(
        grid=((1024, (100.0, 50.0, 0.0)),),
        out_dir=out,
        model=model,
        profiles=((1024, "tiny-native-8k"),),
        show_progress=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.server
@pytest.mark.parametrize("during", ["count", "prefill"])
def test_managed_server_killed_mid_run_is_crash_then_restarted(
    during: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(child_llama_servers())
    killer = kill_server_at_cell(2, during)
    monkeypatch.setattr("niah.run.dispatch.WorkerProgress", killer)
    summary = run(managed_config(tiny_model, tmp_path))
    assert killer.killed, "the managed llama-server was never found"
    records = cell_records(summary.results_path)
    assert [r["outcome"] for r in records][1] == "CRASH"
    expected = "while the prompt was counted" if during == "count" else "died during the cell"
    assert expected in str(records[1]["error"])
    assert records[2]["depth"] == records[1]["depth"]  # the crashed cell runs once more after the restart
    assert [r["outcome"] for r in records[2:]] in (["PASS"] * 2, ["PASS", "FAIL"], ["FAIL", "PASS"], ["FAIL"] * 2)
    assert summary.exit_code in (0, 1) and "CRASH" not in summary.outcomes  # the retry's record is the cell's
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["tiny-native-8k.1.log", "tiny-native-8k.2.log"]  # the crashed launch's log is kept
    assert "# niah launched:" in (tmp_path / "logs" / "tiny-native-8k.1.log").read_text()
    assert set(child_llama_servers()) <= before


@pytest.mark.server
def test_crash_is_recorded_before_a_restart_that_fails(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A llama-server that starts once and then refuses to start: the CRASH is on disk all the same."""
    marker = tmp_path / "started-once"
    wrapper = tmp_path / "llama-server-once"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" != "--version" ]; then [ -e {marker} ] && exit 1; touch {marker}; fi\n'
        f'exec {find_server_binary()} "$@"\n'
    )
    wrapper.chmod(0o755)
    before = set(child_llama_servers())
    killer = kill_server_at_cell(2)
    monkeypatch.setattr("niah.run.dispatch.WorkerProgress", killer)
    out = tmp_path / "run"
    with pytest.raises(NiahError, match="exited with code 1 during start-up"):
        run(managed_config(tiny_model, out, server_bin=str(wrapper)))
    assert [r["outcome"] for r in cell_records(out / "results.jsonl")][1:] == ["CRASH"]
    assert set(child_llama_servers()) <= before


@pytest.mark.server
def test_resuming_a_finished_managed_run_starts_no_server(tiny_model: Path, tmp_path: Path) -> None:
    config = RunConfig(
        grid=((1024, (50.0,)),),
        out_dir=tmp_path,
        model=tiny_model,
        profiles=((1024, "tiny-native-8k"),),
        show_progress=False,
    )
    first = run(config)
    assert len(cell_records(first.results_path)) == 1
    # A binary that does not exist: any attempt to launch would fail the rerun.
    again = run(replace(config, server_bin=str(tmp_path / "no-llama-server")))
    assert len(cell_records(again.results_path)) == 1
    assert again.exit_code == first.exit_code


@pytest.mark.server
def test_tasks_run_exact_and_resume_per_task(llama_server, tmp_path: Path) -> None:
    """single, multikey:3 and chain:1 on the real server: every prompt served at exactly L, every
    planted piece recorded; a rerun adding multivalue:2 sends only that task's cell."""
    from niah.prompts.needles import Needle, Plant, judge
    from niah.prompts.tasks import parse_tasks

    config = url_config(llama_server.url, tmp_path, (640,), (100.0,), tasks=parse_tasks("single,multikey:3,chain:1"))
    run(config)
    records = cell_records(config.results_path)
    assert [r["task"] for r in records] == ["single", "multikey:3", "chain:1"]
    for record in records:
        assert record["prompt_tokens_served"] == record["length"] == 640
        planted = record["planted"]
        assert len(planted) == {"single": 1, "multikey:3": 3, "chain:1": 4}[record["task"]]
        assert planted[0]["role"] == "target" and planted[0]["token_offset"] == record["needle_offset"]
        assert len({p["token_offset"] for p in planted}) == len(planted)
        expected = tuple(str(record["needle_value"]).split(","))
        plants = tuple(Plant(p["text"], p["value"], p["role"]) for p in planted)
        needle = Needle("", expected[0], "", plants=plants, answers=expected if len(expected) > 1 else ())
        outcome, score, _ = judge(str(record["answer"]), needle)  # a planted value not asked makes WRONG_KEY
        assert record["score"] == score
        assert record["outcome"] == outcome or (record["outcome"], outcome) == ("TRUNCATED", "FAIL")
    assert records[0]["outcome"] == "PASS"  # SmolLM2 finds one needle at 640 tokens
    assert records[2]["needle_value"].count(",") == 1  # chain:1 asks for both variable names
    summary = run(replace(config, tasks=parse_tasks("single,multikey:3,chain:1,multivalue:2")))
    again = cell_records(config.results_path)
    assert [r["task"] for r in again[3:]] == ["multivalue:2"]
    assert set(summary.per_length) == {"single", "multikey:3", "chain:1", "multivalue:2"}
    assert "task multivalue:2\nlength 100% factor\n640 " in (tmp_path / "grid.md").read_text()


def test_wrong_key_cells_exit_1_like_fail_cells() -> None:
    from collections import Counter

    from niah.run.runner import exit_code

    assert exit_code(Counter({"PASS": 3, "WRONG_KEY": 1})) == 1
    assert exit_code(Counter({"WRONG_KEY": 1, "TRUNCATED": 1})) == 4
    assert exit_code(Counter({"PASS": 3})) == 0
