"""The peer's local status socket: what the TUI (and anything else on this machine) attaches to.

A running peer listens on a Unix socket, `$MESHRENDER_HOME/peer.sock` (only this user can reach
it: the folder is the user's, the socket mode 0600). Each line on it is one JSON object.

  * A reader connects and sends `{"watch": true}`. The peer answers with `{"snapshot": {...}}`
    (`Peer.snapshot()`: the one status source the headless JSON output reads too), then every
    event as it happens (`{"event": "...", ...}`, the very objects `meshrender peer --json`
    prints), and a fresh snapshot every SNAPSHOT_S.
  * A reader that cannot keep up (EVENTS_QUEUED_MAX events waiting) is dropped rather than let
    it hold the peer back; it may attach again.

Queue changes do not go through the socket: `jobs.sqlite` is the one source of truth, and the
queue runner reads it (as `meshrender submit` without `--to` does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger("meshrender.local")

SOCKET_NAME = "peer.sock"
SNAPSHOT_S = 1.0
EVENTS_QUEUED_MAX = 4096
LINE_MAX = 16 << 20  # one snapshot of a big party stays far below this
CONNECT_TIMEOUT_S = 2.0


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET_NAME


async def serve_local(peer, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `peer`'s status on the Unix socket at `path` until cancelled (then it is removed)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if _answers(path):
            raise OSError(f"another peer already serves {path}")
        path.unlink()  # left by a peer that did not stop cleanly
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as n:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                n.start_soon(_watcher, peer, stream)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def _watcher(peer, stream) -> None:
    send, receive = trio.open_memory_channel[dict](EVENTS_QUEUED_MAX)

    def on_event(ev: dict) -> None:
        try:
            send.send_nowait(ev)
        except trio.WouldBlock:  # too slow a reader: it is dropped, the peer goes on
            send.close()
        except trio.ClosedResourceError:
            pass

    async def write(obj: dict) -> None:
        await stream.send_all(json.dumps(obj, default=str).encode() + b"\n")

    try:
        first = b""
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            first = await stream.receive_some(4096)
        if not first or json.loads(first.decode().splitlines()[0]).get("watch") is not True:
            await write({"error": 'send {"watch": true}'})
            return
        peer.watchers.append(on_event)
        await write({"snapshot": peer.snapshot()})

        async def snapshots() -> None:
            while True:
                await trio.sleep(SNAPSHOT_S)
                on_event({"snapshot": peer.snapshot()})

        async with trio.open_nursery() as n:
            n.start_soon(snapshots)
            async for item in receive:
                await write(item)
            n.cancel_scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, UnicodeDecodeError) as exc:
        log.debug("local watcher left: %s", exc)
    finally:
        if on_event in peer.watchers:
            peer.watchers.remove(on_event)
        send.close()
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CONNECT_TIMEOUT_S)
            s.connect(str(path))
        return True
    except OSError:
        return False


class LocalWatch:
    """A reader of a local peer's socket, in a thread of its own: `on_item(dict)` gets every
    snapshot and event, `on_gone(reason)` once the peer goes away. For the TUI, which must never
    block on the peer."""

    def __init__(self, path: Path, on_item: Callable[[dict], None], on_gone: Callable[[str], None]):
        self.path = Path(path)
        self.on_item = on_item
        self.on_gone = on_gone
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect (raises OSError when no peer answers there), then read in the background."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(str(self.path))
            s.sendall(b'{"watch": true}\n')
        except OSError:
            s.close()
            raise
        s.settimeout(None)
        self._sock = s
        self._thread = threading.Thread(target=self._read, name="meshrender-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _read(self) -> None:
        reason = "the peer closed its status socket"
        try:
            with self._sock.makefile("rb") as f:
                for line in f:
                    if len(line) > LINE_MAX:
                        reason = "the peer sent an oversized status line"
                        break
                    item = json.loads(line)
                    if "error" in item:
                        reason = item["error"]
                        break
                    self.on_item(item)
        except (OSError, ValueError) as exc:
            reason = f"the status socket failed: {exc}"
        self.on_gone(reason)
