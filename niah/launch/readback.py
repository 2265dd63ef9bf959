"""YaRN read-back: the rope configuration llama.cpp itself uses for a launch, taken from its own log
lines (`llama-fit-params -v` on the launch's flags, or a server log at `-lv 4` or `-v`).

llama.cpp prints the file's rope (print_info: `rope scaling`, `freq_scale_train`, `n_ctx_orig_yarn`,
`n_ctx_train`), the context's (llama_context: `freq_base`, `freq_scale`, `n_ctx_seq`) and, when
YaRN flags change the stretch, `n_ctx_train adjusted to N` (= original context ÷ freq_scale). The
scaling type it uses and the YaRN original context are printed only through that adjustment; the
extrapolation and attention factors not at all (but for models with a YaRN log multiplier): those
fields are derived by llama.cpp's own rule (src/llama-context.cpp) from the printed values and the
flags, and named in `derived`.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from niah.launch.gguf_meta import GGUFFacts
from niah.launch.memory import FIT_PARAMS, fit_params_args

# The lines llama.cpp 11434 prints about rope (src/llama-model.cpp print_info, src/llama-context.cpp).
_LINES = {
    "n_ctx_train_file": re.compile(r"print_info: n_ctx_train\s+= (\d+)"),
    "file_scaling": re.compile(r"print_info: rope scaling\s+= (\w+)"),
    "freq_base_train": re.compile(r"print_info: freq_base_train\s+= ([\d.eE+-]+)"),
    "freq_scale_train": re.compile(r"print_info: freq_scale_train\s+= ([\d.eE+-]+)"),
    "file_n_ctx_orig_yarn": re.compile(r"print_info: n_ctx_orig_yarn\s+= (\d+)"),
    "yarn_log_mul": re.compile(r"print_info: rope_yarn_log_mul\s+= ([\d.eE+-]+)"),
    "n_ctx_seq": re.compile(r"llama_context: n_ctx_seq\s+= (\d+)"),
    "freq_base": re.compile(r"llama_context: freq_base\s+= ([\d.eE+-]+)"),
    "freq_scale": re.compile(r"llama_context: freq_scale\s+= ([\d.eE+-]+)"),
    "readjusting": re.compile(r"custom YaRN scaling detected, re-adjusting n_ctx_train\((\d+)\)"),
    "n_ctx_train_adjusted": re.compile(r"n_ctx_train adjusted to (\d+)"),
    "attn_factor": re.compile(r"setting new yarn_attn_factor = ([\d.eE+-]+)"),
    "override": re.compile(r"Using metadata override \(\s*\w+\) '([^']+)' = .*?(\S+)$"),
    "build": re.compile(r"^version: (.+)$"),
}
_ROPE_FLAGS = {
    "--rope-scaling": "rope_scaling", "--rope-scale": "rope_scale", "--rope-freq-scale": "rope_freq_scale",
    "--rope-freq-base": "rope_freq_base", "--yarn-orig-ctx": "yarn_orig_ctx",
    "--yarn-ext-factor": "yarn_ext_factor", "--yarn-attn-factor": "yarn_attn_factor",
    "--yarn-beta-fast": "yarn_beta_fast", "--yarn-beta-slow": "yarn_beta_slow",
}
ORIG_CTX_TOLERANCE = 1e-5
"""Relative precision of an original context recomputed from `n_ctx_train adjusted to` × the
printed freq_scale (printed with 6 significant digits)."""


def rope_flags(argv: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The rope flags of a llama-server argv (the last one of each wins, as in llama.cpp)."""
    found: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag in _ROPE_FLAGS:
            found[_ROPE_FLAGS[flag]] = value
    return found


@dataclass(frozen=True)
class RopeReadback:
    """The rope configuration llama.cpp uses for one launch, as it printed it."""

    source: str
    """`llama-fit-params` (run on the launch's flags) or `server log`."""
    scaling_type: str | None
    """The scaling llama.cpp applies: `yarn`, `linear` or `none`."""
    freq_base: float | None
    freq_scale: float | None
    """1 / the stretch llama.cpp applies."""
    n_ctx_orig_yarn: int | None
    """The original context YaRN stretches."""
    n_ctx_train: int | None
    """The training context each slot is capped at, after llama.cpp's own re-adjustment."""
    readjusted: bool
    """llama.cpp re-adjusted n_ctx_train from the YaRN flags itself (this build needs no --override-kv)."""
    n_ctx_seq: int | None
    """Per-slot context of the context llama.cpp made (before the server's cap at n_ctx_train)."""
    ext_factor: float | None
    attn_factor: float | None
    file_scaling: str | None
    """The file's own scaling type (print_info, after metadata overrides)."""
    file_freq_scale: float | None
    file_n_ctx_orig_yarn: int | None
    n_ctx_train_file: int | None
    """The header's context length after metadata overrides, before any re-adjustment."""
    overrides: tuple[str, ...] = ()
    """Metadata overrides llama.cpp applied (`key = value`)."""
    build: str | None = None
    derived: tuple[str, ...] = ()
    """Fields llama.cpp does not print; derived by its rule from printed values and the flags."""
    lines: tuple[str, ...] = ()
    """The log lines the read-back comes from, verbatim."""

    @property
    def stretch(self) -> float | None:
        """1 / freq_scale: the factor positions are stretched by."""
        return 1.0 / self.freq_scale if self.freq_scale else None

    @property
    def served(self) -> int | None:
        """Per-slot context llama-server serves: the context's, capped at the training context."""
        sizes = [v for v in (self.n_ctx_seq, self.n_ctx_train) if v]
        return min(sizes) if sizes else None

    def summary(self) -> str:
        """One line: `yarn, freq_scale 0.5 (×2), original context 8,192, n_ctx_train 16,384 (re-adjusted by llama.cpp)`."""
        parts = [self.scaling_type or "scaling type unknown"]
        if self.freq_scale is not None:
            parts.append(f"freq_scale {self.freq_scale:g} (×{self.stretch:.4g})")
        if self.freq_base is not None:
            parts.append(f"freq_base {self.freq_base:g}")
        if self.n_ctx_orig_yarn is not None and self.scaling_type == "yarn":
            parts.append(f"original context {self.n_ctx_orig_yarn:,}")
        if self.ext_factor is not None:
            parts.append(f"ext_factor {self.ext_factor:g}")
        if self.attn_factor is not None:
            parts.append(f"attn_factor {self.attn_factor:.4g}")
        if self.n_ctx_train is not None:
            how = " (re-adjusted by llama.cpp)" if self.readjusted else ""
            parts.append(f"n_ctx_train {self.n_ctx_train:,}{how}")
        build = f", build {self.build}" if self.build else ""
        derived = f"; {', '.join(self.derived)} by llama.cpp's rule" if self.derived else ""
        return f"{', '.join(parts)} [{self.source}{build}{derived}]"

    def as_json(self) -> dict[str, Any]:
        """The read-back for results.jsonl's header (without the verbatim lines)."""
        data = asdict(self)
        data.pop("lines")
        return data


def _last(text: str) -> dict[str, re.Match[str]]:
    found: dict[str, re.Match[str]] = {}
    for line in text.splitlines():
        for name, pattern in _LINES.items():
            if match := pattern.search(line):
                found[name] = match
    return found


def parse_readback(text: str, argv: list[str] | tuple[str, ...], facts: GGUFFacts | None, source: str) -> RopeReadback:
    """The read-back from llama.cpp's log `text` for a launch with flags `argv`; ValueError when the
    text holds no rope lines (a server log at the default verbosity prints none)."""
    found = _last(text)
    if "freq_scale" not in found:
        raise ValueError(f"the {source} holds no rope lines (llama.cpp prints them at -lv 4 or -v)")

    def num(name: str) -> float | None:
        return float(found[name].group(1)) if name in found else None

    def integer(name: str) -> int | None:
        return int(found[name].group(1)) if name in found else None

    flags = rope_flags(argv)
    derived: list[str] = []
    freq_scale = num("freq_scale")
    adjusted = integer("n_ctx_train_adjusted")
    file_scaling = found["file_scaling"].group(1) if "file_scaling" in found else None
    if adjusted is not None:
        scaling = "yarn"  # llama.cpp re-adjusts only for YaRN
    else:
        scaling = flags.get("rope_scaling") or file_scaling
        derived.append("scaling type")
    orig = _original_context(adjusted, freq_scale, flags, integer("file_n_ctx_orig_yarn"))
    if adjusted is None and scaling == "yarn":
        derived.append("original context")
    ext = float(flags["yarn_ext_factor"]) if "yarn_ext_factor" in flags else (1.0 if scaling == "yarn" else 0.0)
    derived.append("ext_factor")
    attn = num("attn_factor")
    if attn is None:
        attn = _attn_factor(ext, flags, facts)
        derived.append("attn_factor")
    lines = tuple(m.string.strip() for m in found.values())
    return RopeReadback(
        source=source,
        scaling_type=scaling,
        freq_base=num("freq_base"),
        freq_scale=freq_scale,
        n_ctx_orig_yarn=orig,
        n_ctx_train=adjusted if adjusted is not None else integer("n_ctx_train_file"),
        readjusted=adjusted is not None,
        n_ctx_seq=integer("n_ctx_seq"),
        ext_factor=ext,
        attn_factor=attn,
        file_scaling=file_scaling,
        file_freq_scale=num("freq_scale_train"),
        file_n_ctx_orig_yarn=integer("file_n_ctx_orig_yarn"),
        n_ctx_train_file=integer("n_ctx_train_file"),
        overrides=tuple(f"{m.group(1)} = {m.group(2)}" for line in text.splitlines() if (m := _LINES["override"].search(line))),
        build=found["build"].group(1).strip() if "build" in found else None,
        derived=tuple(derived),
        lines=lines,
    )


def _original_context(adjusted: int | None, freq_scale: float | None, flags: dict[str, str], printed: int | None) -> int | None:
    """The YaRN original context llama.cpp used: `--yarn-orig-ctx` when given, else the file's
    (printed); with a re-adjustment, the candidate its `n_ctx_train adjusted to` agrees with, or that
    number × freq_scale when neither does."""
    flag = int(flags["yarn_orig_ctx"]) if flags.get("yarn_orig_ctx", "").isdigit() and int(flags["yarn_orig_ctx"]) else None
    candidate = flag or printed
    if adjusted is None or not freq_scale:
        return candidate
    recomputed = adjusted * freq_scale
    if candidate and abs(candidate - recomputed) <= max(1.0, candidate * ORIG_CTX_TOLERANCE):
        return candidate
    return round(recomputed)


def _attn_factor(ext_factor: float, flags: dict[str, str], facts: GGUFFacts | None) -> float:
    """llama.cpp's yarn_attn_factor: with YaRN extrapolation it cancels the magnitude ggml's rope adds
    (1 + 0.1 ln s) so that the net is 1 (the flag is ignored), times the file's `rope.scaling.attn_factor`."""
    file_factor = dict(facts.rope_scaling).get("attn_factor", 1.0) if facts else 1.0
    base = 1.0 if ext_factor != 0 else float(flags.get("yarn_attn_factor", 1.0))
    return base * float(file_factor)  # type: ignore[arg-type]


def fit_params_readback(tool: Path, model: Path, argv: list[str] | tuple[str, ...], facts: GGUFFacts | None,
                        timeout_s: float = 120.0) -> RopeReadback:
    """Run llama-fit-params on `model` with the launch's flags (no weights are loaded) and read the
    rope back from its lines; ValueError says why it gave nothing."""
    command = [str(tool), "-m", str(model), *fit_params_args(argv), "-v"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        version = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"{FIT_PARAMS} did not run: {exc}") from None
    log = done.stdout + done.stderr
    if "freq_scale" not in log and done.returncode != 0:
        errors = [line for line in log.splitlines() if "error" in line.lower()]
        raise ValueError(f"{FIT_PARAMS} exited {done.returncode}: {(errors or ['no message'])[-1].strip()}")
    return parse_readback(log + "\n" + version.stdout + version.stderr, argv, facts, FIT_PARAMS)
