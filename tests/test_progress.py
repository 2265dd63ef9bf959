"""The ETA's expectation of computed prefill under prefix reuse."""

from __future__ import annotations

import io

from niah.cells import plan_cells
from niah.run.progress import RunProgress, expected_prefill


def test_each_cell_expects_to_compute_all_but_what_it_shares_with_the_cell_before() -> None:
    cells = plan_cells(((1000, (0.0, 50.0, 100.0)), (2000, (50.0,))), trials=1)
    assert [(c.length, c.depth) for c in cells] == [(1000, 0.0), (1000, 50.0), (1000, 100.0), (2000, 50.0)]
    assert expected_prefill(cells) == [1000, 1000, 500, 1000]  # L=2000 reuses L=1000's haystack up to 1000
    assert expected_prefill(cells, {1000: "native", 2000: "yarn"})[-1] == 2000  # another launch: nothing


def test_resumed_cells_leave_the_eta_and_the_rate() -> None:
    """What the user sees: resumed cells already counted on the bar, one line per finished cell,
    and no stale prefill ETA once the last cell ends."""
    cells = plan_cells(((1000, (0.0, 50.0, 100.0)),), trials=1)
    screen = io.StringIO()
    progress = RunProgress(cells, stream=screen, delay_s=0)
    assert progress.tokens_left == 2500
    progress.skip(cells[:2])
    progress.skip(cells[:1])  # a cell skipped twice counts once
    assert progress.tokens_left == 500
    assert " 2/3 " in screen.getvalue().splitlines()[-1].split("\r")[-1]
    progress.start_cell(cells[2])
    progress.prefill({"total": 1000, "cache": 0, "processed": 500, "time_ms": 1000})
    assert "prefill 500/1,000 tok, 500 t/s, ETA 0:00:01" in screen.getvalue()  # 500 of this cell left
    progress.end_cell("PASS", computed_tokens=1000, prompt_ms=2000)
    progress.close()
    shown = screen.getvalue().replace("\r", "\n").splitlines()
    assert "L=1,000 D=100% t0: PASS (" in screen.getvalue()
    assert [line for line in shown if " 3/3 " in line][-1].rstrip().endswith("ETA 0:00:00]")


def test_two_cells_in_flight_on_two_servers_and_a_crash_retried_elsewhere() -> None:
    cells = plan_cells(((1000, (50.0,)), (2000, (50.0,))), trials=1)
    screen = io.StringIO()
    progress = RunProgress(cells, stream=screen, delay_s=0)
    progress.start_cell(cells[0], "http://a:8080")
    progress.start_cell(cells[1], "http://b:8080")
    progress.end_cell("CRASH", cell=cells[0], again=True)  # goes back to the queue: not done
    assert progress.tokens_left == 1000  # the 1,000 cell is queued again (the 2,000 one is in flight)
    progress.start_cell(cells[0], "http://b:8080")
    progress.end_cell("PASS", cell=cells[1])
    progress.end_cell("PASS", cell=cells[0])
    progress.close()
    text = screen.getvalue()
    assert "L=1,000 D=50% t0 @ http://a:8080: CRASH (" in text and "to be retried)" in text
    assert "L=2,000 D=50% t0 @ http://b:8080: PASS (" in text
    assert " 2/2 " in text.replace("\r", "\n").splitlines()[-1] and " 3/2 " not in text
