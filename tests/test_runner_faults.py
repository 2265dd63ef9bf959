"""Faults a real server won't show on demand, injected by a proxy in front of the real tiny server.

Everything but chat completions (health, props, template, tokenize) is forwarded to the real
llama-server, so the runner's counting and preflight stay real; each chat request gets the
next scripted fault.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from niah.runner import RunConfig, run

pytestmark = pytest.mark.server

EXCEED = {"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long", "n_prompt_tokens": 9999, "n_ctx": 8192}}


class FaultProxy(BaseHTTPRequestHandler):
    """Forwards to `upstream`; chat completions take the next fault from `faults`."""

    upstream = ""
    faults: ClassVar[list[str]] = []
    stop = threading.Event()

    def log_message(self, *args: object) -> None:
        return

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        with httpx.Client(timeout=60, trust_env=False) as client:
            response = client.request(method, self.upstream + self.path, content=body,
                                      headers={"Content-Type": "application/json"})
        self.send_response(response.status_code)
        self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    def do_GET(self) -> None:
        self._forward("GET")

    def _forward_stream(self) -> None:
        """Relay a chat stream chunk by chunk (HTTP/1.0: the body ends when the connection closes)."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with httpx.Client(timeout=None, trust_env=False) as client, client.stream(
            "POST", self.upstream + self.path, content=body, headers={"Content-Type": "application/json"}
        ) as response:
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers.get("content-type", "text/event-stream"))
            self.end_headers()
            for chunk in response.iter_raw():
                self.wfile.write(chunk)
                self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._forward("POST")
            return
        if not self.faults:
            self._forward_stream()
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.faults.pop(0)
        if fault in ("400", "500"):
            payload = json.dumps(EXCEED if fault == "400" else {"error": {"code": 500, "message": "boom"}}).encode()
            self.send_response(int(fault))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        progress = {"choices": [], "prompt_progress": {"total": 100, "cache": 0, "processed": 50, "time_ms": 10}}
        self.wfile.write(f"data: {json.dumps(progress)}\n\n".encode())
        self.wfile.flush()
        if fault == "stall":
            self.stop.wait(120)  # silent until the client gives up
        # "drop": close the connection mid-stream without a final chunk
        self.close_connection = True


@pytest.fixture
def fault_proxy(llama_server) -> Iterator[type[FaultProxy]]:
    handler = type("Proxy", (FaultProxy,), {"upstream": llama_server.url, "faults": [], "stop": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    handler.stop.set()
    server.shutdown()
    server.server_close()


def test_each_fault_lands_as_its_outcome_and_the_run_goes_on(fault_proxy, tmp_path: Path) -> None:
    # cells go depth-descending: 100, 75, 50, 25, 0
    fault_proxy.faults.extend(["400", "stall", "drop", "500"])
    started = time.monotonic()
    summary = run(
        RunConfig(
            grid=((1024, (0.0, 25.0, 50.0, 75.0, 100.0)),),
            out_dir=tmp_path,
            url=fault_proxy.url,  # type: ignore[attr-defined]
            stall_timeout_s=15.0,  # silence this long is a stall; a real 1K prefill under load stays below it
            show_progress=False,
        )
    )
    assert time.monotonic() - started < 300
    records = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    outcomes = {r["depth"]: r["outcome"] for r in records if r.get("record") == "cell"}
    assert outcomes[100.0] == "CONTEXT_ERROR"
    assert outcomes[75.0] == "TIMEOUT"
    assert outcomes[50.0] == "HTTP_ERROR"
    assert outcomes[25.0] == "HTTP_ERROR"
    assert outcomes[0.0] in ("PASS", "FAIL")
    assert summary.exit_code == 4
    grid = (tmp_path / "grid.md").read_text()
    assert "CONTEXT_ERROR" in grid and "TIMEOUT" in grid
