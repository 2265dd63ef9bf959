"""Launch profiles: TOML files naming the longest prompt a launch tests, and the llama-server flags
that deliver it with room for the answer.

The one rule for what fits: a launch for a profile of context C serves, per slot, C plus the answer
budget of the run (32 tokens; 4,096 with thinking on; or --answer-budget), so a prompt of C tokens and
its whole answer fit. `niah launch`, `check`, `plan` and `run` all size the launch with `plan_launch`.

Beyond the model's native context a profile launches YaRN with a rope scale S chosen so that
llama-server's own arithmetic (it recomputes the training context as native ÷ (1/S) in float32
and caps every slot at it) lands on at least the target: a launch one token short is clamped.
A stretch is only made where the profile asks for one: a context within native whose answer budget
alone would need one is refused, and so is a scale below 1. The native context is the file's own
YaRN original context when its header carries rope-scaling keys, and a launch without YaRN turns the
file's own scaling off (`--rope-scaling none`), so a launch called native is native.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from niah.cells import ANSWER_BUDGET
from niah.data import data_dir
from niah.errors import NiahError
from niah.launch.architecture import SLIDING_WINDOW, reuse_kind
from niah.launch.flag_numbers import (
    INT_MAX,
    check_launch_numbers,
    gpu_layers_text,
    rope_scale_text,
    stoi,
)
from niah.launch.gguf_meta import GGUFFacts
from niah.launch.memory import (
    CACHE_TYPES,
    DEFAULT_CTX_CHECKPOINTS,
    LaunchShape,
    MemoryEstimate,
    cache_ram_mib,
    formula,
    pad,
    per_slot_context,
)
from niah.launch.rpc import check_rpc_address, check_tensor_split
from niah.launch.session import ServerSpec
from niah.launch.yarn import RopeIntent, choose_rope_scale, factor_label, yarn_n_ctx_train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KV_PAD = 256  # llama.cpp pads the context (and each slot's share) up to a multiple of 256


@dataclass(frozen=True)
class LaunchProfile:
    """A named llama-server launch: per-slot context, slots, KV cache types and server options."""

    name: str
    """Profile name (the TOML file's stem unless the file says otherwise)."""
    context: int
    """The longest prompt (in tokens) the launch tests; each slot gets this plus the answer budget."""
    parallel: int = 1
    """Server slots (`--parallel`)."""
    cache_type_k: str = "f16"
    """KV cache type for K (`--cache-type-k`)."""
    cache_type_v: str = "f16"
    """KV cache type for V (`--cache-type-v`)."""
    native_context: int | None = None
    """The model's native context when the profile is made for one model; else from the GGUF."""
    description: str = ""
    """One line for `niah profile list`."""
    rope_scaling: str = "auto"
    """`auto` (YaRN beyond native), `yarn`, or `none` (no scaling: the server caps at native)."""
    rope_scale: str | None = None
    """Explicit YaRN factor S; by default the smallest 4-decimal S that reaches the target."""
    kv_unified: bool = False
    """One KV buffer shared by all slots (`--kv-unified`); otherwise `-c` is divided among slots."""
    flash_attn: str | None = None
    """`on`, `off` or `auto` (`-fa`)."""
    gpu_layers: str | None = None
    """`-ngl`: a number, `all` or `auto`."""
    jinja: bool | None = None
    """`--jinja` / `--no-jinja`."""
    ubatch: int | None = None
    """Physical batch size (`-ub`)."""
    batch: int | None = None
    """Logical batch size (`-b`)."""
    threads: int | None = None
    """CPU threads (`-t`)."""
    mtp_draft_n_max: int | None = None
    """MTP speculative decoding: `--spec-type draft-mtp --spec-draft-n-max N`."""
    swa_full: bool | None = None
    """`--swa-full`: full-size caches for sliding-window layers, so a shared prompt prefix can be
    reused. Default: on for sliding-window models (niah.launch.architecture), off otherwise."""
    mmproj: str | None = None
    """Multimodal projector file (`--mmproj`)."""
    image_min_tokens: int | None = None
    """`--image-min-tokens`."""
    extra_args: tuple[str, ...] = ()
    """Further llama-server arguments, appended as given."""
    rpc: tuple[str, ...] = ()
    """rpc-server endpoints HOST:PORT lending their memory to the launch (`--rpc`); trusted networks only."""
    tensor_split: tuple[float, ...] = ()
    """Layer shares per device, RPC servers first (`--tensor-split`); default: by free memory."""
    devices: tuple[str, ...] = ()
    """`niah run --servers N`: launch n gets the n-th (`--device CUDA0`, or `CUDA_VISIBLE_DEVICES=0`)."""
    source: str = field(default="", compare=False)
    """Where the profile was loaded from."""

    def factor_label(self, native: int | None = None) -> str:
        """The seed's factor column for this profile: `native`, `1.5x YaRN`, `3.85x YaRN`."""
        native = self.native_context or native
        return factor_label(self.context, native) if native else "unknown"


@dataclass(frozen=True)
class LaunchPlan:
    """A profile resolved against a model: the flags and what llama-server should serve."""

    profile: LaunchProfile
    arch: str | None
    native_context: int | None
    args: tuple[str, ...]
    slot_context: int
    """Per-slot target: the profile's context plus the answer budget."""
    ctx_size: int
    """The `-c` value: all slots' cells unless the KV cache is unified."""
    rope_scale: str | None
    predicted_slot_context: int | None
    """Per-slot context llama-server's arithmetic yields (None when native is unknown)."""
    memory: MemoryEstimate | None
    intent: RopeIntent | None = None
    """The rope the launch means (None when the native context is unknown)."""


def _uses_yarn(profile: LaunchProfile, native: int | None, slot_context: int, answer_budget: int) -> bool:
    """Whether the launch stretches; a stretch the profile did not ask for is refused (NiahError)."""
    if profile.rope_scaling == "none":
        return False
    if profile.rope_scaling == "yarn" or profile.rope_scale:
        return True
    if native is None or slot_context <= native:
        return False
    if profile.context <= native:
        scale = choose_rope_scale(slot_context, native)
        raise NiahError(
            f"profile {profile.name}: prompts up to {profile.context:,} fit the native {native:,}, but "
            f"{profile.context:,} + {answer_budget:,} answer tokens need a YaRN stretch of {scale} nobody asked "
            f"for: set context = {native - answer_budget} to stay native, or rope_scaling = \"yarn\" to stretch on purpose"
        )
    return True


def _check_scale(profile: LaunchProfile, scale: str, native: int, slot_context: int) -> None:
    """A rope scale of 1 or below stretches nothing or compresses positions: refused."""
    if float(scale) <= 1.0:
        raise NiahError(
            f"profile {profile.name}: rope_scaling = \"yarn\" for {slot_context:,} tokens per slot within the "
            f"native {native:,} gives a rope scale of {scale} (freq_scale {1 / float(scale):.4g}: positions "
            f"squeezed, not stretched); drop rope_scaling, or raise context above {native:,}"
        )


def plan_launch(
    profile: LaunchProfile,
    facts: GGUFFacts | None,
    native_context: int | None = None,
    arch: str | None = None,
    answer_budget: int = ANSWER_BUDGET,
) -> LaunchPlan:
    """Resolve `profile` for a model (its GGUF facts, or `native_context` + `arch` standing in), each
    slot holding the profile's context plus `answer_budget` tokens."""
    model_native = (facts.native_context if facts else None) or native_context
    native = profile.native_context or model_native
    arch = (facts.arch if facts else None) or arch
    if model_native and profile.native_context and model_native != profile.native_context:
        where = facts.path if facts else "--native-context"
        raise NiahError(
            f"profile {profile.name} is made for a native context of {profile.native_context:,}, "
            f"but {where} says {model_native:,}: copy the profile and set native_context"
        )
    slot_context = profile.context + answer_budget
    ctx_size = slot_context if profile.kv_unified else slot_context * profile.parallel
    args = ["-c", str(ctx_size), "--parallel", str(profile.parallel)]
    if profile.kv_unified:
        args.append("--kv-unified")
    args += ["--cache-type-k", profile.cache_type_k, "--cache-type-v", profile.cache_type_v]
    rope_scale = None
    served_train = native
    file_rope = facts.file_rope if facts else None
    if _uses_yarn(profile, native, slot_context, answer_budget):
        if native is None or arch is None:
            raise NiahError(
                f"profile {profile.name} needs YaRN: give --model GGUF, or --native-context and --arch"
            )
        rope_scale = profile.rope_scale or choose_rope_scale(slot_context, native)
        _check_scale(profile, rope_scale, native, slot_context)
        served_train = yarn_n_ctx_train(native, rope_scale)
        # --override-kv is redundant on builds that re-adjust n_ctx_train from the YaRN flags (the
        # read-back shows which); older ones (the seed's) cap each slot at the header's value without it
        args += [
            "--override-kv", f"{arch}.context_length=int:{slot_context}",
            "--rope-scaling", "yarn", "--rope-scale", rope_scale, "--yarn-orig-ctx", str(native),
        ]
    elif file_rope is not None:  # the file would stretch itself: a launch without YaRN is native
        args += ["--rope-scaling", "none"]
        served_train = facts.context_length if facts else native
    # --swa-full makes a sliding-window model's prefix reusable (niah.launch.architecture); on by default for one
    swa_full = profile.swa_full if profile.swa_full is not None else reuse_kind(facts) == SLIDING_WINDOW
    if swa_full:
        args.append("--swa-full")
    args += _option_args(profile)
    n_ctx = pad(ctx_size, KV_PAD)
    per_slot = per_slot_context(ctx_size, profile.parallel, profile.kv_unified)
    check_launch_numbers(profile.name, ctx_size, served_train)
    predicted = min(per_slot, served_train) if served_train else None
    return LaunchPlan(
        profile=profile,
        arch=arch,
        native_context=native,
        args=tuple(args),
        slot_context=slot_context,
        ctx_size=ctx_size,
        rope_scale=rope_scale,
        predicted_slot_context=predicted,
        memory=estimate_memory(profile, facts, arch, n_ctx, swa_full),
        intent=RopeIntent(native, rope_scale, slot_context, f"profile {profile.name}", file_rope) if native else None,
    )


def server_args(
    profile: LaunchProfile,
    facts: GGUFFacts | None,
    native_context: int | None = None,
    arch: str | None = None,
    answer_budget: int = ANSWER_BUDGET,
) -> list[str]:
    """llama-server flags for `profile` (no binary, -m, --host or --port): for start_server()."""
    return list(plan_launch(profile, facts, native_context, arch, answer_budget).args)


def launch_spec(
    profile: LaunchProfile, facts: GGUFFacts | None, model: Path, log_dir: Path, *,
    answer_budget: int = ANSWER_BUDGET, name: str | None = None, **options: Any,
) -> ServerSpec:
    """niah's launch of `profile` serving `model`: its llama-server flags (server_args), named after
    the profile unless `name` is given, logging under `log_dir`; `options` are the rest of ServerSpec."""
    args = server_args(profile, facts, answer_budget=answer_budget)
    return ServerSpec(model=model, name=name or profile.name, args=tuple(args), log_dir=log_dir, **options)


def _option_args(profile: LaunchProfile) -> list[str]:
    args: list[str] = []
    if profile.flash_attn:
        args += ["-fa", profile.flash_attn]
    if profile.gpu_layers:
        args += ["-ngl", profile.gpu_layers]
    if profile.jinja is not None:
        args.append("--jinja" if profile.jinja else "--no-jinja")
    for flag, value in (("-ub", profile.ubatch), ("-b", profile.batch), ("-t", profile.threads)):
        if value is not None:
            args += [flag, str(value)]
    if profile.mtp_draft_n_max:
        args += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(profile.mtp_draft_n_max)]
    if profile.mmproj:
        args += ["--mmproj", profile.mmproj]
    if profile.image_min_tokens is not None:
        args += ["--image-min-tokens", str(profile.image_min_tokens)]
    if profile.rpc:
        args += ["--rpc", ",".join(profile.rpc)]
    if profile.tensor_split:
        args += ["--tensor-split", ",".join(f"{s:g}" for s in profile.tensor_split)]
    return args + list(profile.extra_args)


def estimate_memory(
    profile: LaunchProfile, facts: GGUFFacts | None, arch: str | None, n_ctx: int, swa_full: bool = False
) -> MemoryEstimate | None:
    """niah's formula for the launch: KV cache for `n_ctx` cells, recurrent state, and weights."""
    launch = LaunchShape(
        n_ctx=n_ctx, parallel=profile.parallel, kv_unified=profile.kv_unified,
        cache_type_k=profile.cache_type_k, cache_type_v=profile.cache_type_v,
        ubatch=profile.ubatch, mtp_draft_n_max=profile.mtp_draft_n_max, swa_full=swa_full,
        ctx_checkpoints=_ctx_checkpoints(profile.extra_args), cache_ram_mib=cache_ram_mib(profile.extra_args),
    )
    return formula(launch, facts, arch)


def _ctx_checkpoints(extra_args: tuple[str, ...]) -> int:
    """`--ctx-checkpoints N` from a profile's extra arguments, else llama-server's default."""
    for flag, value in itertools.pairwise(extra_args):
        if flag in ("--ctx-checkpoints", "-ctxcp", "--swa-checkpoints") and (number := stoi(value)) is not None:
            return max(number, 0)
    return DEFAULT_CTX_CHECKPOINTS


# ---- loading ----------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in fields(LaunchProfile) if f.name != "source"}
_REQUIRED = ("context",)
_CHOICES = {
    "cache_type_k": tuple(CACHE_TYPES),
    "cache_type_v": tuple(CACHE_TYPES),
    "rope_scaling": ("auto", "yarn", "none"),
    "flash_attn": ("on", "off", "auto"),
}
# Integer keys and their smallest allowed value.
_MINIMUM = {
    "context": 1, "parallel": 1, "native_context": 1, "ubatch": 1, "batch": 1, "threads": 1,
    "mtp_draft_n_max": 1, "image_min_tokens": 0,
}


def _check(where: str, data: dict[str, object]) -> dict[str, object]:
    """Validate raw TOML values and convert them to LaunchProfile field values."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise NiahError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    for key in _REQUIRED:
        if key not in data:
            raise NiahError(f"{where}: missing required key {key!r}")
    out: dict[str, object] = {}
    for key, value in data.items():
        if key in _MINIMUM:
            if isinstance(value, bool) or not isinstance(value, int) or not _MINIMUM[key] <= value <= INT_MAX:
                raise NiahError(f"{where}: {key} must be an integer ≥ {_MINIMUM[key]} and at most {INT_MAX}, not {value!r}")
        elif key in ("kv_unified", "jinja", "swa_full"):
            if not isinstance(value, bool):
                raise NiahError(f"{where}: {key} must be true or false, not {value!r}")
        elif key in ("extra_args", "rpc", "devices"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise NiahError(f"{where}: {key} must be a list of strings (none empty)")
            value = tuple(check_rpc_address(v, where) for v in value) if key == "rpc" else tuple(value)
        elif key == "tensor_split":
            value = check_tensor_split(value, where)
        elif key == "gpu_layers":
            value = gpu_layers_text(where, value)
        elif key == "rope_scale":
            value = rope_scale_text(where, value)
        elif not isinstance(value, str):
            raise NiahError(f"{where}: {key} must be a string, not {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise NiahError(f"{where}: {key} = {value!r} is not one of {', '.join(_CHOICES[key])}")
        out[key] = value
    if str(out.get("cache_type_v", "f16")) not in ("f32", "f16", "bf16") and out.get("flash_attn") == "off":
        raise NiahError(f"{where}: a quantized V cache needs flash attention (flash_attn = \"on\")")
    return out


def parse_profile(text: str, name: str, source: str = "") -> LaunchProfile:
    """A LaunchProfile from TOML text; errors name `source` and are NiahError (exit 2)."""
    where = f"launch profile {source or name}"
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: arrays nested without end
        raise NiahError(f"{where}: invalid TOML: {exc}") from None
    values = _check(where, data)
    values.setdefault("name", name)
    return LaunchProfile(source=source, **values)  # type: ignore[arg-type]


def load_profile(name_or_path: str) -> LaunchProfile:
    """A shipped profile by name (see `niah profile list`) or a profile from a .toml file."""
    candidate = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or candidate.parent != Path("."):
        path = candidate
    else:
        path = data_dir("launch_profiles") / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(p.name for p in list_profiles())
            raise NiahError(f"no launch profile {name_or_path!r} (shipped: {known}; or give a .toml path)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NiahError(f"cannot read launch profile {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_profile(text, path.stem, str(path))


def list_profiles() -> list[LaunchProfile]:
    """The shipped profiles, ordered by target context."""
    profiles = [load_profile(str(path)) for path in sorted(data_dir("launch_profiles").glob("*.toml"))]
    return sorted(profiles, key=lambda p: (p.native_context or 0, p.context, p.name))
