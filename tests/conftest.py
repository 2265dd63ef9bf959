"""Shared fixtures: a real llama-server with the tiny SmolLM2 model (or the qwen35 test bed) on a
free loopback port."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
    """A real llama-server for `model` on a free loopback port, healthy (however long a busy machine
    takes to load it: the default start timeout)."""
    spec = ServerSpec(model=model, args=tuple(server_args), log_dir=log_dir)
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


NIAH_WITH_SIGNALS = (
    "import os, signal, sys\n"
    "for name in ('SIGTERM', 'SIGHUP', 'SIGINT'):\n"
    "    ignored = name in sys.argv[1].split(',')\n"
    "    signal.signal(getattr(signal, name), signal.SIG_IGN if ignored else signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'niah', *sys.argv[2:]])\n"
)
"""Sets the termination signals' dispositions, then becomes `python -m niah ARGV` (an ignored signal
stays ignored across exec, a handler does not)."""


@contextmanager
def niah_process(argv: list[str], ignored: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """`niah ARGV` as a child process (stdout and stderr together), killed if the test leaves it
    running. SIGTERM, SIGHUP and SIGINT reach it with their default actions, as from a terminal, or
    ignored when named in `ignored` (as nohup and a script's `&` hand them down), whatever this test
    process inherited."""
    child = subprocess.Popen([sys.executable, "-c", NIAH_WITH_SIGNALS, ",".join(ignored), *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    output, _ = child.communicate(timeout=within_s + 60)
    assert time.monotonic() - signalled < within_s, output
    assert child.returncode != 0, output
    return output


def children(pid: int) -> dict[int, str]:
    """The child processes of `pid` that have not exited: pid -> state letter (R, S, T, ...)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found[int(stat.parent.name)] = fields[0]
    return found


def gone(pids: Iterable[int]) -> bool:
    """Every process in `pids` has exited (or is a zombie no one reaped yet)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        except OSError:
            continue
    return True


def wait_for(condition: Callable[[], T], child: subprocess.Popen[str], what: str, timeout_s: float = 900) -> T:
    """Poll `condition` until it is truthy while `child` runs. The deadline only ends a test that is
    broken: nothing here depends on how fast this machine loads or prefills."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"niah never reached {what}:\n{child.communicate()[0]}")
        time.sleep(0.05)
    return value
