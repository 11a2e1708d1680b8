"""The peer: one libp2p host in a party, serving and fetching scene chunks.

How it works
  * On start it loads (or makes) its Ed25519 identity under $MESHRENDER_HOME, opens its chunk
    store and listens. Every connection is authenticated by Noise; membership is then proven by
    the party handshake (SPAKE2, meshrender.peer.membership) on `/meshrender/party/1`: the dialer
    runs it right after connecting, the listener answers. Only members are served anything: a
    chunk stream from a non-member is reset and logged, a failed handshake hangs up the
    connection, a connection not joined within JOIN_DEADLINE_S is closed, and an address with
    too many failed handshakes is hung up on at once (membership.FailureLimiter, per direction).
  * After a handshake both sides send `Peers` (themselves and the members they know) and dial any
    member they have not met, so one bootstrap address meshes the whole party.
  * `/meshrender/chunks/1` carries `Want` -> `Chunk`/`NotFound` and `ChunkMapQuery` -> `ChunkMap`.
    Chunks go on the wire as the store keeps them, zstd frames (checked against their hash first),
    and a received frame is kept as the blob: neither end compresses again. Each provider
    gets two streams: a bulk one for chunks and a control one for chunk maps, so a map is never
    queued behind megabytes of chunks.
  * Fetching a scene (`fetch_scene`) is a swarm. It asks every member for its chunk map of the
    scene (whole, part, or nothing), takes the manifest from one that has it, then lets the sans-IO
    scheduler (meshrender.exchange) spread the chunks, in an order of its own, over every member
    holding them. While it fetches it serves what it has to other fetchers and asks the members
    for fresh maps every MAP_POLL_S, so fetchers that start together ask the source for different
    chunks and trade the rest among themselves (that policy is the sans-IO meshrender.swarm, which
    the simulator runs too). Each chunk is verified by the store before it is
    kept; a peer that sent wrong bytes is banned and penalised, its chunks re-requested elsewhere.
  * Every stream handler is wrapped: nothing a peer sends can raise out of it (py-libp2p ends the
    process on an exception escaping a handler). Every read has a deadline.
  * One status source: `snapshot()` and the event stream (`events`, and the `on_event` callback
    the CLI prints as JSON lines) are what the JSON output and, later, the TUI read.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from . import __version__
from .backoff import Backoff
from .errors import MeshrenderError
from .exchange import Cancel, Penalize, Request
from .home import HomeLock, store_dir, store_quota_bytes
from .net.gossip import Gossip
from .net.host import build_host, load_or_create_identity, open_stream, parse_multiaddr
from .net.mdns import ADDRS_MAX as MDNS_ADDRS_MAX
from .net.mdns import MdnsDiscovery, MdnsError, mdns_interfaces
from .net.streams import MsgLink, read_exact, read_msg, write_msg
from .peer.membership import (
    ABANDONED_MAX,
    FAILURE_WINDOW_S,
    SOURCES_MAX,
    Blocked,
    FailureLimiter,
    Handshake,
    gossip_topic,
    party_password,
)
from .protocol import (
    ADDRS_PER_PEER_MAX,
    FRAME_HEADER,
    HAVE_SCENES_MAX,
    PEERS_MAX,
    WANT_HASHES_MAX,
    Chunk,
    ChunkMap,
    ChunkMapQuery,
    Have,
    Hello,
    HelloFinish,
    NotFound,
    PeerAddr,
    Peers,
    Refused,
    RemoteProtocolError,
    Status,
    Want,
    decode_body,
    frame_length,
    party_tag,
)
from .renderproc import RenderError, RenderProcess
from .store.chunkstore import ChunkStore, CorruptChunkError, MissingChunkError, StoreError
from .store.manifest import ManifestError, decode_manifest
from .store.writer import ChunkWriter
from .swarm import FIND_TIMEOUT_S, MAP_POLL_S, MAP_TIMEOUT_S, SceneSwarm
from .work import serve_job

log = logging.getLogger("meshrender.node")

PROTO_PARTY = "/meshrender/party/1"
PROTO_CHUNKS = "/meshrender/chunks/1"
PROTO_PING = "/meshrender/ping/1"
PROTO_JOBS = "/meshrender/jobs/1"
PROTO_CONTROL = "/meshrender/control/1"
CONTROL_REQUEST_S = 10.0  # a control request arrives within this after its stream opens
CONTROL_REPLY_S = 660.0  # a submit's answer waits for the scene to be fetched (service.SCENE_FETCH_S)
JOB_LINK_IDLE_S = 3600.0  # a worker may wait this long between leases; its coordinator's loss ends it sooner
PING_INTERVAL_S = 0.5  # a ping every half second: a frozen member is found within LIVENESS_TIMEOUT_S
LIVENESS_TIMEOUT_S = 2.0  # nothing from a member for this long: it is lost (SIGSTOP must show within 3 s)
PING_BYTES = 8
HANDSHAKE_TIMEOUT_S = 5.0  # a member answers in milliseconds; an outsider must not hold a slot
JOIN_DEADLINE_S = 2.0  # a connection not joined by then is closed: a member joins in tens of ms
# ... unless its party handshake is under way (a SPAKE2 message came): on a starved machine a
# member's handshake can take seconds, and cutting it would count against its address
JOIN_HANDSHAKING_S_MAX = 3 * HANDSHAKE_TIMEOUT_S  # its three reads have HANDSHAKE_TIMEOUT_S each
REFUSED_LINGER_S = 0.5  # after Refused, the dialer this long to read it and hang up before we do
HANDSHAKE_FRAME_BYTES_MAX = 1024  # Hello is 139 bytes, Refused at most ~420: read no more unproven
IDLE_STREAM_TIMEOUT_S = 120.0  # a chunk stream with no request for this long is closed
READ_AHEAD_CHUNKS = 2  # frames read for serving ahead of the one being sent: the disk never waits on us
EVENTS_KEPT = 1000  # recent events kept for a late reader (the TUI's log)
DIAL_RETRY_S = 2.0  # the first wait before dialing again after a failed dial; doubling after each
DIAL_RETRY_MAX_S = 300.0  # ...up to this: a departed peer costs a log line per 5 min, not 28 a minute
REDIAL_FOR_S = 3600.0  # a lost member is dialed again (backing off) this long, then forgotten
REFUSED_HOLD_S = 60.0  # a peer that refused our handshake is not dialed again for this long (a load-starved
# member can look like a refusal: a minute, not forever)
STATUS_INTERVAL_S = 2.0  # a status gossip this often (and at once after a change)
HAVE_REPEAT_S = 10.0  # the have-list is re-announced at least this often


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


@dataclass
class _Link:
    """One open chunk stream to a member: a control stream is used by one request at a time
    (`lock`); a bulk stream is pipelined: `lock` guards writing Wants, and one reader task hands
    each answer to the handler queued for it in `pending` (a provider answers in order)."""

    stream: object
    lock: trio.Lock = field(default_factory=trio.Lock)
    pending: deque = field(default_factory=deque)  # (hash, handler) per chunk asked, oldest first


class _Notifee(INotifee):
    def __init__(self, peer: Peer):
        self.peer = peer

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def connected(self, network, conn) -> None:
        try:  # never blocks: libp2p waits for every notifee before the connection is used
            self.peer._connected(conn)
        except Exception:  # never let bookkeeping raise into libp2p
            log.exception("connect bookkeeping failed")

    async def disconnected(self, network, conn) -> None:
        try:
            self.peer._lost(str(conn.muxed_conn.peer_id), "connection closed")
        except Exception:  # never let bookkeeping raise into libp2p
            log.exception("disconnect bookkeeping failed")

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


class Peer:
    def __init__(
        self,
        *,
        home: Path,
        party: str,
        secret: bytes,
        listen: list[str] | None = None,
        bootstrap: list[str] | None = None,
        on_event: Callable[[dict], None] | None = None,
        store: ChunkStore | None = None,
        backend: str = "auto",
        threads: int | None = None,
        mdns: bool = False,
        render: bool = True,
        run_queue: bool = False,
        verify: float = 0.0,
        local_socket: Path | None = None,
        render_log: Path | None = None,
    ):
        if not party:
            raise PeerError("a party needs a name")
        if not secret:
            raise PeerError("a party needs a secret (--secret or --secret-file)")
        self.home = Path(home)
        self.party = party
        self._secret = secret
        self.listen = listen or ["/ip4/127.0.0.1/tcp/0"]
        self.bootstrap = list(bootstrap or [])
        self.on_event = on_event
        self.store = store
        self.members: dict[str, Member] = {}
        self.penalties: dict[str, list[str]] = {}
        self.banned: set[str] = set()
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.watchers: list[Callable[[dict], None]] = []  # local status-socket readers (meshrender.local)
        self.local_socket = local_socket
        self.render_log = render_log  # where the render child's log lines go (None: our stderr)
        self.frame_views: dict = {}  # job id -> meshrender.frameview.FrameView of jobs coordinated here
        self.host = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self._nursery: trio.Nursery | None = None
        self._dialing: set[str] = set()
        self._password: bytes | None = None  # argon2id of the secret, once (party_password)
        self._accept_limit = FailureLimiter()  # failed handshakes of connections we accepted, per IP
        self._dial_limit = FailureLimiter()  # failed handshakes of our dials, per IP dialed
        self._abandon_limit = FailureLimiter(ABANDONED_MAX)  # handshakes left part-way, per IP
        self._dropped_told: dict[str, float] = {}  # source -> when its last `dropped` was told
        self._handshaking: set[str] = set()  # a SPAKE2 message came from it: its handshake is under way
        self._connected_at: dict[str, float] = {}  # peer not yet joined -> when Noise finished (trio clock)
        self._proven: set[str] = set()  # proved the password, Peers not yet exchanged: not an outsider
        self._refused_us: dict[str, float] = {}  # peer -> when it refused our handshake (trio clock)
        self._alive_at: dict[str, float] = {}  # member -> last time anything came from it (trio clock)
        self._links: dict[str, _Link] = {}  # bulk chunk streams, one per provider
        self._ctl_links: dict[str, _Link] = {}  # control streams: chunk maps, never behind bulk data
        self._frames_read: dict[str, tuple[bytes, int] | BaseException] = {}  # for _serve, just read
        self._partial: dict[str, SceneSwarm] = {}  # scenes being fetched: what we hold of them so far
        self._fetching: dict[str, trio.Event] = {}
        self.transfers = {"bytes_in": 0, "bytes_out": 0, "chunks_in": 0, "chunks_out": 0}
        self.started = time.time()
        self.backend = backend  # what was asked for; the renderer reports what it got
        self.fell_back: bool | None = None
        self.speed: float | None = None  # measured Msamples/s, once the renderer has run
        self.units_rendered = 0
        self.backend_reason = ""  # why the renderer runs where it does (a GPU fallback's cause)
        self.threads = threads or os.cpu_count() or 1
        self.busy = False  # rendering (set by the render loop)
        self.statuses: dict[str, dict] = {}  # member -> its latest gossiped Status, with arrival time
        self.have_of: dict[str, set[str]] = {}  # member -> scenes it announced it holds whole
        self.gossip: Gossip | None = None
        self.writer: ChunkWriter | None = None
        self.mdns = mdns
        self._announce_now = trio.Event()
        self._held: list[str] | None = None  # scenes held whole, newest last (None: to be counted)
        self.render = render  # takes leases: runs a render process and answers job links
        self.run_queue = run_queue  # runs its job queue and answers members' control requests
        self.runner = None  # the service.QueueRunner, while it runs
        self.verify = verify  # fraction of units a job it coordinates has rendered twice and compared
        self.renderer: RenderProcess | None = None
        self.gpu: bool | None = None
        self.render_error: str | None = None

    # ------------------------------------------------------------------ status
    def _event(self, kind: str, **fields) -> None:
        ev = {"event": kind, "t": round(time.time(), 3), **fields}
        self.events.append(ev)
        for reader in [self.on_event, *self.watchers]:
            if reader is None:
                continue
            try:
                reader(ev)
            except Exception:  # a broken reader must not stop the peer
                log.exception("event reader failed")

    def snapshot(self) -> dict:
        return {
            "peer_id": self.peer_id,
            "party": self.party,
            "version": __version__,
            "addrs": self.addrs,
            "members": {
                p: {
                    "addrs": m.addrs,
                    "since": m.since,
                    "bytes_served": m.bytes_served,
                    "bytes_received": m.bytes_received,
                    "chunks_serving": m.chunks_serving,
                    "chunks_fetching": len(link.pending) if (link := self._links.get(p)) else 0,
                    "status": self.statuses.get(p),
                    "have": sorted(self.have_of.get(p, ())),
                }
                for p, m in self.members.items()
            },
            "frames": [v.to_json() for v in list(self.frame_views.values())],
            "penalties": {p: list(r) for p, r in self.penalties.items()},
            "banned": sorted(self.banned),
            "transfers": dict(self.transfers),
            "scenes": self.store.scene_ids() if self.store is not None else [],
            "status": msgspec.structs.asdict(self.status()) if self.store is not None else None,
            "gossip": {"received": self.gossip.received, "rejected": self.gossip.rejected}
            if self.gossip is not None
            else None,
        }

    def status(self) -> Status:
        return Status(
            version=__version__,
            state="busy" if self.busy or self._fetching else "idle",
            backend=self.backend,
            fell_back=self.fell_back,
            speed=self.speed,
            threads=self.threads,
            free_mem=free_memory(),
            load=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
            scenes=len(self.held_scenes()),
            gpu=self.gpu,
            renders=self.render,
            units=self.units_rendered,
            reason=self.backend_reason,
            activity="rendering" if self.busy else "fetching" if self._fetching else "",
            renderer=self.renderer.state if self.renderer is not None else "",
            renderer_note=self.renderer.note[:400] if self.renderer is not None else "",
        )

    def held_scenes(self) -> list[str]:
        """Scenes this store holds whole, newest last (recounted after a fetch, or when asked to)."""
        if self._held is None:
            self._held = [s for s in self.store.scene_ids() if self.store.has_scene(s)]
        return self._held

    def scene_changed(self) -> None:
        """The store gained or lost a scene: recount and announce it soon."""
        self._held = None
        self._announce_now.set()

    # ------------------------------------------------------------------ discovery
    async def _discover(self) -> None:
        """mDNS on the interfaces we listen on: every party peer found is dialed (and must still
        pass the handshake: an announcement is only a hint). If mDNS cannot run, the peer goes on
        without it (bootstrap addresses still work) and says so."""
        try:
            interfaces = mdns_interfaces(self.listen)
            own: list[str] = []
            for a in self.addrs:
                if not a.startswith("/ip4/"):
                    continue
                ip = a.split("/")[2]
                for concrete in interfaces if ip == "0.0.0.0" else [ip]:  # announce where we are reachable
                    own.append(a.replace(f"/ip4/{ip}/", f"/ip4/{concrete}/", 1).split("/p2p/")[0])
            own = [f"{a}/p2p/{self.peer_id}" for a in dict.fromkeys(own)][:MDNS_ADDRS_MAX]
            disc = MdnsDiscovery(peer_id=self.peer_id, addrs=own, party_tag=party_tag(self.party),
                                 interfaces=interfaces)  # fmt: skip
        except ValueError as exc:
            raise PeerError(f"mDNS: {exc}") from None

        def found(peer: str, addrs: list[str]) -> None:
            self._event("discovered", peer=peer, addrs=addrs, by="mdns")
            if peer not in self.members and self._nursery is not None:
                self._nursery.start_soon(self.dial, addrs[0], False)

        try:
            await disc.run(found)
        except MdnsError as exc:
            log.warning("mDNS discovery stopped: %s", exc)
            self._event("mdns-failed", reason=str(exc))

    # ------------------------------------------------------------------ gossip
    async def _announce(self) -> None:
        """Status every STATUS_INTERVAL_S; the scenes held whole when they change, when a member
        joins (gossip keeps no history for newcomers), and every HAVE_REPEAT_S regardless."""
        last_have: list[str] | None = None
        last_have_t = 0.0
        members_seen = 0
        while True:
            with trio.move_on_after(STATUS_INTERVAL_S):
                await self._announce_now.wait()
            self._announce_now = trio.Event()
            now = time.monotonic()
            if now - last_have_t >= HAVE_REPEAT_S:
                self._held = None  # a `store add` by another process shows up within HAVE_REPEAT_S
            try:
                await self.gossip.publish(self.status())
                held = self.held_scenes()[-HAVE_SCENES_MAX:]
                joined = len(self.members) > members_seen
                if held != last_have or joined or now - last_have_t >= HAVE_REPEAT_S:
                    await self.gossip.publish(Have(scene_ids=held))
                    last_have, last_have_t = held, now
                members_seen = len(self.members)
            except trio.Cancelled:
                raise
            except Exception as exc:  # a pubsub hiccup must not end the peer
                log.info("gossip publish failed: %s: %s", type(exc).__name__, exc)

    def _on_gossip(self, author: str, msg: Status | Have) -> None:
        if author not in self.members:
            return
        if isinstance(msg, Status):
            status = msgspec.structs.asdict(msg)
            before = self.statuses.get(author)
            self.statuses[author] = {**status, "t": round(time.time(), 3)}
            if before is None or any(before[k] != status[k] for k in ("state", "backend", "fell_back")):
                self._event("peer-status", peer=author, **status)
        else:
            new = set(msg.scene_ids) - self.have_of.get(author, set())
            self.have_of[author] = set(msg.scene_ids)
            if new:
                self._event("have", peer=author, scene_ids=sorted(new))

    # ------------------------------------------------------------------ life
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with HomeLock(self.home, peer=True):  # one peer per home, before identity, store or queue
            await self._run(task_status=task_status)

    async def _run(self, *, task_status) -> None:
        key = load_or_create_identity(self.home)
        own_store = self.store is None
        if own_store:
            self.store = ChunkStore(store_dir(self.home), quota_bytes=store_quota_bytes())
        # until a peer is in self.members its reads are bounded tighter and it sees only the party protocol
        self.host = build_host(  # proven counts: its member list may still be on the way to us
            key, is_member=lambda p: p in self.members or p in self._proven, open_protocols=[PROTO_PARTY]
        )
        self.peer_id = str(self.host.get_id())
        self.host.set_stream_handler(TProtocol(PROTO_PARTY), self._guard(self._on_party))
        self.host.set_stream_handler(TProtocol(PROTO_CHUNKS), self._guard(self._on_chunks))
        self.host.set_stream_handler(TProtocol(PROTO_PING), self._guard(self._on_ping))
        if self.render:
            self.renderer = RenderProcess(self.store.root, backend=self.backend, threads=self.threads,
                                          log_path=self.render_log)  # fmt: skip
            self.host.set_stream_handler(TProtocol(PROTO_JOBS), self._guard(self._on_job))
        db = None
        if self.run_queue:
            from .jobs import JobDB
            from .service import QueueRunner

            db = JobDB(self.home / "jobs.sqlite")
            self.runner = QueueRunner(self, db)
            self.host.set_stream_handler(TProtocol(PROTO_CONTROL), self._guard(self._on_control))
        self.host.get_network().register_notifee(_Notifee(self))
        self.gossip = Gossip(
            self.host,
            gossip_topic(self.party_password()),
            is_member=lambda p: p in self.members or p == self.peer_id,
            on_message=self._on_gossip,
            guard=self._guard,
        )
        try:
            async with self.host.run(listen_addrs=[parse_multiaddr(a) for a in self.listen]):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.addrs = [str(a) for a in self.host.get_addrs()]
                    self._event("listening", peer_id=self.peer_id, addrs=self.addrs, party=self.party)
                    self.writer = ChunkWriter(self.store.root, quota_bytes=self.store.quota_bytes)
                    await nursery.start(self.writer.run)
                    await nursery.start(self.gossip.run)
                    if self.mdns:
                        nursery.start_soon(self._discover)  # a hint service: nobody waits for it
                    nursery.start_soon(self._announce)
                    if self.renderer is not None:
                        nursery.start_soon(self._warm_renderer)
                    if self.runner is not None:
                        await nursery.start(self.runner.run)
                    if self.local_socket is not None:
                        from .local import serve_local

                        try:
                            await nursery.start(serve_local, self, self.local_socket)
                        except OSError as exc:  # the peer runs on; only local attaching is lost
                            self._event("local-socket-failed", path=str(self.local_socket), reason=str(exc))
                    task_status.started(self)
                    for addr in self.bootstrap:
                        nursery.start_soon(self.dial, addr, True)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self.runner = None
            if db is not None:
                db.close()
            if self.renderer is not None:
                with trio.CancelScope(shield=True):
                    await self.renderer.stop()
            if own_store and self.store is not None:
                self.store.close()
            self._event("stopped", transfers=dict(self.transfers))

    def _guard(self, handler):
        """Wrap a stream handler so nothing a peer sends can raise out of it."""

        async def guarded(stream) -> None:
            remote = "?"
            try:
                remote = str(stream.muxed_conn.peer_id)
                if remote in self.members:
                    self._alive(remote)  # a stream it opened came through: it is running
                await handler(stream, remote)
            except trio.Cancelled:
                raise
            except (RemoteProtocolError, trio.TooSlowError) as exc:
                self._penalize(remote, f"{type(exc).__name__}: {exc}", ban=False)
                await _reset(stream)
            except Exception as exc:  # libp2p stream errors and anything unforeseen
                log.debug("stream from %s ended: %s: %s", remote, type(exc).__name__, exc)
                await _reset(stream)

        return guarded

    def _penalize(self, peer: str, reason: str, *, ban: bool) -> None:
        self.penalties.setdefault(peer, []).append(reason)
        del self.penalties[peer][:-20]  # bounded: the latest reasons are the useful ones
        if ban:
            self.banned.add(peer)
        self._event("penalty", peer=peer, reason=reason, banned=ban)

    def _lost(self, peer: str, why: str) -> None:
        self._links.pop(peer, None)
        self._ctl_links.pop(peer, None)
        self.statuses.pop(peer, None)
        self.have_of.pop(peer, None)
        self._alive_at.pop(peer, None)
        member = self.members.pop(peer, None)
        if member is not None:
            self._event("peer-lost", peer=peer, reason=why)
            if member.addrs and peer not in self.banned and self._nursery is not None:
                self._nursery.start_soon(self._redial, peer, member.addrs[0])

    async def _redial(self, peer: str, addr: str) -> None:
        """A member lost to a missed ping may only have been starved of CPU for a moment, or
        restarted: dial it again, backing off (DIAL_RETRY_S doubling to DIAL_RETRY_MAX_S) for
        REDIAL_FOR_S. It stops when the peer is back, banned, or refused our handshake."""
        addr = addr if "/p2p/" in addr else f"{addr}/p2p/{peer}"
        backoff = Backoff(DIAL_RETRY_S, DIAL_RETRY_MAX_S, give_up_s=REDIAL_FOR_S)
        while True:
            delay = backoff.failed(trio.current_time())
            if backoff.exhausted(trio.current_time()):
                log.info("gave up redialing %s after %.0f s", peer[-12:], REDIAL_FOR_S)
                return
            await trio.sleep(delay)
            if peer in self.members or peer in self.banned or self._refused_recently(peer):
                return
            try:
                if await self.dial(addr, quiet=True) is not None:
                    return
            except PeerError:  # a malformed address: nothing to retry
                return
            log.debug("redial of %s failed (%d in a row)", peer[-12:], backoff.failures)

    def _refused_recently(self, peer: str) -> bool:
        at = self._refused_us.get(peer)
        if at is None:
            return False
        if trio.current_time() - at < REFUSED_HOLD_S:
            return True
        del self._refused_us[peer]
        return False

    def _joined(self, peer: str, addrs: list[str]) -> None:
        fresh = peer not in self.members
        self.members[peer] = Member(peer, addrs[:ADDRS_PER_PEER_MAX], time.time())
        at = self._connected_at.pop(peer, None)
        self._proven.discard(peer)
        if fresh:
            joined_in = {} if at is None else {"joined_in_s": round(trio.current_time() - at, 3)}
            self._event("peer-joined", peer=peer, addrs=addrs, **joined_in)
            self._announce_now.set()  # gossip keeps no history: tell the newcomer who we are
            if self._nursery is not None:
                self._nursery.start_soon(self._watch, peer)
                if self.gossip is not None:  # pubsub hears of members only: no topic for outsiders
                    self._nursery.start_soon(self.gossip.join, peer)

    def _peers_msg(self) -> Peers:
        own = PeerAddr(self.peer_id, self.addrs[:ADDRS_PER_PEER_MAX])
        others = [PeerAddr(m.peer_id, m.addrs) for m in list(self.members.values())[: PEERS_MAX - 1]]
        return Peers(peers=[own, *others])

    def _learn(self, msg: Peers, remote: str) -> list[str]:
        """The remote's own addresses (first entry) and members worth dialing."""
        own = []
        for entry in msg.peers:
            if entry.peer_id == remote:
                own = list(entry.addrs)
            elif entry.peer_id != self.peer_id and entry.peer_id not in self.members and entry.addrs:
                a = entry.addrs[0]
                addr = a if "/p2p/" in a else f"{a}/p2p/{entry.peer_id}"
                if self._nursery is not None:
                    self._nursery.start_soon(self.dial, addr, False)
        return own

    # ------------------------------------------------------------------ joining
    async def dial(self, addr: str, retry: bool = False, quiet: bool = False) -> str | None:
        """Connect to addr and prove membership both ways; returns the member's peer id."""
        ma = parse_multiaddr(addr)
        try:
            info = info_from_p2p_addr(ma)
        except Exception:
            raise PeerError(f"{addr}: a bootstrap address must end in /p2p/<peer id>") from None
        remote = str(info.peer_id)
        if remote == self.peer_id or remote in self.members or remote in self._dialing:
            return remote if remote in self.members else None
        if self._refused_recently(remote):  # it said no: asking every few seconds changes nothing
            return None
        source = _addr_host(ma)
        if not self._dial_limit.allows(source, trio.current_time()):  # too many impostors there lately
            return None
        self._dialing.add(remote)
        backoff = Backoff(DIAL_RETRY_S, DIAL_RETRY_MAX_S)  # `retry`: a bootstrap peer not up yet, or gone
        try:
            while True:
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_S * 2):
                        await self.host.connect(info)
                    return await self._handshake_as_dialer(info.peer_id, source)
                except (RemoteProtocolError, PeerError) as exc:
                    self._refused_us[remote] = trio.current_time()
                    self._event("refused", peer=remote, reason=str(exc))
                    await self._hang_up(info.peer_id)
                    return None
                except Exception as exc:  # unreachable, reset, timed out
                    delay = backoff.failed(trio.current_time()) if retry else None
                    if not quiet:  # one line per back-off step
                        reason = f"{type(exc).__name__}: {exc}"
                        self._event("dial-failed", peer=remote, addr=addr, reason=reason, retry_in_s=delay)
                    if delay is None:
                        return None
                await trio.sleep(delay)
                if remote in self.members:  # it dialed us meanwhile
                    return remote
        finally:
            self._dialing.discard(remote)

    def party_password(self) -> bytes:
        """The party's SPAKE2 password: argon2id of the secret (~0.15 s), derived once."""
        if self._password is None:
            try:
                self._password = party_password(self.party, self._secret)
            except Exception as exc:  # argon2 out of memory, say: a clear error, not a traceback
                raise PeerError(f"cannot derive the party password: {type(exc).__name__}: {exc}") from None
        return self._password

    def _blocked(self, notice: Blocked, how: str) -> None:
        """A source has failed too many handshakes: one line for it, not one per attempt."""
        log.warning("%s: %d failed party handshakes %s within a minute: hung up on for %.0f s",
                    notice.source, notice.failures, how, notice.block_s)  # fmt: skip
        self._event("handshake-blocked", source=notice.source, failures=notice.failures, how=how,
                    block_s=notice.block_s, blocks=notice.blocks)  # fmt: skip

    def _connected(self, conn) -> None:
        """A connection passed Noise. One from a source blocked for failed handshakes is closed
        at once; any other must join the party within JOIN_DEADLINE_S or be closed."""
        if self._nursery is None:
            return
        remote = str(conn.muxed_conn.peer_id)
        if remote in self.members:
            return
        source = _conn_host(conn.muxed_conn)
        inbound = not getattr(getattr(conn.muxed_conn, "secured_conn", None), "is_initiator", False)
        if inbound and not self._accepts(source):
            self._nursery.start_soon(_close_conn, conn)  # no handshake, no reply
            return
        self._connected_at[remote] = trio.current_time()
        self._nursery.start_soon(self._join_deadline, conn, remote, source, inbound)

    async def _join_deadline(self, conn, remote: str, source: str, inbound: bool) -> None:
        """Close the connection unless its peer has joined (or proven the password) by now. Not a
        failed handshake: a bare connection tests no guess (a handshake cut here counts itself)."""
        await trio.sleep(JOIN_DEADLINE_S)
        if remote in self._handshaking and remote not in self.members and not conn.is_closed:
            # under way: each of its steps has its own read deadline; this bounds the whole
            await trio.sleep(JOIN_HANDSHAKING_S_MAX - JOIN_DEADLINE_S)
        self._handshaking.discard(remote)
        proven = remote in self._proven  # the member list may still be on its way: no outsider
        self._proven.discard(remote)
        self._connected_at.pop(remote, None)
        if remote in self.members or proven or conn.is_closed:
            return
        now = trio.current_time()
        if now - self._dropped_told.get(source, float("-inf")) >= FAILURE_WINDOW_S:  # a line a minute
            self._dropped_told[source] = now
            while len(self._dropped_told) > SOURCES_MAX:
                del self._dropped_told[next(iter(self._dropped_told))]
            self._event("dropped", peer=remote, source=source,
                        reason=f"did not join the party within {JOIN_DEADLINE_S:.0f} s")  # fmt: skip
        await _close_conn(conn)

    async def _handshake_as_dialer(self, peer: ID, source: str) -> str:
        remote = str(peer)
        hs = Handshake("dialer", self.party_password(), self.party, self.peer_id, remote)
        stream = await open_stream(self.host, self._nursery, peer, PROTO_PARTY, HANDSHAKE_TIMEOUT_S)
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
                self._proven.add(remote)
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
            await _close(stream)

    def _accepts(self, source: str) -> bool:
        now = trio.current_time()
        return self._accept_limit.allows(source, now) and self._abandon_limit.allows(source, now)

    def _failed(self, limiter: FailureLimiter, source: str, how: str) -> None:
        notice = limiter.failed(source, trio.current_time())
        if notice is not None:
            self._blocked(notice, how)

    async def _on_party(self, stream, remote: str) -> None:
        source = _conn_host(stream.muxed_conn)
        if not self._accepts(source):  # blocked: no handshake, no reply at all
            await _reset(stream)
            await self._hang_up(ID.from_base58(remote))
            return
        hs = Handshake("listener", self.party_password(), self.party, self.peer_id, remote)
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
            self._proven.add(remote)
            await write_msg(stream, confirm, HANDSHAKE_TIMEOUT_S)
        except _Blocked:
            await _reset(stream)
            await self._hang_up(ID.from_base58(remote))
            return
        except Exception as exc:  # a wrong confirm, garbage, a timeout, the outsider hanging up
            if hs.member:  # it proved the password; only our confirm was lost on the way
                raise
            self._event("refused", peer=remote, reason=f"handshake failed: {type(exc).__name__}: {exc}")
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
            await _reset(stream)
            await self._hang_up(ID.from_base58(remote))
            return
        theirs = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
        if not isinstance(theirs, Peers):
            raise RemoteProtocolError("expected the member list after the handshake")
        await write_msg(stream, self._peers_msg(), HANDSHAKE_TIMEOUT_S)
        self._joined(remote, self._learn(theirs, remote))
        await _close(stream)

    # ------------------------------------------------------------------ rendering
    async def _warm_renderer(self) -> None:
        """Keep the render process up from the peer's start: the first lease should not wait for
        Taichi to load, and a child that dies, is stopped (a cancelled unit) or fails to start is
        started again; `RenderProcess.start` waits out its back-off after failed starts. A slow
        first compile is progress: it is logged every START_NOTE_S and gossiped in our status."""
        r = self.renderer
        r.on_state = self._renderer_state
        while True:
            try:
                await self.render_backend()
            except RenderError as exc:
                wait = max(0.0, r.retry_at - trio.current_time())
                log.warning("the renderer did not start (%d in a row): %s; trying again in %.0f s",
                            r.failures, exc, wait)  # fmt: skip
                continue
            await r.wait_exited()

    def _renderer_state(self, r: RenderProcess) -> None:
        """The render process changed state or has news of a long start: log it, tell the party."""
        self.render_error = r.last_error or None
        if r.state in ("starting", "compiling") and "so far" in r.note:
            log.info("%s", r.note)
        elif r.state == "stopped" and r.note.startswith("the renderer exited"):
            log.warning("%s; starting it again", r.note)
        self._event("renderer-state", state=r.state, note=r.note)
        self._announce_now.set()

    async def render_backend(self) -> tuple[str, str]:
        """("cpu" or "gpu", the backend's name), starting the render process if needed."""
        if self.renderer is None:
            raise PeerError("this peer does not render")
        try:
            ready = await self.renderer.start()
        except RenderError as exc:
            self.render_error = str(exc)
            raise
        changed = (self.gpu, self.fell_back) != (ready.is_gpu, ready.fell_back)
        self.backend, self.gpu, self.fell_back = ready.backend, ready.is_gpu, ready.fell_back
        self.backend_reason = ready.reason[:400]
        if changed:
            self._event("renderer", backend=ready.backend, gpu=ready.is_gpu, fell_back=ready.fell_back,
                        reason=ready.reason, threads=ready.threads, kernel_s=ready.kernel_s)  # fmt: skip
            self._announce_now.set()
        return ("gpu" if ready.is_gpu else "cpu"), ready.backend

    def note_render(self, rendered, unit, settings) -> None:
        """A unit was rendered here: its speed (Msamples/s, units that compiled left out) is gossiped."""
        self.units_rendered += 1
        if rendered.compile_s == 0 and rendered.seconds > 0:
            self.speed = round(unit.pixels * unit.samples(settings) / rendered.seconds / 1e6, 3)

    def member_statuses(self) -> dict[str, dict | None]:
        return {p: self.statuses.get(p) for p in self.members}

    async def open_job_link(self, member: str) -> MsgLink:
        stream = await open_stream(self.host, self._nursery, ID.from_base58(member), PROTO_JOBS)
        return MsgLink(stream, IDLE_STREAM_TIMEOUT_S)

    async def _on_job(self, stream, remote: str) -> None:
        if remote not in self.members or remote in self.banned:
            await _reset(stream)
            return
        link = MsgLink(stream, JOB_LINK_IDLE_S)
        try:
            done = await serve_job(self, link, remote)
        except Exception as exc:  # the coordinator died or broke the link: its job is over here too
            self._event("job-served", coordinator=remote, units=0, ended=f"link failed: {type(exc).__name__}")
            raise
        self._event("job-served", coordinator=remote, units=done["units"], ended=done["ended"])

    async def _on_control(self, stream, remote: str) -> None:
        from .service import handle_control

        if remote not in self.members or remote in self.banned or self.runner is None:
            await _reset(stream)
            return
        msg = await read_msg(stream, CONTROL_REQUEST_S)
        if msg is not None:

            async def send(reply) -> None:
                await write_msg(stream, reply)

            await handle_control(self, self.runner, msg, remote, send)
        await _close(stream)

    async def control(self, member: str, request, on_piece: Callable | None = None):
        """Send one control request to `member` and return its answer (a JobList or an Error).
        The result files that follow a FetchResults answer go, piece by piece, to `on_piece`."""
        from .protocol import JobList, ResultPiece

        stream = await open_stream(self.host, self._nursery, ID.from_base58(member), PROTO_CONTROL)
        try:
            await write_msg(stream, request)
            answer = await read_msg(stream, CONTROL_REPLY_S)
            if answer is None:
                raise PeerError(f"{member[-12:]} closed the control stream without an answer")
            files_follow = isinstance(answer, JobList) and answer.jobs and answer.jobs[0].state == "done"
            while on_piece is not None and files_follow:
                piece = await read_msg(stream)
                if not isinstance(piece, ResultPiece):
                    raise PeerError(f"{member[-12:]} ended the result files early ({type(piece).__name__})")
                on_piece(piece)
                if piece.last:
                    break
            return answer
        finally:
            await _close(stream)

    # ------------------------------------------------------------------ liveness
    async def _watch(self, peer: str) -> None:
        """Ping a member until it goes. It is lost when nothing at all has come from it for
        LIVENESS_TIMEOUT_S: no echo, no ping of its own, no stream it opened, no chunk. A ping can
        wait behind megabytes of chunks on the one connection to a busy peer, and when many peers
        join at once on a loaded machine a new stream takes a second to negotiate, so any traffic
        counts as a sign of life; a frozen peer sends nothing and a dead one closes its connection."""
        member = self.members.get(peer)
        stream = None
        reason = "left"
        self._alive(peer)
        try:
            stream = await open_stream(
                self.host, self._nursery, ID.from_base58(peer), PROTO_PING, LIVENESS_TIMEOUT_S
            )
            self._alive(peer)  # it answered the protocol negotiation (slow when many join at once)
            async with trio.open_nursery() as n:

                async def echoes() -> None:
                    while await read_exact(stream, PING_BYTES) is not None:
                        self._alive(peer)
                    raise RemoteProtocolError("the member closed its ping stream")

                n.start_soon(echoes)
                tick = trio.current_time()
                while self.members.get(peer) is member:
                    with trio.move_on_after(PING_INTERVAL_S / 2):  # a write stuck on a full window is no news
                        await stream.write(secrets.token_bytes(PING_BYTES))
                    tick += PING_INTERVAL_S
                    await trio.sleep_until(tick)
                    silent = trio.current_time() - self._alive_at.get(peer, 0.0)
                    if silent > LIVENESS_TIMEOUT_S:
                        reason = f"nothing from it for {silent:.1f} s (no answer to pings)"
                        break
                n.cancel_scope.cancel()
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, EOF: the member died or hung up
            reason = f"ping stream ended: {type(exc).__name__}"
        if self.members.get(peer) is member and member is not None:
            self._lost(peer, reason)
            self._nursery.start_soon(self._hang_up, ID.from_base58(peer))
        if stream is not None:
            await _reset(stream)

    def _alive(self, peer: str) -> None:
        self._alive_at[peer] = trio.current_time()

    async def _on_ping(self, stream, remote: str) -> None:
        if remote not in self.members:
            await _reset(stream)
            return
        while True:
            with trio.fail_after(IDLE_STREAM_TIMEOUT_S):
                data = await read_exact(stream, PING_BYTES)
            if data is None:
                return
            self._alive(remote)  # its pings are news from it as much as its echoes
            await stream.write(data)

    async def _hang_up(self, peer: ID) -> None:
        try:
            with trio.move_on_after(2.0):
                await self.host.disconnect(peer)
        except Exception:  # already gone
            pass

    # ------------------------------------------------------------------ serving
    async def _on_chunks(self, stream, remote: str) -> None:
        if remote not in self.members or remote in self.banned:
            self._event("refused", peer=remote, reason="chunk request from a non-member")
            await _reset(stream)
            return
        while True:
            msg = await read_msg(stream, IDLE_STREAM_TIMEOUT_S)
            if msg is None:
                await _close(stream)
                return
            self._alive(remote)
            if isinstance(msg, Want):
                m = self.members.get(remote) or Member(remote, [], 0.0)  # gone meanwhile: counted nowhere
                left = len(msg.hashes)
                m.chunks_serving += left
                # frames are read and checked on the writer's reading thread, READ_AHEAD_CHUNKS
                # ahead of the one being sent, so the loop writes while the disk and zstd work
                reads = deque(self._read_soon(h) for h in msg.hashes[:READ_AHEAD_CHUNKS])
                ahead = iter(msg.hashes[READ_AHEAD_CHUNKS:])
                try:
                    for h in msg.hashes:
                        read = reads.popleft()
                        if read is not None:
                            await read.done.wait()
                            self._frames_read[h] = read.result
                        if (more := next(ahead, None)) is not None:
                            reads.append(self._read_soon(more))
                        await write_msg(stream, self._serve(h, remote))
                        left -= 1
                        m.chunks_serving -= 1
                        self._alive(remote)  # it took the bytes: its window opened again
                finally:  # a stream that fails mid-Want: what was left is no longer in flight
                    m.chunks_serving -= left
            elif isinstance(msg, ChunkMapQuery):
                await write_msg(stream, self._chunk_map(msg.scene_id))
            else:
                raise RemoteProtocolError(f"{type(msg).__name__} on a chunk stream")

    def _read_soon(self, h: str):
        """Chunk `h` being read for serving on the writer's reading thread (None: `_serve` reads it)."""
        return self.writer.read_soon(h) if self.writer is not None else None

    def _serve(self, h: str, remote: str) -> Chunk | NotFound:
        """The answer to a want of `h`: its frame as the writer's reading thread read it (checked,
        and already compressed: sent as stored), or read here if another stream took that one."""
        read = self._frames_read.pop(h, None)
        try:
            if read is None:
                read = self.store.get_frame(h)
            elif isinstance(read, BaseException):
                raise read
        except (MissingChunkError, CorruptChunkError):
            return NotFound(hash=h)
        wire, raw_size = read
        self.transfers["bytes_out"] += len(wire)
        self.transfers["chunks_out"] += 1
        m = self.members.get(remote)
        if m is not None:
            m.bytes_served += len(wire)
        return Chunk(hash=h, raw_size=raw_size, zstd=True, data=wire)

    # ------------------------------------------------------------------ fetching
    async def _link(self, peer: str, links: dict[str, _Link]) -> _Link:
        link = links.get(peer)
        if link is None:
            stream = await open_stream(self.host, self._nursery, ID.from_base58(peer), PROTO_CHUNKS)
            link = links.setdefault(peer, _Link(stream))
            if link.stream is not stream:  # another task opened one meanwhile
                await _reset(stream)
            elif links is self._links:
                self._nursery.start_soon(self._read_chunks, peer, link)
        return link

    async def _want(self, peer: str, hashes: tuple[str, ...], handler: Callable) -> None:
        """Ask `peer` for chunks on its bulk stream without waiting for them: each answer goes to
        `await handler(peer, hash, msg, None)`, or `(peer, hash, None, exc)` if the stream fails
        first. The pipe stays full: the next Want goes out while earlier chunks still arrive."""
        link = await self._link(peer, self._links)
        async with link.lock:
            link.pending.extend((h, handler) for h in hashes)
            for i in range(0, len(hashes), WANT_HASHES_MAX):
                await write_msg(link.stream, Want(hashes=list(hashes[i : i + WANT_HASHES_MAX])))

    async def _read_chunks(self, peer: str, link: _Link) -> None:
        """The bulk stream's reader: answers in order of asking, each to its handler."""
        failure: Exception | None = None
        try:
            while True:
                reply = await read_msg(link.stream, IDLE_STREAM_TIMEOUT_S)
                if reply is None:
                    raise RemoteProtocolError("the provider closed the chunk stream")
                self._alive(peer)
                if not isinstance(reply, Chunk | NotFound):
                    raise RemoteProtocolError(f"{type(reply).__name__} in answer to Want")
                if not link.pending:
                    raise RemoteProtocolError("sent a chunk that was not asked for")
                h, handler = link.pending.popleft()
                if reply.hash != h:
                    raise RemoteProtocolError("answered Wants out of order")
                self._nursery.start_soon(handler, peer, h, reply, None)  # checked and stored meanwhile
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, EOF, garbage: whatever was asked goes elsewhere
            failure = exc
        finally:
            if self._links.get(peer) is link:
                del self._links[peer]
            pending, link.pending = list(link.pending), deque()
            if failure is not None:
                for h, handler in pending:
                    self._nursery.start_soon(handler, peer, h, None, failure)
            await _reset(link.stream)

    async def _drop_link(self, peer: str) -> None:
        link = self._links.pop(peer, None)
        if link is not None:
            await _reset(link.stream)  # its reader fails what is still pending there

    async def _ask(self, peer: str, msg):
        """One request and its answer on the control stream (never queued behind bulk chunks)."""
        link = await self._link(peer, self._ctl_links)
        async with link.lock:
            with trio.fail_after(MAP_TIMEOUT_S):
                await write_msg(link.stream, msg)
                reply = await read_msg(link.stream)
            if reply is None:
                raise RemoteProtocolError("the member closed its chunk stream")
            return reply

    async def chunk_maps(self, scene_id: str) -> dict[str, ChunkMap]:
        """Every member's answer to "which chunks of scene_id do you hold?" (asked in parallel);
        members that hold nothing of it, or cannot answer, are left out."""
        maps: dict[str, ChunkMap] = {}

        async def ask(peer: str):
            try:
                reply = await self._ask(peer, ChunkMapQuery(scene_id=scene_id))
            except trio.Cancelled:
                raise
            except Exception as exc:  # a member that cannot answer is no provider this round
                log.debug("chunk-map query to %s failed: %s: %s", peer, type(exc).__name__, exc)
                self._ctl_links.pop(peer, None)
                return
            if not isinstance(reply, ChunkMap) or reply.scene_id != scene_id:
                self._penalize(peer, f"answered a chunk-map query with {type(reply).__name__}", ban=False)
            elif reply.whole or reply.count:
                maps[peer] = reply

        async with trio.open_nursery() as n:
            for peer in list(self.members):
                if peer not in self.banned:
                    n.start_soon(ask, peer)
        return maps

    def _chunk_map(self, scene_id: str) -> ChunkMap:
        swarm = self._partial.get(scene_id)
        if swarm is not None:
            return swarm.chunk_map()
        whole = self.store.has_scene(scene_id)
        return ChunkMap(scene_id=scene_id, count=0, whole=whole, bits=b"")

    async def fetch_scene(self, scene_id: str, *, timeout_s: float = 600.0) -> dict:
        """Fetch every chunk of scene_id this store lacks from the party: from members that hold it
        whole and from members still fetching it (a swarm), serving what we have meanwhile."""
        while scene_id in self._fetching:  # one fetch per scene; a second caller shares it
            await self._fetching[scene_id].wait()
        done = self._fetching[scene_id] = trio.Event()
        try:
            return await self._fetch_scene(scene_id, timeout_s)
        finally:
            del self._fetching[scene_id]
            done.set()

    async def _fetch_scene(self, scene_id: str, timeout_s: float) -> dict:
        t0 = time.perf_counter()
        stats: dict = {}
        wanted: list[tuple[str, int]] = []
        with trio.fail_after(timeout_s):
            if self.store.has_scene(scene_id):
                maps: dict[str, ChunkMap] = {}
                refs = decode_manifest(self.store.get(scene_id), scene_id).unique_chunks()
            else:
                # a loaded member can miss one query: ask again for a while before giving up
                with trio.move_on_after(FIND_TIMEOUT_S):
                    while not (maps := await self.chunk_maps(scene_id)):
                        await trio.sleep(MAP_POLL_S * 2)
                if not self.store.has(scene_id):
                    if not maps:
                        raise PeerError(f"no member of party {self.party!r} holds scene {scene_id[:16]}")
                    # whoever has a map has the manifest; when all of those are gone by now (a
                    # fetcher that finished and left, a source whose answer was late), ask again
                    give_up = trio.current_time() + FIND_TIMEOUT_S
                    while True:
                        try:
                            await self._swarm(SceneSwarm([(scene_id, 0)], trio.current_time()), maps)
                            break
                        except PeerError:
                            if trio.current_time() > give_up:
                                raise
                        await trio.sleep(MAP_POLL_S * 2)
                        maps = await self.chunk_maps(scene_id) or maps
                try:
                    manifest = decode_manifest(self.store.get(scene_id), scene_id)
                except ManifestError as exc:
                    raise PeerError(f"scene {scene_id[:16]}: {exc}") from None
                refs = manifest.unique_chunks()
                missing = set(self.store.missing([r.hash for r in refs]))
                wanted = [(r.hash, r.size) for r in refs if r.hash in missing]
                # the want-list in an order of this peer's own (see meshrender.swarm)
                swarm = SceneSwarm(wanted, trio.current_time(), scene_id=scene_id,
                                   order=[r.hash for r in refs], shuffle=random.Random().shuffle,
                                   peer_id=self.peer_id, members=len(self.members))  # fmt: skip
                self._partial[scene_id] = swarm
                try:
                    if wanted:
                        stats = await self._swarm(swarm, maps)
                    total = sum(r.size for r in manifest.chunk_refs())
                    await self.writer.sync()  # what was fetched is on disk before the scene is recorded whole
                    self.store.add_scene(scene_id, [scene_id, *[r.hash for r in refs]], total_bytes=total)
                    self.scene_changed()
                finally:
                    del self._partial[scene_id]
        report = {
            "scene_id": scene_id,
            "chunks": len(refs) + 1,
            "fetched_chunks": len(wanted),
            "fetched_bytes": sum(s for _, s in wanted),
            "providers": sorted(maps),
            "bytes_by_provider": stats.get("bytes_by_provider", {}),
            "seconds": time.perf_counter() - t0,
        }
        self._event("fetched", **report)
        return report

    async def _swarm(self, swarm: SceneSwarm, maps: dict[str, ChunkMap]):
        """Pull what `swarm` wants from the members in `maps`, asking every member again for its
        chunk map every MAP_POLL_S (fetchers gain chunks as they go) for a scene's chunks."""
        scene_id = swarm.scene_id if swarm.order is not None else None
        wake = trio.Event()
        by_provider: dict[str, int] = {}
        in_flight = 0
        store_error: StoreError | None = None

        def offer(maps: dict[str, ChunkMap]) -> None:
            maps = {p: m for p, m in maps.items() if p not in self.banned}
            for peer, reason in swarm.on_maps(maps, trio.current_time()):
                self._penalize(peer, reason, ban=False)

        def poke() -> None:
            nonlocal wake
            wake.set()
            wake = trio.Event()

        async def refresh() -> None:
            while True:
                await trio.sleep(MAP_POLL_S)
                offer(await self.chunk_maps(scene_id))
                poke()

        def provider_failed(peer: str, exc: BaseException) -> None:
            if swarm.provider_failed(peer, trio.current_time()):  # its next map is taken afresh
                self._event("provider-failed", peer=peer, reason=f"{type(exc).__name__}: {exc}")

        async def answer(peer: str, h: str, reply: Chunk | NotFound | None, exc: Exception | None) -> None:
            nonlocal in_flight, store_error
            try:
                if reply is None:  # the stream failed: its chunks go elsewhere, the peer may come back
                    provider_failed(peer, exc)
                elif h not in swarm:
                    pass
                elif isinstance(reply, NotFound):
                    swarm.on_not_found(peer, h, trio.current_time())
                else:
                    swarm.on_arrived(peer, h, trio.current_time())  # its pipe is refilled while we check
                    poke()
                    ok = await self._accept(reply, peer)
                    if ok:
                        by_provider[peer] = by_provider.get(peer, 0) + reply.raw_size
                    else:
                        await self._drop_link(peer)  # it sent wrong bytes: hear no more from it
                    swarm.on_chunk(peer, h, ok, trio.current_time())
            except StoreError as e:  # our disk, not the peer: the fetch stops with this
                store_error = store_error or e
            finally:
                in_flight -= 1
                poke()

        async def request(peer: str, hashes: tuple[str, ...]):
            nonlocal in_flight
            in_flight += len(hashes)
            try:
                await self._want(peer, hashes, answer)
            except trio.Cancelled:
                raise
            except Exception as exc:  # no stream to the provider: its chunks go elsewhere
                in_flight -= len(hashes)
                provider_failed(peer, exc)
                poke()

        offer(maps)
        failure: Exception | None = None  # raised once the nursery is closed: not in an exception group
        async with trio.open_nursery() as n:
            if scene_id is not None:
                n.start_soon(refresh)
            while not swarm.done:
                if store_error is not None:
                    failure = store_error
                    break
                now = trio.current_time()
                for action in swarm.poll(now):
                    if isinstance(action, Request):
                        n.start_soon(request, action.peer, tuple(action.hashes))
                    elif isinstance(action, Penalize):
                        self._penalize(action.peer, action.reason, ban=True)
                    elif isinstance(action, Cancel):
                        pass  # a late reply is still verified; the swarm keeps the first good copy
                reason = swarm.stuck_error(now, in_flight)
                if reason:
                    failure = PeerError(reason)
                    break
                deadline = swarm.next_deadline()
                until = now + 1.0 if deadline is None else min(deadline, now + 1.0)
                with trio.move_on_at(until):
                    await wake.wait()
            n.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return {"bytes_by_provider": by_provider}

    async def _accept(self, msg: Chunk, peer: str) -> bool:
        """Verify and store a chunk on the writer's thread (never the event loop: an fsync can take
        seconds when peers write at once); False, nothing stored, when its bytes are not its name.
        StoreError (a full disk) goes to the caller."""
        if not await self.writer.put(msg.hash, msg.data, msg.raw_size, msg.zstd):
            self._event("bad-chunk", peer=peer, hash=msg.hash)
            return False
        self.transfers["bytes_in"] += len(msg.data)
        self.transfers["chunks_in"] += 1
        m = self.members.get(peer)
        if m is not None:
            m.bytes_received += len(msg.data)
        return True


async def _close(stream) -> None:
    try:
        await stream.close()
    except Exception:  # already reset by the other side
        pass


async def _reset(stream) -> None:
    try:
        await stream.reset()
    except Exception:  # already gone
        pass


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


async def _close_conn(conn) -> None:
    """Close one connection (a non-member's), however far it got."""
    try:
        with trio.move_on_after(2.0):
            await conn.close()
    except Exception:  # already gone
        pass


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


def free_memory() -> int:
    """Bytes of memory available to new work (Linux: MemAvailable; elsewhere free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


SECRET_FILE_BYTES_MAX = 4096  # a secret file holds one line; anything longer is the wrong file


def read_secret(secret: str | None, secret_file: str | None) -> bytes:
    if secret and secret_file:
        raise PeerError("give --secret or --secret-file, not both")
    if secret_file:
        try:
            with open(secret_file, "rb") as f:  # bounded: a device or a huge file is no secret
                data = f.read(SECRET_FILE_BYTES_MAX + 1)
        except OSError as exc:
            raise PeerError(f"{secret_file}: cannot read the party secret ({exc.strerror})") from None
        if len(data) > SECRET_FILE_BYTES_MAX:
            raise PeerError(f"{secret_file}: over {SECRET_FILE_BYTES_MAX} bytes, not a party secret file")
        data = data.strip()
        if not data:
            raise PeerError(f"{secret_file}: the secret file is empty")
        return data
    if secret:
        return secret.encode()
    env = os.environ.get("MESHRENDER_SECRET")
    if env:
        return env.encode()
    raise PeerError("a party needs a secret: --secret S, --secret-file F or $MESHRENDER_SECRET")
