"""The append-only results file: header, append, resume, refusal of a changed run, torn lines."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from niah.errors import NiahError
from niah.publish.results import SCHEMA_VERSION, CellResult, ResultsFile, load_cells, read_header

FINGERPRINT = {
    "model": {"path": "m.gguf", "size": 123},
    "launch_argv": ["llama-server", "-c", "8192"],
    "needle_seed": 0,
}
FIXTURES = Path(__file__).parent / "fixtures"


def cell(length: int = 2048, depth: float = 50.0, trial: int = 0, outcome: str = "PASS", **extra: object) -> CellResult:
    fields: dict[str, object] = {
        "needle_value": "7391",
        "answer": "It is 7391.",
        "prompt_tokens_planned": length,
        "prompt_tokens_served": length,
        "factor": "native",
    }
    fields.update(extra)
    return CellResult(length=length, depth=depth, trial=trial, outcome=outcome, **fields)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_new_file_starts_with_header_then_one_flat_line_per_cell(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, FINGERPRINT)
    results.append(cell(depth=0.0, answer="x" * 2000))
    results.append(cell(depth=100.0, outcome="FAIL"))

    header, first, second = lines(path)
    assert header["record"] == "header" and header["schema_version"] == SCHEMA_VERSION
    assert header["fingerprint"] == FINGERPRINT and header["created"]
    assert first["record"] == "cell" and first["schema_version"] == SCHEMA_VERSION
    assert (first["length"], first["depth"], first["trial"], first["outcome"]) == (2048, 0.0, 0, "PASS")
    assert len(str(first["answer"])) == 2000  # kept in full (schema 2)
    assert all(not isinstance(v, (dict, list)) for k, v in first.items() if k != "planted")
    assert first["planted"] == [] and first["task"] == "single"  # planted: a list of flat dicts
    assert second["outcome"] == "FAIL"
    assert results.done_keys() == {("single", 2048, 0.0, 0), ("single", 2048, 100.0, 0)}
    assert sorted(results.outcomes()) == ["FAIL", "PASS"]


def test_reopening_with_same_fingerprint_resumes(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    ResultsFile(path, FINGERPRINT).append(cell(length=4096, depth=25.0, trial=1))
    reordered = {"needle_seed": 0, "launch_argv": ["llama-server", "-c", "8192"], "model": {"size": 123, "path": "m.gguf"}}
    resumed = ResultsFile(path, reordered)
    assert resumed.done_keys() == {("single", 4096, 25.0, 1)}
    resumed.append(cell(length=4096, depth=75.0))
    assert [r["record"] for r in lines(path)] == ["header", "cell", "cell"]


def test_done_keys_can_leave_out_cells_to_run_again(tmp_path: Path) -> None:
    """`niah run --retry`: the latest outcome decides; a retried cell that passed is done."""
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, FINGERPRINT)
    for depth, outcome in ((0.0, "PASS"), (25.0, "CRASH"), (50.0, "TIMEOUT"), (75.0, "HTTP_ERROR"), (100.0, "TRUNCATED")):
        results.append(cell(length=1024, depth=depth, outcome=outcome))
    retry = ("CRASH", "TIMEOUT", "HTTP_ERROR")
    assert len(results.done_keys()) == 5
    assert {k[2] for k in ResultsFile(path, FINGERPRINT).done_keys(redo=retry)} == {0.0, 100.0}
    results.append(cell(length=1024, depth=25.0, outcome="FAIL"))
    assert {k[2] for k in ResultsFile(path, FINGERPRINT).done_keys(redo=retry)} == {0.0, 25.0, 100.0}


def test_changed_fingerprint_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    ResultsFile(path, FINGERPRINT).append(cell())
    changed = {**FINGERPRINT, "model": {"path": "m.gguf", "size": 999}, "template": "chatml"}
    with pytest.raises(NiahError) as excinfo:
        ResultsFile(path, changed)
    message = str(excinfo.value)
    assert "model.size" in message and "template" in message and "model.path" not in message
    assert "--out" in message
    assert excinfo.value.exit_code == 2
    assert len(lines(path)) == 2  # the file was left as it was


def test_torn_last_line_is_ignored_and_cut_off_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, FINGERPRINT)
    results.append(cell(depth=0.0))
    results.append(cell(depth=50.0))
    with open(path, "ab") as fh:  # kill -9 in the middle of writing the third cell
        fh.write(json.dumps(cell(depth=100.0).to_record()).encode()[:70])

    assert len(load_cells(path)) == 2
    resumed = ResultsFile(path, FINGERPRINT)
    assert resumed.done_keys() == {("single", 2048, 0.0, 0), ("single", 2048, 50.0, 0)}
    resumed.append(cell(depth=100.0))
    assert list(load_cells(path)["depth"]) == [0.0, 50.0, 100.0]
    assert path.read_bytes().endswith(b"\n")


def test_nothing_is_written_until_something_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.jsonl"
    ResultsFile(path, FINGERPRINT)
    assert not path.exists() and not path.parent.exists()


def test_server_facts_are_recorded_once_and_a_changed_one_refuses_to_resume(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    first = ResultsFile(path, FINGERPRINT)
    first.check_facts({"server_version": "version: 1 (aaa)", "tokenizer_resolved": "qwen3.6"})
    first.append(cell())
    again = ResultsFile(path, FINGERPRINT)
    again.check_facts({"server_version": "version: 1 (aaa)", "tokenizer_resolved": "qwen3.6"})
    assert [r["record"] for r in lines(path)] == ["header", "facts", "cell"]
    size = path.stat().st_size
    with pytest.raises(NiahError) as excinfo:
        ResultsFile(path, FINGERPRINT).check_facts({"server_version": "version: 2 (bbb)"})
    message = str(excinfo.value)
    assert "server_version was \"version: 1 (aaa)\", now \"version: 2 (bbb)\"" in message
    assert len(message.splitlines()) == 1
    assert path.stat().st_size == size  # nothing written


def test_old_headers_keep_their_url_server_as_a_fact(tmp_path: Path) -> None:
    """A file from before facts records kept the URL server in its fingerprint: resume still checks it."""
    path = tmp_path / "results.jsonl"
    server = {"url": "http://127.0.0.1:8080", "n_ctx": 8192}
    ResultsFile(path, {**FINGERPRINT, "server": server}).append(cell())
    resumed = ResultsFile(path, FINGERPRINT)
    resumed.check_facts({"server": server})
    with pytest.raises(NiahError, match="server was"):
        resumed.check_facts({"server": {**server, "n_ctx": 4096}})


def test_header_torn_mid_write_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"record": "header", "schema_ver')
    ResultsFile(path, FINGERPRINT).append(cell())
    assert [r["record"] for r in lines(path)] == ["header", "cell"]


def test_garbage_is_refused_with_one_clear_message(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("this is not json\nnor this\n")
    with pytest.raises(NiahError, match="line 1 is not a niah results record"):
        load_cells(garbage)
    headerless = tmp_path / "headerless.jsonl"
    headerless.write_text(json.dumps(cell().to_record()) + "\n")
    with pytest.raises(NiahError, match="no header record"):
        ResultsFile(headerless, FINGERPRINT)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    ResultsFile(path, FINGERPRINT).write_header()
    with open(path, "a") as fh:
        fh.write(json.dumps({**cell().to_record(), "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(NiahError, match="newer than this niah reads"):
        load_cells(path)


def test_api_keys_are_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIAH_API_KEY", "env-secret-42")
    path = tmp_path / "results.jsonl"
    fingerprint = {
        "launch_argv": ["llama-server", "--api-key", "argv-secret-17", "--api-key=argv-secret-18"],
        "client": {"api_key": "dict-secret-99", "url": "http://127.0.0.1:1"},
        "note": "started with env-secret-42",
    }
    results = ResultsFile(path, fingerprint)
    results.append(cell(error="server said: bad key env-secret-42"))
    text = path.read_text()
    for secret in ("env-secret-42", "argv-secret-17", "argv-secret-18", "dict-secret-99"):
        assert secret not in text
    assert ResultsFile(path, fingerprint).done_keys() == {("single", 2048, 50.0, 0)}  # and it still resumes


def test_a_key_given_by_flag_is_masked_too(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    ResultsFile(path, {"note": "flag-secret-55 here"}, secrets=("flag-secret-55", None)).append(
        cell(error="401 for key flag-secret-55")
    )
    text = path.read_text()
    assert "flag-secret-55" not in text and text.count("***") == 2


def test_unknown_outcome_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        cell(outcome="MAYBE")


def test_load_cells_keeps_the_latest_record_of_a_cell(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, FINGERPRINT)
    results.append(cell(depth=100.0, outcome="TIMEOUT"))
    results.append(cell(depth=0.0))
    results.append(cell(depth=100.0, outcome="PASS"))
    df = load_cells(path)
    assert list(zip(df["depth"], df["outcome"])) == [(0.0, "PASS"), (100.0, "PASS")]


def test_committed_v1_file_still_loads() -> None:
    """results-v1.jsonl is frozen in schema 1's layout; later schemas must keep reading it."""
    path = FIXTURES / "results-v1.jsonl"
    df = load_cells(path)
    assert len(df) == 6
    assert set(df["outcome"]) == {"PASS", "FAIL", "TRUNCATED", "CLAMPED"}
    assert list(df["length"].unique()) == [2048, 12288, 16384]
    clamped = df[df["outcome"] == "CLAMPED"].iloc[0]
    assert clamped["factor"] == "2x YaRN" and pd.isna(clamped["prompt_tokens_served"])
    assert read_header(path)["fingerprint"]["model"]["size"] == 98159968


def test_v1_cells_are_the_single_task_and_a_v2_task_is_its_own_cell(tmp_path: Path) -> None:
    """A schema-1 file resumes: its cells (no `task`) are `single`; a task's cell of the same
    (length, depth, trial) is another cell, and both load."""
    path = tmp_path / "results.jsonl"
    path.write_bytes((FIXTURES / "results-v1.jsonl").read_bytes())
    fingerprint = read_header(path)["fingerprint"]
    results = ResultsFile(path, fingerprint)
    assert ("single", 2048, 0.0, 0) in results.done_keys()
    planted = ({"text": "VAR ABCDE = 7391.", "value": "ABCDE", "role": "target", "depth": 0.0,
                "token_offset": 0, "tokens": 7, "depth_actual": 0.0},)
    results.append(cell(depth=0.0, task="chain:1", outcome="FAIL", score=0.5, planted=planted))
    resumed = ResultsFile(path, fingerprint)
    assert {("single", 2048, 0.0, 0), ("chain:1", 2048, 0.0, 0)} <= resumed.done_keys()
    df = load_cells(path)
    both = df[(df["length"] == 2048) & (df["depth"] == 0.0)]
    assert list(zip(both["task"], both["outcome"])) == [("chain:1", "FAIL"), ("single", "PASS")]
    assert both.iloc[0]["planted"] == list(planted) and both.iloc[0]["score"] == 0.5
    assert lines(path)[-1]["schema_version"] == SCHEMA_VERSION == 2


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP", "ENOSYS", "EIO"])
def test_a_file_system_that_cannot_lock_is_one_line_exit_2(code: str, tmp_path: Path) -> None:
    """A file system without locks (NFS without lockd, some FUSE mounts) cannot be mounted in a test
    here, so flock(2) is made to answer the errno such a file system gives; the CLI is the real one."""
    out = tmp_path / "run"
    script = (
        "import errno, fcntl, os, sys\n"
        "def refuse(fd, op):\n"
        f"    raise OSError(errno.{code}, os.strerror(errno.{code}))\n"
        "fcntl.flock = refuse\n"
        "from niah.cli import main\n"
        f"sys.exit(main(['run', '--lengths', '1k', '--no-progress', '--url', 'http://127.0.0.1:1', '--out', {str(out)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"niah: error: cannot lock the run folder {out}: ")
    value = getattr(errno, code)
    assert f"({errno.errorcode[value]}: {os.strerror(value)})" in result.stderr
    no_locks = code != "EIO"
    assert ("does not support file locks" in result.stderr) is no_locks
    assert list(out.iterdir()) == []  # the lock file it made is gone, nothing else was written


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("length", "x", 'cell field length is "x", expected an integer'),
        ("length", None, "the cell has no length"),
        ("depth", [], "cell field depth is [], expected a finite number"),
        ("trial", 1.5, "cell field trial is 1.5, expected an integer"),
        ("outcome", {}, "cell field outcome is {}, expected a string"),
        ("outcome", "MAYBE", 'outcome "MAYBE" is not one of PASS, FAIL'),
        ("prompt_n", 1e308, "cell field prompt_n is 1e+308, expected an integer"),
        ("wall_s", {}, "cell field wall_s is {}, expected a finite number"),
        ("wall_s", float("inf"), "cell field wall_s is Infinity, expected a finite number"),
        ("length", 10**30, "cell field length is 1000000000000000000000000000000, expected an integer that fits 64 bits"),
        ("task", "\x00", 'task "\\u0000" is not a printable name'),
        ("planted", [1, 2], "planted sentence 0 is 1, expected an object"),
        ("planted", [{"role": "target"}], "planted sentence 0 has no text"),
        ("planted", [{"text": "x", "depth_actual": "y"}], 'planted sentence 0 field depth_actual is "y", expected a finite number'),
        ("profile", [], "cell field profile is [], expected a string"),
        ("planted", "x", 'cell field planted is "x", expected an array'),
        ("schema_version", "x", 'schema_version is "x", expected an integer'),
    ],
)
def test_a_hand_edited_cell_is_one_line_naming_it(field: str, value: object, message: str, tmp_path: Path) -> None:
    """Each was a traceback from pandas, the grid or the report page (`niah report`, `card`, `compare`)."""
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, FINGERPRINT)
    results.append(cell(depth=0.0))
    results.append(cell(depth=50.0))
    records = lines(path)
    records[2][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = subprocess.run([sys.executable, "-m", "niah", "report", str(tmp_path)], check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"niah: error: {path} line 3: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no report was written


def test_a_header_whose_fingerprint_is_not_an_object_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"record": "header", "schema_version": 2, "fingerprint": ["x"]}) + "\n")
    with pytest.raises(NiahError, match=r"line 1: the header's fingerprint is \[\"x\"\], expected an object"):
        load_cells(path)


def test_a_full_disk_is_one_line_and_the_lines_before_stand(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the kernel refuse the write the way
    a full disk does (EFBIG for ENOSPC): was an OSError traceback."""
    path = tmp_path / "results.jsonl"
    ResultsFile(path, FINGERPRINT).append(cell(depth=0.0))
    size = path.stat().st_size
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_results import FINGERPRINT, cell\n"
        "from niah.errors import NiahError\n"
        "from niah.publish.results import ResultsFile\n"
        "results = ResultsFile(Path(sys.argv[1]), FINGERPRINT)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 10}, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    results.append(cell(depth=50.0))\n"
        "except NiahError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path), str(Path(__file__).parent)], check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == f"cannot write {path}: File too large\n"
    resumed = ResultsFile(path, FINGERPRINT)  # the torn line is cut off, the cell before stands
    assert resumed.done_keys() == {("single", 2048, 0.0, 0)} and path.stat().st_size == size


def test_a_results_path_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").mkdir()
    with pytest.raises(NiahError, match="results.jsonl is not a file: move it away, or give another --out"):
        ResultsFile(tmp_path / "results.jsonl", FINGERPRINT)
