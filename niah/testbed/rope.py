"""Copies of a GGUF whose header carries rope-scaling keys (type, factor, original context), written
with the `gguf` package, so every YaRN misconfiguration can be tried on real llama.cpp: a file that
stretches itself launched as native, flags that replace the file's own stretch, a "-1M" header."""

from __future__ import annotations

from pathlib import Path

from niah.errors import NiahError, replacing

ROPE_KINDS = ("yarn", "linear", "none")


def write_rope_copy(
    source: Path, dest: Path, kind: str, factor: float, original_context: int, context_length: int | None = None
) -> Path:
    """Write `source` to `dest` with `ARCH.rope.scaling.{type,factor,original_context_length}` set
    (and `ARCH.context_length` when given); tensors and every other key are copied as they are."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    if kind not in ROPE_KINDS:
        raise NiahError(f"rope scaling type {kind!r} is not one of {', '.join(ROPE_KINDS)}")
    try:
        reader = GGUFReader(str(source))
    except (OSError, ValueError) as exc:
        raise NiahError(f"cannot read {source} as GGUF: {exc}") from None
    arch = str(reader.get_field("general.architecture").contents())  # type: ignore[union-attr]
    replaced = {
        f"{arch}.rope.scaling.type": (GGUFValueType.STRING, kind),
        f"{arch}.rope.scaling.factor": (GGUFValueType.FLOAT32, float(factor)),
        f"{arch}.rope.scaling.original_context_length": (GGUFValueType.UINT32, int(original_context)),
    }
    if context_length is not None:
        replaced[f"{arch}.context_length"] = (GGUFValueType.UINT32, int(context_length))
    with replacing(dest) as partial:
        writer = GGUFWriter(str(partial), arch, endianess=reader.endianess)
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture" or name in replaced:
                continue
            kind_of = field.types[0]
            sub = field.types[-1] if kind_of == GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), kind_of, sub_type=sub)
        for name, (kind_of, value) in replaced.items():
            writer.add_key_value(name, value, kind_of)
        for tensor in reader.tensors:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(tensor.data)
        writer.close()
    return dest
