"""The data shipped beside the code: the top-level `launch_profiles/` and `haystacks/` folders.

A wheel carries them as the data packages `niah.launch_profiles` and `niah.haystacks` (mapped in
pyproject.toml); a source checkout run without installing reads the folders themselves.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

SHIPPED = ("launch_profiles", "haystacks")


def data_dir(name: str) -> Path:
    """The folder of shipped data `name` (one of SHIPPED), installed or in the source tree."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped data folder {name!r}")
    spec = find_spec(f"niah.{name}")  # a data package without __init__.py: its first location wins
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / name
