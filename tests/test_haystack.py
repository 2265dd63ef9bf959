"""The haystack builder: exact length, needle at depth, determinism, bad input, and the server's own count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from niah.cli import main
from niah.errors import NiahError
from niah.prompts.corpus import get_corpus
from niah.prompts.corpus_tokens import tokenized
from niah.prompts.haystack import Prompt, build, get_template
from niah.prompts.needles import make_needle, score_answer
from niah.prompts.tokenizers import get_tokenizer

LENGTHS = (1_000, 4_096, 32_768, 131_072, 262_144, 1_010_000)
DEPTHS = (0, 25, 50, 75, 100)
ROOT = Path(__file__).resolve().parent.parent


def reencode(tokenizer, text: str) -> list[int]:
    """An independent full count: tiktoken's own special-token handling over the whole text."""
    return tokenizer._enc.encode(text, allowed_special="all")


def check_prompt(prompt: Prompt, ids: list[int], tokenizer, sentence_tokens: int) -> None:
    """Exact length; needle once, at the recorded offset; snapped below the nominal depth by < 1 sentence."""
    assert len(ids) == prompt.length == prompt.prompt_tokens
    needle = prompt.needle
    assert prompt.text.count(needle.value) == 1
    at = prompt.haystack_token_start + prompt.needle_token_offset
    planted = tokenizer.decode(ids[at:at + prompt.needle_tokens])
    assert planted.strip() == needle.text
    assert tokenizer.decode(ids[:at]).count(needle.value) == 0
    filler = prompt.haystack_tokens - prompt.needle_tokens
    nominal = prompt.depth_nominal / 100 * filler
    assert 0 <= nominal - prompt.needle_token_offset < sentence_tokens
    assert abs(prompt.depth_actual - prompt.depth_nominal) <= 100 * sentence_tokens / filler
    if prompt.depth_nominal == 0:
        assert prompt.needle_token_offset == 0
    if prompt.depth_nominal == 100:
        assert prompt.needle_token_offset == filler
    body = tokenizer.decode(ids[prompt.haystack_token_start:prompt.haystack_token_start + prompt.haystack_tokens])
    assert needle.text in body and needle.question not in body


@pytest.mark.parametrize("length", LENGTHS)
def test_exact_length_and_needle_position(length, qwen, builtin):
    template = get_template("builtin")
    sentence = int(tokenized(builtin, qwen).counts.max())
    for depth in DEPTHS:
        needle = make_needle(0, length, depth, 0)
        prompt = build(length, depth, qwen, builtin, needle, template)
        check_prompt(prompt, reencode(qwen, prompt.text), qwen, sentence)
        assert prompt.corpus_sha256 == builtin.sha256 and prompt.tokenizer == "qwen3.6"
        assert prompt.template == "builtin" and prompt.corpus_repeats == 1
        assert prompt.messages[0]["role"] == "user"
        assert prompt.text == "<|im_start|>user\n" + prompt.messages[0]["content"] + (
            "<|im_end|>\n<|im_start|>assistant\n"
        )


def test_every_small_length_is_exact(qwen, builtin):
    """From the minimum up, every length comes out exact (the truncated last sentence absorbs the rest)."""
    template = get_template("builtin")
    needle = make_needle(3, 0, 50, 0)
    with pytest.raises(NiahError, match=r"minimum length (\d+)") as info:
        build(10, 50, qwen, builtin, needle, template)
    minimum = int(info.value.args[0].rsplit(" ", 1)[1].rstrip(")"))
    with pytest.raises(NiahError, match=f"minimum length {minimum}"):
        build(minimum - 1, 50, qwen, builtin, needle, template)
    for length in range(minimum, minimum + 60):
        for depth in (0, 50, 100):
            prompt = build(length, depth, qwen, builtin, needle, template)
            assert len(reencode(qwen, prompt.text)) == length
            assert prompt.text.count(needle.value) == 1


def test_same_seed_is_byte_identical_across_processes(tmp_path, qwen, builtin):
    out = tmp_path / "prompt.json"
    cmd = [sys.executable, "-m", "niah", "haystack", "--length", "5000", "--depth", "40", "--seed", "7",
           "--trial", "2", "--json", "-o", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=120)
    printed = json.loads(out.read_text(encoding="utf-8"))
    prompt = build(5000, 40, qwen, builtin, make_needle(7, 5000, 40, 2), get_template("builtin"))
    assert printed["text"] == prompt.text
    assert printed["prompt_tokens"] == 5000 == len(reencode(qwen, printed["text"]))
    assert printed["needle"]["value"] == prompt.needle.value
    assert printed["needle"]["token_offset"] == prompt.needle_token_offset
    assert printed["corpus_sha256"] == builtin.sha256
    assert {"depth_nominal", "depth_actual", "tokenizer", "text"} <= printed.keys()


def test_different_trial_plants_a_different_value(qwen, builtin):
    template = get_template("builtin")
    first = build(2000, 50, qwen, builtin, make_needle(0, 2000, 50, 0), template)
    second = build(2000, 50, qwen, builtin, make_needle(0, 2000, 50, 1), template)
    assert first.needle.value != second.needle.value
    assert first.needle.value not in second.text and second.needle.value in second.text
    assert len(reencode(qwen, second.text)) == 2000


def test_noise_corpus_repeats_and_stays_exact(qwen):
    noise = get_corpus("noise")
    prompt = build(20_000, 75, qwen, noise, make_needle(0, 20_000, 75, 0), get_template("builtin"))
    assert prompt.corpus_repeats > 1
    check_prompt(prompt, reencode(qwen, prompt.text), qwen, int(tokenized(noise, qwen).counts.max()))


def test_files_corpus_in_sorted_order_repeated(tmp_path, qwen, monkeypatch):
    monkeypatch.setenv("NIAH_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "b.txt").write_text("Second file. It has two sentences.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("First file, first line.\nStill the first paragraph!\n\nNew one?\n")
    corpus = get_corpus(f"files:{tmp_path}/*.txt")
    assert [Path(p).name for p in corpus.files] == ["a.txt", "b.txt"]
    assert corpus.text.startswith("First file, first line. Still the first paragraph!\n\nNew one?\n\nSecond")
    prompt = build(600, 50, qwen, corpus, make_needle(1, 600, 50, 0), get_template("builtin"))
    assert prompt.corpus_repeats > 1 and len(reencode(qwen, prompt.text)) == 600
    assert list((tmp_path / "cache" / "corpus").glob("tokens-*.npz"))


def test_needle_value_already_in_corpus_is_refused(tmp_path, qwen):
    needle = make_needle(0, 500, 50, 0)
    (tmp_path / "doc.txt").write_text(f"The code was {needle.value} all along. Nothing else here.")
    corpus = get_corpus(f"files:{tmp_path}/doc.txt")
    with pytest.raises(NiahError, match="already contains the needle value"):
        build(500, 50, qwen, corpus, needle, get_template("builtin"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--length", "1000", "--depth", "101"], "outside 0-100"),
        (["--length", "1000", "--depth", "-1"], "outside 0-100"),
        (["--length", "0", "--depth", "50"], "positive"),
        (["--length", "-5", "--depth", "50"], "bad length"),
        (["--length", "4q", "--depth", "50"], "bad length"),
        (["--length", "20", "--depth", "50"], "minimum length"),
        (["--length", "1000", "--depth", "50", "--corpus", "wikipedia"], "unknown corpus"),
        (["--length", "1000", "--depth", "50", "--corpus", "files:/nonexistent-niah/*.txt"], "matches no files"),
        (["--length", "1000", "--depth", "50", "--seed", "1.5"], "invalid int value"),
        (["--length", "1000", "--depth", "50", "--template", "jinja"], "unknown template"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    try:
        code = main(["haystack", *args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


@pytest.mark.server
def test_server_counts_exactly_the_length(llama_server, builtin):
    """The real tiny server's own count of the rendered prompt is L, the needle sits at the recorded
    token offset, and the model answers from the haystack. (/tokenize is not limited by -c.)"""
    url = llama_server.url
    tokenizer = get_tokenizer(f"server:{url}")
    template = get_template(f"server:{url}")
    try:
        with httpx.Client(trust_env=False, timeout=httpx.Timeout(600.0, connect=5.0)) as client:
            for length in (300, 1_000, 4_096, 8_000, 60_000):
                for depth in (0, 50, 100):
                    needle = make_needle(0, length, depth, 0)
                    prompt = build(length, depth, tokenizer, builtin, needle, template)
                    rendered = client.post(f"{url}/apply-template", json={"messages": list(prompt.messages)})
                    assert rendered.json()["prompt"] == prompt.text
                    tokens = client.post(f"{url}/tokenize", json={
                        "content": prompt.text, "parse_special": True, "add_special": True}).json()["tokens"]
                    assert len(tokens) == length == prompt.prompt_tokens
                    at = prompt.haystack_token_start + prompt.needle_token_offset
                    assert tokenizer.decode(tokens[at:at + prompt.needle_tokens]).strip() == needle.text
                    assert prompt.template == f"server:{url}" and prompt.tokenizer == f"server:{url}"
            prompt = build(1_000, 50, tokenizer, builtin, make_needle(0, 1_000, 50, 0), template)
            reply = client.post(f"{url}/v1/chat/completions", json={
                "messages": list(prompt.messages), "max_tokens": 32, "temperature": 0}).json()
    finally:
        template.session.close()
        tokenizer.close()
    assert reply["usage"]["prompt_tokens"] == 1_000
    assert score_answer(reply["choices"][0]["message"]["content"], prompt.needle.value)


@pytest.mark.server
def test_gguf_template_renders_like_the_server(llama_server):
    messages = [{"role": "user", "content": "Where is the needle?\n\nIn the haystack."}]
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        served = client.post(f"{llama_server.url}/apply-template", json={"messages": messages}).json()["prompt"]
    assert get_template(f"gguf:{llama_server.model}").render(messages) == served


def test_cli_custom_needle_to_file(tmp_path, capsys, qwen):
    spec = tmp_path / "needle.toml"
    spec.write_text('[[needle]]\ntext = "The vault code is {value}."\nquestion = "What is the vault code?"\n'
                    'answer = "{value}"\n')
    out = tmp_path / "prompt.txt"
    code = main(["haystack", "--length", "3000", "--depth", "75", "--needle", str(spec), "-o", str(out)])
    assert code == 0
    text = out.read_text(encoding="utf-8")
    assert len(reencode(qwen, text)) == 3000
    assert "The vault code is " in text and text.rstrip().endswith("<|im_start|>assistant")
    assert "What is the vault code?" in text and "3000 tokens" in capsys.readouterr().err
