"""The peer: one libp2p host in a party, serving and fetching scene chunks.

How it works
  * On start it loads (or makes) its Ed25519 identity under $MESHRENDER_HOME, opens its chunk
    store and listens. `Peer` is the composition of the roles in meshrender.peer, each a small
    object with its own state that reaches the shared state (members, host, events) through it:
    `joining` (dial, the party handshake on `/meshrender/party/1` with its sans-IO core
    `membership`, the join deadline, the failure limiters), `liveness` (pings, lost members,
    redials), `chunks` (serving `/meshrender/chunks/1`, fetching a scene as a swarm), `ctl`
    (control requests and job links), `presence` (mDNS discovery, the status and have gossip)
    and `rendering` (the render process kept warm, its backend and speed). Only members are
    served anything.
  * What stays here is what the roles share: construction and `run`, penalties, and the thin
    methods other code calls (`dial`, `fetch_scene`, ...).
  * Every stream handler is wrapped (`_guard`): nothing a peer sends can raise out of it
    (py-libp2p ends the process on an exception escaping a handler). Every read has a deadline.
  * One status source: `snapshot()` and the event stream (`events`, and the `on_event` callback
    the CLI prints as JSON lines) are what the JSON output and, later, the TUI read.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol

from . import __version__
from .home import HomeLock, store_dir, store_quota_bytes
from .net.gossip import Gossip
from .net.host import build_host, load_or_create_identity, parse_multiaddr
from .net.streams import MsgLink
from .peer.chunks import READ_AHEAD_CHUNKS, Chunks
from .peer.common import (
    IDLE_STREAM_TIMEOUT_S,
    PROTO_CHUNKS,
    PROTO_CONTROL,
    PROTO_JOBS,
    PROTO_PARTY,
    PROTO_PING,
    Member,
    PeerError,
    reset_stream,
)
from .peer.control import CONTROL_REPLY_S, CONTROL_REQUEST_S, JOB_LINK_IDLE_S, Control
from .peer.joining import (
    DIAL_RETRY_MAX_S,
    DIAL_RETRY_S,
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_TIMEOUT_S,
    JOIN_DEADLINE_S,
    JOIN_HANDSHAKING_S_MAX,
    REFUSED_HOLD_S,
    REFUSED_LINGER_S,
    Joining,
)
from .peer.liveness import LIVENESS_TIMEOUT_S, PING_BYTES, PING_INTERVAL_S, REDIAL_FOR_S, Liveness
from .peer.membership import gossip_topic
from .peer.presence import HAVE_REPEAT_S, STATUS_INTERVAL_S, Presence, sent_ms
from .peer.rendering import Rendering
from .peer.streams import Streams
from .protocol import Chunk, ChunkMap, NotFound, RemoteProtocolError, Status
from .store.chunkstore import ChunkStore
from .store.writer import ChunkWriter

log = logging.getLogger("meshrender.node")

__all__ = [  # the roles' names, kept importable from here
    "CONTROL_REPLY_S",
    "CONTROL_REQUEST_S",
    "DIAL_RETRY_MAX_S",
    "DIAL_RETRY_S",
    "HAVE_REPEAT_S",
    "HANDSHAKE_FRAME_BYTES_MAX",
    "HANDSHAKE_TIMEOUT_S",
    "IDLE_STREAM_TIMEOUT_S",
    "JOB_LINK_IDLE_S",
    "JOIN_DEADLINE_S",
    "JOIN_HANDSHAKING_S_MAX",
    "LIVENESS_TIMEOUT_S",
    "PING_BYTES",
    "PING_INTERVAL_S",
    "PROTO_CHUNKS",
    "PROTO_CONTROL",
    "PROTO_JOBS",
    "PROTO_PARTY",
    "PROTO_PING",
    "READ_AHEAD_CHUNKS",
    "REDIAL_FOR_S",
    "REFUSED_HOLD_S",
    "REFUSED_LINGER_S",
    "SECRET_FILE_BYTES_MAX",
    "STATUS_INTERVAL_S",
    "Member",
    "Peer",
    "PeerError",
    "free_memory",
    "read_secret",
]

EVENTS_KEPT = 1000  # recent events kept for a late reader (the TUI's log)


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
        web: tuple[str, int] | None = None,
    ):
        if not party:
            raise PeerError("a party needs a name")
        if not secret:
            raise PeerError("a party needs a secret (--secret or --secret-file)")
        self.home = Path(home)
        self.party = party
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
        self.web = web  # (host, port) of the web page (meshrender.web), or None for none
        self.frame_views: dict = {}  # job id -> meshrender.frameview.FrameView of jobs coordinated here
        self.last_view = None  # the FrameView of the last job that finished here (the TUI shows it)
        self.streams = Streams()  # the streaming sessions this peer runs (meshrender.streaming)
        self.host = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self._nursery: trio.Nursery | None = None
        self.joining = Joining(self, secret)  # dial, the party handshake, the join deadline
        self.liveness = Liveness(self)  # pings, lost members, redials
        self.chunks = Chunks(self)  # the chunk server and scene fetches
        self.ctl = Control(self)  # control requests and job links
        self.presence = Presence(self)  # mDNS discovery, the status and have gossip
        self.transfers = {"bytes_in": 0, "bytes_out": 0, "chunks_in": 0, "chunks_out": 0}
        self.rendering = Rendering(self, backend=backend, threads=threads)  # the render process
        self.started = time.time()
        self.statuses: dict[str, dict] = {}  # member -> its latest gossiped Status, with arrival time
        self.have_of: dict[str, set[str]] = {}  # member -> scenes it announced it holds whole
        self.gossip: Gossip | None = None
        self.writer: ChunkWriter | None = None
        self.mdns = mdns
        self.render = render  # takes leases: runs a render process and answers job links
        self.run_queue = run_queue  # runs its job queue and answers members' control requests
        self.runner = None  # the service.QueueRunner, while it runs
        self.verify = verify  # fraction of units a job it coordinates has rendered twice and compared

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
                    "chunks_fetching": len(link.pending) if (link := self.chunks.links.get(p)) else 0,
                    "status": self.statuses.get(p),
                    "have": sorted(self.have_of.get(p, ())),
                }
                for p, m in self.members.items()
            },
            "frames": [v.to_json() for v in [*self.frame_views.values(), *self._finished_views()]],
            "streams": [s.snapshot() for s in self.streams],
            "penalties": {p: list(r) for p, r in self.penalties.items()},
            "banned": sorted(self.banned),
            "transfers": dict(self.transfers),
            "scenes": self.store.scene_ids() if self.store is not None else [],
            "status": msgspec.structs.asdict(self.status()) if self.store is not None else None,
            "gossip": {"received": self.gossip.received, "rejected": self.gossip.rejected}
            if self.gossip is not None
            else None,
        }

    def _finished_views(self) -> list:
        last = self.last_view
        return [last] if last is not None and last.job_id not in self.frame_views else []

    def status(self) -> Status:
        busy = self.rendering.busy
        return Status(
            version=__version__,
            state="busy" if busy or self.chunks.fetching else "idle",
            free_mem=free_memory(),
            load=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
            scenes=len(self.held_scenes()),
            renders=self.render,
            activity="rendering" if busy else "fetching" if self.chunks.fetching else "",
            sent_ms=sent_ms(),
            **self.rendering.status_fields(),
        )

    def held_scenes(self) -> list[str]:
        """Scenes this store holds whole, newest last (recounted after a fetch, or when asked to)."""
        return self.presence.held_scenes()

    def scene_changed(self) -> None:
        """The store gained or lost a scene: recount and announce it soon."""
        self.presence.scene_changed()

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
            key,
            is_member=lambda p: p in self.members or p in self.joining.proven,
            open_protocols=[PROTO_PARTY],
        )
        self.peer_id = str(self.host.get_id())
        self.host.set_stream_handler(TProtocol(PROTO_PARTY), self._guard(self.joining.on_party))
        self.host.set_stream_handler(TProtocol(PROTO_CHUNKS), self._guard(self.chunks.on_chunks))
        self.host.set_stream_handler(TProtocol(PROTO_PING), self._guard(self.liveness.on_ping))
        if self.render:
            self.rendering.open(self.store.root, self.render_log)
            self.host.set_stream_handler(TProtocol(PROTO_JOBS), self._guard(self.ctl.on_job))
        db = None
        if self.run_queue:
            from .jobs import JobDB
            from .service import QueueRunner

            db = JobDB(self.home / "jobs.sqlite")
            self.runner = QueueRunner(self, db)
            self.host.set_stream_handler(TProtocol(PROTO_CONTROL), self._guard(self.ctl.on_control))
        self.host.get_network().register_notifee(_Notifee(self))
        self.gossip = Gossip(
            self.host,
            gossip_topic(self.party_password()),
            is_member=lambda p: p in self.members or p == self.peer_id,
            on_message=self.presence.on_gossip,
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
                        nursery.start_soon(self.presence.discover)  # a hint service: nobody waits for it
                    nursery.start_soon(self.presence.announce)
                    if self.rendering.proc is not None:
                        nursery.start_soon(self.rendering.warm)
                    if self.runner is not None:
                        await nursery.start(self.runner.run)
                    if self.local_socket is not None:
                        from .local import serve_local

                        try:
                            await nursery.start(serve_local, self, self.local_socket)
                        except OSError as exc:  # the peer runs on; only local attaching is lost
                            self._event("local-socket-failed", path=str(self.local_socket), reason=str(exc))
                    if self.web is not None:
                        from .web.serve import serve_web

                        try:
                            await nursery.start(serve_web, self, *self.web)
                        except OSError as exc:  # the peer runs on; only its web page is lost
                            self._event("web-failed", addr=f"{self.web[0]}:{self.web[1]}", reason=str(exc))
                    task_status.started(self)
                    for addr in self.bootstrap:
                        nursery.start_soon(self.dial, addr, True)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self.runner = None
            if db is not None:
                db.close()
            with trio.CancelScope(shield=True):
                await self.rendering.stop()
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
                    self.liveness.alive(remote)  # a stream it opened came through: it is running
                await handler(stream, remote)
            except trio.Cancelled:
                raise
            except (RemoteProtocolError, trio.TooSlowError) as exc:
                self._penalize(remote, f"{type(exc).__name__}: {exc}", ban=False)
                await reset_stream(stream)
            except Exception as exc:  # libp2p stream errors and anything unforeseen
                log.debug("stream from %s ended: %s: %s", remote, type(exc).__name__, exc)
                await reset_stream(stream)

        return guarded

    def _penalize(self, peer: str, reason: str, *, ban: bool) -> None:
        self.penalties.setdefault(peer, []).append(reason)
        del self.penalties[peer][:-20]  # bounded: the latest reasons are the useful ones
        if ban:
            self.banned.add(peer)
        self._event("penalty", peer=peer, reason=reason, banned=ban)

    # ------------------------------------------------------------------ the roles' entry points
    def _lost(self, peer: str, why: str) -> None:
        self.liveness.lost(peer, why)

    def _connected(self, conn) -> None:
        self.joining.connected(conn)

    @property
    def _dialing(self) -> set[str]:
        return self.joining.dialing

    async def start_stream(self, session):
        """Run `session` (a meshrender.streaming.StreamSession made for this peer) in this peer's
        nursery; returns once its first version is compiled. It ends on `stop()`, when idle, or
        with the peer; one that fails later is logged (`stream-failed`) and the peer runs on."""
        if self._nursery is None:
            raise PeerError("the peer is not running")

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await session.run(task_status=task_status)
            except Exception as exc:
                if session.core is None:  # before it started: its starter hears of it
                    raise
                log.exception("streaming session %s failed", session.id)  # the peer goes on
                self._event("stream-failed", session=session.id, reason=f"{type(exc).__name__}: {exc}")

        await self._nursery.start(run)
        return session

    async def dial(self, addr: str, retry: bool = False, quiet: bool = False) -> str | None:
        """Connect to addr and prove membership both ways; returns the member's peer id."""
        return await self.joining.dial(addr, retry, quiet)

    def secret_matches(self, typed: bytes) -> bool:
        """Whether `typed` is the party secret (the web page's login), in constant time."""
        return self.joining.secret_matches(typed)

    def party_password(self) -> bytes:
        """The party's SPAKE2 password: argon2id of the secret (~0.15 s), derived once."""
        return self.joining.party_password()

    def _serve(self, h: str, remote: str) -> Chunk | NotFound:
        """The answer to a want of `h` (the chunk server asks it here: a test patches it here)."""
        return self.chunks.serve(h, remote)

    async def chunk_maps(self, scene_id: str) -> dict[str, ChunkMap]:
        return await self.chunks.chunk_maps(scene_id)

    async def fetch_scene(self, scene_id: str, *, timeout_s: float = 600.0) -> dict:
        return await self.chunks.fetch_scene(scene_id, timeout_s=timeout_s)

    async def open_job_link(self, member: str) -> MsgLink:
        return await self.ctl.open_job_link(member)

    async def control(self, member: str, request, on_piece: Callable | None = None):
        return await self.ctl.control(member, request, on_piece)

    def member_statuses(self) -> dict[str, dict | None]:
        return {p: self.statuses.get(p) for p in self.members}


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
