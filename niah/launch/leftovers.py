"""A record of the llama-servers niah started: one small JSON file beside each server's log while it
runs (`<name>.<n>.running.json`), so the next launch in that folder stops a server an earlier niah
left running (killed by SIGKILL or the OOM killer where the parent-death guard is missing) before it
starts its own. Only a process provably the one recorded is touched: the same boot, pid, start
time and command line, and the niah that started it gone. Linux only (it reads /proc).
"""

from __future__ import annotations

import json
import os
import select
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from niah.errors import replacing

RECORD_SUFFIX = ".running.json"
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """What tells one process from any other that ever had its pid."""

    pid: int
    start_ticks: int
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot."""
    boot_id: str
    """/proc/sys/kernel/random/boot_id: the same pid and start time after a reboot are another process."""


def process_id(pid: int) -> ProcessId | None:
    """The identity of the live process `pid`; None when it is gone or there is no /proc."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot_id = (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return ProcessId(pid, int(fields[19]), boot_id)


def command_line(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="surrogateescape") for part in raw.split(b"\0")[:-1]]


def record_path(log_path: Path) -> Path:
    return log_path.with_suffix(RECORD_SUFFIX)


def write_record(log_path: Path, pid: int, argv: list[str]) -> Path | None:
    """Record the server `pid` (started with `argv`, logging to `log_path`) and this niah; None where
    there is no /proc to tell processes apart."""
    server, owner = process_id(pid), process_id(os.getpid())
    if server is None or owner is None:
        return None
    path = record_path(log_path)
    with replacing(path) as partial:
        partial.write_text(json.dumps({"server": asdict(server), "argv": list(argv), "niah": asdict(owner)}))
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def stop_leftovers(log_dir: Path, grace_s: float = 3.0) -> list[str]:
    """Stop every server recorded in `log_dir` whose niah is gone and that is provably still the
    process recorded; drop the records of servers that are gone. One line per server stopped."""
    stopped = []
    for path in sorted(log_dir.glob(f"*{RECORD_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
            server, owner = ProcessId(**record["server"]), ProcessId(**record["niah"])
            argv = [str(arg) for arg in record["argv"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a record this niah wrote: leave it
        if process_id(owner.pid) == owner:
            continue  # its niah still runs (maybe this one): its servers are its own
        if _stop_if_same(server, argv, grace_s):
            stopped.append(f"niah: stopped llama-server pid {server.pid}, left running by an earlier niah "
                           f"(pid {owner.pid}): {' '.join(argv)[:200]}")
        forget(path)
    return stopped


def _stop_if_same(server: ProcessId, argv: list[str], grace_s: float) -> bool:
    """SIGTERM (then SIGKILL after `grace_s`) the process `server` and its group, when it still is
    that process running `argv`. A pidfd pins the process, so a pid reused meanwhile is never hit."""
    try:
        pidfd = os.pidfd_open(server.pid)
    except (OSError, AttributeError):
        return False  # gone (or no pidfd on this kernel: then nothing is provable)
    try:
        if process_id(server.pid) != server or command_line(server.pid) != argv:
            return False
        for signum in (signal.SIGTERM, signal.SIGCONT):
            _signal(pidfd, server.pid, signum)
        if not _exits_within(pidfd, grace_s):
            _signal(pidfd, server.pid, signal.SIGKILL)
            _exits_within(pidfd, grace_s)
        return True
    finally:
        os.close(pidfd)


def _signal(pidfd: int, pid: int, signum: int) -> None:
    """`signum` to the pinned process and, while it lives (so its group id is still its own), its group."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
        os.killpg(pid, signum)  # llama-server leads its own session: its group is its pid
    except ProcessLookupError:
        pass


def _exits_within(pidfd: int, seconds: float) -> bool:
    """A pidfd reads as ready once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))
