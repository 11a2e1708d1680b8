"""The web page every peer serves: its sessions and CSRF tokens, then real peers on loopback —
one on 127.0.0.1 (no login; the Host and CSRF checks), one bound to 0.0.0.0 and reached through
127.0.0.1 only (every route 401 without the party secret, the WebSocket handshake too; the login
rate limited) — submitting an uploaded scene, cancelling it, and downloading an EXR that is
bit-identical to a local `meshrender render` of the same scene and settings."""

from __future__ import annotations

import argparse
import re
import socket
import time

import httpx
import pytest
from party import SECRET, PeerProc, cli

from meshrender.peer.membership import FAILURES_MAX
from meshrender.web.addr import WEB_PORT_DEFAULT, is_loopback, parse_web_addr
from meshrender.web.app import overlay, settings_overrides
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
