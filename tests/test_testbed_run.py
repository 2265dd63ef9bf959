"""The target path on the qwen35 test bed, through the CLI and a real llama-server: exact server
counts with the offline qwen3.6 tokenizer (thinking off and on), the header's facts in
`profile show`, YaRN launches serving niah's float32 prediction, and CLAMPED without YaRN.
Random weights answer nonsense: FAIL and TRUNCATED are expected; the machinery is what is checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, render_gguf_template

from niah.cli import main
from niah.prompts.corpus import get_corpus
from niah.prompts.haystack import build
from niah.prompts.needles import make_needle
from niah.prompts.tokenizers import get_tokenizer

NOT_SENT_OR_BROKEN = {"CLAMPED", "CONTEXT_ERROR", "TOKEN_MISMATCH", "CRASH", "HTTP_ERROR", "TIMEOUT"}


class HeaderTemplate:
    """The test bed's own chat template, rendered offline (a ChatTemplate for haystack.build)."""

    def __init__(self, model: Path, thinking: bool) -> None:
        self.name = f"header:{model}"
        self.model, self.thinking = model, thinking

    def render(self, messages: list[dict[str, str]]) -> str:
        return render_gguf_template(self.model, messages, enable_thinking=self.thinking)


def cells(out: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [r for r in records if r["record"] == "cell"]


def run(url: str, out: Path, *extra: str) -> int:
    return main(["run", "--url", url, "--out", str(out), "--answer-budget", "8", "--no-progress", *extra])


@pytest.mark.server
@pytest.mark.parametrize("thinking", ["off", "on"])
def test_auto_tokenizer_counts_exactly_on_qwen35(
    qwen35_server: LiveServer, tmp_path: Path, thinking: str
) -> None:
    out = tmp_path / "run"
    code = run(qwen35_server.url, out, "--lengths", "500,1000", "--depths", "0,100", "--thinking", thinking)
    assert code in (1, 4)  # FAIL / TRUNCATED: random weights
    records = cells(out)
    assert len(records) == 4
    qwen = get_tokenizer("qwen3.6")
    template = HeaderTemplate(qwen35_server.model, thinking == "on")
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:
        for record in records:
            assert record["outcome"] not in NOT_SENT_OR_BROKEN, record
            assert record["prompt_tokens_served"] == record["length"]
            # The same cell built offline with qwen3.6 alone: the server counts exactly L for it,
            # and its needle sits where the run's did (the run needed no server-tokenizer rebuild).
            length, depth = int(record["length"]), float(record["depth"])  # type: ignore[call-overload]
            prompt = build(length, depth, qwen, get_corpus("builtin"), make_needle(0, length, depth, 0), template)
            served = client.post(
                f"{qwen35_server.url}/tokenize",
                json={"content": prompt.text, "parse_special": True, "add_special": True},
            ).json()["tokens"]
            assert len(served) == length
            assert prompt.needle_token_offset == record["needle_offset"]


@pytest.mark.server
def test_qwen_and_server_tokenizers_agree(qwen35_server: LiveServer, tmp_path: Path) -> None:
    found = {}
    for spec in ("qwen3.6", f"server:{qwen35_server.url}"):
        out = tmp_path / spec.replace(":", "_").replace("/", "_")
        assert run(qwen35_server.url, out, "--lengths", "1200", "--depths", "50", "--tokenizer", spec) in (1, 4)
        (record,) = cells(out)
        found[spec] = {k: record[k] for k in ("prompt_tokens_served", "needle_offset", "depth_actual")}
    first, second = found.values()
    assert first == second and first["prompt_tokens_served"] == 1200


def test_profile_show_reads_the_testbed_header(
    qwen35_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "native.toml"
    profile.write_text("context = 4064\n")  # + the 32-token answer budget = the native 4,096
    assert main(["profile", "show", str(profile), "--model", str(qwen35_testbed), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["arch"] == "qwen35" and data["native_context"] == 4096
    formula = data["memory_formula"]
    assert "2 attention layers of 9 × 4 KV heads × K 256 + V 256" in formula["shape"]
    assert "6 recurrent layers of 68,608 state values, full attention every 4" in formula["shape"]
    assert "assumed" not in formula["shape"]
    # 6 Gated DeltaNet layers × (3 × (512 + 2·2·128) + 128 × 512) f32 values, one slot
    assert formula["recurrent_bytes"] == 6 * (3 * 1024 + 128 * 512) * 4
    assert formula["kv_cells"] == 4096
    assert formula["kv_bytes"] == 2 * 4096 * 2 * (4 * 256) * 2


@pytest.mark.server
@pytest.mark.parametrize(
    ("options", "verdict"),
    [("", "OK"), ('rope_scale = "1.0985"\n', "CLAMPED"), ('rope_scaling = "none"\n', "CLAMPED")],
)
def test_yarn_launch_serves_the_prediction(
    qwen35_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str, verdict: str
) -> None:
    profile = tmp_path / "bed.toml"
    profile.write_text(f"context = 4468\n{options}")  # + the 32-token answer = 4,500 per slot
    assert main(["profile", "show", str(profile), "--model", str(qwen35_testbed), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)["predicted_slot_context"]
    # 1.0985 × 4096 = 4499.456: float32 truncation leaves the slot one token short of 4500
    assert predicted == {"OK": 4500, "CLAMPED": 4499 if "1.0985" in options else 4096}[verdict]
    code = main(["launch", str(profile), "--model", str(qwen35_testbed), "--log", str(tmp_path / "server.log")])
    out = capsys.readouterr().out
    assert (code == 0) == (verdict == "OK") and f"preflight {verdict}" in out
    served = re.search(r"per-slot context ([\d,]+)", out)
    assert served and int(served.group(1).replace(",", "")) == predicted


@pytest.mark.server
def test_run_without_yarn_is_clamped(qwen35_testbed: Path, tmp_path: Path) -> None:
    profile = tmp_path / "none.toml"
    profile.write_text('context = 4500\nrope_scaling = "none"\n')
    out = tmp_path / "run"
    args = ["run", "--model", str(qwen35_testbed), "--profile", str(profile), "--lengths", "4400",
            "--depths", "50", "--answer-budget", "8", "--out", str(out), "--no-progress"]
    assert main(args) == 3
    (record,) = cells(out)
    assert record["outcome"] == "CLAMPED" and record["server_n_ctx"] == 4096
