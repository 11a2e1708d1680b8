"""What every role of the peer shares: its error, a member's record, the protocol ids, and the
quiet ways to end a stream or a connection (a peer that is gone already raises nothing here).

How it works: each role (`joining`, `liveness`, `chunks`, `control`, `presence`) is an object
the node's `Peer` composes; it reads the peer's shared state (members, host, nursery, events)
through the peer and keeps its own state to itself. Nothing here does I/O on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..errors import MeshrenderError

PROTO_PARTY = "/meshrender/party/1"
PROTO_CHUNKS = "/meshrender/chunks/1"
PROTO_PING = "/meshrender/ping/1"
PROTO_JOBS = "/meshrender/jobs/1"
PROTO_CONTROL = "/meshrender/control/1"
IDLE_STREAM_TIMEOUT_S = 120.0  # a chunk stream with no request for this long is closed


class PeerError(MeshrenderError):
    pass


@dataclass
class Member:
    peer_id: str
    addrs: list[str]
    since: float
    bytes_served: int = 0
    bytes_received: int = 0
    chunks_serving: int = 0  # asked of us by it and not yet sent


async def close_stream(stream) -> None:
    try:
        await stream.close()
    except Exception:  # already reset by the other side
        pass


async def reset_stream(stream) -> None:
    try:
        await stream.reset()
    except Exception:  # already gone
        pass


async def close_conn(conn) -> None:
    """Close one connection (a non-member's), however far it got."""
    try:
        with trio.move_on_after(2.0):
            await conn.close()
    except Exception:  # already gone
        pass


async def hang_up(host, peer) -> None:
    """Disconnect from `peer` (a libp2p ID), if still connected."""
    try:
        with trio.move_on_after(2.0):
            await host.disconnect(peer)
    except Exception:  # already gone
        pass
