"""Chunk names: the BLAKE3 hash of a chunk's bytes, as 64 lowercase hex characters.

The name is the content: anyone holding the bytes can check the name, so a chunk is verified
whenever it is written or read, whoever it came from. One hash function, one spelling — a name in
any other form is not a chunk name (`is_chunk_hash`), so it can never collide with one.
"""

from __future__ import annotations

import re

import blake3

HASH_HEX_LEN = 64  # BLAKE3's default 32-byte digest, in hex

_HASH_RE = re.compile(r"[0-9a-f]{64}")


def chunk_hash(data: bytes | bytearray | memoryview) -> str:
    """The chunk name of `data`: its BLAKE3 digest in lowercase hex."""
    return blake3.blake3(data).hexdigest()


def is_chunk_hash(s: object) -> bool:
    """True if `s` is spelled like a chunk name: exactly 64 lowercase hex characters."""
    return isinstance(s, str) and _HASH_RE.fullmatch(s) is not None
