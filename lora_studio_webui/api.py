"""A read-only status route: what the last activation applied (names, multipliers, block vectors,
module counts) and, on request, a checksum of the model's current weights — to verify LoRA application
from outside. A1111 attaches no authentication to extension routes, so we check --api-auth ourselves.
It returns no paths, settings or command-line options.
"""

from __future__ import annotations

import base64
import os
import re
import secrets

from . import env
from .engine import ENGINE

try:    # module level: FastAPI resolves the (postponed) annotations of the route in this module's globals
    from fastapi import HTTPException, Request
except ImportError:                                    # no FastAPI outside a WebUI: the route is never added
    HTTPException = Request = None

ROUTE = "/lora-studio/v1/status"


def _credentials() -> list[tuple[str, str]]:
    raw = env.cmd_opt("api_auth", None)
    if not raw:
        return []
    out = []
    for cred in str(raw).strip().split(","):
        if ":" in cred:
            u, pw = cred.strip().split(":", 1)
            out.append((u, pw))
    return out


def authorized(header: str | None) -> bool:
    creds = _credentials()
    if not creds:
        return True
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, pw = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except Exception:
        return False
    return any(secrets.compare_digest(user, u) and secrets.compare_digest(pw, p) for u, p in creds)


def status(with_checksum: bool = False) -> dict:
    last = ENGINE.last
    out = {
        "applied": [{"name": a.name, "te": a.active.te, "unet": a.active.unet, "blocks": a.active.blocks,
                     "source": a.blocks.source, "start": a.active.start, "stop": a.active.stop,
                     "modules": a.report.applied if a.report is not None else 0} for a in last.loras],
        "warnings": [without_paths(w) for w in last.warnings],
        "seconds": last.seconds,
        "report": _report(last.report),
    }
    if with_checksum:
        model = ENGINE.host_model or env.loaded_model()
        out["checksum"] = ENGINE.checksum() if model is not None else None
    return out


# an absolute path (/x/y, ~/x, C:\x or C:/x, \\server\share): whole when quoted, else up to a space or separator
_START = r"""(?:[A-Za-z]:[\\/]|\\\\|~?/)"""
_QUOTED_PATH = re.compile(r"""(['"`])""" + _START + r"""[^'"`]*\1""")
_ABS_PATH = re.compile(r"""(?<![\w.])""" + _START + r"""[^\s,;'"`()<>]*""")


def without_paths(text: str) -> str:
    """The route promises no paths: a configured LoRA folder becomes its name in <…>, any other absolute path
    becomes <path> (messages shown in the WebUI itself keep them: that is the user's own screen)."""
    text = str(text)
    try:
        dirs = sorted({str(x) for d in env.lora_dirs() for x in (d, d.resolve())}, key=len, reverse=True)
    except Exception:
        dirs = []
    for d in dirs:
        if d and d not in ("/", "."):
            name = os.path.basename(d.rstrip("/\\")) or "folder"
            text = text.replace(d, f"<{name}>")
    return _ABS_PATH.sub("<path>", _QUOTED_PATH.sub("'<path>'", text))


def _report(report) -> dict | None:
    if report is None:
        return None
    fields = {}
    for k, v in vars(report).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            fields[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
            fields[k] = list(v)
        elif isinstance(v, dict) and all(isinstance(x, (int, float, str)) for x in v.values()):
            fields[k] = {str(a): b for a, b in v.items()}
    return fields


def on_app_started(demo, app) -> None:
    if any(getattr(r, "path", None) == ROUTE for r in getattr(app, "routes", [])):
        return

    @app.get(ROUTE)
    def lora_studio_status(request: Request, checksum: bool = False):
        if not authorized(request.headers.get("authorization")):
            raise HTTPException(status_code=401, detail="Unauthorized", headers={"WWW-Authenticate": "Basic"})
        with ENGINE.lock:
            return status(checksum)
