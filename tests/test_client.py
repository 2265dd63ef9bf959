"""The streaming chat client: against the real llama-server, and a tiny in-process fake for faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.client import ChatResult
from niah.launch.server import free_port
from niah.launch.session import ServerSession, ServerSpec

QUESTION = [
    {"role": "system", "content": "You answer with the number only."},
    {"role": "user", "content": "The secret number is 4817. What is the secret number?"},
]


# --- the real server -----------------------------------------------------------------


@pytest.mark.server
def test_real_server_streams_answer_timings_usage_and_progress(llama_server: Any) -> None:
    events: list[dict[str, Any]] = []
    client = ServerSession(ServerSpec(url=llama_server.url, stall_timeout_s=120))
    try:
        first = client.chat(QUESTION, max_tokens=16, cache_prompt=False, on_progress=events.append)
        again = client.chat(QUESTION, max_tokens=16, cache_prompt=True)
        again_cached = client.chat(QUESTION, max_tokens=16, cache_prompt=True)
    finally:
        client.close()

    assert first.status == "ok", first.error
    assert "4817" in first.answer
    assert first.finish_reason in ("stop", "length")
    assert first.http_status == 200 and first.error is None

    counted = _server_prompt_tokens(llama_server.url, QUESTION)
    assert first.prompt_tokens == counted
    assert first.prompt_n is not None and first.cache_n is not None
    assert first.prompt_n + first.cache_n == first.prompt_tokens
    assert first.prompt_ms is not None and first.prompt_ms > 0
    assert first.predicted_n is not None and first.predicted_n >= 1
    assert first.predicted_ms is not None

    assert events, "no prompt_progress event arrived"
    assert set(events[-1]) >= {"total", "cache", "processed", "time_ms"}
    assert events[-1]["total"] == counted
    assert events[-1]["processed"] == counted

    # The same prompt again with the prompt cache on: most of it is reused, not recomputed.
    assert again.status == "ok" and again_cached.status == "ok"
    assert again_cached.cache_n is not None and again_cached.cache_n > 0
    assert again_cached.prompt_n + again_cached.cache_n == counted  # type: ignore[operator]
    assert again_cached.answer == first.answer


@pytest.mark.server
def test_real_server_prompt_over_context_is_context_error(llama_server: Any) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 1000  # ~10K tokens > 8192
    client = ServerSession(ServerSpec(url=llama_server.url, stall_timeout_s=120))
    try:
        result = client.chat([{"role": "user", "content": long_text}], max_tokens=8)
    finally:
        client.close()
    assert result.status == "context_error", (result.status, result.error)
    assert result.http_status == 400
    assert result.answer == ""


def _server_prompt_tokens(url: str, messages: list[dict[str, str]]) -> int:
    """The server's own count of a chat prompt: /apply-template, then /tokenize with specials."""
    with httpx.Client(timeout=30, trust_env=False) as http:
        prompt = http.post(f"{url}/apply-template", json={"messages": messages}).json()["prompt"]
        tokens = http.post(f"{url}/tokenize", json={"content": prompt, "parse_special": True}).json()
    return len(tokens["tokens"])


# --- a fake server for what a real one won't do on demand ------------------------------


class FakeServer:
    """A loopback HTTP server in a thread; `behaviour(handler)` answers every POST."""

    def __init__(self, behaviour: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.release = threading.Event()
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                fake.bodies.append(json.loads(self.rfile.read(length)))
                fake.headers = dict(self.headers)
                behaviour(self)

            def log_message(self, *args: object) -> None:
                pass

        self.headers: dict[str, str] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(behaviour: Callable[[BaseHTTPRequestHandler], None]) -> FakeServer:
        servers.append(FakeServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _chat(url: str, *, client_args: dict[str, Any] | None = None, **chat_args: Any) -> ChatResult:
    """One request through a fresh client that is closed afterwards."""
    client = ServerSession(ServerSpec(url=url, **(client_args or {})))
    try:
        return client.chat(QUESTION, **{"max_tokens": 8, **chat_args})
    finally:
        client.close()


def _json_reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _start_stream(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def _send_event(handler: BaseHTTPRequestHandler, event: dict[str, Any]) -> None:
    data = f"data: {json.dumps(event)}\n\n".encode()
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


PROGRESS = {
    "choices": [{"index": 0, "finish_reason": None, "delta": {"role": "assistant", "content": None}}],
    "prompt_progress": {"total": 100, "cache": 0, "processed": 50, "time_ms": 12.5},
}
CONTENT = {"choices": [{"index": 0, "finish_reason": None, "delta": {"content": "The number is"}}]}


def test_exceed_context_400_is_context_error(fake_server: Any) -> None:
    error = {
        "code": 400,
        "message": "request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9000,
        "n_ctx": 8192,
    }
    server = fake_server(lambda h: _json_reply(h, 400, {"error": error}))
    result = _chat(server.url)
    assert result.status == "context_error"
    assert result.http_status == 400
    assert "exceeds the available context size" in (result.error or "")


def test_http_500_is_http_error(fake_server: Any) -> None:
    server = fake_server(lambda h: _json_reply(h, 500, {"error": {"code": 500, "message": "boom", "type": "server_error"}}))
    result = _chat(server.url)
    assert result.status == "http_error"
    assert result.http_status == 500
    assert result.error == "HTTP 500: boom"


def test_silent_stream_is_a_stall_timeout_and_progress_was_seen(fake_server: Any) -> None:
    def stall(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        _send_event(handler, PROGRESS)
        server.release.wait(10)  # silence until the test is over

    server = fake_server(stall)
    events: list[dict[str, Any]] = []
    result = _chat(server.url, client_args={"stall_timeout_s": 0.5}, on_progress=events.append)
    assert result.status == "timeout"
    assert "stalled" in (result.error or "")
    assert events == [PROGRESS["prompt_progress"]]
    assert result.wall_s < 10


def test_slow_but_steady_stream_is_not_a_stall(fake_server: Any) -> None:
    """Progress events keep a long prefill alive: the limit is on silence, not on the cell."""
    import time

    def steady(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        for _ in range(6):
            _send_event(handler, PROGRESS)
            time.sleep(0.2)
        _send_event(handler, CONTENT)
        final = {"choices": [{"index": 0, "finish_reason": "stop", "delta": {}}]}
        _send_event(handler, final)
        usage = {"choices": [], "usage": {"prompt_tokens": 100}, "timings": {"prompt_n": 60, "cache_n": 40}}
        _send_event(handler, usage)
        handler.wfile.write(b"0\r\n\r\n")

    server = fake_server(steady)
    result = _chat(server.url, client_args={"stall_timeout_s": 0.5})
    assert result.status == "ok", result.error
    assert result.wall_s > 0.5  # longer than the stall timeout in total
    assert (result.answer, result.finish_reason) == ("The number is", "stop")
    assert (result.prompt_tokens, result.prompt_n, result.cache_n) == (100, 60, 40)


def test_connection_dropped_mid_stream_is_disconnected(fake_server: Any) -> None:
    def drop(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        _send_event(handler, PROGRESS)
        _send_event(handler, CONTENT)
        handler.wfile.write(b"40\r\ndata: {\"choi")  # a chunk cut short, then the socket closes
        handler.wfile.flush()
        handler.close_connection = True

    server = fake_server(drop)
    result = _chat(server.url)
    assert result.status == "disconnected"
    assert result.answer == "The number is"
    assert result.finish_reason is None


def test_stream_ending_without_final_chunk_is_disconnected(fake_server: Any) -> None:
    def short(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        _send_event(handler, CONTENT)
        handler.wfile.write(b"0\r\n\r\n")  # a clean end, but no finish_reason ever came

    server = fake_server(short)
    result = _chat(server.url)
    assert result.status == "disconnected"
    assert "final chunk" in (result.error or "")


def test_nothing_listening_is_unreachable() -> None:
    result = _chat(f"http://127.0.0.1:{free_port()}", client_args={"connect_timeout_s": 2})
    assert result.status == "unreachable"
    assert result.http_status is None


def test_request_fields_thinking_off_and_api_key(fake_server: Any) -> None:
    server = fake_server(lambda h: _json_reply(h, 500, {"error": "stop here"}))
    client = ServerSession(ServerSpec(url=server.url, api_key="k-123", thinking="off"))
    client.chat(QUESTION, max_tokens=32, seed=7, temperature=0.0, cache_prompt=False)
    client.close()
    body = server.bodies[0]
    assert body["messages"] == QUESTION
    assert (body["max_tokens"], body["seed"], body["temperature"]) == (32, 7, 0.0)
    assert body["stream"] is True and body["return_progress"] is True and body["cache_prompt"] is False
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert server.headers.get("Authorization") == "Bearer k-123"


def test_prompt_tokens_fall_back_to_timings_without_usage(fake_server: Any) -> None:
    """A server that ignores stream_options.include_usage still yields the served prompt count."""

    def no_usage(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        _send_event(handler, CONTENT)
        final = {
            "choices": [{"index": 0, "finish_reason": "length", "delta": {}}],
            "timings": {"prompt_n": 7, "cache_n": 93, "prompt_ms": 1.5, "predicted_n": 8, "predicted_ms": 4.0},
        }
        _send_event(handler, final)
        handler.wfile.write(b"0\r\n\r\n")

    result = _chat(fake_server(no_usage).url)
    assert result.status == "ok" and result.finish_reason == "length"
    assert (result.prompt_tokens, result.prompt_n, result.cache_n, result.predicted_n) == (100, 7, 93, 8)
    assert (result.prompt_ms, result.predicted_ms) == (1.5, 4.0)


def test_a_server_that_never_accepts_is_unreachable_within_the_connect_timeout() -> None:
    """A listener whose accept queue is full: the SYN is dropped, so only the connect timeout ends the wait."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (its size is the backlog plus a little)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        started = time.monotonic()
        result = _chat(f"http://127.0.0.1:{port}", client_args={"connect_timeout_s": 1.0, "stall_timeout_s": 60})
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result.status == "unreachable"
    assert "connect timeout" in (result.error or "")
    assert elapsed < 30


# --- answers that are not llama-server's protocol: an outcome or one line, never a traceback ----


def test_an_undecodable_stream_is_an_http_error(fake_server: Any) -> None:
    def garbled(handler: BaseHTTPRequestHandler) -> None:
        body = b"this is not gzip at all"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    result = _chat(fake_server(garbled).url)
    assert result.status == "http_error" and "cannot be decoded" in (result.error or "")


def test_chunks_of_the_wrong_shape_are_skipped(fake_server: Any) -> None:
    def odd(handler: BaseHTTPRequestHandler) -> None:
        _start_stream(handler)
        for event in ({"choices": "none"}, {"choices": [7, {"delta": "x"}, {"delta": {"content": 5}}]},
                      {"choices": [{"delta": {"content": "4817"}, "finish_reason": "stop"}]}):
            _send_event(handler, event)
        handler.wfile.write(b"0\r\n\r\n")

    result = _chat(fake_server(odd).url)
    assert result.status == "ok" and result.answer == "4817"


def test_a_closed_session_answers_without_raising(fake_server: Any) -> None:
    session = ServerSession(ServerSpec(url=fake_server(lambda h: _json_reply(h, 200, {})).url))
    session.close()
    assert session.chat(QUESTION, max_tokens=8).status == "disconnected"
    assert session.health() is False
    with pytest.raises(NiahError, match="was closed") as raised:
        session.tokenize("x")
    assert raised.value.exit_code == EXIT_LAUNCH_INVALID


@pytest.mark.parametrize(
    ("body", "says"),
    [({}, "answered without `tokens`: is it llama-server?"), ({"tokens": "1 2"}, "answered without `tokens`"),
     ({"tokens": [{"id": 1, "piece": "a"}]}, "answered `tokens` that are not token ids")],
)
def test_a_tokenize_answer_without_token_ids_is_one_line_exit_3(
    body: dict[str, Any], says: str, fake_server: Any, tmp_path: Path
) -> None:
    url = fake_server(lambda h: _json_reply(h, 200, body)).url
    text = tmp_path / "t.txt"
    text.write_text("hello")
    result = subprocess.run([sys.executable, "-m", "niah", "tokenize", "--tokenizer", f"server:{url}", str(text)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"niah: error: {url}: POST /tokenize ") and says in lines[0], lines
