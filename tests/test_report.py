"""Reports rendered from the results JSONL alone: the seed's grid, CSV, JSON, PNG, the report page
(escaped, self-contained, rendered in headless Chromium), CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import need
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from niah.cli import main
from niah.errors import NiahError
from niah.publish.card.method import duration
from niah.publish.grid import cell_label, grid_markdown
from niah.publish.report import render_report
from niah.publish.report_figures import COLOURS
from niah.publish.results import OUTCOMES, CellResult, ResultsFile, load_cells

FINGERPRINT = {"model": {"path": "m.gguf", "size": 1}, "needle_seed": 0}
FIXTURES = Path(__file__).parent / "fixtures"
REPORTS = Path(__file__).parent.parent / "reports"
COMMITTED = sorted(p.parent.name for p in REPORTS.glob("*/report.html"))
BROWSER_HINT = "the report page tests need headless Chromium; `bash scripts/setup.sh` installs Debian's `chromium`"
NUMBER = r"\d{1,3}(?:,\d{3})*"
FOR_PEOPLE = re.compile(  # how a figure of the cells table reads: 12,256 / 24.8% / 52.5 s / 4 min 17 s / 2 h 09 min
    rf"^(-|{NUMBER}|{NUMBER} \(planned {NUMBER}\)|\d+(\.\d)?%|\d+\.\d s|\d+ min \d\d s|\d+ h \d\d min)$"
)
RAW = re.compile(r"\bNone\b|\bnan\b|\bNaN\b|<NA>|\d\.\d{3,}")


def write_run(path: Path) -> Path:
    """A small run: 2 trials per cell, one length with untested depths, mixed and clamped cells."""
    results = ResultsFile(path, FINGERPRINT)
    plan = {
        (4096, 0.0): ["PASS", "PASS"],
        (4096, 25.0): ["PASS", "FAIL"],
        (4096, 50.0): ["FAIL", "FAIL"],
        (4096, 75.0): ["PASS", "TIMEOUT"],
        (4096, 100.0): ["PASS", "PASS"],
        (12288, 0.0): ["PASS", "PASS"],
        (12288, 50.0): ["CONTEXT_ERROR", "CONTEXT_ERROR"],
        (12288, 100.0): ["CLAMPED", "CLAMPED"],
    }
    factor = {4096: "native", 12288: "1.5x YaRN"}
    for (length, depth), outcomes in plan.items():
        for trial, outcome in enumerate(outcomes):
            answer = "<script>alert('x')</script> 7391" if outcome == "PASS" else "no idea"
            results.append(
                CellResult(
                    length=length,
                    depth=depth,
                    trial=trial,
                    outcome=outcome,
                    needle_value="7391",
                    answer=answer,
                    prompt_tokens_planned=length,
                    prompt_tokens_served=None if outcome == "CLAMPED" else length,
                    prompt_n=None if outcome == "CLAMPED" else 1000,
                    cache_n=None if outcome == "CLAMPED" else length - 1000,
                    prompt_ms=None if outcome == "CLAMPED" else 2000.0,
                    factor=factor[length],
                    profile=f"p{length}",
                )
            )
    return path


def test_grid_is_the_seeds_format_exactly(tmp_path: Path) -> None:
    df = load_cells(write_run(tmp_path / "results.jsonl"))
    assert grid_markdown(df) == (
        "length 0% 25% 50% 75% 100% factor\n"
        "4096 PASS 1/2 FAIL 1/1,TIMEOUT PASS native\n"
        "12288 PASS - CONTEXT_ERROR - CLAMPED 1.5x YaRN\n"
    )


@pytest.mark.parametrize(
    ("outcomes", "label"),
    [
        ([], "-"),
        (["PASS"], "PASS"),
        (["FAIL", "FAIL", "FAIL"], "FAIL"),
        (["PASS", "FAIL", "PASS"], "2/3"),
        (["TIMEOUT", "TIMEOUT"], "TIMEOUT"),
        (["CRASH", "PASS", "CLAMPED"], "1/1,CLAMPED,CRASH"),  # never-answered trials are not in n
        (["PASS", "FAIL", "TRUNCATED"], "1/3,TRUNCATED"),  # a truncated answer is in n, and named
        (["TRUNCATED", "PASS", "TIMEOUT"], "1/2,TRUNCATED,TIMEOUT"),
    ],
)
def test_cell_label_rule(outcomes: list[str], label: str) -> None:
    assert cell_label(outcomes) == label


def test_render_writes_every_file_from_the_jsonl(tmp_path: Path) -> None:
    results = write_run(tmp_path / "results.jsonl")
    paths = render_report(results, tmp_path / "out")

    assert paths.grid_md.read_text() == paths.grid_markdown == grid_markdown(load_cells(results))
    cells = pd.read_csv(paths.cells_csv)
    assert len(cells) == 16 and {"length", "depth", "trial", "outcome", "answer", "factor"} <= set(cells.columns)

    summary = json.loads(paths.summary_json.read_text())
    assert summary["cells"] == 16
    assert summary["outcomes"]["PASS"] == 8 and summary["outcomes"]["CLAMPED"] == 2
    assert summary["outcomes"]["TRUNCATED"] == 0
    assert summary["per_length"]["12288"] == {"PASS": 2, "CONTEXT_ERROR": 2, "CLAMPED": 2}
    assert summary["prefill"]["prompt_tokens_computed"] == 14 * 1000
    assert summary["prefill"]["cache_tokens_reused"] == 10 * 3096 + 4 * 11288
    assert summary["fingerprint"] == FINGERPRINT

    assert paths.heatmap_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    html = paths.report_html.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; 7391" in html
    assert "data:image/png;base64," in html and "src=\"http" not in html  # self-contained
    assert "1/1,TIMEOUT" in html


def test_committed_v1_file_renders(tmp_path: Path) -> None:
    paths = render_report(FIXTURES / "results-v1.jsonl", tmp_path)
    assert paths.grid_markdown == (
        "length 0% 50% 100% factor\n"
        "2048 PASS FAIL PASS native\n"
        "12288 PASS - TRUNCATED 1.5x YaRN\n"
        "16384 - CLAMPED - 2x YaRN\n"
    )


def test_niah_report_cli_rerenders_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "results.jsonl")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("length 0% 25% 50% 75% 100% factor\n4096 PASS 1/2 FAIL 1/1,TIMEOUT PASS native\n")
    for name in ("grid.md", "cells.csv", "summary.json", "heatmap.png", "report.html"):
        assert (tmp_path / name).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no results.jsonl in"),
        (b"", "not a niah results file"),
        (b"\x00\x01garbage\n", "line 1 is not a niah results record"),
    ],
)
def test_niah_report_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "results.jsonl").write_bytes(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("niah: error: ") and message in err


def test_report_per_task_with_the_lengths_interval(tmp_path: Path) -> None:
    """Several tasks: a grid per task, summary.json rows per task and length with the ends of the
    length's confidence sequence (stats.confidence_sequence) and its decision, the same as the
    verdict's, mean scores, the planted pieces as JSON in cells.csv."""
    from niah.publish.stats import confidence_sequence

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    piece = {"text": "t", "value": "1", "role": "target", "depth": 50.0, "token_offset": 9, "tokens": 3, "depth_actual": 49.0}
    for trial, (single, multi) in enumerate([("PASS", 1.0), ("PASS", 0.5), ("PASS", 1.0)]):
        results.append(CellResult(2048, 50.0, trial, single, score=1.0, factor="native", planted=(piece,)))
        results.append(CellResult(2048, 50.0, trial, "PASS" if multi == 1.0 else "FAIL", task="multiquery:2",
                                  score=multi, factor="native", planted=(piece, piece)))
    results.append(CellResult(4096, 50.0, 0, "CLAMPED", task="multiquery:2", factor="native"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == (
        "task single\nlength 50% factor\n2048 PASS native\n\n"
        "task multiquery:2\nlength 50% factor\n2048 2/3 native\n4096 CLAMPED native\n"
    )
    summary = json.loads(paths.summary_json.read_text())
    row = summary["tasks"]["multiquery:2"]["per_length"][0]
    low, high = confidence_sequence([1.0, 0.0, 1.0])
    assert (row["passes"], row["answered"], row["low"], row["high"]) == (2, 3, round(low, 4), round(high, 4))
    (judged, _) = summary["tasks"]["multiquery:2"]["verdict"]["lengths"]
    assert (judged["low"], judged["high"], judged["decision"]) == (row["low"], row["high"], row["decision"])
    assert summary["tasks"]["multiquery:2"]["verdict"]["interval"] == "95% confidence sequence"
    assert row["mean_score"] == round(2.5 / 3, 4)
    assert summary["tasks"]["multiquery:2"]["per_length"][1]["answered"] == 0  # CLAMPED was never answered
    assert summary["tasks"]["single"]["cells"][0]["label"] == "PASS"
    cells = pd.read_csv(paths.cells_csv)
    assert json.loads(cells["planted"].dropna().iloc[0])[0]["token_offset"] == 9
    assert paths.heatmap_png.read_bytes().startswith(b"\x89PNG")
    assert "multiquery:2" in paths.report_html.read_text()


def test_truncated_answers_count_in_one_denominator_everywhere(tmp_path: Path) -> None:
    """3/3 PASS at native and PASS, PASS, TRUNCATED beyond: the grid's k/n, summary.json's rows and the
    card's per-length table all say 2 of 3 (not 2/2, better than native), TRUNCATED named beside it."""
    from niah.publish.card import CARD_NAME

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    for trial, outcome in enumerate(["PASS", "PASS", "PASS"]):
        results.append(CellResult(4096, 50.0, trial, outcome, factor="native", profile="p"))
    for trial, outcome in enumerate(["PASS", "TRUNCATED", "PASS"]):
        results.append(CellResult(8192, 50.0, trial, outcome, factor="2x YaRN", profile="p"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == "length 50% factor\n4096 PASS native\n8192 2/3,TRUNCATED 2x YaRN\n"
    rows = {r["length"]: r for r in paths.summary["tasks"]["single"]["per_length"]}
    assert (rows[8192]["passes"], rows[8192]["answered"], rows[8192]["pass_rate"]) == (2, 3, 0.6667)
    assert rows[8192]["other"] == "TRUNCATED:1" and rows[8192]["high"] < 1.0
    cell = paths.summary["tasks"]["single"]["cells"][1]
    assert (cell["passes"], cell["answered"], cell["label"]) == (2, 3, "2/3,TRUNCATED")
    card = (tmp_path / CARD_NAME).read_text()
    assert "| 8,192 | 2x YaRN | 3 | 2/3 | 67% (4.8%–99.8%) | undecided | TRUNCATED 1 |" in card


def test_wrong_key_answers_are_named_and_count_as_not_retrieved(tmp_path: Path) -> None:
    """A multikey answer holding a distractor's value: its own name in the grid, the per-length table,
    summary.json's outcomes and the card, and in the denominator as not passed."""
    from niah.publish.card import CARD_NAME

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    for trial, outcome in enumerate(["PASS", "WRONG_KEY", "PASS"]):
        results.append(CellResult(4096, 50.0, trial, outcome, task="multikey:4", factor="native", profile="p"))
    results.append(CellResult(4096, 0.0, 0, "WRONG_KEY", task="multikey:4", factor="native", profile="p"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == "task multikey:4\nlength 0% 50% factor\n4096 WRONG_KEY 2/3,WRONG_KEY native\n"
    assert paths.summary["outcomes"]["WRONG_KEY"] == 2
    (row,) = paths.summary["tasks"]["multikey:4"]["per_length"]
    assert (row["passes"], row["answered"], row["other"]) == (2, 4, "WRONG_KEY:2")
    card = (tmp_path / CARD_NAME).read_text()
    assert "| 4,096 | native | 4 | 2/4 | 50% (3.0%–97.0%) | undecided | WRONG_KEY 2 |" in card
    assert "`WRONG_KEY`: the answer held a value planted for another key" in card
    assert cell_label(["WRONG_KEY", "FAIL"]) == "0/2,WRONG_KEY"


class PageText(HTMLParser):
    """A report page read as a person sees it: its whole text, the text outside code, answers and
    styles, and each table as rows of cell texts (header row first)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.prose: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.sources: list[str] = []
        self._hidden: list[str] = []
        self._in_cell = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.sources += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag in ("style", "code", "pre", "script") or "answer" in (found.get("class") or ""):
            self._hidden.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = self._in_cell and tag not in ("td", "th")
        if self._hidden and self._hidden[-1] == tag:
            self._hidden.pop()

    def handle_data(self, data: str) -> None:
        if self._hidden[:1] != ["style"]:
            self.text.append(data)
        if not self._hidden:
            self.prose.append(data)
        if self._in_cell:
            self.tables[-1][-1][-1] += data

    def words(self) -> str:
        return " ".join("".join(self.text).split())


def check_page_reads_for_people(html: str, card: str, summary: dict) -> PageText:
    """The page holds the card's verdicts, grids and tables word for word, the run's figures from
    summary.json formatted for people, one cells-table row per cell in people's numbers, and no
    None, NaN or raw float outside code and answers."""
    page = PageText(html)
    words = page.words()
    for verdict in re.findall(r"^\*\*(.+)\*\*$", card, flags=re.MULTILINE):
        assert verdict.replace("`", "") in words
    for grid in re.findall(r"```text\n(.*?)```", card, flags=re.DOTALL):
        assert grid in "".join(page.text)
    card_tables = [[[c.strip().replace("`", "") for c in line.strip().strip("|").split(" | ")]
                    for i, line in enumerate(block.splitlines()) if i != 1]
                   for block in re.findall(r"(?:^\|.*\n)+", card, flags=re.MULTILINE)]
    *card_like, cells = page.tables
    assert sorted(card_like) == sorted(card_tables)
    prefill = summary["prefill"]
    for figure in (f"{summary['cells']:,} cells", f"{prefill['prompt_tokens_computed']:,} prompt tokens computed",
                   f"{prefill['cache_tokens_reused']:,} tokens", f"{duration(summary['wall_s'])} time in requests",
                   *([f"niah expected {prefill['cache_tokens_reusable']:,}"] if prefill.get("cache_tokens_reusable") else []),
                   *(f"{o} {n:,}" for o, n in summary["outcomes"].items() if n)):
        assert figure in words, figure
    head, *rows = cells
    assert len(rows) == summary["cells"]
    numeric = [i for i, h in enumerate(head) if h in ("length", "depth", "needle at", "prompt tokens", "from cache",
                                                      "prefill", "answer tokens", "wall")]
    assert len(numeric) == 8
    for row in rows:
        assert row[head.index("outcome")] in OUTCOMES
        assert all(FOR_PEOPLE.match(row[i]) for i in numeric), row
    assert not RAW.findall(" ".join(page.prose))
    assert "reusable" not in words  # the server may reuse a few tokens more than niah's count: not a bound
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in page.sources), page.sources  # self-contained
    assert "<script" not in html and "url(" not in html and "@import" not in html
    return page


def test_report_page_reads_for_people(tmp_path: Path) -> None:
    paths = render_report(write_run(tmp_path / "results.jsonl"), tmp_path)
    page = check_page_reads_for_people(paths.report_html.read_text(), (tmp_path / "card.md").read_text(), paths.summary)
    cells = page.tables[-1]
    assert cells[1][:4] == ["4,096", "0%", "-", "0"] and "2.0 s" in cells[1] and "3,096" in cells[1]
    clamped = next(r for r in cells if "CLAMPED" in r)
    assert clamped[cells[0].index("prompt tokens")] == "-" and clamped[cells[0].index("prefill")] == "-"


@pytest.mark.parametrize("report", COMMITTED)
def test_committed_report_page_reads_for_people(report: str) -> None:
    folder = REPORTS / report
    check_page_reads_for_people((folder / "report.html").read_text(encoding="utf-8"),
                                (folder / "card.md").read_text(encoding="utf-8"),
                                json.loads((folder / "summary.json").read_text(encoding="utf-8")))


def find_chromium() -> str:
    """Chromium's binary: NIAH_CHROMIUM when set, else `chromium` or `chromium-browser` on PATH."""
    names = [os.environ["NIAH_CHROMIUM"]] if os.environ.get("NIAH_CHROMIUM") else ["chromium", "chromium-browser"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise NiahError(f"no Chromium: {' or '.join(names)} is not an executable (NIAH_CHROMIUM names the binary)")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a new empty profile, offline in all but name, logging the page's console."""
    binary = need(find_chromium, BROWSER_HINT)
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars", "--force-color-profile=srgb",
             "--enable-logging=stderr", "--v=0", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )


@pytest.mark.parametrize("report", COMMITTED)
def test_committed_report_page_renders_in_chromium(report: str, tmp_path: Path) -> None:
    """The page renders to PNG without an error or a console message, with the heatmap's colours."""
    shot = tmp_path / "page.png"
    result = chromium("--window-size=1280,2400", f"--screenshot={shot}", (REPORTS / report / "report.html").as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
    assert "CONSOLE" not in result.stderr, result.stderr[-3000:]
    pixels = np.round(imread(shot)[..., :3] * 255)
    assert pixels.shape[:2] == (2400, 1280)
    summary = json.loads((REPORTS / report / "summary.json").read_text(encoding="utf-8"))
    for outcome in (o for o, n in summary["outcomes"].items() if n):
        painted = np.abs(pixels - np.array(to_rgb(COLOURS[outcome])) * 255).max(axis=-1) <= 2
        assert tall_patches(painted) > 100, f"no {outcome} square of the heatmap on the page"


def tall_patches(mask: np.ndarray, height: int = 40) -> int:
    """How many pixels of `mask` start a column of `height` set pixels: a heatmap square has many, a
    coloured badge or grid label (under 20 pixels tall) none."""
    runs = np.vstack([np.zeros((1, mask.shape[1]), dtype=int), np.cumsum(mask, axis=0)])
    return int(((runs[height:] - runs[:-height]) == height).sum())


@pytest.mark.parametrize("report", COMMITTED)
def test_committed_report_page_text_in_chromium(report: str) -> None:
    """What Chromium builds from the page holds the verdicts, grids, tables and figures of the card."""
    folder = REPORTS / report
    result = chromium("--dump-dom", (folder / "report.html").as_uri())
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-3000:]
    page = check_page_reads_for_people(result.stdout, (folder / "card.md").read_text(encoding="utf-8"),
                                       json.loads((folder / "summary.json").read_text(encoding="utf-8")))
    assert "Needle in a haystack: SmolLM2-135M-Instruct.Q4_1.gguf" in page.words()
