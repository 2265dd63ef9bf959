"""Process lifecycle: ports handed out once, the live-server registry under threads, IPv6 hosts."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from niah.errors import NiahError
from niah.launch import server
from niah.launch.server import ManagedServer, free_port
from niah.launch.session import ServerSession, ServerSpec


def test_ports_handed_out_at_once_are_all_different() -> None:
    ports: list[int] = []

    def take() -> None:
        ports.extend(free_port() for _ in range(100))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ports) == 800 and len(set(ports)) == 800  # the kernel alone repeats some within 800


def test_a_free_port_on_ipv6_loopback_can_be_bound() -> None:
    port = free_port("::1")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


def test_a_host_that_cannot_be_bound_is_one_line() -> None:
    with pytest.raises(NiahError, match="cannot (bind|resolve)"):
        free_port("no-such-host.invalid")


class SlowList(list):  # type: ignore[type-arg]
    """A list whose iteration yields the thread between items, to widen any race on it."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        for item in list.__iter__(self):
            time.sleep(0.002)
            yield item


def test_the_live_registry_keeps_every_server_while_others_start_and_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_LIVE", SlowList())

    def launch(name: str) -> ManagedServer:
        managed = ManagedServer(argv=["sleep", "60"], log_path=tmp_path / f"{name}.log")
        managed.start(healthy=lambda: True)
        return managed

    kept = [launch(f"kept{i}") for i in range(6)]

    def churn(n: int) -> None:
        for i in range(6):
            launch(f"churn{n}.{i}").stop(grace_s=5)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(map(id, server._LIVE)) == sorted(map(id, kept))  # none lost, none stopped left in
    finally:
        for managed in kept:
            managed.stop(grace_s=5)
    assert list(server._LIVE) == []


@pytest.mark.server
def test_a_managed_server_on_ipv6_loopback_serves_check_and_run(tiny_model: Path, tmp_path: Path) -> None:
    spec = ServerSpec(model=tiny_model, host="::1", args=("-c", "2048", "--parallel", "1"), log_dir=tmp_path)
    with ServerSession(spec) as session:
        assert session.url.startswith("http://[::1]:")
        niah = [sys.executable, "-m", "niah"]
        checked = subprocess.run([*niah, "check", "--url", session.url, "--context", "1024"],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert checked.returncode == 0, checked.stderr
        ran = subprocess.run([*niah, "run", "--url", session.url, "--lengths", "512", "--depths", "50",
                              "--no-progress", "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, timeout=600, check=False)
        assert ran.returncode in (0, 1) and "Traceback" not in ran.stderr, ran.stderr
