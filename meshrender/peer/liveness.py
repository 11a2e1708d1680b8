"""Liveness: is each member still there, and what to do when it is not.

How it works
  * Every member joined gets a `watch` task that pings it every PING_INTERVAL_S on
    `/meshrender/ping/1` (it echoes). Any traffic from it counts as a sign of life (`alive`): an
    echo, a ping of its own, a stream it opened, a chunk. Nothing for LIVENESS_TIMEOUT_S and it is
    lost: a frozen peer sends nothing, a dead one closes its connection.
  * A lost member (`lost`) leaves the member list, its chunk links and gossiped state; unless it
    was banned it is dialed again (`redial`), backing off from DIAL_RETRY_S doubling to
    DIAL_RETRY_MAX_S for REDIAL_FOR_S, and not at all while it refuses our handshake.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from ..backoff import Backoff
from ..net.host import open_stream
from ..net.streams import read_exact
from ..protocol import RemoteProtocolError
from .common import IDLE_STREAM_TIMEOUT_S, PROTO_PING, PeerError, hang_up, reset_stream
from .joining import DIAL_RETRY_MAX_S, DIAL_RETRY_S

if TYPE_CHECKING:
    from ..node import Peer

log = logging.getLogger("meshrender.node")

PING_INTERVAL_S = 0.5  # a ping every half second: a frozen member is found within LIVENESS_TIMEOUT_S
LIVENESS_TIMEOUT_S = 2.0  # nothing from a member for this long: it is lost (SIGSTOP must show within 3 s)
PING_BYTES = 8
REDIAL_FOR_S = 3600.0  # a lost member is dialed again (backing off) this long, then forgotten


class Liveness:
    """The pings to and from members, when each was last heard of, and redials of the lost."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.alive_at: dict[str, float] = {}  # member -> last time anything came from it (trio clock)

    def alive(self, peer: str) -> None:
        self.alive_at[peer] = trio.current_time()

    async def watch(self, peer: str) -> None:
        """Ping a member until it goes. It is lost when nothing at all has come from it for
        LIVENESS_TIMEOUT_S: no echo, no ping of its own, no stream it opened, no chunk. A ping can
        wait behind megabytes of chunks on the one connection to a busy peer, and when many peers
        join at once on a loaded machine a new stream takes a second to negotiate, so any traffic
        counts as a sign of life; a frozen peer sends nothing and a dead one closes its connection."""
        p = self.peer
        member = p.members.get(peer)
        stream = None
        reason = "left"
        self.alive(peer)
        try:
            stream = await open_stream(
                p.host, p._nursery, ID.from_base58(peer), PROTO_PING, LIVENESS_TIMEOUT_S
            )
            self.alive(peer)  # it answered the protocol negotiation (slow when many join at once)
            async with trio.open_nursery() as n:

                async def echoes() -> None:
                    while await read_exact(stream, PING_BYTES) is not None:
                        self.alive(peer)
                    raise RemoteProtocolError("the member closed its ping stream")

                n.start_soon(echoes)
                tick = trio.current_time()
                while p.members.get(peer) is member:
                    with trio.move_on_after(PING_INTERVAL_S / 2):  # a write stuck on a full window is no news
                        await stream.write(secrets.token_bytes(PING_BYTES))
                    tick += PING_INTERVAL_S
                    await trio.sleep_until(tick)
                    silent = trio.current_time() - self.alive_at.get(peer, 0.0)
                    if silent > LIVENESS_TIMEOUT_S:
                        reason = f"nothing from it for {silent:.1f} s (no answer to pings)"
                        break
                n.cancel_scope.cancel()
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, EOF: the member died or hung up
            reason = f"ping stream ended: {type(exc).__name__}"
        if p.members.get(peer) is member and member is not None:
            p._lost(peer, reason)
            p._nursery.start_soon(hang_up, p.host, ID.from_base58(peer))
        if stream is not None:
            await reset_stream(stream)

    async def on_ping(self, stream, remote: str) -> None:
        if remote not in self.peer.members:
            await reset_stream(stream)
            return
        while True:
            with trio.fail_after(IDLE_STREAM_TIMEOUT_S):
                data = await read_exact(stream, PING_BYTES)
            if data is None:
                return
            self.alive(remote)  # its pings are news from it as much as its echoes
            await stream.write(data)

    def lost(self, peer: str, why: str) -> None:
        p = self.peer
        p.chunks.forget(peer)
        p.statuses.pop(peer, None)
        p.have_of.pop(peer, None)
        p.presence.forget(peer)
        self.alive_at.pop(peer, None)
        member = p.members.pop(peer, None)
        if member is not None:
            p._event("peer-lost", peer=peer, reason=why)
            if member.addrs and peer not in p.banned and p._nursery is not None:
                p._nursery.start_soon(self.redial, peer, member.addrs[0])

    async def redial(self, peer: str, addr: str) -> None:
        """A member lost to a missed ping may only have been starved of CPU for a moment, or
        restarted: dial it again, backing off (DIAL_RETRY_S doubling to DIAL_RETRY_MAX_S) for
        REDIAL_FOR_S. It stops when the peer is back, banned, or refused our handshake."""
        p = self.peer
        addr = addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"
        backoff = Backoff(DIAL_RETRY_S, DIAL_RETRY_MAX_S, give_up_s=REDIAL_FOR_S)
        while True:
            delay = backoff.failed(trio.current_time())
            if backoff.exhausted(trio.current_time()):
                log.info("gave up redialing %s after %.0f s", peer[-12:], REDIAL_FOR_S)
                return
            await trio.sleep(delay)
            if peer in p.members or peer in p.banned or p.joining.refused_recently(peer):
                return
            try:
                if await p.dial(addr, quiet=True) is not None:
                    return
            except PeerError:  # a malformed address: nothing to retry
                return
            log.debug("redial of %s failed (%d in a row)", peer[-12:], backoff.failures)
