"""The standalone LoRA Studio app: every tab in one Gradio page, outside the WebUI.

Tabs are imported lazily, one by one: a tab whose module (or optional dependency) fails shows a
placeholder with the reason instead of taking the whole app down.

User presets file: `--presets-file`, else presets.default_user_path(first LoRA folder). Binds 127.0.0.1;
`--listen` binds 0.0.0.0, needs --auth/--auth-file, and then every file write needs `--allow-writes`
(UiContext.writes_allowed, as in the WebUI).

Every request passes RequestGuard first: no cross-origin calls (Gradio's `*` CORS middleware is removed),
Host must name this machine unless --listen (DNS rebinding), Origin (when sent) must match Host, also on
the queue websocket; `/file=` serves only files this app created or the user uploaded.
"""

from __future__ import annotations

import hmac
import importlib
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from lib_lora.errors import LoraStudioError
from lib_lora.ui.context import UiContext

# (tab label, module, elem_id); each module exposes build(ctx).
TABS = [
    ("Presets", "lib_lora.ui.presets_tab", "lora_studio_tab_presets"),
    ("LoRAs", "lib_lora.ui.lora_tab", "lora_studio_tab_loras"),
    ("Tagger", "lib_lora.ui.tagger_tab", "lora_studio_tab_tagger"),
    ("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge"),
    ("Training", "lib_lora.ui.train_tab", "lora_studio_tab_train"),
]

STANDALONE_WRITES_BLOCKED = (
    "Writing files is disabled because the app listens on the network (--listen); "
    "restart with --allow-writes to allow saving."
)
def _folder(path, what: str, create: bool) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        if not create:
            raise LoraStudioError(f"{what} folder '{p}' does not exist; create it or fix the option.")
        p.mkdir(parents=True, exist_ok=True)
    elif not p.is_dir():
        raise LoraStudioError(f"{what} folder '{p}' is a file, not a folder; give a folder.")
    return Path(os.path.abspath(p))   # not resolve(): links stay as the user named them (resolve_inside)


def existing_folder(path, option: str) -> Path:
    """A folder the user named on the command line: it must exist (never created for a typo)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoraStudioError(f"{option} '{path}' does not exist; check the path or create the folder first")
    if not p.is_dir():
        raise LoraStudioError(f"{option} '{path}' is not a folder; give the folder that holds the files")
    return p


def load_presets(user_path: Path):
    """presets.default_store over the shipped presets + the user file; None (with the reason) if unreadable."""
    from lib_lora.presets import default_store
    try:
        return default_store(user_path=user_path), None
    except LoraStudioError as exc:
        return None, str(exc)


def build_context(lora_dirs, checkpoint_dirs, tagger_models_dir, presets_file=None,
                  listen: bool = False, allow_writes: bool = False, create_missing: bool = True,
                  image_dirs=()) -> UiContext:
    """Folders → UiContext. Missing folders are created (the defaults must just work on a fresh machine);
    a presets file the user named must be in an existing folder (a typo must not create one at Save)."""
    if presets_file:
        folder = Path(os.path.abspath(Path(presets_file).expanduser())).parent
        if not folder.is_dir():
            raise LoraStudioError(f"--presets-file '{presets_file}': folder '{folder}' does not exist; create it "
                                  "first or fix the path")
    loras = [_folder(d, "LoRA", create_missing) for d in lora_dirs]
    ckpts = [_folder(d, "Checkpoint", create_missing) for d in checkpoint_dirs]
    images = [_folder(d, "Image", create_missing) for d in image_dirs]
    tagger = _folder(tagger_models_dir, "Tagger models", create_missing)
    from lib_lora.presets import default_user_path
    user_presets = Path(os.path.abspath(Path(presets_file).expanduser())) if presets_file \
        else default_user_path(loras[0])
    presets, problem = load_presets(user_presets)
    from lib_lora.ui.merge_live import LoadedModel
    loaded = LoadedModel()      # nothing is read until the Merge tab's "Load model A"
    return UiContext(lora_dirs=loras, checkpoint_dirs=ckpts, tagger_models_dir=tagger, image_dirs=images,
                     presets=presets, presets_path=user_presets, presets_problem=problem,
                     writes_allowed=(not listen) or allow_writes,
                     writes_blocked_reason=STANDALONE_WRITES_BLOCKED, live_merge=loaded, loaded_model=loaded)


def describe(ctx: UiContext, listen: bool) -> str:
    lines = ["LoRA Studio",
             "  LoRA folders:       " + ", ".join(map(str, ctx.lora_dirs)),
             f"  tagger models:      {ctx.tagger_models_dir}",
             f"  user presets file:  {ctx.presets_path or '?'}"]
    if ctx.checkpoint_dirs:
        lines.insert(2, "  checkpoint folders: " + ", ".join(map(str, ctx.checkpoint_dirs)))
    if ctx.image_dirs:
        lines.insert(-2, "  image folders:      " + ", ".join(map(str, ctx.image_dirs)))
    if ctx.presets_problem:
        lines.append(f"  presets: {ctx.presets_problem}")
    if listen:
        lines.append("  listening on all interfaces; file writes "
                     + ("allowed (--allow-writes)" if ctx.writes_allowed else "disabled (add --allow-writes)"))
    return "\n".join(lines)


def _theme():
    import gradio as gr
    # System fonts only: the default theme fetches Google Fonts, which a local/offline tool should not need.
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "Consolas", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def _placeholder(label: str, exc: BaseException) -> None:
    import gradio as gr
    reason = str(exc) or type(exc).__name__
    gr.Markdown(f"**The {label} tab is unavailable:** {reason}", elem_classes=["lora-studio-unavailable"])


def create_app(ctx: UiContext, tabs=TABS):
    import gradio as gr

    with gr.Blocks(title="LoRA Studio", analytics_enabled=False, theme=_theme()) as demo:
        gr.Markdown("## LoRA Studio")
        if not ctx.writes_allowed:
            gr.Markdown(f"*{ctx.writes_blocked_reason}*", elem_id="lora_studio_writes_notice")
        for label, module, elem_id in tabs:
            with gr.Tab(label, elem_id=elem_id):
                try:
                    importlib.import_module(module).build(ctx)
                except ImportError as exc:   # an optional part (or its dependency) is missing
                    print(f"LoRA Studio: the {label} tab is unavailable: {exc}", file=sys.stderr)
                    _placeholder(label, exc)
                except Exception as exc:  # one broken tab must not take the others down
                    traceback.print_exc()
                    _placeholder(label, exc)
    return demo


def served_nowhere(ctx: UiContext) -> list[str]:
    """Folders Gradio must never serve: Gradio 3 serves every file under the working directory at
    /file=..., which would expose ./models (and anything else there) to any client."""
    roots = [*map(str, ctx.lora_dirs), *map(str, ctx.checkpoint_dirs), *map(str, ctx.image_dirs),
             str(ctx.tagger_models_dir)]
    import tempfile
    gradio_tmp = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    cwd = Path.cwd().resolve()
    if cwd == gradio_tmp or cwd in gradio_tmp.parents:
        # Blocking the working directory would also block Gradio's own uploads/downloads.
        print(f"LoRA Studio: started inside Gradio's temp folder {gradio_tmp}; files in {cwd} other than the "
              "model folders may be downloadable. Start the app from another folder.", file=sys.stderr)
    else:
        roots.insert(0, str(cwd))
    if ctx.presets_path:
        roots.append(str(ctx.presets_path))
    return roots


# ---- request guard ---------------------------------------------------------------------------------

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
QUEUE_CONCURRENCY = 4      # events running at once: a slow tagging run leaves other buttons working


def _host_port(netloc: str, scheme: str = "http") -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query:
        return None
    return host.lower().rstrip("."), port or _DEFAULT_PORTS.get(scheme, 80)


def request_problem(headers: list[tuple[bytes, bytes]], listen: bool, scheme: str = "http") -> str | None:
    """Why a request must be refused (None: it may pass). Pure, so it is tested without a server.

    Host: exactly one, naming this machine unless --listen (a DNS-rebinding page reaches 127.0.0.1 under
    its own name). Origin: when present it must be this very origin (scheme, host, port); browsers send
    it on every cross-origin fetch and websocket, so a page elsewhere cannot call the app's actions.
    """
    hosts = [v for k, v in headers if k.lower() == b"host"]
    origins = [v for k, v in headers if k.lower() == b"origin"]
    if len(hosts) != 1:
        return "missing or repeated Host header"
    host_text = hosts[0].decode("latin-1")
    http_scheme = "https" if scheme in ("https", "wss") else "http"
    host = _host_port(host_text, http_scheme)
    if host is None:
        return "malformed Host header"
    if not listen and host[0].strip("[]") not in LOCAL_HOSTS:
        return (f"Host '{host_text[:100]}' is not this computer; open the app at http://127.0.0.1 "
                f"(or start it with --listen to serve other names)")
    if len(origins) > 1:
        return "repeated Origin header"
    if origins:
        origin_text = origins[0].decode("latin-1")
        try:
            o = urlsplit(origin_text)
            ok = o.scheme in ("http", "https") and _host_port(o.netloc, o.scheme) == _host_port(host_text, o.scheme) \
                and o.scheme == http_scheme
        except ValueError:
            ok = False
        if not ok:
            return f"cross-origin request from '{origin_text[:100]}' refused; use the app's own page"
    return None


def _cookies(headers) -> dict[str, str]:
    out = {}
    for k, v in headers:
        if k.lower() == b"cookie":
            for part in v.decode("latin-1").split(";"):
                name, _, value = part.strip().partition("=")
                out.setdefault(name, value)
    return out


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


class RequestGuard:
    """ASGI middleware in front of the whole Gradio app (see the module docstring)."""

    def __init__(self, app, listen: bool = False):
        self.app = app
        self.listen = listen
        self.uploads: set[str] = set()     # files this server's /upload wrote (servable back to the client)

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        problem = request_problem(headers, self.listen, scope.get("scheme", "http"))
        path = scope.get("path", "")
        gr_app = scope.get("app")
        if problem is None and (kind == "websocket" or path.rstrip("/") == "/reset"):
            problem = self._auth_problem(gr_app, headers)
        if problem is None and kind == "http" and (path.startswith("/file=") or path.startswith("/file/")):
            problem = self._file_problem(gr_app, path[6:])
        if problem is not None:
            return await self._deny(kind, send, problem)
        if kind == "http" and scope.get("method") == "POST" and path.rstrip("/") == "/upload":
            send = self._recording(send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _auth_problem(gr_app, headers) -> str | None:
        """Gradio 3.41 lets any access-token cookie (even a made-up one) join the queue: check it is real."""
        auth = getattr(gr_app, "auth", None)
        if auth is None:
            return None
        c = _cookies(headers)
        token = c.get("access-token") or c.get("access-token-unsecure")
        if not token or token not in getattr(gr_app, "tokens", {}):
            return "not logged in"
        return None

    def _file_problem(self, gr_app, target: str) -> str | None:
        """`/file=` may return only what this app produced (outputs) or the client uploaded here; Gradio
        alone also serves anything in its shared temp folder and under the working directory."""
        # The server already URL-decoded the path: decoding again here would check another name than the
        # one Gradio then serves.
        if "://" in target or "\0" in target:
            return "file not allowed"
        full = _norm(target)
        allowed = set(self.uploads)
        try:
            blocks = gr_app.get_blocks()
            for group in getattr(blocks, "temp_file_sets", []):
                allowed.update(_norm(p) for p in group)
        except Exception:
            pass
        return None if full in allowed else "file not allowed"

    def _recording(self, send):
        body: list[bytes] = []

        async def wrapped(message):
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        paths = json.loads(b"".join(body) or b"[]")
                        self.uploads.update(_norm(p) for p in paths if isinstance(p, str))
                    except (ValueError, TypeError):
                        pass
            await send(message)
        return wrapped

    @staticmethod
    async def _deny(kind: str, send, problem: str) -> None:
        if kind == "websocket":   # closing before accept makes the server answer the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = f"Refused by LoRA Studio: {problem}.\n".encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ---- authentication ----------------------------------------------------------------------------------


def parse_auth(spec: str, where: str = "--auth") -> tuple[str, str]:
    """'user:pass' → (user, pass); the password may contain ':'. Never echoes the password."""
    user, sep, password = spec.partition(":")
    user = user.strip()
    if not sep or not user or not password:
        raise LoraStudioError(f"{where}: expected USER:PASSWORD (both non-empty)")
    return user, password


def read_auth_file(path) -> list[tuple[str, str]]:
    """Lines `user:password`; blank lines and lines starting with '#' are skipped."""
    from lib_lora.fileio import read_small_text
    text = read_small_text(path, "auth file", max_bytes=1 << 16)
    pairs = []
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            pairs.append(parse_auth(line, f"auth file '{path}' line {no}"))
    if not pairs:
        raise LoraStudioError(f"auth file '{path}' has no USER:PASSWORD line")
    return pairs


def make_auth(pairs: list[tuple[str, str]]):
    """Gradio's auth callable; constant-time comparison of the password."""
    accounts = dict(pairs)

    def check(user: str, password: str) -> bool:
        expected = accounts.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), str(password).encode())
    return check


def check_port(port) -> int:
    try:
        p = int(port)
    except (TypeError, ValueError):
        p = -1
    if not 1 <= p <= 65535:
        raise LoraStudioError(f"port {port} is not a port number; choose one from 1 to 65535 with --port")
    return p


def _warm_up() -> None:
    try:
        importlib.import_module("lib_lora.lora_info")
    except Exception:  # reported when the user actually inspects
        pass


def launch(ctx: UiContext, port: int = 7870, listen: bool = False, open_browser: bool = True,
           block: bool = True, auth: list[tuple[str, str]] | None = None, tabs=TABS):
    from lib_lora.ui import compat

    port = check_port(port)
    if listen and not auth:
        raise LoraStudioError("--listen makes the app reachable from the network: add --auth USER:PASSWORD "
                              "or --auth-file FILE")
    demo = create_app(ctx, tabs)
    demo.queue(**compat.queue_kwargs(QUEUE_CONCURRENCY))
    # Import the torch-side modules while the server starts, so the first "inspect" click is quick.
    threading.Thread(target=_warm_up, name="lora-studio-warm-up", daemon=True).start()
    # Headless machine (no display): never try to open a browser.
    has_display = os.name == "nt" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
        or os.uname().sysname == "Darwin"
    try:
        demo.launch(server_name="0.0.0.0" if listen else "127.0.0.1", server_port=port,
                    inbrowser=open_browser and has_display, show_api=False,
                    auth=make_auth(auth) if auth else None,
                    app_kwargs=compat.guarded_app_kwargs(RequestGuard, listen=listen),
                    prevent_thread_lock=True, blocked_paths=served_nowhere(ctx), quiet=True)
    except OSError as exc:
        raise LoraStudioError(f"cannot serve on port {port} ({exc.strerror or exc}); "
                              "choose another one with --port.") from exc
    compat.drop_cors(demo.server_app)
    # Our own line instead of Gradio's, which ends in advice (`share=True` in `launch()`) no user can follow.
    where = (f"all network interfaces, port {port}: open http://<this computer's address>:{port}/" if listen
             else f"http://127.0.0.1:{port}/")
    print(f"Running on {where} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if block:
        demo.block_thread()
    return demo
