"""Hostile HTTP/websocket requests against the real standalone app (a subprocess, real Gradio, real sockets).

A page on another site, a DNS-rebinding page, a crafted queue message naming /etc/passwd or a FIFO, a
made-up login cookie: each is refused, and nothing of the server's files comes back.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio")
ws_sync = pytest.importorskip("websockets.sync.client")

from tests import browser as B  # noqa: E402

EVIL = "http://evil.example"


def _start(root: Path, args: list[str], gradio_tmp: Path) -> B.App:
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_tmp)
    try:
        return B.start_app(root, args)
    finally:
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    (root / "lora").mkdir()
    (root / "tag").mkdir()
    gradio_tmp = root / "gradio_tmp"
    gradio_tmp.mkdir()
    (root / "secret_in_cwd.txt").write_text("cwd secret\n")
    stray = gradio_tmp / ("a" * 40)
    stray.mkdir()
    (stray / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")   # a copy some other app left there
    common = ["--lora-dir", str(root / "lora"), "--tagger-models-dir", str(root / "tag"),
              "--presets-file", str(root / "presets.txt")]
    plain = _start(root, common, gradio_tmp)
    (root / "authed").mkdir()
    authed = _start(root / "authed", common + ["--listen", "--auth", "alice:s3cret:with:colons"], gradio_tmp)
    try:
        plain.wait_ready()
        authed.wait_ready()
        yield {"root": root, "app": plain, "authed": authed, "tmp": gradio_tmp, "stray": stray / "passwd"}
    finally:
        plain.stop()
        authed.stop()


def request(url, method="GET", headers=None, data=None):
    """(status, headers, body text) without raising on 4xx/5xx; never goes through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with opener.open(req, timeout=20) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode(errors="replace")


def fn_index(app, elem_id: str, trigger: str = "click") -> int:
    _, _, body = request(app.url + "config")
    cfg = json.loads(body)
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in cfg["components"]}
    for i, dep in enumerate(cfg["dependencies"]):
        if dep.get("trigger") == trigger and any(ids.get(t) == elem_id for t in dep.get("targets", [])):
            return i
    raise AssertionError(f"no {trigger} event on {elem_id}")


def run_queued(app, fn: int, data: list, origin: str | None = None, cookie: str | None = None) -> dict:
    """One event through the queue websocket, as the page does: returns the process_completed message."""
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    url = app.url.replace("http://", "ws://") + "queue/join"
    with ws_sync.connect(url, origin=origin or app.url.rstrip("/"), additional_headers=headers,
                         open_timeout=20) as ws:
        session = secrets.token_hex(5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv(timeout=30))
            if msg["msg"] == "send_hash":
                ws.send(json.dumps({"fn_index": fn, "session_hash": session}))
            elif msg["msg"] == "send_data":
                ws.send(json.dumps({"data": data, "fn_index": fn, "session_hash": session, "event_data": None}))
            elif msg["msg"] == "process_completed":
                return msg
        raise AssertionError("no answer from the queue")


def ws_handshake_status(app, origin: str | None, cookie: str | None = None, host: str | None = None) -> int:
    """HTTP status the server answers to a websocket upgrade of /queue/join (101: accepted)."""
    import base64
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=20)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if origin:
        headers["Origin"] = origin
    if cookie:
        headers["Cookie"] = cookie
    conn.putrequest("GET", "/queue/join", skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{app.port}")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def assert_refused_ws(app, origin: str | None, cookie: str | None = None, host: str | None = None):
    assert ws_handshake_status(app, origin, cookie, host) == 403


# ---- cross-origin, DNS rebinding ---------------------------------------------------------------------


def test_start_up_lines_say_where_it_runs_and_advertise_nothing_else(env):
    out = env["app"].output_with("Running on http")
    assert f"Running on http://127.0.0.1:{env['app'].port}/" in out
    assert "share=True" not in out and "public link" not in out
    authed = env["authed"].output_with("Running on all")
    assert f"Running on all network interfaces, port {env['authed'].port}" in authed and "share=True" not in authed


def test_no_response_allows_other_origins(env):
    app = env["app"]
    status, headers, _ = request(app.url + "config")
    assert status == 200 and "access-control-allow-origin" not in headers
    # a page elsewhere asking the browser for permission to POST (CORS preflight): not granted
    status, headers, _ = request(app.url + "run/predict", "OPTIONS",
                                 {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "content-type"})
    assert status >= 400 and "access-control-allow-origin" not in headers
    assert "access-control-allow-methods" not in headers


@pytest.mark.parametrize("path", ["run/predict", "api/predict", "upload", "reset", "login"])
def test_cross_origin_state_changing_calls_are_refused(env, path):
    app = env["app"]
    fn = fn_index(app, "lora_studio_presets_import")
    body = json.dumps({"fn_index": fn, "data": [{"name": "/etc/passwd", "is_file": True, "data": None}],
                       "session_hash": "x"}).encode()
    for origin in (EVIL, "null", "http://127.0.0.1:1"):   # other site, sandboxed page, other port
        status, headers, text = request(app.url + path, "POST",
                                        {"Origin": origin, "Content-Type": "application/json"}, body)
        assert status == 403 and "cross-origin" in text, (path, origin, status, text)
        assert "access-control-allow-origin" not in headers and "root:" not in text


def test_dns_rebinding_host_is_refused(env):
    app = env["app"]
    port = app.port
    for host in (f"evil.example:{port}", f"rebind.attacker.test:{port}"):
        status, _, text = request(app.url + "config", headers={"Host": host})
        assert status == 403 and "is not this computer" in text and "\n" not in text.strip()
        status, _, text = request(app.url, headers={"Host": host, "Origin": f"http://{host}"})
        assert status == 403
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert request(app.url + "config", headers={"Host": host})[0] == 200
    assert_refused_ws(app, origin=f"http://evil.example:{port}", host=f"evil.example:{port}")


def test_queue_websocket_checks_origin(env):
    app = env["app"]
    assert_refused_ws(app, origin=EVIL)
    assert_refused_ws(app, origin="http://localhost:1")
    assert ws_handshake_status(app, origin=app.url.rstrip("/")) == 101
    # the app's own page is served
    msg = run_queued(app, fn_index(app, "lora_studio_presets_export"), [])
    assert msg["success"], msg


def test_direct_api_calls_must_use_the_queue(env):
    """Queued events are not callable through /run/predict (Gradio's api_open), even from the same origin."""
    app = env["app"]
    fn = fn_index(app, "lora_studio_presets_export")
    status, _, _ = request(app.url + "run/predict", "POST", {"Content-Type": "application/json"},
                           json.dumps({"fn_index": fn, "data": [], "session_hash": "x"}).encode())
    assert status == 401


# ---- file read / serve -------------------------------------------------------------------------------


def test_import_of_a_server_path_neither_echoes_nor_copies_it(env):
    app, tmp = env["app"], env["tmp"]
    before = set(p for p in tmp.rglob("*"))
    fn = fn_index(app, "lora_studio_presets_import")
    for path in ("/etc/passwd", str(env["stray"]), "../../../../etc/passwd"):
        msg = run_queued(app, fn, [{"name": path, "is_file": True, "data": None, "orig_name": "x.txt"}])
        text = json.dumps(msg["output"])
        assert "root:" not in text and "/bin/bash" not in text and "root" not in text.replace(str(env["root"]), "")
        if path != str(env["stray"]):
            assert "Only a file uploaded" in text, text
    assert set(p for p in tmp.rglob("*")) == before      # Gradio made no copy of any of them
    assert not (env["root"] / "presets.txt").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFO")
def test_fifo_offered_as_presets_file_is_refused_at_once(env):
    app, tmp = env["app"], env["tmp"]
    d = tmp / secrets.token_hex(20)
    d.mkdir()
    os.mkfifo(d / "lbwpresets.txt")
    t0 = time.monotonic()
    msg = run_queued(app, fn_index(app, "lora_studio_presets_import"),
                     [{"name": str(d / "lbwpresets.txt"), "is_file": True, "data": None}])
    assert time.monotonic() - t0 < 20
    assert "not a regular file" in json.dumps(msg["output"])


def test_file_route_serves_only_the_apps_own_outputs_and_uploads(env):
    app, root = env["app"], env["root"]
    for target in ("/etc/passwd", str(env["stray"]), "secret_in_cwd.txt", str(root / "secret_in_cwd.txt"),
                   str(root / "presets.txt"), "../../etc/passwd"):
        status, _, text = request(app.url + "file=" + target)
        assert status in (403, 404) and "root:" not in text and "secret" not in text.replace("secret_in", ""), \
            (target, status)
    # an upload through the page's /upload is usable and can be read back by the client that sent it
    boundary = "----lorastudio" + secrets.token_hex(4)
    payload = "mine:" + ",".join(["1"] * 17) + "\n"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"lbw.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n{payload}\r\n--{boundary}--\r\n").encode()
    status, _, text = request(app.url + "upload", "POST",
                              {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body)
    assert status == 200, text
    [uploaded] = json.loads(text)
    assert request(app.url + "file=" + uploaded)[2] == payload
    msg = run_queued(app, fn_index(app, "lora_studio_presets_import"),
                     [{"name": uploaded, "is_file": True, "data": None, "orig_name": "lbw.txt"}])
    assert "Imported 1 presets (mine)" in json.dumps(msg["output"])
    # the export the app made for download is served
    out = run_queued(app, fn_index(app, "lora_studio_presets_export"), [])["output"]["data"][0]
    status, _, text = request(app.url + "file=" + out["name"])
    assert status == 200 and "mine:" in text


# ---- --listen needs a login; the login is really checked -----------------------------------------------


def test_listen_app_requires_login_everywhere(env):
    app = env["authed"]
    assert request(app.url + "config")[0] == 401
    assert request(app.url + "run/predict", "POST", {"Content-Type": "application/json"}, b"{}")[0] == 401
    # Gradio 3.41 itself lets any cookie value join the queue
    assert_refused_ws(app, origin=app.url.rstrip("/"), cookie="access-token=made-up")
    assert_refused_ws(app, origin=app.url.rstrip("/"))
    status, _, _ = request(app.url + "login", "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                           b"username=alice&password=wrong")
    assert status == 400
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(app.url + "login", method="POST",
                                            data=b"username=alice&password=s3cret%3Awith%3Acolons",
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})) as r:
        cookies = r.headers.get_all("set-cookie")
    token = next(c.split(";")[0] for c in cookies if c.startswith("access-token-unsecure="))
    assert request(app.url + "config", headers={"Cookie": token})[0] == 200
    msg = run_queued(app, fn_index_authed(app, token, "lora_studio_presets_export"), [], cookie=token)
    assert msg["success"]
    # --listen: other host names are allowed, but Origin must still match the Host
    status, _, _ = request(app.url + "config", headers={"Cookie": token, "Host": f"my-pc.lan:{app.port}"})
    assert status == 200
    status, _, _ = request(app.url + "config", headers={"Cookie": token, "Origin": EVIL})
    assert status == 403


def fn_index_authed(app, cookie, elem_id):
    _, _, body = request(app.url + "config", headers={"Cookie": cookie})
    cfg = json.loads(body)
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in cfg["components"]}
    return next(i for i, d in enumerate(cfg["dependencies"])
                if d.get("trigger") == "click" and any(ids.get(t) == elem_id for t in d["targets"]))


# ---- command line: one line, nothing created ------------------------------------------------------------


def _ui(tmp_path, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(B.REPO), GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run([sys.executable, "-m", "lib_lora", "ui", "--no-browser", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, needle", [
    (["--port", "99999"], "port 99999 is not a port number"),
    (["--port", "0"], "port 0 is not a port number"),
    (["--lora-dir", "typo_folder"], "--lora-dir 'typo_folder' does not exist"),
    (["--lora-dir", "a_file.txt"], "--lora-dir 'a_file.txt' is not a folder"),
    (["--tagger-models-dir", "nope"], "--tagger-models-dir 'nope' does not exist"),
    (["--listen"], "--listen makes the app reachable from the network: add --auth"),
    (["--listen", "--auth", "nopassword"], "--auth: expected USER:PASSWORD"),
    (["--auth-file", "missing.txt"], "auth file 'missing.txt' does not exist"),
    (["--presets-file", "typo_dir/p.txt"], "--presets-file 'typo_dir/p.txt': folder"),
])
def test_bad_options_give_one_line_and_create_nothing(tmp_path, args, needle):
    (tmp_path / "a_file.txt").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _ui(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before     # no folder created for a typo


def test_auth_file_lines_are_checked_without_echoing_them(tmp_path):
    f = tmp_path / "auth.txt"
    f.write_text("# users\nalice:pw1\nbob-without-password-topsecret\n")
    r = _ui(tmp_path, "--listen", "--auth-file", str(f))
    assert r.returncode == 2 and "line 3" in r.stderr and "topsecret" not in r.stderr


def test_request_problem_rules():
    from lib_lora.ui.app import request_problem

    def h(**kw):
        return [(k.replace("_", "-").encode(), v.encode()) for k, v in kw.items()]
    assert request_problem(h(host="127.0.0.1:7870"), False) is None
    assert request_problem(h(host="[::1]:7870", origin="http://[::1]:7870"), False) is None
    assert request_problem(h(host="localhost:7870", origin="http://localhost:7870"), False) is None
    assert "not this computer" in request_problem(h(host="evil.example:7870"), False)
    assert request_problem(h(host="my-pc.lan:7870", origin="http://my-pc.lan:7870"), True) is None
    assert "cross-origin" in request_problem(h(host="my-pc.lan:7870", origin="http://evil.example"), True)
    assert "cross-origin" in request_problem(h(host="127.0.0.1:7870", origin="https://127.0.0.1:7870"), False)
    assert "cross-origin" in request_problem(h(host="127.0.0.1:7870", origin="null"), False)
    assert "Host" in request_problem([], False)
    assert "Host" in request_problem(h(host="127.0.0.1:7870") * 2, False)
    assert "malformed" in request_problem(h(host="a@127.0.0.1:7870"), False)
