"""The one error type niah raises for bad input or a broken launch; the CLI prints it as one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Exit codes of the `niah` command (DESIGN.md).
EXIT_OK = 0
EXIT_FAIL_CELLS = 1
EXIT_BAD_INPUT = 2
EXIT_LAUNCH_INVALID = 3
EXIT_NON_RETRIEVAL = 4
EXIT_ROPE_MISMATCH = 5


class NiahError(Exception):
    """A problem the user can fix; `exit_code` is what `niah` exits with."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def writing_in(folder: Path) -> Iterator[None]:
    """Files written in `folder` inside the block: an OSError (a full disk, a folder where a file
    goes, no permission) becomes one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise NiahError(f"cannot write {exc.filename or folder}: {exc.strerror or exc}") from None


@contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """A hidden partial file beside `dest` to write in the block, moved onto `dest` at its end, so a
    reader never sees half a file; an OSError is one line naming `dest`, and the partial is removed."""
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, dest)
    except OSError as exc:
        raise NiahError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
