"""Preflight and server lifecycle against the real llama-server with SmolLM2-135M (native 8,192)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, need, readme_seed_plan

from niah.cli import main
from niah.errors import NiahError
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.preflight import preflight
from niah.launch.profiles import LaunchProfile, load_profile, server_args
from niah.launch.server import ManagedServer, WaitProgress, find_server_binary, free_port
from niah.launch.session import ServerSession, ServerSpec


def props_n_ctx(url: str) -> int:
    return int(httpx.get(f"{url}/props", timeout=10).json()["default_generation_settings"]["n_ctx"])


def process_gone(pid: int) -> bool:
    """True when no process (or process group) with this id is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.server
def test_c_beyond_native_without_yarn_is_clamped(start_llama_server: Callable[..., LiveServer]) -> None:
    live = start_llama_server("-c", "16384", "--parallel", "1")
    report = preflight(live.session, 16384)
    assert report.verdict == "CLAMPED"
    assert report.served_n_ctx == props_n_ctx(live.url) == 8192
    assert report.n_ctx_train == 8192 and report.native_context == 8192
    assert report.cause is not None and "training context 8,192" in report.cause
    assert "--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 8192" in report.cause
    assert any("exceeds the training context of the model (8192)" in line for line in report.evidence)


@pytest.mark.server
@pytest.mark.parametrize("name", ["tiny-yarn-16k", "tiny-yarn-32k"])
def test_yarn_profiles_serve_their_target(
    name: str, start_llama_server: Callable[..., LiveServer], tiny_model: Path
) -> None:
    profile = load_profile(name)
    live = start_llama_server(*server_args(profile, read_gguf_facts(tiny_model)))
    served = props_n_ctx(live.url)
    assert served >= profile.context
    report = preflight(live.session, profile.context)
    assert report.verdict == "OK" and report.cause is None
    assert report.served_n_ctx == served
    assert report.native_context == 8192
    assert profile.factor_label(report.native_context) == ("2x YaRN" if name == "tiny-yarn-16k" else "3.85x YaRN")


@pytest.mark.server
def test_rope_scale_one_step_short_is_clamped(start_llama_server: Callable[..., LiveServer], tiny_model: Path) -> None:
    # The seed's factor 3.85 on SmolLM2: llama-server caps the slot one token below 31,540.
    short = LaunchProfile(name="seed-scale", context=31540, native_context=8192, rope_scale="3.85")
    live = start_llama_server(*server_args(short, read_gguf_facts(tiny_model)))
    report = preflight(live.session, 31540)
    assert report.verdict == "CLAMPED" and report.served_n_ctx == 31539
    assert report.cause is not None
    assert report.cause.startswith("rope-scale too small: 3.85 × 8,192 = 31,539 < 31,540; use --rope-scale 3.8501")


@pytest.mark.server
def test_parallel_slots_halve_the_context_and_the_key_stays_off_the_command_line(
    tmp_path: Path, tiny_model: Path
) -> None:
    progress = io.StringIO()
    spec = ServerSpec(model=tiny_model, args=("-c", "8192", "--parallel", "2"), log_dir=tmp_path,
                      api_key="k-secret-0123", start_timeout_s=120)
    with ServerSession(spec, on_wait=WaitProgress(tmp_path / "x", every_s=0.0, stream=progress)) as session:
        assert session.process is not None and session.process.process is not None
        cmdline = Path(f"/proc/{session.process.process.pid}/cmdline").read_bytes()
        assert b"k-secret-0123" not in cmdline  # what `ps` shows every local user
        assert "k-secret-0123" not in repr(spec) and "k-secret-0123" not in repr(session.process)
        with ServerSession(ServerSpec(url=session.url)) as keyless, pytest.raises(NiahError, match="wants an API key"):
            preflight(keyless, 8000)
        report = preflight(session, 8000)
        log_path = session.log_path
    assert report.verdict == "CLAMPED" and report.slots == 2 and report.served_n_ctx == 4096
    assert report.cause is not None and "divided among 2 slots (4,096 each); use -c 16000" in report.cause
    assert log_path == tmp_path / "server.1.log"
    log_text = log_path.read_text()
    assert log_text.startswith("# niah launched: ") and "k-secret-0123" not in log_text
    assert "niah: waiting for llama-server to load (" in progress.getvalue()


@pytest.mark.server
def test_server_that_exits_at_start_leaves_no_process(tmp_path: Path, tiny_model: Path) -> None:
    log_path = tmp_path / "server.log"
    argv = [str(find_server_binary()), "-m", str(tiny_model), "--port", str(free_port()), "--no-such-flag"]
    server = ManagedServer(argv=argv, log_path=log_path)
    with pytest.raises(NiahError) as info:
        server.start(healthy=lambda: False, timeout_s=60)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert "exited with code" in message and "--no-such-flag" in message  # the full command
    assert "invalid argument: --no-such-flag" in message  # the log's last lines
    assert server.process is not None and process_gone(server.process.pid)


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_niah_stops_the_server(signum: int, tmp_path: Path, tiny_model: Path) -> None:
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from pathlib import Path
        from niah.launch.session import ServerSession, ServerSpec
        # as in a terminal: a shell that starts jobs in the background hands them SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        spec = ServerSpec(model=Path({str(tiny_model)!r}), args=("-c", "2048"), log_dir=Path({str(tmp_path)!r}))
        with ServerSession(spec) as session:
            print(session.process.process.pid, flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    server_pid = int(child.stdout.readline())
    assert not process_gone(server_pid)
    try:
        child.send_signal(signum)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    deadline = time.monotonic() + 30
    while not process_gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_gone(server_pid)


@pytest.mark.server
def test_cli_check(llama_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--url", llama_server.url, "--context", "8000", "--answer-budget", "100"]) == 0
    assert "niah: preflight OK: per-slot context 8,192, needed 8,100" in capsys.readouterr().out
    assert main(["check", "--url", llama_server.url, "--context", "8k", "--log", str(llama_server.log_path)]) == 3
    out = capsys.readouterr().out
    assert "CLAMPED: per-slot context 8,192, needed 8,224" in out and "--rope-scale" in out


def test_cli_check_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--url", f"http://127.0.0.1:{free_port()}", "--context", "1000"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.server
def test_cli_launch_starts_checks_and_stops(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = main(["launch", "tiny-yarn-12k", "--model", str(tiny_model), "--port", str(port), "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "tiny-yarn-12k.1.log").read_text().startswith("# niah launched: ")
    assert "preflight OK: per-slot context 12,288, needed 12,288" in out
    assert "--rope-scale 1.5 --yarn-orig-ctx 8192" in out
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.server
def test_launch_check_and_run_agree_on_what_fits(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tiny-native-8k tests prompts up to 8,160: OK with the 32-token answer; a 64-token budget
    does not fit its native 8,192 (the profile never stretches itself), and launch says so as
    run does."""
    assert main(["launch", "tiny-native-8k", "--model", str(tiny_model), "--log-dir", str(tmp_path)]) == 0
    assert "preflight OK: per-slot context 8,192, needed 8,192" in capsys.readouterr().out
    code = main(["launch", "tiny-native-8k", "--model", str(tiny_model), "--log-dir", str(tmp_path), "--answer-budget", "64"])
    assert code == 3 and "CLAMPED: per-slot context 8,192, needed 8,224" in capsys.readouterr().out
    code = main(["run", "--model", str(tiny_model), "--profile", "tiny-native-8k", "--lengths", "8160", "--depths", "50",
                 "--answer-budget", "64", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 3 and "CLAMPED" in capsys.readouterr().out


@pytest.mark.server
def test_the_readme_seed_grid_plans_and_preflights_on_a_native_262k_model(
    rehearsal_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's seed grid pointed at a model with Qwen3.6's native 262,144: no CLAMPED cell,
    and its 1M launch comes up and preflights OK for 1,010,000 + the answer."""
    args = readme_seed_plan()
    at = args.index("--arch")
    args[at:at + 2] = ["--model", str(rehearsal_model)]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["totals"]["clamped_cells"] == 0
    assert main(["launch", "yarn-1m", "--model", str(rehearsal_model), "--log-dir", str(tmp_path)]) == 0
    assert "preflight OK: per-slot context 1,010,040, needed 1,010,032" in capsys.readouterr().out


def enough_memory_for_the_1m_cache() -> float:
    """Free memory in GB, when there is enough for a 1,010,000-token q4_0 KV cache and the server."""
    free = mem_available_gb()
    if free < 12:
        raise NiahError(f"needs 12 GB of free memory for a 1,010,000-token KV cache, {free:.1f} GB free")
    return free


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize(("scale", "served"), [("3.85", 1_009_254), ("3.8529", 1_010_014)])
def test_the_seeds_1m_arithmetic_on_the_real_server(
    scale: str, served: int, start_llama_server: Callable[..., LiveServer]
) -> None:
    # SmolLM2 stands in for Qwen3.6: YaRN base 262,144 as in the seed; a q4_0 KV of 1,010,176 cells is 6.5 GB.
    need(enough_memory_for_the_1m_cache)
    live = start_llama_server(
        "-c", "1010000", "--parallel", "1", "-ctk", "q4_0", "-ctv", "q4_0", "-fa", "on", "-ub", "64", "-b", "64",
        "--no-warmup", "--override-kv", "llama.context_length=int:1010000",
        "--rope-scaling", "yarn", "--rope-scale", scale, "--yarn-orig-ctx", "262144",
    )
    report = preflight(live.session, 1_010_000)
    assert report.served_n_ctx == props_n_ctx(live.url) == served
    if served < 1_010_000:
        assert report.verdict == "CLAMPED" and report.cause is not None
        assert report.cause.startswith(
            "rope-scale too small: 3.85 × 262,144 = 1,009,254 < 1,010,000; use --rope-scale 3.8529"
        )
    else:
        assert report.verdict == "OK"
