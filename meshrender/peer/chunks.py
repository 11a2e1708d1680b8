"""Chunks: serving a scene's chunks to members and fetching a scene from the party.

How it works
  * `/meshrender/chunks/1` carries `Want` -> `Chunk`/`NotFound` and `ChunkMapQuery` -> `ChunkMap`.
    Only members are served: a chunk stream from a non-member is reset and logged. Chunks go on
    the wire as the store keeps them, zstd frames (checked against their hash first), and a
    received frame is kept as the blob: neither end compresses again. Each provider gets two
    streams: a bulk one for chunks and a control one for chunk maps, so a map is never queued
    behind megabytes of chunks.
  * The answer to each want is made by `Peer._serve` (through the peer, so a test can patch it
    there) from the frame the writer's reading thread read READ_AHEAD_CHUNKS ahead.
  * Fetching a scene (`fetch_scene`) is a swarm. It asks every member for its chunk map of the
    scene (whole, part, or nothing), takes the manifest from one that has it, then lets the sans-IO
    scheduler (meshrender.exchange) spread the chunks, in an order of its own, over every member
    holding them. While it fetches it serves what it has to other fetchers and asks the members
    for fresh maps every MAP_POLL_S, so fetchers that start together ask the source for different
    chunks and trade the rest among themselves (that policy is the sans-IO meshrender.swarm, which
    the simulator runs too). Each chunk is verified by the store before it is
    kept; a peer that sent wrong bytes is banned and penalised, its chunks re-requested elsewhere.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from ..exchange import Cancel, Penalize, Request
from ..net.host import open_stream
from ..net.streams import read_msg, write_msg
from ..protocol import (
    WANT_HASHES_MAX,
    Chunk,
    ChunkMap,
    ChunkMapQuery,
    NotFound,
    RemoteProtocolError,
    Want,
)
from ..store.chunkstore import CorruptChunkError, MissingChunkError, StoreError
from ..store.manifest import ManifestError, decode_manifest
from ..swarm import FIND_TIMEOUT_S, MAP_POLL_S, MAP_TIMEOUT_S, SceneSwarm
from .common import IDLE_STREAM_TIMEOUT_S, PROTO_CHUNKS, Member, PeerError, close_stream, reset_stream

if TYPE_CHECKING:
    from ..node import Peer

log = logging.getLogger("meshrender.node")

READ_AHEAD_CHUNKS = 2  # frames read for serving ahead of the one being sent: the disk never waits on us


@dataclass
class _Link:
    """One open chunk stream to a member: a control stream is used by one request at a time
    (`lock`); a bulk stream is pipelined: `lock` guards writing Wants, and one reader task hands
    each answer to the handler queued for it in `pending` (a provider answers in order)."""

    stream: object
    lock: trio.Lock = field(default_factory=trio.Lock)
    pending: deque = field(default_factory=deque)  # (hash, handler) per chunk asked, oldest first


class Chunks:
    """The chunk server, the links to providers, and the scene fetches under way."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.links: dict[str, _Link] = {}  # bulk chunk streams, one per provider
        self._ctl_links: dict[str, _Link] = {}  # control streams: chunk maps, never behind bulk data
        self._frames_read: dict[str, tuple[bytes, int] | BaseException] = {}  # for serve, just read
        self._partial: dict[str, SceneSwarm] = {}  # scenes being fetched: what we hold of them so far
        self.fetching: dict[str, trio.Event] = {}

    def forget(self, peer: str) -> None:
        """A member is gone: its links go with it (their readers fail what was pending there)."""
        self.links.pop(peer, None)
        self._ctl_links.pop(peer, None)

    # ------------------------------------------------------------------ serving
    async def on_chunks(self, stream, remote: str) -> None:
        p = self.peer
        if remote not in p.members or remote in p.banned:
            p._event("refused", peer=remote, reason="chunk request from a non-member")
            await reset_stream(stream)
            return
        while True:
            msg = await read_msg(stream, IDLE_STREAM_TIMEOUT_S)
            if msg is None:
                await close_stream(stream)
                return
            p.liveness.alive(remote)
            if isinstance(msg, Want):
                m = p.members.get(remote) or Member(remote, [], 0.0)  # gone meanwhile: counted nowhere
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
                        await write_msg(stream, p._serve(h, remote))  # through the peer: a patch point
                        left -= 1
                        m.chunks_serving -= 1
                        p.liveness.alive(remote)  # it took the bytes: its window opened again
                finally:  # a stream that fails mid-Want: what was left is no longer in flight
                    m.chunks_serving -= left
            elif isinstance(msg, ChunkMapQuery):
                await write_msg(stream, self._chunk_map(msg.scene_id))
            else:
                raise RemoteProtocolError(f"{type(msg).__name__} on a chunk stream")

    def _read_soon(self, h: str):
        """Chunk `h` being read for serving on the writer's reading thread (None: `serve` reads it)."""
        writer = self.peer.writer
        return writer.read_soon(h) if writer is not None else None

    def serve(self, h: str, remote: str) -> Chunk | NotFound:
        """The answer to a want of `h`: its frame as the writer's reading thread read it (checked,
        and already compressed: sent as stored), or read here if another stream took that one."""
        p = self.peer
        read = self._frames_read.pop(h, None)
        try:
            if read is None:
                read = p.store.get_frame(h)
            elif isinstance(read, BaseException):
                raise read
        except (MissingChunkError, CorruptChunkError):
            return NotFound(hash=h)
        wire, raw_size = read
        p.transfers["bytes_out"] += len(wire)
        p.transfers["chunks_out"] += 1
        m = p.members.get(remote)
        if m is not None:
            m.bytes_served += len(wire)
        return Chunk(hash=h, raw_size=raw_size, zstd=True, data=wire)

    # ------------------------------------------------------------------ fetching
    async def _link(self, peer: str, links: dict[str, _Link]) -> _Link:
        p = self.peer
        link = links.get(peer)
        if link is None:
            stream = await open_stream(p.host, p._nursery, ID.from_base58(peer), PROTO_CHUNKS)
            link = links.setdefault(peer, _Link(stream))
            if link.stream is not stream:  # another task opened one meanwhile
                await reset_stream(stream)
            elif links is self.links:
                p._nursery.start_soon(self._read_chunks, peer, link)
        return link

    async def _want(self, peer: str, hashes: tuple[str, ...], handler: Callable) -> None:
        """Ask `peer` for chunks on its bulk stream without waiting for them: each answer goes to
        `await handler(peer, hash, msg, None)`, or `(peer, hash, None, exc)` if the stream fails
        first. The pipe stays full: the next Want goes out while earlier chunks still arrive."""
        link = await self._link(peer, self.links)
        async with link.lock:
            link.pending.extend((h, handler) for h in hashes)
            for i in range(0, len(hashes), WANT_HASHES_MAX):
                await write_msg(link.stream, Want(hashes=list(hashes[i : i + WANT_HASHES_MAX])))

    async def _read_chunks(self, peer: str, link: _Link) -> None:
        """The bulk stream's reader: answers in order of asking, each to its handler."""
        p = self.peer
        failure: Exception | None = None
        try:
            while True:
                reply = await read_msg(link.stream, IDLE_STREAM_TIMEOUT_S)
                if reply is None:
                    raise RemoteProtocolError("the provider closed the chunk stream")
                p.liveness.alive(peer)
                if not isinstance(reply, Chunk | NotFound):
                    raise RemoteProtocolError(f"{type(reply).__name__} in answer to Want")
                if not link.pending:
                    raise RemoteProtocolError("sent a chunk that was not asked for")
                h, handler = link.pending.popleft()
                if reply.hash != h:
                    raise RemoteProtocolError("answered Wants out of order")
                p._nursery.start_soon(handler, peer, h, reply, None)  # checked and stored meanwhile
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, EOF, garbage: whatever was asked goes elsewhere
            failure = exc
        finally:
            if self.links.get(peer) is link:
                del self.links[peer]
            pending, link.pending = list(link.pending), deque()
            if failure is not None:
                for h, handler in pending:
                    p._nursery.start_soon(handler, peer, h, None, failure)
            await reset_stream(link.stream)

    async def _drop_link(self, peer: str) -> None:
        link = self.links.pop(peer, None)
        if link is not None:
            await reset_stream(link.stream)  # its reader fails what is still pending there

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
        p = self.peer
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
                p._penalize(peer, f"answered a chunk-map query with {type(reply).__name__}", ban=False)
            elif reply.whole or reply.count:
                maps[peer] = reply

        async with trio.open_nursery() as n:
            for peer in list(p.members):
                if peer not in p.banned:
                    n.start_soon(ask, peer)
        return maps

    def _chunk_map(self, scene_id: str) -> ChunkMap:
        swarm = self._partial.get(scene_id)
        if swarm is not None:
            return swarm.chunk_map()
        whole = self.peer.store.has_scene(scene_id)
        return ChunkMap(scene_id=scene_id, count=0, whole=whole, bits=b"")

    async def fetch_scene(self, scene_id: str, *, timeout_s: float = 600.0) -> dict:
        """Fetch every chunk of scene_id this store lacks from the party: from members that hold it
        whole and from members still fetching it (a swarm), serving what we have meanwhile."""
        while scene_id in self.fetching:  # one fetch per scene; a second caller shares it
            await self.fetching[scene_id].wait()
        done = self.fetching[scene_id] = trio.Event()
        try:
            return await self._fetch_scene(scene_id, timeout_s)
        finally:
            del self.fetching[scene_id]
            done.set()

    async def _fetch_scene(self, scene_id: str, timeout_s: float) -> dict:
        p = self.peer
        store = p.store
        t0 = time.perf_counter()
        stats: dict = {}
        wanted: list[tuple[str, int]] = []
        with trio.fail_after(timeout_s):
            if store.has_scene(scene_id):
                maps: dict[str, ChunkMap] = {}
                refs = decode_manifest(store.get(scene_id), scene_id).unique_chunks()
            else:
                # a loaded member can miss one query: ask again for a while before giving up
                with trio.move_on_after(FIND_TIMEOUT_S):
                    while not (maps := await self.chunk_maps(scene_id)):
                        await trio.sleep(MAP_POLL_S * 2)
                if not store.has(scene_id):
                    if not maps:
                        raise PeerError(f"no member of party {p.party!r} holds scene {scene_id[:16]}")
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
                    manifest = decode_manifest(store.get(scene_id), scene_id)
                except ManifestError as exc:
                    raise PeerError(f"scene {scene_id[:16]}: {exc}") from None
                refs = manifest.unique_chunks()
                missing = set(store.missing([r.hash for r in refs]))
                wanted = [(r.hash, r.size) for r in refs if r.hash in missing]
                # the want-list in an order of this peer's own (see meshrender.swarm)
                swarm = SceneSwarm(wanted, trio.current_time(), scene_id=scene_id,
                                   order=[r.hash for r in refs], shuffle=random.Random().shuffle,
                                   peer_id=p.peer_id, members=len(p.members))  # fmt: skip
                self._partial[scene_id] = swarm
                try:
                    if wanted:
                        stats = await self._swarm(swarm, maps)
                    total = sum(r.size for r in manifest.chunk_refs())
                    await p.writer.sync()  # what was fetched is on disk before the scene is recorded whole
                    store.add_scene(scene_id, [scene_id, *[r.hash for r in refs]], total_bytes=total)
                    p.scene_changed()
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
        p._event("fetched", **report)
        return report

    async def _swarm(self, swarm: SceneSwarm, maps: dict[str, ChunkMap]):
        """Pull what `swarm` wants from the members in `maps`, asking every member again for its
        chunk map every MAP_POLL_S (fetchers gain chunks as they go) for a scene's chunks."""
        p = self.peer
        scene_id = swarm.scene_id if swarm.order is not None else None
        wake = trio.Event()
        by_provider: dict[str, int] = {}
        in_flight = 0
        store_error: StoreError | None = None

        def offer(maps: dict[str, ChunkMap]) -> None:
            maps = {q: m for q, m in maps.items() if q not in p.banned}
            for peer, reason in swarm.on_maps(maps, trio.current_time()):
                p._penalize(peer, reason, ban=False)

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
                p._event("provider-failed", peer=peer, reason=f"{type(exc).__name__}: {exc}")

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
                        p._penalize(action.peer, action.reason, ban=True)
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
        p = self.peer
        if not await p.writer.put(msg.hash, msg.data, msg.raw_size, msg.zstd):
            p._event("bad-chunk", peer=peer, hash=msg.hash)
            return False
        p.transfers["bytes_in"] += len(msg.data)
        p.transfers["chunks_in"] += 1
        m = p.members.get(peer)
        if m is not None:
            m.bytes_received += len(msg.data)
        return True
