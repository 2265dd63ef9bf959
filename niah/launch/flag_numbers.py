"""Numbers as llama-server reads its flags, so a profile means what the server will do: integers
with std::stoi (a 32-bit int, ASCII digits, the rest of the text ignored), decimals with std::stof
(a 32-bit float). A profile value the two languages would read differently (`1_000`: Python 1000,
llama.cpp 1) or that the server cannot hold is refused with one line naming it."""

from __future__ import annotations

import re

from niah.errors import NiahError

INT_MAX = 2**31 - 1
"""The largest integer llama-server takes for a flag (std::stoi, a 32-bit int)."""
UINT32_MAX = 2**32 - 1
"""llama.cpp counts context cells (n_ctx, the training context it recomputes for YaRN) in 32 bits."""
FLOAT32_RANGE = (1.2e-38, 1e38)
"""Positive numbers std::stof reads as written (a 32-bit float), with room for a sum of a few."""
_PLAIN_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A number Python's float() and std::stof read alike: no `_`, `inf`, `nan`, hex or spaces."""
_FLOAT32_ONE = 1 + 2**-24
"""A 32-bit float rounds every number from 1 to this to 1 (no stretch at all)."""
_PLAIN_INT = re.compile(r"[0-9]+")
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


class LaunchOutOfRange(NiahError):
    """A launch whose numbers llama-server cannot hold: bad input even where a launch that merely
    cannot be sized yet (no native context known) is only a note."""


def stoi(text: str) -> int | None:
    """An integer flag as std::stoi reads it (spaces, a sign, ASCII digits, the rest ignored); None
    where it refuses (no digits, beyond a 32-bit int)."""
    match = _STOI.match(text)
    number = int(match.group(1)) if match else None
    return number if number is not None and -INT_MAX - 1 <= number <= INT_MAX else None


def is_plain_decimal(text: str) -> bool:
    """True when Python's float() and llama-server's std::stof read `text` as the same number."""
    return bool(_PLAIN_DECIMAL.fullmatch(text))


def rope_scale_text(where: str, value: object) -> str:
    """A profile's `rope_scale` as the `--rope-scale` text: a plain decimal above 1 as a 32-bit float,
    at most INT_MAX (no launch needs more: -c is at most that, a native context at least 1)."""
    text = str(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
    if is_plain_decimal(text) and _FLOAT32_ONE < float(text) <= INT_MAX:
        return text
    raise NiahError(
        f"{where}: rope_scale must be a number above 1 and at most {INT_MAX}, written plainly as llama-server "
        f"reads it (a 32-bit float; e.g. 4 or \"3.8531\", no _, inf or hex), not {value!r}"
    )


def gpu_layers_text(where: str, value: object) -> str:
    """A profile's `gpu_layers` as the `-ngl` text: `auto`, `all`, or a layer count."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if text in ("auto", "all") or (_PLAIN_INT.fullmatch(text) and int(text) <= INT_MAX):
        return text
    raise NiahError(f"{where}: gpu_layers must be \"auto\", \"all\" or a layer count from 0 to {INT_MAX}, not {value!r}")


def check_launch_numbers(name: str, ctx_size: int, served_train: int | None) -> None:
    """The `-c` of a launch and the training context llama.cpp recomputes for it fit its counters."""
    if ctx_size > INT_MAX:
        raise LaunchOutOfRange(
            f"profile {name}: -c {ctx_size:,} (every slot's context and answer) is more than llama-server "
            f"takes ({INT_MAX:,}): lower context or parallel"
        )
    if served_train is not None and served_train > UINT32_MAX:
        raise LaunchOutOfRange(
            f"profile {name}: its rope_scale stretches the native context to {served_train:,} tokens, "
            f"beyond llama.cpp's 32-bit count ({UINT32_MAX:,}): lower rope_scale"
        )
