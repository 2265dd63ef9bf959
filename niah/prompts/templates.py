"""Chat templates that wrap the user message, and prompt counting that honours special tokens.

`builtin` is ChatML (the Qwen family's layout) for offline use; `server:URL` asks llama-server's
`/apply-template`, exactly what `/v1/chat/completions` will render; `gguf:PATH` renders the
model file's `tokenizer.chat_template` with jinja2; `hf:DIR_OR_ID` the tokenizer's own template
with transformers. `auto` is the model's own template whenever the tokenizer names a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from niah.errors import NiahError
from niah.launch.gguf_meta import read_header
from niah.prompts.tokenizers import HFTokenizer, ServerTokenizer, Tokenizer

if TYPE_CHECKING:
    from niah.launch.session import ServerSession

_SENTINEL = "NIAHSENTINELa7f3c2"


class ChatTemplate(Protocol):
    """Renders chat messages into the prompt text the model reads."""

    name: str

    def render(self, messages: list[dict[str, str]]) -> str: ...


class BuiltinTemplate:
    """ChatML with a generation prompt: `<|im_start|>user ... <|im_end|> <|im_start|>assistant`."""

    name = "builtin"

    def render(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"


class ServerTemplate:
    """llama-server's own template via `POST /apply-template`, through the session with that server
    (its thinking setting is the one the chat requests carry)."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.name = f"server:{session.url}"

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.session.apply_template(messages)


class HFTemplate:
    """A Hugging Face tokenizer's chat template (tokenizer_config.json), rendered by transformers."""

    def __init__(self, tokenizer: HFTokenizer, chat_template_kwargs: dict[str, object] | None = None) -> None:
        if not getattr(tokenizer._tok, "chat_template", None):
            raise NiahError(f"{tokenizer.name} has no chat template; use --template builtin or server:URL")
        self.name = tokenizer.name
        self._tok = tokenizer._tok
        self.kwargs = dict(chat_template_kwargs or {})

    def render(self, messages: list[dict[str, str]]) -> str:
        return _rendered(self.name, lambda: self._tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.kwargs
        ))


class GGUFTemplate:
    """A GGUF file's `tokenizer.chat_template`, rendered with jinja2 like transformers does; a
    template that prints the date (`strftime_now`) prints the one of `now`, fixed for the object."""

    def __init__(
        self, path: Path, chat_template_kwargs: dict[str, object] | None = None, now: datetime | None = None
    ) -> None:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.name = f"gguf:{path}"
        self.kwargs = dict(chat_template_kwargs or {})
        self.now = now or datetime.now()
        """The moment `strftime_now` prints: the same for every render of this template."""
        header = read_header(path, keep=frozenset({"tokenizer.ggml.tokens"}))
        source = header.get("tokenizer.chat_template")
        if source is None:
            raise NiahError(f"{path} has no tokenizer.chat_template; use --template builtin or server:URL")
        if not isinstance(source, str):
            raise NiahError(f"{path}: tokenizer.chat_template is not a string ({type(source).__name__})")
        self.special = {
            "bos_token": _gguf_token(path, header, "tokenizer.ggml.bos_token_id"),
            "eos_token": _gguf_token(path, header, "tokenizer.ggml.eos_token_id"),
        }
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = self.now.strftime
        try:
            self._template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise NiahError(f"chat template {self.name} does not compile: line {exc.lineno}: {_one_line(exc)}") from None

    def render(self, messages: list[dict[str, str]]) -> str:
        return _rendered(self.name, lambda: self._template.render(
            messages=messages, add_generation_prompt=True, **self.special, **self.kwargs
        ))


def _rendered(name: str, render: Callable[[], object]) -> str:
    """What a chat template renders; anything else it raises is one line naming the template."""
    try:
        return str(render())
    except NiahError:
        raise
    except Exception as exc:  # noqa: BLE001 - a chat template is the model's program: its errors are its own
        raise NiahError(f"chat template {name} does not render: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line (jinja2's can span several)."""
    message = getattr(exc, "message", None) or str(exc)
    return f"{exc.__class__.__name__}: {' '.join(str(message).split())}"


def _raise_exception(message: str) -> None:
    raise NiahError(f"chat template: {message}")


def _gguf_token(path: Path, header: dict[str, object], key: str) -> str:
    """The text of the token whose id the header gives at `key` ("" when it gives none)."""
    index = header.get(key)
    tokens = header.get("tokenizer.ggml.tokens")
    if index is None or not isinstance(tokens, list):
        return ""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tokens):
        raise NiahError(f"{path}: {key} = {index!r} is not a token id (the vocabulary has {len(tokens):,})")
    return str(tokens[index])


def auto_template(tokenizer: str) -> str:
    """The template that goes with a tokenizer spec: the model's own for `gguf:`, `hf:` and
    `server:`, else `builtin`."""
    kind, _, arg = tokenizer.partition(":")
    return tokenizer if kind in ("gguf", "hf", "server") and arg else "builtin"


def get_template(
    spec: str, api_key: str | None = None, chat_template_kwargs: dict[str, object] | None = None
) -> ChatTemplate:
    """`builtin`, `server:URL`, `gguf:PATH` or `hf:DIR_OR_ID`; `chat_template_kwargs` as the chat
    request sends them (e.g. {"enable_thinking": False})."""
    if spec == "builtin":
        return BuiltinTemplate()
    kind, _, arg = spec.partition(":")
    if kind == "hf" and arg:
        return HFTemplate(HFTokenizer(arg), chat_template_kwargs)
    if kind == "server" and arg:
        from niah.launch.session import ServerSession, ServerSpec

        thinking = "on" if (chat_template_kwargs or {}).get("enable_thinking") else "off"
        return ServerTemplate(ServerSession(ServerSpec(url=arg, api_key=api_key, thinking=thinking)))
    if kind == "gguf" and arg:
        if not Path(arg).is_file():
            raise NiahError(f"template gguf:{arg}: no such file")
        return GGUFTemplate(Path(arg), chat_template_kwargs)
    raise NiahError(f"unknown template {spec!r}: use builtin, server:URL, gguf:PATH or hf:DIR_OR_ID")


def frame(template: ChatTemplate) -> tuple[str, str]:
    """The rendered text before and after a single user message's content."""
    rendered = template.render([{"role": "user", "content": _SENTINEL}])
    if rendered.count(_SENTINEL) != 1:
        raise NiahError(f"template {template.name} does not place the user message verbatim")
    head, _, tail = rendered.partition(_SENTINEL)
    return head, tail


@lru_cache(maxsize=8)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))


def count_text(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of rendered prompt text, special-token strings (e.g. `<|im_start|>`) counted as the
    control tokens they are, as llama-server does with `parse_special`. No BOS."""
    if isinstance(tokenizer, ServerTokenizer):
        return len(tokenizer.encode(text, parse_special=True))
    specials = getattr(tokenizer, "special_tokens", None)
    if not specials:
        return tokenizer.count(text)
    pieces = _special_pattern(tuple(specials)).split(text)
    return len(pieces) - 1 + sum(tokenizer.count(p) for p in pieces if p)


def bos_count(tokenizer: Tokenizer) -> int:
    """Tokens llama-server adds in front of a chat prompt (its BOS when the model asks for one)."""
    if isinstance(tokenizer, ServerTokenizer):
        return len(tokenizer.session.tokenize("", add_special=True, parse_special=True))
    return int(getattr(tokenizer, "bos_tokens", 0))


def count_prompt(tokenizer: Tokenizer, text: str) -> int:
    """The full count of a rendered prompt: BOS (if any) plus `count_text`."""
    return bos_count(tokenizer) + count_text(tokenizer, text)
