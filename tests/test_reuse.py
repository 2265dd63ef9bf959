"""Prefix reuse on every architecture we have, against real llama-servers: the server's cache_n
against what niah expected it could reuse, the warning when it reuses less, and the primers that
give a hybrid model its checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from niah.gguf_meta import read_gguf_facts
from niah.memory import MIB
from niah.profiles import parse_profile, plan_launch
from niah.runner import RunConfig, run

pytestmark = pytest.mark.server


def managed_run(model: Path, tmp_path: Path, profile_toml: str, length: int = 1024) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "profile.toml"
    profile.write_text(profile_toml)
    summary = run(RunConfig(
        grid=((length, (0.0, 50.0, 100.0)),), out_dir=tmp_path / "run", model=model,
        profiles=((length, str(profile)),), show_progress=False,
    ))
    lines = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    return [r for r in lines if r.get("record") == "cell"]


def reused_as_expected(records: list[dict]) -> bool:
    """Every cell that could reuse a real share of its prompt (D=100 after D=50: half the haystack)
    reused it, give or take a few tokens at the boundary."""
    shared = [r for r in records if r["cache_expected"] > 300]
    return bool(shared) and all(abs(r["cache_n"] - r["cache_expected"]) <= 8 for r in shared)


def test_hybrid_model_reuses_through_the_primed_checkpoints(
    qwen35_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = managed_run(qwen35_testbed, tmp_path, 'context = 2048\nextra_args = ["-lv", "4"]\n')
    assert [r["prompt_tokens_served"] for r in records] == [1024] * 3
    assert reused_as_expected(records), records
    assert all(r["prime_n"] and r["prime_n"] > 0 for r in records)
    assert "reused" not in capsys.readouterr().out  # no shortfall warning
    log = "\n".join(p.read_text() for p in (tmp_path / "run" / "logs").glob("*.log"))
    assert log.count("restored context checkpoint") >= 2
    # each checkpoint holds one slot's recurrent state, as the estimate's checkpoint memory assumes
    sizes = {float(m) for m in re.findall(r"created context checkpoint .* size = ([\d.]+) MiB", log)}
    memory = plan_launch(parse_profile("context = 2048", "p"), read_gguf_facts(qwen35_testbed)).memory
    assert memory is not None and sizes
    assert all(size == pytest.approx(memory.checkpoint_bytes / 32 / MIB, abs=0.01) for size in sizes)


def test_sliding_window_model_reuses_with_swa_full_and_says_why_without(
    gemma3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_full = managed_run(gemma3, tmp_path / "swa-full", "context = 2048\n")
    assert reused_as_expected(with_full), with_full
    assert "reused" not in capsys.readouterr().out
    without = managed_run(gemma3, tmp_path / "window-only", "context = 2048\nswa_full = false\n")
    assert without[-1]["cache_expected"] > 300 and (without[-1]["cache_n"] or 0) < 10, without
    out = capsys.readouterr().out
    assert "niah: llama-server reused" in out and "launch llama-server with --swa-full" in out
    assert out.count("niah: llama-server reused") == 1  # said once, not per cell
