"""YaRN read-back and the rope verdict against real llama.cpp: llama-fit-params on the launch's flags
(and a real server's log at -lv 4), each misconfiguration named with its fix, GGUF copies that carry
their own rope-scaling keys, and the seed's flags at 1,010,000."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import LiveServer, need

from niah.cli import main
from niah.errors import EXIT_ROPE_MISMATCH, NiahError
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.memory import find_fit_params
from niah.launch.profiles import load_profile, parse_profile, plan_launch
from niah.launch.rope_check import ROPE_MISMATCH, RopeVerdict, check_server_rope, verify_launch
from niah.launch.server import find_server_binary
from niah.testbed.rope import write_rope_copy


def fit_params_tool() -> Path:
    tool = find_fit_params(find_server_binary())
    if tool is None:
        raise NiahError("no llama-fit-params beside llama-server (bash scripts/setup.sh)")
    return tool


@pytest.fixture(scope="module")
def fit_tool() -> Path:
    return need(fit_params_tool)


@pytest.fixture(scope="module")
def smol_yarn(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 whose header stretches itself: YaRN ×2 over 8,192, context_length 16,384."""
    return write_rope_copy(tiny_model, tmp_path_factory.mktemp("rope") / "smol-yarn2.gguf", "yarn", 2.0, 8192, 16384)


@pytest.fixture(scope="module")
def smol_like_1m(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "-1M"-style header: YaRN ×4 over 8,192 and a context_length of 32,768."""
    return write_rope_copy(tiny_model, tmp_path_factory.mktemp("rope") / "smol-yarn4.gguf", "yarn", 4.0, 8192, 32768)


def flags_verdict(model: Path, flags: str, needed: int) -> RopeVerdict:
    """The verdict `niah check` gives for a server started with `flags` on `model`."""
    return check_server_rope(read_gguf_facts(model), model, shlex.split(flags), None, needed)


def profile_verdict(model: Path, profile_text: str, name: str = "p") -> RopeVerdict:
    facts = read_gguf_facts(model)
    plan = plan_launch(parse_profile(profile_text, name), facts)
    assert plan.intent is not None
    return verify_launch(plan.intent, model, plan.args, facts)


@pytest.mark.server
def test_a_tiny_yarn_profile_reads_back_as_meant(fit_tool: Path, tiny_model: Path) -> None:
    facts = read_gguf_facts(tiny_model)
    plan = plan_launch(load_profile("tiny-yarn-16k"), facts)
    assert plan.intent is not None
    verdict = verify_launch(plan.intent, tiny_model, plan.args, facts)
    back = verdict.readback
    assert verdict.verdict == "OK" and not verdict.problems
    assert (back.scaling_type, back.freq_scale, back.n_ctx_orig_yarn) == ("yarn", 0.5, 8192)
    assert back.readjusted and back.n_ctx_train == 16384 and back.served == 16384
    assert back.source == "llama-fit-params" and back.build and "freq_scale" in " ".join(back.lines)
    # this build re-adjusts n_ctx_train itself: the --override-kv niah keeps emitting is redundant here
    assert any("--override-kv …context_length is redundant here" in note for note in verdict.notes)


@pytest.mark.server
@pytest.mark.parametrize(
    ("flags", "needed", "problem", "fix"),
    [
        # the case: --override-kv raises the header's context, and YaRN's original context with it
        ("-c 16384 --override-kv llama.context_length=int:16384 --rope-scaling yarn --rope-scale 2", 16384,
         "ORIG_CTX", "YaRN's original context is 16,384, not the model's native 8,192; fix: add --yarn-orig-ctx 8192"),
        # a later --rope-freq-scale replaces --rope-scale's stretch
        ("-c 16384 --rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 8192 --rope-freq-scale 0.25", 16384,
         "FREQ_SCALE", "freq_scale 0.25 is not 1/2 = 0.5: llama.cpp stretches ×4, not ×2; fix: --rope-scale 2"),
        # --rope-scale alone scales linearly (the file's type)
        ("-c 16384 --rope-scale 2 --yarn-orig-ctx 8192", 16384, "NOT_YARN",
         "llama.cpp scales with linear, not YaRN; fix: add --rope-scaling yarn"),
        # served past native with no stretch at all
        ("-c 16384 --override-kv llama.context_length=int:16384", 16384, "BEYOND_STRETCH",
         "fix: --rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 8192, or -c 8192"),
        ("-c 4096 --rope-scaling yarn --rope-scale 0.5 --yarn-orig-ctx 8192", 4096, "SCALE_BELOW_1",
         "freq_scale 2 squeezes positions ×2 (rope scale 0.5, below 1); fix: drop --rope-scale"),
    ],
)
def test_each_misconfiguration_is_named_with_its_fix(
    fit_tool: Path, tiny_model: Path, flags: str, needed: int, problem: str, fix: str
) -> None:
    verdict = flags_verdict(tiny_model, flags, needed)
    assert verdict.verdict == ROPE_MISMATCH
    assert [p.name for p in verdict.problems] == [problem]
    assert fix in verdict.problems[0].message and "\n" not in verdict.problems[0].message


@pytest.mark.server
def test_a_profile_whose_extra_flags_undo_its_stretch_is_refused_before_the_server_starts(
    fit_tool: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = 'context = 16352\nnative_context = 8192\nextra_args = ["--rope-scaling", "linear"]\n'
    verdict = profile_verdict(tiny_model, text)
    assert [p.name for p in verdict.problems] == ["NOT_YARN"]
    profile = tmp_path / "undone.toml"
    profile.write_text(text)
    assert main(["launch", str(profile), "--model", str(tiny_model), "--log-dir", str(tmp_path)]) == EXIT_ROPE_MISMATCH
    captured = capsys.readouterr()
    assert "starting llama-server" not in captured.out and not list(tmp_path.glob("*.log"))
    assert captured.err.startswith("niah: error: undone: ROPE_MISMATCH NOT_YARN:") and captured.err.count("\n") == 1


@pytest.mark.server
def test_a_file_that_stretches_itself_is_launched_native_only_with_its_stretch_off(
    fit_tool: Path, smol_yarn: Path
) -> None:
    facts = read_gguf_facts(smol_yarn)
    assert facts.native_context == 8192 and facts.file_rope is not None
    plan = plan_launch(load_profile("tiny-native-8k"), facts)
    assert plan.args[-2:] == ("--rope-scaling", "none") and plan.intent is not None
    assert load_profile("tiny-native-8k").factor_label(facts.native_context) == "native"
    verdict = verify_launch(plan.intent, smol_yarn, plan.args, facts)
    assert verdict.verdict == "OK" and verdict.readback.freq_scale == 1.0
    assert verdict.notes == ("the flags replace the file's own YaRN ×2 over 8,192: llama.cpp uses the flags (none ×1), as meant",)
    # the launch niah made before: no rope flag, so the file's own YaRN applies under a "native" label
    before = verify_launch(plan.intent, smol_yarn, plan.args[:-2], facts)
    assert [p.name for p in before.problems] == ["FILE_ROPE"]
    assert before.problems[0].message.endswith("fix: add --rope-scaling none")
    assert "the file's own YaRN ×2 over 8,192 applies (freq_scale 0.5)" in before.problems[0].message


@pytest.mark.server
def test_flags_that_replace_the_files_own_stretch_say_which_wins(fit_tool: Path, smol_yarn: Path) -> None:
    verdict = profile_verdict(smol_yarn, "context = 31508\nnative_context = 8192\n", "x385")
    assert verdict.verdict == "OK" and verdict.readback.n_ctx_orig_yarn == 8192
    assert verdict.notes[0] == ("the flags replace the file's own YaRN ×2 over 8,192: llama.cpp uses the flags "
                                "(yarn ×3.85 over 8,192), as meant")
    # the server's own flags (niah check): the file's stretch is what no flag replaces
    assert flags_verdict(smol_yarn, "-c 16384", 16384).verdict == "OK"
    # --rope-scale alone keeps the file's type (YaRN) and its original context, though the header's
    # context_length is overridden: llama.cpp reads the original context from the file's own key
    alone = flags_verdict(smol_yarn, "-c 24576 --override-kv llama.context_length=int:24576 --rope-scale 3", 24576)
    assert alone.verdict == "OK" and alone.readback.n_ctx_orig_yarn == 8192 and alone.readback.scaling_type == "yarn"
    assert alone.notes[0].startswith("the flags replace the file's own YaRN ×2 over 8,192: llama.cpp uses the flags (yarn ×3")


@pytest.mark.server
def test_a_1m_style_header_is_planned_over_its_original_context(fit_tool: Path, smol_like_1m: Path) -> None:
    facts = read_gguf_facts(smol_like_1m)
    assert (facts.context_length, facts.native_context) == (32768, 8192)
    yarn = plan_launch(load_profile("tiny-yarn-32k"), facts)  # made for native 8,192: no longer refused
    assert ("--yarn-orig-ctx", "8192") == yarn.args[yarn.args.index("--yarn-orig-ctx"):][:2]
    assert load_profile("tiny-yarn-32k").factor_label(facts.native_context) == "3.85x YaRN"
    assert yarn.intent is not None and verify_launch(yarn.intent, smol_like_1m, yarn.args, facts).verdict == "OK"
    native = plan_launch(load_profile("tiny-native-8k"), facts)
    assert native.intent is not None and "--rope-scaling" in native.args
    assert verify_launch(native.intent, smol_like_1m, native.args, facts).verdict == "OK"


@pytest.mark.server
def test_the_seeds_flags_read_back_as_intended(fit_tool: Path, rehearsal_model: Path) -> None:
    """The seed's command on a qwen35 model with native 262,144 at 1,010,000: YaRN ×3.85 over 262,144
    as meant; the slot is capped at 1,009,254 (3.85 is short of 1,010,000, which preflight says)."""
    seed = ("-c 1010000 -ctk q8_0 -ctv q4_0 -fa on --override-kv qwen35.context_length=int:1010000 "
            "--rope-scaling yarn --rope-scale 3.85 --yarn-orig-ctx 262144")
    verdict = flags_verdict(rehearsal_model, seed, 1_010_032)
    back = verdict.readback
    assert verdict.verdict == "OK", verdict.lines()
    assert back.scaling_type == "yarn" and back.n_ctx_orig_yarn == 262144
    assert back.freq_scale == pytest.approx(1 / 3.85, rel=1e-5) and back.stretch == pytest.approx(3.85, rel=1e-5)
    assert back.readjusted and back.n_ctx_train == 1_009_254 and back.served == 1_009_254


def test_a_stretch_nobody_asked_for_is_refused(tiny_model: Path) -> None:
    facts = read_gguf_facts(tiny_model)
    with pytest.raises(NiahError, match=r"8,192 \+ 32 answer tokens need a YaRN stretch of 1.004 nobody asked for: "
                                        r"set context = 8160 to stay native, or rope_scaling = \"yarn\"") as info:
        plan_launch(parse_profile("context = 8192\n", "full"), facts)
    assert info.value.exit_code == 2
    on_purpose = plan_launch(parse_profile('context = 8192\nrope_scaling = "yarn"\n', "full"), facts)
    assert on_purpose.rope_scale == "1.004"
    with pytest.raises(NiahError, match="8,160 \\+ 4,096 answer tokens need a YaRN stretch of 1.4961 nobody asked for: set context = 4096"):  # thinking's 4,096 answer tokens
        plan_launch(parse_profile("context = 8160\n", "t"), facts, answer_budget=4096)


def test_a_scale_below_one_is_refused(tiny_model: Path) -> None:
    with pytest.raises(NiahError, match=r"rope scale of 0.504 \(freq_scale 1.984: positions squeezed"):
        plan_launch(parse_profile('context = 4096\nrope_scaling = "yarn"\n', "squeeze"), read_gguf_facts(tiny_model))
    with pytest.raises(NiahError, match=r"131,072 tokens per slot within the native 262,144 gives a rope scale of 0.5 "):
        plan_launch(parse_profile('context = 131040\nrope_scaling = "yarn"\n', "q"), None, 262144, "qwen35")


@pytest.mark.server
def test_niah_check_names_the_missing_yarn_orig_ctx_from_the_flags_and_from_the_log(
    fit_tool: Path, start_llama_server, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = "-c 16384 --override-kv llama.context_length=int:16384 --rope-scaling yarn --rope-scale 2"
    live: LiveServer = start_llama_server(*shlex.split(flags), "-lv", "4")
    args = ["check", "--url", live.url, "--context", "16352", "--model", str(live.model)]
    assert main([*args, "--server-args", f"llama-server -m {live.model} {flags}"]) == EXIT_ROPE_MISMATCH
    out = capsys.readouterr().out
    assert "preflight OK" in out and "rope ROPE_MISMATCH" in out
    assert "ORIG_CTX: YaRN's original context is 16,384, not the model's native 8,192; fix: add --yarn-orig-ctx 8192" in out
    # the server's own log at -lv 4 tells the same, read back from the process that serves
    assert main([*args, "--log", str(live.log_path)]) == EXIT_ROPE_MISMATCH
    out = capsys.readouterr().out
    assert "[server log" in out and "fix: add --yarn-orig-ctx 8192" in out


@pytest.mark.server
def test_niah_launch_prints_the_read_back(fit_tool: Path, tiny_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "tiny-yarn-12k", "--model", str(tiny_model), "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rope OK: meant YaRN ×1.5 over 8,192 (profile tiny-yarn-12k); llama.cpp reads back yarn, freq_scale 0.666667" in out
    assert out.index("rope OK") < out.index("starting llama-server")


@pytest.mark.server
def test_profile_show_json_carries_the_verdict(fit_tool: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "tiny-yarn-32k", "--model", str(tiny_model), "--json"]) == 0
    rope = json.loads(capsys.readouterr().out)["rope"]
    assert rope["verdict"] == "OK" and rope["readback"]["n_ctx_orig_yarn"] == 8192
    assert rope["readback"]["freq_scale"] == pytest.approx(1 / 3.8501, rel=1e-5)


@pytest.mark.server
def test_the_read_back_is_in_the_results_header_and_the_card_and_an_older_run_still_resumes(
    fit_tool: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model), "--profile", "tiny-yarn-12k", "--lengths", "512", "--depths", "50",
            "--out", str(out)]
    assert main(args) in (0, 1)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines()
    header = json.loads(lines[0])
    rope = header["fingerprint"]["rope"]["tiny-yarn-12k"]
    assert rope["verdict"] == "OK" and rope["readback"]["freq_scale"] == pytest.approx(1 / 1.5, rel=1e-5)
    assert rope["readback"]["n_ctx_orig_yarn"] == 8192 and rope["readback"]["readjusted"]
    card = (out / "card.md").read_text()
    assert "Rope read back from llama.cpp (llama-fit-params on each command, before any prefill):" in card
    assert "- `tiny-yarn-12k`: rope OK: `meant YaRN ×1.5 over 8,192 (profile tiny-yarn-12k); llama.cpp reads back yarn" in card
    # a run made before the read-back existed: the same header without `rope` resumes (every cell is
    # done, so no server starts) and gets the read-back as a fact line; nothing before it changes
    del header["fingerprint"]["rope"]
    lines[0] = json.dumps(header)
    results.write_text("\n".join(lines) + "\n")
    assert main(args) in (0, 1)
    after = results.read_text().splitlines()
    assert after[:-1] == lines and json.loads(after[-1])["facts"] == {"rope": {"tiny-yarn-12k": rope}}
    assert "- `tiny-yarn-12k`: rope OK" in (out / "card.md").read_text()
