"""Received chunks checked and stored off the event loop, in batches.

A peer that stores a received chunk in its trio thread stops everything while the disk works: with
several peers writing at once, an fsync can take seconds, and a peer that cannot echo a ping for
2 s is declared lost by every member. `ChunkWriter` does the work on a thread of its own, with a
`ChunkStore` of its own on the same root (the store is made for several instances: its index is
SQLite in WAL mode and each instance writes temp files in its own folder), so the peer's store sees
every chunk the writer committed.

The thread takes whatever has queued up — up to BATCH_CHUNKS_MAX chunks or BATCH_BYTES_MAX bytes —
checks each (a zstd frame must record a size no bigger than announced and decompress to exactly
that many bytes, which must hash to the claimed name), and stores the good ones with one
`put_many`: one index commit per batch. The zstd frame is kept as the blob, so nothing is
compressed again. zstd, BLAKE3 and fsync release the GIL.

`await writer.put(...)` answers True (stored), False (its bytes are not its name: nothing stored),
or raises StoreError (a full disk, say: the peer cannot go on storing).
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import trio
import zstandard

from .chunkstore import ChunkStore, StoreError
from .hashing import chunk_hash

log = logging.getLogger("meshrender.store.writer")

BATCH_CHUNKS_MAX = 32  # chunks per put_many: about a provider's in-flight window
BATCH_BYTES_MAX = 64 << 20


class _Job:
    __slots__ = ("hash", "frame", "raw_size", "zstd", "done", "result")

    def __init__(self, h: str, frame: bytes, raw_size: int, zstd: bool):
        self.hash, self.frame, self.raw_size, self.zstd = h, frame, raw_size, zstd
        self.done = trio.Event()
        self.result: bool | BaseException = False


class ChunkWriter:
    def __init__(self, root: str | Path, *, quota_bytes: int | None):
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the writer thread; until cancelled, then finish what was queued and stop."""
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
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._queue.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._thread.join)

    async def put(self, h: str, frame: bytes, raw_size: int, zstd: bool) -> bool:
        if self._thread is None or not self._thread.is_alive():
            raise StoreError(f"{self.root}: the chunk writer is not running")
        job = _Job(h, frame, raw_size, zstd)
        self._queue.put(job)
        await job.done.wait()
        if isinstance(job.result, BaseException):
            raise job.result
        return job.result

    # ------------------------------------------------------------------ the thread
    def _finish(self, job: _Job, result: bool | BaseException) -> None:
        job.result = result
        try:
            self._token.run_sync_soon(job.done.set)
        except trio.RunFinishedError:  # the peer is gone; nobody waits
            pass

    def _work(self, started) -> None:
        try:
            store = ChunkStore(self.root, quota_bytes=self.quota_bytes)
        except BaseException as exc:
            self._token.run_sync_soon(started, exc)
            return
        self._token.run_sync_soon(started, None)
        dctx = zstandard.ZstdDecompressor()
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch, size, last = [job], len(job.frame), False
                while len(batch) < BATCH_CHUNKS_MAX and size < BATCH_BYTES_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        last = True
                        break
                    batch.append(more)
                    size += len(more.frame)
                self._store(store, dctx, batch)
                if last:
                    return
        finally:
            store.close()

    def _store(self, store: ChunkStore, dctx, batch: list[_Job]) -> None:
        good: list[tuple[_Job, bytes]] = []
        for job in batch:
            data = _check(dctx, job)
            if data is None:
                self._finish(job, False)
            else:
                good.append((job, data))
        if not good:
            return
        try:
            store.put_many([(data, job.hash, job.frame if job.zstd else None) for job, data in good])
        except BaseException as exc:  # a full disk: every waiter hears it; nothing of the batch is kept
            for job, _ in good:
                self._finish(job, exc)
            return
        for job, _ in good:
            self._finish(job, True)


def _check(dctx, job: _Job) -> bytes | None:
    """The chunk's bytes, if they are what it claims to be; None otherwise."""
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
    if len(data) != job.raw_size or chunk_hash(data) != job.hash:
        return None
    return data
