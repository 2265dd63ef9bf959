"""Launch profiles: flag arithmetic for every shipped profile, memory estimates, TOML errors, CLI."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from niah.cells import ANSWER_BUDGET, THINKING_ANSWER_BUDGET
from niah.cli import main
from niah.errors import NiahError
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.memory import DEFAULT_CTX_CHECKPOINTS, find_fit_params
from niah.launch.preflight import diagnose
from niah.launch.profiles import (
    LaunchProfile,
    _ctx_checkpoints,
    list_profiles,
    load_profile,
    parse_profile,
    plan_launch,
    server_args,
)
from niah.launch.server import find_server_binary
from niah.launch.yarn import choose_rope_scale, factor_label, yarn_n_ctx_train

SHIPPED = {
    "native-131k", "native-262k", "yarn-393k", "yarn-512k", "yarn-1m",
    "tiny-native-8k", "tiny-yarn-12k", "tiny-yarn-16k", "tiny-yarn-32k",
}


def f32_train(native: int, scale: str) -> int:
    """llama-server's recomputed training context, in numpy float32 (independent of niah's own)."""
    freq_scale = np.float32(1.0) / np.float32(float(scale))
    return int(np.float32(native) / freq_scale)


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def arch_for(profile: LaunchProfile) -> str:
    return "llama" if profile.name.startswith("tiny") else "qwen35"


def test_shipped_set() -> None:
    assert {p.name for p in list_profiles()} == SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_flag_arithmetic(name: str) -> None:
    profile = load_profile(name)
    native = profile.native_context
    assert native is not None
    args = server_args(profile, None, arch=arch_for(profile))
    slot = profile.context + ANSWER_BUDGET  # the longest prompt plus its answer
    assert flag(args, "-c") == str(slot * profile.parallel)
    assert flag(args, "--parallel") == str(profile.parallel)
    assert flag(args, "--cache-type-k") == profile.cache_type_k
    assert flag(args, "--cache-type-v") == profile.cache_type_v
    if slot <= native:
        assert "--rope-scale" not in args and "--override-kv" not in args
        return
    scale = flag(args, "--rope-scale")
    assert scale is not None
    assert flag(args, "--rope-scaling") == "yarn"
    assert flag(args, "--yarn-orig-ctx") == str(native)
    assert flag(args, "--override-kv") == f"{arch_for(profile)}.context_length=int:{slot}"
    # llama-server's arithmetic reaches the target; one step (0.0001) less would not.
    assert f32_train(native, scale) >= slot
    smaller = str(Decimal(scale) - Decimal("0.0001"))
    assert f32_train(native, smaller) < slot
    assert Decimal(scale).as_tuple().exponent >= -4


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("budget", [ANSWER_BUDGET, THINKING_ANSWER_BUDGET, 100])
def test_every_shipped_profile_fits_its_longest_prompt_and_answer(name: str, budget: int) -> None:
    """The one rule: a launch serves context + answer budget per slot, by llama-server's own
    arithmetic (float32, padding), unless the profile refuses to scale past native."""
    profile = load_profile(name)
    plan = plan_launch(profile, None, arch=arch_for(profile), answer_budget=budget)
    assert plan.slot_context == profile.context + budget
    native = profile.native_context
    assert native is not None
    served = min(-(-plan.ctx_size // 256) * 256, f32_train(native, plan.rope_scale) if plan.rope_scale else native)
    assert plan.predicted_slot_context == served
    if profile.rope_scaling == "none" and plan.slot_context > native:
        assert served < plan.slot_context  # CLAMPED, said as such (native-262k with thinking on)
    else:
        assert served >= plan.slot_context


def test_native_profiles_fill_the_native_context_exactly() -> None:
    for name, native in (("native-262k", 262144), ("tiny-native-8k", 8192)):
        plan = plan_launch(load_profile(name), None, arch="qwen35")
        assert plan.slot_context == native and plan.rope_scale is None and plan.predicted_slot_context == native


def test_the_seeds_scale_comes_up_short() -> None:
    # The seed launched 1,010,000 tokens with --rope-scale 3.85: each slot is capped 746 short.
    assert f32_train(262144, "3.85") == yarn_n_ctx_train(262144, "3.85") == 1_009_254
    assert choose_rope_scale(1_010_000, 262144) == "3.8529"
    assert yarn_n_ctx_train(262144, "3.8529") == f32_train(262144, "3.8529") >= 1_010_000
    # The CPU analogue, checked on the real server in test_preflight.py.
    assert yarn_n_ctx_train(8192, "3.85") == 31539
    assert choose_rope_scale(31540, 8192) == "3.8501"


def test_exact_factors_need_no_decimals() -> None:
    assert choose_rope_scale(393216, 262144) == "1.5"
    assert choose_rope_scale(524288, 262144) == "2"
    assert choose_rope_scale(12288, 8192) == "1.5"


@pytest.mark.parametrize(
    ("context", "native", "label"),
    [(131072, 262144, "native"), (262144, 262144, "native"), (393216, 262144, "1.5x YaRN"),
     (524288, 262144, "2x YaRN"), (1010000, 262144, "3.85x YaRN"), (31540, 8192, "3.85x YaRN"),
     (12288, 8192, "1.5x YaRN")],
)
def test_factor_label(context: int, native: int, label: str) -> None:
    assert factor_label(context, native) == label


def test_profile_factor_label_uses_its_native_context() -> None:
    assert load_profile("yarn-1m").factor_label() == "3.85x YaRN"
    assert LaunchProfile(name="x", context=16384).factor_label(8192) == "2x YaRN"
    assert LaunchProfile(name="x", context=16384).factor_label() == "unknown"


def test_parallel_slots_multiply_c_unless_unified() -> None:
    split = plan_launch(LaunchProfile(name="p", context=16352, parallel=2, native_context=8192), None, arch="llama")
    assert flag(list(split.args), "-c") == "32768" and split.predicted_slot_context == 16384
    unified = plan_launch(
        LaunchProfile(name="u", context=8160, parallel=4, kv_unified=True, native_context=8192), None, arch="llama"
    )
    assert flag(list(unified.args), "-c") == "8192" and "--kv-unified" in unified.args


def test_explicit_rope_scale_that_falls_short_is_predicted_clamped() -> None:
    plan = plan_launch(LaunchProfile(name="s", context=31508, rope_scale="3.85"), None, 8192, "llama")
    assert plan.predicted_slot_context == 31539
    no_yarn = plan_launch(LaunchProfile(name="n", context=16384, rope_scaling="none"), None, 8192, "llama")
    assert "--rope-scale" not in no_yarn.args and no_yarn.predicted_slot_context == 8192


def test_memory_estimate_of_the_1m_launch() -> None:
    plan = plan_launch(load_profile("yarn-1m"), None, 262144, "qwen35")
    memory = plan.memory
    assert memory is not None
    # q8_0 = 34 bytes per 32 values, q4_0 = 18 per 32; 24 layers × 4 KV heads × 256.
    per_token = 24 * 4 * 256 * (34 / 32) + 24 * 4 * 256 * (18 / 32)
    assert memory.kv_bytes_per_token == per_token == 39936
    assert memory.kv_cells == 1010176  # -c 1,010,032 padded to a multiple of 256
    assert memory.kv_bytes == 39936 * 1010176
    assert 40e9 < memory.kv_bytes < 41e9
    assert memory.weights_bytes is None


def test_memory_estimate_from_the_tiny_gguf(tiny_model: Path) -> None:
    facts = read_gguf_facts(tiny_model)
    plan = plan_launch(load_profile("tiny-yarn-32k"), facts)
    assert plan.memory is not None
    assert plan.memory.kv_bytes_per_token == 30 * 3 * 64 * 2 * 2  # f16 K and V
    assert plan.memory.weights_bytes == tiny_model.stat().st_size
    assert plan.memory.total_bytes == plan.memory.weights_bytes + plan.memory.kv_bytes


def test_profile_for_another_native_context_is_refused(tiny_model: Path) -> None:
    with pytest.raises(NiahError, match="made for a native context of 262,144"):
        server_args(load_profile("yarn-1m"), read_gguf_facts(tiny_model))


def test_yarn_without_native_or_arch_is_refused() -> None:
    with pytest.raises(NiahError, match="needs YaRN"):
        server_args(load_profile("yarn-1m"), None)


def test_diagnose_names_the_scale_fix() -> None:
    log = {"command": ("", "llama-server -c 1010000 --rope-scale 3.85 --yarn-orig-ctx 262144")}
    cause = diagnose(1_009_254, 1_010_000, 1, 1_009_254, 262144, "qwen35", log)
    assert cause.startswith("rope-scale too small: 3.85 × 262,144 = 1,009,254 < 1,010,000; use --rope-scale 3.8529")
    # Slots that share -c are the cause only while the need fits the training context.
    assert diagnose(4096, 8000, 2, 8192, 8192, "llama", {}).startswith("-c is divided among 2 slots")
    beyond = diagnose(4096, 10000, 2, 8192, 8192, "llama", {})
    assert beyond.startswith("the server caps each slot at the model's training context 8,192")
    assert diagnose(4096, 8000, 1, 8192, 8192, "llama", {}) == "-c is too small: launch with -c 8000"


# ---- TOML loading errors: one line, exit 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("context = 4096\nctx_size = 4096\n", "unknown key 'ctx_size'"),
        ("parallel = 2\n", "missing required key 'context'"),
        ('context = 4096\ncache_type_k = "q3_0"\n', "cache_type_k = 'q3_0' is not one of"),
        ("context = -5\n", "context must be an integer ≥ 1"),
        ('context = "4096"\n', "context must be an integer ≥ 1"),
        ('context = 4096\njinja = "yes"\n', "jinja must be true or false"),
        ("context = 4096\nextra_args = [1]\n", "extra_args must be a list of strings"),
        ('context = 4096\ncache_type_v = "q4_0"\nflash_attn = "off"\n', "quantized V cache needs flash attention"),
        ("context = 4096\nrope_scale = 0.5\n", "rope_scale must be a number above 1"),
        ("context = [\n", "invalid TOML"),
    ],
)
def test_toml_errors(text: str, message: str) -> None:
    with pytest.raises(NiahError, match=message) as info:
        parse_profile(text, "bad", "bad.toml")
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(NiahError, match="no launch profile 'yarn-2m'.*yarn-1m"):
        load_profile("yarn-2m")


def test_profile_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('context = 20000\nnative_context = 8192\nextra_args = ["--no-warmup"]\n')
    profile = load_profile(str(path))
    assert profile.name == "mine" and profile.source == str(path)
    args = server_args(profile, None, arch="llama")
    assert args[-1] == "--no-warmup" and flag(args, "--rope-scale") == choose_rope_scale(20000 + ANSWER_BUDGET, 8192)


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_profile_show_yarn_1m(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "yarn-1m", "--native-context", "262144", "--arch", "qwen35"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    command = lines[-1]
    assert all(line.startswith("#") for line in lines[:-1])  # the whole output pastes into a shell
    argv = shlex.split(command)
    assert argv[0].endswith("llama-server")
    for pair in (["-c", "1010032"], ["--rope-scale", "3.853"], ["--yarn-orig-ctx", "262144"],
                 ["--cache-type-k", "q8_0"], ["--cache-type-v", "q4_0"],
                 ["--override-kv", "qwen35.context_length=int:1010032"]):
        assert command.count(" ".join(pair)) == 1
    assert "40.3 GB" in out and "24 attention layers × 4 KV heads" in out
    assert "prompts up to 1,010,000 tokens + 32 answer tokens = per-slot target 1,010,032" in out
    assert "should serve 1,010,040 per slot" in out and ": OK;" in out


def test_cli_profile_show_with_thinking_sizes_the_launch_for_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "yarn-1m", "--native-context", "262144", "--arch", "qwen35", "--thinking", "on"]) == 0
    assert "--override-kv qwen35.context_length=int:1014096" in capsys.readouterr().out
    assert main(["profile", "show", "native-262k", "--arch", "qwen35", "--thinking", "on"]) == 0
    assert "should serve 262,144 per slot: CLAMPED" in capsys.readouterr().out


def test_cli_profile_show_json_with_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "tiny-yarn-32k", "--model", str(tiny_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["argv"][0].endswith("llama-server")
    assert data["argv"][1:3] == ["-m", str(tiny_model)]
    assert data["rope_scale"] == "3.8501" and data["predicted_slot_context"] == 31540
    assert data["memory_formula"]["weights_bytes"] == tiny_model.stat().st_size
    assert data["memory_formula"]["source"] == "formula"
    try:
        tool = find_fit_params(find_server_binary())
    except NiahError:
        tool = None
    assert data["memory"]["source"] == ("llama-fit-params" if tool else "formula")


def test_cli_profile_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)
    assert "3.85x YaRN" in out


def test_cli_bad_profile_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("context = 4096\nwhat = 1\n")
    assert main(["profile", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("niah: error: ") and len(err.strip().splitlines()) == 1


def test_every_server_option_reaches_the_argv() -> None:
    text = (
        'context = 8160\nflash_attn = "on"\ngpu_layers = 99\njinja = false\nubatch = 2048\nbatch = 4096\n'
        'threads = 8\nmtp_draft_n_max = 3\nmmproj = "mm.gguf"\nimage_min_tokens = 0\n'
        'extra_args = ["--no-warmup"]\n'
    )
    args = server_args(parse_profile(text, "all"), None, 8192, "llama")
    joined = " ".join(args)
    for part in ("-fa on", "-ngl 99", "--no-jinja", "-ub 2048", "-b 4096", "-t 8",
                 "--spec-type draft-mtp --spec-draft-n-max 3", "--mmproj mm.gguf", "--image-min-tokens 0"):
        assert part in joined
    assert args[-1] == "--no-warmup"


# ---- numbers as llama-server reads them: refused with one line, exit 2, through the CLI ----------

def niah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=120)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("niah: error: ") and message in result.stderr, result.stderr


ROPE = "rope_scale must be a number above 1 and at most 2147483647"
BAD_NUMBERS = [
    ('rope_scale = "inf"', ROPE),
    ("rope_scale = 1e39", ROPE),  # a TOML float beyond a 32-bit float
    ('rope_scale = "1e400"', ROPE),
    ('rope_scale = "1_000"', ROPE),  # Python's float() reads 1000, llama-server's std::stof 1
    ('rope_scale = " 2"', ROPE),
    ('rope_scale = "0x10"', ROPE),
    ("rope_scale = nan", ROPE),
    ("rope_scale = 1.00000001", ROPE),  # a 32-bit float reads 1: no stretch at all
    ("rope_scale = 2147483647", "stretches the native context to 17,592,186,044,416 tokens"),
    ('gpu_layers = "1_000"', "gpu_layers must be"),  # std::stoi reads 1
    ("gpu_layers = -3", "gpu_layers must be"),
    ("threads = 99999999999", "threads must be an integer ≥ 1 and at most 2147483647, not 99999999999"),
    ("ubatch = 2_147_483_648", "ubatch must be an integer ≥ 1 and at most 2147483647"),
    ("parallel = 2\ncontext = 2000000000", "-c 4,000,000,064 (every slot's context and answer) is more than"),
    ("tensor_split = [inf, 1]", "tensor_split must be"),
    ("tensor_split = [1e-50, 1]", "tensor_split must be"),  # std::stof refuses it (underflow)
    ('rpc = ["127.0.0.1:٨٠٨٠"]', "is not HOST:PORT"),  # Python's int() reads Arabic-Indic digits
]


def profile_file(folder: Path, line: str) -> Path:
    path = folder / "numbers.toml"
    path.write_text(line + "\n" if "context =" in line else f"context = 16384\n{line}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "message"), BAD_NUMBERS)
def test_profile_show_refuses_numbers_llama_server_reads_otherwise(line: str, message: str, tmp_path: Path) -> None:
    path = profile_file(tmp_path, line)
    assert_one_line_exit_2(niah("profile", "show", str(path), "--native-context", "8192", "--arch", "llama"), message)


@pytest.mark.parametrize(("line", "message"), [BAD_NUMBERS[i] for i in (0, 1, 2, 3, 8, 13)])
def test_plan_and_run_refuse_them_before_writing_anything(
    line: str, message: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = profile_file(tmp_path, line)
    grid = ["--lengths", "16k", "--profile", str(path), "--model", str(tiny_model)]
    assert_one_line_exit_2(niah("plan", *grid, "--rates", "16k=1000"), message)
    out = tmp_path / "run"
    assert_one_line_exit_2(niah("run", *grid, "--no-progress", "--out", str(out)), message)
    assert not out.exists()


@pytest.mark.parametrize(("value", "written"), [("4", "4"), ('"3.85"', "3.85"), ("2.5", "2.5"), ('"1e1"', "1e1")])
def test_plain_rope_scales_reach_the_argv_as_written(value: str, written: str) -> None:
    profile = parse_profile(f"context = 16384\nrope_scale = {value}\n", "plain")
    assert flag(server_args(profile, None, 8192, "llama"), "--rope-scale") == written


def test_extra_args_numbers_are_read_as_llama_server_reads_them(tmp_path: Path) -> None:
    """`--ctx-checkpoints ²` was a traceback (str.isdigit says yes, int() says no); llama-server's
    std::stoi refuses it, so the estimate keeps the server's default."""
    path = profile_file(tmp_path, 'extra_args = ["--ctx-checkpoints", "²"]')
    result = niah("profile", "show", str(path), "--native-context", "8192", "--arch", "llama")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert _ctx_checkpoints(("--ctx-checkpoints", "²")) == DEFAULT_CTX_CHECKPOINTS
    assert _ctx_checkpoints(("-ctxcp", " 8abc")) == 8  # std::stoi: leading spaces, digits, the rest ignored
