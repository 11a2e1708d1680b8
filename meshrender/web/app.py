"""The web page's one Starlette app: every route, in this module.

How it works
  * `build_app(peer, exposed=...)` makes the app; `auth.Guard` sits in front of it (401 for an
    exposed page without a login). Pages are HTML made here with every value escaped; the CSS
    and the vanilla JS ship in `static/` inside the package and go inline into each page under a
    per-response CSP nonce, so nothing is fetched from anywhere else and no inline script a value
    could smuggle in would run.
  * What the pages show is the peer's own `snapshot()` and events (the status source the TUI and
    `--json` read): `/events` streams them as server-sent events (a snapshot first, then every
    event, and a fresh snapshot every SNAPSHOT_S); a reader that falls EVENTS_QUEUED_MAX events
    behind is dropped, as the local socket drops a slow TUI. The Party and Queue pages fetch their
    tables again (`?part=table`) when something changes; the Live page draws the frame from the
    snapshot's `frames`.
  * The queue is `jobs.sqlite`, as for `meshrender submit/cancel`: an upload is saved under the
    home's `web-uploads/` with a name we choose (the user's file name only lends its suffix and a
    label), loaded as an untrusted scene (nothing outside its folder), compiled in a worker thread
    and queued; the queue runner picks it up. Cancel and priority go through the runner as the
    control protocol's do.
  * Result files are served from `results/<job>/` only: the job id must be 64 hex digits of a job
    in the queue, the file name one the coordinator writes (frame_NNNN[.denoised].exr/.png,
    job.json), and the resolved path must lie in that folder. A job's timeline
    (`/results/<job>/timeline.png`, `meshrender.timeline` from its job.json) is drawn in a worker
    thread, one at a time, and kept until job.json changes (its mtime or size).
  * The Stream page talks to `/stream/ws` (behind the Guard: a logged-in session from the page's
    own origin). The page sends JSON text: first {"t": "hello", "fmt": png|jpeg|webp, "quality",
    "denoise"} (again whenever it changes them), then "camera", "material" and "light" edits and
    an {"t": "ack"} once it has drawn a frame. The server sends JSON text: {"t": "session",
    "status": StreamSession.status() or null} when the session or its version changes, {"t":
    "frame", version, pass_done, pass_count, samples, peers, width, height, mime, bytes, denoised,
    note} followed by one binary message (the image), {"t": "edited", kind, version} and {"t":
    "error", message}. The next frame goes only after the ack (`StreamSocket`). Every message is
    decoded against its msgspec type with bounded fields; a message that is binary, too long, too
    frequent, or not one of these closes the socket (1003, 1009, 1008) with a reason.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import secrets
import shutil
import time
from collections import Counter, OrderedDict
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..coordinate import results_dir
from ..distributed import jobs_db_path
from ..errors import MeshrenderError
from ..imagestream import PreviewCache
from ..jobs import JobDB, JobError
from ..peer.membership import FailureLimiter
from ..service import job_info, listing
from .auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    LOGIN_FORM_S,
    LOGIN_SECRET_BYTES_MAX,
    SESSION_COOKIE,
    Guard,
    Sessions,
    cookie_header,
)

log = logging.getLogger("meshrender.web")

SNAPSHOT_S = 1.0  # a fresh snapshot on the event stream this often
EVENTS_QUEUED_MAX = 1024  # events waiting for one reader; a reader further behind is dropped
EVENT_READERS_MAX = 64  # event streams open at once; more are refused (503)
UPLOAD_BYTES_MAX = 512 << 20  # one upload: a .glb with its textures; a scene file is far smaller
UPLOAD_FIELDS_MAX = 16  # text fields of the submit form (it has 12)
UPLOAD_FIELD_BYTES_MAX = 4096  # one text field; the scene file is the one part that may be large
UPLOADS_AT_ONCE = 2  # scenes saved and compiled at once; more wait their turn
FORM_BYTES_MAX = 16 << 10  # a form without a file (login, cancel, priority)
UPLOAD_SUFFIXES = (".toml", ".xml", ".obj", ".ply", ".gltf", ".glb")
UPLOAD_NAME_CHARS_MAX = 100  # the label kept from the user's file name
JOB_JSON_BYTES_MAX = 64 << 20  # job.json read for the provenance overlay; a bigger one is not drawn
OVERLAY_UNITS_MAX = 500_000  # units drawn per job; a bigger job's overlay is left out
FRAMES_SHOWN_MAX = 200  # frames on a job's results page; the rest are in the downloads
JOBS_SHOWN_MAX = 500  # jobs on the queue and results pages
TIMELINES_KEPT_MAX = 16  # drawn timeline PNGs kept (~100 KiB each), one per job, newest job.json only
TIMELINE_DRAWS_AT_ONCE = 1  # matplotlib draws in worker threads; one at a time leaves the renderer its cores
# the Stream page's WebSocket (/stream/ws); hypercorn refuses any message over 1 MiB before these
STREAM_SOCKETS_MAX = 16  # Stream sockets open at once; more are closed with 1013 (try again later)
WS_MESSAGE_CHARS_MAX = 4096  # one control message: a material edit is ~150 characters
WS_MESSAGES_PER_S = 60.0  # sustained: the page sends camera edits at 20/s (acks of frames sent are free)
WS_MESSAGES_BURST = 120  # a burst above that rate, allowed once; past it the socket is closed (1008)
WS_HELLO_S = 10.0  # the first message (hello) must come within this
WS_EDITS_PENDING_MAX = 64  # distinct materials and lights with an edit waiting; more at once is a flood
STREAM_POLL_S = 0.25  # how often a socket looks for a newer session, or the end of its own
WS_CLOSE_REASON_BYTES_MAX = 123  # RFC 6455: a close frame's reason fits in 123 bytes
WS_ERROR_CHARS_MAX = 500  # an edit's error message sent back to the page
SCENE_NAME_CHARS_MAX = 256  # a material's name in an edit
COORD_MAX = 1e9  # a camera or light coordinate; the session checks what makes sense in its scene

_JOB_RE = re.compile(r"[0-9a-f]{64}")
_RESULT_NAME_RE = re.compile(r"(frame_[0-9]{4,6}(\.denoised)?\.(exr|png)|job\.json)")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_STATIC = resources.files(__package__) / "static"
CSS = (_STATIC / "style.css").read_text()
JS = (_STATIC / "app.js").read_text()
PAGES = (
    ("party", "Party"),
    ("queue", "Queue"),
    ("results", "Results"),
    ("live", "Live"),
    ("stream", "Stream"),
)


def h(value) -> str:
    return html.escape(str(value), quote=True)


def short(peer_id: str) -> str:
    return peer_id[-12:] if peer_id else "?"


class BodyTooLarge(Exception):
    pass


class WebState:
    """What the routes share: the peer, its sessions and login limiter, the queue file."""

    def __init__(self, peer, *, exposed: bool):
        self.peer = peer
        self.exposed = exposed
        self.sessions = Sessions()
        self.logins = FailureLimiter()  # failed logins per client address, as failed joins
        self.readers = 0
        self.uploads = trio.Semaphore(UPLOADS_AT_ONCE)
        self.timeline_draws = trio.Semaphore(TIMELINE_DRAWS_AT_ONCE)
        self.timelines: OrderedDict[str, tuple[tuple[int, int], bytes]] = OrderedDict()  # job -> (stat, png)
        self.previews = PreviewCache()  # one encode of a frame for all its watchers
        self.stream_sockets = 0
        self.stream_socket_seq = 0
        self._db: JobDB | None = None

    @property
    def db(self) -> JobDB:
        if self._db is None:  # opened in the peer's trio thread, the one thread that uses it
            self._db = JobDB(jobs_db_path(self.peer.home))
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def build_app(peer, *, exposed: bool) -> tuple[Guard, WebState]:
    st = WebState(peer, exposed=exposed)
    routes = [
        Route("/", lambda r: RedirectResponse("/party", 303)),
        Route("/login", _login_page, methods=["GET"]),
        Route("/login", _login, methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Route("/party", _party, methods=["GET"]),
        Route("/queue", _queue, methods=["GET"]),
        Route("/queue/submit", _submit, methods=["POST"]),
        Route("/queue/{job}/cancel", _cancel, methods=["POST"]),
        Route("/queue/{job}/priority", _priority, methods=["POST"]),
        Route("/results", _results, methods=["GET"]),
        Route("/results/{job}", _result, methods=["GET"]),
        Route("/results/{job}/files/{name}", _result_file, methods=["GET"]),
        Route("/results/{job}/timeline.png", _timeline, methods=["GET"]),
        Route("/live", _live, methods=["GET"]),
        Route("/stream", _stream, methods=["GET"]),
        Route("/stream/start", _stream_start, methods=["POST"]),
        Route("/stream/stop", _stream_stop, methods=["POST"]),
        WebSocketRoute("/stream/ws", _stream_ws),
        Route("/events", _events, methods=["GET"]),
        Route("/api/snapshot", _api_snapshot, methods=["GET"]),
        Route("/api/jobs", _api_jobs, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.web = st
    return Guard(app, st.sessions, exposed=exposed, clock=trio.current_time), st


def _st(request: Request) -> WebState:
    return request.app.state.web


def _sid(request: Request) -> str | None:
    return request.scope.get("meshrender.session")


# ---------------------------------------------------------------------------- page frame


def _page(
    request: Request, page: str, title: str, body: str, status: int = 200, headers=None
) -> HTMLResponse:
    st = _st(request)
    nonce = secrets.token_urlsafe(16)
    sid = _sid(request)
    csrf = st.sessions.csrf(sid) if sid else ""
    nav = "".join(f'<a href="/{p}"{" class=here" if p == page else ""}>{h(label)}</a>' for p, label in PAGES)
    if st.exposed and sid:
        nav += (
            f"<form method=post action=/logout class=logout><input type=hidden name={CSRF_FIELD} "
            f'value="{h(csrf)}"><button>Log out</button></form>'
        )
    doc = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<meta name=csrf content="{h(csrf)}"><link rel=icon href="data:,"><title>{h(title)} · meshrender</title>
<style nonce="{nonce}">{CSS}</style></head>
<body data-page="{h(page)}"><header><b>meshrender</b> <span class=muted>{h(short(st.peer.peer_id))} ·
party {h(st.peer.party)}</span><nav>{nav}</nav></header>
<main>{body}</main>
<script nonce="{nonce}">{JS}</script></body></html>
"""
    return HTMLResponse(doc, status_code=status, headers={**_security_headers(nonce), **(headers or {})})


def _security_headers(nonce: str = "") -> dict[str, str]:
    csp = (
        "default-src 'none'; img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    if nonce:
        csp += f"; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'"
    return {
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "x-frame-options": "DENY",
    }


def _message(request: Request, status: int, text: str, page: str = "") -> HTMLResponse:
    return _page(request, page, f"{status}", f"<p class=error>{h(text)}</p>", status=status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _message(request, exc.status_code, str(exc.detail))


# ---------------------------------------------------------------------------- forms and CSRF


def _limited(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
        return message

    return wrapped


async def _form(request: Request, *, body_max: int = FORM_BYTES_MAX, files_max: int = 0):
    """The POSTed form, bounded, with its CSRF token checked (raises HTTPException otherwise)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > body_max):
        raise HTTPException(413, f"the request is over {body_max:,} bytes")
    bounded = Request(request.scope, _limited(request.receive, body_max))
    try:
        form = await bounded.form(
            max_files=files_max, max_fields=UPLOAD_FIELDS_MAX, max_part_size=UPLOAD_FIELD_BYTES_MAX
        )
    except BodyTooLarge:
        raise HTTPException(413, f"the request is over {body_max:,} bytes") from None
    except MultiPartException as exc:
        raise HTTPException(400, f"the form: {exc.message}") from None
    token = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not isinstance(token, str) or not _st(request).sessions.check_csrf(_sid(request), token):
        await form.close()
        raise HTTPException(403, "the form's CSRF token is missing or wrong: load the page again")
    return form


def _field(form, name: str) -> str:
    v = form.get(name)
    return v.strip() if isinstance(v, str) else ""


# ---------------------------------------------------------------------------- login


async def _login_page(request: Request, error: str = "", status: int = 200) -> Response:
    st = _st(request)
    if not st.exposed or _sid(request):
        return RedirectResponse("/party", 303)
    nonce = st.sessions.login_nonce(trio.current_time())
    body = f"""<h1>Log in</h1><p>This peer's page is open to the network: type the party secret.</p>
{f"<p class=error>{h(error)}</p>" if error else ""}
<form method=post action=/login>
<input type=hidden name={CSRF_FIELD} value="{h(st.sessions.login_csrf(nonce))}">
<label>Party secret <input type=password name=secret autocomplete=current-password autofocus></label>
<button>Log in</button></form>"""
    style = secrets.token_urlsafe(16)
    doc = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Log in · meshrender</title>"
        f'<style nonce="{style}">{CSS}</style></head><body><main>{body}</main></body></html>'
    )
    headers = _security_headers()
    headers["content-security-policy"] += f"; style-src 'nonce-{style}'"  # no script on this page
    resp = HTMLResponse(doc, status_code=status, headers=headers)
    resp.raw_headers.append((b"set-cookie", cookie_header(LOGIN_COOKIE, nonce, max_age_s=int(LOGIN_FORM_S))))
    return resp


async def _login(request: Request) -> Response:
    st = _st(request)
    if not st.exposed:
        return RedirectResponse("/party", 303)
    client = request.client.host if request.client else "?"
    now = trio.current_time()
    if not st.logins.allows(client, now):
        st.peer._event("web-login-refused", client=client, reason="blocked after failed logins")
        return HTMLResponse(
            "429: too many failed logins from this address; wait and try again.\n",
            status_code=429,
            headers={**_security_headers(), "retry-after": "60"},
        )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > FORM_BYTES_MAX):
        return HTMLResponse("413: the login form is small\n", status_code=413)
    try:
        form = await Request(request.scope, _limited(request.receive, FORM_BYTES_MAX)).form(
            max_files=0, max_fields=4, max_part_size=LOGIN_SECRET_BYTES_MAX
        )
    except (BodyTooLarge, MultiPartException):
        return HTMLResponse("400: not a login form\n", status_code=400)
    token, secret = form.get(CSRF_FIELD), form.get("secret")
    if not isinstance(token, str) or not st.sessions.check_login_csrf(
        request.cookies.get(LOGIN_COOKIE), token, now
    ):
        return await _login_page(request, "The form expired or did not come from this page: try again.", 403)
    typed = secret.encode() if isinstance(secret, str) else b""
    if not typed or len(typed) > LOGIN_SECRET_BYTES_MAX or not st.peer.secret_matches(typed):
        blocked = st.logins.failed(client, now)
        st.peer._event("web-login-failed", client=client, blocked_s=blocked.block_s if blocked else 0)
        return await _login_page(request, "That is not the party secret.", 401)
    sid, cookie = st.sessions.new(now)
    st.peer._event("web-login", client=client)
    resp = RedirectResponse("/party", 303)
    resp.raw_headers.append((b"set-cookie", cookie_header(SESSION_COOKIE, cookie)))
    resp.raw_headers.append((b"set-cookie", cookie_header(LOGIN_COOKIE, "", max_age_s=0)))
    return resp


async def _logout(request: Request) -> Response:
    await _form(request)
    st = _st(request)
    if _sid(request):
        st.sessions.drop(_sid(request))
    resp = RedirectResponse("/login" if st.exposed else "/party", 303)
    resp.raw_headers.append((b"set-cookie", cookie_header(SESSION_COOKIE, "", max_age_s=0)))
    return resp


# ---------------------------------------------------------------------------- party


def backend_text(status: dict | None) -> str:
    """As the TUI says it: GPU, CPU, CPU (fell back), starting, client."""
    if not status:
        return "?"
    if not status.get("renders", True):
        return "client"
    if status.get("gpu") is None:
        return "starting"
    if status.get("fell_back"):
        return "CPU (GPU out of memory)" if status.get("fallback") == "gpu-oom" else "CPU (fell back)"
    return "GPU" if status.get("gpu") else "CPU"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def party_table(snap: dict) -> str:
    me = snap.get("status") or {}
    rows = [(snap.get("peer_id", ""), me, True)] + [
        (p, m.get("status"), False) for p, m in sorted(snap.get("members", {}).items())
    ]
    out = [
        "<table id=party><thead><tr><th>Peer<th>Backend<th>Speed<th>Threads<th>Load<th>Units"
        "<th>State<th>Why</tr></thead><tbody>"
    ]
    for peer, st, mine in rows:
        st = st or {}
        speed = st.get("speed")
        backend = backend_text(st)
        why = st.get("reason", "") if st.get("fell_back") else st.get("renderer_note", "")
        out.append(
            f'<tr{" class=me" if mine else ""} data-peer="{h(peer)}"><td title="{h(peer)}">'
            f"{'▸ ' if mine else ''}{h(short(peer))}<td{' class=warn' if st.get('fell_back') else ''}>"
            f"{h(backend)}<td>{'-' if speed is None else h(f'{speed:.1f} Ms/s')}"
            f"<td>{h(st.get('threads', '?'))}"
            f"<td>{h(st.get('load', '?'))}<td>{h(st.get('units', 0))}"
            f"<td>{h(st.get('activity') or st.get('state', '?'))}<td>{h(why)}</tr>"
        )
    out.append("</tbody></table>")
    t = snap.get("transfers", {})
    out.append(
        f"<p>{len(snap.get('members', {}))} member(s) · in {h(human_bytes(t.get('bytes_in', 0)))} · "
        f"out {h(human_bytes(t.get('bytes_out', 0)))} · {len(snap.get('scenes', []))} scene(s) here</p>"
    )
    members = snap.get("members", {})
    if members:
        out.append(
            "<h2>Transfers</h2><table><thead><tr><th>Peer<th>Fetching<th>Serving<th>Received<th>Sent"
            "</tr></thead><tbody>"
        )
        for p, m in sorted(members.items()):
            out.append(
                f'<tr><td title="{h(p)}">{h(short(p))}<td>{h(m.get("chunks_fetching", 0))}'
                f"<td>{h(m.get('chunks_serving', 0))}<td>{h(human_bytes(m.get('bytes_received', 0)))}"
                f"<td>{h(human_bytes(m.get('bytes_served', 0)))}</tr>"
            )
        out.append("</tbody></table>")
    pen = snap.get("penalties") or {}
    if pen or snap.get("banned"):
        out.append("<h2>Penalties</h2><ul>")
        for p, reasons in sorted(pen.items()):
            banned = " (banned)" if p in snap.get("banned", []) else ""
            out.append(f"<li>{h(short(p))}{banned}: {h(reasons[-1] if reasons else '')}</li>")
        out.append("</ul>")
    return "".join(out)


async def _party(request: Request) -> Response:
    table = party_table(_st(request).peer.snapshot())
    if request.query_params.get("part") == "table":
        return HTMLResponse(table, headers=_security_headers())
    return _page(request, "party", "Party", f"<h1>Party</h1><div id=live-part data-part=table>{table}</div>")


# ---------------------------------------------------------------------------- queue


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def queue_table(request: Request) -> str:
    st = _st(request)
    csrf = h(st.sessions.csrf(_sid(request)) if _sid(request) else "")
    recs = listing(st.db)[:JOBS_SHOWN_MAX]
    if not recs:
        return "<p id=jobs class=muted>No jobs yet.</p>"
    out = [
        "<table id=jobs><thead><tr><th>Job<th>Scene<th>Frames<th>Priority<th>Progress<th>Submitted"
        "<th>State<th></tr></thead><tbody>"
    ]
    for r in recs:
        active = r.state in ("queued", "running")
        progress = f"{r.units_done}/{r.units_total}" if r.units_total else "-"
        prio = (
            (
                f"<form method=post action=/queue/{r.id}/priority class=inline><input type=hidden "
                f'name={CSRF_FIELD} value="{csrf}"><input type=number name=priority value="{r.priority}" '
                f"min=-1000 max=1000 class=num><button>Set</button></form>"
            )
            if active
            else h(r.priority)
        )
        cancel = (
            (
                f"<form method=post action=/queue/{r.id}/cancel class=inline><input type=hidden "
                f'name={CSRF_FIELD} value="{csrf}"><button>Cancel</button></form>'
            )
            if active
            else ""
        )
        state = h(r.state) + (f" <span class=error>{h(r.error[:200])}</span>" if r.error else "")
        out.append(
            f'<tr data-job="{r.id}" data-state="{h(r.state)}"><td><a href=/results/{r.id} title="{r.id}">'
            f'{r.id[:12]}</a><td title="{h(r.spec.scene_id)}">{h(r.spec.scene_id[:12])}'
            f"<td>{r.spec.first_frame}..{r.spec.last_frame}<td>{prio}<td>{h(progress)}"
            f"<td>{h(_when(r.submitted_s))}<td>{state}<td>{cancel}</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


SUBMIT_FORM = """<h2>Submit a scene</h2>
<form method=post action=/queue/submit enctype=multipart/form-data class=submit>
<input type=hidden name={csrf_field} value="{csrf}">
<label class=wide>Scene file ({suffixes}) <input type=file name=scene required accept="{suffixes}"></label>
<label>Resolution <input name=res placeholder="640x480"></label>
<label>Samples per pixel <input type=number name=spp min=1></label>
<label>Samples per pass <input type=number name=pass_spp min=1></label>
<label>Max depth <input type=number name=max_depth min=1></label>
<label>Seed <input type=number name=seed min=0></label>
<label>Bucket px <input type=number name=tile min=4></label>
<label>Exposure (stops) <input type=number name=exposure step=0.1></label>
<label>Frames <input name=frames placeholder="0..47"></label>
<label>Priority <input type=number name=priority value=0 min=-1000 max=1000></label>
<label>Backend <select name=backend><option>any<option>cpu<option>gpu</select></label>
<label><input type=checkbox name=denoise value=1> Denoise</label>
<button>Submit</button></form>
<p class=muted>Empty fields keep the scene's own settings. A scene file that names other files
(meshes, textures) cannot be uploaded alone: send a .glb, or submit it with <code>meshrender submit</code>.
At most {limit}.</p>"""


async def _queue(request: Request) -> Response:
    table = queue_table(request)
    if request.query_params.get("part") == "table":
        return HTMLResponse(table, headers=_security_headers())
    st = _st(request)
    note = ""
    if (jid := request.query_params.get("submitted")) and _JOB_RE.fullmatch(jid):
        note = f"<p class=ok>Submitted job <a href=/results/{jid}>{jid[:12]}</a>.</p>"
    form = SUBMIT_FORM.format(
        csrf_field=CSRF_FIELD,
        csrf=h(st.sessions.csrf(_sid(request)) if _sid(request) else ""),
        suffixes=",".join(UPLOAD_SUFFIXES),
        limit=h(human_bytes(UPLOAD_BYTES_MAX)),
    )
    body = f"<h1>Queue</h1>{note}<div id=live-part data-part=table>{table}</div>{form}"
    return _page(request, "queue", "Queue", body)


_INT_FIELDS = (
    ("spp", "spp"),
    ("pass_spp", "pass_spp"),
    ("max_depth", "max_depth"),
    ("seed", "seed"),
    ("tile", "bucket_px"),
)


def settings_overrides(form) -> dict:
    """The submit form's render settings (empty fields: the scene's own); ValueError names the field."""
    out: dict = {}
    for name, field in _INT_FIELDS:
        text = _field(form, name)
        if text:
            try:
                out[field] = int(text)
            except ValueError:
                raise ValueError(f"{name}: {text[:40]!r} is not a whole number") from None
    if text := _field(form, "exposure"):
        try:
            out["exposure"] = float(text)
        except ValueError:
            raise ValueError(f"exposure: {text[:40]!r} is not a number") from None
    if text := _field(form, "res"):
        w, sep, hgt = text.lower().partition("x")
        if not sep or not w.isdigit() or not hgt.isdigit():
            raise ValueError(f"resolution: {text[:40]!r} is not WIDTHxHEIGHT, e.g. 640x480")
        out["width"], out["height"] = int(w), int(hgt)
    if _field(form, "denoise"):
        out["denoise"] = True
    return out


def _frames(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    a, _, b = text.partition("..")
    try:
        first, last = int(a), int(b) if b else int(a)
    except ValueError:
        raise ValueError(f"frames: {text[:40]!r} is not A..B or N") from None
    if first < 0 or last < first:
        raise ValueError(f"frames: {text[:40]!r}: 0 <= A <= B")
    return first, last


def _compile_and_submit(
    home: Path, path: Path, overrides: dict, frames, backend: str, priority: int, submitter: str
):
    """In a worker thread: load the uploaded scene (untrusted: nothing outside its folder), apply
    the form's settings, put it in the store and queue it. Its JobInfo."""
    from ..cli_common import submit_compiled
    from ..scene.compile import compile_scene
    from ..scene.load import load_scene

    scene = compile_scene(load_scene(path, allow_outside=False))
    try:
        raw = msgspec.to_builtins(msgspec.structs.replace(scene.settings, **overrides))
        settings = msgspec.convert(raw, type=type(scene.settings))
    except msgspec.ValidationError as exc:
        raise MeshrenderError(f"render settings: {exc}") from None
    first, last = frames or scene.frames
    return submit_compiled(
        home, scene, settings, (first, last), backend=backend, priority=priority, submitter=submitter
    )


def _upload_name(upload) -> tuple[str, str]:
    """The upload's file name made safe to show (only a label), and its suffix; ValueError when it
    is not a scene file."""
    name = _SAFE_NAME_RE.sub("_", Path(upload.filename.replace("\\", "/")).name)[-UPLOAD_NAME_CHARS_MAX:]
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ValueError(f"{name}: not a scene file (expected {', '.join(UPLOAD_SUFFIXES)})")
    return name, suffix


@contextlib.asynccontextmanager
async def _saved_upload(st: WebState, upload, suffix: str):
    """The upload written to a fresh folder of the peer's home (our file name, mode 0700), one
    upload at a time; the folder is removed afterwards."""
    async with st.uploads:
        folder = st.peer.home / "web-uploads" / secrets.token_hex(8)
        path = folder / f"scene{suffix}"  # our name; the user's is only a label

        def save() -> None:
            folder.mkdir(parents=True, mode=0o700)
            with open(path, "xb") as f:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, f, 1 << 20)

        try:
            await trio.to_thread.run_sync(save)
            yield path
        finally:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


async def _submit(request: Request) -> Response:
    st, peer = _st(request), _st(request).peer
    form = await _form(request, body_max=UPLOAD_BYTES_MAX, files_max=1)
    try:
        upload = form.get("scene")
        if upload is None or isinstance(upload, str) or not upload.filename:
            return _message(request, 400, "choose a scene file to upload", "queue")
        try:
            name, suffix = _upload_name(upload)
        except ValueError as exc:
            return _message(request, 400, str(exc), "queue")
        try:
            overrides = settings_overrides(form)
            frames = _frames(_field(form, "frames"))
            priority = int(_field(form, "priority") or 0)
        except ValueError as exc:
            return _message(
                request, 400, str(exc) if "priority" not in str(exc) else "priority: a whole number", "queue"
            )
        backend = _field(form, "backend") or "any"
        async with _saved_upload(st, upload, suffix) as path:
            try:
                info = await trio.to_thread.run_sync(
                    _compile_and_submit, peer.home, path, overrides, frames, backend, priority, f"web:{name}"
                )
            except MeshrenderError as exc:
                why = str(exc).replace(str(path), name).replace(str(path.parent), ".")
                return _message(request, 400, why, "queue")
    finally:
        await form.close()
    peer.scene_changed()
    peer._event("job-submitted", job=info.id, by="web", priority=info.priority)
    if peer.runner is not None:
        peer.runner.wake()
    if request.headers.get("accept", "").startswith("application/json"):
        return JSONResponse(msgspec.to_builtins(info), status_code=201)
    return RedirectResponse(f"/queue?submitted={info.id}", 303)


def _job_param(request: Request) -> str:
    jid = request.path_params["job"]
    if not _JOB_RE.fullmatch(jid):
        raise HTTPException(404, "no such job (a job id is 64 hex digits)")
    return jid


async def _cancel(request: Request) -> Response:
    jid = _job_param(request)
    await _form(request)
    st = _st(request)
    try:
        rec = st.peer.runner.cancel(jid) if st.peer.runner is not None else st.db.cancel(jid, now=time.time())
    except JobError as exc:
        return _message(request, 409, str(exc), "queue")
    st.peer._event("job-cancelled", job=rec.id, by="web")
    return RedirectResponse("/queue", 303)


async def _priority(request: Request) -> Response:
    jid = _job_param(request)
    form = await _form(request)
    st = _st(request)
    try:
        priority = int(_field(form, "priority"))
    except ValueError:
        return _message(request, 400, "priority: a whole number from -1000 to 1000", "queue")
    try:
        st.db.set_priority(jid, priority)
    except JobError as exc:
        return _message(request, 409, str(exc), "queue")
    if st.peer.runner is not None:
        st.peer.runner.wake()
    return RedirectResponse("/queue", 303)


# ---------------------------------------------------------------------------- results


def _job(st: WebState, jid: str):
    try:
        return st.db.get(jid)
    except JobError:
        raise HTTPException(404, f"no job {jid[:12]} in this peer's queue") from None


async def _results(request: Request) -> Response:
    st = _st(request)
    recs = st.db.list()[:JOBS_SHOWN_MAX]
    cards = []
    for r in recs:
        folder = results_dir(st.peer.home, r.id)
        thumb = f"frame_{r.spec.first_frame:04d}.png"
        img = (
            f'<img src="/results/{r.id}/files/{thumb}" alt="frame {r.spec.first_frame}" class=thumb>'
            if r.state == "done" and (folder / thumb).is_file()
            else f"<div class=nothumb>{h(r.state)}</div>"
        )
        cards.append(
            f'<a class=card href="/results/{r.id}" data-job="{r.id}">{img}<span>{r.id[:12]} · '
            f"{h(r.state)} · frames {r.spec.first_frame}..{r.spec.last_frame}</span></a>"
        )
    body = "<h1>Results</h1>" + (
        f"<div class=cards>{''.join(cards)}</div>" if cards else "<p class=muted>No jobs yet.</p>"
    )
    return _page(request, "results", "Results", body)


PEER_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#fffac8",
    "#800000",
    "#aaffc3",
    "#808000",
)


def provenance(folder: Path) -> tuple[dict | None, str]:
    """job.json of a finished job, if it is there and small enough to draw; else (None, why)."""
    path = folder / "job.json"
    try:
        size = path.stat().st_size
        if size > JOB_JSON_BYTES_MAX:
            return None, f"job.json is {human_bytes(size)}: too big to draw here (download it)"
        with open(path, "rb") as f:
            record = json.loads(f.read(JOB_JSON_BYTES_MAX + 1))
    except FileNotFoundError:
        return None, "no job.json yet"
    except (OSError, ValueError) as exc:
        return None, f"job.json cannot be read: {exc}"
    if not isinstance(record, dict) or not isinstance(record.get("units"), list):
        return None, "job.json holds no unit list"
    if len(record["units"]) > OVERLAY_UNITS_MAX:
        return None, f"{len(record['units']):,} units: too many to draw here"
    return record, ""


def overlay(units: list, frame: int, width: int, height: int, colour: dict[str, str]) -> str:
    """An SVG over the frame: each bucket filled in the colour of the peer that rendered most of
    its passes, its title naming every peer and how many passes each rendered."""
    buckets: dict[tuple, Counter] = {}
    for u in units:
        if not isinstance(u, dict) or u.get("frame") != frame:
            continue
        try:
            key = (int(u["x0"]), int(u["y0"]), int(u["width"]), int(u["height"]))
            buckets.setdefault(key, Counter())[str(u["peer"])] += int(u.get("passes", 1) or 1)
        except (KeyError, TypeError, ValueError):
            continue
    rects = []
    for (x, y, w, hh), peers in sorted(buckets.items()):
        top = peers.most_common(1)[0][0]
        title = ", ".join(f"{short(p)}: {n} pass(es)" for p, n in peers.most_common())
        rects.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{hh}" fill="{colour.get(top, "#888")}" '
            f'data-peer="{h(top)}"><title>bucket {x},{y}: {h(title)}</title></rect>'
        )
    return (
        f'<svg class=overlay viewBox="0 0 {width} {height}" preserveAspectRatio=none>{"".join(rects)}</svg>'
    )


async def _result(request: Request) -> Response:
    st = _st(request)
    jid = _job_param(request)
    rec = _job(st, jid)
    folder = results_dir(st.peer.home, rec.id)
    s = rec.spec.settings
    info = (
        f"<p>Job <code>{rec.id}</code> · {h(rec.state)} · scene <code>{h(rec.spec.scene_id[:16])}</code> · "
        f"{s.width}x{s.height}, {s.spp} spp · frames {rec.spec.first_frame}..{rec.spec.last_frame} · "
        f"{rec.units_done}/{rec.units_total} units</p>"
    )
    if rec.error:
        info += f"<p class=error>{h(rec.error)}</p>"
    names = [Path(p).name for p in rec.outputs if (folder / Path(p).name).is_file()]
    parts = [f"<h1>Results of {rec.id[:12]}</h1>", info]
    if names:
        links = "".join(
            f'<li><a href="/results/{rec.id}/files/{h(n)}" download>{h(n)}</a></li>' for n in names
        )
        parts.append(f"<h2>Downloads</h2><ul class=downloads>{links}</ul>")
    record, why = provenance(folder) if rec.state == "done" else (None, "")
    colour: dict[str, str] = {}
    if record is not None:
        by_peer = Counter(str(u.get("peer")) for u in record["units"] if isinstance(u, dict))
        for i, (p, _) in enumerate(by_peer.most_common()):
            colour[p] = PEER_COLOURS[i % len(PEER_COLOURS)]
        legend = "".join(
            f'<li><span class="swatch c{i % len(PEER_COLOURS)}"></span>{h(short(p))}: {n} unit(s)</li>'
            for i, (p, n) in enumerate(by_peer.most_common())
        )
        parts.append(
            f"<h2>Who rendered what</h2><ul class=legend>{legend}</ul>"
            "<label><input type=checkbox id=show-overlay checked> Show the bucket overlay</label>"
        )
    elif why:
        parts.append(f"<p class=muted>{h(why)}</p>")
    if (folder / "job.json").is_file():
        parts.append(
            f'<h2>Timeline</h2><figure class=timeline><img id=timeline src="/results/{rec.id}/timeline.png" '
            f'alt="which peer rendered what, and when, in job {rec.id[:12]}"></figure>'
        )
    frames = []
    last = min(rec.spec.last_frame, rec.spec.first_frame + FRAMES_SHOWN_MAX - 1)
    for frame in range(rec.spec.first_frame, last + 1):
        png = f"frame_{frame:04d}.png"
        if not (folder / png).is_file():
            continue
        svg = overlay(record["units"], frame, s.width, s.height, colour) if record is not None else ""
        frames.append(
            f'<figure class=frame data-frame="{frame}"><div class=stack>'
            f'<img src="/results/{rec.id}/files/{png}" '
            f'alt="frame {frame}">{svg}</div><figcaption>frame {frame}</figcaption></figure>'
        )
    if rec.spec.last_frame > last:
        frames.append(f"<p class=muted>Frames after {last} are in the downloads.</p>")
    parts.append(f"<div class=frames>{''.join(frames)}</div>" if frames else "")
    return _page(request, "results", f"Results {rec.id[:12]}", "".join(parts))


async def _result_file(request: Request) -> Response:
    st = _st(request)
    jid = _job_param(request)
    name = request.path_params["name"]
    if not _RESULT_NAME_RE.fullmatch(name):
        raise HTTPException(404, "not a result file name")
    _job(st, jid)  # a job of this queue
    folder = results_dir(st.peer.home, jid).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise HTTPException(404, f"{name}: not among job {jid[:12]}'s results")
    media = {".exr": "image/x-exr", ".png": "image/png", ".json": "application/json"}[path.suffix]
    headers = {
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
        "content-security-policy": "default-src 'none'",
    }
    inline = path.suffix == ".png" and "download" not in request.query_params
    return FileResponse(
        path,
        media_type=media,
        headers=headers,
        content_disposition_type="inline" if inline else "attachment",
        filename=f"{jid[:12]}_{name}",
    )


def _draw_timeline(path: Path) -> bytes:
    """In a worker thread: the timeline figure of the job.json at `path`, as PNG bytes."""
    from ..timeline import png_bytes, read_job_json, timeline_from_job

    try:
        record = read_job_json(path, bytes_max=JOB_JSON_BYTES_MAX)
    except ValueError as exc:
        raise ValueError(str(exc).replace(str(path), "job.json")) from None
    return png_bytes(timeline_from_job(record, source="job.json"))


async def timeline_png(st: WebState, jid: str) -> bytes:
    """Job `jid`'s timeline PNG, drawn again only when its job.json changed (its mtime or size).
    Raises HTTPException (404: no job.json; 422: one that cannot be drawn)."""
    path = results_dir(st.peer.home, jid) / "job.json"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise HTTPException(404, f"job {jid[:12]} has no job.json yet: its timeline comes with it") from None
    key = (stat.st_mtime_ns, stat.st_size)

    def kept() -> bytes | None:
        entry = st.timelines.get(jid)
        if entry is None or entry[0] != key:
            return None
        st.timelines.move_to_end(jid)
        return entry[1]

    if (png := kept()) is not None:
        return png
    async with st.timeline_draws:
        if (png := kept()) is not None:  # another request drew it while this one waited its turn
            return png
        try:
            png = await trio.to_thread.run_sync(_draw_timeline, path)
        except ValueError as exc:
            raise HTTPException(422, f"the timeline cannot be drawn: {exc}") from None
    st.timelines[jid] = (key, png)
    st.timelines.move_to_end(jid)
    while len(st.timelines) > TIMELINES_KEPT_MAX:
        st.timelines.popitem(last=False)
    return png


async def _timeline(request: Request) -> Response:
    st = _st(request)
    jid = _job_param(request)
    _job(st, jid)  # a job of this queue
    png = await timeline_png(st, jid)
    headers = {"x-content-type-options": "nosniff", "cache-control": "no-store",
               "content-security-policy": "default-src 'none'"}  # fmt: skip
    return Response(png, media_type="image/png", headers=headers)


# ---------------------------------------------------------------------------- live, stream


LIVE_BODY = """<h1>Live</h1><p id=live-status class=muted>Waiting for the peer…</p>
<div class=live><canvas id=live-frame width=480 height=320></canvas>
<label><input type=checkbox id=live-buckets checked> Bucket map</label>
<ul id=live-legend class=legend></ul></div><h2>Events</h2><ol id=live-events class=events reversed></ol>"""


async def _live(request: Request) -> Response:
    return _page(request, "live", "Live", LIVE_BODY)


STREAM_BODY = """<h1>Stream</h1>
<p id=no-session{none_hidden}>No streaming session. Start one below, or with
<code>meshrender stream SCENE</code>; the interactive viewport appears here when it runs.</p>
<div id=stream{stream_hidden} class=stream>
<div class=viewport><canvas id=stream-view width=256 height=256 tabindex=0
 title="drag: orbit · shift- or right-drag: pan · wheel: zoom"></canvas>
<p id=stream-status class=muted>Connecting…</p><p id=stream-camera class=muted></p></div>
<div class=controls>
<fieldset><legend>Preview</legend>
<label>Format <select id=stream-fmt><option value=jpeg selected>JPEG</option><option value=webp>WebP</option>
<option value=png>PNG (exact)</option></select></label>
<label>Quality <input id=stream-quality type=range min=10 max=100 value=80></label>
<label><input id=stream-denoise type=checkbox> Denoise</label>
<p id=stream-bytes class=muted></p></fieldset>
<fieldset><legend>Material</legend>
<label>Name <select id=material-name></select></label>
<label>Colour <input id=material-color type=color></label>
<label>Roughness <input id=material-roughness type=range min=0 max=1 step=0.01></label>
<label>IOR <input id=material-ior type=number min=1 max=4 step=0.01 class=num></label></fieldset>
<fieldset><legend>Light</legend>
<label>Light <select id=light-index></select></label>
<label>x <input id=light-x type=number step=0.05 class=num></label>
<label>y <input id=light-y type=number step=0.05 class=num></label>
<label>z <input id=light-z type=number step=0.05 class=num></label></fieldset>
<p id=stream-error class=error></p>
</div></div>"""


STREAM_START_FORM = """<h2>{title}</h2>
<form method=post action=/stream/start enctype=multipart/form-data class=submit id=stream-start>
<input type=hidden name={csrf_field} value="{csrf}">
<label>Built-in scene <select name=builtin>{builtins}</select></label>
<label class=wide>or a scene file ({suffixes}) <input type=file name=scene accept="{suffixes}"></label>
<label>Resolution <input name=res placeholder="256x256" value="256x256"></label>
<label>Samples per pixel <input type=number name=spp min=1 value=64></label>
<label>Max depth <input type=number name=max_depth min=1></label>
<label>Exposure (stops) <input type=number name=exposure step=0.1></label>
<button>Stream it</button></form>
<p class=muted>The party renders it one sample per pixel at a time over the whole image; every
edit here starts a new version at once. A session nobody watches or edits ends after
{idle_min} minutes.</p>{stop}"""
STREAM_STOP_FORM = """<form method=post action=/stream/stop class=inline>
<input type=hidden name={csrf_field} value="{csrf}"><input type=hidden name=session value="{sid}">
<button>Stop this session</button></form>"""
_SESSION_RE = re.compile(r"[0-9a-f]{16}")


def _stream_forms(request: Request, session) -> str:
    from ..scene.load import list_builtins
    from ..session import IDLE_S

    st = _st(request)
    csrf = h(st.sessions.csrf(_sid(request)) if _sid(request) else "")
    stop = "" if session is None else STREAM_STOP_FORM.format(csrf_field=CSRF_FIELD, csrf=csrf,
                                                              sid=h(session.id))  # fmt: skip
    return STREAM_START_FORM.format(
        title="Stream another scene" if session is not None else "Stream a scene",
        csrf_field=CSRF_FIELD, csrf=csrf, suffixes=",".join(UPLOAD_SUFFIXES),
        builtins="".join(f"<option>{h(b)}</option>" for b in list_builtins()),
        idle_min=round(IDLE_S / 60), stop=stop,
    )  # fmt: skip


def _load_for_stream(path_or_name: str, overrides: dict):
    """In a worker thread: load the scene (an upload is untrusted: nothing outside its folder)
    and its settings with the form's overrides; a streaming session renders 1-sample passes."""
    from ..scene.load import load_scene

    desc = load_scene(path_or_name, allow_outside=False)
    try:
        raw = msgspec.to_builtins(msgspec.structs.replace(desc.settings, **{"pass_spp": 1, **overrides}))
        return desc, msgspec.convert(raw, type=type(desc.settings))
    except msgspec.ValidationError as exc:
        raise MeshrenderError(f"render settings: {exc}") from None


async def _scene_to_stream(st: WebState, form, overrides: dict):
    """The form's scene (an uploaded file, else a built-in) and its settings; MeshrenderError or
    ValueError saying what is wrong with them."""
    from ..scene.load import list_builtins

    upload = form.get("scene")
    if upload is None or isinstance(upload, str) or not upload.filename:
        builtin = _field(form, "builtin")
        if builtin not in list_builtins():
            raise ValueError("choose a built-in scene or a scene file")
        return await trio.to_thread.run_sync(_load_for_stream, f"builtin:{builtin}", overrides)
    name, suffix = _upload_name(upload)
    async with _saved_upload(st, upload, suffix) as path:  # read whole: the folder may go after
        try:
            desc, settings = await trio.to_thread.run_sync(_load_for_stream, str(path), overrides)
        except MeshrenderError as exc:
            raise MeshrenderError(str(exc).replace(str(path), name).replace(str(path.parent), ".")) from None
    desc.source = f"web:{name}"
    return desc, settings


async def _stream_start(request: Request) -> Response:
    """Start a streaming session of a built-in scene or an uploaded file on this peer."""
    from ..streaming import StreamSession

    st, peer = _st(request), _st(request).peer
    form = await _form(request, body_max=UPLOAD_BYTES_MAX, files_max=1)
    try:
        desc, settings = await _scene_to_stream(st, form, settings_overrides(form))
        session = StreamSession(peer, desc, settings)
        await peer.start_stream(session)
    except (MeshrenderError, ValueError) as exc:
        return _message(request, 400, str(exc), "stream")
    finally:
        await form.close()
    peer._event("stream-submitted", session=session.id, by="web", scene=desc.source)
    return RedirectResponse("/stream", 303)


async def _stream_stop(request: Request) -> Response:
    peer = _st(request).peer
    form = await _form(request)
    try:
        sid = _field(form, "session")
    finally:
        await form.close()
    session = peer.streams.get(sid) if _SESSION_RE.fullmatch(sid) else None
    if session is None:
        return _message(request, 404, "no such streaming session (it may have ended)", "stream")
    session.stop("stopped from the web page")
    return RedirectResponse("/stream", 303)


def _current_session(peer):
    return peer.streams.current()  # the newest running streaming session, or None


async def _stream(request: Request) -> Response:
    session = _current_session(_st(request).peer)
    running = session is not None
    body = STREAM_BODY.format(
        none_hidden=" hidden" if running else "", stream_hidden="" if running else " hidden"
    )
    return _page(request, "stream", "Stream", body + _stream_forms(request, session))


# the Stream socket's protocol: client -> server, JSON text messages
Coord = Annotated[float, msgspec.Meta(ge=-COORD_MAX, le=COORD_MAX)]
Vec3 = tuple[Coord, Coord, Coord]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class ClientMsg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", forbid_unknown_fields=True):
    pass


class Hello(ClientMsg, tag="hello"):
    """First on every socket, and again whenever the page changes how it wants its previews."""

    fmt: Literal["png", "jpeg", "webp"] = "jpeg"
    quality: Annotated[int, msgspec.Meta(ge=1, le=100)] = 80
    denoise: bool = False


class Camera(ClientMsg, tag="camera"):
    position: Vec3 | None = None
    look_at: Vec3 | None = None
    up: Vec3 | None = None
    fov_deg: Annotated[float, msgspec.Meta(gt=0.0, lt=180.0)] | None = None


class MaterialEdit(ClientMsg, tag="material"):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=SCENE_NAME_CHARS_MAX)]
    color: tuple[Unit, Unit, Unit] | None = None
    roughness: Unit | None = None
    ior: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] | None = None


class LightEdit(ClientMsg, tag="light"):
    index: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
    position: Vec3


class Ack(ClientMsg, tag="ack"):
    """The page drew the last frame: the server may send the next."""


CLIENT_DECODER = msgspec.json.Decoder(Hello | Camera | MaterialEdit | LightEdit | Ack)


class Refused(Exception):
    """The client sent something outside the protocol: close the socket with `code`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _merged(old: ClientMsg | None, new: ClientMsg) -> ClientMsg:
    """Two edits of one thing waiting: the newer's fields over the older's (latest wins)."""
    if old is None:
        return new
    fields = {f: getattr(new, f) for f in new.__struct_fields__ if getattr(new, f) is not None}
    return msgspec.structs.replace(old, **fields)


def _edit_key(msg: ClientMsg) -> tuple:
    if isinstance(msg, Camera):
        return ("camera",)
    if isinstance(msg, MaterialEdit):
        return ("material", msg.name)
    return ("light", msg.index)


class StreamSocket:
    """One Stream page's socket: three tasks (receive, edits, frames) in one nursery.

    Frames: the newest frame of the current session, encoded through the shared PreviewCache,
    sent as a JSON header then one binary message; the next one only after the page's ack, so a
    slow page gets fewer frames and nothing queues. Edits: the newest of each kind (the camera,
    each material, each light) waits in `pending`, merged, and is applied one at a time; the
    session coalesces those that come while it compiles. Anything outside the protocol closes
    the socket with a code and a reason (`Refused`)."""

    def __init__(self, st: WebState, ws: WebSocket):
        self.st = st
        self.ws = ws
        st.stream_socket_seq += 1
        self.name = f"web-{st.stream_socket_seq}"
        self.hello: Hello | None = None
        self.said_hello = trio.Event()
        self.hello_changed = trio.Event()  # the page asked for another format since the last frame
        self.acked = trio.Event()  # set: no frame is waiting for the page's ack
        self.acked.set()
        self.pending: OrderedDict[tuple, ClientMsg] = OrderedDict()
        self.edits_waiting = trio.Event()
        self.send_lock = trio.Lock()
        self.tokens = float(WS_MESSAGES_BURST)
        self.tokens_at = trio.current_time()
        self.refused: Refused | None = None
        self.sent_frames = 0

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._receive, n.cancel_scope)
                n.start_soon(self._edits)
                n.start_soon(self._frames)
        except* WebSocketDisconnect:  # it went while a frame was being sent
            pass
        if self.refused is not None:
            why = self.refused.reason.encode()[:WS_CLOSE_REASON_BYTES_MAX].decode(errors="ignore")
            self.st.peer._event("web-stream-refused", socket=self.name, code=self.refused.code, reason=why)
            await self.ws.close(self.refused.code, why)

    async def send_json(self, msg: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(msg, default=str))

    # ------------------------------------------------------------------ from the page

    def _spend_token(self) -> None:
        now = trio.current_time()
        self.tokens = min(float(WS_MESSAGES_BURST), self.tokens + (now - self.tokens_at) * WS_MESSAGES_PER_S)
        self.tokens_at = now
        if self.tokens < 1.0:
            raise Refused(1008, f"more than {WS_MESSAGES_PER_S:.0f} messages a second")
        self.tokens -= 1.0

    async def _next_message(self) -> ClientMsg | None:
        """The next message, checked; None when the page has gone. Raises Refused."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            raise Refused(1003, "binary messages are not part of this protocol: send JSON text")
        if len(text) > WS_MESSAGE_CHARS_MAX:
            raise Refused(1009, f"a message over {WS_MESSAGE_CHARS_MAX} characters")
        try:
            msg = CLIENT_DECODER.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Refused(1008, f"not a stream message: {exc}") from None
        if not (isinstance(msg, Ack) and not self.acked.is_set()):
            self._spend_token()  # (the ack of a frame sent is free: the server set that pace)
        return msg

    async def _receive(self, everything: trio.CancelScope) -> None:
        try:
            with trio.fail_after(WS_HELLO_S):
                first = await self._next_message()
            if first is None:
                return
            if not isinstance(first, Hello):
                raise Refused(1008, "the first message must be a hello")
            self.hello = first
            self.said_hello.set()
            while True:
                msg = await self._next_message()
                if msg is None:
                    return
                if isinstance(msg, Hello):
                    self.hello = msg  # the next frame comes in the new format (the last one, again)
                    self.hello_changed.set()
                elif isinstance(msg, Ack):
                    self.acked.set()
                else:
                    key = _edit_key(msg)
                    if key not in self.pending and len(self.pending) >= WS_EDITS_PENDING_MAX:
                        raise Refused(1008, f"more than {WS_EDITS_PENDING_MAX} different edits at once")
                    self.pending[key] = _merged(self.pending.get(key), msg)
                    self.edits_waiting.set()
        except trio.TooSlowError:
            self.refused = Refused(1008, f"no hello within {WS_HELLO_S:.0f} s")
        except Refused as exc:
            self.refused = exc
        finally:
            everything.cancel()  # the page has gone or broke the protocol: stop sending to it

    # ------------------------------------------------------------------ edits

    async def _edits(self) -> None:
        while True:
            await self.edits_waiting.wait()
            self.edits_waiting = trio.Event()
            while self.pending:
                key, msg = self.pending.popitem(last=False)
                session = _current_session(self.st.peer)
                if session is None:
                    await self.send_json({"t": "error", "message": "no streaming session is running"})
                    continue
                try:
                    if isinstance(msg, Camera):
                        version = await session.set_camera(
                            position=msg.position, look_at=msg.look_at, up=msg.up, fov_deg=msg.fov_deg
                        )
                    elif isinstance(msg, MaterialEdit):
                        version = await session.set_material(
                            msg.name, color=msg.color, roughness=msg.roughness, ior=msg.ior
                        )
                    else:
                        version = await session.move_light(msg.index, msg.position)
                except (ValueError, MeshrenderError) as exc:  # a bad value, or the session ended
                    await self.send_json({"t": "error", "message": str(exc)[:WS_ERROR_CHARS_MAX]})
                    continue
                await self.send_json({"t": "edited", "kind": key[0], "version": version})

    # ------------------------------------------------------------------ to the page

    async def _frames(self) -> None:
        await self.said_hello.wait()
        told_none = False
        while True:
            session = _current_session(self.st.peer)
            if session is None or session.status().get("ended"):
                if not told_none:
                    await self.send_json({"t": "session", "status": None})
                    told_none = True
                await trio.sleep(STREAM_POLL_S)
                continue
            told_none = False
            async with trio.open_nursery() as n:
                n.start_soon(self._watch, session)
                while _current_session(self.st.peer) is session and not session.status().get("ended"):
                    await trio.sleep(STREAM_POLL_S)
                n.cancel_scope.cancel()  # a newer session, or this one ended: watch the next

    async def _watch(self, session) -> None:
        status = session.status()
        await self.send_json({"t": "session", "status": status})
        version = status.get("version")
        try:
            watch = session.watch(self.name)
        except MeshrenderError as exc:  # it ended meanwhile, or has all the watchers it can serve
            await self.send_json({"t": "error", "message": str(exc)[:WS_ERROR_CHARS_MAX]})
            await trio.sleep_forever()  # until _frames sees a newer session or the end of this one
        last = None
        with watch:
            while True:
                try:
                    frame = await self._next_frame(watch, last)
                except MeshrenderError:  # StreamEnded: _frames notices and moves on
                    await trio.sleep_forever()
                self.hello_changed = trio.Event()
                if frame.version != version:
                    version = frame.version
                    await self.send_json({"t": "session", "status": session.status()})
                hello = self.hello
                try:
                    enc = await self.st.previews.get(
                        frame, fmt=hello.fmt, quality=hello.quality, denoise=hello.denoise
                    )
                except ValueError as exc:
                    await self.send_json({"t": "error", "message": f"preview: {exc}"[:WS_ERROR_CHARS_MAX]})
                    continue
                height, width = frame.image.shape[:2]
                header = {
                    "t": "frame",
                    "session": frame.session,
                    "version": frame.version,
                    "pass_done": frame.pass_done,
                    "pass_count": frame.pass_count,
                    "samples": frame.samples,
                    "peers": list(frame.peers),
                    "width": width,
                    "height": height,
                    "mime": enc.mime,
                    "bytes": len(enc.data),
                    "denoised": enc.denoised,
                    "note": enc.note,
                }
                self.acked = trio.Event()
                async with self.send_lock:
                    await self.ws.send_text(json.dumps(header))
                    await self.ws.send_bytes(enc.data)
                self.sent_frames += 1
                last = frame
                await self.acked.wait()  # then watch.next(): the newest frame since, not a queue

    async def _next_frame(self, watch, last):
        """The session's next frame; or `last` again, if the page asks for another format (or the
        denoiser) first, so a converged session's image is shown the new way too."""
        if last is None:
            return await watch.next()
        got = None
        async with trio.open_nursery() as n:

            async def take() -> None:
                nonlocal got
                got = await watch.next()  # cancelled, it keeps its frame for the next call
                n.cancel_scope.cancel()

            async def asked_again() -> None:
                await self.hello_changed.wait()
                n.cancel_scope.cancel()

            n.start_soon(take)
            n.start_soon(asked_again)
        return got if got is not None else last


async def _stream_ws(ws: WebSocket) -> None:
    st = _st(ws)
    await ws.accept()
    if st.stream_sockets >= STREAM_SOCKETS_MAX:
        await ws.close(1013, f"{STREAM_SOCKETS_MAX} Stream pages are open already: try again later")
        return
    st.stream_sockets += 1
    try:
        await StreamSocket(st, ws).run()
    finally:
        st.stream_sockets -= 1


def _sse(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _events(request: Request) -> Response:
    st, peer = _st(request), _st(request).peer
    if st.readers >= EVENT_READERS_MAX:
        return Response("503: too many event streams open\n", status_code=503)
    send, receive = trio.open_memory_channel[dict](EVENTS_QUEUED_MAX)

    def on_event(ev: dict) -> None:
        try:
            send.send_nowait(ev)
        except trio.WouldBlock:  # too slow a reader: dropped, the peer goes on
            send.close()
        except trio.ClosedResourceError:
            pass

    peer.watchers.append(on_event)
    st.readers += 1

    async def stream():
        try:
            yield _sse("snapshot", peer.snapshot())
            next_snapshot = trio.current_time() + SNAPSHOT_S
            while True:
                ev = None
                with trio.move_on_at(next_snapshot):
                    try:
                        ev = await receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return
                if ev is not None:
                    yield _sse("event", ev)
                if trio.current_time() >= next_snapshot:
                    next_snapshot = trio.current_time() + SNAPSHOT_S
                    yield _sse("snapshot", peer.snapshot())
        finally:
            if on_event in peer.watchers:
                peer.watchers.remove(on_event)
            send.close()
            st.readers -= 1

    headers = {**_security_headers(), "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _api_snapshot(request: Request) -> Response:
    return Response(
        json.dumps(_st(request).peer.snapshot(), default=str),
        media_type="application/json",
        headers=_security_headers(),
    )


async def _api_jobs(request: Request) -> Response:
    jobs = [msgspec.to_builtins(job_info(r)) for r in listing(_st(request).db)]
    return JSONResponse(jobs, headers=_security_headers())
