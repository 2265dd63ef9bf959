"""The YaRN A/B probe on real llama-servers: a launch whose YaRN flags act differs from the reference
without rope scaling by far more than the threshold, on SmolLM2 and on the qwen35 test bed (IM-RoPE);
flags that llama.cpp ignores (a later --rope-scaling none) come out as ROPE_NO_EFFECT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import LiveServer

from niah.cli import main
from niah.errors import EXIT_ROPE_MISMATCH
from niah.launch.yarn_probe import NO_EFFECT_BELOW, ProbeAnswer, distance, reference_args

YARN_16K = ("-c", "16384", "--override-kv", "llama.context_length=int:16384",
            "--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-orig-ctx", "8192")


def test_distance_is_the_first_answer_tokens_shared_top_k() -> None:
    a = ProbeAnswer((1, 2), (((1, -0.1), (5, -2.0), (6, -3.0)), ((2, -0.2),)))
    b = ProbeAnswer((1, 7), (((1, -0.15), (5, -2.5), (8, -2.9)), ((2, -9.9),)))
    assert distance(a, b) == pytest.approx(0.5)  # token 6 and 8 are not shared; the second answer token is not compared
    assert distance(a, a) == 0.0
    assert math.isinf(distance(a, ProbeAnswer((9,), (((9, -0.1),),))))


def test_the_reference_drops_every_rope_flag_and_keeps_the_kv_types() -> None:
    args = ("-c", "31540", "--parallel", "1", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0", "-fa", "on",
            "--override-kv", "llama.context_length=int:31540", "--rope-scaling", "yarn", "--rope-scale", "3.8501",
            "--yarn-orig-ctx", "8192")
    assert reference_args(args, 300) == ["-c", "1024", "--parallel", "1", "--cache-type-k", "q8_0",
                                         "--cache-type-v", "q4_0", "-fa", "on", "--rope-scaling", "none"]
    assert reference_args(args, 2000, stretched=True) == ["-c", "2048", "--parallel", "1", *args[4:]]


def probe(url: str, model: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """`niah check --yarn-probe` on the server at `url` (its flags not given: the probe alone decides)."""
    code = main(["check", "--url", url, "--context", "1k", "--model", str(model), "--yarn-probe", "--probe-out", str(out)])
    print(capsys.readouterr().out)
    return code, json.loads((out / "probe.json").read_text())


@pytest.mark.server
@pytest.mark.parametrize("model", ["smollm2", "qwen35"])
def test_the_probe_tells_yarn_from_flags_that_do_nothing(
    model: str, request: pytest.FixtureRequest, start_llama_server, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = Path(request.getfixturevalue("tiny_model" if model == "smollm2" else "qwen35_testbed"))
    native = 8192 if model == "smollm2" else 4096
    arch = "llama" if model == "smollm2" else "qwen35"
    flags = ("-c", str(2 * native), "--override-kv", f"{arch}.context_length=int:{2 * native}",
             "--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-orig-ctx", str(native))
    yarn: LiveServer = start_llama_server(*flags, model_path=path)
    code, result = probe(yarn.url, path, tmp_path / "yarn", capsys)
    assert code == 0 and result["applied"] and result["distance"] > 5 * NO_EFFECT_BELOW
    assert result["reference"]["tokens"] and (tmp_path / "yarn" / "yarn-reference.json").is_file()
    # the same flags followed by --rope-scaling none: llama.cpp keeps freq_scale 1, nothing changes
    off = (*flags, "--rope-scaling", "none")
    ignored: LiveServer = start_llama_server(*off, model_path=path)
    code, result = probe(ignored.url, path, tmp_path / "off", capsys)
    assert code == EXIT_ROPE_MISMATCH and not result["applied"] and result["distance"] < NO_EFFECT_BELOW


@pytest.mark.server
def test_the_reference_is_kept_and_reused(start_llama_server, tiny_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    live: LiveServer = start_llama_server(*YARN_16K)
    probe(live.url, tiny_model, tmp_path, capsys)
    kept = (tmp_path / "yarn-reference.json").read_text()
    code, result = probe(live.url, tiny_model, tmp_path, capsys)
    assert code == 0 and result["reference_seconds"] == 0.0  # no second reference launch
    assert (tmp_path / "yarn-reference.json").read_text() == kept and len(list(tmp_path.glob("yarn-reference.*.log"))) == 1


@pytest.mark.server
def test_a_reference_on_another_device_is_read_against_a_stretched_one_there(
    start_llama_server, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flash attention off stands in for another device's kernels: on SmolLM2 they move the first
    token by a third of what YaRN ×2 does, so the probe asks a second reference with the server's flags
    there and takes the nearer one."""
    live: LiveServer = start_llama_server(*YARN_16K)
    code = main(["check", "--url", live.url, "--context", "1k", "--model", str(tiny_model), "--yarn-probe",
                 "--probe-out", str(tmp_path), "--server-args", " ".join(YARN_16K), "--probe-args", "-fa off"])
    result = json.loads((tmp_path / "probe.json").read_text())
    assert code == 0 and result["applied"] and result["stretched_distance"] < result["distance"]
    assert "both on the reference's device" in capsys.readouterr().out
    assert {p.name for p in tmp_path.glob("*.json")} == {"probe.json", "yarn-reference.json", "yarn-stretched.json"}


@pytest.mark.server
def test_niah_launch_asks_the_reference_first_then_the_launch(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["launch", "tiny-yarn-12k", "--model", str(tiny_model), "--log-dir", str(tmp_path), "--yarn-probe"]) == 0
    out = capsys.readouterr().out
    assert out.index("reference launch without rope scaling first") < out.index("starting llama-server")
    assert "yarn probe: the YaRN flags act" in out
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["applied"] and result["reference_seconds"] > 0 and result["launch"]["tokens"]
