"""What niah's published files say about the user's disk: file names only, never their folders."""

from __future__ import annotations

import re

_PATHLIKE = re.compile(r"[/\\]")


def file_names(text: str) -> str:
    """`text` with any path reduced to its file name (`/a/b/m.gguf` -> `m.gguf`; `k=/a/b` -> `k=b`).

    URLs (`scheme://...`) are left alone; nothing else with a slash survives.
    """
    if "://" in text or not _PATHLIKE.search(text):
        return text
    head, sep, tail = text.rpartition("=") if "=" in text else ("", "", text)
    if head and _PATHLIKE.search(head):
        head, sep, tail = "", "", text
    prefix = tail.split(":", 1)[0] + ":" if re.match(r"^[a-z]{2,}:", tail) else ""
    name = re.split(r"[/\\]", tail[len(prefix):].rstrip("/\\"))[-1]
    return f"{head}{sep}{prefix}{name}"
