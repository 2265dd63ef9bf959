"""YaRN arithmetic as llama-server does it: the training context it recomputes from `--rope-scale S
--yarn-orig-ctx N` (in float32, truncated: it caps every slot at that), the smallest S that reaches a
target, the factor label the seed's tables use, and the intent a launch states (which stretch over
which original context) for the read-back to be checked against. Used by profiles, preflight,
read-back and endpoints."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from niah.launch.gguf_meta import FileRope

RATIO_DECIMALS = 4
"""A chosen rope scale has at most this many decimals."""


def factor_label(context: int, native: int) -> str:
    """Per-slot context ÷ native, as the seed writes it: `native`, `1.5x YaRN`, `3.85x YaRN`."""
    if context <= native:
        return "native"
    ratio = f"{context / native:.2f}".rstrip("0").rstrip(".")
    return f"{ratio}x YaRN"


def f32(value: float) -> float:
    """`value` rounded to float32, as llama.cpp stores it."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def freq_scale_of(rope_scale: str) -> float:
    """llama.cpp's freq_scale for `--rope-scale S`: 1 / stof(S), in float32."""
    return f32(1.0 / f32(float(rope_scale)))


def yarn_n_ctx_train(native: int, rope_scale: str) -> int:
    """The training context llama-server recomputes for `--rope-scale S --yarn-orig-ctx native`.

    It parses S into a float, stores freq_scale = 1/S, and sets n_ctx_train to
    native / freq_scale truncated, all in float32.
    """
    return int(f32(native / freq_scale_of(rope_scale)))


def choose_rope_scale(target: int, native: int) -> str:
    """Smallest S with four decimals (ratio rounded up) whose recomputed context reaches `target`."""
    step = Decimal(1).scaleb(-RATIO_DECIMALS)
    scale = (Decimal(target) / Decimal(native)).quantize(step, rounding=ROUND_CEILING)
    while yarn_n_ctx_train(native, str(scale)) < target:
        scale += step
    return format(scale.normalize(), "f")


@dataclass(frozen=True)
class RopeIntent:
    """What a launch means its rope to be: a YaRN stretch S over the model's native context, or
    none; checked against what llama.cpp reads back before any prefill."""

    native: int
    """The context YaRN stretches: the model's native one (the file's own original context when it
    carries YaRN keys)."""
    rope_scale: str | None
    """The stretch meant (`--rope-scale`), None for no stretch at all."""
    slot_context: int
    """Per-slot context the launch must serve."""
    origin: str
    """Who states the intent: `profile NAME`, or `the server's flags`."""
    file_rope: FileRope | None = None
    """The rope scaling the GGUF applies by itself, if any."""

    @property
    def factor(self) -> float:
        """The stretch as a number (1.0 for none)."""
        return float(self.rope_scale) if self.rope_scale else 1.0

    def describe(self) -> str:
        """`YaRN ×2 over 8,192` or `no stretch (native 8,192)`."""
        if self.rope_scale is None:
            return f"native {self.native:,}, no stretch"
        return f"YaRN ×{self.rope_scale} over {self.native:,}"
