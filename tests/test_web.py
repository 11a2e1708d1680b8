"""The web page every peer serves: its sessions and CSRF tokens, then real peers on loopback —
one on 127.0.0.1 (no login; the Host and CSRF checks), one bound to 0.0.0.0 and reached through
127.0.0.1 only (every route 401 without the party secret, the WebSocket handshake too; the login
rate limited) — submitting an uploaded scene, cancelling it, and downloading an EXR that is
bit-identical to a local `meshrender render` of the same scene and settings; a job's timeline
figure; the Stream page's socket (refusing outsiders, other sites and garbage; streaming a real
session's previews with its edits, one frame per ack) and a browser dragging its viewport."""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import struct
import time

import httpx
import pytest
from party import SECRET, PeerProc, cli

from meshrender.peer.membership import FAILURES_MAX
from meshrender.web.addr import WEB_PORT_DEFAULT, is_loopback, parse_web_addr
from meshrender.web.app import STREAM_SOCKETS_MAX, WS_MESSAGES_BURST, overlay, settings_overrides
from meshrender.web.auth import SESSION_S, Sessions

WORKER = ("--threads", "1", "--backend", "cpu")
QUAD_OBJ = "v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\nf 1 2 3\nf 1 3 4\n"
JOB_S_MAX = 120  # a 64x48, 8 spp job on one thread takes well under a second once the kernel is warm
PAGES = ("/party", "/queue", "/results", "/live", "/stream")
ROUTES = (
    "/",
    *PAGES,
    "/events",
    "/api/snapshot",
    "/api/jobs",
    "/login/../party",
    "/no-such-page",
    f"/results/{'a' * 64}",
    f"/results/{'a' * 64}/files/job.json",
    "/stream/start",
    "/stream/stop",
)


# ---------------------------------------------------------------------------- in this process


def test_sessions_check_their_mac_expiry_and_csrf():
    s = Sessions(b"k" * 32)
    sid, cookie = s.new(now=100.0)
    assert s.valid(cookie, 101.0) == sid
    assert s.valid(cookie, 100.0 + SESSION_S) is None  # expired
    sid, cookie = s.new(now=100.0)
    forged = f"{sid}.{'0' * 32}"
    assert s.valid(forged, 101.0) is None
    assert Sessions(b"x" * 32).valid(cookie, 101.0) is None  # another peer start's key
    assert (
        s.valid("garbage", 101.0) is None and s.valid("", 101.0) is None and s.valid("a." * 500, 1.0) is None
    )
    assert s.check_csrf(sid, s.csrf(sid))
    other, _ = s.new(now=100.0)
    assert not s.check_csrf(sid, s.csrf(other)) and not s.check_csrf(sid, "") and not s.check_csrf(None, "x")
    s.drop(sid)
    assert s.valid(cookie, 101.0) is None  # logged out


def test_the_session_table_is_bounded_oldest_out():
    s = Sessions(sessions_max=3)
    cookies = [s.new(now=float(i))[1] for i in range(5)]
    assert len(s) == 3
    assert s.valid(cookies[0], 10.0) is None and s.valid(cookies[4], 10.0) is not None


def test_the_login_form_token_is_bound_to_its_nonce_and_expires():
    s = Sessions()
    nonce = s.login_nonce(1000.0)
    token = s.login_csrf(nonce)
    assert s.check_login_csrf(nonce, token, 1001.0)
    assert not s.check_login_csrf(nonce, token, 1000.0 + 601)  # stale form
    assert not s.check_login_csrf(s.login_nonce(1000.0), token, 1001.0)  # another form's nonce
    assert not s.check_login_csrf(nonce.replace(".", "x."), token, 1001.0)  # a nonce we did not make
    assert not s.check_login_csrf(None, token, 1001.0)


def test_web_addresses():
    assert parse_web_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_web_addr("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_web_addr(":9000") == ("127.0.0.1", 9000)
    assert parse_web_addr("localhost") == ("localhost", WEB_PORT_DEFAULT)
    assert parse_web_addr("[::1]:81") == ("::1", 81)
    for bad in ("example.com:80", "1.2.3.4:99999", "127.0.0.1:x", "::1", "[::1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_web_addr(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_form_settings_are_checked_and_name_the_field():
    assert settings_overrides({"res": "64x48", "spp": "8", "tile": "16", "exposure": "-1.5"}) == {
        "width": 64,
        "height": 48,
        "spp": 8,
        "bucket_px": 16,
        "exposure": -1.5,
    }
    assert settings_overrides({"spp": "", "res": " "}) == {}
    for form, word in (
        ({"spp": "lots"}, "spp"),
        ({"res": "64"}, "resolution"),
        ({"exposure": "x"}, "exposure"),
    ):
        with pytest.raises(ValueError, match=word):
            settings_overrides(form)


def test_the_overlay_colours_each_bucket_by_who_rendered_most_of_it():
    units = [
        {"frame": 0, "x0": 0, "y0": 0, "width": 8, "height": 8, "passes": 2, "peer": "A"},
        {"frame": 0, "x0": 0, "y0": 0, "width": 8, "height": 8, "passes": 1, "peer": "B"},
        {"frame": 0, "x0": 8, "y0": 0, "width": 8, "height": 8, "passes": 1, "peer": "B"},
        {"frame": 1, "x0": 0, "y0": 0, "width": 8, "height": 8, "passes": 1, "peer": "C"},  # another frame
        {"frame": 0, "x0": "<script>", "peer": "D"},  # garbage in job.json is skipped, never echoed
    ]
    svg = overlay(units, 0, 16, 8, {"A": "#aaa", "B": "#bbb"})
    rects = re.findall(r'<rect x="(\d+)" y="(\d+)"[^>]*fill="([^"]+)" data-peer="([^"]+)"', svg)
    assert rects == [("0", "0", "#aaa", "A"), ("8", "0", "#bbb", "B")]
    assert "<script>" not in svg and "A: 2 pass(es), B: 1 pass(es)" in svg


def test_stream_messages_are_bounded_and_waiting_edits_merge_latest_first():
    import msgspec

    from meshrender.web.app import CLIENT_DECODER, Camera, Hello, MaterialEdit, _merged

    assert CLIENT_DECODER.decode('{"t": "hello"}') == Hello(fmt="jpeg", quality=80, denoise=False)
    cam = CLIENT_DECODER.decode('{"t": "camera", "position": [0, 1, 4], "fov_deg": 40}')
    assert cam == Camera(position=(0.0, 1.0, 4.0), fov_deg=40.0)
    for bad in (
        '{"t": "camera", "position": [0, 1]}',  # two numbers
        '{"t": "camera", "position": [0, 1, 1e300]}',  # out of any scene
        '{"t": "camera", "fov_deg": 180}',
        '{"t": "camera", "position": [0, 1, NaN]}',  # not JSON
        '{"t": "material", "name": ""}',
        '{"t": "material", "name": "m", "color": [0.5, 0.5, 1.5]}',  # a reflectance over 1
        '{"t": "light", "index": -1, "position": [0, 0, 0]}',
        '{"t": "hello", "denoise": "yes"}',
        '{"t": "ack", "extra": 1}',
    ):
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            CLIENT_DECODER.decode(bad)
    # two edits of one material waiting: the newer fields win, the older ones the newer left out stay
    old = MaterialEdit(name="m", color=(0.1, 0.2, 0.3), roughness=0.5)
    assert _merged(old, MaterialEdit(name="m", roughness=0.9)) == MaterialEdit(
        name="m", color=(0.1, 0.2, 0.3), roughness=0.9
    )
    assert _merged(None, cam) is cam


def test_a_taken_port_is_a_clear_error_and_the_default_port_falls_back(tmp_path):
    import trio

    from meshrender.node import Peer
    from meshrender.web.serve import serve_web

    peer = Peer(home=tmp_path, party="p", secret=b"s")  # not started: the page needs no host to bind
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]

        async def main():
            async with trio.open_nursery() as n:  # as the peer starts it: a plain OSError, the peer runs on
                with pytest.raises(
                    OSError, match=f"cannot serve the web page on 127.0.0.1:{taken}: .*in use"
                ):
                    await n.start(serve_web, peer, "127.0.0.1", taken)
            with socket.socket() as default:
                default.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    default.bind(("127.0.0.1", WEB_PORT_DEFAULT))
                    default.listen()
                except OSError:
                    pass  # another program holds it already: as good for this test
                async with trio.open_nursery() as n:
                    url = await n.start(serve_web, peer, "127.0.0.1", WEB_PORT_DEFAULT)
                    assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{WEB_PORT_DEFAULT}")
                    n.cancel_scope.cancel()

        trio.run(main)
    (ev,) = [e for e in peer.events if e["event"] == "web"]
    assert ev["login"] is False and ev["url"] == url_of(ev)


def url_of(ev: dict) -> str:
    return f"http://127.0.0.1:{ev['port']}"


# ---------------------------------------------------------------------------- real peers


@pytest.fixture
def peers():
    started: list[PeerProc] = []

    def start(home, *extra) -> tuple[PeerProc, int]:
        p = PeerProc(home, *WORKER, *extra)
        started.append(p)
        return p, p.wait_for("web", timeout=30)["port"]

    yield start
    for p in started:
        p.stop()


def csrf_of(page: httpx.Response) -> str:
    m = re.search(r'<meta name=csrf content="([0-9a-f]+)">', page.text)
    assert m, page.text[:500]
    return m.group(1)


def wait_job(c: httpx.Client, jid: str, states: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + JOB_S_MAX
    while time.monotonic() < deadline:
        (job,) = [j for j in c.get("/api/jobs").json() if j["id"] == jid]
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {jid[:12]} still {job['state']} after {JOB_S_MAX} s")


def submit(c: httpx.Client, obj, csrf: str, **fields) -> httpx.Response:
    return c.post(
        "/queue/submit", data={"csrf": csrf, **fields}, files={"scene": ("my quad.obj", obj.read_bytes())}
    )


def ws_handshake(port: int, path: str, **headers: str) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n".encode()
        )
        return s.recv(4096).split(b"\r\n", 1)[0]


def check_timeline(c: httpx.Client, jid: str, home, page: str) -> None:
    """A done job's result page shows its timeline: the figure `meshrender.timeline` draws from its
    job.json, drawn again when job.json changes; a broken job.json is said, not drawn."""
    from meshrender.coordinate import results_dir
    from meshrender.timeline import png_bytes, read_job_json, timeline_from_job

    assert f'<img id=timeline src="/results/{jid}/timeline.png"' in page
    folder = results_dir(home, jid)
    r = c.get(f"/results/{jid}/timeline.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == png_bytes(timeline_from_job(read_job_json(folder)))
    assert c.get(f"/results/{jid}/timeline.png").content == r.content  # (from the cache)
    record = read_job_json(folder)
    path = folder / "job.json"
    original = path.read_bytes()
    try:
        record["units"] = record["units"][: len(record["units"]) // 2]  # as if half the units were missing
        path.write_text(json.dumps(record))
        half = c.get(f"/results/{jid}/timeline.png")
        assert half.status_code == 200 and half.content != r.content
        assert half.content == png_bytes(timeline_from_job(record))
        path.write_text('{"job_id": "x", "units": "lots"}')
        bad = c.get(f"/results/{jid}/timeline.png")
        assert bad.status_code == 422 and "units" in bad.text and str(home) not in bad.text
        path.unlink()
        assert c.get(f"/results/{jid}/timeline.png").status_code == 404
        assert "id=timeline" not in c.get(f"/results/{jid}").text
    finally:
        path.write_bytes(original)
    assert c.get(f"/results/{'0' * 64}/timeline.png").status_code == 404  # not a job of this queue
    assert c.get(f"/results/{jid}/timeline.png").content == r.content


@pytest.mark.slow
def test_loopback_page_submits_cancels_and_serves_a_bit_identical_exr(tmp_path, peers):
    obj = tmp_path / "quad.obj"
    obj.write_text(QUAD_OBJ)
    peer, port = peers(tmp_path / "a", "--web", "127.0.0.1:0")
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 200 and "<nav>" in r.text, path
        assert "script-src 'nonce-" in r.headers["content-security-policy"]
    assert peer.peer_id[-12:] in c.get("/party").text  # the snapshot's own peer in the Party table
    assert "No streaming session" in c.get("/stream").text
    # another name for 127.0.0.1 (DNS rebinding) gets nothing
    assert (
        httpx.get(f"http://127.0.0.1:{port}/api/snapshot", headers={"host": "evil.example:80"}).status_code
        == 421
    )
    csrf = csrf_of(c.get("/queue"))
    assert submit(c, obj, "0" * 32).status_code == 403  # a wrong CSRF token
    r = c.post("/queue/submit", data={"res": "64x48"}, files={"scene": ("q.obj", obj.read_bytes())})
    assert r.status_code == 403  # none at all
    r = c.post(
        "/queue/submit",
        data={"csrf": csrf},
        files={"scene": ("q.obj", obj.read_bytes())},
        headers={"origin": "http://evil.example"},
    )
    assert r.status_code == 403  # a form posted from another site
    r = c.post("/queue/submit", data={"csrf": csrf}, files={"scene": ("notes.txt", b"hello")})
    assert r.status_code == 400 and "not a scene file" in r.text
    r = c.post("/queue/submit", data={"csrf": csrf}, files={"scene": ("bad.obj", b"v 1 2\nf 9 9 9\n")})
    assert r.status_code == 400 and "bad.obj" in r.text and str(tmp_path) not in r.text
    assert c.get("/api/jobs").json() == []

    # a long job: queued or running, listed, then cancelled from its form
    r = submit(c, obj, csrf, res="512x512", spp="65536", priority="5")
    assert r.status_code == 303, r.text
    long_id = r.headers["location"].rsplit("=", 1)[1]
    assert long_id in c.get("/queue").text
    assert c.get("/api/jobs").json()[0]["priority"] == 5
    assert c.post(f"/queue/{long_id}/cancel").status_code == 403  # no token
    assert c.post(f"/queue/{long_id}/cancel", data={"csrf": csrf}).status_code == 303
    assert wait_job(c, long_id, ("cancelled",))["state"] == "cancelled"
    peer.wait_for("job-cancelled", job=long_id, by="web")
    assert f'data-job="{long_id}" data-state="cancelled"' in c.get("/queue").text

    # a short one runs to the end; its files are served, and its EXR is the local render's, bit for bit
    r = submit(c, obj, csrf, res="64x48", spp="8", tile="16")
    jid = r.headers["location"].rsplit("=", 1)[1]
    job = wait_job(c, jid, ("done", "failed"))
    assert job["state"] == "done", job
    page = c.get(f"/results/{jid}").text
    rects = re.findall(r'<rect x="\d+" y="\d+" width="16" height="16" fill="[^"]+" data-peer="([^"]+)"', page)
    assert len(rects) == 4 * 3 and set(rects) == {peer.peer_id}  # 64x48 in 16 px buckets, all rendered here
    assert f"/results/{jid}/files/frame_0000.png" in c.get("/results").text
    exr = c.get(f"/results/{jid}/files/frame_0000.exr")
    assert exr.status_code == 200 and exr.headers["content-disposition"].startswith("attachment")
    assert c.get(f"/results/{jid}/files/job.json").json()["job_id"] == jid
    check_timeline(c, jid, tmp_path / "a", page)
    for bad in ("..%2Fjobs.sqlite", "frame_0000.exr%00", "job.json.bak", "frame_9999.exr"):
        assert c.get(f"/results/{jid}/files/{bad}").status_code == 404, bad
    assert c.get(f"/results/{'0' * 64}/files/job.json").status_code == 404
    local = tmp_path / "local.exr"
    p = cli(
        "render",
        str(obj),
        "--res",
        "64x48",
        "--spp",
        "8",
        "--tile",
        "16",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "-o",
        str(local),
        home=tmp_path / "solo",
    )
    assert p.returncode == 0, p.stderr
    assert exr.content == local.read_bytes()

    # the event stream: a snapshot first, then the peer's events
    with c.stream("GET", "/events") as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = s.iter_lines()
        assert next(lines) == "event: snapshot"
        assert f'"peer_id": "{peer.peer_id}"' in next(lines)


@pytest.mark.slow
def test_exposed_page_gives_outsiders_401_and_rate_limits_logins(tmp_path, peers):
    peer, port = peers(tmp_path / "a", "--web", "0.0.0.0:0")
    base = f"http://127.0.0.1:{port}"
    outsider = httpx.Client(base_url=base, timeout=30)
    for path in ROUTES:
        for method in ("GET", "POST"):
            r = outsider.request(method, path)
            assert r.status_code == 401, (method, path)
            assert peer.peer_id not in r.text and "party" not in r.text.lower()
    assert ws_handshake(port, "/events").startswith(b"HTTP/1.1 401")
    assert ws_handshake(port, "/stream/ws", Cookie="meshrender_session=x.y").startswith(b"HTTP/1.1 401")
    forger = httpx.Client(
        base_url=base, timeout=30, cookies={"meshrender_session": "0" * 32 + "." + "0" * 32}
    )
    assert forger.get("/party").status_code == 401  # a cookie this peer did not sign

    def login(client: httpx.Client, secret: str) -> httpx.Response:
        form = client.get("/login")
        assert form.status_code == 200
        token = re.search(r'name=csrf value="([0-9a-f]+)"', form.text).group(1)
        return client.post("/login", data={"csrf": token, "secret": secret})

    assert outsider.post("/login", data={"secret": SECRET}).status_code == 403  # no login form token
    member = httpx.Client(base_url=base, timeout=30)
    r = login(member, SECRET)
    assert r.status_code == 303 and r.headers["location"] == "/party"
    for path in PAGES:
        assert member.get(path).status_code == 200, path
    assert peer.peer_id[-12:] in member.get("/party").text
    assert member.get("/api/snapshot").json()["peer_id"] == peer.peer_id
    assert member.post("/queue/submit").status_code == 403  # logged in, still no CSRF token
    ws = stream_socket(port, member.cookies)  # the Stream page's socket, for a member on its own page
    ws.send(json.dumps({"t": "hello"}))
    assert json.loads(ws.recv()) == {"t": "session", "status": None}
    ws.close()
    assert refused_handshake(port, member.cookies, "http://evil.example") == 403  # another site's page

    for _ in range(FAILURES_MAX):
        r = login(outsider, "correct horse?")
        assert r.status_code == 401 and "not the party secret" in r.text
        assert outsider.get("/party").status_code == 401
    assert login(outsider, SECRET).status_code == 429  # blocked: the right secret too, for now
    assert peer.wait_for("web-login-failed")["client"] == "127.0.0.1"
    assert member.get("/party").status_code == 200  # a session already made stands

    csrf = csrf_of(member.get("/party"))
    assert member.post("/logout", data={"csrf": csrf}).status_code == 303
    assert member.get("/party").status_code == 401
    assert refused_handshake(port, member.cookies, "same") == 401


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver


@pytest.mark.slow
def test_a_browser_opens_every_page_submits_a_job_and_downloads_its_exr(tmp_path, peers):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    obj = tmp_path / "quad.obj"
    obj.write_text(QUAD_OBJ)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    peer, port = peers(tmp_path / "a", "--web", "127.0.0.1:0")
    base = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # the live pages redraw their parts as events come: an element found may be replaced at once
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    try:
        browser.get(f"{base}/party")
        wait.until(lambda b: peer.peer_id[-12:] in b.find_element(By.ID, "party").text)
        browser.get(f"{base}/live")  # the event stream's first snapshot replaces "Waiting for the peer"
        wait.until(lambda b: "Waiting" not in b.find_element(By.ID, "live-status").text)
        browser.get(f"{base}/stream")
        assert "No streaming session" in browser.find_element(By.ID, "no-session").text
        browser.get(f"{base}/queue")
        browser.find_element(By.NAME, "scene").send_keys(str(obj))
        for name, value in (("res", "64x48"), ("spp", "8"), ("tile", "16")):
            browser.find_element(By.NAME, name).send_keys(value)
        browser.find_element(By.CSS_SELECTOR, "form.submit button").click()
        wait.until(lambda b: "submitted=" in b.current_url)
        jid = browser.current_url.rsplit("=", 1)[1]
        assert wait_job(httpx.Client(base_url=base), jid, ("done", "failed"))["state"] == "done"
        browser.get(f"{base}/results")
        thumb = browser.find_element(By.CSS_SELECTOR, f'a[data-job="{jid}"] img')
        wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", thumb) == 64)
        browser.get(f"{base}/results/{jid}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.overlay rect")) == 12
        timeline = browser.find_element(By.ID, "timeline")  # the job's timeline figure, 1200 px wide
        wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", timeline) == 1200)
        browser.find_element(By.LINK_TEXT, "frame_0000.exr").click()
        got = downloads / f"{jid[:12]}_frame_0000.exr"
        wait.until(lambda b: got.exists() and got.stat().st_size > 0)
    finally:
        browser.quit()
    local = tmp_path / "local.exr"
    p = cli("render", str(obj), "--res", "64x48", "--spp", "8", "--tile", "16", "--backend", "cpu",
            "--threads", "1", "-o", str(local), home=tmp_path / "solo")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert got.read_bytes() == local.read_bytes()


# ---------------------------------------------------------------------------- the Stream socket


def stream_socket(port: int, cookies, origin: str | None = "same", timeout: float = 30):
    """A WebSocket to /stream/ws as the page opens it: the page's cookie, its own origin."""
    import websocket  # websocket-client (selenium's own dependency)

    base = f"http://127.0.0.1:{port}"
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}/stream/ws",
        cookie=cookie or None,
        origin=base if origin == "same" else origin,
        timeout=timeout,
        suppress_origin=origin is None,
    )


def closed_with(ws) -> tuple[int, str]:
    """Read until the server's close frame: (code, reason)."""
    while True:
        frame = ws.recv_frame()  # raw frames: no close sent back to a server that may have gone
        if frame.opcode == 8:  # close
            return struct.unpack("!H", frame.data[:2])[0], frame.data[2:].decode()


def refused_handshake(port: int, cookies, origin) -> int:
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        stream_socket(port, cookies, origin)
    return info.value.status_code


@pytest.mark.slow
def test_the_stream_page_starts_a_session_of_a_built_in_or_an_uploaded_scene_and_stops_it(tmp_path, peers):
    obj = tmp_path / "quad.obj"
    obj.write_text(QUAD_OBJ)
    peer, port = peers(tmp_path / "a", "--web", "127.0.0.1:0")
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    page = c.get("/stream")
    assert "No streaming session" in page.text and "Stream a scene" in page.text
    csrf = csrf_of(page)
    small = {"res": "32x24", "spp": "4"}
    assert c.post("/stream/start", data={"csrf": "0" * 32, "builtin": "cornell", **small}).status_code == 403
    r = c.post("/stream/start", data={"csrf": csrf, "builtin": "no-such-scene", **small})
    assert r.status_code == 400 and "built-in scene or a scene file" in r.text
    r = c.post("/stream/start", data={"csrf": csrf, "builtin": "cornell", "res": "32x24", "spp": "-3"})
    assert r.status_code == 400 and "spp" in r.text
    r = c.post("/stream/start", data={"csrf": csrf}, files={"scene": ("bad.obj", b"v 1 2\nf 9 9 9\n")})
    assert r.status_code == 400 and "bad.obj" in r.text and str(tmp_path) not in r.text
    assert c.get("/api/snapshot").json()["streams"] == []  # nothing started by a refused form

    r = c.post("/stream/start", data={"csrf": csrf, "builtin": "cornell", **small})
    assert r.status_code == 303 and r.headers["location"] == "/stream"
    (first,) = c.get("/api/snapshot").json()["streams"]
    assert first["scene"] == "builtin:cornell" and (first["width"], first["height"]) == (32, 24)
    assert first["pass_count"] == 4  # one sample per pass: the whole image refines together
    page = c.get("/stream")
    assert "<p id=no-session hidden>" in page.text and "<div id=stream class=stream>" in page.text
    assert "Stop this session" in page.text and "Stream another scene" in page.text

    upload = {"scene": ("my quad.obj", obj.read_bytes())}
    r = c.post("/stream/start", data={"csrf": csrf, **small}, files=upload)
    assert r.status_code == 303
    streams = c.get("/api/snapshot").json()["streams"]
    assert [s["scene"] for s in streams] == ["builtin:cornell", "web:my_quad.obj"]
    assert not list((tmp_path / "a" / "web-uploads").iterdir())  # the upload is gone once loaded

    assert c.post("/stream/stop", data={"csrf": csrf, "session": "f" * 16}).status_code == 404
    for s in streams:
        assert c.post("/stream/stop", data={"csrf": csrf, "session": s["id"]}).status_code == 303
    deadline = time.monotonic() + 30
    while c.get("/api/snapshot").json()["streams"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.get("/api/snapshot").json()["streams"] == []
    ended = [e for e in peer.events if e["event"] == "stream-ended"]
    assert {e["reason"] for e in ended} == {"stopped from the web page"} and len(ended) == 2


def test_the_stream_socket_says_when_no_session_runs_and_refuses_garbage(tmp_path, peers):
    peer, port = peers(tmp_path / "a", "--web", "127.0.0.1:0")
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    page = c.get("/stream")
    assert "No streaming session" in page.text and "<div id=stream hidden" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    # outsiders: no session cookie (another program), or another site's page in this browser
    assert refused_handshake(port, {}, "same") == 401
    assert refused_handshake(port, c.cookies, "http://evil.example") == 403
    assert refused_handshake(port, c.cookies, f"http://localhost:{port}") == 403  # another origin too

    ws = stream_socket(port, c.cookies)
    ws.send(json.dumps({"t": "hello", "fmt": "webp", "quality": 60, "denoise": True}))
    assert json.loads(ws.recv()) == {"t": "session", "status": None}
    ws.send(json.dumps({"t": "camera", "position": [0, 1, 4]}))
    assert json.loads(ws.recv()) == {"t": "error", "message": "no streaming session is running"}
    ws.send(json.dumps({"t": "ack"}))  # an ack with no frame out is harmless
    ws.send("{nope")
    code, reason = closed_with(ws)
    assert code == 1008 and "malformed" in reason

    too_long = json.dumps({"t": "material", "name": "x" * 5000})
    for first, want, words in (
        (b"\x00\x01", 1003, "binary"),
        (too_long, 1009, "over 4096"),
        (json.dumps({"t": "ack"}), 1008, "first message must be a hello"),
        (json.dumps({"t": "hello", "fmt": "gif"}), 1008, "fmt"),
        (json.dumps({"t": "hello", "quality": 1000}), 1008, "quality"),
        (json.dumps({"t": "hello", "script": "<x>"}), 1008, "unknown field"),
        (json.dumps({"t": "reboot"}), 1008, "not a stream message"),
        (json.dumps([1, 2]), 1008, "not a stream message"),
    ):
        ws = stream_socket(port, c.cookies)
        ws.send_binary(first) if isinstance(first, bytes) else ws.send(first)
        code, reason = closed_with(ws)
        assert code == want and words in reason, (first[:60], code, reason)

    ws = stream_socket(port, c.cookies)  # edits out of range are refused before any session sees them
    ws.send(json.dumps({"t": "hello"}))
    ws.recv()
    ws.send(json.dumps({"t": "material", "name": "white", "roughness": 2}))
    code, reason = closed_with(ws)
    assert code == 1008 and "roughness" in reason

    ws = stream_socket(port, c.cookies)  # a flood is cut off
    ws.send(json.dumps({"t": "hello"}))
    ws.recv()
    for _ in range(WS_MESSAGES_BURST + 20):
        ws.send(json.dumps({"t": "ack"}))
    code, reason = closed_with(ws)
    assert code == 1008 and "messages a second" in reason

    sockets = []  # a bounded number open at once
    for _ in range(STREAM_SOCKETS_MAX):
        sockets.append(stream_socket(port, c.cookies))
        sockets[-1].send(json.dumps({"t": "hello"}))
        assert json.loads(sockets[-1].recv())["t"] == "session"
    code, reason = closed_with(stream_socket(port, c.cookies))
    assert code == 1013 and "try again later" in reason
    sockets.pop().close()
    time.sleep(0.5)
    ws = stream_socket(port, c.cookies)  # one closed: room for another
    ws.send(json.dumps({"t": "hello"}))
    assert json.loads(ws.recv())["t"] == "session"
    for s in [*sockets, ws]:
        s.close()
    assert peer.wait_for("web-stream-refused", code=1009)["reason"].startswith("a message over")


class StreamClient:
    """The Stream page's side of the socket, in a test: reads messages, keeps every frame's header
    and image, and acks each frame once it is read (as the page does once it has drawn it)."""

    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []
        self.frames: list[tuple[dict, bytes]] = []

    def send(self, **msg) -> None:
        self.ws.send(json.dumps(msg))

    def read(self, *, ack: bool = True) -> dict:
        msg = json.loads(self.ws.recv())
        if msg["t"] == "frame":
            data = self.ws.recv()
            assert isinstance(data, bytes) and len(data) == msg["bytes"]
            self.frames.append((msg, data))
            if ack:
                self.send(t="ack")
        self.messages.append(msg)
        return msg

    def until(self, pred, *, limit: int = 2000) -> dict:
        for _ in range(limit):
            msg = self.read()
            if pred(msg):
                return msg
        raise AssertionError(f"no such message in {limit}: {self.messages[-5:]}")


def image_of(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_the_stream_socket_streams_a_session_and_its_edits(tmp_path):
    import msgspec
    import numpy as np
    import trio
    import websocket

    from meshrender.output import srgb_encode
    from meshrender.scene.load import load_scene
    from meshrender.script import open_session

    scene = load_scene("cornell")
    settings = msgspec.structs.replace(scene.settings, width=64, height=48, spp=32, pass_spp=4)
    ports: list[int] = []

    def on_event(ev: dict) -> None:
        if ev["event"] == "web":
            ports.append(ev["port"])

    def client() -> tuple[int, bytes]:
        port = ports[0]
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        page = c.get("/stream").text
        assert "<div id=stream class=stream>" in page and "<p id=no-session hidden>" in page
        s = StreamClient(stream_socket(port, c.cookies))
        s.send(t="hello", fmt="png")
        status = s.read()["status"]
        assert status["version"] == 1 and (status["width"], status["height"]) == (64, 48)
        assert status["camera"]["position"] == list(scene.camera.position)
        materials = [m["name"] for m in status["materials"]]
        assert materials and status["lights"]
        first = s.read(ack=False)
        assert first["t"] == "frame" and first["version"] == 1 and first["mime"] == "image/png"
        assert first["pass_count"] == 8 and 1 <= first["pass_done"] <= 8
        assert first["samples"] == 4 * first["pass_done"] and first["peers"] and not first["denoised"]
        assert image_of(s.frames[-1][1]).shape == (48, 64, 3)
        s.ws.settimeout(1.5)  # not acked: nothing more comes, however many passes finish meanwhile
        with pytest.raises(websocket.WebSocketTimeoutException):
            s.read()
        s.ws.settimeout(30)
        s.send(t="ack")
        if first["pass_done"] < 8:
            later = s.until(lambda m: m["t"] == "frame")
            assert (later["version"], later["pass_done"]) > (1, first["pass_done"])

        s.send(t="camera", position=[0.6, 0.4, 3.6])
        edited = s.until(lambda m: m["t"] == "edited")
        assert edited == {"t": "edited", "kind": "camera", "version": 2}
        s.until(lambda m: m["t"] == "session" and m["status"]["version"] == 2)
        assert s.messages[-1]["status"]["camera"]["position"] == [0.6, 0.4, 3.6]
        s.until(lambda m: m["t"] == "frame" and m["version"] == 2)
        s.send(t="material", name="no such material", roughness=0.5)
        assert "no material called" in s.until(lambda m: m["t"] == "error")["message"]
        s.send(t="material", name=materials[0], color=[0.9, 0.2, 0.1], roughness=0.3)
        assert s.until(lambda m: m["t"] == "edited")["version"] == 3
        light = status["lights"][0]
        moved = [light["position"][0] + 0.1, light["position"][1] - 0.1, light["position"][2]]
        s.send(t="light", index=light["index"], position=moved)
        assert s.until(lambda m: m["t"] == "edited") == {"t": "edited", "kind": "light", "version": 4}
        s.send(t="hello", fmt="jpeg", quality=70)
        # the hello gets the newest frame again, in JPEG: version 2's while the edits' renders
        # have none yet (a race the test lost in 2 runs of 10), then theirs
        s.until(lambda m: m["t"] == "frame" and m["mime"] == "image/jpeg")
        assert s.frames[-1][1][:2] == b"\xff\xd8"
        s.until(lambda m: m["t"] == "frame" and m["mime"] == "image/jpeg" and m["version"] >= 3)
        assert s.frames[-1][1][:2] == b"\xff\xd8"
        s.send(t="hello", fmt="jpeg", denoise=True)  # the denoiser on the preview's colour
        denoised = s.until(lambda m: m["t"] == "frame" and m["denoised"])
        assert denoised["note"] == "" and s.frames[-1][1][:2] == b"\xff\xd8"
        s.send(t="hello", fmt="png")
        last = s.until(lambda m: m["t"] == "frame" and m["version"] == 4 and m["mime"] == "image/png"
                       and m["pass_done"] == m["pass_count"])  # fmt: skip
        versions = [h["version"] for h, _ in s.frames]
        assert versions == sorted(versions)  # a version's frames never come after a newer one's
        seen = [m["status"]["version"] for m in s.messages if m["t"] == "session"]
        assert seen == sorted(seen) and seen[-1] == 4
        s.ws.close()
        return last["version"], s.frames[-1][1]

    async def main():
        async with open_session(scene, home=tmp_path / "h", party="p", secret=SECRET,
                                      web=("127.0.0.1", 0), settings=settings, backend="cpu", threads=1,
                                      on_event=on_event) as session:  # fmt: skip
            with trio.fail_after(60):
                while not ports:
                    await trio.sleep(0.05)
            version, png = await trio.to_thread.run_sync(client)  # (each read times out in 30 s)
            assert session.converged is not None and session.converged[0] == version
            # the converged PNG preview is the converged image, tone-mapped as a result PNG is
            assert np.array_equal(image_of(png), srgb_encode(session.converged[1], settings.exposure))

    trio.run(main)


def camera_of(text: str) -> dict:
    """The Stream page's camera line: 'camera at x, y, z looking at x, y, z · up ... · F° · ...'."""
    m = re.search(r"camera at ([-\d., ]+) looking at ([-\d., ]+) · up ([-\d., ]+) · ([\d.]+)°", text)
    assert m, text
    position, look_at, up = ([float(x) for x in g.split(", ")] for g in m.groups()[:3])
    return {"position": position, "look_at": look_at, "up": up, "fov_deg": float(m.group(4))}


def distance(camera: dict) -> float:
    return math.dist(camera["position"], camera["look_at"])


STREAM_CLI = "import sys; from meshrender.cli import main; sys.exit(main(['stream', *sys.argv[1:]]))"


@pytest.mark.slow
def test_a_browser_streams_a_session_and_its_mouse_moves_the_camera(tmp_path):
    """`meshrender stream` on loopback; Chromium on its Stream page drags, wheels and shift-drags the
    viewport and moves a light: each makes a new version whose previews replace the image."""
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    args = ("cornell", "--json", "--web", "127.0.0.1:0", "--res", "96x96", "--spp", "64", "--pass-spp", "4")
    streamer = PeerProc(tmp_path / "s", *args, "--no-watch", *WORKER, script=STREAM_CLI)
    port = streamer.wait_for("web")["port"]
    streamer.wait_for("stream-started", timeout=60)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def session() -> dict:
        (only,) = api.get("/api/snapshot").json()["streams"]
        return only

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    try:
        browser.get(f"http://127.0.0.1:{port}/stream")
        status = browser.find_element(By.ID, "stream-status")
        view = browser.find_element(By.ID, "stream-view")
        camera_line = browser.find_element(By.ID, "stream-camera")
        assert not browser.find_element(By.ID, "no-session").is_displayed()
        wait.until(lambda b: "version 1 · pass" in status.text)
        assert f"rendered by {streamer.peer_id[-12:]}" in status.text and "JPEG" in status.text
        assert (view.get_attribute("width"), view.get_attribute("height")) == ("96", "96")
        start = camera_of(camera_line.text)
        assert start["position"] == pytest.approx(session()["camera"]["position"], abs=1e-3)
        radius = distance(start)
        before = browser.execute_script("return arguments[0].toDataURL()", view)

        def version() -> int:
            return int(view.get_attribute("data-version") or 0)

        # drag: orbit about look_at (the distance to it stays)
        ActionChains(browser).move_to_element(view).click_and_hold().move_by_offset(60, 0) \
            .move_by_offset(20, -15).release().perform()  # fmt: skip
        wait.until(lambda b: version() >= 2 and f"version {version()} ·" in status.text)
        wait.until(lambda b: camera_of(camera_line.text)["position"] != start["position"])
        orbited = session()["camera"]
        assert orbited["look_at"] == start["look_at"] and orbited["position"] != start["position"]
        assert distance(orbited) == pytest.approx(radius, abs=2e-3)
        wait.until(lambda b: b.execute_script("return arguments[0].toDataURL()", view) != before)

        # wheel: dolly away from look_at
        v = version()
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(view), 0, 300).perform()
        wait.until(lambda b: version() > v)
        wait.until(lambda b: distance(camera_of(camera_line.text)) > radius * 1.2)
        assert distance(session()["camera"]) > radius * 1.2

        # shift-drag: pan (look_at moves with the camera)
        v = version()
        ActionChains(browser).move_to_element(view).key_down(Keys.SHIFT).click_and_hold() \
            .move_by_offset(-30, 20).release().key_up(Keys.SHIFT).perform()  # fmt: skip
        wait.until(lambda b: version() > v)
        wait.until(lambda b: camera_of(camera_line.text)["look_at"] != start["look_at"])

        # a light moved from its x field; then the previews switch to PNG
        v = version()
        x = browser.find_element(By.ID, "light-x")
        x.clear()
        x.send_keys("0.2", Keys.TAB)
        wait.until(lambda b: version() > v)
        assert session()["lights"][0]["position"][0] == pytest.approx(0.2, abs=1e-5)
        Select(browser.find_element(By.ID, "stream-fmt")).select_by_value("png")
        wait.until(lambda b: "PNG" in status.text)  # the image again, as PNG (converged or not)
        assert browser.find_element(By.ID, "stream-error").text == ""
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
        streamer.stop()
