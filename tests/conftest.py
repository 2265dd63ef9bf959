"""Shared fixtures: a real llama-server with the tiny SmolLM2 model (or the qwen35 test bed) on a
free loopback port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from niah.errors import NiahError
from niah.server import (
    HOW_TO_GET_SERVER,
    ManagedServer,
    find_server_binary,
    find_tiny_model,
    start_server,
)
from niah.testbed import build_testbed


@dataclass(frozen=True)
class LiveServer:
    """What a server test gets: the URL, the log file and the model file."""

    url: str
    log_path: Path
    model: Path
    server: ManagedServer


def _testbed() -> tuple[Path, Path]:
    """The binary and model, or a skip (a failure when NIAH_REQUIRE_SERVER=1, as in CI)."""
    try:
        return find_server_binary(), find_tiny_model()
    except NiahError as exc:
        message = f"real llama-server tests need the CPU test bed ({exc}); {HOW_TO_GET_SERVER}"
        if os.environ.get("NIAH_REQUIRE_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return _testbed()[1]


@pytest.fixture
def start_llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Factory: start llama-server with extra args; every server started is stopped afterwards."""
    started: list[ManagedServer] = []
    _, model = _testbed()

    def start(*server_args: str, model_path: Path | None = None) -> LiveServer:
        log_dir = tmp_path_factory.mktemp("llama-server")
        server = start_server(model_path or model, list(server_args), log_dir / "server.log", timeout_s=120)
        started.append(server)
        return LiveServer(server.url, server.log_path, model_path or model, server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server: SmolLM2 at its native 8,192 context, one slot."""
    _, model = _testbed()
    log_path = tmp_path_factory.mktemp("llama-server-shared") / "server.log"
    server = start_server(model, ["-c", "8192", "--parallel", "1"], log_path, timeout_s=120)
    try:
        yield LiveServer(server.url, log_path, model, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def qwen35_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The qwen35 test bed with its MTP block, built once per session (seconds; no server needed)."""
    path, _ = build_testbed("qwen35", tmp_path_factory.mktemp("testbed") / "qwen35-testbed.gguf", mtp=True)
    return path


@pytest.fixture(scope="session")
def qwen35_server(qwen35_testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server on the qwen35 test bed at its native 4,096 context, one slot."""
    _testbed()
    log_path = tmp_path_factory.mktemp("qwen35-server") / "server.log"
    server = start_server(qwen35_testbed, ["-c", "4096", "--parallel", "1"], log_path, timeout_s=120)
    try:
        yield LiveServer(server.url, log_path, qwen35_testbed, server)
    finally:
        server.stop()


def render_gguf_template(model: Path, messages: list[dict[str, str]], **kwargs: object) -> str:
    """A GGUF's chat template rendered offline with jinja2 (header read with niah's fast reader)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from niah.gguf_meta import read_header

    source = str(read_header(model)["tokenizer.chat_template"])
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def fail(message: str) -> None:
        raise ValueError(message)

    env.globals["raise_exception"] = fail
    return str(env.from_string(source).render(messages=messages, add_generation_prompt=True, **kwargs))
