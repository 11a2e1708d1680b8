"""Framed messages over libp2p streams, with a deadline on every read.

A read returns None only at a clean end between frames; an end inside a frame, an oversized
announcement or a malformed body raise RemoteProtocolError (the peer's fault). Bulk payloads are
written in pieces of at most WRITE_PIECE_BYTES, which kept yamux fastest in the probe.
"""

from __future__ import annotations

import trio

from ..protocol import FRAME_HEADER, Msg, RemoteProtocolError, decode_body, encode_frame, frame_length

WRITE_PIECE_BYTES = 1 << 20
READ_TIMEOUT_S = 10.0  # a member answers within this or is treated as stalled


async def read_exact(stream, n: int) -> bytes | None:
    """n bytes, or None at a clean end before the first; an end part-way is the peer's fault."""
    buf = bytearray()
    while len(buf) < n:
        piece = await stream.read(n - len(buf))
        if not piece:
            if not buf:
                return None
            raise RemoteProtocolError(f"stream ended after {len(buf)} of {n} bytes")
        buf += piece
    return bytes(buf)


async def read_msg(stream, timeout_s: float = READ_TIMEOUT_S) -> Msg | None:
    with trio.fail_after(timeout_s):
        header = await read_exact(stream, FRAME_HEADER.size)
        if header is None:
            return None
        n = frame_length(header)
        body = await read_exact(stream, n) if n else b""
        if body is None:
            raise RemoteProtocolError("stream ended between a frame header and its body")
        return decode_body(body)


async def write_msg(stream, msg: Msg, timeout_s: float = READ_TIMEOUT_S) -> None:
    frame = encode_frame(msg)
    with trio.fail_after(timeout_s + len(frame) / (1 << 20)):  # + 1 s per MiB: a slow but live link
        for i in range(0, len(frame), WRITE_PIECE_BYTES):
            await stream.write(frame[i : i + WRITE_PIECE_BYTES])


class MsgLink:
    """Framed messages both ways over one stream (a job link). Writes are serialised; reads wait
    as long as `idle_s` (a worker may hear nothing from its coordinator for a while)."""

    def __init__(self, stream, idle_s: float):
        self.stream = stream
        self.idle_s = idle_s
        self._lock = trio.Lock()

    async def send(self, msg: Msg) -> None:
        async with self._lock:
            await write_msg(self.stream, msg)

    async def receive(self) -> Msg | None:
        return await read_msg(self.stream, self.idle_s)

    async def close(self) -> None:
        try:
            with trio.move_on_after(1.0):
                await self.stream.close()
        except Exception:  # already reset: nothing to close
            pass
