"""`niah demo`: the miniature keeps the seed's factors, and every row fits its launch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from niah.cells import ANSWER_BUDGET
from niah.cli.demo import ALL_DEPTHS, DEMO_ROWS
from niah.launch.profiles import load_profile, plan_launch
from niah.prompts.corpus import get_corpus

SMOLLM2_NATIVE = 8192
REPO = Path(__file__).resolve().parents[1]


def test_rows_use_the_seeds_factors_and_fit_their_context() -> None:
    factors = []
    for length, profile_name, depths in DEMO_ROWS:
        profile = load_profile(profile_name)
        assert length <= profile.context  # a launch tests prompts up to its profile's context
        plan = plan_launch(profile, None, arch="llama")
        assert plan.predicted_slot_context is not None and plan.predicted_slot_context >= length + ANSWER_BUDGET
        assert set(depths) <= set(ALL_DEPTHS)
        factors.append(profile.factor_label(SMOLLM2_NATIVE))
    assert factors == ["native", "native", "1.5x YaRN", "2x YaRN", "3.85x YaRN"]


def test_demo_resumes_the_published_run_and_names_the_rows_it_skipped(tmp_path: Path, tiny_model: Path) -> None:
    """Every default cell is already in reports/demo/results.jsonl, so no server starts and the grid is re-rendered."""
    lines = (REPO / "reports" / "demo" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    header, builtin = json.loads(lines[0]), get_corpus("builtin")
    command = [sys.executable, "-m", "niah", "demo", "--out", str(tmp_path), "--no-progress", "--server-bin", "/nonexistent"]
    if header["fingerprint"]["corpus_sha256"] != builtin.sha256:
        # measured on an earlier built-in corpus: resuming it is refused, naming the corpus ...
        shutil.copy(REPO / "reports" / "demo" / "results.jsonl", tmp_path / "results.jsonl")
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "corpus_sha256" in result.stderr, result.stderr
        # ... and the cells resume once the header names today's corpus
        header["fingerprint"].update(corpus_sha256=builtin.sha256, corpus_about=builtin.about)
        lines[0] = json.dumps(header)
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    # the default grid's own cells decide: FAILs among them (the published --full rows' TRUNCATED cells
    # are not in this grid)
    assert result.returncode == 1, result.stderr
    assert "starting llama-server" not in result.stdout + result.stderr
    published = (REPO / "reports" / "demo" / "grid.md").read_text(encoding="utf-8")
    assert result.stdout.startswith(published.rstrip("\n"))
    assert "not run by default: 31,508 (tiny-yarn-32k)" in result.stdout
