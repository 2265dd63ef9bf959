"""Signals and deaths, with a real `niah run` process and real llama-servers: SIGTERM, SIGHUP and
SIGINT end niah within seconds at every stage, every server stopped by niah itself and every
finished cell kept; a signal niah inherited ignored stays ignored; a niah killed with SIGKILL
leaves no server; a server an earlier niah left running is stopped by the next launch in its folder.

Each stage is made to last: niah's servers are frozen (SIGSTOP) once niah is in it, so nothing here
depends on how fast this machine loads or prefills.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import children, gone, niah_process, stop_with, wait_for

from niah.launch.leftovers import RECORD_SUFFIX, process_id, stop_leftovers
from niah.launch.server import find_server_binary

STOP_WITHIN_S = 10.0
"""How long niah may take to exit after a signal: its servers get one 3 s grace together. Frozen,
they never end a batch by themselves, so waiting for one (or for each in turn) shows here."""
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGINT: 130}


def logs_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("logs/*.log")))


def cell_records(folder: Path) -> list[dict[str, object]]:
    path = folder / "results.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("record") == "cell"]  # every line whole


def freeze(pids: dict[int, str] | list[int]) -> list[int]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return list(pids)


def self_freezing_server(folder: Path) -> Path:
    """A llama-server that stops itself before it loads anything (until niah stops it)."""
    script = folder / "llama-server-frozen"
    script.write_text(f'#!/bin/sh\nkill -STOP $$\nexec "{find_server_binary()}" "$@"\n')
    script.chmod(0o755)
    return script


def request_waiting_at(port: int) -> bool:
    """A connection to `port` holds bytes its (frozen) server has not read: a request waits."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state, queues = line.split()[1], line.split()[3], line.split()[4]
        if int(local.split(":")[1], 16) == port and state == "01" and int(queues.split(":")[1], 16) > 0:
            return True
    return False


def server_pid(log: Path) -> int:
    """The pid of the server logging to `log`, from its record."""
    return int(json.loads(log.with_suffix(RECORD_SUFFIX).read_text())["server"]["pid"])


def stage_argv(stage: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """`niah run` arguments that reach `stage`."""
    if stage == "load":
        return ["--model", str(request.getfixturevalue("tiny_model")), "--profile", "tiny-native-8k",
                "--servers", "2", "--server-bin", str(self_freezing_server(tmp_path)), "--lengths", "1024"]
    if stage == "prefill":  # two runs of three cells, one per server
        return ["--model", str(request.getfixturevalue("tiny_model")), "--profile", "tiny-native-8k",
                "--servers", "2", "--lengths", "512,1024", "--depths", "0,50,100"]
    if stage == "primer":
        (profile := tmp_path / "hybrid.toml").write_text("context = 4064\n")  # native 4,096 less the answer tokens
        return ["--model", str(request.getfixturevalue("qwen35_testbed")), "--profile", str(profile),
                "--lengths", "2000"]
    return ["--model", str(request.getfixturevalue("rehearsal_model")), "--profile", "yarn-1m", "--lengths", "1010000"]


def in_stage(stage: str, child: subprocess.Popen[str], out: Path) -> list[int]:
    """Wait until niah is in `stage` and freeze its servers there; their pids."""
    if stage == "load":  # both launches forked, neither loaded: each froze itself
        return wait_for(lambda: (k := children(child.pid)) and len(k) == 2 and set(k.values()) == {"T"} and list(k),
                        child, "two launches loading")
    if stage == "prefill":  # the first server to prefill is frozen in it; the other finishes a cell
        busy = wait_for(lambda: [p for p in sorted(out.glob("logs/*.log")) if "processing task" in p.read_text()],
                        child, "a prefill")
        freeze([server_pid(busy[0])])
        wait_for(lambda: cell_records(out), child, "a finished cell on the other server")
        return list(children(child.pid))
    if stage == "primer":  # the first task a priming model's server gets is the first cell's primer
        wait_for(lambda: "processing task" in logs_text(out), child, "the first primer")
        return freeze(children(child.pid))
    # count: frozen once the run has started, until the 1M cell's build sends it a request to count
    results = out / "results.jsonl"
    servers = freeze(wait_for(lambda: results.exists() and '"record": "facts"' in results.read_text()
                              and children(child.pid), child, "the first cell"))
    port = int(re.findall(r"--port (\d+)", logs_text(out))[0])
    wait_for(lambda: request_waiting_at(port), child, "a count of the 1M prompt")
    return servers


@pytest.mark.server
@pytest.mark.parametrize(("signum", "stage"), [
    (signal.SIGTERM, "load"),
    (signal.SIGHUP, "prefill"),
    (signal.SIGINT, "prefill"),
    (signal.SIGINT, "primer"),
    pytest.param(signal.SIGTERM, "count", marks=pytest.mark.slow),
])
def test_a_signal_at_any_stage_stops_niah_and_every_server_within_seconds(
    signum: int, stage: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`niah run` signalled while its servers load, while one prefills (a cell already finished on
    the other), while a primer streams, during the count of a 1M-token prompt: it exits within
    seconds with its signal's code, having stopped and reaped every server itself (a server only the
    parent-death guard took would leave its record), and the finished cells are kept."""
    out = tmp_path / "run"
    argv = ["run", *stage_argv(stage, request, tmp_path), "--out", str(out), "--no-progress"]
    argv += [] if "--depths" in argv else ["--depths", "50"]
    with niah_process(argv) as child:
        servers = in_stage(stage, child, out)
        kept = cell_records(out)
        output = stop_with(child, signum, within_s=STOP_WITHIN_S)
    assert child.returncode == EXIT_CODES[signum], output
    assert "Traceback" not in output, output
    assert gone(servers), "a server outlived niah"
    assert not list(out.glob(f"logs/*{RECORD_SUFFIX}")), "niah exited before it had stopped every server"
    assert cell_records(out)[:len(kept)] == kept
    if stage == "prefill":
        assert kept
    if stage == "primer":
        assert "niah primes a checkpoint at each needle" in output


@pytest.mark.server
@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
def test_a_signal_niah_inherited_ignored_stays_ignored(ignored: str, tiny_model: Path, tmp_path: Path) -> None:
    """Under nohup (SIGHUP) or started with `&` by a script (SIGINT), that signal does not stop niah;
    SIGTERM still does. Both are pending at once, and the lower-numbered one would be handled first."""
    argv = ["run", "--model", str(tiny_model), "--profile", "tiny-native-8k", "--lengths", "1024", "--depths", "50",
            "--server-bin", str(self_freezing_server(tmp_path)), "--out", str(tmp_path / "run"), "--no-progress"]
    with niah_process(argv, ignored=(ignored,)) as child:
        servers = wait_for(lambda: (k := children(child.pid)) and set(k.values()) == {"T"} and list(k), child,
                           "a launch loading")
        child.send_signal(getattr(signal, ignored))
        output = stop_with(child, signal.SIGTERM, within_s=STOP_WITHIN_S)
    assert child.returncode == 143, output
    assert gone(servers)


@pytest.mark.server
def test_a_niah_killed_with_sigkill_leaves_no_llama_server(tiny_model: Path, tmp_path: Path) -> None:
    """SIGKILL while two servers are up and one prefills: the kernel ends both with niah (the guard),
    though niah stopped nothing; their records are left, and the next launch's check drops them."""
    out = tmp_path / "run"
    argv = ["run", "--model", str(tiny_model), "--profile", "tiny-native-8k", "--servers", "2",
            "--lengths", "1024", "--depths", "0,50,100", "--out", str(out), "--no-progress"]
    with niah_process(argv) as child:
        wait_for(lambda: "processing task" in logs_text(out), child, "the first prefill")
        servers = list(children(child.pid))
        assert len(servers) == 2
        child.kill()
        child.communicate()
    deadline = time.monotonic() + 60  # the kernel signals at once; this only bounds a broken test
    while not gone(servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(servers), "a llama-server outlived a killed niah"
    assert len(list(out.glob(f"logs/*{RECORD_SUFFIX}"))) == 2  # niah never got to stop them
    assert stop_leftovers(out / "logs") == []  # nothing left to stop
    assert not list(out.glob(f"logs/*{RECORD_SUFFIX}"))


UNGUARDED_NIAH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from niah.launch import server
    server.guarded = list  # a niah on a system without the parent-death guard
    started = server.ManagedServer(argv=["sleep", "300"], log_path=Path(sys.argv[1]))
    started.start(healthy=lambda: True)
    print(started.process.pid, flush=True)
    sys.stdin.read()  # until the test kills this process
    """
)


def test_a_server_an_earlier_niah_left_running_is_stopped_by_the_next_launch(tmp_path: Path) -> None:
    """A niah without the guard dies by SIGKILL and its server runs on; the next start in that folder
    stops it (and only it), then launches its own."""
    from niah.launch.server import ManagedServer

    niah = subprocess.Popen([sys.executable, "-c", UNGUARDED_NIAH, str(tmp_path / "first.1.log")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert niah.stdout is not None
    left = int(niah.stdout.readline())
    niah.kill()
    niah.communicate()
    assert not gone([left])  # orphaned, still running
    again = ManagedServer(argv=["sleep", "300"], log_path=tmp_path / "second.1.log")
    try:
        again.start(healthy=lambda: True)
        assert again.alive()
    finally:
        again.stop()
    deadline = time.monotonic() + 60
    while not gone([left]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone([left])
    assert not list(tmp_path.glob(f"*{RECORD_SUFFIX}"))


def test_only_a_process_provably_the_one_recorded_is_stopped(tmp_path: Path) -> None:
    """Records whose process is another (another start time: a reused pid; another command line), or
    whose niah still runs, stop nothing; those of a dead niah that point elsewhere are dropped."""
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        me, it = process_id(os.getpid()), process_id(bystander.pid)
        assert me is not None and it is not None
        dead_niah = {"pid": 999_999_999, "start_ticks": 1, "boot_id": it.boot_id}
        records = {
            "reused": ({**it.__dict__, "start_ticks": it.start_ticks - 1}, ["sleep", "300"], dead_niah),
            "other-command": (it.__dict__, ["sleep", "301"], dead_niah),
            "niah-alive": (it.__dict__, ["sleep", "300"], me.__dict__),
        }
        for name, (server, argv, niah) in records.items():
            (tmp_path / f"{name}{RECORD_SUFFIX}").write_text(json.dumps({"server": server, "argv": argv, "niah": niah}))
        assert stop_leftovers(tmp_path) == []
        assert bystander.poll() is None
        assert [p.name for p in tmp_path.glob(f"*{RECORD_SUFFIX}")] == [f"niah-alive{RECORD_SUFFIX}"]
        (tmp_path / f"mine{RECORD_SUFFIX}").write_text(
            json.dumps({"server": it.__dict__, "argv": ["sleep", "300"], "niah": dead_niah}))
        (line,) = stop_leftovers(tmp_path)
        assert f"stopped llama-server pid {bystander.pid}" in line
        assert bystander.wait(timeout=60) == -signal.SIGTERM
    finally:
        bystander.kill()
        bystander.wait()
