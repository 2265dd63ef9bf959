"""`niah run` bad input: one line, the documented exit code, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from niah.server import free_port


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
    ],
)
def test_bad_run_input(args: list[str], code: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [a.format(port=free_port()) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "niah", "run", *args, "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "results.jsonl").exists()
