"""Process lifecycle helpers under threads: ports handed out once, the live-server registry, IPv6."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from niah import server
from niah.errors import NiahError
from niah.server import ManagedServer, free_port


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
