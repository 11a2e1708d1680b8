"""The chunk store: round trips, dedupe, hash checks on write and read, quarantine, zstd bombs,
quota/LRU with pins, scenes, gc, verify (corrupt, missing, orphans), a full disk, temp cleanup."""

from __future__ import annotations

import errno
import os
import sqlite3
import struct
import threading
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from meshrender.store import chunkstore
from meshrender.store.chunkstore import (
    CHUNK_BYTES_MAX,
    ChunkStore,
    CorruptChunkError,
    MissingChunkError,
    StoreError,
)
from meshrender.store.hashing import HASH_HEX_LEN, chunk_hash, is_chunk_hash


class Clock:
    """A fake clock: every read is one second after the last, unless set."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def tmp_part_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "tmp").rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def flip_bit(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    with ChunkStore(tmp_path / "store", clock=clock) as s:
        yield s


# ---------------------------------------------------------------- hashing


def test_chunk_hash_is_blake3_hex():
    h = chunk_hash(b"abc")
    assert h == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"  # BLAKE3 test vector
    assert len(h) == HASH_HEX_LEN and is_chunk_hash(h)
    assert chunk_hash(memoryview(b"xabcx")[1:4]) == h
    assert not is_chunk_hash(h.upper())
    assert not is_chunk_hash(h[:-1])
    assert not is_chunk_hash(h + "\n")
    assert not is_chunk_hash("g" * 64)
    assert not is_chunk_hash(None)


# ---------------------------------------------------------------- writing and reading


def test_round_trip_sharded_and_compressed(store):
    compressible = b"meshrender " * 20_000
    random_bytes = rand(100_000, 1)
    for data in (compressible, random_bytes, b""):
        h, new = store.put(data)
        assert new and h == chunk_hash(data)
        assert store.get(h) == data
        assert store.has(h) and store.chunk_size(h) == len(data)
        path = store.root / "blobs" / h[:2] / h[2:4] / f"{h}.zst"
        assert path.is_file() and store.blob_path(h) == path
        blob = path.read_bytes()
        assert zstandard.frame_content_size(blob) == len(data)  # the frame records its size
    assert store.blob_path(chunk_hash(compressible)).stat().st_size < len(compressible) // 50
    st = store.stats()
    assert st["chunks"] == 3 and st["raw_bytes"] == len(compressible) + len(random_bytes)
    assert st["stored_bytes"] == sum(p.stat().st_size for p in blob_files(store.root))
    assert tmp_part_files(store.root) == []


def test_dedupe_writes_once(store):
    data = rand(50_000, 2)
    h, new = store.put(data)
    ino = store.blob_path(h).stat().st_ino
    assert store.put(data) == (h, False)
    assert store.put(bytearray(data), expect_hash=h) == (h, False)
    assert store.blob_path(h).stat().st_ino == ino  # not rewritten
    assert len(blob_files(store.root)) == 1
    assert store.stats()["chunks"] == 1


def test_put_many_dedupes_and_keeps_order(store):
    a, b = rand(1000, 3), rand(1000, 4)
    ha, _ = store.put(a)
    out = store.put_many([b, (a, ha), b, memoryview(b"xyz")])
    hb, hx = chunk_hash(b), chunk_hash(b"xyz")
    assert out == [(hb, True), (ha, False), (hb, False), (hx, True)]
    assert all(store.get(h) for h in (ha, hb)) and store.get(hx) == b"xyz"
    assert len(blob_files(store.root)) == 3


def test_frames_travel_as_stored(store, tmp_path):
    data = b"meshrender " * 5000 + rand(3000, 9)
    h, _ = store.put(data)
    frame, raw = store.get_frame(h)
    assert raw == len(data) and frame == store.blob_path(h).read_bytes()
    with ChunkStore(tmp_path / "other") as other:  # a peer keeps the frame it got as its blob
        assert other.put(data, expect_hash=h, frame=frame) == (h, True)
        assert other.blob_path(h).read_bytes() == frame and other.get(h) == data
        # a frame that does not record the data's size is not kept: the store compresses anew
        bare = zstandard.ZstdCompressor(write_content_size=False).compress(b"xyz" * 100)
        hx, _ = other.put(b"xyz" * 100, frame=bare)
        assert zstandard.frame_content_size(other.blob_path(hx).read_bytes()) == 300
        assert other.put(b"q" * 10, frame=b"not zstd")[1] and other.get(chunk_hash(b"q" * 10)) == b"q" * 10
    store.blob_path(h).write_bytes(zstandard.ZstdCompressor().compress(b"x" * len(data)))
    with pytest.raises(CorruptChunkError):  # checked before it is sent anywhere
        store.get_frame(h)


def test_serving_a_frame_checks_its_own_hash_and_still_catches_rot(store):
    """get_frame checks a blob by the hash it had when written (no decompression): a bit flipped
    on disk since is still caught, quarantined, and never sent."""
    data = b"frame hash " * 4000 + rand(2000, 21)
    h, _ = store.put(data)
    (frame_hash,) = store._conn.execute("SELECT frame_hash FROM chunks WHERE hash = ?", (h,)).fetchone()
    assert frame_hash is not None and len(frame_hash) == 32
    assert store.get_frame(h) == (store.blob_path(h).read_bytes(), len(data))
    flip_bit(store.blob_path(h))  # same size: only a hash can tell
    with pytest.raises(CorruptChunkError) as ei:
        store.get_frame(h)
    assert Path(ei.value.path).parent == store.root / "quarantine" and not store.has(h)


def test_a_version_1_store_opens_and_its_rows_keep_the_full_check(tmp_path):
    root = tmp_path / "old"
    data, other = rand(30_000, 22), b"older row " * 3000
    with ChunkStore(root) as s:
        h, _ = s.put(data)
        h2, _ = s.put(other)
    db = sqlite3.connect(root / "index.sqlite3")  # as a version 1 store wrote it: no frame hashes
    db.execute("ALTER TABLE chunks DROP COLUMN frame_hash")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with ChunkStore(root) as s:
        assert s.get_frame(h) == (s.blob_path(h).read_bytes(), len(data))
        (fh,) = s._conn.execute("SELECT frame_hash FROM chunks WHERE hash = ?", (h,)).fetchone()
        assert fh is None  # an old row: checked by decompressing, as before
        flip_bit(s.blob_path(h2))
        with pytest.raises(CorruptChunkError):
            s.get_frame(h2)
        assert s.put(b"new row") and s.get_frame(chunk_hash(b"new row"))[1] == 7


def test_expect_hash_mismatch_stores_nothing(store):
    data, other = rand(5000, 5), rand(5000, 6)
    with pytest.raises(CorruptChunkError) as ei:
        store.put(data, expect_hash=chunk_hash(other))
    assert ei.value.hash == chunk_hash(other) and chunk_hash(data) in str(ei.value)
    assert not store.has(chunk_hash(data)) and not store.has(chunk_hash(other))
    assert blob_files(store.root) == [] and tmp_part_files(store.root) == []
    assert store.put(data, expect_hash=chunk_hash(data)) == (chunk_hash(data), True)


def test_put_many_is_all_or_nothing(store):
    good = [rand(3000, i) for i in range(4)]
    bad = (rand(3000, 99), chunk_hash(b"something else"))
    with pytest.raises(CorruptChunkError):
        store.put_many([good[0], good[1], bad, good[2]])
    assert store.missing(chunk_hash(g) for g in good[:3]) == [chunk_hash(g) for g in good[:3]]
    assert blob_files(store.root) == [] and tmp_part_files(store.root) == []
    with pytest.raises(StoreError, match="limit"):
        store.put_many([good[3], b"\0" * (CHUNK_BYTES_MAX + 1)])
    assert not store.has(chunk_hash(good[3])) and blob_files(store.root) == []


def test_bad_arguments(store):
    with pytest.raises(StoreError, match="over the"):
        store.put(b"\0" * (CHUNK_BYTES_MAX + 1))
    assert blob_files(store.root) == []
    with pytest.raises(ValueError):
        store.get("not-a-hash")
    with pytest.raises(ValueError):
        store.put(b"x", expect_hash="ABC")


def test_get_missing(store):
    h = chunk_hash(b"never stored")
    with pytest.raises(MissingChunkError) as ei:
        store.get(h)
    assert ei.value.hash == h and h in str(ei.value)


def test_missing_keeps_order_without_duplicates(store):
    hs = [store.put(rand(100, i))[0] for i in range(3)]
    absent = [chunk_hash(bytes([i])) for i in range(3)]
    asked = [absent[2], hs[0], absent[0], absent[2], hs[1], absent[1], absent[0]]
    assert store.missing(asked) == [absent[2], absent[0], absent[1]]
    assert store.missing([]) == []


def test_reopen_keeps_everything(tmp_path, clock):
    root = tmp_path / "s"
    with ChunkStore(root, clock=clock) as s:
        h, _ = s.put(rand(20_000, 7))
        m, _ = s.put(b"manifest")
        s.add_scene(m, [h], total_bytes=20_000, meta={"name": "bunny"})
        s.pin(m, "job:1")
    with ChunkStore(root, clock=clock) as s:
        assert s.get(h) == rand(20_000, 7)
        info = s.scene_info(m)
        assert info["meta"] == {"name": "bunny"} and info["pins"] == ["job:1"] and info["complete"]


def test_unusable_index_is_a_clear_error(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="index.sqlite3"):
        ChunkStore(root)
    assert list((root / "tmp").iterdir()) == []  # the failed open gave its temp folder back
    newer = tmp_path / "newer"
    with ChunkStore(newer):
        pass
    db = sqlite3.connect(newer / "index.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        ChunkStore(newer)


def test_two_instances_share_a_root(tmp_path):
    with ChunkStore(tmp_path / "s") as a, ChunkStore(tmp_path / "s") as b:
        h, new = a.put(b"shared chunk")
        assert new and b.get(h) == b"shared chunk"
        assert b.put(b"shared chunk") == (h, False)


def test_one_store_per_thread(store):
    errors = []

    def use():
        try:
            store.has(chunk_hash(b"x"))
        except Exception as e:  # noqa: BLE001 - recording what the other thread saw
            errors.append(e)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors and "thread" in str(errors[0]).lower()


# ---------------------------------------------------------------- corruption on disk


@pytest.mark.parametrize("kind", ["random", "compressible"])
def test_flipped_bit_is_quarantined_and_recoverable(store, kind):
    data = rand(40_000, 8) if kind == "random" else b"0123456789" * 4000
    other = rand(40_000, 9)
    h, _ = store.put(data)
    h2, _ = store.put(other)
    flip_bit(store.blob_path(h))
    with pytest.raises(CorruptChunkError) as ei:
        store.get(h)
    err = ei.value
    assert err.hash == h and err.path is not None
    qpath = Path(err.path)
    assert qpath.parent == store.root / "quarantine" and qpath.is_file()
    assert not store.blob_path(h).exists()
    assert not store.has(h) and store.missing([h, h2]) == [h]
    with pytest.raises(MissingChunkError):
        store.get(h)
    assert store.stats()["quarantined_files"] == 1
    assert store.put(data) == (h, True)  # the good bytes restore it
    assert store.get(h) == data

    flip_bit(store.blob_path(h2), at=store.blob_path(h2).stat().st_size - 3)
    report = store.verify()
    assert report["corrupt"] == [h2] and report["checked"] == 2 and report["ok"] == 1
    assert not store.has(h2) and store.has(h)
    assert store.stats()["quarantined_files"] == 2


def test_truncated_or_extended_blob_is_corrupt(store):
    h, _ = store.put(rand(10_000, 10))
    h2, _ = store.put(rand(10_000, 11))
    p = store.blob_path(h)
    p.write_bytes(p.read_bytes()[:-1])
    with store.blob_path(h2).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptChunkError, match="size"):
        store.get(h)
    assert store.verify()["corrupt"] == [h2]


def test_row_without_file_is_dropped(store):
    h, _ = store.put(rand(1000, 12))
    h2, _ = store.put(rand(1000, 13))
    store.blob_path(h).unlink()
    with pytest.raises(MissingChunkError, match="gone"):
        store.get(h)
    assert not store.has(h)
    store.blob_path(h2).unlink()
    report = store.verify()
    assert report["missing"] == [h2] and report["corrupt"] == [] and not store.has(h2)
    assert store.stats()["chunks"] == 0 and store.stats()["stored_bytes"] == 0
    # a put of a chunk whose row exists but whose file vanished rewrites it
    h3, _ = store.put(b"third")
    store.blob_path(h3).unlink()
    assert store.put(b"third") == (h3, True) and store.get(h3) == b"third"


def _set_content_size(frame: bytes, size: int) -> bytes:
    """Rewrite the content-size field of a zstd frame header (RFC 8878 section 3.1.1.1)."""
    fhd = frame[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    assert fcs_flag in (2, 3), "test frame must have a 4- or 8-byte content size field"
    field = struct.pack("<I", size) if fcs_flag == 2 else struct.pack("<Q", size)
    out = frame[:at] + field + frame[at + len(field) :]
    assert zstandard.frame_content_size(out) == size
    return out


def _pad_to(frame: bytes, n: int) -> bytes:
    """Append a zstd skippable frame so the blob is exactly n bytes (passes the file-size check)."""
    pad = n - len(frame) - 8
    assert pad >= 0
    return frame + struct.pack("<II", 0x184D2A50, pad) + b"\0" * pad


@pytest.mark.parametrize("variant", ["claims_more", "header_lies", "no_content_size"])
def test_zstd_bomb_refused_without_allocating(store, variant):
    data = rand(8000, 14)
    h, _ = store.put(data)
    stored = store.blob_path(h).stat().st_size
    huge = 64 << 20  # decompresses to 4x CHUNK_BYTES_MAX
    if variant == "no_content_size":
        frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * huge)
    else:
        frame = zstandard.ZstdCompressor().compress(b"\0" * huge)
        if variant == "header_lies":  # claims exactly the indexed size, holds 64 MiB
            frame = _set_content_size(frame, len(data))
    store.blob_path(h).write_bytes(_pad_to(frame, stored))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunkError):
            store.get(h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"refusing a bomb allocated {peak} bytes"
    assert not store.has(h) and (store.root / "quarantine").iterdir()


def test_orphan_bomb_refused_by_verify(store):
    frame = zstandard.ZstdCompressor().compress(b"\0" * (CHUNK_BYTES_MAX + 1))
    name = chunk_hash(b"\0" * (CHUNK_BYTES_MAX + 1))
    path = store.blob_path(name)
    path.parent.mkdir(parents=True)
    path.write_bytes(frame)
    tracemalloc.start()
    try:
        report = store.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["orphans_quarantined"] == 1 and report["orphans_recovered"] == 0
    assert peak < 4 << 20 and not path.exists() and not store.has(name)


def test_verify_adopts_good_orphans_and_quarantines_bad_ones(store):
    kept, _ = store.put(b"indexed")
    good = rand(30_000, 15)
    hg = chunk_hash(good)
    hb = chunk_hash(b"claimed")
    for h, payload in ((hg, good), (hb, b"not what the name says")):
        p = store.blob_path(h)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(zstandard.ZstdCompressor().compress(payload))  # as a crash before commit leaves it
    stray = store.root / "blobs" / "ab" / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("hi")
    assert not store.has(hg)
    report = store.verify()
    assert report["orphans_recovered"] == 1 and report["orphans_quarantined"] == 2
    assert report["corrupt"] == [] and report["missing"] == [] and report["ok"] == 2
    assert store.get(hg) == good and store.chunk_size(hg) == len(good)
    assert not store.has(hb) and not store.blob_path(hb).exists() and not stray.exists()
    assert store.get(kept) == b"indexed"
    assert store.stats()["stored_bytes"] == sum(p.stat().st_size for p in blob_files(store.root))


def test_quarantine_is_bounded(store, monkeypatch):
    monkeypatch.setattr(chunkstore, "QUARANTINE_FILES_MAX", 3)
    for i in range(5):
        h, _ = store.put(rand(500, 100 + i))
        flip_bit(store.blob_path(h))
        with pytest.raises(CorruptChunkError):
            store.get(h)
    assert store.stats()["quarantined_files"] == 3


# ---------------------------------------------------------------- quota, LRU and pins


def _sized(store, n, seed):
    """n random chunks of the same size; returns (hashes, stored bytes of one)."""
    hs = [store.put(rand(10_000, seed + i))[0] for i in range(n)]
    return hs, store.blob_path(hs[0]).stat().st_size


def test_lru_evicts_oldest_access_first(tmp_path, clock):
    with ChunkStore(tmp_path / "s", clock=clock) as probe:
        _, one = _sized(probe, 1, 500)
    quota = 3 * one + one // 2
    with ChunkStore(tmp_path / "q", quota_bytes=quota, clock=clock) as s:
        a, b, c = (s.put(rand(10_000, 20 + i))[0] for i in range(3))
        s.get(a)  # a is now more recent than b and c
        d, _ = s.put(rand(10_000, 23))
        assert [s.has(x) for x in (a, b, c, d)] == [True, False, True, True]
        s.put(rand(10_000, 20))[0]  # a again: a dedupe touch, nothing written, nothing evicted
        assert s.has(c)
        e, _ = s.put(rand(10_000, 24))
        assert [s.has(x) for x in (a, c, d, e)] == [True, False, True, True]
        assert s.stats()["stored_bytes"] <= quota
        assert sorted(p.name for p in blob_files(s.root)) == sorted(f"{x}.zst" for x in (a, d, e))


def test_lru_order_survives_reopen(tmp_path, clock):
    root = tmp_path / "s"
    with ChunkStore(root, clock=clock) as s:
        a, b = (s.put(rand(10_000, 30 + i))[0] for i in range(2))
        s.get(a)  # buffered touch, written at close
    with ChunkStore(root, clock=clock, quota_bytes=1) as s:
        s.quota_bytes = s.stats()["stored_bytes"] - 1
        s.enforce_quota()
        assert s.has(a) and not s.has(b)


def test_pinned_scene_never_evicted(tmp_path, clock):
    with ChunkStore(tmp_path / "s", clock=clock) as s:
        members = [s.put(rand(10_000, 40 + i))[0] for i in range(3)]
        manifest, _ = s.put(b"manifest of scene one")
        s.add_scene(manifest, members, total_bytes=30_000)
        s.pin(manifest, "job:a")
        s.pin(manifest, "job:b")
        s.quota_bytes = 0
        others = [s.put(rand(10_000, 50 + i))[0] for i in range(3)]  # each put evicts the one before
        assert s.enforce_quota() > 0
        assert all(s.has(h) for h in [*members, manifest])
        assert not any(s.has(h) for h in others)
        assert s.has_scene(manifest) and s.stats()["stored_bytes"] > s.quota_bytes
        s.unpin(manifest, "job:a")
        s.enforce_quota()
        assert s.has_scene(manifest)  # still pinned for job:b
        s.unpin(manifest, "job:b")
        assert s.scene_info(manifest)["pins"] == []
        assert s.enforce_quota() > 0
        assert s.stats()["chunks"] == 0 and not s.has_scene(manifest)


def test_chunk_shared_with_pinned_scene_is_kept(tmp_path, clock):
    with ChunkStore(tmp_path / "s", clock=clock, quota_bytes=0) as s:
        shared = s.put(rand(5000, 60))[0]
        m1, m2 = chunk_hash(b"m1"), chunk_hash(b"m2")
        s.add_scene(m1, [shared], total_bytes=5000)
        s.add_scene(m2, [shared], total_bytes=5000)
        s.pin(m2, "job")
        s.put(b"m1")
        s.enforce_quota()
        assert s.has(shared) and not s.has(m1)


def test_a_put_does_not_evict_what_it_stored(tmp_path, clock):
    with ChunkStore(tmp_path / "s", clock=clock, quota_bytes=0) as s:
        out = s.put_many([rand(1000, 70), rand(1000, 71)])
        assert all(s.has(h) for h, _ in out)
        h3, _ = s.put(rand(1000, 72))
        assert s.has(h3) and not any(s.has(h) for h, _ in out)


# ---------------------------------------------------------------- scenes and gc


def test_scene_membership_meta_and_completeness(store):
    a, b = store.put(rand(2000, 80))[0], store.put(rand(2000, 81))[0]
    c = chunk_hash(b"not fetched yet")
    manifest = store.put(b"the manifest")[0]
    meta = {"name": "Cornell box", "files": ["cornell.toml", "wall.obj"], "note": "déjà vu"}
    store.add_scene(manifest, [a, b, c, a], total_bytes=4015, meta=meta)
    info = store.scene_info(manifest)
    assert info["meta"] == meta and info["total_bytes"] == 4015
    assert info["chunks"] == 4 and info["chunks_present"] == 3 and not info["complete"]
    assert store.scene_chunks(manifest) == sorted([a, b, c, manifest])
    assert not store.has_scene(manifest)
    store.put(b"not fetched yet")
    assert store.has_scene(manifest) and store.scene_info(manifest)["complete"]
    assert store.stats()["complete_scenes"] == 1

    # losing one member (corruption) makes it incomplete; the good bytes make it whole again
    flip_bit(store.blob_path(b))
    with pytest.raises(CorruptChunkError):
        store.get(b)
    assert not store.has_scene(manifest)
    store.put(rand(2000, 81))
    assert store.has_scene(manifest)

    # re-adding touches it; meta only changes when given
    added = store.scene_info(manifest)["access_s"]
    store.add_scene(manifest, [a, b, c], total_bytes=4015)
    info = store.scene_info(manifest)
    assert info["meta"] == meta and info["access_s"] > added
    store.add_scene(manifest, [a, b, c], total_bytes=4015, meta={"name": "renamed"})
    assert store.scene_info(manifest)["meta"] == {"name": "renamed"}
    assert store.scene_ids() == [manifest] and store.stats()["scenes"] == 1


def test_scene_without_its_manifest_chunk_is_not_whole(store):
    a = store.put(b"only member")[0]
    manifest = chunk_hash(b"manifest not stored")
    store.add_scene(manifest, [a], total_bytes=11)
    assert not store.has_scene(manifest)
    store.put(b"manifest not stored")
    assert store.has_scene(manifest)


def test_has_scene_false_after_eviction(tmp_path, clock):
    with ChunkStore(tmp_path / "s", clock=clock) as s:
        members = [s.put(rand(10_000, 90 + i))[0] for i in range(3)]
        manifest = s.put(b"m")[0]
        s.add_scene(manifest, members, total_bytes=30_000)
        assert s.has_scene(manifest)
        for h in (manifest, *members[1:]):
            s.get(h)  # members[0] is now least recent
        s.quota_bytes = s.stats()["stored_bytes"] - 1
        s.enforce_quota()
        assert not s.has(members[0]) and not s.has_scene(manifest)
        assert s.scene_info(manifest)["chunks_present"] == 3


def test_pin_and_scene_errors(store):
    unknown = chunk_hash(b"unknown scene")
    with pytest.raises(StoreError, match="add_scene first"):
        store.pin(unknown, "job:1")
    assert store.scene_info(unknown) is None and not store.has_scene(unknown)
    m = store.put(b"m")[0]
    store.add_scene(m, [], total_bytes=1)
    store.pin(m, "job:1")
    with pytest.raises(ValueError):
        store.pin(m, "")
    with pytest.raises(StoreError, match="pinned"):
        store.remove_scene(m)
    store.unpin(m, "job:1")
    store.unpin(m, "job:1")  # idempotent
    assert store.remove_scene(m) and store.scene_ids() == [] and store.has(m)
    with pytest.raises(StoreError, match="limit"):
        store.add_scene(m, [], total_bytes=1, meta={"x": "y" * (65 << 10)})
    with pytest.raises(ValueError):
        store.add_scene(m, ["nope"], total_bytes=1)


def test_gc_removes_only_unreferenced(store, clock):
    member = store.put(rand(3000, 110))[0]
    loose = store.put(rand(3000, 111))[0]
    m = store.put(b"manifest")[0]
    store.add_scene(m, [member], total_bytes=3000)
    fresh = store.put(rand(3000, 112))[0]
    clock.t += 10_000  # past the grace period for everything above...
    newest = store.put(rand(3000, 113))[0]  # ...but not this one
    report = store.gc()
    assert report["unreferenced_chunks_removed"] == 2 and report["bytes_freed"] > 6000
    assert store.has(member) and store.has(m) and store.has(newest)
    assert not store.has(loose) and not store.has(fresh)
    assert not store.blob_path(loose).exists()
    assert store.gc(grace_s=0)["unreferenced_chunks_removed"] == 1 and not store.has(newest)
    assert store.has_scene(m)
    store.remove_scene(m)
    assert store.gc(grace_s=0)["unreferenced_chunks_removed"] == 2
    assert blob_files(store.root) == [] and store.stats()["stored_bytes"] == 0


def test_leftover_temp_files_removed_but_not_a_live_stores(tmp_path):
    root = tmp_path / "s"
    with ChunkStore(root):
        pass
    dead = root / "tmp" / "4242-deadbeef"  # a crashed writer: lock file free, a half-written blob
    dead.mkdir()
    (dead / "abc.1.part").write_bytes(b"torn")
    (root / "tmp" / "4242-deadbeef.lock").touch()
    (root / "tmp" / "stray.part").write_bytes(b"x")
    lockless = root / "tmp" / "99-cafe"
    lockless.mkdir()
    (lockless / "x.part").write_bytes(b"y")
    with ChunkStore(root) as live:
        live_tmp = sorted((root / "tmp").iterdir())
        assert len(live_tmp) == 2  # only the live store's folder and lock
        (live._session / "inflight.part").write_bytes(b"being written")
        with ChunkStore(root) as other:
            assert (live._session / "inflight.part").exists()  # another open does not touch it
            assert other.gc()["tmp_files_removed"] == 0
            assert (live._session / "inflight.part").exists()
    assert list((root / "tmp").iterdir()) == []


# ---------------------------------------------------------------- a full disk


def _enospc_after(n_ok: int):
    """A _write_fully that lets n_ok writes through, then writes half a blob and fails."""
    real = chunkstore._write_fully
    calls = {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] <= n_ok:
            return real(fd, data)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_disk_full_names_the_problem_and_loses_nothing(store, monkeypatch):
    kept = {store.put(rand(20_000, 120 + i))[0]: rand(20_000, 120 + i) for i in range(3)}
    before = store.stats()
    monkeypatch.setattr(chunkstore, "_write_fully", _enospc_after(0))
    data = rand(20_000, 130)
    with pytest.raises(StoreError, match="no space left on device") as ei:
        store.put(data)
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.ENOSPC
    assert tmp_part_files(store.root) == [] and not store.has(chunk_hash(data))
    assert not store.blob_path(chunk_hash(data)).exists()
    assert store.stats() == before

    monkeypatch.setattr(chunkstore, "_write_fully", _enospc_after(2))
    batch = [rand(20_000, 140 + i) for i in range(4)]
    with pytest.raises(StoreError, match="no space left on device"):
        store.put_many(batch)
    assert store.missing(chunk_hash(b) for b in batch) == [chunk_hash(b) for b in batch]
    assert tmp_part_files(store.root) == [] and store.stats() == before

    monkeypatch.undo()
    for h, d in kept.items():
        assert store.get(h) == d
    assert store.put(data) == (chunk_hash(data), True) and store.get(chunk_hash(data)) == data
    assert store.verify()["corrupt"] == []


def test_disk_full_at_rename_rolls_back(store, monkeypatch):
    kept, _ = store.put(b"kept")

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(chunkstore.os, "replace", replace)
    with pytest.raises(StoreError, match="no space left on device"):
        store.put_many([b"one", b"two"])
    monkeypatch.undo()
    assert store.missing([chunk_hash(b"one"), chunk_hash(b"two")]) == [chunk_hash(b"one"), chunk_hash(b"two")]
    assert tmp_part_files(store.root) == [] and len(blob_files(store.root)) == 1
    assert store.get(kept) == b"kept" and store.put(b"one")[1]


def test_kept_chunks_survive_gc_and_quota_until_released(tmp_path):
    clock = Clock()
    with ChunkStore(tmp_path / "s", quota_bytes=20_000, clock=clock) as store:
        result = store.put(rand(8000, 120))[0]  # a unit result: no scene lists it
        store.keep("job:1", [result])
        clock.t += 10_000
        assert store.gc()["unreferenced_chunks_removed"] == 0 and store.has(result)
        for i in range(4):  # well over the quota: LRU evicts everything else first
            store.put(rand(8000, 121 + i))
        assert store.has(result)
        store.release("job:2")  # another reason: no effect
        assert store.gc(grace_s=0)["unreferenced_chunks_removed"] >= 1 and store.has(result)
        store.release("job:1")
        store.gc(grace_s=0)
        assert not store.has(result)
        with pytest.raises(ValueError):
            store.keep("", [result])
