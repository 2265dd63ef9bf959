"""The qwen35 test bed: deterministic bytes, the target's header facts, the Qwen3.6 template, and a
real llama-server that loads, tokenizes, renders, streams and drafts with its MTP block."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import render_gguf_template

from niah.cli import main
from niah.launch.gguf_meta import read_gguf_facts, read_header
from niah.prompts.corpus import get_corpus
from niah.prompts.tokenizers import get_tokenizer
from niah.testbed.vocab import QWEN36_CHAT_TEMPLATE

THINKING_OFF = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
THINKING_ON = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_command_same_bytes(qwen35_testbed: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.gguf"
    assert main(["testbed", "qwen35", "-o", str(again), "--mtp"]) == 0
    assert sha256(again) == sha256(qwen35_testbed)
    other = tmp_path / "four.gguf"
    assert main(["testbed", "qwen35", "-o", str(other), "--layers", "4"]) == 0
    assert sha256(other) != sha256(qwen35_testbed)
    assert 5 * 2**20 < qwen35_testbed.stat().st_size < 80 * 2**20


def test_header_is_the_target_shape(qwen35_testbed: Path) -> None:
    facts = read_gguf_facts(qwen35_testbed)
    assert facts.arch == "qwen35" and facts.context_length == 4096
    assert facts.block_count == 9 and facts.nextn_predict_layers == 1
    assert facts.full_attention_interval == 4 and facts.attention_layers == (3, 7)
    assert facts.key_length == facts.value_length == 256
    assert set(facts.head_count_kv) == {4}
    header = read_header(qwen35_testbed)
    assert header["tokenizer.ggml.pre"] == "qwen35" and header["tokenizer.ggml.model"] == "gpt2"
    assert header["qwen35.rope.dimension_sections"] == [11, 11, 10, 0]
    assert header["qwen35.ssm.inner_size"] == header["qwen35.ssm.state_size"] * header["qwen35.ssm.time_step_rank"]  # type: ignore[operator]
    assert header["tokenizer.chat_template"] == QWEN36_CHAT_TEMPLATE


def test_template_renders_like_qwen36(qwen35_testbed: Path) -> None:
    hi = [{"role": "user", "content": " hi \n"}]
    assert render_gguf_template(qwen35_testbed, hi, enable_thinking=False) == THINKING_OFF
    assert render_gguf_template(qwen35_testbed, hi, enable_thinking=True) == THINKING_ON
    assert render_gguf_template(qwen35_testbed, hi) == THINKING_ON  # thinking is the default
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nold\n</think>\n\nA"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "B", "reasoning_content": "new"},
    ]
    rendered = render_gguf_template(qwen35_testbed, turns, enable_thinking=False)
    assert rendered.startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nb<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nnew\n</think>\n\nB<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["llama", "-o", "{tmp}/x.gguf"], "unknown test-bed architecture"),
        (["qwen35", "-o", "{tmp}/x.gguf", "--layers", "6"], "multiple of the full-attention interval"),
        (["qwen35", "-o", "{tmp}/x.gguf", "--layers", "0"], "multiple of the full-attention interval"),
        (["qwen35", "-o", "{tmp}/missing/x.gguf"], "does not exist"),
        (["qwen35", "-o", "{tmp}"], "is a folder"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "niah", "testbed", *[a.format(tmp=tmp_path) for a in args]],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.server
def test_llama_server_serves_the_testbed(
    start_llama_server: Callable[..., object], qwen35_testbed: Path
) -> None:
    live = start_llama_server("-c", "4096", "--parallel", "1", model_path=qwen35_testbed)
    url = live.url  # type: ignore[attr-defined]
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:
        props = client.get(f"{url}/props").json()
        assert props["default_generation_settings"]["n_ctx"] == 4096
        text = get_corpus("builtin").text[:4000]
        served = client.post(f"{url}/tokenize", json={"content": text, "add_special": False}).json()["tokens"]
        assert served == get_tokenizer("qwen3.6").encode(text)
        for kwargs, expected in (({"enable_thinking": False}, THINKING_OFF), ({"enable_thinking": True}, THINKING_ON)):
            body = {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": kwargs}
            assert client.post(f"{url}/apply-template", json=body).json()["prompt"] == expected
        chunks = stream_chat(client, url)
    assert chunks[-1]["timings"]["predicted_n"] == 6
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 1


def stream_chat(client: httpx.Client, url: str) -> list[dict[str, object]]:
    """The JSON chunks of a streamed 6-token chat completion."""
    body = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 6, "stream": True,
            "chat_template_kwargs": {"enable_thinking": False}, "temperature": 0}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.server
def test_mtp_drafting_is_accepted(start_llama_server: Callable[..., object], qwen35_testbed: Path) -> None:
    live = start_llama_server(
        "-c", "4096", "--parallel", "1", "--spec-type", "draft-mtp", "--spec-draft-n-max", "2",
        model_path=qwen35_testbed,
    )
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:
        chunks = stream_chat(client, live.url)  # type: ignore[attr-defined]
    timings = chunks[-1]["timings"]
    assert isinstance(timings, dict) and timings.get("draft_n", 0) > 0
