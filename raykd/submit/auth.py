"""Ray token authentication for the Jobs HTTP API, from Ray's own environment variables.

Ray (2.59 and later) turns token authentication on by default for local clusters. The token
is looked up the way Ray looks it up: ``RAY_AUTH_TOKEN``, then the file named by
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``; ``RAY_AUTH_MODE=disabled`` sends none.
The token travels only in the ``Authorization`` header; it is never printed or stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from raykd.errors import UserError

DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")

HOW_TO = ("set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put the token in ~/.ray/auth_token "
          "(`ray get-auth-token` prints it on the head node)")


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` when a token is configured, else ``{}``.

    Like ``ray.init``, a token found in the default file is sent even when ``RAY_AUTH_MODE``
    is unset; a cluster without authentication ignores it.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return {}
    if mode not in ("", "token"):
        raise UserError(f"expected 'token' or 'disabled', got {mode!r}", key="RAY_AUTH_MODE")
    token = _find_token()
    if token is None and mode == "token":
        raise UserError(f"RAY_AUTH_MODE=token but no token was found: {HOW_TO}", key="RAY_AUTH_MODE")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _find_token() -> str | None:
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return value
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        # Ray treats an unreadable or empty token file as fatal rather than falling back.
        try:
            text = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise UserError(f"cannot read the token file: {err.strerror}", file=path, key="RAY_AUTH_TOKEN_PATH") from None
        if not text:
            raise UserError("the token file is empty", file=path, key="RAY_AUTH_TOKEN_PATH")
        return text
    default = DEFAULT_TOKEN_FILE.expanduser()
    try:
        return default.read_text().strip() or None
    except OSError:
        return None
