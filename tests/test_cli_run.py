"""`niah run` bad input: one line, the documented exit code, no traceback, nothing written."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from niah.launch.server import free_port


class HTMLPage(BaseHTTPRequestHandler):
    """Something that is not llama-server: every request gets a web page."""

    def _page(self) -> None:
        body = b"<html><body>hello</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HTMLPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--lengths", "abc", "--url", "http://127.0.0.1:1"], 2),
        (["--lengths", "1k", "--depths", "0,150", "--url", "http://127.0.0.1:1"], 2),
        (["--lengths", "1k", "--depths", "linspace:0:100"], 2),
        (["--lengths", "1k"], 2),
        (["--lengths", "1k", "--profile", "tiny-native-8k"], 2),
        (["--lengths", "1k", "--profile", "no-such-profile", "--model", __file__], 2),
        (["--lengths", "1k", "--profile-for-length", "2k=tiny-native-8k", "--model", __file__], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}"], 3),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--answer-budget", "0"], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--stall-timeout", "0"], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--connect-timeout", "-1"], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--temperature", "-0.5"], 2),
        (["--lengths", "1k", "--url", "localhost:{port}"], 2),
        (["--lengths", "1k", "--url", "ftp://127.0.0.1:{port}"], 2),
        (["--lengths", "1k", "--url", "http://[::1"], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:port"], 2),
        (["--lengths", "1k", "--url", "{html}"], 3),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--needle", "{tmp}"], 2),
        (["--lengths", "1k", "--url", "http://127.0.0.1:{port}", "--needle", "{tmp}/missing.toml"], 2),
    ],
)
def test_bad_run_input(args: list[str], code: int, tmp_path: Path, html_server: str) -> None:
    out = tmp_path / "run"
    args = [a.format(port=free_port(), html=html_server, tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", *args, "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "results.jsonl").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", "--lengths", "1k", "--url", f"http://127.0.0.1:{free_port()}",
         "--out", "/proc/niah-run"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("niah: error: cannot create the run folder /proc/niah-run")
    assert len(result.stderr.strip().splitlines()) == 1


def test_out_naming_an_existing_file_is_bad_input_and_leaves_it_alone(tmp_path: Path) -> None:
    existing = tmp_path / "results.jsonl"
    existing.write_text("my notes\n")
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", "--lengths", "1k", "--url", f"http://127.0.0.1:{free_port()}",
         "--out", str(existing)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "is a file, not a folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert existing.read_text() == "my notes\n"


def test_a_second_run_on_a_folder_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with socket.socket() as silent:  # accepts connections (backlog) and never answers: run 1 waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        argv = [sys.executable, "-m", "niah", "run", "--lengths", "1k", "--no-progress", "--out", str(out),
                "--url", f"http://127.0.0.1:{silent.getsockname()[1]}"]
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not _holds_lock(out, first.pid):
                assert first.poll() is None and time.monotonic() < deadline, "the first run never took the folder"
                time.sleep(0.1)
            second = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
        finally:
            first.kill()
            first.wait()
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (
        f"niah: error: the run folder {out} is in use by another niah run (pid {first.pid}): "
        "wait for it to end, or give another --out"
    )
    again = subprocess.run([*argv[:-1], f"http://127.0.0.1:{free_port()}"], check=False, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 3 and "in use" not in again.stderr, again.stderr  # killed: the lock went with it


def _holds_lock(out: Path, pid: int) -> bool:
    lock = out / ".niah-run.lock"
    return lock.is_file() and lock.read_text().strip() == str(pid)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "abc"], "bad --trials 'abc'"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--max-trials", "3"], "--max-trials goes with --trials auto"),
        (["--trials", "auto", "--pass-rate", "1.5"], "--pass-rate must lie between 0 and 1"),
        (["--trials", "auto", "--max-trials", "0"], "--max-trials must be at least 1"),
    ],
)
def test_bad_trial_options_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", "--url", "http://127.0.0.1:1", "--lengths", "1k", *args,
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "results.jsonl").exists()
