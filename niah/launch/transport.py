"""The HTTP transport of every server session: httpx's own, plus `abort()`, which ends every request
in flight from another thread (so a stop never waits for a worker blocked on a server)."""

from __future__ import annotations

import socket
import weakref
from typing import Any

import httpx


class AbortableTransport(httpx.HTTPTransport):
    """httpx's transport, keeping the socket of every connection it opens so `abort()` can shut them
    down from another thread: closing a socket does not wake a thread blocked reading it, shutting
    it down does (a worker waiting on a long prefill's stream, or on the count of a 1M prompt)."""

    def __init__(self) -> None:
        super().__init__(trust_env=False)  # as the client's own: no certificate settings from the environment
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "trace": self._trace}
        return super().handle_request(request)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                self._sockets.add(sock)

    def abort(self) -> None:
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already
