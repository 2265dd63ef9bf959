"""The CLI shell: --help, --version, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


HEAVY = ("pandas", "matplotlib", "transformers", "jinja2")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["profile", "list"], ["haystack", "--length", "512", "--depth", "50", "--json"]],
)
def test_fast_commands_import_no_heavy_library(argv: list[str]) -> None:
    """`niah --help` and friends start without pandas, matplotlib, transformers or jinja2."""
    probe = (
        "import sys\nfrom niah.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], code, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
    loaded = result.stderr.strip().splitlines()[-1]
    assert loaded == "LOADED [] 0", result.stderr
