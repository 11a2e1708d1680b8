"""The persistent, content-addressed chunk store every peer keeps.

A chunk is named by the BLAKE3 hash of its bytes (`hashing`); `chunkstore.ChunkStore` keeps chunks
zstd-compressed on disk under those names, indexes them (and the scenes they belong to, and the pins
that keep them) in SQLite, and evicts least-recently-used chunks to stay under a quota.
"""

from meshrender.store.chunkstore import (
    CHUNK_BYTES_MAX,
    ChunkStore,
    CorruptChunkError,
    MissingChunkError,
    StoreError,
)
from meshrender.store.hashing import HASH_HEX_LEN, chunk_hash, is_chunk_hash

__all__ = [
    "CHUNK_BYTES_MAX",
    "HASH_HEX_LEN",
    "ChunkStore",
    "CorruptChunkError",
    "MissingChunkError",
    "StoreError",
    "chunk_hash",
    "is_chunk_hash",
]
