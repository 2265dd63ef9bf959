"""The server API key: from a flag, else from $NIAH_API_KEY; never written to results, logs or reports."""

from __future__ import annotations

import os

API_KEY_ENV = "NIAH_API_KEY"


def api_key(flag: str | None = None) -> str | None:
    """`flag` when given, else $NIAH_API_KEY; None when neither is set."""
    return flag or os.environ.get(API_KEY_ENV) or None
