"""Chunks checked and stored (and, for serving, read and checked) off the event loop.

A peer that stores a received chunk in its trio thread stops everything while the disk works: with
several peers writing at once, an fsync can take seconds, and a peer that cannot echo a ping for
2 s is declared lost by every member. `ChunkWriter` does the work on a thread of its own, with a
`ChunkStore` of its own on the same root (the store is made for several instances: its index is
SQLite in WAL mode and each instance writes temp files in its own folder), so the peer's store sees
every chunk the writer committed.

The thread takes whatever has queued up — up to BATCH_CHUNKS_MAX chunks or BATCH_BYTES_MAX bytes —
unpacks each (a zstd frame must record a size no bigger than announced and decompress to exactly
that many bytes) and stores them with one `put_many`, which hashes each against its claimed name:
one hash and one index commit per batch. A batch with a lie in it is refused whole by the store,
so its chunks are then stored one by one and only the liar's is refused. The zstd frame is kept
as the blob, so nothing is compressed again. zstd, BLAKE3 and fsync release the GIL.

Durability comes in one go: the writer's store skips the fsync per blob and per commit (on a
shared disk those cost tens of milliseconds each and set the pace of a whole fetch), and
`await writer.sync()` fsyncs every blob written since, its folders and the index, SYNC_THREADS at
a time. A fetch calls it before it records a scene whole, so a scene that is recorded is on disk;
a power cut before then can lose or tear chunks of the unfinished fetch, which are not part of a
whole scene, and a torn blob fails its check on read (quarantined, fetched again). A process
crash loses nothing either way: the page cache outlives the process.

Serving reads the same way: `await writer.get_frame(h)` reads and checks a stored frame (a
decompression and a hash, milliseconds per chunk) on READ_THREADS threads of its own, each with a
store of its own, so the event loop goes on sending one chunk while the next ones are read.

`await writer.put(...)` answers True (stored), False (its bytes are not its name: nothing stored),
or raises StoreError (a full disk, say: the peer cannot go on storing).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio
import zstandard

from .chunkstore import ChunkStore, CorruptChunkError, StoreError
from .hashing import chunk_hash

log = logging.getLogger("meshrender.store.writer")

BATCH_CHUNKS_MAX = 32  # chunks per put_many: about a provider's in-flight window
BATCH_BYTES_MAX = 64 << 20
SYNC_THREADS = 8  # fsyncs at once in `sync`: the disk queues them and the journal commits them together
UNSYNCED_MAX = 4096  # paths written and not yet fsynced; beyond this the writer syncs at once
READ_THREADS = 2  # frames read for serving at once: a file read, a decompression and a hash each


class _Job:
    __slots__ = ("hash", "frame", "raw_size", "zstd", "done", "result")

    def __init__(self, h: str, frame: bytes, raw_size: int, zstd: bool):
        self.hash, self.frame, self.raw_size, self.zstd = h, frame, raw_size, zstd
        self.done = trio.Event()
        self.result: bool | BaseException = False


class _Sync:
    __slots__ = ("done", "result")

    def __init__(self):
        self.done = trio.Event()
        self.result: BaseException | None = None


class _Read:
    __slots__ = ("hash", "done", "result")

    def __init__(self, h: str):
        self.hash = h
        self.done = trio.Event()
        self.result: tuple[bytes, int] | BaseException | None = None


class ChunkWriter:
    def __init__(self, root: str | Path, *, quota_bytes: int | None):
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._queue: queue.SimpleQueue[_Job | _Sync | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self._unsynced: dict[Path, None] = {}  # blobs and folders written since the last sync (writer thread)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the writing and reading threads; until cancelled, then finish what was queued and stop."""
        self._token = trio.lowlevel.current_trio_token()
        opened = trio.Event()
        failure: list[BaseException] = []

        def started(exc: BaseException | None) -> None:
            if exc is not None:
                failure.append(exc)
            opened.set()

        self._thread = threading.Thread(target=self._work, args=(started,), name="chunk-writer", daemon=True)
        self._thread.start()
        await opened.wait()
        if failure:
            raise failure[0]
        try:
            for i in range(READ_THREADS):
                opened = trio.Event()
                reader = threading.Thread(target=self._read_work, args=(started,), name=f"chunk-reader-{i}")
                reader.daemon = True
                reader.start()
                self._readers.append(reader)
                await opened.wait()
                if failure:
                    raise failure[0]
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._queue.put(None)
            for _ in self._readers:
                self._reads.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._thread.join)
                for reader in self._readers:
                    await trio.to_thread.run_sync(reader.join)

    async def put(self, h: str, frame: bytes, raw_size: int, zstd: bool) -> bool:
        if self._thread is None or not self._thread.is_alive():
            raise StoreError(f"{self.root}: the chunk writer is not running")
        job = _Job(h, frame, raw_size, zstd)
        self._queue.put(job)
        await job.done.wait()
        if isinstance(job.result, BaseException):
            raise job.result
        return job.result

    async def sync(self) -> None:
        """Make every chunk `put` before this call durable (see the module docstring); StoreError if
        the disk refuses."""
        if self._thread is None or not self._thread.is_alive():
            raise StoreError(f"{self.root}: the chunk writer is not running")
        job = _Sync()
        self._queue.put(job)
        await job.done.wait()
        if job.result is not None:
            raise job.result

    def read_soon(self, h: str) -> _Read:
        """Start reading chunk `h` for serving; `await read.done.wait()`, then `read.result` is
        (frame, raw size) or the StoreError (MissingChunkError, CorruptChunkError: quarantined)."""
        if not any(r.is_alive() for r in self._readers):
            raise StoreError(f"{self.root}: the chunk reader is not running")
        read = _Read(h)
        self._reads.put(read)
        return read

    async def get_frame(self, h: str) -> tuple[bytes, int]:
        """`ChunkStore.get_frame` on the reading thread: the checked frame and its raw size."""
        read = self.read_soon(h)
        await read.done.wait()
        if isinstance(read.result, BaseException):
            raise read.result
        return read.result

    # ------------------------------------------------------------------ the threads
    def _read_work(self, started) -> None:
        try:
            store = ChunkStore(self.root, quota_bytes=self.quota_bytes)
        except BaseException as exc:
            self._token.run_sync_soon(started, exc)
            return
        self._token.run_sync_soon(started, None)
        try:
            while (read := self._reads.get()) is not None:
                try:
                    read.result = store.get_frame(read.hash)
                except BaseException as exc:  # missing, corrupt (quarantined), unreadable: the caller's
                    read.result = exc
                try:
                    self._token.run_sync_soon(read.done.set)
                except trio.RunFinishedError:  # the peer is gone; nobody waits
                    return
        finally:
            store.close()

    def _finish(self, job: _Job | _Sync, result: bool | BaseException | None) -> None:
        job.result = result
        try:
            self._token.run_sync_soon(job.done.set)
        except trio.RunFinishedError:  # the peer is gone; nobody waits
            pass

    def _work(self, started) -> None:
        try:  # not durable: `sync` fsyncs what was written, all at once
            store = ChunkStore(self.root, quota_bytes=self.quota_bytes, durable=False)
        except BaseException as exc:
            self._token.run_sync_soon(started, exc)
            return
        self._token.run_sync_soon(started, None)
        dctx = zstandard.ZstdDecompressor()
        pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="chunk-sync")
        try:
            job = self._queue.get()
            while job is not None:
                if isinstance(job, _Sync):
                    self._finish(job, self._sync(store, pool))
                    job = self._queue.get()
                    continue
                batch, size, after = [job], len(job.frame), False
                while len(batch) < BATCH_CHUNKS_MAX and size < BATCH_BYTES_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None or isinstance(more, _Sync):  # the batch ends before it
                        after = more
                        break
                    batch.append(more)
                    size += len(more.frame)
                self._store(store, dctx, batch)
                if len(self._unsynced) > UNSYNCED_MAX:
                    self._sync(store, pool)  # a failure here is told to the next `sync`
                job = self._queue.get() if after is False else after
        finally:
            self._sync(store, pool)  # what a stopping peer wrote is on disk when it has stopped
            pool.shutdown()
            store.close()

    def _sync(self, store: ChunkStore, pool: ThreadPoolExecutor) -> StoreError | None:
        """fsync every path written since the last sync and the index; the error, if any."""
        paths = [*self._unsynced, *(store.root / n for n in ("index.sqlite3-wal", "index.sqlite3"))]
        failed: list[OSError] = []

        def fsync(path: Path) -> None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # evicted meanwhile, or no WAL file: nothing to flush
                return
            except OSError as exc:
                failed.append(exc)
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                failed.append(exc)
            finally:
                os.close(fd)

        list(pool.map(fsync, paths))
        if failed:  # kept for the next sync: a transient error must not leave them unsynced
            return StoreError(f"{self.root}: could not flush received chunks to disk: {failed[0]}")
        self._unsynced.clear()
        return None

    def _store(self, store: ChunkStore, dctx, batch: list[_Job]) -> None:
        good: list[tuple[_Job, bytes]] = []
        for job in batch:
            data = _unpack(dctx, job)
            if data is None:
                self._finish(job, False)
            else:
                good.append((job, data))
        if not good:
            return
        try:  # put_many hashes every chunk against its name: the one hash each chunk costs
            stored = store.put_many([(data, job.hash, job.frame if job.zstd else None) for job, data in good])
        except CorruptChunkError:  # a lie in the batch, which is refused whole: one by one
            for job, data in good:
                try:
                    stored = [store.put(data, expect_hash=job.hash, frame=job.frame if job.zstd else None)]
                except CorruptChunkError:
                    self._finish(job, False)
                except BaseException as exc:
                    self._finish(job, exc)
                else:
                    self._written(store, stored)
                    self._finish(job, True)
            return
        except BaseException as exc:  # a full disk: every waiter hears it; nothing of the batch is kept
            for job, _ in good:
                self._finish(job, exc)
            return
        self._written(store, stored)
        for job, _ in good:
            self._finish(job, True)

    def _written(self, store: ChunkStore, stored: list[tuple[str, bool]]) -> None:
        """Note the blobs `put_many` wrote, with the folders whose entries changed, for `sync`."""
        for h, new in stored:
            if new:
                blob = store.blob_path(h)
                self._unsynced.update(dict.fromkeys((blob, *blob.parents[:3])))  # its shards and blobs/


def _check(dctx, job: _Job) -> bytes | None:
    """The chunk's bytes, if they are what it claims to be; None otherwise."""
    data = _unpack(dctx, job)
    if data is None or chunk_hash(data) != job.hash:
        return None
    return data


def _unpack(dctx, job: _Job) -> bytes | None:
    """The chunk's bytes, if its frame unpacks to exactly its announced size (not yet hashed)."""
    try:
        if job.zstd:
            # a frame recording a size decompresses to exactly that, whatever the limit says: check
            # the claim first, or a small frame could ask for gigabytes
            claimed = zstandard.frame_content_size(job.frame)
            if claimed > job.raw_size:
                return None
            data = dctx.decompress(job.frame, max_output_size=job.raw_size)
        else:
            data = job.frame
    except zstandard.ZstdError:
        return None
    if len(data) != job.raw_size:
        return None
    return data
