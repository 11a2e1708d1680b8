"""The chunk writer: checks and stores received chunks on its own thread, in batches."""

from __future__ import annotations

import os

import trio
import zstandard

from meshrender.store.chunkstore import ChunkStore
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
