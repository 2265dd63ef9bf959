"""Endpoints the runner hands cells to: a server session with what preflight measured about it.

An endpoint knows its served per-slot context, counts prompts with the server's own template and
tokenizer, reports the facts that identify its server, and can tell whether its server died.
"""

from __future__ import annotations

from collections.abc import Callable

from niah.cells import Cell
from niah.launch.architecture import kind_of_arch, reuse_kind
from niah.launch.gguf_meta import GGUFFacts
from niah.launch.preflight import PreflightReport, preflight
from niah.launch.profiles import LaunchProfile
from niah.launch.session import ServerSession, ServerSpec
from niah.launch.yarn import factor_label
from niah.prompts.corpus import Corpus, get_corpus
from niah.prompts.haystack import Prompt, build
from niah.prompts.needles import Needle
from niah.prompts.shared_haystack import place
from niah.prompts.templates import ServerTemplate, count_prompt
from niah.prompts.tokenizers import QwenTiktoken, ServerTokenizer, Tokenizer, get_tokenizer
from niah.run.reuse import ServerModel, probe_reuse, shortfall_reason

QWEN_PROBE = "Needle 4827193 in a haystack: naïve café, 東京, <tags> & emoji 🙂.\n\tEnd."

PromptBuilder = Callable[[Cell, Needle], tuple[Prompt, int, str]]


class Endpoint:
    """One server that receives cells, with what preflight measured about it."""

    def __init__(
        self,
        session: ServerSession,
        needed: int,
        profile: LaunchProfile | None = None,
        given: GGUFFacts | None = None,
        name: str | None = None,
        arch: str | None = None,
    ) -> None:
        self.session = session
        self.name = name or session.url
        """What results call this server: its URL, or `profile#n` for a managed launch."""
        self.needed = needed
        self.profile = profile
        self.report: PreflightReport = preflight(session, needed)
        self.model = server_model(session, self.report, given, arch)
        """What niah knows of the served model (reuse kind, native context) and where from."""
        self.last_prompt: Prompt | None = None
        """The last prompt this server processed: what the next one can reuse from its cache."""
        self.counter = ServerTokenizer(session)
        """The server's tokenizer; its requests' wait is counted in `session.wait_s`."""
        self.template = ServerTemplate(session)

    @property
    def served_n_ctx(self) -> int:
        return self.report.served_n_ctx

    @property
    def profile_name(self) -> str:
        return self.profile.name if self.profile else f"url:{self.session.url}"

    @property
    def factor(self) -> str:
        """Served per-slot context ÷ the model's native context (from a GGUF or the profile; else
        `unknown`: a server's training context is already scaled by YaRN and says nothing)."""
        native = (self.profile.native_context if self.profile else None) or self.model.native_context
        return factor_label(self.served_n_ctx, native) if native else "unknown"

    def facts(self) -> dict[str, object]:
        """What identifies this server for the run's fingerprint: a URL server's model, context,
        slots and build (a managed launch is identified by its flags and binary before it starts)."""
        props = self.report.props
        return {
            "url": self.session.url,
            "model_path": props.get("model_path"),
            "n_ctx": self.served_n_ctx,
            "total_slots": props.get("total_slots"),
            "build_info": props.get("build_info"),
        }

    def server_count(self, prompt: Prompt) -> int:
        """Prompt tokens as the server will count them: its template, then its tokenizer."""
        return count_prompt(self.counter, self.template.render(list(prompt.messages)))

    def died(self) -> bool:
        return self.session.died()

    def reuse_shortfall_reason(self) -> str:
        """Why this server reuses less of a shared prefix than it could (see niah.run.reuse)."""
        spec = self.session.spec
        return shortfall_reason(self.model.kind, spec.args if spec.managed else None)

    def restart(self) -> None:
        """Start the managed server again with the same flags and preflight it again (its cache is empty)."""
        self.session.restart()
        self.report = preflight(self.session, self.needed)
        self.last_prompt = None


def server_model(
    session: ServerSession, report: PreflightReport, given: GGUFFacts | None, arch: str | None
) -> ServerModel:
    """The served model's reuse kind and native context, from the first source that has them: the
    GGUF the server loaded (when readable here), the `--model` file given beside `--url`, `--arch`,
    or, with none of those, a reuse probe of the server itself."""
    for facts, source in ((report.model_facts, "the server's GGUF"), (given, "--model")):
        if facts is not None:
            return ServerModel(reuse_kind(facts), f"{source} {facts.path}", facts.native_context, facts)
    if arch:
        return ServerModel(kind_of_arch(arch), f"--arch {arch}")
    kind, source = probe_reuse(session, get_corpus("builtin").text, report.served_n_ctx)
    return ServerModel(kind, source)


def start_endpoint(
    spec: ServerSpec,
    needed: int,
    profile: LaunchProfile | None = None,
    given: GGUFFacts | None = None,
    name: str | None = None,
    arch: str | None = None,
) -> Endpoint:
    """Start (or reach) the server of `spec` and preflight it; the caller closes `endpoint.session`
    (what was started is stopped here when preflight fails)."""
    if spec.managed:
        print(f"niah: starting llama-server for profile {name or spec.name} ...", flush=True)
    session = ServerSession(spec)
    try:
        session.open()
        endpoint = Endpoint(session, needed, profile, given, name, arch)
    except BaseException:
        session.close()
        raise
    where = f" [{name}]" if name and spec.managed else ""
    print(f"niah: preflight{where} {endpoint.report.summary()}", flush=True)
    print(f"niah: model{where}: {endpoint.model.line()}", flush=True)
    return endpoint


def resolve_tokenizer(spec: str, endpoint: Endpoint) -> Tokenizer:
    """`auto` = qwen3.6 when the server's vocabulary is Qwen3.6's, else the server's own."""
    if spec == "auto":
        qwen = get_tokenizer("qwen3.6")
        assert isinstance(qwen, QwenTiktoken)
        return qwen if endpoint.counter.encode(QWEN_PROBE) == qwen.encode(QWEN_PROBE) else endpoint.counter
    if spec.startswith("server:"):
        return endpoint.counter
    return get_tokenizer(spec)


def prompt_builder(endpoint: Endpoint, tokenizer: Tokenizer, corpus: Corpus) -> PromptBuilder:
    """A function building a cell's prompt; it returns the prompt, the server's own count of it and
    the name of the tokenizer that built it.

    When `tokenizer`'s count disagrees with the server's, the prompt is rebuilt with the server's
    tokenizer before anything is sent.
    """
    template = endpoint.template

    def build_cell(cell: Cell, needle: Needle) -> tuple[Prompt, int, str]:
        placed = place(needle, cell.length, tokenizer, corpus, template)
        prompt = build(cell.length, cell.depth, tokenizer, corpus, placed, template)
        if tokenizer is endpoint.counter:  # build() already counted the server's own render
            return prompt, prompt.prompt_tokens, "server"
        counted = endpoint.server_count(prompt)
        if counted == cell.length:
            return prompt, counted, tokenizer.name
        placed = place(needle, cell.length, endpoint.counter, corpus, template)
        prompt = build(cell.length, cell.depth, endpoint.counter, corpus, placed, template)
        return prompt, prompt.prompt_tokens, "server"

    return build_cell
