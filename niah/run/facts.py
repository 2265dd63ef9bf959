"""Facts a live server tells (its version, the resolved tokenizer, a URL server's identity), checked
against the results file before any cell is sent; each checked endpoint gets its prompt builder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from niah.errors import NiahError
from niah.publish.results import canonical
from niah.run.endpoints import prompt_builder, resolve_tokenizer

if TYPE_CHECKING:
    from niah.run.dispatch import RunState
    from niah.run.endpoints import Endpoint, PromptBuilder


def check_endpoints(state: RunState, endpoints: list[Endpoint], several_urls: bool) -> dict[str, PromptBuilder]:
    """Check (or record) the facts each live server tells against the results file, and make each
    one's prompt builder. With several servers one whose facts differ is dropped with one line.

    With several --url servers the recorded `server` fact leaves the URL out: any set of servers
    with the same model, context, slots and build may resume the run.
    """
    builders: dict[str, PromptBuilder] = {}
    refused: list[NiahError] = []
    for endpoint in list(endpoints):
        tokenizer = resolve_tokenizer(state.config.tokenizer, endpoint)
        facts: dict[str, object] = {"tokenizer_resolved": tokenizer_fact(state, tokenizer.name)}
        if endpoint.session.spec.managed:
            facts["server_version"] = endpoint.session.version()
        else:
            facts["server"] = server_fact(state, endpoint, several_urls)
        try:
            state.results.check_facts(facts)
        except NiahError as exc:
            if len(endpoints) == 1:
                raise
            print(f"niah: dropped {endpoint.name}: {exc}", flush=True)
            endpoints.remove(endpoint)
            endpoint.session.close()
            refused.append(exc)
            continue
        builders[endpoint.name] = prompt_builder(endpoint, tokenizer, state.corpus)
    if not builders:
        raise refused[0]
    return builders


def server_fact(state: RunState, endpoint: Endpoint, several_urls: bool) -> dict[str, object]:
    """A URL server's identity for `check_facts`: without its URL when the run has several servers
    (or was recorded so); a run recorded on one URL resumes on several when all else matches."""
    server = endpoint.facts()
    recorded = state.results.fact("server")
    has_url = isinstance(recorded, dict) and "url" in recorded
    if not several_urls and (recorded is None or has_url):
        return server
    server = {k: v for k, v in server.items() if k != "url"}
    if has_url and canonical({k: v for k, v in recorded.items() if k != "url"}) == canonical(server):
        return recorded  # type: ignore[no-any-return]
    return server


def tokenizer_fact(state: RunState, name: str) -> str:
    """The resolved tokenizer as a fact: `server` for any server's own (its URL is no identity: a
    managed launch gets a new port each time); a file that recorded `server:URL` keeps it."""
    if not name.startswith("server:"):
        return name
    recorded = state.results.fact("tokenizer_resolved")
    return recorded if isinstance(recorded, str) and recorded.startswith("server") else "server"
