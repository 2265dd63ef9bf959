"""Append-only JSONL results: a header with the run's fingerprint, then one line per finished cell.

Every line is flushed and fsynced, so `kill -9` loses at most the cell in flight; a torn
last line is cut off when the file is reopened. Reopening with the same fingerprint
resumes the run, a different fingerprint is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from niah.errors import NiahError
from niah.launch.api_key import given_key
from niah.publish.record_checks import record_problem, short

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 2
"""2 added `task`, `score` and `planted`; a cell is keyed by (task, length, depth, trial), and a
record without `task` (version 1) is the `single` task."""
SINGLE_TASK = "single"
OUTCOMES = (
    "PASS",
    "FAIL",
    "WRONG_KEY",
    "CLAMPED",
    "CONTEXT_ERROR",
    "TRUNCATED",
    "TIMEOUT",
    "CRASH",
    "HTTP_ERROR",
    "TOKEN_MISMATCH",
)
RETRIEVAL_OUTCOMES = ("PASS", "FAIL", "WRONG_KEY")
"""Retrieval results: WRONG_KEY is an answer holding a planted value other than the asked one."""
NAMED_OUTCOMES = tuple(o for o in OUTCOMES if o not in ("PASS", "FAIL"))
"""Outcomes a grid label, the `other` column and the card's legend name beside `k/n`."""
FACT_KEYS = ("server", "server_version", "tokenizer_resolved", "rope")
"""Fingerprint entries checked by `ResultsFile.check_facts` rather than compared with the header: known
only once a server is up, or (`rope`, llama.cpp's read-back of each launch) recorded since a later
niah, so a run made before it still resumes and records it then."""
LOCK_NAME = ".niah-run.lock"
"""The file a run holds locked in its folder while it runs."""
_MIN_SUBSTRING_SECRET = 8  # shorter keys are masked only as whole values, so text is not mangled
_SECRET_FLAG = re.compile(r"^(--api-key)=.*$")


@dataclass(frozen=True)
class CellResult:
    """One finished cell: where the needle was, what the server counted and answered, the outcome."""

    length: int
    """Planned prompt length L in server-counted tokens."""
    depth: float
    """Nominal needle depth in percent of the haystack body."""
    trial: int
    """Trial number (0-based) of this (length, depth)."""
    outcome: str
    """One of OUTCOMES."""
    task: str = SINGLE_TASK
    """The task (niah.prompts.tasks): `single`, `multikey:4`, `chain:2`, a custom task's name."""
    score: float | None = None
    """Fraction of the expected values the answer contains (1.0 = PASS); None when not scored."""
    planted: tuple[dict[str, Any], ...] = ()
    """Every planted sentence: text, value, role, depth, token_offset, tokens, depth_actual."""
    depth_actual: float | None = None
    """Depth where the needle's first token actually sits, in percent of the body."""
    needle_offset: int | None = None
    """Token offset of the needle's first token within the body."""
    needle_value: str = ""
    """The value the answer must contain (every expected value, comma-joined, for all-of tasks)."""
    answer: str = ""
    """The model's whole answer, as streamed (reasoning included)."""
    prompt_tokens_planned: int | None = None
    """Prompt tokens niah counted before sending (should equal `length`)."""
    prompt_tokens_served: int | None = None
    """Prompt tokens the server counted (usage.prompt_tokens)."""
    prompt_n: int | None = None
    """Prompt tokens the server actually computed (timings.prompt_n)."""
    cache_n: int | None = None
    """Prompt tokens the server reused from its cache (timings.cache_n)."""
    prompt_ms: float | None = None
    """Prefill time reported by the server."""
    predicted_n: int | None = None
    """Tokens generated."""
    predicted_ms: float | None = None
    """Generation time reported by the server."""
    wall_s: float | None = None
    """Wall time of the request as the client saw it."""
    overhead_s: float | None = None
    """niah's own time for the cell (build, count, parse): wall time less time waiting on the server."""
    server_n_ctx: int | None = None
    """Per-slot context the server reported serving."""
    profile: str | None = None
    """Launch profile name (None for an external --url server)."""
    endpoint: str | None = None
    """The server that served the cell: its URL, or `profile#n` for the n-th managed launch."""
    factor: str | None = None
    """Per-slot context over native context, e.g. 'native' or '1.5x YaRN'."""
    finish_reason: str | None = None
    """The server's finish_reason ('stop', 'length', ...)."""
    error: str | None = None
    """Short reason for a non-retrieval outcome."""
    tokenizer: str | None = None
    """The tokenizer that built the prompt: the resolved one, or `server` after a rebuild."""
    cache_expected: int | None = None
    """Prompt tokens shared with the previous prompt on the same server: what cache_n could be."""
    prime_n: int | None = None
    """Tokens the server computed for the checkpoint primer before the cell (hybrid models)."""
    prime_cache_n: int | None = None
    """Tokens the primer took from the server's cache (what the previous cell left)."""
    prime_ms: float | None = None
    """Milliseconds the server spent computing the primer."""
    draft_n: int | None = None
    """Tokens a draft proposed (speculative decoding, e.g. --spec-type draft-mtp)."""
    draft_n_accepted: int | None = None
    """Drafted tokens the model accepted."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {', '.join(OUTCOMES)}")

    @property
    def key(self) -> tuple[str, int, float, int]:
        return (self.task, int(self.length), float(self.depth), int(self.trial))

    def to_record(self) -> dict[str, Any]:
        """The flat JSON record written for this cell (the answer kept in full)."""
        record: dict[str, Any] = {"record": "cell", "schema_version": SCHEMA_VERSION}
        record.update(asdict(self))
        record["planted"] = list(self.planted)
        record["finished"] = _now()
        return record


_COUNT_COLUMNS = (
    "needle_offset",
    "prompt_tokens_planned",
    "prompt_tokens_served",
    "prompt_n",
    "cache_n",
    "predicted_n",
    "server_n_ctx",
    "cache_expected",
    "prime_n",
    "prime_cache_n",
    "draft_n",
    "draft_n_accepted",
)
CELL_COLUMNS = ["schema_version", *(f.name for f in fields(CellResult)), "finished"]
_CELL_TYPES = {f.name: str(f.type) for f in fields(CellResult)}


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of `value` with API keys masked: secret-named keys, `--api-key X` argv pairs, and the
    value of $NIAH_API_KEY (plus `secrets`) wherever it appears."""
    secrets = tuple(s for s in (*secrets, given_key()) if s)
    return _redact(value, secrets)


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: "***" if str(k).lower().replace("-", "_").endswith(("api_key", "apikey", "authorization")) else _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_redact(v, secrets) for v in value]
        for i, item in enumerate(value):
            if item == "--api-key" and i + 1 < len(out):
                out[i + 1] = "***"
            elif isinstance(item, str) and _SECRET_FLAG.match(item):
                out[i] = "--api-key=***"
        return out
    if isinstance(value, str):
        for secret in secrets:
            if value == secret or len(secret) >= _MIN_SUBSTRING_SECRET:
                value = value.replace(secret, "***")
    return value


def canonical(fingerprint: dict[str, Any]) -> str:
    """The fingerprint as canonical JSON (sorted keys), the form that is compared."""
    return json.dumps(redact(fingerprint), sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fingerprint keys whose values differ between `old` and `new`."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += fingerprint_differences(a, b, f"{name}.")
        elif key not in old or key not in new or json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(name)
    return diffs


class ResultsFile:
    """The results JSONL of one run: create it with a header, or reopen it to resume."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], secrets: tuple[str | None, ...] = ()) -> None:
        self.path = Path(path)
        self.secrets = tuple(s for s in secrets if s)
        """Keys niah was given (e.g. --api-key): masked wherever they appear in what is written."""
        self.fingerprint: dict[str, Any] = json.loads(canonical(fingerprint))
        self._outcomes: dict[tuple[str, int, float, int], str] = {}
        self._facts: dict[str, Any] = {k: v for k, v in self.fingerprint.items() if k in FACT_KEYS}
        if self.path.exists() and not self.path.is_file():
            raise NiahError(f"{self.path} is not a file: move it away, or give another --out")
        self._header_written = self.path.exists() and not _only_torn_header(self.path)
        if self._header_written:
            self._resume()

    def write_header(self) -> None:
        """Create the file with its header record (done by the first record written; a run that
        fails before it records anything leaves no file behind)."""
        if self._header_written:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
        except OSError as exc:
            raise NiahError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._header_written = True
        header = {
            "record": "header",
            "schema_version": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "created": _now(),
        }
        self._write_line(header)

    def _resume(self) -> None:
        header, records, good_bytes = _read_records(self.path)
        cells = [r for r in records if r.get("record") == "cell"]
        if good_bytes < self.path.stat().st_size:
            with open(self.path, "r+b") as fh:  # cut off a torn last line (kill -9 mid-write)
                fh.truncate(good_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        old = {k: v for k, v in (header.get("fingerprint") or {}).items() if k not in FACT_KEYS}
        self._facts = {**(header.get("fingerprint") or {}), **_merged_facts(records)}
        new = {k: v for k, v in self.fingerprint.items() if k not in FACT_KEYS}
        if canonical(old) != canonical(new):
            differing = ", ".join(fingerprint_differences(old, new)) or "(layout)"
            raise NiahError(
                f"{self.path} belongs to a different run (fingerprint differs in: {differing}); "
                "use a new --out directory to start a fresh run, or rerun with the original settings to resume"
            )
        self._outcomes = {_key(c): str(c.get("outcome")) for c in cells}

    def check_facts(self, facts: dict[str, Any]) -> None:
        """Facts a live server tells (its version, the resolved tokenizer, a URL server's identity):
        refused when the file recorded another value, recorded when new."""
        facts = json.loads(canonical(facts))
        for key, value in facts.items():
            if key in self._facts and canonical({key: self._facts[key]}) != canonical({key: value}):
                raise NiahError(
                    f"{self.path} belongs to a different run: {key} was {short(self._facts[key])}, "
                    f"now {short(value)}; use a new --out directory, or rerun with the original server"
                )
        new = {k: v for k, v in facts.items() if k not in self._facts}
        if new:
            self._write_line({"record": "facts", "schema_version": SCHEMA_VERSION, "facts": new, "recorded": _now()})
            self._facts.update(new)

    def fact(self, key: str) -> Any:
        """The value recorded for the server fact `key` (None when none is)."""
        return self._facts.get(key)

    def done_keys(self, redo: tuple[str, ...] = ()) -> set[tuple[str, int, float, int]]:
        """(task, length, depth, trial) of every cell already in the file, but those whose latest
        outcome is in `redo` (cells to run again)."""
        return {key for key, outcome in self._outcomes.items() if outcome not in redo}

    def outcome(self, key: tuple[str, int, float, int]) -> str | None:
        """The latest outcome recorded for a cell (None when it has none)."""
        return self._outcomes.get(key)

    def outcomes(self, keys: set[tuple[str, int, float, int]] | None = None) -> list[str]:
        """The outcome of every cell in the file (the latest record per cell), or of those in `keys`."""
        return [o for k, o in self._outcomes.items() if keys is None or k in keys]

    def append(self, result: CellResult) -> None:
        """Write one finished cell, flushed and fsynced before returning."""
        self._write_line(result.to_record())
        self._outcomes[result.key] = result.outcome

    def _write_line(self, record: dict[str, Any]) -> None:
        self.write_header()
        line = json.dumps(redact(record, self.secrets), ensure_ascii=False, default=str) + "\n"
        try:
            with open(self.path, "ab") as fh:
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a full disk: the lines before stand, a torn one is cut off on resume
            raise NiahError(f"cannot write {self.path}: {exc.strerror or exc}") from None


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` (which exists) for this process, so two runs never append to one results file;
    a folder another run holds is bad input, and so is a folder on a file system that cannot lock
    (NFS without lockd, some FUSE mounts). The kernel releases the lock however the process ends."""
    path = Path(folder) / LOCK_NAME
    created = not path.exists()
    try:
        fh = open(path, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise NiahError(f"cannot lock the run folder {folder}: {exc.strerror or exc}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            raise NiahError(
                f"the run folder {folder} is in use by another niah run{f' (pid {holder})' if holder else ''}: "
                "wait for it to end, or give another --out"
            ) from None
        except OSError as exc:
            if created:  # leave the folder as it was
                path.unlink(missing_ok=True)
            raise NiahError(_lock_refused(folder, exc)) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
        except OSError as exc:
            raise NiahError(f"cannot write {path}: {exc.strerror or exc}") from None
        yield


_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
"""What flock(2) answers on a file system that has no locks (NFS without lockd, some FUSE mounts)."""


def _lock_refused(folder: Path, exc: OSError) -> str:
    """One line for a lock the file system refused (not one another run holds)."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    why = "its file system does not support file locks" if exc.errno in _NO_LOCKS else "the file system refused"
    return (
        f"cannot lock the run folder {folder}: {why} ({code}: {exc.strerror or exc}); niah locks it so two runs "
        "never append to one results file: give an --out on a file system with locks (a local disk)"
    )


def _merged_facts(records: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for record in records:
        if record.get("record") == "facts" and isinstance(record.get("facts"), dict):
            merged.update(record["facts"])
    return merged


def read_facts(path: Path) -> dict[str, Any]:
    """The run's fingerprint together with the server facts recorded after it (FACT_KEYS)."""
    header, records, _ = _read_records(Path(path))
    return {**(header.get("fingerprint") or {}), **_merged_facts(records)}


def read_header(path: Path) -> dict[str, Any]:
    """The header record of a results file (NiahError when it is not one)."""
    return _read(Path(path))[0]


def load_cells(path: Path) -> pd.DataFrame:
    """All cell records as one tidy frame, sorted by (length, depth, trial, task).

    Reads every schema version up to SCHEMA_VERSION (columns an older file lacks are
    NA; a missing task is `single`); when a cell was recorded twice, the later record wins.
    """
    import pandas as pd

    _, cells, _ = _read(Path(path))
    frame = pd.DataFrame(cells)
    for column in CELL_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA
    extra = [c for c in frame.columns if c not in CELL_COLUMNS and c != "record"]
    frame = frame[CELL_COLUMNS + extra]
    if frame.empty:
        return frame
    frame["length"] = frame["length"].astype("int64")
    frame["depth"] = frame["depth"].astype("float64")
    frame["trial"] = frame["trial"].astype("int64")
    frame["task"] = frame["task"].map(_task)
    for column in _COUNT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    frame = frame.drop_duplicates(subset=["task", "length", "depth", "trial"], keep="last")
    return frame.sort_values(["length", "depth", "trial", "task"], kind="stable").reset_index(drop=True)


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Parse a results file: (header, cell records, byte length of the well-formed part)."""
    header, records, good = _read_records(path)
    return header, [r for r in records if r.get("record") == "cell"], good


def _read_records(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Parse a results file: (header, the records after it, byte length of the well-formed part)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NiahError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    records: list[dict[str, Any]] = []
    good = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        if not raw.endswith(b"\n"):
            break  # a torn last line (kill -9 mid-write): ignored, cut off when the file is reopened
        if raw.strip():
            try:
                record = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # RecursionError: arrays nested without end
                record = None
            if not isinstance(record, dict):
                raise NiahError(f"{path} line {number} is not a niah results record (bad JSON)")
            problem = record_problem(record, _CELL_TYPES, OUTCOMES)
            if problem:
                raise NiahError(f"{path} line {number}: {problem}")
            records.append(record)
        good += len(raw)
    if not records or records[0].get("record") != "header":
        raise NiahError(f"{path} is not a niah results file (no header record on its first line)")
    header = records[0]
    newest = max(int(r.get("schema_version", 0) or 0) for r in records)
    if newest > SCHEMA_VERSION:
        raise NiahError(
            f"{path} has schema_version {newest}, newer than this niah reads ({SCHEMA_VERSION}); upgrade niah"
        )
    return header, records[1:], good


def _only_torn_header(path: Path) -> bool:
    """True for an empty file or one holding only a header cut off mid-write."""
    data = path.read_bytes()
    return b"\n" not in data and (not data.strip() or data.startswith(b'{"record": "header"'))


def _key(record: dict[str, Any]) -> tuple[str, int, float, int]:
    return (_task(record.get("task")), int(record["length"]), float(record["depth"]), int(record["trial"]))


def _task(value: Any) -> str:
    """A record's task: missing or empty (schema version 1) is `single`."""
    return value if isinstance(value, str) and value else SINGLE_TASK


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
