"""Writes the seed corpus for tests/test_fuzz_wire.py beside this script: a few small valid inputs
per target (a valid start reaches past the framing into the cores), under <target>/seed-*.bin.
Regressions (inputs that once crashed a decoder) are kept beside them as <target>/crash-*.bin and
are not rewritten here.

    .venv/bin/python tests/data/fuzz/wire/make.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # tests/

import test_fuzz_wire as w  # noqa: E402

from meshrender.protocol import (  # noqa: E402
    Beat,
    Chunk,
    ChunkMap,
    Have,
    JobEnd,
    JobOffer,
    LeaseGrant,
    LeaseRefused,
    LeaseRevoke,
    Status,
    Want,
)
from meshrender.store.hashing import chunk_hash  # noqa: E402


def frames(*msgs) -> bytes:
    return b"".join(w._frame(m) for m in msgs)


def main() -> None:
    u0, u1 = w.UNITS[0], w.UNITS[1]
    offer = JobOffer(job_id=w.SCENE_ID, scene_id=w.SCENE_ID, settings=w.SETTINGS, backend="cpu")
    lease = LeaseGrant(lease_id=1, units=[u0, u1], due_in_s=30.0)
    done = w._unit_done(u0, 1, w._counts(u0), w._sums(u0), 0.25)
    partial = ChunkMap.partial(w.SCENE_ID, len(w.ORDER), 0b1011)
    blob = b"a chunk of a scene " * 8
    seeds = {
        "frames": [
            b"\x00\x01"
            + frames(Want(hashes=[w.ORDER[0]]), partial, Beat(lease_ids=[1], samples_done=9, rendering=True))
        ],
        "body": [
            w._encode(Chunk(hash=chunk_hash(blob), raw_size=len(blob), zstd=False, data=blob)),
            w._encode(lease),
        ],
        "gossip": [
            w._encode(
                Status(
                    version="0.1",
                    state="idle",
                    backend="x64",
                    fell_back=False,
                    speed=1.5,
                    threads=2,
                    free_mem=1 << 30,
                    load=0.5,
                    scenes=1,
                )
            ),
            w._encode(Have(scene_ids=[w.SCENE_ID])),
        ],
        "manifest": [w._MANIFEST],
        "chunk_map": [
            w._encode(partial),
            w._encode(ChunkMap(scene_id=w.SCENE_ID, count=0, whole=True, bits=b"")),
        ],
        "chunk_blob": [
            b"\x03" + len(blob).to_bytes(4, "big") + zstandard.ZstdCompressor(level=3).compress(blob),
            b"\x02" + len(blob).to_bytes(4, "big") + blob,
        ],
        "worker": [frames(offer, lease, LeaseRevoke(lease_id=1, reason="expired"), JobEnd(reason="done"))],
        "coordinator": [
            frames(
                Beat(lease_ids=[1], samples_done=0, rendering=True),
                done,
                LeaseRefused(lease_id=2, reason="renderer not ready"),
            )
        ],
        "compiled": [w._COMPILED],
    }
    for target, inputs in seeds.items():
        folder = HERE / target
        folder.mkdir(exist_ok=True)
        for old in folder.glob("seed-*.bin"):
            old.unlink()
        for i, data in enumerate(inputs):
            (folder / f"seed-{i}.bin").write_bytes(data)
    # the regression found first: a lease due in infinite seconds (the worker's core raised)
    inf = msgspec.structs.replace(lease, due_in_s=float("inf"))
    (HERE / "worker" / "crash-lease-due-inf.bin").write_bytes(frames(offer, inf))


if __name__ == "__main__":
    main()
