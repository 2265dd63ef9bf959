"""Tokenizer backends: gguf:, hf: and server: agree id for id with the real llama-server; qwen3.6 facts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from niah.launch.gguf_meta import read_header
from niah.launch.server import free_port
from niah.prompts.gguf_tokenizer import GGUFTokenizer
from niah.prompts.tokenizers import QwenTiktoken, ServerTokenizer, get_tokenizer

TEXTS = [
    "Plain English prose about rivers, mills and the farmers who traded grain there.",
    "The special magic number is 4827193.",
    "Digits 0123456789, 3.14159, 1,010,000 and 262144.",
    "Punctuation runs: !!! ... ??? --- ;;; (([[{{}}]])) @#$%^&*",
    "new\nlines\n\n\ttabs\t and   several    spaces  ",
    "Non-ASCII: naïve café résumé, 東京タワー, Ünïcödé, emoji 🙂🎉.",
    "Text with <|im_start|>user\nhello<|im_end|> control strings inside.",
    "I'm sure you're right; we'll see what they'd say. IT'S DONE.",
]


def write_hf_tokenizer(model: Path, folder: Path) -> Path:
    """A tokenizer.json built from the GGUF's own vocabulary, merges and control tokens with the
    `tokenizers` library, and the GGUF's chat template in tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    header = read_header(model, keep=frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}))
    tokens = list(header["tokenizer.ggml.tokens"])  # type: ignore[call-overload]
    merges = [tuple(m.split(" ", 1)) for m in header["tokenizer.ggml.merges"]]  # type: ignore[union-attr]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [  # SmolLM2's pre-tokenizer: digits one by one, then GPT-2's byte-level split
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, header["tokenizer.ggml.token_type"]) if kind == 3]  # type: ignore[call-overload]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": header["tokenizer.chat_template"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.server
def test_gguf_hf_and_server_give_identical_ids(llama_server, tmp_path: Path) -> None:
    server = get_tokenizer(f"server:{llama_server.url}")
    gguf = get_tokenizer(f"gguf:{llama_server.model}")
    hf = get_tokenizer("hf:" + str(write_hf_tokenizer(llama_server.model, tmp_path / "hf")))
    for text in TEXTS:
        expected = server.encode(text)
        assert gguf.encode(text) == expected, text
        assert hf.encode(text) == expected, text
        assert gguf.decode(expected) == text
    assert isinstance(server, ServerTokenizer)
    assert server.decode(server.encode(TEXTS[0])) == TEXTS[0]
    server.close()


def test_gguf_control_strings_are_text(tiny_model: Path) -> None:
    tokenizer = GGUFTokenizer(tiny_model)
    im_start = tokenizer._ids["<|im_start|>"]
    assert im_start not in tokenizer.encode("a <|im_start|> b")


def test_qwen36_specials_are_text_and_known_ids() -> None:
    qwen = get_tokenizer("qwen3.6")
    assert isinstance(qwen, QwenTiktoken)
    ids = qwen.encode("<|im_start|>user")
    assert 248045 not in ids and len(ids) > 2
    assert qwen.special_tokens["<|im_start|>"] == 248045
    assert qwen.special_tokens["<think>"] == 248068
    assert qwen.special_tokens["<|endoftext|>"] == 248044
    text = "The special magic number is 4827193. Ünïcödé 東京"
    assert qwen.decode(qwen.encode(text)) == text
    assert qwen.encode("4827193") == [qwen.encode(d)[0] for d in "4827193"]  # digits one by one


def niah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=120)


def test_tokenize_cli_counts(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[1])
    result = niah("tokenize", "--tokenizer", "qwen3.6", str(text))
    assert result.returncode == 0
    assert int(result.stdout.strip()) == get_tokenizer("qwen3.6").count(TEXTS[1])


@pytest.mark.parametrize(
    "spec",
    ["nonsense", "gguf:/no/such/model.gguf", "gguf:{notgguf}", "server:http://127.0.0.1:{port}", "hf:/no/such/dir"],
)
def test_tokenize_cli_bad_specs_are_one_line_exit_2_or_3(spec: str, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is not a GGUF file")
    spec = spec.format(notgguf=not_gguf, port=free_port())
    result = niah("tokenize", "--tokenizer", spec, str(text))
    assert result.returncode == (3 if spec.startswith("server:") else 2), result.stderr  # 3: unreachable
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_tokenize_cli_missing_file_is_one_line() -> None:
    result = niah("tokenize", "/no/such/file.txt")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def served_count(live, messages: list[dict[str, str]]) -> tuple[str, int]:
    """What llama-server's chat endpoint renders for `messages` and how many tokens it counts."""
    rendered = live.session.apply_template(messages)
    return rendered, len(live.session.tokenize(rendered, parse_special=True, add_special=True))


@pytest.mark.server
@pytest.mark.parametrize("bed", ["llama_server", "qwen35_server"])
def test_haystack_gguf_counts_what_the_server_counts(bed: str, request, tmp_path: Path) -> None:
    """`niah haystack --tokenizer gguf:M` renders M's own chat template, counts its control tokens as
    one token each and its BOS; llama-server's chat endpoint counts the same prompt as exactly L."""
    live = request.getfixturevalue(bed)
    out = tmp_path / "prompt.json"
    args = ["haystack", "--length", "2048", "--depth", "50", "--tokenizer", f"gguf:{live.model}", "--json", "-o", str(out)]
    assert niah(*args).returncode == 0
    printed = json.loads(out.read_text(encoding="utf-8"))
    rendered, count = served_count(live, printed["messages"])
    assert printed["template"] == f"gguf:{live.model}" and rendered == printed["text"]
    assert count == printed["prompt_tokens"] == 2048
    reply = live.session.chat(printed["messages"], max_tokens=1)
    assert reply.status == "ok" and reply.prompt_tokens == 2048


@pytest.mark.server
def test_haystack_hf_counts_what_the_server_counts(llama_server, tmp_path: Path) -> None:
    """`hf:DIR` renders the tokenizer_config's chat template and parses its special tokens."""
    folder = write_hf_tokenizer(llama_server.model, tmp_path / "hf")
    out = tmp_path / "prompt.json"
    assert niah("haystack", "--length", "1500", "--depth", "20", "--tokenizer", f"hf:{folder}", "--json", "-o", str(out)).returncode == 0
    printed = json.loads(out.read_text(encoding="utf-8"))
    assert served_count(llama_server, printed["messages"]) == (printed["text"], 1500)


def test_gguf_tokenizer_knows_its_control_tokens_and_bos(tiny_model: Path, qwen35_testbed: Path) -> None:
    from niah.prompts.templates import count_prompt

    smol = GGUFTokenizer(tiny_model)
    assert smol.special_tokens["<|im_start|>"] == smol._ids["<|im_start|>"] and smol.bos_tokens == 0
    assert count_prompt(smol, "<|im_start|>user\nhi<|im_end|>\n") == 2 + smol.count("user\nhi") + smol.count("\n")
    qwen35 = GGUFTokenizer(qwen35_testbed)
    assert qwen35.special_tokens["<|im_start|>"] == 248045


# ---- chat templates from a GGUF: bad ones are one line, dates are one moment ----------------------

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
DATED = "<|im_start|>system\nToday is {{ strftime_now('%d %b %Y') }}.<|im_end|>\n" + CHATML


def write_template_model(path: Path, template: object) -> Path:
    """A GGUF header holding only a chat template (written by the gguf library)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if isinstance(template, str):
        writer.add_chat_template(template)
    else:
        writer.add_array("tokenizer.chat_template", template)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% if %}", "does not compile: line 1: TemplateSyntaxError: Expected an expression"),
        ("{{ messages[0].nope.deeper }}", "does not render: UndefinedError: 'dict object' has no attribute 'nope'"),
        ("{% set seen = [] %}{{ seen.append(1) }}", "does not render: SecurityError: access to attribute 'append'"),
        ("{{ 1 + 'a' }}", "does not render: TypeError: unsupported operand"),
        ("{% for i in range(10**9) %}{% endfor %}", "does not render: OverflowError: Range too big"),
        ([1, 2], "tokenizer.chat_template is not a string (list)"),
    ],
)
def test_a_gguf_template_that_fails_is_one_line_exit_2(template: object, message: str, tmp_path: Path) -> None:
    model = write_template_model(tmp_path / "chat.gguf", template)
    out = tmp_path / "prompt.json"
    result = niah("haystack", "--length", "512", "--depth", "50", "--template", f"gguf:{model}", "--json", "-o", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not out.exists()


class Clock:
    """A faked datetime for the templates module: `now()` is 23:59:59 on 6 December for its first
    call and a second past midnight afterwards."""

    calls = 0

    @classmethod
    def now(cls) -> datetime:
        cls.calls += 1
        return datetime(2026, 12, 6, 23, 59, 59) if cls.calls == 1 else datetime(2026, 12, 7, 0, 0, 1)


def test_a_gguf_template_prints_one_moment_across_midnight(
    tmp_path: Path, qwen, builtin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame is taken before midnight, the cells are rendered after it: every render prints the
    moment the template was made (reading the clock at each render built day 6's frame and day 7's cells)."""
    from niah.prompts import templates
    from niah.prompts.haystack import build
    from niah.prompts.needles import make_needle

    monkeypatch.setattr(templates, "datetime", Clock)
    template = templates.get_template(f"gguf:{write_template_model(tmp_path / 'dated.gguf', DATED)}")
    prompts = [build(1024, depth, qwen, builtin, make_needle(0, 1024, depth, 0), template) for depth in (0, 50, 100)]
    assert Clock.calls == 1 and template.now == datetime(2026, 12, 6, 23, 59, 59)  # type: ignore[attr-defined]
    for prompt in prompts:
        assert "Today is 06 Dec 2026." in prompt.text and prompt.prompt_tokens == 1024
        assert template.render(list(prompt.messages)) == prompt.text


class ServerClockTemplate:
    """A template rendered on a clock niah does not own (llama-server's, transformers'): it prints
    whatever `today` says at each render."""

    def __init__(self, today: str) -> None:
        self.name = "server-clock"
        self.today = today

    def render(self, messages: list[dict[str, str]]) -> str:
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return f"<|im_start|>system\nToday is {self.today}.<|im_end|>\n{body}<|im_start|>assistant\n"


def test_a_template_on_another_clock_is_framed_again_past_midnight(qwen, builtin) -> None:
    """A run caches the frame; a server that renders the date starts a new day mid-run: the next
    cell is built on the new frame (it stopped the run with exit 2)."""
    from niah.errors import NiahError
    from niah.prompts.haystack import build
    from niah.prompts.needles import make_needle

    template = ServerClockTemplate("Sun, 6 Dec 2026")
    before = build(1024, 50, qwen, builtin, make_needle(0, 1024, 50, 0), template)
    template.today = "Mon, 7 Dec 2026"  # midnight
    after = build(1024, 50, qwen, builtin, make_needle(0, 1024, 50, 1), template)
    assert "Today is Sun, 6 Dec 2026." in before.text and "Today is Mon, 7 Dec 2026." in after.text
    assert after.prompt_tokens == 1024 == len(qwen._enc.encode(after.text, allowed_special="all"))
    assert template.render(list(after.messages)) == after.text

    class Ticking(ServerClockTemplate):
        """Prints the time to the second: a new frame at every render, which no prompt can be built on."""

        def render(self, messages: list[dict[str, str]]) -> str:
            self.today = str(int(self.today) + 1)
            return super().render(messages)

    with pytest.raises(NiahError, match="renders another text around the message each time") as info:
        build(1024, 50, qwen, builtin, make_needle(0, 1024, 50, 0), Ticking("0"))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tokens": 5}, "tokenizer.ggml.tokens is not an array of strings"),
        ({"tokens": [1, 2, 3]}, "tokenizer.ggml.tokens is not an array of strings"),
        ({"merges": 7}, "tokenizer.ggml.merges is not an array of strings"),
        ({"token_type": ["x", "y", "z"]}, "tokenizer.ggml.token_type is not an array of integers"),
        ({"add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token is 'yes', expected true or false"),
        ({"pre": ["qwen2"]}, "pre-tokenizer ['qwen2']"),
    ],
)
def test_a_gguf_vocabulary_of_the_wrong_type_is_one_line_exit_2(
    values: dict[str, object], message: str, tmp_path: Path
) -> None:
    """Headers the gguf library writes with tokenizer keys of another type (were TypeErrors, or
    a BOS counted for the string 'yes')."""
    import gguf

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    good = {"model": "gpt2", "pre": "default", "tokens": ["a", "b", "ab"], "merges": ["a b"], "token_type": [1, 1, 1]}
    for key, value in {**good, **values}.items():
        name = f"tokenizer.ggml.{key}"
        if isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, str):
            writer.add_string(name, value)
        else:
            writer.add_uint32(name, value)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    text = tmp_path / "t.txt"
    text.write_text("ab ba")
    result = niah("tokenize", "--tokenizer", f"gguf:{path}", str(text))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith(f"niah: error: gguf:{path}: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
