"""The chunk writer: checks and stores received chunks on its own thread, in batches."""

from __future__ import annotations

import os

import trio
import zstandard

from meshrender.store.chunkstore import ChunkStore, MissingChunkError
from meshrender.store.hashing import chunk_hash
from meshrender.store.writer import ChunkWriter


def test_writer_keeps_good_frames_and_refuses_lies(tmp_path):
    data = [os.urandom(5000) + b"x" * 20000 for _ in range(5)]
    frames = [zstandard.ZstdCompressor().compress(d) for d in data]
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 100_000)  # claims more than announced

    async def main():
        w = ChunkWriter(tmp_path / "store", quota_bytes=None)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            results = [None] * 5

            async def put(i):
                results[i] = await w.put(chunk_hash(data[i]), frames[i], len(data[i]), True)

            for i in range(5):
                n.start_soon(put, i)
            await trio.sleep(0.5)
            wrong = await w.put(chunk_hash(data[0][::-1]), frames[0], len(data[0]), True)
            bombed = await w.put(chunk_hash(b"\0" * 100), bomb, 100, True)
            plain = await w.put(chunk_hash(b"plain"), b"plain", 5, False)
            n.cancel_scope.cancel()
        return results, wrong, bombed, plain

    results, wrong, bombed, plain = trio.run(main)
    assert results == [True] * 5 and not wrong and not bombed and plain
    with ChunkStore(tmp_path / "store") as store:  # another instance sees what the writer committed
        for d, f in zip(data, frames, strict=True):
            h = chunk_hash(d)
            assert store.get(h) == d and store.blob_path(h).read_bytes() == f  # the frame kept as is
        assert not store.has(chunk_hash(data[0][::-1])) and store.get(chunk_hash(b"plain")) == b"plain"


def test_a_lie_in_a_batch_refuses_only_the_liar_and_sync_then_reads_serve_the_rest(tmp_path):
    data = [os.urandom(3000) * 3 for _ in range(6)]
    frames = [zstandard.ZstdCompressor().compress(d) for d in data]
    lie = chunk_hash(b"not these bytes")

    async def main():
        w = ChunkWriter(tmp_path / "store", quota_bytes=None)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            results = {}

            async def put(i, h):
                results[i] = await w.put(h, frames[i], len(data[i]), True)

            for i in range(6):  # queued at once: one batch, the liar in the middle of it
                n.start_soon(put, i, lie if i == 3 else chunk_hash(data[i]))
            await trio.sleep(0.5)
            await w.sync()
            got = await w.get_frame(chunk_hash(data[0]))
            missing = w.read_soon(chunk_hash(data[3]))
            await missing.done.wait()
            n.cancel_scope.cancel()
        return results, got, missing.result

    results, got, missing = trio.run(main)
    assert results == {0: True, 1: True, 2: True, 3: False, 4: True, 5: True}
    assert got == (frames[0], len(data[0]))  # served as stored, checked on the reading thread
    assert isinstance(missing, MissingChunkError)
    with ChunkStore(tmp_path / "store") as store:
        assert [store.has(chunk_hash(d)) for d in data] == [True, True, True, False, True, True]
