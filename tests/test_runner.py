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

import pytest

from niah.cells import Cell, parse_depths, parse_lengths, plan_cells
from niah.errors import NiahError
from niah.runner import RunConfig, run

pytestmark = pytest.mark.server


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


def test_grid_2x3_counts_exact_and_passes(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 2048), (0.0, 50.0, 100.0)))
    records = cell_records(summary.results_path)
    assert len(records) == 6
    for record in records:
        assert record["prompt_tokens_served"] == record["length"]
        assert record["prompt_tokens_planned"] == record["length"]
        assert record["outcome"] == "PASS", record
    assert summary.exit_code == 0
    grid = (tmp_path / "grid.md").read_text()
    assert grid.splitlines()[0].split()[:4] == ["length", "0%", "50%", "100%"]


def test_descending_depth_reuses_prefix(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (2048,), (100.0, 75.0, 50.0)))
    records = cell_records(summary.results_path)
    assert [r["depth"] for r in records] == [100.0, 75.0, 50.0]
    assert all(int(r["cache_n"]) > 0 for r in records[1:])  # type: ignore[call-overload]
    computed = sum(int(r["prompt_n"]) for r in records)  # type: ignore[call-overload]
    naive = sum(int(r["length"]) for r in records)  # type: ignore[call-overload]
    assert computed <= 0.75 * naive, (computed, naive)


def test_cell_beyond_served_context_is_clamped_not_sent(llama_server, tmp_path: Path) -> None:
    summary = run(url_config(llama_server.url, tmp_path, (1024, 9000), (50.0,)))
    by_length = {r["length"]: r for r in cell_records(summary.results_path)}
    assert by_length[9000]["outcome"] == "CLAMPED"
    assert by_length[9000]["prompt_tokens_served"] is None
    assert by_length[9000]["server_n_ctx"] == 8192
    assert by_length[1024]["outcome"] in ("PASS", "FAIL")
    assert summary.exit_code == 3


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


def test_plan_orders_depth_descending_per_length_and_trial() -> None:
    cells = plan_cells(((2048, (0.0, 50.0)), (1024, (100.0, 0.0, 50.0))), trials=2)
    assert cells[:3] == [Cell(1024, 100.0, 0), Cell(1024, 50.0, 0), Cell(1024, 0.0, 0)]
    assert cells[3] == Cell(1024, 100.0, 1)
    assert cells[-1] == Cell(2048, 0.0, 1)


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


def test_managed_server_killed_mid_run_is_crash_then_restarted(tiny_model: Path, tmp_path: Path) -> None:
    import threading

    results = tmp_path / "results.jsonl"
    killed: list[int] = []
    before = set(child_llama_servers())  # e.g. the shared fixture server: not ours to kill

    def kill_after_first_cell() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if results.exists() and len(cell_records(results)) >= 1:
                for pid in set(child_llama_servers()) - before:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_cell, daemon=True)
    killer.start()
    summary = run(
        RunConfig(
            grid=((1024, (100.0, 50.0, 0.0)),),
            out_dir=tmp_path,
            model=tiny_model,
            profiles=((1024, "tiny-native-8k"),),
            show_progress=False,
        )
    )
    killer.join(timeout=5)
    assert killed, "the managed llama-server was never found"
    outcomes = [r["outcome"] for r in cell_records(summary.results_path)]
    assert len(outcomes) == 3
    assert outcomes[1] == "CRASH"
    assert outcomes[2] in ("PASS", "FAIL")  # the server was restarted and the run went on
    assert summary.exit_code == 4
    assert set(child_llama_servers()) <= before


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
