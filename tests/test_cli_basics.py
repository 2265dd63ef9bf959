"""The CLI shell: --help, --version, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("key", ["ключ-42", "two\nlines", "tab\there"])
@pytest.mark.parametrize("where", ["env", "flag"])
def test_an_api_key_no_request_can_carry_is_one_line_exit_2(key: str, where: str, tmp_path: Path) -> None:
    """A non-ASCII key was a UnicodeEncodeError traceback from the HTTP client, a key with a newline
    'unreachable' (exit 3). The message names where the key came from, never the key."""
    out = tmp_path / "run"
    argv = ["run", "--lengths", "1k", "--url", "http://127.0.0.1:1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "NIAH_API_KEY": key} if where == "env" else {k: v for k, v in os.environ.items() if k != "NIAH_API_KEY"}
    extra = ["--api-key", key] if where == "flag" else []
    result = subprocess.run([sys.executable, "-m", "niah", *argv, *extra], check=False, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    named = "--api-key" if where == "flag" else "$NIAH_API_KEY"
    assert result.stderr == f"niah: error: the API key in {named} holds a character an HTTP header cannot carry (only printable ASCII)\n"
    assert not out.exists()


def test_an_unusable_key_in_the_environment_does_not_stop_a_report(tmp_path: Path) -> None:
    """`niah report` sends nothing: it only masks the key wherever it appears."""
    source = Path(__file__).parent.parent / "reports" / "tasks-smollm2" / "results.jsonl"
    (tmp_path / "results.jsonl").write_bytes(source.read_bytes())
    env = {**os.environ, "NIAH_API_KEY": "ключ-42"}
    result = subprocess.run([sys.executable, "-m", "niah", "report", str(tmp_path)], check=False,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("argv", "blocked"),
    [
        (["report", "{run}"], "{run}/grid.md"),
        (["card", "{run}"], "{run}/card.md"),
        (["compare", "{run}", "{run}", "--out", "{run}/cmp"], "{run}/cmp"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line_exit_2(argv: list[str], blocked: str, tmp_path: Path) -> None:
    """A folder where an output file goes (or a file where the output folder goes) was an OSError
    traceback; any file system refusal (a full disk, no permission) takes the same path."""
    run = tmp_path / "run"
    run.mkdir()
    source = Path(__file__).parent.parent / "reports" / "tasks-smollm2" / "results.jsonl"
    (run / "results.jsonl").write_bytes(source.read_bytes())
    target = Path(blocked.format(run=run))
    if target.suffix:
        target.mkdir()
    else:
        target.write_text("a file, not a folder\n")
    result = niah(*(a.format(run=run) for a in argv))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"niah: error: cannot write {target}") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--log-dir", "{file}", "cannot make the server log folder {file}: File exists"),
    ("--port", "70000", "--port 70000 is not a TCP port (1 to 65535)"),
    ("--port", "-1", "--port -1 is not a TCP port (1 to 65535)"),
])
def test_niah_launch_bad_log_folder_or_port_is_one_line_exit_2(
    flag: str, value: str, message: str, tiny_model: Path, tmp_path: Path
) -> None:
    """A file given as the log folder was a FileExistsError traceback; port 70000 launched a server
    that bound another port (niah reported it OK), -1 one that could not start (exit 3)."""
    file = tmp_path / "a-file"
    file.write_text("not a folder\n")
    result = niah("launch", "tiny-native-8k", "--model", str(tiny_model), flag, value.format(file=file))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"niah: error: {message.format(file=file)}"
    assert "Traceback" not in result.stdout


def test_a_run_folder_whose_logs_is_a_file_is_one_line_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "logs").write_text("not a folder\n")
    result = niah("run", "--lengths", "1k", "--model", str(tiny_model), "--profile", "tiny-native-8k",
                  "--no-progress", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"niah: error: cannot make the server log folder {out / 'logs'}: File exists"


@pytest.mark.parametrize(("args", "message"), [
    (["--trials", "99999999"], "the grid has 499,999,995 cells, more than niah plans (1,000,000)"),
    (["--depths", "linspace:0:100:100000000"], "COUNT is more than niah plans (1,000,000 cells)"),
    (["--decode-rate", "inf"], "--decode-rate must be a positive number of tokens/s"),
])
def test_plan_numbers_past_any_use_are_one_line_exit_2(args: list[str], message: str) -> None:
    """A typo of a trial or depth count filled memory until killed; an infinite decode rate was a
    ZeroDivisionError traceback."""
    result = niah("plan", "--lengths", "1k", "--rates", "1k=500", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("niah: error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_documents_nested_without_end_are_one_line_exit_2(tmp_path: Path) -> None:
    """A profile, needle file, task file or results file nested 100,000 deep was a RecursionError
    traceback from tomllib or json."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.toml").write_text(f"context = 4096\nextra_args = {deep}\n")
    (tmp_path / "deep.json").write_text(deep)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text('{"record": "header", "schema_version": 2, "fingerprint": {}}\n' + deep + "\n")
    haystack = ["haystack", "--length", "512", "--depth", "50"]
    for argv, message in [
        (["profile", "show", str(tmp_path / "deep.toml")], "invalid TOML: maximum recursion depth exceeded"),
        ([*haystack, "--needle", str(tmp_path / "deep.json")], "is not valid json: maximum recursion depth exceeded"),
        ([*haystack, "--task", str(tmp_path / "deep.toml")], "is not valid TOML: maximum recursion depth exceeded"),
        (["report", str(run)], "line 2 is not a niah results record (bad JSON)"),
    ]:
        result = niah(*argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.server
def test_check_reads_a_zero_rope_freq_scale_as_llama_cpp_does(llama_server) -> None:
    """`--rope-freq-scale 0` means the model's own scale to llama.cpp: it was a ZeroDivisionError traceback."""
    result = niah("check", "--url", llama_server.url, "--context", "1k", "--server-args", "--rope-freq-scale 0")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "niah: rope OK: meant native 8,192, no stretch (the server's flags)" in result.stdout


@pytest.mark.server
@pytest.mark.parametrize("flags", ["--rope-scaling yarn --rope-scale 1_000", "--rope-freq-scale 0x0.8", "--rope-scale inf"])
def test_check_refuses_server_flags_llama_cpp_reads_otherwise(flags: str, llama_server) -> None:
    """`--rope-scale 1_000` is 1 to llama.cpp and was 1,000 to niah's rope check."""
    result = niah("check", "--url", llama_server.url, "--context", "1k", "--server-args", flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"niah: error: --server-args {flags.split()[-2]} {flags.split()[-1]}: give a plain decimal")
    assert len(result.stderr.splitlines()) == 1
