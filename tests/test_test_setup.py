"""The test suite's own rules: every environmental skip goes through conftest.need() (so that
NIAH_REQUIRE_SERVER=1 turns it into a failure), and fixtures ask only for what a test uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SKIPS = re.compile(r"pytest\.skip\(|skipif|importorskip|mark\.skip|pytest\.xfail")


def test_every_skip_goes_through_need() -> None:
    found = {p.name: len(SKIPS.findall(p.read_text(encoding="utf-8"))) for p in TESTS.glob("*.py") if p != Path(__file__)}
    assert found.pop("conftest.py") == 1  # the one in need()
    assert {name: n for name, n in found.items() if n} == {}


def pytest_in_subprocess(test: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"{TESTS / test}"],
        cwd=TESTS.parent, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )


def test_a_test_that_reads_the_tiny_gguf_needs_no_server_binary() -> None:
    result = pytest_in_subprocess("test_gguf_meta.py::test_tiny_model_facts_match_the_gguf_library",
                                  NIAH_LLAMA_SERVER="/nonexistent", NIAH_REQUIRE_SERVER="1")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-2000:]


def test_a_server_test_without_the_binary_skips_or_fails_as_required() -> None:
    test = "test_preflight.py::test_server_that_exits_at_start_leaves_no_process"
    skipped = pytest_in_subprocess(test, NIAH_LLAMA_SERVER="/nonexistent", NIAH_REQUIRE_SERVER="0")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    failed = pytest_in_subprocess(test, NIAH_LLAMA_SERVER="/nonexistent", NIAH_REQUIRE_SERVER="1")
    assert failed.returncode == 1 and "is not an executable file" in failed.stdout, failed.stdout[-2000:]
