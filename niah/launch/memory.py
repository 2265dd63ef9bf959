"""Memory of a launch: niah's formula (KV cache and recurrent state), or llama.cpp's own projection.

`llama-fit-params` (shipped beside llama-server) loads only the model's metadata with the launch's
flags and prints what llama.cpp would allocate: each KV cache, the recurrent state, the compute
buffers and the total per device. The formula reproduces the KV and recurrent arithmetic from the
GGUF header; compute buffers depend on the graph, batch sizes and backend, so only the tool knows them.
"""

from __future__ import annotations

import itertools
import math
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from niah.launch.gguf_meta import GGUFFacts

# Bytes per element of each KV cache type llama-server accepts (block bytes, block elements).
CACHE_TYPES = {
    "f32": (4, 1), "f16": (2, 1), "bf16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32),
    "q4_1": (20, 32), "iq4_nl": (18, 32), "q5_0": (22, 32), "q5_1": (24, 32),
}
# KV shape assumed when only --arch is known (no GGUF): attention layers, KV heads, K and V size.
# qwen35: the seed's Qwen3.6 launch, 24 full-attention layers with 4 KV heads of 256.
REFERENCE_SHAPES = {"qwen35": (24, 4, 256, 256)}
# Recurrent state assumed with it: Gated DeltaNet layers (three per attention layer), conv kernel,
# key/value head size, key heads, value heads (Qwen3.5/3.6's linear-attention layout).
REFERENCE_RECURRENT = {"qwen35": (72, 4, 128, 16, 32)}
# Architectures whose recurrent state keeps rollback snapshots for speculative drafts (n_rs_seq).
RS_ROLLBACK_ARCHS = frozenset({"qwen35", "qwen35moe", "lfm2", "nemotron_h", "nemotron_h_moe"})
SWA_PAD = 256  # llama.cpp pads the sliding-window cache to a multiple of 256 cells
DEFAULT_UBATCH = 512
DEFAULT_CTX_CHECKPOINTS = 32  # llama-server's --ctx-checkpoints default
DEFAULT_CACHE_RAM_MIB = 8192
"""llama-server's --cache-ram default (common.h `cache_ram_mib`): host memory its prompt cache may
fill with saved slot states (-1 no limit, 0 off)."""
KV_PAD = 256  # llama.cpp pads the context, and without a unified KV each slot's share, up to this
MIB = 2**20
FIT_PARAMS = "llama-fit-params"
# llama-server options llama-fit-params refuses: (flag, takes a value).
_SERVER_ONLY = {"--jinja": False, "--no-jinja": False, "--kv-unified": False, "--spec-type": True,
                "--spec-draft-n-max": True, "--image-min-tokens": True}


@dataclass(frozen=True)
class DeviceUse:
    """One row of llama.cpp's memory breakdown (MiB, as it prints them)."""

    name: str
    self_mib: int
    model_mib: int
    context_mib: int
    compute_mib: int
    total_mib: int | None = None
    free_mib: int | None = None


@dataclass(frozen=True)
class MemoryEstimate:
    """What a launch costs: KV cache, recurrent state, compute buffers and weights, in bytes."""

    kv_bytes: int
    """All KV caches (full and sliding-window layers, all slots)."""
    recurrent_bytes: int
    """Recurrent state (conv + SSM/DeltaNet state) of every recurrent layer and slot."""
    weights_bytes: int | None
    """The model's tensors (the file size for the formula)."""
    compute_bytes: int | None
    """Compute buffers; None from the formula (only llama.cpp's projection knows them)."""
    source: str
    """`formula` or `llama-fit-params`."""
    kv_cells: int
    """KV cells of the full-attention layers, all slots together."""
    kv_bytes_per_token: float | None = None
    """Formula only: KV bytes one cell costs over the full-attention layers."""
    shape: str = ""
    """How the figures were arrived at (layers, heads, cache types), one line."""
    total_reported: int | None = None
    """llama-fit-params' own total (`projected to use`), when it printed one."""
    devices: tuple[DeviceUse, ...] = ()
    """llama-fit-params' per-device view."""
    projection: tuple[str, ...] = ()
    """llama-fit-params' `projected to use ...` lines, verbatim."""
    note: str = ""
    """Why the formula stands in, when llama-fit-params was wanted but could not answer."""
    checkpoint_bytes: int = 0
    """Host memory the context checkpoints of a hybrid model may take: up to --ctx-checkpoints
    (default 32) copies of one slot's recurrent state per slot; niah's reuse primers create them."""
    prompt_cache_bytes: int = 0
    """Host memory llama-server's prompt cache may fill with saved slot states: --cache-ram (default
    8,192 MiB); with no limit (-1) about one more copy of the KV, recurrent state and checkpoints."""
    prompt_cache_mib: int = DEFAULT_CACHE_RAM_MIB
    """The launch's --cache-ram."""

    @property
    def total_bytes(self) -> int | None:
        if self.total_reported is not None:
            return self.total_reported
        if self.weights_bytes is None:
            return None
        return self.weights_bytes + self.kv_bytes + self.recurrent_bytes + (self.compute_bytes or 0)

    def lines(self) -> list[str]:
        """Human-readable lines, one per figure."""
        out = [f"source:        {self.source}{f' ({self.note})' if self.note else ''}"]
        if self.kv_bytes_per_token is not None:
            out.append(f"KV per token:  {self.kv_bytes_per_token:,.0f} B  ({self.shape})")
        elif self.shape:
            out.append(f"shape:         {self.shape}")
        out.append(f"KV total:      {gb(self.kv_bytes)}  ({self.kv_cells:,} cells)")
        if self.recurrent_bytes:
            out.append(f"recurrent:     {gb(self.recurrent_bytes)}")
        if self.checkpoint_bytes:
            out.append(f"checkpoints:   up to {gb(self.checkpoint_bytes)} of host memory (context checkpoints "
                       "for prefix reuse, not in the total)")
        if self.prompt_cache_bytes:
            limit = "no limit (-1)" if self.prompt_cache_mib < 0 else f"{self.prompt_cache_mib:,} MiB"
            out.append(f"prompt cache:  up to {gb(self.prompt_cache_bytes)} of host memory (--cache-ram {limit}; "
                       f"default {DEFAULT_CACHE_RAM_MIB:,}, 0 turns it off; not in the total)")
        if self.compute_bytes is not None:
            out.append(f"compute:       {gb(self.compute_bytes)}")
        if self.weights_bytes is None:
            out.append("weights:       unknown (give --model GGUF)")
        else:
            how = "file size" if self.source == "formula" else "llama.cpp"
            out.append(f"weights:       {gb(self.weights_bytes)}  ({how})")
            rest = "  + compute buffers" if self.compute_bytes is None else ""
            out.append(f"total:         {gb(self.total_bytes or 0)}{rest}")
        for device in self.devices:
            out.append(
                f"device {device.name}: {device.self_mib:,} MiB = model {device.model_mib:,} + context "
                f"{device.context_mib:,} + compute {device.compute_mib:,}"
                + (f" (of {device.total_mib:,} MiB, {device.free_mib:,} free)" if device.total_mib else "")
            )
        out += list(self.projection)
        return out

    def as_json(self) -> dict[str, object]:
        return {
            "kv_bytes": self.kv_bytes,
            "recurrent_bytes": self.recurrent_bytes,
            "compute_bytes": self.compute_bytes,
            "weights_bytes": self.weights_bytes,
            "total_bytes": self.total_bytes,
            "source": self.source,
            "kv_cells": self.kv_cells,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "shape": self.shape,
            "devices": [vars(d) for d in self.devices],
            "projection": list(self.projection),
            "note": self.note,
            "checkpoint_bytes": self.checkpoint_bytes,
            "prompt_cache_bytes": self.prompt_cache_bytes,
            "prompt_cache_mib": self.prompt_cache_mib,
        }


def prompt_cache_bytes(limit_mib: int, state_bytes: int) -> int:
    """Host memory the prompt cache may take: its --cache-ram limit; with no limit the server keeps at
    most n_ctx tokens of saved prompts (server_prompt_cache), about one more copy of the state."""
    if limit_mib < 0:
        return state_bytes
    return limit_mib * MIB


def gb(n_bytes: int) -> str:
    """Bytes as GB and GiB (MB and MiB below a gigabyte)."""
    if n_bytes < 1e9:
        return f"{n_bytes / 1e6:,.1f} MB ({n_bytes / MIB:,.1f} MiB)"
    return f"{n_bytes / 1e9:,.1f} GB ({n_bytes / 2**30:,.1f} GiB)"


def _row_bytes(cache_type: str, values: int) -> float:
    size, block = CACHE_TYPES[cache_type]
    return values * size / block


def pad(n: int, to: int) -> int:
    return -(-n // to) * to


def per_slot_context(ctx_size: int, parallel: int, kv_unified: bool) -> int:
    """The per-slot context llama.cpp makes of `-c ctx_size --parallel N` (llama_context's constructor):
    n_ctx padded up to 256; without a unified KV each slot gets n_ctx // N, padded up to 256 again,
    and the cache holds that many cells per slot (n_ctx grows to slots × per-slot; the server's log
    calls it "rounding down")."""
    n_ctx = pad(ctx_size, KV_PAD)
    return n_ctx if kv_unified else pad(n_ctx // parallel, KV_PAD)


def cache_ram_mib(args: list[str] | tuple[str, ...]) -> int:
    """`--cache-ram N` (or `-cram N`) from a launch's flags, else llama-server's default."""
    for flag, value in itertools.pairwise(args):
        if flag in ("--cache-ram", "-cram") and value.lstrip("-").isdigit():
            return int(value)
    return DEFAULT_CACHE_RAM_MIB


@dataclass(frozen=True)
class LaunchShape:
    """The launch facts the formula needs (from a LaunchProfile resolved against a model)."""

    n_ctx: int
    """`-c` padded as llama.cpp pads it."""
    parallel: int
    kv_unified: bool
    cache_type_k: str
    cache_type_v: str
    ubatch: int | None = None
    mtp_draft_n_max: int | None = None
    swa_full: bool = False
    """`--swa-full`: sliding-window layers keep every cell, like full attention."""
    ctx_checkpoints: int = DEFAULT_CTX_CHECKPOINTS
    """`--ctx-checkpoints`: context checkpoints each slot keeps at most."""
    cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB
    """`--cache-ram`: the host prompt cache's limit in MiB (-1 no limit, 0 off)."""


def formula(launch: LaunchShape, facts: GGUFFacts | None, arch: str | None) -> MemoryEstimate | None:
    """KV (full and sliding-window layers) and recurrent state from the header, as llama.cpp sizes them."""
    streams = 1 if launch.kv_unified else launch.parallel
    cells = per_slot_context(launch.n_ctx, launch.parallel, launch.kv_unified) * streams  # all streams together
    k_type, v_type = launch.cache_type_k, launch.cache_type_v
    recurrent_layers = 0
    if facts is not None and facts.attention_layers and facts.key_length:
        swa = set() if launch.swa_full else set(facts.swa_layers)
        per_stream = cells // streams
        swa_cells = min(per_stream, pad(
            (facts.sliding_window or 0) * (launch.parallel if launch.kv_unified else 1)
            + (launch.ubatch or DEFAULT_UBATCH), SWA_PAD)) * streams
        kv = per_token = 0.0
        for layer in facts.attention_layers:
            heads = facts.head_count_kv[layer]
            row = _row_bytes(k_type, heads * facts.key_length) + _row_bytes(v_type, heads * (facts.value_length or 0))
            kv += row * (swa_cells if layer in swa else cells)
            per_token += 0 if layer in swa else row
        if launch.mtp_draft_n_max and facts.nextn_predict_layers:
            # the MTP draft context keeps its own KV cache for the MTP block(s), as many cells
            for layer in range(facts.block_count - facts.nextn_predict_layers, facts.block_count):
                heads = facts.head_count_kv[layer]
                kv += cells * (_row_bytes(k_type, heads * facts.key_length)
                               + _row_bytes(v_type, heads * (facts.value_length or 0)))
        kv_heads = sorted({facts.head_count_kv[i] for i in facts.attention_layers})
        shape = (
            f"{len(facts.attention_layers)} attention layers of {facts.block_count}"
            + (f" ({len(swa)} with a {facts.sliding_window}-token window, {swa_cells:,} cells)" if swa else "")
            + f" × {'/'.join(map(str, kv_heads))} KV heads × K {facts.key_length} + V {facts.value_length}"
        )
        state = facts.recurrent_state_values
        recurrent_layers = len(facts.recurrent_layers)
        if recurrent_layers:
            every = f", full attention every {facts.full_attention_interval}" if facts.full_attention_interval else ""
            shape += f", {recurrent_layers} recurrent layers of {state:,} state values{every}"
    elif arch in REFERENCE_SHAPES:
        layers, heads, k_len, v_len = REFERENCE_SHAPES[arch]
        per_token = layers * (_row_bytes(k_type, heads * k_len) + _row_bytes(v_type, heads * v_len))
        kv = per_token * cells
        shape = f"assumed for {arch}: {layers} attention layers × {heads} KV heads × K {k_len} + V {v_len}"
        recurrent_layers, conv, head, k_heads, v_heads = REFERENCE_RECURRENT.get(arch, (0, 0, 0, 0, 0))
        inner = head * v_heads
        state = (conv - 1) * (inner + 2 * k_heads * head) + head * inner
        if recurrent_layers:
            shape += f", {recurrent_layers} Gated DeltaNet layers ({k_heads}/{v_heads} heads of {head})"
    else:
        return None
    snapshots = launch.mtp_draft_n_max if launch.mtp_draft_n_max and (arch in RS_ROLLBACK_ARCHS) else 0
    rows = max(1, launch.parallel) * (1 + snapshots)
    shape += f"; K {k_type}, V {v_type}"
    recurrent = recurrent_layers * state * 4 * rows  # f32 conv and recurrent state per row
    checkpoints = recurrent_layers * state * 4 * launch.ctx_checkpoints * max(1, launch.parallel)
    return MemoryEstimate(
        kv_bytes=math.ceil(kv),
        recurrent_bytes=recurrent,
        weights_bytes=facts.file_size if facts else None,
        compute_bytes=None,
        source="formula",
        kv_cells=cells,
        kv_bytes_per_token=per_token,
        shape=shape,
        checkpoint_bytes=checkpoints,
        prompt_cache_bytes=prompt_cache_bytes(launch.cache_ram_mib, math.ceil(kv) + recurrent + checkpoints),
        prompt_cache_mib=launch.cache_ram_mib,
    )


# ---- llama-fit-params ---------------------------------------------------------------------------

_SIZE = re.compile(r"(llama_kv_cache|llama_memory_recurrent): size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"compute buffer size =\s*([\d.]+) MiB")
_ROW = re.compile(r"memory_breakdown_print: \|\s+-\s+(.+?)\s+\|(.*)\|\s*$")
_SELF = re.compile(r"(\d+) =\s+(\d+) \+\s+(\d+) \+\s+(\d+)")
_TOTAL_FREE = re.compile(r"^\s*(\d+) =\s+(\d+) \+\s*\(")
_PROJECTED = re.compile(r"(projected to use (\d+) MiB of .*)$")


def fit_params_args(server_args: list[str] | tuple[str, ...]) -> list[str]:
    """The launch's llama-server flags that llama-fit-params accepts (server-only options dropped).

    Without --kv-unified the same cells are split into per-slot streams: the totals are unchanged.
    """
    out: list[str] = []
    skip = False
    for arg in server_args:
        if skip:
            skip = False
            continue
        if arg in _SERVER_ONLY:
            skip = _SERVER_ONLY[arg]
            continue
        out.append(arg)
    return out


def find_fit_params(server_binary: Path) -> Path | None:
    """llama-fit-params beside the llama-server binary, when it is there."""
    candidate = server_binary.with_name(FIT_PARAMS)
    return candidate if candidate.is_file() else None


def parse_fit_params(log: str) -> MemoryEstimate:
    """llama.cpp's projection from llama-fit-params -v output; ValueError when it printed none."""
    kv = recurrent = 0.0
    compute = 0.0
    cells = 0
    devices: list[DeviceUse] = []
    projection: list[str] = []
    projected = 0
    for line in log.splitlines():
        if match := _SIZE.search(line):
            if match.group(1) == "llama_kv_cache":
                kv += float(match.group(2))
                cells_match = re.search(r"\(\s*(\d+) cells,\s+\d+ layers,\s+\d+/(\d+) seqs", line)
                if cells_match and "SWA" not in line:
                    cells = max(cells, int(cells_match.group(1)) * int(cells_match.group(2)))
            else:
                recurrent += float(match.group(2))
        elif match := _COMPUTE.search(line):
            compute += float(match.group(1))
        elif match := _ROW.search(line):
            own = _SELF.search(match.group(2))
            if own:
                total_free = _TOTAL_FREE.match(match.group(2))
                devices.append(DeviceUse(
                    match.group(1), *(int(own.group(i)) for i in range(1, 5)),
                    total_mib=int(total_free.group(1)) if total_free else None,
                    free_mib=int(total_free.group(2)) if total_free else None,
                ))
        elif match := _PROJECTED.search(line):
            projection.append(match.group(1))
            projected += int(match.group(2))
    if not devices and not projection:
        raise ValueError("no memory projection in its output")
    return MemoryEstimate(
        kv_bytes=round(kv * MIB),
        recurrent_bytes=round(recurrent * MIB),
        weights_bytes=sum(d.model_mib for d in devices) * MIB,
        compute_bytes=round(compute * MIB),
        source=FIT_PARAMS,
        kv_cells=cells,
        total_reported=(projected or sum(d.self_mib for d in devices)) * MIB,
        devices=tuple(devices),
        projection=tuple(projection),
    )


def fit_params(binary: Path, model: Path, server_args: list[str] | tuple[str, ...],
               timeout_s: float = 120.0) -> MemoryEstimate:
    """Run llama-fit-params on `model` with the launch's flags; ValueError says why it gave nothing."""
    argv = [str(binary), "-m", str(model), *fit_params_args(server_args), "-v"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"{FIT_PARAMS} did not run: {exc}") from None
    log = done.stdout + done.stderr
    if done.returncode != 0:
        errors = [line for line in log.splitlines() if "error" in line.lower()]
        raise ValueError(f"{FIT_PARAMS} exited {done.returncode}: {(errors or ['no message'])[-1].strip()}")
    return parse_fit_params(log)


def project(formula_estimate: MemoryEstimate | None, model: Path | None, server_binary: Path | None,
            server_args: list[str] | tuple[str, ...]) -> MemoryEstimate | None:
    """llama.cpp's projection when the model file and llama-fit-params are there, else the formula
    (with a note saying why, when the projection was possible in principle)."""
    if model is None:
        return formula_estimate
    tool = find_fit_params(server_binary) if server_binary else None
    if tool is None:
        note = f"no {FIT_PARAMS} beside llama-server"
        return replace(formula_estimate, note=note) if formula_estimate else None
    try:
        projected = fit_params(tool, model, server_args)
    except ValueError as exc:
        return replace(formula_estimate, note=str(exc)) if formula_estimate else None
    notes = []
    if "--kv-unified" in server_args:
        notes.append("it cannot take --kv-unified: per-slot caches, same totals but for sliding windows")
    if "--spec-type" in server_args:
        notes.append("it cannot take --spec-type: MTP's draft KV and recurrent snapshots are not in it")
    if formula_estimate is None:
        limit = cache_ram_mib(server_args)
        return replace(projected, note="; ".join(notes), prompt_cache_mib=limit,
                       prompt_cache_bytes=prompt_cache_bytes(limit, projected.kv_bytes + projected.recurrent_bytes))
    return replace(projected, shape=formula_estimate.shape, note="; ".join(notes),
                   checkpoint_bytes=formula_estimate.checkpoint_bytes,
                   prompt_cache_bytes=formula_estimate.prompt_cache_bytes,
                   prompt_cache_mib=formula_estimate.prompt_cache_mib)
