"""The CLI shell: --help, --version, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from niah import __version__


def niah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=120)


def test_version_and_help() -> None:
    assert niah("--version").stdout.strip() == f"niah {__version__}"
    help_text = niah("--help").stdout
    assert "tokenize" in help_text


def test_unknown_option_is_one_line_exit_2() -> None:
    result = niah("tokenize", "--no-such-option", "x")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
