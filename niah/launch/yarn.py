"""YaRN arithmetic as llama-server does it: the training context it recomputes from `--rope-scale S
--yarn-orig-ctx N` (in float32, truncated: it caps every slot at that), the smallest S that reaches a
target, and the factor label the seed's tables use. Used by profiles, preflight and endpoints."""

from __future__ import annotations

import struct
from decimal import ROUND_CEILING, Decimal

RATIO_DECIMALS = 4
"""A chosen rope scale has at most this many decimals."""


def factor_label(context: int, native: int) -> str:
    """Per-slot context ÷ native, as the seed writes it: `native`, `1.5x YaRN`, `3.85x YaRN`."""
    if context <= native:
        return "native"
    ratio = f"{context / native:.2f}".rstrip("0").rstrip(".")
    return f"{ratio}x YaRN"


def _f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def yarn_n_ctx_train(native: int, rope_scale: str) -> int:
    """The training context llama-server recomputes for `--rope-scale S --yarn-orig-ctx native`.

    It parses S into a float, stores freq_scale = 1/S, and sets n_ctx_train to
    native / freq_scale truncated, all in float32.
    """
    freq_scale = _f32(1.0 / _f32(float(rope_scale)))
    return int(_f32(native / freq_scale))


def choose_rope_scale(target: int, native: int) -> str:
    """Smallest S with four decimals (ratio rounded up) whose recomputed context reaches `target`."""
    step = Decimal(1).scaleb(-RATIO_DECIMALS)
    scale = (Decimal(target) / Decimal(native)).quantize(step, rounding=ROUND_CEILING)
    while yarn_n_ctx_train(native, str(scale)) < target:
        scale += step
    return format(scale.normalize(), "f")
