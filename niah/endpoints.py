"""Endpoints the runner hands cells to: a managed llama-server launch or a server at a URL.

An endpoint knows its served per-slot context (from preflight), counts prompts with the
server's own template and tokenizer, and can tell whether its server died.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import httpx

from niah.client import ChatClient
from niah.gguf_meta import GGUFFacts
from niah.haystack import Prompt, build
from niah.needles import Needle
from niah.preflight import PreflightReport, preflight
from niah.profiles import LaunchProfile, factor_label, load_profile, server_args
from niah.server import ManagedServer, WaitProgress, start_server
from niah.templates import ServerTemplate, count_prompt
from niah.tokenizers import QwenTiktoken, ServerTokenizer, Tokenizer, get_tokenizer

if TYPE_CHECKING:
    from niah.cells import Cell
    from niah.corpus import Corpus
    from niah.runner import RunConfig

QWEN_PROBE = "Needle 4827193 in a haystack: naïve café, 東京, <tags> & emoji 🙂.\n\tEnd."


class Endpoint:
    """One server that receives cells, with what preflight measured about it."""

    def __init__(
        self,
        url: str,
        report: PreflightReport,
        *,
        api_key: str | None,
        stall_timeout_s: float,
        connect_timeout_s: float,
        profile: LaunchProfile | None = None,
        server: ManagedServer | None = None,
        needed: int = 0,
        native_context: int | None = None,
        thinking: str = "off",
    ) -> None:
        self.url = url
        self.report = report
        self.api_key = api_key
        self.profile = profile
        self.server = server
        self.needed = needed
        self.native_context = native_context or report.native_context or report.n_ctx_train
        self.client = ChatClient(
            url, api_key=api_key, stall_timeout_s=stall_timeout_s, connect_timeout_s=connect_timeout_s
        )
        self.counter = ServerTokenizer(url, api_key=api_key)
        """The server's tokenizer; every count and template render waits through it (`wait_s`)."""
        self.template = ServerTemplate(
            url, chat_template_kwargs={"enable_thinking": thinking == "on"}, server=self.counter
        )

    @property
    def served_n_ctx(self) -> int:
        return self.report.served_n_ctx

    @property
    def profile_name(self) -> str:
        return self.profile.name if self.profile else f"url:{self.url}"

    @property
    def factor(self) -> str:
        """Served per-slot context ÷ the model's native context (from the GGUF when known)."""
        native = self.native_context
        return factor_label(self.served_n_ctx, native) if native else "unknown"

    def server_count(self, prompt: Prompt) -> int:
        """Prompt tokens as the server will count them: its template, then its tokenizer."""
        return count_prompt(self.counter, self.template.render(list(prompt.messages)))

    def server_died(self) -> bool:
        """True when the managed process is gone, or an unmanaged server stopped answering."""
        if self.server is not None:
            return not self.server.alive()
        try:
            with httpx.Client(timeout=5.0, trust_env=False) as client:
                return client.get(f"{self.url}/health").status_code != 200
        except httpx.TransportError:
            return True

    def restart(self) -> None:
        """Start a managed server again with the same command line and preflight it again."""
        if self.server is None:
            return
        self.server.stop()
        self.server.start()
        self.report = preflight(self.url, self.needed, self.server.log_path, self.api_key)

    def close(self) -> None:
        self.client.close()
        self.counter.close()
        if self.server is not None:
            self.server.stop()


def launch_args(profile_name: str, facts: GGUFFacts) -> tuple[LaunchProfile, list[str]]:
    """The profile and its llama-server flags for the run's model."""
    profile = load_profile(profile_name)
    return profile, server_args(profile, facts)


@contextmanager
def open_endpoint(
    config: RunConfig,
    launch: tuple[LaunchProfile, list[str]] | None,
    needed: int,
    fingerprint: dict[str, object],
    native_context: int | None = None,
) -> Iterator[Endpoint]:
    """Start `launch` (a profile and its flags) or reach `config.url`, preflight, always clean up."""
    server: ManagedServer | None = None
    profile: LaunchProfile | None = None
    if launch is None:
        assert config.url is not None
        url = config.url.rstrip("/")
        log_path = None
    else:
        assert config.model is not None
        profile, args = launch
        log_path = config.out_dir / "logs" / f"{profile.name}.log"
        print(f"niah: starting llama-server for profile {profile.name} ...", flush=True)
        server = start_server(
            config.model,
            args,
            log_path,
            server_bin=config.server_bin,
            host=config.host,
            api_key=config.api_key,
            on_wait=WaitProgress(log_path),
        )
        url = server.url
    try:
        report = preflight(url, needed, log_path, config.api_key)
        if launch is None:
            fingerprint["server"] = server_fingerprint(url, report)
        endpoint = Endpoint(
            url,
            report,
            api_key=config.api_key,
            stall_timeout_s=config.stall_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            profile=profile,
            server=server,
            needed=needed,
            native_context=native_context,
            thinking=config.thinking,
        )
        print(f"niah: preflight {report.summary()}", flush=True)
        try:
            yield endpoint
        finally:
            endpoint.close()
    finally:
        if server is not None:
            server.stop()


def server_fingerprint(url: str, report: PreflightReport) -> dict[str, object]:
    """What identifies an unmanaged server's launch, for resume checks."""
    props = report.props
    settings = props.get("default_generation_settings", {}) if isinstance(props, dict) else {}
    return {
        "url": url,
        "model_path": props.get("model_path"),
        "n_ctx": settings.get("n_ctx") if isinstance(settings, dict) else None,
        "total_slots": props.get("total_slots"),
        "build_info": props.get("build_info"),
    }


def resolve_tokenizer(spec: str, endpoint: Endpoint) -> Tokenizer:
    """`auto` = qwen3.6 when the server's vocabulary is Qwen3.6's, else the server's own."""
    if spec != "auto":
        return get_tokenizer(spec, api_key=endpoint.api_key)
    qwen = get_tokenizer("qwen3.6")
    assert isinstance(qwen, QwenTiktoken)
    if endpoint.counter.encode(QWEN_PROBE) == qwen.encode(QWEN_PROBE):
        return qwen
    return endpoint.counter


def prompt_builder(
    endpoint: Endpoint, config: RunConfig, corpus: Corpus
) -> Callable[[Cell, Needle], tuple[Prompt, int]]:
    """A function building a cell's prompt and returning it with the server's own count.

    When the chosen tokenizer's count disagrees with the server's, the prompt is rebuilt with
    the server's tokenizer before anything is sent.
    """
    tokenizer = resolve_tokenizer(config.tokenizer, endpoint)
    template = endpoint.template

    def build_cell(cell: Cell, needle: Needle) -> tuple[Prompt, int]:
        prompt = build(cell.length, cell.depth, tokenizer, corpus, needle, template)
        if tokenizer is endpoint.counter:  # build() already counted the server's own render
            return prompt, prompt.prompt_tokens
        counted = endpoint.server_count(prompt)
        if counted != cell.length:
            prompt = build(cell.length, cell.depth, endpoint.counter, corpus, needle, template)
            counted = prompt.prompt_tokens
        return prompt, counted

    return build_cell

