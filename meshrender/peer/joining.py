"""Joining the party: the I/O edge of the handshake whose sans-IO core is `membership`.

How it works
  * Every connection is authenticated by Noise; membership is then proven by the party handshake
    (SPAKE2, meshrender.peer.membership) on `/meshrender/party/1`: the dialer runs it right after
    connecting (`dial`), the listener answers (`on_party`). A failed handshake hangs up the
    connection, a connection not joined within JOIN_DEADLINE_S is closed, and an address with
    too many failed handshakes is hung up on at once (membership.FailureLimiter, per direction).
  * After a handshake both sides send `Peers` (themselves and the members they know) and dial any
    member they have not met, so one bootstrap address meshes the whole party.
  * A failed dial is retried (bootstrap only) backing off DIAL_RETRY_S doubling to
    DIAL_RETRY_MAX_S; a peer that refused our handshake is not dialed again for REFUSED_HOLD_S.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

import trio
from blake3 import blake3
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from ..backoff import Backoff
from ..net.host import open_stream, parse_multiaddr
from ..net.streams import read_exact, read_msg, write_msg
from ..protocol import (
    ADDRS_PER_PEER_MAX,
    FRAME_HEADER,
    PEERS_MAX,
    Hello,
    HelloFinish,
    PeerAddr,
    Peers,
    Refused,
    RemoteProtocolError,
    decode_body,
    frame_length,
)
from .common import PROTO_PARTY, Member, PeerError, close_conn, close_stream, hang_up, reset_stream
from .membership import (
    ABANDONED_MAX,
    FAILURE_WINDOW_S,
    SOURCES_MAX,
    Blocked,
    FailureLimiter,
    Handshake,
    party_password,
)

if TYPE_CHECKING:
    from ..node import Peer

log = logging.getLogger("meshrender.node")

HANDSHAKE_TIMEOUT_S = 5.0  # a member answers in milliseconds; an outsider must not hold a slot
JOIN_DEADLINE_S = 2.0  # a connection not joined by then is closed: a member joins in tens of ms
# ... unless its party handshake is under way (a SPAKE2 message came): on a starved machine a
# member's handshake can take seconds, and cutting it would count against its address
JOIN_HANDSHAKING_S_MAX = 3 * HANDSHAKE_TIMEOUT_S  # its three reads have HANDSHAKE_TIMEOUT_S each
REFUSED_LINGER_S = 0.5  # after Refused, the dialer this long to read it and hang up before we do
HANDSHAKE_FRAME_BYTES_MAX = 1024  # Hello is 139 bytes, Refused at most ~420: read no more unproven
DIAL_RETRY_S = 2.0  # the first wait before dialing again after a failed dial; doubling after each
DIAL_RETRY_MAX_S = 300.0  # ...up to this: a departed peer costs a log line per 5 min, not 28 a minute
REFUSED_HOLD_S = 60.0  # a peer that refused our handshake is not dialed again for this long (a load-starved
# member can look like a refusal: a minute, not forever)


class Joining:
    """Dialing, the handshake on both sides, the join deadline and the failure limiters."""

    def __init__(self, peer: Peer, secret: bytes):
        self.peer = peer
        self._secret = secret
        self.dialing: set[str] = set()
        self._password: bytes | None = None  # argon2id of the secret, once (party_password)
        self._accept_limit = FailureLimiter()  # failed handshakes of connections we accepted, per IP
        self._dial_limit = FailureLimiter()  # failed handshakes of our dials, per IP dialed
        self._abandon_limit = FailureLimiter(ABANDONED_MAX)  # handshakes left part-way, per IP
        self._dropped_told: dict[str, float] = {}  # source -> when its last `dropped` was told
        self._handshaking: set[str] = set()  # a SPAKE2 message came from it: its handshake is under way
        self._connected_at: dict[str, float] = {}  # peer not yet joined -> when Noise finished (trio clock)
        self.proven: set[str] = set()  # proved the password, Peers not yet exchanged: not an outsider
        self._refused_us: dict[str, float] = {}  # peer -> when it refused our handshake (trio clock)

    def secret_matches(self, typed: bytes) -> bool:
        """Whether `typed` is the party secret (the web page's login), in constant time: both
        sides are hashed first, so the comparison's length and timing say nothing of it."""
        return hmac.compare_digest(blake3(typed).digest(), blake3(self._secret).digest())

    def refused_recently(self, peer: str) -> bool:
        at = self._refused_us.get(peer)
        if at is None:
            return False
        if trio.current_time() - at < REFUSED_HOLD_S:
            return True
        del self._refused_us[peer]
        return False

    def _joined(self, peer: str, addrs: list[str]) -> None:
        p = self.peer
        fresh = peer not in p.members
        p.members[peer] = Member(peer, addrs[:ADDRS_PER_PEER_MAX], time.time())
        at = self._connected_at.pop(peer, None)
        self.proven.discard(peer)
        if fresh:
            joined_in = {} if at is None else {"joined_in_s": round(trio.current_time() - at, 3)}
            p._event("peer-joined", peer=peer, addrs=addrs, **joined_in)
            p.presence.soon()  # gossip keeps no history: tell the newcomer who we are
            if p._nursery is not None:
                p._nursery.start_soon(p.liveness.watch, peer)
                if p.gossip is not None:  # pubsub hears of members only: no topic for outsiders
                    p._nursery.start_soon(p.gossip.join, peer)

    def _peers_msg(self) -> Peers:
        p = self.peer
        own = PeerAddr(p.peer_id, p.addrs[:ADDRS_PER_PEER_MAX])
        others = [PeerAddr(m.peer_id, m.addrs) for m in list(p.members.values())[: PEERS_MAX - 1]]
        return Peers(peers=[own, *others])

    def _learn(self, msg: Peers, remote: str) -> list[str]:
        """The remote's own addresses (first entry) and members worth dialing."""
        p = self.peer
        own = []
        for entry in msg.peers:
            if entry.peer_id == remote:
                own = list(entry.addrs)
            elif entry.peer_id != p.peer_id and entry.peer_id not in p.members and entry.addrs:
                a = entry.addrs[0]
                addr = a if "/p2p/" in a else f"{a}/p2p/{entry.peer_id}"
                if p._nursery is not None:
                    p._nursery.start_soon(p.dial, addr, False)
        return own

    async def dial(self, addr: str, retry: bool = False, quiet: bool = False) -> str | None:
        """Connect to addr and prove membership both ways; returns the member's peer id."""
        p = self.peer
        ma = parse_multiaddr(addr)
        try:
            info = info_from_p2p_addr(ma)
        except Exception:
            raise PeerError(f"{addr}: a bootstrap address must end in /p2p/<peer id>") from None
        remote = str(info.peer_id)
        if remote == p.peer_id or remote in p.members or remote in self.dialing:
            return remote if remote in p.members else None
        if self.refused_recently(remote):  # it said no: asking every few seconds changes nothing
            return None
        source = _addr_host(ma)
        if not self._dial_limit.allows(source, trio.current_time()):  # too many impostors there lately
            return None
        self.dialing.add(remote)
        backoff = Backoff(DIAL_RETRY_S, DIAL_RETRY_MAX_S)  # `retry`: a bootstrap peer not up yet, or gone
        try:
            while True:
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_S * 2):
                        await p.host.connect(info)
                    return await self._handshake_as_dialer(info.peer_id, source)
                except (RemoteProtocolError, PeerError) as exc:
                    self._refused_us[remote] = trio.current_time()
                    p._event("refused", peer=remote, reason=str(exc))
                    await hang_up(p.host, info.peer_id)
                    return None
                except Exception as exc:  # unreachable, reset, timed out
                    delay = backoff.failed(trio.current_time()) if retry else None
                    if not quiet:  # one line per back-off step
                        reason = f"{type(exc).__name__}: {exc}"
                        p._event("dial-failed", peer=remote, addr=addr, reason=reason, retry_in_s=delay)
                    if delay is None:
                        return None
                await trio.sleep(delay)
                if remote in p.members:  # it dialed us meanwhile
                    return remote
        finally:
            self.dialing.discard(remote)

    def party_password(self) -> bytes:
        """The party's SPAKE2 password: argon2id of the secret (~0.15 s), derived once."""
        if self._password is None:
            try:
                self._password = party_password(self.peer.party, self._secret)
            except Exception as exc:  # argon2 out of memory, say: a clear error, not a traceback
                raise PeerError(f"cannot derive the party password: {type(exc).__name__}: {exc}") from None
        return self._password

    def _blocked(self, notice: Blocked, how: str) -> None:
        """A source has failed too many handshakes: one line for it, not one per attempt."""
        log.warning("%s: %d failed party handshakes %s within a minute: hung up on for %.0f s",
                    notice.source, notice.failures, how, notice.block_s)  # fmt: skip
        self.peer._event("handshake-blocked", source=notice.source, failures=notice.failures, how=how,
                         block_s=notice.block_s, blocks=notice.blocks)  # fmt: skip

    def connected(self, conn) -> None:
        """A connection passed Noise. One from a source blocked for failed handshakes is closed
        at once; any other must join the party within JOIN_DEADLINE_S or be closed."""
        p = self.peer
        if p._nursery is None:
            return
        remote = str(conn.muxed_conn.peer_id)
        if remote in p.members:
            return
        source = _conn_host(conn.muxed_conn)
        inbound = not getattr(getattr(conn.muxed_conn, "secured_conn", None), "is_initiator", False)
        if inbound and not self._accepts(source):
            p._nursery.start_soon(close_conn, conn)  # no handshake, no reply
            return
        self._connected_at[remote] = trio.current_time()
        p._nursery.start_soon(self._join_deadline, conn, remote, source, inbound)

    async def _join_deadline(self, conn, remote: str, source: str, inbound: bool) -> None:
        """Close the connection unless its peer has joined (or proven the password) by now. Not a
        failed handshake: a bare connection tests no guess (a handshake cut here counts itself)."""
        p = self.peer
        await trio.sleep(JOIN_DEADLINE_S)
        if remote in self._handshaking and remote not in p.members and not conn.is_closed:
            # under way: each of its steps has its own read deadline; this bounds the whole
            await trio.sleep(JOIN_HANDSHAKING_S_MAX - JOIN_DEADLINE_S)
        self._handshaking.discard(remote)
        proven = remote in self.proven  # the member list may still be on its way: no outsider
        self.proven.discard(remote)
        self._connected_at.pop(remote, None)
        if remote in p.members or proven or conn.is_closed:
            return
        now = trio.current_time()
        if now - self._dropped_told.get(source, float("-inf")) >= FAILURE_WINDOW_S:  # a line a minute
            self._dropped_told[source] = now
            while len(self._dropped_told) > SOURCES_MAX:
                del self._dropped_told[next(iter(self._dropped_told))]
            p._event("dropped", peer=remote, source=source,
                     reason=f"did not join the party within {JOIN_DEADLINE_S:.0f} s")  # fmt: skip
        await close_conn(conn)

    async def _handshake_as_dialer(self, peer: ID, source: str) -> str:
        p = self.peer
        remote = str(peer)
        hs = Handshake("dialer", self.party_password(), p.party, p.peer_id, remote)
        stream = await open_stream(p.host, p._nursery, peer, PROTO_PARTY, HANDSHAKE_TIMEOUT_S)
        try:
            await write_msg(stream, hs.start(), HANDSHAKE_TIMEOUT_S)
            reply = await _read_handshake(stream)
            if reply is None:
                raise PeerError("the peer closed the handshake (not in this party, or wrong secret)")
            finish = hs.receive(reply)  # nothing keyed has left us yet
            self._handshaking.add(remote)  # a valid SPAKE2 message: the join deadline stretches
            # our confirm is the one guess an impostor gets: FAILURES_MAX a minute per address
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                while not self._dial_limit.begin(source, trio.current_time()):
                    if self._dial_limit.is_blocked(source, trio.current_time()):
                        raise PeerError(f"too many failed handshakes with peers at {source} lately")
                    await trio.sleep(0.05)  # parallel dials to one address: wait for a place
            ok = False
            try:
                await write_msg(stream, finish, HANDSHAKE_TIMEOUT_S)
                confirm = await _read_handshake(stream)
                if confirm is None:
                    raise PeerError("the peer closed the handshake (not in this party, or wrong secret)")
                hs.receive(confirm)
                ok = True
                self.proven.add(remote)
            finally:
                notice = self._dial_limit.end(source, trio.current_time(), ok=ok)
                if notice is not None:
                    self._blocked(notice, "by peers we dialed")
            await write_msg(stream, self._peers_msg(), HANDSHAKE_TIMEOUT_S)
            theirs = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
            if not isinstance(theirs, Peers):
                raise RemoteProtocolError("expected the member list after the handshake")
            self._joined(remote, self._learn(theirs, remote))
            return remote
        finally:
            await close_stream(stream)

    def _accepts(self, source: str) -> bool:
        now = trio.current_time()
        return self._accept_limit.allows(source, now) and self._abandon_limit.allows(source, now)

    def _failed(self, limiter: FailureLimiter, source: str, how: str) -> None:
        notice = limiter.failed(source, trio.current_time())
        if notice is not None:
            self._blocked(notice, how)

    async def on_party(self, stream, remote: str) -> None:
        p = self.peer
        source = _conn_host(stream.muxed_conn)
        if not self._accepts(source):  # blocked: no handshake, no reply at all
            await reset_stream(stream)
            await hang_up(p.host, ID.from_base58(remote))
            return
        hs = Handshake("listener", self.party_password(), p.party, p.peer_id, remote)
        try:
            hello = await _read_handshake(stream)
            if hello is None:
                raise _Abandoned("it closed the party stream before its Hello")
            if not isinstance(hello, Hello):
                raise RemoteProtocolError("a party stream must start with Hello")
            reply = hs.receive(hello)  # not keyed: SPAKE2's B
            self._handshaking.add(remote)  # a valid SPAKE2 message: the join deadline stretches
            await write_msg(stream, reply, HANDSHAKE_TIMEOUT_S)
            finish = await _read_handshake(stream)  # a reset or a timeout here: abandoned
            if finish is None:
                raise _Abandoned("it closed the party stream before its confirm")
            if not isinstance(finish, HelloFinish):
                raise RemoteProtocolError("expected the handshake's finish")
            if not self._accepts(source):  # blocked meanwhile: its guess is not even checked
                raise _Blocked(source)
            confirm = hs.receive(finish)  # raises on a wrong confirm: one online guess, counted
            self.proven.add(remote)
            await write_msg(stream, confirm, HANDSHAKE_TIMEOUT_S)
        except _Blocked:
            await reset_stream(stream)
            await hang_up(p.host, ID.from_base58(remote))
            return
        except Exception as exc:  # a wrong confirm, garbage, a timeout, the outsider hanging up
            if hs.member:  # it proved the password; only our confirm was lost on the way
                raise
            p._event("refused", peer=remote, reason=f"handshake failed: {type(exc).__name__}: {exc}")
            if isinstance(exc, _Abandoned | trio.TooSlowError) or not isinstance(exc, RemoteProtocolError):
                self._failed(self._abandon_limit, source, "abandoned part-way")
            else:
                self._failed(self._accept_limit, source, "from there")
            try:  # a closed stream keeps its last bytes where a reset would drop them
                await write_msg(stream, Refused(reason="not a member of this party"), 1.0)
                await stream.close()
                with trio.move_on_after(REFUSED_LINGER_S):  # the dialer hangs up once it has read it
                    while not stream.muxed_conn.is_closed:
                        await trio.sleep(0.02)
            except Exception:  # the outsider may be gone already
                pass
            await reset_stream(stream)
            await hang_up(p.host, ID.from_base58(remote))
            return
        theirs = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
        if not isinstance(theirs, Peers):
            raise RemoteProtocolError("expected the member list after the handshake")
        await write_msg(stream, self._peers_msg(), HANDSHAKE_TIMEOUT_S)
        self._joined(remote, self._learn(theirs, remote))
        await close_stream(stream)


class _Abandoned(Exception):
    """The dialer left a handshake part-way: no guess tested (counted apart from wrong ones)."""


class _Blocked(Exception):
    """The source was blocked while its handshake ran: hang up, check nothing, say nothing."""


async def _read_handshake(stream):
    """One handshake message from a peer that has proven nothing: at most HANDSHAKE_FRAME_BYTES_MAX
    (the general frame limit is 16 MiB), within HANDSHAKE_TIMEOUT_S; None at a clean end."""
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        header = await read_exact(stream, FRAME_HEADER.size)
        if header is None:
            return None
        n = frame_length(header)
        if n > HANDSHAKE_FRAME_BYTES_MAX:
            raise RemoteProtocolError(f"a handshake frame of {n} bytes, limit {HANDSHAKE_FRAME_BYTES_MAX}")
        body = await read_exact(stream, n) if n else b""
        if body is None:
            raise RemoteProtocolError("stream ended between a frame header and its body")
        return decode_body(body)


def _conn_host(muxed_conn) -> str:
    """The remote IP of a connection: the source that failed handshakes are counted against."""
    try:
        host, _port = muxed_conn.get_remote_address()
        return str(host)
    except Exception:  # no address known: all such connections share one count
        return "?"


def _addr_host(ma) -> str:
    """The IP (or DNS name) a multiaddr dials."""
    for proto in ("ip4", "ip6", "dns4", "dns6", "dns"):
        try:
            return str(ma.value_for_protocol(proto))
        except Exception:  # not this protocol
            continue
    return str(ma).split("/p2p/")[0]
