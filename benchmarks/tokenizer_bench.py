"""Encode throughput of each tokenizer backend on the ~1.3M-token built-in English corpus (tokens/s).

Backends: qwen3.6 (tiktoken), gguf: and hf: with SmolLM2's vocabulary (hf: from a tokenizer.json
written from the GGUF's vocabulary), and server: against a llama-server this script starts and
stops. Also times opening the GGUF header. Prints a table; nothing is asserted.

    python benchmarks/tokenizer_bench.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from niah.launch.server import find_tiny_model
from niah.launch.session import ServerSession, ServerSpec
from niah.prompts.corpus import get_corpus
from niah.prompts.gguf_tokenizer import GGUFTokenizer
from niah.prompts.tokenizers import get_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_tokenizers import write_hf_tokenizer


def english_text() -> str:
    """The built-in essay corpus: about 1.3M Qwen3.6 tokens of English."""
    return get_corpus("builtin").text


def timed(tokenizer: object, text: str) -> tuple[int, float]:
    started = time.perf_counter()
    n = len(tokenizer.encode(text))  # type: ignore[attr-defined]
    return n, time.perf_counter() - started


def main() -> None:
    model = find_tiny_model()
    text = english_text()
    started = time.perf_counter()
    GGUFTokenizer(model)
    print(f"gguf header + vocabulary load (SmolLM2, {model.stat().st_size / 1e6:.0f} MB file): "
          f"{time.perf_counter() - started:.2f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = write_hf_tokenizer(model, Path(tmp) / "hf")
        backends = {
            "qwen3.6": get_tokenizer("qwen3.6"),
            "gguf:SmolLM2": get_tokenizer(f"gguf:{model}"),
            "hf:SmolLM2 tokenizer.json": get_tokenizer(f"hf:{hf_dir}"),
        }
        for name, tokenizer in backends.items():
            rows.append((name, *timed(tokenizer, text)))
        spec = ServerSpec(model=model, args=("-c", "2048", "--parallel", "1"), log_dir=Path(tmp))
        with ServerSession(spec) as server:
            tokenizer = get_tokenizer(f"server:{server.url}")
            rows.append(("server:llama-server /tokenize", *timed(tokenizer, text)))
            tokenizer.close()  # type: ignore[attr-defined]
    print(f"text: {len(text):,} characters")
    print(f"{'backend':<32} {'tokens':>10} {'seconds':>8} {'tokens/s':>12}")
    for name, n, seconds in rows:
        print(f"{name:<32} {n:>10,} {seconds:>8.2f} {n / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
