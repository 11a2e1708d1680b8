"""Presence: finding party peers on the LAN, and gossiping what each member is doing and holds.

How it works
  * With mDNS on (`discover`), the peer announces its addresses on the interfaces it listens on
    under the party's public tag, and dials every party peer it hears of. An announcement is only
    a hint: whoever is found must still pass the party handshake. If mDNS cannot run, the peer
    goes on without it (bootstrap addresses still work) and says so.
  * `announce` publishes our Status on the party's gossip topic every STATUS_INTERVAL_S (at once
    after a change: `soon`), and the scenes held whole when they change, when a member joins
    (gossip keeps no history for newcomers), and every HAVE_REPEAT_S regardless.
  * `on_gossip` keeps each member's latest Status and have-list (in the peer's `statuses` and
    `have_of`) and tells of changes; gossip from a non-member is ignored. Latest by the sender's
    own stamp (`sent_ms`), not by arrival: a peer that has just joined is handed what its
    neighbours still cache, in no set order, and an old "compiling" landing after "ready" kept a
    demo's coordinator from offering that member work until its next status, 2 s on (the member
    rendered 1 of 128 units). A stamp more than REORDER_MAX_S behind the newest is taken as the
    sender's clock having been set back, and accepted.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from ..net.mdns import ADDRS_MAX as MDNS_ADDRS_MAX
from ..net.mdns import MdnsDiscovery, MdnsError, mdns_interfaces
from ..protocol import HAVE_SCENES_MAX, Have, Status, party_tag
from .common import PeerError

if TYPE_CHECKING:
    from ..node import Peer

log = logging.getLogger("meshrender.node")

STATUS_INTERVAL_S = 2.0  # a status gossip this often (and at once after a change)
HAVE_REPEAT_S = 10.0  # the have-list is re-announced at least this often
REORDER_MAX_S = 30.0  # gossip caches hold a few seconds: older than the newest by more is a clock change


def sent_ms() -> int:
    """The stamp a gossip message carries (protocol.SentMs)."""
    return int(time.time() * 1000)


class Presence:
    """mDNS discovery and the status/have gossip, with the count of scenes held whole."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self._now = trio.Event()  # set: announce without waiting for the interval
        self._held: list[str] | None = None  # scenes held whole, newest last (None: to be counted)
        self._sent_ms: dict[str, dict[type, int]] = {}  # author: message kind: the newest sent_ms taken

    def soon(self) -> None:
        """Something others should know changed: announce it now, not at the next interval."""
        self._now.set()

    def held_scenes(self) -> list[str]:
        """Scenes this store holds whole, newest last (recounted after a fetch, or when asked to)."""
        if self._held is None:
            store = self.peer.store
            self._held = [s for s in store.scene_ids() if store.has_scene(s)]
        return self._held

    def scene_changed(self) -> None:
        """The store gained or lost a scene: recount and announce it soon."""
        self._held = None
        self._now.set()

    async def discover(self) -> None:
        """mDNS on the interfaces we listen on: every party peer found is dialed (and must still
        pass the handshake: an announcement is only a hint). If mDNS cannot run, the peer goes on
        without it (bootstrap addresses still work) and says so."""
        p = self.peer
        try:
            interfaces = mdns_interfaces(p.listen)
            own: list[str] = []
            for a in p.addrs:
                if not a.startswith("/ip4/"):
                    continue
                ip = a.split("/")[2]
                for concrete in interfaces if ip == "0.0.0.0" else [ip]:  # announce where we are reachable
                    own.append(a.replace(f"/ip4/{ip}/", f"/ip4/{concrete}/", 1).split("/p2p/")[0])
            own = [f"{a}/p2p/{p.peer_id}" for a in dict.fromkeys(own)][:MDNS_ADDRS_MAX]
            disc = MdnsDiscovery(peer_id=p.peer_id, addrs=own, party_tag=party_tag(p.party),
                                 interfaces=interfaces)  # fmt: skip
        except ValueError as exc:
            raise PeerError(f"mDNS: {exc}") from None

        def found(peer: str, addrs: list[str]) -> None:
            p._event("discovered", peer=peer, addrs=addrs, by="mdns")
            if peer not in p.members and p._nursery is not None:
                p._nursery.start_soon(p.dial, addrs[0], False)

        try:
            await disc.run(found)
        except MdnsError as exc:
            log.warning("mDNS discovery stopped: %s", exc)
            p._event("mdns-failed", reason=str(exc))

    async def announce(self) -> None:
        """Status every STATUS_INTERVAL_S; the scenes held whole when they change, when a member
        joins (gossip keeps no history for newcomers), and every HAVE_REPEAT_S regardless."""
        p = self.peer
        last_have: list[str] | None = None
        last_have_t = 0.0
        members_seen = 0
        while True:
            with trio.move_on_after(STATUS_INTERVAL_S):
                await self._now.wait()
            self._now = trio.Event()
            now = time.monotonic()
            if now - last_have_t >= HAVE_REPEAT_S:
                self._held = None  # a `store add` by another process shows up within HAVE_REPEAT_S
            try:
                await p.gossip.publish(p.status())
                held = self.held_scenes()[-HAVE_SCENES_MAX:]
                joined = len(p.members) > members_seen
                if held != last_have or joined or now - last_have_t >= HAVE_REPEAT_S:
                    await p.gossip.publish(Have(scene_ids=held, sent_ms=sent_ms()))
                    last_have, last_have_t = held, now
                members_seen = len(p.members)
            except trio.Cancelled:
                raise
            except Exception as exc:  # a pubsub hiccup must not end the peer
                log.info("gossip publish failed: %s: %s", type(exc).__name__, exc)

    def _newest(self, author: str, msg: Status | Have) -> bool:
        """Whether `msg` is the newest of its kind from `author` so far (then it is recorded as
        such): not older than one already taken, unless by more than a clock change."""
        if not msg.sent_ms:  # an older peer's: arrival order is all there is
            return True
        taken = self._sent_ms.setdefault(author, {})
        newest = taken.get(type(msg), 0)
        if msg.sent_ms < newest and newest - msg.sent_ms <= REORDER_MAX_S * 1000:
            return False
        taken[type(msg)] = msg.sent_ms
        return True

    def forget(self, author: str) -> None:
        """`author` left the party: its stamps go with it (bounded by the members)."""
        self._sent_ms.pop(author, None)

    def on_gossip(self, author: str, msg: Status | Have) -> None:
        p = self.peer
        if author not in p.members or not self._newest(author, msg):
            return
        if isinstance(msg, Status):
            status = msgspec.structs.asdict(msg)
            before = p.statuses.get(author)
            p.statuses[author] = {**status, "t": round(time.time(), 3)}
            told = ("state", "backend", "fell_back", "fallback")  # a change of these is an event
            if before is None or any(before[k] != status[k] for k in told):
                p._event("peer-status", peer=author, **status)
        else:
            new = set(msg.scene_ids) - p.have_of.get(author, set())
            p.have_of[author] = set(msg.scene_ids)
            if new:
                p._event("have", peer=author, scene_ids=sorted(new))
