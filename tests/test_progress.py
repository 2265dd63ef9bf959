"""The ETA's expectation of computed prefill under prefix reuse."""

from __future__ import annotations

from niah.cells import plan_cells
from niah.progress import expected_prefill


def test_descending_depths_expect_only_the_tail_after_the_first_cell() -> None:
    cells = plan_cells(((1000, (0.0, 50.0, 100.0)), (2000, (50.0,))), trials=1)
    assert expected_prefill(cells) == [1000, 500, 1000, 2000]
