"""Preflight: prove that every slot of a llama-server has the context a test needs, before any cell.

llama-server never fails a launch whose context it clamps: it caps each slot at the model's
training context (recomputed from the YaRN flags) and logs one line. Preflight reads what the
server serves (/props, /v1/models, /slots), the launch log when niah started the server, and the
model's native context from its GGUF header when the file is reachable, and names the likely
cause of a shortfall with the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.launch.gguf_meta import GGUFFacts, read_gguf_facts
from niah.launch.yarn import choose_rope_scale

if TYPE_CHECKING:
    from niah.launch.session import ServerSession

# Log lines of llama-server (and libllama) that explain a per-slot context.
LOG_PATTERNS = {
    "capping": re.compile(r"slot context \((\d+)\) exceeds the training context of the model \((\d+)\)"),
    "n_ctx_slot": re.compile(r"n_ctx_slot = (\d+)|new slot.*n_ctx(?:_slot)? = (\d+)"),
    "adjusted": re.compile(r"n_ctx_train adjusted to (\d+)"),
    "unified_cap": re.compile(r"capping per-slot context \((\d+)\) to --kv-unified-per-slot \((\d+)\)"),
    "kv_unified": re.compile(r"kv_unified = '(true|false)'"),
    "command": re.compile(r"^# niah launched: (.*)$"),
}
ROPE_SCALE = re.compile(r"--rope-scale (\S+)")
YARN_ORIG_CTX = re.compile(r"--yarn-orig-ctx (\d+)")


@dataclass(frozen=True)
class PreflightReport:
    """What a server really serves per slot, compared with what the test needs."""

    verdict: str
    """`OK` when every slot has at least `needed` tokens, else `CLAMPED`."""
    served_n_ctx: int
    """Per-slot context actually served (the smallest slot's, /props and /slots)."""
    needed: int
    """Context the test needs: prompt length + answer budget."""
    n_ctx_train: int | None
    """Training context the server caps slots at (/v1/models; after any YaRN recomputation)."""
    slots: int
    """Server slots (/props total_slots)."""
    cause: str | None
    """Most likely cause of a shortfall, with the fix (None when OK)."""
    props: dict
    """The raw /props answer, for the run fingerprint."""
    native_context: int | None = None
    """The model's native context from its GGUF header (None when the file is not readable here)."""
    evidence: tuple[str, ...] = ()
    """Log lines that explain the served context (managed launches)."""
    model_facts: GGUFFacts | None = None
    """Header facts of the GGUF the server loaded, when that file is readable here."""

    def summary(self) -> str:
        """One line: verdict and the numbers."""
        parts = [
            f"per-slot context {self.served_n_ctx:,}",
            f"needed {self.needed:,}",
            f"{self.slots} slot{'s' if self.slots != 1 else ''}",
        ]
        if self.n_ctx_train is not None:
            parts.append(f"training context {self.n_ctx_train:,}")
        if self.native_context is not None:
            parts.append(f"native {self.native_context:,}")
        line = f"{self.verdict}: " + ", ".join(parts)
        return line + (f" — {self.cause}" if self.cause else "")


def read_log(log_path: Path | None) -> dict[str, tuple[str, ...]]:
    """The last match of each LOG_PATTERNS entry in the launch log, with the line it came from."""
    found: dict[str, tuple[str, ...]] = {}
    if log_path is None:
        return found
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        for name, pattern in LOG_PATTERNS.items():
            match = pattern.search(line)
            if match:
                found[name] = (line.strip(), *(g for g in match.groups() if g is not None))
    return found


def _model_facts(props: dict) -> GGUFFacts | None:
    """Header facts of the GGUF the server loaded, when that file is readable from here."""
    model_path = props.get("model_path")
    if not isinstance(model_path, str) or not Path(model_path).is_file():
        return None
    try:
        return read_gguf_facts(model_path)
    except NiahError:
        return None


def diagnose(
    served: int,
    needed: int,
    slots: int,
    train: int | None,
    native: int | None,
    arch: str | None,
    log: dict[str, tuple[str, ...]],
) -> str:
    """The most likely reason `served` < `needed`, and the fix."""
    if "capping" in log:
        train = int(log["capping"][2])
    if "unified_cap" in log and int(log["unified_cap"][2]) == served:
        return f"--kv-unified-per-slot {served:,} caps every slot; raise it to at least {needed:,}"
    command = log["command"][1] if "command" in log else ""
    orig_match = YARN_ORIG_CTX.search(command)
    if orig_match:  # the launch's own YaRN base wins over the GGUF's context length
        native = int(orig_match.group(1))
    if train is not None and needed > train:
        if native is not None and train > native:
            scale_match = ROPE_SCALE.search(command)
            scale = scale_match.group(1) if scale_match else f"~{train / native:.4f}"
            return (
                f"rope-scale too small: {scale} × {native:,} = {train:,} < {needed:,}; "
                f"use --rope-scale {choose_rope_scale(needed, native)} (llama-server caps each slot at "
                "native × rope-scale, truncated)"
            )
        base = native or train
        return (
            f"the server caps each slot at the model's training context {train:,}; beyond it launch YaRN: "
            f"--rope-scaling yarn --rope-scale {choose_rope_scale(needed, base)} --yarn-orig-ctx {base} "
            f"--override-kv {arch or 'ARCH'}.context_length=int:{needed} (see niah profile show)"
        )
    unified = log.get("kv_unified", ("", "false"))[1] == "true"
    if slots > 1 and not unified and served * slots >= needed:
        return (
            f"-c is divided among {slots} slots ({served:,} each); "
            f"use -c {needed * slots} (or --parallel 1, or --kv-unified)"
        )
    total = needed if unified or slots == 1 else needed * slots
    return f"-c is too small: launch with -c {total}" + (f" ({slots} slots × {needed:,})" if total != needed else "")


def preflight(session: ServerSession, needed: int, log_path: Path | None = None) -> PreflightReport:
    """Read /props, /v1/models, /slots (and the launch log: the session's own for a managed launch)
    and decide OK or CLAMPED for `needed`."""
    url = session.url
    log_path = log_path or session.log_path
    props = session.props()
    models = session.get("/v1/models", required=False)
    slot_list = session.get("/slots", required=False)
    settings = props.get("default_generation_settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("n_ctx"), int):
        raise NiahError(f"{url}/props has no default_generation_settings.n_ctx: is it llama-server?", EXIT_LAUNCH_INVALID)
    served = int(settings["n_ctx"])
    if isinstance(slot_list, list):
        slot_ctx = [s["n_ctx"] for s in slot_list if isinstance(s, dict) and isinstance(s.get("n_ctx"), int)]
        served = min([served, *slot_ctx])
    slots = int(props.get("total_slots") or (len(slot_list) if isinstance(slot_list, list) else 1))
    train = None
    if isinstance(models, dict) and isinstance(models.get("data"), list) and models["data"]:
        meta = models["data"][0].get("meta") or {} if isinstance(models["data"][0], dict) else {}
        train = meta.get("n_ctx_train") if isinstance(meta.get("n_ctx_train"), int) else None
    facts = _model_facts(props)
    log = read_log(log_path)
    ok = served >= needed
    return PreflightReport(
        verdict="OK" if ok else "CLAMPED",
        served_n_ctx=served,
        needed=needed,
        n_ctx_train=train,
        slots=slots,
        cause=None if ok else diagnose(
            served, needed, slots, train, facts.native_context if facts else None, facts.arch if facts else None, log
        ),
        props=props,
        native_context=facts.native_context if facts else None,
        evidence=tuple(v[0] for k, v in log.items() if k in ("capping", "n_ctx_slot", "adjusted", "unified_cap")),
        model_facts=facts,
    )
