"""The party's gossip: small signed messages over gossipsub, among members only.

py-libp2p 0.8.1's gossipsub, as it comes, heartbeats every 120 s, drops a sender's messages past
10 a second, queues 32 per subscription and loses messages over 1 MiB without a word; and an
exception in its stream handler (one malformed frame) ends the process. So here:
  * the router heartbeats every second (a joining member is grafted into the mesh at once) and
    takes up to RATE_MAX messages a second from a sender; our own messages stay under
    GOSSIP_BYTES_MAX and the inbound RPC limit is set near it;
  * the topic is derived from the party's slow password (`membership.gossip_topic`), and pubsub
    hears of a peer only when it joins the party (`join`), never on a bare connection: as it comes,
    pubsub opens a stream to every connected peer and sends it our subscriptions, the topic
    included, so an outsider that merely completed Noise would learn it;
  * every message is signed by its author (strict signing); a validator rejects what does not
    decode as one of our gossip messages, and only messages authored by members are delivered;
  * the pubsub stream handler is wrapped: a stream from a peer that has not become a member
    within MEMBER_WAIT_S is reset unread (pubsub never answers on it anyway: it writes only on
    streams it opened itself), and nothing raised inside it escapes;
  * one task drains the subscription as messages come, so the 32-message queue never fills.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.pubsub_notifee import PubsubNotifee
from libp2p.tools.anyio_service import background_trio_service

from ..protocol import GOSSIP_BYTES_MAX, Have, RemoteProtocolError, Status, decode_gossip, encode_gossip

log = logging.getLogger("meshrender.gossip")

HEARTBEAT_S = 1  # gossipsub's default is 120 s: a new member would wait minutes to hear anything
RATE_MAX = 50.0  # messages a second from one sender (status every 2 s, have on change: far below)
RPC_BYTES_MAX = 4 * GOSSIP_BYTES_MAX  # one inbound pubsub RPC: a few of our messages, batched
MEMBER_WAIT_S = 3.0  # a member's stream may beat our end of the handshake by a moment (join: 2 s)
JOIN_STREAM_S = 15.0  # a joined member's pubsub stream is retried this long (slow stream negotiation)


class _MembersOnly(INotifee):
    """Pubsub's own notifee without `connected`: pubsub learns of a peer from `Gossip.join`."""

    def __init__(self, inner: INotifee):
        self.inner = inner

    async def connected(self, network, conn) -> None:
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network, conn) -> None:
        await self.inner.disconnected(network, conn)

    async def opened_stream(self, network, stream) -> None:
        await self.inner.opened_stream(network, stream)

    async def closed_stream(self, network, stream) -> None:
        await self.inner.closed_stream(network, stream)

    async def listen(self, network, multiaddr) -> None:
        await self.inner.listen(network, multiaddr)

    async def listen_close(self, network, multiaddr) -> None:
        await self.inner.listen_close(network, multiaddr)


class Gossip:
    """Gossip for one party on one host. `is_member(peer_id)` says who may speak; each valid
    message reaches `on_message(author, msg)` in the trio thread."""

    def __init__(
        self,
        host,
        topic: str,
        *,
        is_member: Callable[[str], bool],
        on_message: Callable[[str, Status | Have], None],
        guard: Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]],
    ):
        self.topic = topic
        self.is_member = is_member
        self.on_message = on_message
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=HEARTBEAT_S,
            max_messages_per_topic_per_second=RATE_MAX,
        )
        network = host.get_network()
        before = list(network.notifees)
        self.pubsub = Pubsub(host, self.router, strict_signing=True, max_inbound_rpc_size=RPC_BYTES_MAX)
        added = [n for n in network.notifees if n not in before and isinstance(n, PubsubNotifee)]
        if len(added) != 1:  # a py-libp2p that registers its peers otherwise: refuse to leak the topic
            raise RuntimeError("pubsub did not register the one notifee expected (py-libp2p changed?)")
        network.notifees[network.notifees.index(added[0])] = _MembersOnly(added[0])
        handler = self.pubsub.stream_handler

        async def members_only(stream, remote: str) -> None:
            with trio.move_on_after(MEMBER_WAIT_S):
                while not self.is_member(remote):
                    await trio.sleep(0.05)
            if not self.is_member(remote):
                raise RemoteProtocolError("a gossip stream from a peer that did not join the party")
            await handler(stream)

        for proto in self.router.get_protocols():  # replaces the handlers Pubsub set, unwrapped
            host.set_stream_handler(proto, guard(members_only))
        self.pubsub.set_topic_validator(topic, self._valid, False)
        self.received = 0
        self.rejected = 0

    def _valid(self, forwarder: ID, msg) -> bool:
        """Malformed gossip is rejected (gossipsub holds that against the forwarder). An author we
        have not met is not: members join at different moments, and gossip from a member we are
        still shaking hands with is dropped later, in `run`, without blaming whoever relayed it."""
        try:
            ID(msg.from_id)
            decode_gossip(msg.data)
        except Exception as exc:  # the validator runs inside pubsub: nothing may escape it
            self.rejected += 1
            log.debug("gossip via %s rejected: %s", forwarder, exc)
            return False
        return True

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            sub = await self.pubsub.subscribe(self.topic)
            task_status.started()
            while True:
                msg = await sub.get()
                try:
                    author = str(ID(msg.from_id))
                    decoded = decode_gossip(msg.data)
                except Exception as exc:  # validated already; a race with a departure at most
                    log.debug("undecodable gossip dropped: %s", exc)
                    continue
                if author == str(self.pubsub.my_id) or not self.is_member(author):
                    continue
                self.received += 1
                try:
                    self.on_message(author, decoded)
                except Exception:  # a bug in bookkeeping must not stop the gossip
                    log.exception("gossip handler failed")

    async def join(self, peer: str) -> None:
        """`peer` joined the party: open our pubsub stream to it (it hears our subscriptions now,
        and only now). Retried while it stays connected, for up to JOIN_STREAM_S."""
        try:
            await self.pubsub.ensure_peer_stream(ID.from_base58(peer), timeout=JOIN_STREAM_S)
        except trio.Cancelled:
            raise
        except Exception as exc:  # pubsub stopped, or the peer went: its next join tries again
            log.debug("no pubsub stream to %s: %s: %s", peer, type(exc).__name__, exc)

    async def publish(self, msg: Status | Have) -> None:
        await self.pubsub.publish(self.topic, encode_gossip(msg))
