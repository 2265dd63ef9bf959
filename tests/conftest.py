"""Shared fixtures: a real llama-server with the tiny SmolLM2 model (or the qwen35 test bed) on a
free loopback port."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from niah.errors import NiahError
from niah.launch.server import HOW_TO_GET_SERVER, find_server_binary, find_tiny_model
from niah.launch.session import ServerSession, ServerSpec
from niah.prompts.corpus import Corpus, get_corpus
from niah.prompts.tokenizers import Tokenizer, get_tokenizer
from niah.testbed.model import build_testbed

T = TypeVar("T")


@dataclass(frozen=True)
class LiveServer:
    """What a server test gets: the URL, the log file, the model file and the session."""

    url: str
    log_path: Path
    model: Path
    session: ServerSession


TESTBED_HINT = f"real llama-server tests need the CPU test bed; {HOW_TO_GET_SERVER}"


def _testbed() -> tuple[Path, Path]:
    """The binary and model, or a skip (a failure when NIAH_REQUIRE_SERVER=1, as in CI)."""
    return need(find_server_binary, TESTBED_HINT), need(find_tiny_model, TESTBED_HINT)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `server` needs the llama-server binary, whichever fixtures it asks for."""
    if item.get_closest_marker("server"):
        need(find_server_binary, TESTBED_HINT)


def launch(model: Path, server_args: tuple[str, ...], log_dir: Path) -> ServerSession:
    """A real llama-server for `model` on a free loopback port, healthy."""
    spec = ServerSpec(model=model, args=tuple(server_args), log_dir=log_dir, start_timeout_s=120)
    return ServerSession(spec).open()


@pytest.fixture(scope="session")
def qwen() -> Tokenizer:
    """The offline Qwen3.6 tokenizer."""
    return get_tokenizer("qwen3.6")


@pytest.fixture(scope="session")
def builtin() -> Corpus:
    """The built-in haystack corpus."""
    return get_corpus("builtin")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """SmolLM2-135M's GGUF (no server binary needed)."""
    return need(find_tiny_model, TESTBED_HINT)


@pytest.fixture
def start_llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Factory: start llama-server with extra args; every server started is stopped afterwards."""
    started: list[ServerSession] = []
    _, model = _testbed()

    def start(*server_args: str, model_path: Path | None = None) -> LiveServer:
        session = launch(model_path or model, server_args, tmp_path_factory.mktemp("llama-server"))
        started.append(session)
        return LiveServer(session.url, session.log_path, model_path or model, session)  # type: ignore[arg-type]

    yield start
    for session in started:
        session.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server: SmolLM2 at its native 8,192 context, one slot."""
    _, model = _testbed()
    session = launch(model, ("-c", "8192", "--parallel", "1"), tmp_path_factory.mktemp("llama-server-shared"))
    try:
        yield LiveServer(session.url, session.log_path, model, session)  # type: ignore[arg-type]
    finally:
        session.close()


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """Gemma 3 270M (sliding-window attention), installed by scripts/setup.sh."""
    from niah.launch.packaged_models import find_gemma3_270m

    return need(find_gemma3_270m)


def need(find: Callable[[], T], context: str = "") -> T:
    """What `find` returns, or a skip with its message (a failure when NIAH_REQUIRE_SERVER=1, as in CI).

    Every environmental skip in the tests goes through here (tests/test_test_setup.py checks)."""
    try:
        return find()
    except NiahError as exc:
        message = f"{exc}" + (f" ({context})" if context else "")
        if os.environ.get("NIAH_REQUIRE_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def qwen35_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The qwen35 test bed with its MTP block, built once per session (seconds; no server needed)."""
    path, _ = build_testbed("qwen35", tmp_path_factory.mktemp("testbed") / "qwen35-testbed.gguf", mtp=True)
    return path


@pytest.fixture(scope="session")
def rehearsal_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1M rehearsal model: the qwen35 test bed with Qwen3.6's native 262,144 and one small
    attention head, so the yarn-1m profile serves 1,010,000 + the answer in about 1 GB."""
    path, _ = build_testbed(
        "qwen35", tmp_path_factory.mktemp("rehearsal") / "rehearsal.gguf",
        layers=4, context=262144, heads=1, kv_heads=1, head_dim=64,
    )
    return path


@pytest.fixture(scope="session")
def qwen35_server(qwen35_testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server on the qwen35 test bed at its native 4,096 context, one slot."""
    _testbed()
    session = launch(qwen35_testbed, ("-c", "4096", "--parallel", "1"), tmp_path_factory.mktemp("qwen35-server"))
    try:
        yield LiveServer(session.url, session.log_path, qwen35_testbed, session)  # type: ignore[arg-type]
    finally:
        session.close()


def render_gguf_template(model: Path, messages: list[dict[str, str]], **kwargs: object) -> str:
    """A GGUF's chat template rendered offline with jinja2 (header read with niah's fast reader)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from niah.launch.gguf_meta import read_header

    source = str(read_header(model)["tokenizer.chat_template"])
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def fail(message: str) -> None:
        raise ValueError(message)

    env.globals["raise_exception"] = fail
    return str(env.from_string(source).render(messages=messages, add_generation_prompt=True, **kwargs))


def readme_seed_plan() -> list[str]:
    """The README's `niah plan` command for the seed grid, as arguments (without `niah`)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("niah plan --arch qwen35")
    command = readme[start:readme.index("```", start)].split("#")[0].replace("\\\n", " ")
    return shlex.split(command)[1:]


@contextmanager
def niah_process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`niah ARGV` as a child process (stdout and stderr together), killed if the test leaves it running."""
    child = subprocess.Popen([sys.executable, "-m", "niah", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def stop_with(child: subprocess.Popen[str], signum: int, within_s: float) -> str:
    """Send `signum` to a niah child: it must exit, non-zero, within `within_s` seconds. Its output."""
    signalled = time.monotonic()
    child.send_signal(signum)
    output, _ = child.communicate(timeout=60)
    assert time.monotonic() - signalled < within_s, output
    assert child.returncode != 0, output
    return output
