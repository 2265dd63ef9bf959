"""Prefix reuse on every architecture we have, against real llama-servers: the server's cache_n
against what niah expected it could reuse, the warning when it reuses less, and the primers that
give a hybrid model its checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest

from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.memory import MIB
from niah.launch.profiles import parse_profile, plan_launch
from niah.run.runner import RunConfig, run

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
    # a primed cell takes what the previous cell left in its primer; its chat then reuses its own primer
    reused = [r["prime_cache_n"] if r.get("prime_n") else r["cache_n"] for r in shared]
    return bool(shared) and all(abs(n - r["cache_expected"]) <= 8 for n, r in zip(reused, shared))


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


def url_run(url: str, out: Path, **config: object) -> list[dict]:
    summary = run(RunConfig(grid=((1024, (0.0, 50.0, 100.0)),), out_dir=out, url=url, show_progress=False, **config))
    lines = [json.loads(line) for line in summary.results_path.read_text().splitlines()]
    return [r for r in lines if r.get("record") == "cell"]


def test_url_hybrid_whose_gguf_is_not_readable_is_primed_from_what_it_says(
    qwen35_testbed: Path, start_llama_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A remote server: its /props model_path names a file niah cannot read. Without --model or
    --arch niah asks the server (a reuse probe), finds it cannot roll back, and primes."""
    copy = tmp_path / "elsewhere.gguf"
    shutil.copy(qwen35_testbed, copy)
    live = start_llama_server("-c", "4096", "--parallel", "1", model_path=copy)
    copy.unlink()  # the server keeps it mapped; niah cannot read it any more
    records = url_run(live.url, tmp_path / "probed")
    out = capsys.readouterr().out
    assert "recurrent model (from a reuse probe of the server: 0 of 256 shared tokens reused)" in out, out
    assert "niah primes a checkpoint at each needle" in out
    assert all(r["prime_n"] and r["prime_ms"] > 0 for r in records)
    assert reused_as_expected(records), records
    assert {r["factor"] for r in records} == {"unknown"}  # no native context known: not "native"
    assert "reused" not in out.replace("shared tokens reused", "")  # no shortfall warning
    records = url_run(live.url, tmp_path / "by-arch", arch="qwen35")
    assert "recurrent model (from --arch qwen35)" in capsys.readouterr().out
    assert all(r["prime_n"] for r in records)
    records = url_run(live.url, tmp_path / "by-model", model=qwen35_testbed)
    out = capsys.readouterr().out
    assert f"native context 4,096 (from --model {qwen35_testbed})" in out
    assert {r["factor"] for r in records} == {"native"}


def test_full_attention_url_server_probed_needs_no_primer(
    start_llama_server, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "smol.gguf"
    shutil.copy(tiny_model, copy)
    live = start_llama_server("-c", "8192", "--parallel", "1", model_path=copy)
    copy.unlink()
    records = url_run(live.url, tmp_path / "run")
    assert "full attention model (from a reuse probe of the server: 256 of 256" in capsys.readouterr().out
    assert not any(r["prime_n"] for r in records) and reused_as_expected(records)


def test_a_primer_longer_than_the_json_timeout_completes(
    qwen35_testbed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Primers stream under the stall timeout like the chat; the JSON timeout (lowered here to 3 s,
    like 120 s against a 1M prefix) does not bound them. The server is frozen for twice the JSON
    timeout as the longest primer is sent, so the primer outlasts it however fast this machine is."""
    import niah.run.runner
    from niah.launch.session import ServerSession

    json_timeout_s = 3.0
    original = niah.run.runner.server_options
    monkeypatch.setattr(niah.run.runner, "server_options", lambda config: {**original(config), "request_timeout_s": json_timeout_s})
    prime, frozen = ServerSession.prime, []

    def prime_frozen(session: ServerSession, tokens: list[int], *args: object) -> object:
        if len(tokens) > 1500 and not frozen:
            server = session.process.process  # type: ignore[union-attr]
            server.send_signal(signal.SIGSTOP)
            frozen.append(threading.Timer(2 * json_timeout_s, server.send_signal, (signal.SIGCONT,)))
            frozen[0].start()
        return prime(session, tokens, *args)

    monkeypatch.setattr(ServerSession, "prime", prime_frozen)
    records = managed_run(qwen35_testbed, tmp_path, "context = 4064\n", length=4064)
    # answered (the random test bed rambles: FAIL or TRUNCATED), not TIMEOUT or unreachable
    assert len(records) == 3 and all(r["outcome"] in ("PASS", "FAIL", "TRUNCATED") for r in records), [
        (r["outcome"], r["error"]) for r in records
    ]
    assert frozen
    # the previous cell's leftovers, not the cell's own primer, are what it could reuse
    assert records[0]["cache_expected"] == 0
