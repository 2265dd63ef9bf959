"""What a model's architecture means for prompt-cache reuse: whether llama-server can keep the prefix two
prompts share (full attention), only a window of it (sliding window: `--swa-full` keeps all), or only
a context checkpoint (hybrid and recurrent models). The run's priming and reuse accounting built on
these facts live in niah.run.reuse."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts

FULL, SLIDING_WINDOW, RECURRENT = "full attention", "sliding window", "recurrent"

RECURRENT_ARCHS = frozenset((
    # llama.cpp 11434, src/llama-arch.cpp: llm_arch_is_recurrent and llm_arch_is_hybrid
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7",
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01",
))


def kind_of_arch(arch: str) -> str:
    """RECURRENT for llama.cpp's recurrent and hybrid architectures, else FULL (sliding windows need
    the GGUF's `sliding_window` key, which `--arch` does not give)."""
    return RECURRENT if arch in RECURRENT_ARCHS else FULL


def reuse_kind(facts: GGUFFacts | None) -> str | None:
    """How the model's cache can be reused: FULL, SLIDING_WINDOW or RECURRENT (None when unknown)."""
    if facts is None:
        return None
    if facts.full_attention_interval or 0 in facts.head_count_kv:  # layers without attention are recurrent
        return RECURRENT
    if facts.sliding_window:
        return SLIDING_WINDOW
    return FULL
