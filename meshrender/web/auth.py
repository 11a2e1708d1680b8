"""Who may use the web page: sessions, CSRF tokens, the login, and the guard in front of every route.

How it works
  * `Sessions` holds a random key made at peer start (so a restart logs everyone out) and a
    bounded table of live session ids. The session cookie is `<id>.<mac>`: 128 random bits and a
    keyed BLAKE3 MAC of them, HttpOnly and SameSite=Strict, so another site's page can neither
    read it nor make the browser send it. Each session's CSRF token is another MAC of its id;
    every POST carries it (a form field or the `X-CSRF-Token` header) and `check_csrf` compares it
    in constant time. The login form gets its own token, bound to a short-lived nonce cookie.
  * `Guard` is plain ASGI middleware in front of the Starlette app. Exposed (bound to anything but
    loopback), a request without a logged-in session gets 401 and nothing else, whatever the path
    (an unknown path too: a 404 would tell an outsider what exists), the login page and its POST
    excepted; a WebSocket handshake gets the same 401 (or a close where the server cannot send
    one). On loopback nobody logs in, but the Host header must name a loopback host (a web page
    elsewhere cannot rebind its name to 127.0.0.1 and read the page), a session cookie is set on
    the first visit so POSTs still need their CSRF token, and a WebSocket must come from the
    page's own origin.
  * Logging in compares the typed secret with the party secret in constant time (`Peer.secret_matches`);
    failures are counted per client address by membership's `FailureLimiter` (FAILURES_MAX a
    minute, then blocked with a doubling back-off, as party joins are): a blocked address gets 429.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from http.cookies import SimpleCookie

import blake3

SESSION_COOKIE = "meshrender_session"
LOGIN_COOKIE = "meshrender_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600.0  # a working day; then log in again
LOGIN_FORM_S = 600.0  # a login form older than this is refused: load it again
SESSIONS_MAX = 1024  # live sessions kept; the oldest goes first (it only has to log in again)
SESSION_ID_BYTES = 16
MAC_HEX = 32  # 128-bit MACs
COOKIE_HEADER_BYTES_MAX = 8192  # cookies we set are ~100 bytes; a bigger header is not parsed
LOGIN_SECRET_BYTES_MAX = 4096  # as a party secret file (node.SECRET_FILE_BYTES_MAX)
OPEN_PATHS = ("/login",)  # what an exposed page serves before the login (the form and its POST)


class Sessions:
    """Session ids, their MACs and CSRF tokens; every time is a `now` from the caller."""

    def __init__(self, key: bytes | None = None, *, sessions_max: int = SESSIONS_MAX):
        self.key = key if key is not None else secrets.token_bytes(32)
        self.sessions_max = sessions_max
        self._live: OrderedDict[str, float] = OrderedDict()  # id -> expiry

    def _mac(self, purpose: str, value: str) -> str:
        return blake3.blake3(f"{purpose}\0{value}".encode(), key=self.key).hexdigest()[:MAC_HEX]

    def new(self, now: float) -> tuple[str, str]:
        """A fresh session: (its id, its cookie value)."""
        sid = secrets.token_hex(SESSION_ID_BYTES)
        while len(self._live) >= self.sessions_max:
            self._live.popitem(last=False)
        self._live[sid] = now + SESSION_S
        return sid, f"{sid}.{self._mac('session', sid)}"

    def valid(self, cookie: str | None, now: float) -> str | None:
        """The session id in `cookie` if its MAC is right and it is live, else None."""
        if not cookie or len(cookie) > 2 * SESSION_ID_BYTES + 1 + MAC_HEX:
            return None
        sid, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", sid).encode()):
            return None
        expiry = self._live.get(sid)
        if expiry is None or expiry <= now:
            self._live.pop(sid, None)
            return None
        return sid

    def drop(self, sid: str) -> None:
        self._live.pop(sid, None)

    def __len__(self) -> int:
        return len(self._live)

    def csrf(self, sid: str) -> str:
        return self._mac("csrf", sid)

    def check_csrf(self, sid: str | None, token: str | None) -> bool:
        if not sid or not token:
            return False
        return hmac.compare_digest(token.encode()[: MAC_HEX + 1], self.csrf(sid).encode())

    def login_nonce(self, now: float) -> str:
        """The login form's nonce cookie: a random part and when it was made, MAC'd."""
        nonce = f"{secrets.token_hex(SESSION_ID_BYTES)}-{int(now)}"
        return f"{nonce}.{self._mac('login-nonce', nonce)}"

    def login_csrf(self, nonce_cookie: str) -> str:
        return self._mac("login-csrf", nonce_cookie)

    def check_login_csrf(self, nonce_cookie: str | None, token: str | None, now: float) -> bool:
        if not nonce_cookie or not token or len(nonce_cookie) > 128:
            return False
        nonce, _, mac = nonce_cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("login-nonce", nonce).encode()):
            return False
        try:
            made = int(nonce.rpartition("-")[2])
        except ValueError:
            return False
        if not 0 <= now - made <= LOGIN_FORM_S:
            return False
        return hmac.compare_digest(token.encode()[: MAC_HEX + 1], self.login_csrf(nonce_cookie).encode())


def cookie_header(name: str, value: str, *, max_age_s: int | None = None, path: str = "/") -> bytes:
    """A Set-Cookie value: HttpOnly, SameSite=Strict (never sent with another site's requests)."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age_s is not None:
        parts.append(f"Max-Age={max_age_s}")
    return "; ".join(parts).encode()


def read_cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    raw = b"; ".join(v for k, v in headers if k == b"cookie")
    if not raw or len(raw) > COOKIE_HEADER_BYTES_MAX:
        return {}
    jar = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # http.cookies raises CookieError and friends on garbage: no cookies, then
        return {}
    return {k: m.value for k, m in jar.items()}


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


def _origin_host(origin: str) -> str | None:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    return rest.rstrip("/").lower()


def _host_name(host: str) -> str:
    """`host:port` or `[v6]:port` -> the name without the port."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class Guard:
    """ASGI middleware: 401 for an exposed page without a login; the loopback checks; sessions."""

    def __init__(self, app, sessions: Sessions, *, exposed: bool, clock: Callable[[], float]):
        self.app = app
        self.sessions = sessions
        self.exposed = exposed
        self.clock = clock

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = scope.get("headers") or []
        host = (header(headers, b"host") or "").lower()
        if not self.exposed and _host_name(host) not in ("127.0.0.1", "localhost", "::1"):
            await _deny(scope, send, 421, "this page answers to 127.0.0.1 and localhost only")
            return
        now = self.clock()
        sid = self.sessions.valid(read_cookies(headers).get(SESSION_COOKIE), now)
        scope["meshrender.session"] = sid
        if scope["type"] == "websocket":
            origin = header(headers, b"origin")
            same_origin = origin is None or _origin_host(origin) == host
            if sid is None or not same_origin:
                await _deny(
                    scope,
                    send,
                    401 if sid is None else 403,
                    "log in first" if sid is None else "a WebSocket from another site",
                )
                return
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            origin = header(headers, b"origin")
            if origin is not None and origin != "null" and _origin_host(origin) != host:
                await _deny(scope, send, 403, "a form posted from another site")
                return
        if self.exposed:
            if sid is None and scope.get("path") not in OPEN_PATHS:
                await _deny(scope, send, 401, "log in first: /login")
                return
            await self.app(scope, receive, send)
            return
        if sid is not None:
            await self.app(scope, receive, send)
            return
        sid, cookie = self.sessions.new(now)  # loopback: a session on the first visit, for CSRF
        scope["meshrender.session"] = sid

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"set-cookie", cookie_header(SESSION_COOKIE, cookie)),
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


DENY_PAGE = (
    "<!doctype html><meta charset=utf-8><title>{status} meshrender</title>"
    "<p>{status}: {why}.</p><p><a href=/login>Log in</a></p>\n"
)


async def _deny(scope, send, status: int, why: str) -> None:
    body = DENY_PAGE.format(status=status, why=why).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
