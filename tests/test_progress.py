"""The ETA's expectation of computed prefill under prefix reuse."""

from __future__ import annotations

from niah.cells import plan_cells
from niah.progress import RunProgress, expected_prefill


def test_descending_depths_expect_only_the_tail_after_the_first_cell() -> None:
    cells = plan_cells(((1000, (0.0, 50.0, 100.0)), (2000, (50.0,))), trials=1)
    assert expected_prefill(cells) == [1000, 500, 1000, 2000]


def test_resumed_cells_leave_the_eta_and_the_rate() -> None:
    cells = plan_cells(((1000, (0.0, 50.0, 100.0)),), trials=1)
    progress = RunProgress(cells)
    assert progress.tokens_left == 2500
    progress.skip(cells[:2])
    progress.skip(cells[:1])  # a cell skipped twice counts once
    assert progress.tokens_left == 1000
    assert progress._bar.n == 2
    assert progress._bar.initial == 2
    progress.start_cell(cells[2])
    assert progress.tokens_left == 0
    progress.end_cell("PASS", computed_tokens=1000, prompt_ms=2000)
    assert progress._bar.postfix == "ETA 0:00:00"  # no stale prefill ETA once the last cell ends
    progress.close()
