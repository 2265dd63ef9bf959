"""niah's memory formula against llama.cpp's own arithmetic (llama-fit-params, and a real server's
log): full attention (SmolLM2), hybrid recurrent + attention (the qwen35 test bed) and sliding
window (Gemma 3 270M), at f16 and q8_0/q4_0 KV, one and two slots."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need

from niah.cli import main
from niah.errors import NiahError
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.memory import (
    DEFAULT_CACHE_RAM_MIB,
    MIB,
    cache_ram_mib,
    find_fit_params,
    fit_params,
    fit_params_args,
    parse_fit_params,
    per_slot_context,
)
from niah.launch.profiles import parse_profile, plan_launch
from niah.launch.server import find_server_binary

QUANTIZED = 'cache_type_k = "q8_0"\ncache_type_v = "q4_0"\nflash_attn = "on"\n'


@pytest.fixture(scope="module")
def fit_tool() -> Path:
    def find() -> Path:
        tool = find_fit_params(find_server_binary())
        if tool is None:
            raise NiahError("no llama-fit-params beside llama-server (bash scripts/setup.sh)")
        return tool

    return need(find)


def models(request: pytest.FixtureRequest, name: str) -> Path:
    fixture = {"smollm2": "tiny_model", "qwen35": "qwen35_testbed", "gemma3": "gemma3"}[name]
    return Path(request.getfixturevalue(fixture))


@pytest.mark.server
@pytest.mark.parametrize("model", ["smollm2", "qwen35", "gemma3"])
@pytest.mark.parametrize(
    ("context", "options"),
    [(4064, ""), (4064, QUANTIZED), (5000, "parallel = 2\n"), (1000, "parallel = 3\n"),
     (3000, "parallel = 2\nkv_unified = true\n"),
     (3000, "parallel = 2\nkv_unified = true\nswa_full = false\n")],
)
def test_formula_agrees_with_llama_fit_params(
    request: pytest.FixtureRequest, fit_tool: Path, model: str, context: int, options: str
) -> None:
    path = models(request, model)
    facts = read_gguf_facts(path)
    profile = parse_profile(f"context = {context}\n{options}", "check")
    plan = plan_launch(profile, facts)
    assert plan.memory is not None and plan.memory.source == "formula"
    projected = fit_params(fit_tool, path, plan.args)
    assert projected.source == "llama-fit-params"
    expected = plan.memory
    if profile.kv_unified and facts.swa_layers and "--swa-full" not in plan.args:
        # llama-fit-params refuses --kv-unified, so it sizes one window cache per slot instead of
        # one shared window of n_swa × slots: compare with the launch it was actually given.
        given = plan_launch(parse_profile(f"context = {context // 2}\nparallel = 2\nswa_full = false\n", "given"), facts).memory
        assert given is not None and given.kv_bytes != expected.kv_bytes
        expected = given
    assert projected.kv_bytes == pytest.approx(expected.kv_bytes, rel=0.01)
    assert projected.recurrent_bytes == pytest.approx(expected.recurrent_bytes, rel=0.01)
    assert (expected.recurrent_bytes > 0) == (model == "qwen35")
    assert projected.kv_cells == expected.kv_cells
    # Compute buffers have no formula: they follow the graph llama.cpp reserves (batch × vocabulary
    # logits, attention scratch), so they are only compared for being there.
    assert projected.compute_bytes and projected.compute_bytes > 0
    assert projected.total_bytes and projected.total_bytes > projected.kv_bytes + projected.compute_bytes


def test_per_slot_rounding_is_llama_cpps() -> None:
    """-c is padded up to 256, each slot's share of it is padded up to 256 again, and the cache holds
    that many cells per slot (llama_context's constructor; its log calls it "rounding down")."""
    # native-131k with 3 slots: -c 3 × 131,104 = 393,312 → 393,472 → 131,157 per slot → 131,328
    assert per_slot_context(393_312, 3, kv_unified=False) == 131_328
    assert per_slot_context(393_312, 3, kv_unified=True) == 393_472
    profile = parse_profile("context = 131072\nnative_context = 262144\nparallel = 3\nrope_scaling = \"none\"", "n3")
    plan = plan_launch(profile, None, arch="qwen35")
    assert plan.predicted_slot_context == 131_328
    assert plan.memory is not None and plan.memory.kv_cells == 3 * 131_328


@pytest.mark.server
def test_per_slot_context_is_what_the_server_serves(start_llama_server: Callable[..., object], tiny_model: Path) -> None:
    # 3 slots of 1,000 + 32: -c 3,096 → 3,328 → 1,109 per slot, padded up to 1,280 (not down to 1,109)
    plan = plan_launch(parse_profile("context = 1000\nparallel = 3\n", "three"), read_gguf_facts(tiny_model))
    live = start_llama_server(*plan.args, model_path=tiny_model)
    props = live.session.props()  # type: ignore[attr-defined]
    assert props["default_generation_settings"]["n_ctx"] == plan.predicted_slot_context == 1280
    assert props["total_slots"] == 3


def test_the_host_prompt_cache_is_in_the_estimate() -> None:
    """llama-server keeps saved slot states in host memory up to --cache-ram (8,192 MiB unless told):
    in the estimate beside the checkpoints, not in the device total; 0 turns it off; -1 has no limit
    but the prompt cache's token limit (n_ctx), about one more copy of the state."""
    def memory(extra: str = ""):  # type: ignore[no-untyped-def]
        profile = parse_profile(f"context = 131072\nnative_context = 262144\n{extra}", "m")
        estimate = plan_launch(profile, None, arch="qwen35").memory
        assert estimate is not None
        return estimate

    default = memory()
    assert default.prompt_cache_bytes == DEFAULT_CACHE_RAM_MIB * MIB == 8192 * MIB
    assert any(line.startswith("prompt cache:  up to 8.6 GB (8.0 GiB) of host memory") for line in default.lines())
    assert default.total_bytes is None or default.total_bytes < default.kv_bytes + default.prompt_cache_bytes
    assert memory('extra_args = ["--cache-ram", "2048"]').prompt_cache_bytes == 2048 * MIB
    off = memory('extra_args = ["-cram", "0"]')
    assert off.prompt_cache_bytes == 0 and not any("prompt cache" in line for line in off.lines())
    unlimited = memory('extra_args = ["--cache-ram", "-1"]')
    assert unlimited.prompt_cache_bytes == unlimited.kv_bytes + unlimited.recurrent_bytes + unlimited.checkpoint_bytes
    assert cache_ram_mib(["-c", "8", "--cache-ram", "-1"]) == -1


@pytest.mark.server
def test_the_prompt_cache_default_is_this_builds() -> None:
    done = subprocess.run([str(find_server_binary()), "--help"], capture_output=True, text=True, timeout=60, check=True)
    help_text = done.stdout + done.stderr
    match = re.search(r"--cache-ram N\s+set the maximum cache size in MiB \(default: (-?\d+)", help_text)
    assert match, "llama-server --help no longer describes --cache-ram"
    assert int(match.group(1)) == DEFAULT_CACHE_RAM_MIB


def test_gemma3_window_cache_is_llama_cpps_count(gemma3: Path) -> None:
    # DESIGN.md: 8192 cells × 3 global layers + 1024 cells × 15 window layers = 39 MiB at f16.
    plan = plan_launch(parse_profile("context = 8160\nswa_full = false", "g"), read_gguf_facts(gemma3))
    assert plan.memory is not None and "--swa-full" not in plan.args
    assert plan.memory.kv_bytes == (8192 * 3 + 1024 * 15) * 2 * (256 * 2) * 1  # 1 KV head of 256, K+V f16
    assert plan.memory.kv_bytes == 39 * MIB


def test_gemma3_gets_swa_full_by_default_and_its_memory_counts_it(gemma3: Path) -> None:
    """--swa-full (what makes prefix reuse possible on a sliding-window model) keeps all 18 layers
    at full size: 144 MiB instead of 39, in the estimate too."""
    plan = plan_launch(parse_profile("context = 8160", "g"), read_gguf_facts(gemma3))
    assert plan.memory is not None and "--swa-full" in plan.args
    assert plan.memory.kv_bytes == 8192 * 18 * 2 * (256 * 2) == 144 * MIB


def test_server_only_flags_are_dropped() -> None:
    args = ["-c", "8", "--jinja", "--kv-unified", "--spec-type", "draft-mtp", "--spec-draft-n-max", "3", "-fa", "on"]
    assert fit_params_args(args) == ["-c", "8", "-fa", "on"]


def test_parse_a_device_view() -> None:
    log = (
        "llama_kv_cache: size = 1024.00 MiB ( 8192 cells, 24 layers, 1/1 seqs), K (f16): 512.00 MiB\n"
        "llama_memory_recurrent: size =   75.38 MiB (     1 cells,  72 layers,  1 seqs  0 rs_seq)\n"
        "sched_reserve:      CUDA0 compute buffer size =   500.50 MiB\n"
        "sched_reserve:  CUDA_Host compute buffer size =    20.00 MiB\n"
        "common_memory_breakdown_print: |   - CUDA0 (H200)  | 143000 = 120000 + (21000 = 19400 + 1099 + 500) + 1000 |\n"
        "common_memory_breakdown_print: |   - Host          |                      1000 =   980 +    0 +  20   |\n"
        "common_params_fit_impl: projected to use 21000 MiB of device memory vs. 120000 MiB of free device memory\n"
    )
    memory = parse_fit_params(log)
    assert memory.kv_bytes == 1024 * MIB and memory.recurrent_bytes == round(75.38 * MIB)
    assert memory.compute_bytes == round(520.5 * MIB)
    assert [d.name for d in memory.devices] == ["CUDA0 (H200)", "Host"]
    assert memory.devices[0].total_mib == 143000 and memory.devices[0].free_mib == 120000
    assert memory.weights_bytes == (19400 + 980) * MIB and memory.total_bytes == 21000 * MIB
    with pytest.raises(ValueError):
        parse_fit_params("nothing here\n")


@pytest.mark.server
def test_mtp_snapshots_match_the_server(
    start_llama_server: Callable[..., object], qwen35_testbed: Path
) -> None:
    # llama-fit-params refuses --spec-type, so what MTP drafting adds (a recurrent rollback
    # snapshot per drafted token, and the draft context's KV cache for the MTP block) is checked
    # against a real server's own log instead.
    profile = parse_profile("context = 4064\nmtp_draft_n_max = 3\n", "mtp")
    plan = plan_launch(profile, read_gguf_facts(qwen35_testbed))
    assert plan.memory is not None
    live = start_llama_server(*plan.args, "-lv", "4", model_path=qwen35_testbed)
    log = Path(live.log_path).read_text()  # type: ignore[attr-defined]
    recurrent = re.findall(r"llama_memory_recurrent: size =\s*([\d.]+) MiB", log)
    kv = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", log)
    assert recurrent and len(kv) == 2, "the server log lacks the state sizes (target KV, MTP KV)"
    assert float(recurrent[0]) * MIB == pytest.approx(plan.memory.recurrent_bytes, rel=0.01)
    assert sum(map(float, kv)) * MIB == pytest.approx(plan.memory.kv_bytes, rel=0.01)
    plain = plan_launch(parse_profile("context = 4064\n", "plain"), read_gguf_facts(qwen35_testbed)).memory
    assert plain is not None and plan.memory.recurrent_bytes == 4 * plain.recurrent_bytes


@pytest.mark.server
def test_profile_show_reports_llama_cpps_projection(
    fit_tool: Path, qwen35_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "bed.toml"
    profile.write_text("context = 4064\n" + QUANTIZED)
    assert main(["profile", "show", str(profile), "--model", str(qwen35_testbed), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    memory, formula = data["memory"], data["memory_formula"]
    assert memory["source"] == "llama-fit-params" and formula["source"] == "formula"
    assert set(memory) >= {"kv_bytes", "recurrent_bytes", "compute_bytes", "weights_bytes", "total_bytes"}
    assert memory["devices"] and memory["devices"][0]["name"] == "Host"
    assert formula["recurrent_bytes"] > 0
    assert memory["recurrent_bytes"] == pytest.approx(formula["recurrent_bytes"], rel=0.01)
    assert main(["profile", "show", str(profile), "--model", str(qwen35_testbed)]) == 0
    text = capsys.readouterr().out
    assert "source:        llama-fit-params" in text and "projected to use" in text


def test_profile_show_without_a_model_uses_the_formula(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "yarn-1m", "--native-context", "262144", "--arch", "qwen35", "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert memory["source"] == "formula" and memory["compute_bytes"] is None
    # 72 Gated DeltaNet layers × (3 × (4096 + 2·16·128) + 128 × 4096) f32 values, one slot
    assert memory["recurrent_bytes"] == 72 * (3 * (4096 + 4096) + 128 * 4096) * 4
    assert 40e9 < memory["kv_bytes"] < 41e9
