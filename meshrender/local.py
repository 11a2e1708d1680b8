"""The peer's local status socket: what the TUI (and anything else on this machine) attaches to.

A running peer listens on a Unix socket, `$MESHRENDER_HOME/peer.sock` (only this user can reach
it: the folder is the user's, the socket mode 0600). Each line on it is one JSON object.

  * A reader connects and sends `{"watch": true}`. The peer answers with `{"snapshot": {...}}`
    (`Peer.snapshot()`: the one status source the headless JSON output reads too), then every
    event as it happens (`{"event": "...", ...}`, the very objects `meshrender peer --json`
    prints), and a fresh snapshot every SNAPSHOT_S. While the peer runs a streaming session it
    also sends `{"streams": [...]}` (the snapshot's "streams" entry alone, previews included,
    each made once per frame for every reader) every STREAMS_S, so a viewer sees a camera move
    render without waiting for a whole snapshot.
  * A reader that cannot keep up (EVENTS_QUEUED_MAX items waiting) is dropped rather than let
    it hold the peer back; it may attach again.
  * After the watch line a reader may send commands, one per line, each answered by one line (a
    refusal at once, a move once its version is made: not always in the order sent):
    `{"stream": {"session": ID, "orbit": {"yaw_deg": 15, "pitch_deg": 0, "dolly": 1, "pan": [0, 0]}}}`
    (every orbit field optional; `StreamSession.orbit`) is answered with
    `{"stream-result": {"session": ID, "version": N}}` once version N shows the move, or with
    `{"error": "..."}`. Moves are applied in the order sent, one at a time; moves that arrive
    while one is rendering wait (COMMANDS_PENDING_MAX at most), and a move that can be folded
    exactly into the last waiting one (turns with pitches the same way, or pans) is, so a key
    held down makes a few versions, not one per repeat. A line that is too long
    (COMMAND_BYTES_MAX), not JSON, not a command, or out of range is answered with an error and
    changes nothing.

Queue changes do not go through the socket: `jobs.sqlite` is the one source of truth, and the
queue runner reads it (as `meshrender submit` without `--to` does).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from .errors import MeshrenderError
from .viewport import DOLLY_MIN, PAN_MAX

log = logging.getLogger("meshrender.local")

SOCKET_NAME = "peer.sock"
SNAPSHOT_S = 1.0
STREAMS_S = 0.25  # sessions' status and preview this often: a camera move shows within it
EVENTS_QUEUED_MAX = 4096
LINE_MAX = 16 << 20  # one snapshot of a big party stays far below this
COMMAND_BYTES_MAX = 4096  # a command is under 200 bytes; a longer line is skipped unread, with an error
RECEIVE_BYTES = 4096  # read from a reader at a time: a few commands
COMMANDS_PENDING_MAX = 4  # moves one reader has waiting behind the one rendering; more are refused
MERGED_MAX = 64  # commands folded into one waiting move (each is still answered)
COMMANDS_QUEUED_MAX = 16  # a reader's commands not yet written to the socket (LocalWatch.send)
CONNECT_TIMEOUT_S = 2.0


# ---------------------------------------------------------------------------- commands
# A move's bounds, as `streaming.orbit_camera` has them (it checks them again; this module may not
# import it: streaming -> node -> local would be a circle)
YAW_DEG_MAX, PITCH_DEG_MAX = 360.0, 180.0
SESSION_ID_CHARS_MAX = 64  # ids are 16 hex characters
Yaw = Annotated[float, msgspec.Meta(ge=-YAW_DEG_MAX, le=YAW_DEG_MAX)]
Pitch = Annotated[float, msgspec.Meta(ge=-PITCH_DEG_MAX, le=PITCH_DEG_MAX)]
Dolly = Annotated[float, msgspec.Meta(ge=DOLLY_MIN, le=1.0 / DOLLY_MIN)]
Pan = Annotated[float, msgspec.Meta(ge=-PAN_MAX, le=PAN_MAX)]


class Orbit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`StreamSession.orbit`'s arguments."""

    yaw_deg: Yaw = 0.0
    pitch_deg: Pitch = 0.0
    dolly: Dolly = 1.0
    pan: tuple[Pan, Pan] = (0.0, 0.0)

    def merged(self, later: Orbit) -> Orbit | None:
        """One move doing `self` then `later`, where that is exact: turns and dollies commute
        (yaw is about the up axis, pitch over the target, both about the same point; pitches the
        same way stop at a pole the same way), and pans add when nothing turns; else None (also
        when the sum is out of range)."""
        turns = self.pan == (0.0, 0.0) and later.pan == (0.0, 0.0)
        pans = all(o.yaw_deg == 0.0 and o.pitch_deg == 0.0 and o.dolly == 1.0 for o in (self, later))
        if turns and self.pitch_deg * later.pitch_deg >= 0.0:
            yaw = (self.yaw_deg + later.yaw_deg + 180.0) % 360.0 - 180.0
            pitch, dolly = self.pitch_deg + later.pitch_deg, self.dolly * later.dolly
            if abs(pitch) <= PITCH_DEG_MAX and DOLLY_MIN <= dolly <= 1.0 / DOLLY_MIN:
                return Orbit(yaw_deg=yaw, pitch_deg=pitch, dolly=dolly)
        elif pans:
            pan = (self.pan[0] + later.pan[0], self.pan[1] + later.pan[1])
            if all(abs(p) <= PAN_MAX for p in pan):
                return Orbit(pan=pan)
        return None


class StreamCommand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    session: Annotated[str, msgspec.Meta(min_length=1, max_length=SESSION_ID_CHARS_MAX)]
    orbit: Orbit


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stream: StreamCommand


COMMAND_DECODER = msgspec.json.Decoder(Command)


class _Commands:
    """One reader's camera moves: applied in order, one at a time, the waiting ones merged."""

    def __init__(self, peer, answer: Callable[[dict], None]):
        self.peer = peer
        self.answer = answer
        self.pending: deque[list] = deque()  # [session id, Orbit, commands it stands for]
        self._wake = trio.Event()

    def take(self, line: bytes | None) -> None:
        """A line from the reader: queued, merged, or answered with an error at once."""
        if line is None:
            self.answer({"error": f"a command line over {COMMAND_BYTES_MAX} bytes: skipped"})
            return
        try:
            cmd = COMMAND_DECODER.decode(line).stream
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.answer({"error": f"not a command: {str(exc)[:200]}"})
            return
        session = self.peer.streams.get(cmd.session)
        if session is None or session.ended is not None:
            self.answer({"error": f"no streaming session {cmd.session[:16]!r} runs on this peer"})
            return
        last = self.pending[-1] if self.pending else None
        if last is not None and last[0] == cmd.session and last[2] < MERGED_MAX:
            merged = last[1].merged(cmd.orbit)
            if merged is not None:
                last[1], last[2] = merged, last[2] + 1
                return
        if len(self.pending) >= COMMANDS_PENDING_MAX:
            self.answer({"error": f"busy: {COMMANDS_PENDING_MAX} moves wait already; this one is dropped"})
            return
        self.pending.append([cmd.session, cmd.orbit, 1])
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.pending:
                sid, orbit, count = self.pending.popleft()
                session = self.peer.streams.get(sid)
                try:
                    if session is None:
                        raise MeshrenderError(f"streaming session {sid[:16]!r} has ended")
                    version = await session.orbit(yaw_deg=orbit.yaw_deg, pitch_deg=orbit.pitch_deg,
                                                  dolly=orbit.dolly, pan=orbit.pan)  # fmt: skip
                    reply = {"stream-result": {"session": sid, "version": version}}
                except (ValueError, MeshrenderError) as exc:  # a move the camera refuses, or the end
                    reply = {"error": str(exc)[:500]}
                for _ in range(count):
                    self.answer(reply)


class _Lines:
    """Lines from a stream, newline excluded; a line over COMMAND_BYTES_MAX comes out as None
    (its bytes are read and dropped, not kept); None too at the end of the stream, then
    `ended` is set."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = bytearray()
        self.skipping = False  # inside a line too long to keep
        self.ready: deque[bytes | None] = deque()
        self.ended = False

    async def next(self) -> bytes | None:
        while not self.ready:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                self.ended = True
                return None
            self.buf += data
            while (i := self.buf.find(b"\n")) >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                if self.skipping:
                    self.skipping = False  # the tail of a long line: already answered
                elif len(line) > COMMAND_BYTES_MAX:
                    self.ready.append(None)
                else:
                    self.ready.append(line)
            if len(self.buf) > COMMAND_BYTES_MAX:
                if not self.skipping:
                    self.ready.append(None)
                self.skipping = True
                self.buf.clear()
        return self.ready.popleft()


class _Previews:
    """The sessions' entries for `{"streams": ...}`: `StreamSession.status()` and a preview made
    once per frame (`preview_json` of a 1080p frame takes 160 ms), in a worker thread, one at a
    time, shared by every reader of the socket."""

    def __init__(self):
        self._made: dict[str, tuple[object, dict]] = {}  # session id -> (frame, its preview)
        self._lock = trio.Lock()

    async def entries(self, peer) -> list[dict]:
        from .frameview import preview_json

        out = []
        for session in peer.streams:
            entry, frame = session.status(), session.latest  # one moment: "shown" is this frame
            entry["preview"] = None
            if frame is not None:
                made = self._made.get(session.id)
                if made is None or made[0] is not frame:
                    async with self._lock:
                        made = self._made.get(session.id)
                        if made is None or made[0] is not frame:
                            preview = await trio.to_thread.run_sync(preview_json, frame.image, frame.exposure)
                            made = self._made[session.id] = (frame, preview)
                entry["preview"] = made[1]
            out.append(entry)
        live = {e["id"] for e in out}
        for gone in [k for k in self._made if k not in live]:  # bounded by the sessions running
            del self._made[gone]
        return out


# ---------------------------------------------------------------------------- the peer's side
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
    previews = _Previews()
    try:
        async with trio.open_nursery() as n:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                n.start_soon(_guarded, peer, stream, previews)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


GONE = (trio.BrokenResourceError, trio.ClosedResourceError)  # the reader went, or was dropped


async def _guarded(peer, stream, previews: _Previews) -> None:
    try:
        await _watcher(peer, stream, previews)
    except Exception:  # one reader's trouble (or our bug in serving it) never stops the peer
        log.exception("local watcher failed")


async def _watcher(peer, stream, previews: _Previews) -> None:
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

    lines = _Lines(stream)
    try:
        first = None
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            first = await lines.next()
        try:
            watching = first is not None and json.loads(first).get("watch") is True
        except (ValueError, AttributeError, RecursionError):
            watching = False
        if not watching:
            await write({"error": 'send {"watch": true}'})
            return
        peer.watchers.append(on_event)
        await write({"snapshot": peer.snapshot()})
        commands = _Commands(peer, on_event)

        async def snapshots() -> None:
            while True:
                await trio.sleep(SNAPSHOT_S)
                on_event({"snapshot": peer.snapshot()})

        async def streams() -> None:
            had = False
            while True:
                await trio.sleep(STREAMS_S)
                if len(peer.streams) or had:  # and once more when the last one has gone
                    had = bool(len(peer.streams))
                    on_event({"streams": await previews.entries(peer)})

        async def read() -> None:
            while True:
                line = await lines.next()
                if lines.ended:
                    return  # the reader says no more; it may still read
                commands.take(line)

        async def writer(done: trio.CancelScope) -> None:
            try:
                async for item in receive:
                    await write(item)
            except GONE as exc:
                log.debug("local watcher left: %s", exc)
            done.cancel()

        async with trio.open_nursery() as n:
            n.start_soon(snapshots)
            n.start_soon(streams)
            n.start_soon(commands.run)
            n.start_soon(read_quietly, read)
            n.start_soon(writer, n.cancel_scope)
    except GONE as exc:
        log.debug("local watcher left: %s", exc)
    finally:
        if on_event in peer.watchers:
            peer.watchers.remove(on_event)
        send.close()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def read_quietly(read) -> None:
    """`read()`, ending quietly when the reader's side breaks (the writer sees it go too)."""
    try:
        await read()
    except GONE as exc:
        log.debug("local watcher stopped sending: %s", exc)


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CONNECT_TIMEOUT_S)
            s.connect(str(path))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- a reader
class LocalWatch:
    """A reader of a local peer's socket, in a thread of its own: `on_item(dict)` gets every
    snapshot, event and command answer, `on_gone(reason)` once the peer goes away; `send(dict)`
    hands a command to a thread that writes it. For the TUI, which must never block on the peer."""

    def __init__(self, path: Path, on_item: Callable[[dict], None], on_gone: Callable[[str], None]):
        self.path = Path(path)
        self.on_item = on_item
        self.on_gone = on_gone
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._outbox: queue.Queue = queue.Queue(COMMANDS_QUEUED_MAX)
        self._sender: threading.Thread | None = None

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
        self._sender = threading.Thread(target=self._send, name="meshrender-commands", daemon=True)
        self._sender.start()

    def send(self, command: dict) -> bool:
        """Queue `command` for the peer (never blocks); False when COMMANDS_QUEUED_MAX wait already
        or the watch is not running."""
        if self._sock is None:
            return False
        try:
            self._outbox.put_nowait(json.dumps(command).encode() + b"\n")
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            try:
                self._outbox.put_nowait(None)
            except queue.Full:  # the sender is stuck in a write, which the shutdown ends
                pass

    def _send(self) -> None:
        while (line := self._outbox.get()) is not None:
            try:
                self._sock.sendall(line)
            except OSError:  # the peer went: the reader says so
                return

    def _read(self) -> None:
        reason = "the peer closed its status socket"
        attached = False
        try:
            with self._sock.makefile("rb") as f:
                while line := f.readline(LINE_MAX + 1):
                    if len(line) > LINE_MAX:
                        reason = "the peer sent an oversized status line"
                        break
                    item = json.loads(line)
                    if not attached and "error" in item:  # the watch itself was refused
                        reason = item["error"]
                        break
                    attached = True
                    self.on_item(item)
        except (OSError, ValueError) as exc:
            reason = f"the status socket failed: {exc}"
        self.on_gone(reason)
