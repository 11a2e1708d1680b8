"""The peer: one libp2p host in a party, serving and fetching scene chunks.

How it works
  * On start it loads (or makes) its Ed25519 identity under $MESHRENDER_HOME, opens its chunk
    store and listens. Every connection is authenticated by Noise; membership is then proven by
    the party handshake (meshrender.protocol) on `/meshrender/party/1`: the dialer runs it right
    after connecting, the listener answers. Only members are served anything: a chunk stream from
    a non-member is reset and logged, and a failed handshake hangs up the connection.
  * After a handshake both sides send `Peers` (themselves and the members they know) and dial any
    member they have not met, so one bootstrap address meshes the whole party.
  * `/meshrender/chunks/1` carries `Want` -> `Chunk`/`NotFound` and `HaveQuery` -> `HaveReply`.
    Chunks are read from the store (hash-checked) and zstd-compressed for the wire.
  * Fetching a scene (`fetch_scene`) asks members which of them hold it whole, takes the manifest
    from one, then lets the sans-IO scheduler (meshrender.exchange) spread the chunks over every
    provider; each chunk is verified by the store before it is kept, and a peer that sent wrong
    bytes is banned and penalised, its chunks re-requested elsewhere.
  * Every stream handler is wrapped: nothing a peer sends can raise out of it (py-libp2p ends the
    process on an exception escaping a handler). Every read has a deadline.
  * One status source: `snapshot()` and the event stream (`events`, and the `on_event` callback
    the CLI prints as JSON lines) are what the JSON output and, later, the TUI read.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
import zstandard
from libp2p.abc import INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from . import __version__
from .errors import MeshrenderError
from .exchange import Cancel, ChunkFetch, Penalize, Request
from .home import store_dir, store_quota_bytes
from .net.host import build_host, load_or_create_identity, open_stream, parse_multiaddr
from .net.streams import read_exact, read_msg, write_msg
from .protocol import (
    ADDRS_PER_PEER_MAX,
    PEERS_MAX,
    WANT_HASHES_MAX,
    Chunk,
    Handshake,
    HaveQuery,
    HaveReply,
    Hello,
    HelloFinish,
    NotFound,
    PeerAddr,
    Peers,
    Refused,
    RemoteProtocolError,
    Want,
)
from .store.chunkstore import ChunkStore, CorruptChunkError, MissingChunkError, StoreError
from .store.manifest import ManifestError, decode_manifest

log = logging.getLogger("meshrender.node")

PROTO_PARTY = "/meshrender/party/1"
PROTO_CHUNKS = "/meshrender/chunks/1"
PROTO_PING = "/meshrender/ping/1"
PING_INTERVAL_S = 0.5  # a ping every half second: a frozen member is found within LIVENESS_TIMEOUT_S
LIVENESS_TIMEOUT_S = 2.0  # no echo within this: the member is lost (SIGSTOP must show within 3 s)
PING_BYTES = 8
HANDSHAKE_TIMEOUT_S = 5.0  # a member answers in milliseconds; an outsider must not hold a slot
IDLE_STREAM_TIMEOUT_S = 120.0  # a chunk stream with no request for this long is closed
EVENTS_KEPT = 1000  # recent events kept for a late reader (the TUI's log)
WIRE_ZSTD_LEVEL = 1  # fast: the wire is the bottleneck only on slow links
DIAL_RETRY_S = 2.0


class PeerError(MeshrenderError):
    pass


@dataclass
class Member:
    peer_id: str
    addrs: list[str]
    since: float
    bytes_served: int = 0
    bytes_received: int = 0


@dataclass
class _Link:
    """One open chunk stream to a provider, used by one fetch at a time."""

    stream: object
    lock: trio.Lock = field(default_factory=trio.Lock)


class _Notifee(INotifee):
    def __init__(self, peer: Peer):
        self.peer = peer

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def connected(self, network, conn) -> None:
        pass

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
        self.host = None
        self.peer_id = ""
        self.addrs: list[str] = []
        self._nursery: trio.Nursery | None = None
        self._dialing: set[str] = set()
        self._links: dict[str, _Link] = {}
        self._zc = zstandard.ZstdCompressor(level=WIRE_ZSTD_LEVEL, write_content_size=True)
        self._zd = zstandard.ZstdDecompressor()
        self.transfers = {"bytes_in": 0, "bytes_out": 0, "chunks_in": 0, "chunks_out": 0}
        self.started = time.time()

    # ------------------------------------------------------------------ status
    def _event(self, kind: str, **fields) -> None:
        ev = {"event": kind, "t": round(time.time(), 3), **fields}
        self.events.append(ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
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
                }
                for p, m in self.members.items()
            },
            "penalties": {p: list(r) for p, r in self.penalties.items()},
            "banned": sorted(self.banned),
            "transfers": dict(self.transfers),
            "scenes": self.store.scene_ids() if self.store is not None else [],
        }

    # ------------------------------------------------------------------ life
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        key = load_or_create_identity(self.home)
        own_store = self.store is None
        if own_store:
            self.store = ChunkStore(store_dir(self.home), quota_bytes=store_quota_bytes())
        self.host = build_host(key)
        self.peer_id = str(self.host.get_id())
        self.host.set_stream_handler(TProtocol(PROTO_PARTY), self._guard(self._on_party))
        self.host.set_stream_handler(TProtocol(PROTO_CHUNKS), self._guard(self._on_chunks))
        self.host.set_stream_handler(TProtocol(PROTO_PING), self._guard(self._on_ping))
        self.host.get_network().register_notifee(_Notifee(self))
        try:
            async with self.host.run(listen_addrs=[parse_multiaddr(a) for a in self.listen]):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.addrs = [str(a) for a in self.host.get_addrs()]
                    self._event("listening", peer_id=self.peer_id, addrs=self.addrs, party=self.party)
                    task_status.started(self)
                    for addr in self.bootstrap:
                        nursery.start_soon(self.dial, addr, True)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            if own_store and self.store is not None:
                self.store.close()
            self._event("stopped")

    def _guard(self, handler):
        """Wrap a stream handler so nothing a peer sends can raise out of it."""

        async def guarded(stream) -> None:
            remote = "?"
            try:
                remote = str(stream.muxed_conn.peer_id)
                await handler(stream, remote)
            except trio.Cancelled:
                raise
            except (RemoteProtocolError, trio.TooSlowError) as exc:
                self._penalize(remote, f"{type(exc).__name__}: {exc}", ban=False)
                await _reset(stream)
            except Exception as exc:  # libp2p stream errors and anything unforeseen
                log.info("stream from %s ended: %s: %s", remote, type(exc).__name__, exc)
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
        if self.members.pop(peer, None) is not None:
            self._event("peer-lost", peer=peer, reason=why)

    def _joined(self, peer: str, addrs: list[str]) -> None:
        fresh = peer not in self.members
        self.members[peer] = Member(peer, addrs[:ADDRS_PER_PEER_MAX], time.time())
        if fresh:
            self._event("peer-joined", peer=peer, addrs=addrs)
            if self._nursery is not None:
                self._nursery.start_soon(self._watch, peer)

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
    async def dial(self, addr: str, retry: bool = False) -> str | None:
        """Connect to addr and prove membership both ways; returns the member's peer id."""
        ma = parse_multiaddr(addr)
        try:
            info = info_from_p2p_addr(ma)
        except Exception:
            raise PeerError(f"{addr}: a bootstrap address must end in /p2p/<peer id>") from None
        remote = str(info.peer_id)
        if remote == self.peer_id or remote in self.members or remote in self._dialing:
            return remote if remote in self.members else None
        self._dialing.add(remote)
        try:
            while True:
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_S * 2):
                        await self.host.connect(info)
                    return await self._handshake_as_dialer(info.peer_id)
                except (RemoteProtocolError, PeerError) as exc:
                    self._event("refused", peer=remote, reason=str(exc))
                    await self._hang_up(info.peer_id)
                    return None
                except Exception as exc:  # unreachable, reset, timed out
                    self._event("dial-failed", peer=remote, addr=addr, reason=f"{type(exc).__name__}: {exc}")
                    if not retry:
                        return None
                await trio.sleep(DIAL_RETRY_S)
        finally:
            self._dialing.discard(remote)

    async def _handshake_as_dialer(self, peer: ID) -> str:
        remote = str(peer)
        stream = await open_stream(self.host, self._nursery, peer, PROTO_PARTY, HANDSHAKE_TIMEOUT_S)
        try:
            hs = Handshake("dialer", self.party, self._secret, self.peer_id, remote, secrets.token_bytes(32))
            await write_msg(stream, hs.start(), HANDSHAKE_TIMEOUT_S)
            reply = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
            if reply is None:
                raise PeerError("the peer closed the handshake (not in this party, or wrong secret)")
            finish = hs.receive(reply)
            await write_msg(stream, finish, HANDSHAKE_TIMEOUT_S)
            await write_msg(stream, self._peers_msg(), HANDSHAKE_TIMEOUT_S)
            theirs = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
            if not isinstance(theirs, Peers):
                raise RemoteProtocolError("expected the member list after the handshake")
            self._joined(remote, self._learn(theirs, remote))
            return remote
        finally:
            await _close(stream)

    async def _on_party(self, stream, remote: str) -> None:
        hs = Handshake("listener", self.party, self._secret, self.peer_id, remote, secrets.token_bytes(32))
        try:
            hello = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
            if not isinstance(hello, Hello):
                raise RemoteProtocolError("a party stream must start with Hello")
            await write_msg(stream, hs.receive(hello), HANDSHAKE_TIMEOUT_S)
            finish = await read_msg(stream, HANDSHAKE_TIMEOUT_S)
            if not isinstance(finish, HelloFinish):
                raise RemoteProtocolError("expected the handshake's finish")
            hs.receive(finish)
        except Exception as exc:  # a wrong proof, a timeout, or the outsider hanging up mid-way
            self._event("refused", peer=remote, reason=f"handshake failed: {type(exc).__name__}: {exc}")
            try:
                await write_msg(stream, Refused(reason="not a member of this party"), 1.0)
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

    # ------------------------------------------------------------------ liveness
    async def _watch(self, peer: str) -> None:
        """Ping a member until it goes; no echo within LIVENESS_TIMEOUT_S and it is lost."""
        member = self.members.get(peer)
        stream = None
        reason = "left"
        try:
            stream = await open_stream(
                self.host, self._nursery, ID.from_base58(peer), PROTO_PING, LIVENESS_TIMEOUT_S
            )
            while self.members.get(peer) is member:
                payload = secrets.token_bytes(PING_BYTES)
                echo = None
                with trio.move_on_after(LIVENESS_TIMEOUT_S):
                    await stream.write(payload)
                    echo = await read_exact(stream, PING_BYTES)
                if echo != payload:
                    reason = (
                        f"no answer to a ping within {LIVENESS_TIMEOUT_S} s"
                        if echo is None
                        else "bad ping echo"
                    )
                    break
                await trio.sleep(PING_INTERVAL_S)
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, EOF: the member died or hung up
            reason = f"ping stream ended: {type(exc).__name__}"
        if self.members.get(peer) is member and member is not None:
            self._lost(peer, reason)
            self._nursery.start_soon(self._hang_up, ID.from_base58(peer))
        if stream is not None:
            await _reset(stream)

    async def _on_ping(self, stream, remote: str) -> None:
        if remote not in self.members:
            await _reset(stream)
            return
        while True:
            with trio.fail_after(IDLE_STREAM_TIMEOUT_S):
                data = await read_exact(stream, PING_BYTES)
            if data is None:
                return
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
            if isinstance(msg, Want):
                for h in msg.hashes:
                    await write_msg(stream, self._serve(h, remote))
            elif isinstance(msg, HaveQuery):
                held = [s for s in msg.scene_ids if self.store.has_scene(s)]
                await write_msg(stream, HaveReply(scene_ids=held))
            else:
                raise RemoteProtocolError(f"{type(msg).__name__} on a chunk stream")

    def _serve(self, h: str, remote: str) -> Chunk | NotFound:
        try:
            data = self.store.get(h)
        except (MissingChunkError, CorruptChunkError):
            return NotFound(hash=h)
        wire = self._zc.compress(data)
        self.transfers["bytes_out"] += len(wire)
        self.transfers["chunks_out"] += 1
        m = self.members.get(remote)
        if m is not None:
            m.bytes_served += len(wire)
        return Chunk(hash=h, raw_size=len(data), zstd=True, data=wire)

    # ------------------------------------------------------------------ fetching
    async def _link(self, peer: str) -> _Link:
        link = self._links.get(peer)
        if link is None:
            stream = await open_stream(self.host, self._nursery, ID.from_base58(peer), PROTO_CHUNKS)
            link = self._links[peer] = _Link(stream)
        return link

    async def _ask(self, peer: str, msg):
        link = await self._link(peer)
        async with link.lock:
            await write_msg(link.stream, msg)
            reply = await read_msg(link.stream)
            if reply is None:
                raise RemoteProtocolError("the provider closed the chunk stream")
            return reply

    async def providers_of(self, scene_id: str) -> list[str]:
        """Members that say they hold the scene whole (asked in parallel)."""
        found: list[str] = []

        async def ask(peer: str):
            try:
                reply = await self._ask(peer, HaveQuery(scene_ids=[scene_id]))
            except Exception as exc:  # a member that cannot answer is no provider
                log.info("have-query to %s failed: %s", peer, exc)
                self._links.pop(peer, None)
                return
            if isinstance(reply, HaveReply) and scene_id in reply.scene_ids:
                found.append(peer)

        async with trio.open_nursery() as n:
            for peer in list(self.members):
                if peer not in self.banned:
                    n.start_soon(ask, peer)
        return sorted(found)

    async def fetch_scene(self, scene_id: str, *, timeout_s: float = 600.0) -> dict:
        """Fetch every chunk of scene_id the store lacks, from every member that has it."""
        t0 = time.perf_counter()
        with trio.fail_after(timeout_s):
            providers = await self.providers_of(scene_id)
            if not self.store.has(scene_id):
                if not providers:
                    raise PeerError(f"no member of party {self.party!r} holds scene {scene_id[:16]}")
                await self._fetch_chunks([(scene_id, 0)], providers)
            try:
                manifest = decode_manifest(self.store.get(scene_id), scene_id)
            except ManifestError as exc:
                raise PeerError(f"scene {scene_id[:16]}: {exc}") from None
            refs = manifest.chunk_refs()
            missing = set(self.store.missing([r.hash for r in refs]))
            wanted = [(r.hash, r.size) for r in refs if r.hash in missing]
            wanted = list({h: (h, s) for h, s in wanted}.values())
            stats = await self._fetch_chunks(wanted, providers) if wanted else {}
            total = sum(r.size for r in refs)
            self.store.add_scene(scene_id, [scene_id, *[r.hash for r in refs]], total_bytes=total)
        report = {
            "scene_id": scene_id,
            "chunks": len(refs) + 1,
            "fetched_chunks": len(wanted),
            "fetched_bytes": sum(s for _, s in wanted),
            "providers": providers,
            "bytes_by_provider": stats.get("bytes_by_provider", {}),
            "seconds": time.perf_counter() - t0,
        }
        self._event("fetched", **report)
        return report

    async def _fetch_chunks(self, wanted: list[tuple[str, int]], providers: list[str]) -> dict:
        plan = ChunkFetch(wanted, trio.current_time())
        for p in providers:
            plan.add_provider(p, None, trio.current_time())
        wake = trio.Event()
        by_provider: dict[str, int] = {}

        async def request(peer: str, hashes: tuple[str, ...]):
            nonlocal wake
            try:
                link = await self._link(peer)
                async with link.lock:
                    for i in range(0, len(hashes), WANT_HASHES_MAX):
                        await write_msg(link.stream, Want(hashes=list(hashes[i : i + WANT_HASHES_MAX])))
                    for _ in hashes:
                        reply = await read_msg(link.stream)
                        now = trio.current_time()
                        if isinstance(reply, Chunk):
                            ok = self._accept(reply, peer)
                            if ok:
                                by_provider[peer] = by_provider.get(peer, 0) + reply.raw_size
                            plan.on_chunk(peer, reply.hash, ok, now)
                            if not ok:
                                break
                        elif isinstance(reply, NotFound):
                            plan.on_not_found(peer, reply.hash, now)
                        else:
                            raise RemoteProtocolError(f"{type(reply).__name__} in answer to Want")
            except trio.Cancelled:
                raise
            except Exception as exc:  # a provider that fails mid-transfer: its chunks go elsewhere
                self._links.pop(peer, None)
                self._event("provider-failed", peer=peer, reason=f"{type(exc).__name__}: {exc}")
                plan.remove_provider(peer, trio.current_time())
            finally:
                wake.set()
                wake = trio.Event()

        async with trio.open_nursery() as n:
            while not plan.done:
                now = trio.current_time()
                for action in plan.poll(now):
                    if isinstance(action, Request):
                        n.start_soon(request, action.peer, tuple(action.hashes))
                    elif isinstance(action, Penalize):
                        self._penalize(action.peer, action.reason, ban=True)
                    elif isinstance(action, Cancel):
                        pass  # a late reply is still verified; the plan keeps the first good copy
                if plan.stuck and not n.child_tasks:  # nothing in flight can still bring them
                    raise PeerError(f"{len(plan.stuck)} chunk(s) no reachable member can provide")
                deadline = plan.next_deadline()
                until = now + 1.0 if deadline is None else min(deadline, now + 1.0)
                with trio.move_on_at(until):
                    await wake.wait()
            n.cancel_scope.cancel()
        return {"bytes_by_provider": by_provider}

    def _accept(self, msg: Chunk, peer: str) -> bool:
        """Verify and store a chunk; False (and nothing stored) when its bytes are not its name."""
        try:
            data = self._zd.decompress(msg.data, max_output_size=msg.raw_size) if msg.zstd else msg.data
            if len(data) != msg.raw_size:
                raise ValueError("size differs from the announced one")
            self.store.put(data, expect_hash=msg.hash)
        except CorruptChunkError:
            self._event("bad-chunk", peer=peer, hash=msg.hash)
            return False
        except zstandard.ZstdError as exc:
            self._event("bad-chunk", peer=peer, hash=msg.hash, reason=str(exc))
            return False
        except ValueError as exc:
            self._event("bad-chunk", peer=peer, hash=msg.hash, reason=str(exc))
            return False
        except StoreError:
            raise
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


def read_secret(secret: str | None, secret_file: str | None) -> bytes:
    if secret and secret_file:
        raise PeerError("give --secret or --secret-file, not both")
    if secret_file:
        try:
            data = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise PeerError(f"{secret_file}: cannot read the party secret ({exc.strerror})") from None
        if not data:
            raise PeerError(f"{secret_file}: the secret file is empty")
        return data
    if secret:
        return secret.encode()
    env = os.environ.get("MESHRENDER_SECRET")
    if env:
        return env.encode()
    raise PeerError("a party needs a secret: --secret S, --secret-file F or $MESHRENDER_SECRET")
