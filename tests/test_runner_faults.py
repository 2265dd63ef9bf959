"""Faults a real server won't show on demand, injected by a proxy in front of the real tiny server.

Everything but chat completions (health, props, template, tokenize) is forwarded to the real
llama-server, so the runner's counting and preflight stay real; each chat request gets the
next scripted fault.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from conftest import niah_process, stop_with, wait_for

from niah.run.runner import RunConfig, run

pytestmark = pytest.mark.server

EXCEED = {"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long", "n_prompt_tokens": 9999, "n_ctx": 8192}}


class FaultProxy(BaseHTTPRequestHandler):
    """Forwards to `upstream`; chat completions take the next fault from `faults`. With
    `tokenize_even`, every /tokenize of a rendered prompt answers an even number of tokens (one
    more than the server when its count is odd), so no prompt counts an odd length."""

    upstream = ""
    faults: ClassVar[list[str]] = []
    stop = threading.Event()
    tokenize_even = False
    bodies: ClassVar[list[tuple[str, dict]]] = []

    def log_message(self, *args: object) -> None:
        return

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        request = json.loads(body) if body else {}
        self.bodies.append((self.path, request))
        with httpx.Client(timeout=60, trust_env=False) as client:
            response = client.request(method, self.upstream + self.path, content=body,
                                      headers={"Content-Type": "application/json"})
        content = response.content
        if self.path == "/tokenize" and request.get("parse_special") and self.tokenize_even:
            answer = response.json()
            answer["tokens"] = answer["tokens"] + answer["tokens"][-1:] * (len(answer["tokens"]) % 2)
            content = json.dumps(answer).encode()
        self.send_response(response.status_code)
        self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def do_GET(self) -> None:
        self._forward("GET")

    def _forward_stream(self, body: bytes, rewrite: str | None = None) -> None:
        """Relay a chat stream event by event (HTTP/1.0: the body ends when the connection closes).

        `usage+1` adds one token to the served prompt count; `think-pass` / `think-fail` replace the
        answer with reasoning that names the prompt's 7-digit value, then an answer that does / does not.
        """
        request = json.loads(body)
        self.bodies.append((self.path, request))
        value = re.findall(r"\b\d{7}\b", json.dumps(request["messages"]))[0]
        if rewrite and rewrite.startswith("think"):  # the real model only has to end the stream
            body = json.dumps({**request, "max_tokens": 4}).encode()
        with httpx.Client(timeout=None, trust_env=False) as client, client.stream(
            "POST", self.upstream + self.path, content=body, headers={"Content-Type": "application/json"}
        ) as response:
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers.get("content-type", "text/event-stream"))
            self.end_headers()
            for line in response.iter_lines():
                for event in _rewrite(line, rewrite, value):
                    self.wfile.write(f"{event}\n".encode())
                    self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._forward("POST")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.faults.pop(0) if self.faults else None
        if fault in (None, "ok", "usage+1", "think-pass", "think-fail"):
            self._forward_stream(body, None if fault == "ok" else fault)
            return
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


def _rewrite(line: str, rewrite: str | None, value: str) -> list[str]:
    """The SSE lines to send for one upstream line."""
    if not rewrite or not line.startswith("data: {"):
        return [line]
    event = json.loads(line[6:])
    if rewrite == "usage+1" and isinstance(event.get("usage"), dict):
        event["usage"]["prompt_tokens"] += 1
        return [f"data: {json.dumps(event)}"]
    choices = event.get("choices") or []
    if rewrite.startswith("think") and choices and (choices[0].get("delta") or {}).get("content"):
        return []  # the model's own answer is replaced
    if rewrite.startswith("think") and choices and choices[0].get("finish_reason"):
        answer = value if rewrite == "think-pass" else "I cannot tell."
        thought = {"choices": [{"index": 0, "delta": {"reasoning_content": f"The text says {value}."}}]}
        said = {"choices": [{"index": 0, "delta": {"content": answer}}]}
        event["choices"][0]["finish_reason"] = "stop"
        return [f"data: {json.dumps(thought)}", "", f"data: {json.dumps(said)}", "", f"data: {json.dumps(event)}"]
    return [line]


@pytest.fixture
def fault_proxy(llama_server) -> Iterator[type[FaultProxy]]:
    handler = type("Proxy", (FaultProxy,), {
        "upstream": llama_server.url, "faults": [], "stop": threading.Event(), "bodies": [], "tokenize_even": False,
    })
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    handler.stop.set()
    server.shutdown()
    server.server_close()


def test_each_fault_lands_as_its_outcome_and_the_run_goes_on(fault_proxy, tmp_path: Path) -> None:
    """Four faults in a row, each its cell's outcome, then a real cell in the same folder. The faults
    run with a 2 s stall timeout: every cell of that run is the proxy's, so no real prefill (which
    streams nothing for its first batch, a minute on a busy CPU) meets the short limit."""
    # cells go by needle position: 0, 25, 50, 75, 100
    fault_proxy.faults.extend(["400", "stall", "drop", "500"])
    config = RunConfig(grid=((1024, (0.0, 25.0, 50.0, 75.0)),), out_dir=tmp_path,
                       url=fault_proxy.url, stall_timeout_s=2.0, show_progress=False)  # type: ignore[attr-defined]
    run(config)
    summary = run(replace(config, grid=((1024, (0.0, 25.0, 50.0, 75.0, 100.0)),), stall_timeout_s=600.0))
    records = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    outcomes = {r["depth"]: r["outcome"] for r in records if r.get("record") == "cell"}
    assert outcomes[0.0] == "CONTEXT_ERROR"
    assert outcomes[25.0] == "TIMEOUT"
    assert outcomes[50.0] == "HTTP_ERROR"
    assert outcomes[75.0] == "HTTP_ERROR"
    assert outcomes[100.0] in ("PASS", "FAIL")
    assert summary.exit_code == 4
    grid = (tmp_path / "grid.md").read_text()
    assert "CONTEXT_ERROR" in grid and "TIMEOUT" in grid


def test_cells_the_server_never_processed_count_no_reuse_and_warn_of_none(
    fault_proxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first cell runs; the next two share most of it but the connection drops / the server answers 500
    fault_proxy.faults.extend(["ok", "drop", "500"])
    summary = run(RunConfig(grid=((1024, (0.0, 50.0, 100.0)),), out_dir=tmp_path, url=fault_proxy.url,  # type: ignore[attr-defined]
                            show_progress=False))
    records = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    cells = {r["depth"]: r for r in records if r.get("record") == "cell"}
    assert [cells[d]["outcome"] for d in (50.0, 100.0)] == ["HTTP_ERROR", "HTTP_ERROR"]
    assert cells[50.0]["cache_expected"] > 0  # it shared a prefix with the first, but never reached the cache
    assert summary.prefill_tokens_reusable == 0
    assert "llama-server reused" not in capsys.readouterr().out


def test_resume_with_retry_reruns_transient_cells_only(fault_proxy, tmp_path: Path) -> None:
    """Two cells end HTTP_ERROR (a 500, a dropped stream); a plain resume sends nothing, `--retry` sends
    exactly those two again, and their new outcomes are the cells'."""
    fault_proxy.faults.extend(["500", "drop"])
    config = RunConfig(grid=((1024, (0.0, 50.0, 100.0)),), out_dir=tmp_path, url=fault_proxy.url, show_progress=False)
    first = run(config)
    assert [r["outcome"] for r in cells(first.results_path)][:2] == ["HTTP_ERROR", "HTTP_ERROR"]
    def chats() -> int:
        return sum(path == "/v1/chat/completions" for path, _ in fault_proxy.bodies)

    sent = chats()
    assert run(config).exit_code == 4 and chats() == sent
    again = run(replace(config, retry=True))
    assert chats() == sent + 2
    records = cells(again.results_path)
    assert len(records) == 5 and {r["outcome"] for r in records[3:]} <= {"PASS", "FAIL"}
    assert "HTTP_ERROR" not in again.outcomes and again.exit_code in (0, 1)


def cells(summary_path: Path) -> list[dict]:
    return [r for r in map(json.loads, summary_path.read_text().splitlines()) if r.get("record") == "cell"]


def test_token_mismatch_before_sending_and_after_serving(fault_proxy, tmp_path: Path) -> None:
    """A server whose count is never L gets nothing sent; one that serves another count than it
    counted is TOKEN_MISMATCH after the answer."""
    fault_proxy.tokenize_even = True
    before = run(RunConfig(grid=((513, (50.0,)),), out_dir=tmp_path / "before", url=fault_proxy.url,
                           show_progress=False))
    (record,) = cells(before.results_path)
    assert record["outcome"] == "TOKEN_MISMATCH" and record["prompt_tokens_served"] is None
    assert "exactly 513 tokens" in record["error"]
    assert not [path for path, _ in fault_proxy.bodies if path == "/v1/chat/completions"]  # never sent

    fault_proxy.tokenize_even = False
    fault_proxy.faults.append("usage+1")
    after = run(RunConfig(grid=((512, (50.0,)),), out_dir=tmp_path / "after", url=fault_proxy.url,
                          show_progress=False))
    (record,) = cells(after.results_path)
    assert record["outcome"] == "TOKEN_MISMATCH" and record["prompt_tokens_served"] == 513
    assert "server counted 513 prompt tokens, planned 512" in record["error"]
    assert after.exit_code == 4


def test_thinking_on_end_to_end(fault_proxy, tmp_path: Path) -> None:
    """Thinking on: templates and chats ask for it, the budget is the thinking one, and a value that
    only the reasoning names is not a PASS."""
    fault_proxy.faults.extend(["think-pass", "think-fail"])
    summary = run(RunConfig(grid=((512, (0.0, 100.0)),), out_dir=tmp_path, url=fault_proxy.url,
                            thinking="on", show_progress=False))
    outcomes = {r["depth"]: r["outcome"] for r in cells(summary.results_path)}
    assert outcomes == {0.0: "PASS", 100.0: "FAIL"}  # cells go by needle position
    chats = [body for path, body in fault_proxy.bodies if path == "/v1/chat/completions"]
    renders = [body for path, body in fault_proxy.bodies if path == "/apply-template"]
    assert len(chats) == 2 and renders
    assert all(c["chat_template_kwargs"] == {"enable_thinking": True} and c["max_tokens"] == 4096 for c in chats)
    assert all(r["chat_template_kwargs"] == {"enable_thinking": True} for r in renders)
    assert summary.exit_code == 1


@pytest.mark.server
def test_stopping_a_run_mid_prefill_on_a_url_server_returns_at_once(qwen35_server, tmp_path: Path) -> None:
    """SIGTERM while the (one) worker thread reads a long prefill's stream: niah ends the request
    and exits in seconds (it does not wait out the worker), recording nothing for the unfinished
    cell. The server is frozen (SIGSTOP) as soon as it takes the cell's first request, so the
    prefill lasts until niah is gone (a 4,000-token prefill of the test bed takes 2 s on a quiet
    machine)."""
    since = qwen35_server.log_path.stat().st_size
    server = qwen35_server.session.process.process  # type: ignore[union-attr]
    argv = ["run", "--url", qwen35_server.url, "--lengths", "4000", "--depths", "100", "--out", str(tmp_path),
            "--no-progress"]
    with niah_process(argv) as child:
        wait_for(lambda: "processing task" in qwen35_server.log_path.read_text(errors="replace")[since:], child,
                 "the cell's prefill")
        server.send_signal(signal.SIGSTOP)
        try:
            stop_with(child, signal.SIGTERM, within_s=5)  # the worker's request is ended, not waited for
        finally:
            server.send_signal(signal.SIGCONT)
    assert '"record": "cell"' not in (tmp_path / "results.jsonl").read_text()
