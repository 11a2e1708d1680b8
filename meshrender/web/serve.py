"""Run the web page inside the peer's trio loop: hypercorn's trio worker serving `app.build_app`.

`serve_web(peer, host, port)` is started in the peer's nursery (`await nursery.start(...)`); it
reports `started` with the page's URL once the socket listens, emits `{"event": "web", "url":
..., "login": ...}` (tests and scripts find the port there) and serves until cancelled. The
default port (`addr.WEB_PORT_DEFAULT`) falls back to one the OS picks when another program (a
second peer on this machine) holds it; a port given explicitly that is taken is an OSError.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .addr import WEB_PORT_DEFAULT, is_loopback
from .app import build_app

log = logging.getLogger("meshrender.web")
server_log = logging.getLogger("meshrender.web.server")
server_log.setLevel(logging.WARNING)

HEADER_BYTES_MAX = 16 << 10  # a request line and headers; a bigger one is refused before any route runs
KEEP_ALIVE_S = 30.0  # an idle browser connection is closed after this
READ_TIMEOUT_S = 60.0  # a request that sends nothing for this long is dropped (slow-loris)
GRACEFUL_S = 1.0  # open requests get this long to finish when the peer stops
WEBSOCKET_MESSAGE_BYTES_MAX = 1 << 20  # the Stream page's control messages are small
WEBSOCKET_PING_S = 20.0  # pinged this often, a quiet Stream page pongs: no READ_TIMEOUT_S close


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _bind_error(exc: BaseException) -> BaseException:
    """The OSError inside what a failed bind raised (trio wraps it in exception groups)."""
    while isinstance(exc, BaseExceptionGroup):
        oserrors = exc.subgroup(OSError)
        if oserrors is None:
            raise exc
        exc = oserrors.exceptions[0]
    return exc


def _config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = server_log  # its "Running on" line says what the "web" event says: warnings only
    config.h11_max_incomplete_size = HEADER_BYTES_MAX
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.read_timeout = READ_TIMEOUT_S
    config.graceful_timeout = GRACEFUL_S
    config.websocket_max_message_size = WEBSOCKET_MESSAGE_BYTES_MAX
    config.websocket_ping_interval = WEBSOCKET_PING_S
    config.include_server_header = False
    return config


async def serve_web(peer, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `peer`'s web page on host:port until cancelled (see the module docstring)."""
    exposed = not is_loopback(host)
    ports = [port, 0] if port == WEB_PORT_DEFAULT else [port]  # the default port may be another peer's
    if port == WEB_PORT_DEFAULT and not _port_free(host, port):
        ports = [0]
    app, state = build_app(peer, exposed=exposed)
    failed: BaseException | None = None
    try:
        async with trio.open_nursery() as n:
            for port in ports:
                try:
                    binds = await n.start(
                        lambda task_status, port=port: serve(
                            app, _config(host, port), task_status=task_status
                        )
                    )
                except (OSError, BaseExceptionGroup) as exc:  # a failed bind may come wrapped
                    failed = _bind_error(exc)
                    continue
                failed = None
                url = binds[0] if binds else f"http://{host}:{port}"
                peer._event("web", url=url, port=int(url.rsplit(":", 1)[1]), login=exposed)
                task_status.started(url)
                break
    finally:
        state.close()
    if failed is not None:  # raised here, outside the nursery, so the caller gets a plain OSError
        raise OSError(f"cannot serve the web page on {host}:{port}: {failed}")
