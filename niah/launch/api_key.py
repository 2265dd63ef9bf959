"""The server API key: from a flag, else from $NIAH_API_KEY; never written to results, logs or reports."""

from __future__ import annotations

import os

from niah.errors import NiahError

API_KEY_ENV = "NIAH_API_KEY"


def api_key(flag: str | None = None) -> str | None:
    """`flag` when given, else $NIAH_API_KEY; None when neither is set. A key an HTTP header cannot
    carry (a character outside printable ASCII) is bad input; the message never shows the key."""
    key = given_key(flag)
    if key is not None and not all(" " <= char <= "~" for char in key):
        where = "--api-key" if flag else f"${API_KEY_ENV}"
        raise NiahError(f"the API key in {where} holds a character an HTTP header cannot carry (only printable ASCII)")
    return key


def given_key(flag: str | None = None) -> str | None:
    """`flag` when given, else $NIAH_API_KEY, unchecked: what to mask, even a key no request can carry."""
    return flag or os.environ.get(API_KEY_ENV) or None
