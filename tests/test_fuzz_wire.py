"""Fuzzing every decoder that takes bytes from a peer: each must succeed or raise its documented
error, and stay within a CPU-time and memory budget, whatever the bytes.

Each target is a plain function of one `bytes` (so a coverage-guided fuzzer can drive it:
`bench/fuzz.py` runs `TARGETS` with atheris, or Hypothesis for longer). A target feeds the bytes
to the decoder the way the peer does and checks what comes out; an error the decoder documents
(`RemoteProtocolError`, `ManifestError`, ...) is a pass, anything else is a crash:

  frames        `FrameDecoder` over the bytes cut at seeded random points, then `end()`; whatever
                decodes piecewise decodes the same in one piece; `frame_length` on every header
  body          `decode_body`; a decoded message encodes and decodes back to itself
  gossip        `decode_gossip`, and back
  manifest      `decode_manifest` (with and without the scene id it must hash to)
  chunk_map     a `ChunkMap` off the wire handed to a fetching `SceneSwarm` (`on_maps`, `poll`)
  chunk_blob    a `Chunk`'s payload checked as the chunk writer does, and a blob read from disk as
                the store decodes it (zstd with a decompressed-size cap, then the hash)
  worker        a job link's frames from a coordinator into the worker's `WorkerJob`, as
                `work.serve_job` hands them over
  coordinator   a job link's frames from a worker into the `Coordinator`, as
                `coordinate.JobRun._handle` does: result blocks go through `check_result` first
  compiled      `CompiledScene.from_bytes`

The first bytes of some targets are not payload but a seed (where to cut, which flags): a fuzzer
mutates them like the rest. The Hypothesis tests below give each target pure random bytes and
structure-aware inputs: valid messages with fields set to edge values, streams of them cut
anywhere, then mutated (bytes flipped, inserted, dropped, repeated). The files under
tests/data/fuzz/wire/<target>/ are a small seed corpus, and the regressions found so far; each is
run through its target here. `TARGETS` (and `SEEDS`) are what bench/fuzz.py imports.
"""

from __future__ import annotations

import io
import math
import random
import time
import tracemalloc
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrender.compiled import CompiledScene
from meshrender.coordinate import check_result, encode_result
from meshrender.protocol import (
    CHUNK_WIRE_BYTES_MAX,
    CHUNKS_PER_SCENE_MAX,
    FRAME_BYTES_MAX,
    FRAME_HEADER,
    GOSSIP_BYTES_MAX,
    Beat,
    Chunk,
    ChunkMap,
    ChunkMapQuery,
    Error,
    FrameDecoder,
    Have,
    JobEnd,
    JobOffer,
    LeaseGrant,
    LeaseRefused,
    LeaseRevoke,
    Msg,
    NotFound,
    PeerAddr,
    Peers,
    RemoteProtocolError,
    Status,
    UnitDone,
    Want,
    decode_body,
    decode_gossip,
    encode_frame,
    encode_gossip,
    frame_length,
)
from meshrender.schedule import Coordinator, ScheduleConfig, WorkerJob
from meshrender.settings import RenderSettings
from meshrender.store.chunkstore import CHUNK_BYTES_MAX
from meshrender.store.hashing import chunk_hash
from meshrender.store.manifest import ManifestError, chunk_scene, decode_manifest
from meshrender.store.writer import _check as writer_check
from meshrender.swarm import SceneSwarm
from meshrender.units import WorkUnit, frame_units

SEEDS = Path(__file__).resolve().parent / "data" / "fuzz" / "wire"
CPU_S_MAX = 1.0  # CPU seconds one input may take in any decoder (wall time would count the load)
HEAP_SLACK_BYTES = 1 << 20  # Python heap beyond what a decoder is allowed to allocate

# ---------------------------------------------------------------------------- fixed context
# the job, scene and swarm the targets decode against: small, built once
SETTINGS = RenderSettings(width=32, height=16, spp=8, pass_spp=4, max_depth=4, bucket_px=16)
UNITS = frame_units(SETTINGS)  # 2 buckets x 2 passes
ORDER = [chunk_hash(bytes([i])) for i in range(37)]  # a scene of 37 chunks
SCENE_ID = chunk_hash(b"the fuzzed scene")
WORKER = "12D3KooWorker"


def _sums(unit: WorkUnit) -> bytes:
    return np.ones((unit.pass_count, unit.height, unit.width, 3), np.float32).tobytes()


def _counts(unit: WorkUnit) -> list[int]:
    return [SETTINGS.pass_range(k)[1] - SETTINGS.pass_range(k)[0] for k in unit.passes]


# ---------------------------------------------------------------------------- the targets


def fuzz_frames(data: bytes) -> None:
    """data[:2] seeds where the rest is cut into pieces; the rest is a byte stream from a peer."""
    cut = random.Random(data[:2])
    stream = data[2:]
    if len(stream) >= FRAME_HEADER.size:
        try:
            assert 0 <= frame_length(stream[: FRAME_HEADER.size]) <= FRAME_BYTES_MAX
        except RemoteProtocolError:
            pass
    pieces, i = [], 0
    while i < len(stream):
        n = cut.choice((1, 2, 3, 4, 5, 7, 16, 64, 1 << 12))
        pieces.append(stream[i : i + n])
        i += n
    got: list[Msg] = []
    dec = FrameDecoder()
    try:
        for piece in pieces:
            got += dec.feed(piece)
        dec.end()
    except RemoteProtocolError:
        return
    whole = FrameDecoder()
    assert whole.feed(stream) == got  # any split, the same messages
    whole.end()


def fuzz_body(data: bytes) -> None:
    try:
        msg = decode_body(data)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Msg)
    assert decode_body(encode_frame(msg)[FRAME_HEADER.size :]) == msg


def fuzz_gossip(data: bytes) -> None:
    try:
        msg = decode_gossip(data)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Status | Have) and len(data) <= GOSSIP_BYTES_MAX
    assert decode_gossip(encode_gossip(msg)) == msg


def fuzz_manifest(data: bytes) -> None:
    for scene_id in (None, chunk_hash(data)):
        try:
            m = decode_manifest(data, scene_id)
        except ManifestError:
            continue
        refs = m.unique_chunks()
        assert len(refs) <= len(m.chunk_refs()) and all(0 <= r.size for r in refs)


def fuzz_chunk_map(data: bytes) -> None:
    """A member's answer to `ChunkMapQuery`, handed to a fetch of the 37-chunk scene: a bad map
    comes back as (peer, reason), never as an exception."""
    try:
        msg = decode_body(data)
    except RemoteProtocolError:
        return
    if not isinstance(msg, ChunkMap):
        return
    try:
        bits = msg.held_bits(len(ORDER))
        assert 0 <= bits < 1 << len(ORDER)
    except RemoteProtocolError:
        pass
    wanted = [(h, 100) for h in ORDER[::2]]  # holding the odd ones already
    swarm = SceneSwarm(wanted, 0.0, scene_id=SCENE_ID, order=ORDER)
    swarm.on_maps({"12D3KooSource": ChunkMap(scene_id=SCENE_ID, count=0, whole=True, bits=b"")}, 0.0)
    bad = swarm.on_maps({"12D3KooPeer": msg}, 1.0)
    assert all(peer == "12D3KooPeer" and isinstance(why, str) for peer, why in bad)
    swarm.poll(2.0)
    m = swarm.chunk_map()
    assert m.held_bits(len(ORDER)) == sum(1 << i for i in range(1, len(ORDER), 2))


_dctx = zstandard.ZstdDecompressor()
_store = None


def _chunk_store():
    """One store (in a temporary folder) whose blob decoder the chunk_blob target calls."""
    global _store
    if _store is None:
        import atexit
        import shutil
        import tempfile

        from meshrender.store.chunkstore import ChunkStore

        root = tempfile.mkdtemp(prefix="fuzz-store-")
        atexit.register(shutil.rmtree, root, True)
        _store = ChunkStore(Path(root) / "store")
    return _store


class _Job:  # what store.writer hands its checker: a received Chunk's fields
    def __init__(self, h: str, frame: bytes, raw_size: int, zstd: bool):
        self.hash, self.frame, self.raw_size, self.zstd = h, frame, raw_size, zstd


def fuzz_chunk_blob(data: bytes) -> None:
    """data[0]: flags (1: zstd, 2: claim the hash of the payload decompressed, 4: no indexed
    size), data[1:5]: the announced raw size (modulo what a Chunk may announce), the rest: the
    payload (a Chunk's data, or a blob file's bytes). Nothing bigger than the announced size (or
    the chunk cap) is ever produced, and what is accepted is exactly the bytes named."""
    if len(data) < 5:
        return
    flags, payload = data[0], data[5:]
    raw_size = int.from_bytes(data[1:5], "big") % (CHUNK_WIRE_BYTES_MAX + 1)
    h = "0" * 64
    if flags & 2:
        try:
            # streamed: decompress() allocates whatever size a frame records, whatever the limit
            plain = _dctx.stream_reader(io.BytesIO(payload)).read(1 << 16) if flags & 1 else payload
            h = chunk_hash(plain)
        except zstandard.ZstdError:
            pass
    got = writer_check(_dctx, _Job(h, payload, raw_size, bool(flags & 1)))
    if got is not None:
        assert len(got) == raw_size and chunk_hash(got) == h
    raw = None if flags & 4 else raw_size
    data_or_none, problem = _chunk_store()._decode(h, payload, raw)
    if data_or_none is None:
        assert isinstance(problem, str) and problem
    else:
        assert chunk_hash(data_or_none) == h and len(data_or_none) <= CHUNK_BYTES_MAX
        assert raw is None or len(data_or_none) == raw


def _job_messages(data: bytes) -> list[Msg] | None:
    dec = FrameDecoder()
    try:
        msgs = dec.feed(data)
        dec.end()
    except RemoteProtocolError:
        return None
    return msgs


def fuzz_worker(data: bytes) -> None:
    """Frames a coordinator sends on a job link, into this peer's `WorkerJob` the way
    `work.serve_job`'s reader and driver hand them over; the worker "renders" each unit at once."""
    msgs = _job_messages(data)
    if not msgs:
        return
    offer, now = msgs[0], 1000.0
    if not isinstance(offer, JobOffer):
        return  # serve_job: RemoteProtocolError, the link is dropped
    job = WorkerJob(now)
    for msg in msgs[1:]:
        now += 0.25
        if isinstance(msg, JobEnd):
            return
        if isinstance(msg, LeaseGrant):
            job.on_lease(msg.lease_id, list(msg.units), now + msg.due_in_s, now)
        elif isinstance(msg, LeaseRevoke):
            job.on_revoke(msg.lease_id, now)
        else:
            return  # serve_job: RemoteProtocolError
        for action in job.poll(now):
            if hasattr(action, "unit"):  # RenderNext: rendered at once
                job.started(action.unit, now)
                job.progress(1, now)
                job.finished(action.unit, now)
        job.next_deadline()


def fuzz_coordinator(data: bytes) -> None:
    """Frames a worker sends on a job link, into the `Coordinator` of a 4-unit job, the way
    `coordinate.JobRun._handle` / `_on_unit` take them: a result block is checked (`check_result`)
    and digested before the scheduler sees it; a malformed one drops the worker."""
    msgs = _job_messages(data)
    if msgs is None:
        return
    now = 0.0
    coord = Coordinator(
        [(u, u.pixels * u.samples(SETTINGS), u.frame) for u in UNITS], now, config=ScheduleConfig(seed=1)
    )
    coord.add_worker(WORKER, now)
    coord.poll(now)
    for msg in msgs:
        now += 0.25
        if isinstance(msg, Beat):
            coord.on_heartbeat(
                WORKER, tuple(msg.lease_ids), now, samples_done=msg.samples_done, rendering=msg.rendering
            )
        elif isinstance(msg, UnitDone):
            if msg.unit not in coord:
                return  # dropped: a unit not in this job
            try:
                check_result(msg.unit, msg.sample_counts, msg.sums, SETTINGS)
            except ValueError:
                return  # dropped: a malformed result
            digest = chunk_hash(encode_result(msg.unit, msg.sample_counts, msg.sums))
            coord.on_result(WORKER, msg.lease_id, msg.unit, bytes.fromhex(digest), now)
        elif isinstance(msg, LeaseRefused):
            coord.on_refuse(WORKER, msg.lease_id, msg.reason, now)
        else:
            return  # dropped: not a worker's message
        coord.poll(now)
        coord.next_deadline()
        coord.statistics()


def fuzz_compiled(data: bytes) -> None:
    try:
        scene = CompiledScene.from_bytes(data)
    except (ValueError, msgspec.DecodeError):  # what from_bytes documents (tests/test_compiled.py)
        return
    assert CompiledScene.from_bytes(scene.to_bytes()).equals(scene)


TARGETS = {
    "frames": fuzz_frames,
    "body": fuzz_body,
    "gossip": fuzz_gossip,
    "manifest": fuzz_manifest,
    "chunk_map": fuzz_chunk_map,
    "chunk_blob": fuzz_chunk_blob,
    "worker": fuzz_worker,
    "coordinator": fuzz_coordinator,
    "compiled": fuzz_compiled,
}


def within_budget(
    target, data: bytes, *, heap_bytes_max: int | None = None, cpu_s_max: float = CPU_S_MAX
) -> None:
    """Run `target(data)`; fail if it took more than `cpu_s_max` of CPU, or (when given) grew the
    Python heap past `heap_bytes_max`."""
    cpu = time.process_time()
    if heap_bytes_max is not None:
        tracemalloc.start()
    try:
        target(data)
    finally:
        if heap_bytes_max is not None:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    spent = time.process_time() - cpu
    assert spent <= cpu_s_max, f"{target.__name__} took {spent:.2f} s of CPU on {len(data)} bytes"
    if heap_bytes_max is not None:
        assert peak <= heap_bytes_max, f"{target.__name__} allocated {peak:,} bytes on {len(data)} bytes"


# ---------------------------------------------------------------------------- strategies
HEX = "0123456789abcdef"
hashes = st.one_of(
    st.text(HEX, min_size=64, max_size=64),
    st.sampled_from([SCENE_ID, *ORDER[:3], "", "g" * 64, "0" * 63, "A" * 64]),
)
edge_ints = st.one_of(
    st.integers(-3, 70),
    st.sampled_from(
        [
            2**31 - 1,
            2**31,
            2**32,
            2**53,
            2**62,
            2**62 + 1,
            2**63 - 1,
            2**64 - 1,
            -(2**63),
            CHUNKS_PER_SCENE_MAX,
            CHUNKS_PER_SCENE_MAX + 1,
            FRAME_BYTES_MAX,
            16384,
            16385,
        ]
    ),
)
edge_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, 5e-324, math.inf])
)
short_text = st.one_of(st.text(max_size=20), st.text(min_size=390, max_size=420))
units = st.one_of(
    st.sampled_from(UNITS),
    st.builds(
        WorkUnit,
        frame=edge_ints,
        x0=edge_ints,
        y0=edge_ints,
        width=edge_ints,
        height=edge_ints,
        pass_index=edge_ints,
        pass_count=edge_ints,
    ),
)
lease_ids = st.one_of(st.integers(0, 4), edge_ints)


def _unit_done(unit, lease_id, counts, sums, seconds) -> UnitDone:
    return UnitDone(
        lease_id=lease_id, unit=unit, sample_counts=counts, sums=sums, seconds=seconds, backend="x86_64"
    )


@st.composite
def unit_dones(draw):
    unit = draw(units)
    good = unit in UNITS
    counts = _counts(unit) if good and draw(st.booleans()) else draw(st.lists(edge_ints, max_size=4))
    if good and draw(st.booleans()):
        sums = bytearray(_sums(unit))
        for _ in range(draw(st.integers(0, 3))):  # a NaN, an infinity, a negative value
            i = draw(st.integers(0, len(sums) // 4 - 1))
            sums[4 * i : 4 * i + 4] = draw(
                st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xbf"])
            )
        sums = bytes(sums)
    else:
        sums = draw(st.binary(max_size=64))
    return _unit_done(unit, draw(lease_ids), counts, sums, draw(edge_floats))


messages = st.one_of(
    st.builds(Want, hashes=st.lists(hashes, max_size=66)),
    st.builds(NotFound, hash=hashes),
    st.builds(ChunkMapQuery, scene_id=hashes),
    st.builds(Chunk, hash=hashes, raw_size=edge_ints, zstd=st.booleans(), data=st.binary(max_size=64)),
    st.builds(
        ChunkMap,
        scene_id=st.one_of(st.just(SCENE_ID), hashes),
        count=st.one_of(st.just(37), edge_ints),
        whole=st.booleans(),
        bits=st.binary(max_size=8),
    ),
    st.builds(Error, reason=short_text),
    st.builds(
        Peers,
        peers=st.lists(
            st.builds(PeerAddr, st.text(max_size=8), st.lists(st.text(max_size=8), max_size=9)), max_size=3
        ),
    ),
    st.builds(
        JobOffer,
        job_id=hashes,
        scene_id=hashes,
        settings=st.just(SETTINGS),
        backend=st.sampled_from(["cpu", "gpu", "tpu"]),
    ),
    st.builds(LeaseGrant, lease_id=lease_ids, units=st.lists(units, max_size=5), due_in_s=edge_floats),
    st.builds(LeaseRevoke, lease_id=lease_ids, reason=short_text),
    st.builds(JobEnd, reason=short_text),
    st.builds(
        Beat,
        lease_ids=st.lists(lease_ids, max_size=4),
        samples_done=edge_ints,
        rendering=st.booleans(),
        preparing=short_text,
    ),
    unit_dones(),
    st.builds(LeaseRefused, lease_id=lease_ids, reason=short_text),
)
gossip_messages = st.one_of(
    st.builds(
        Status,
        version=st.text(max_size=40),
        state=st.sampled_from(["idle", "busy", "gone"]),
        backend=st.text(max_size=8),
        fell_back=st.one_of(st.none(), st.booleans()),
        speed=st.one_of(st.none(), edge_floats),
        threads=edge_ints,
        free_mem=edge_ints,
        load=edge_floats,
        scenes=edge_ints,
        units=edge_ints,
    ),
    st.builds(Have, scene_ids=st.lists(hashes, max_size=102)),
)


def _encode(msg) -> bytes:
    return msgspec.msgpack.encode(msg)  # no bounds are checked on the way out: the decoder must


def _frame(msg) -> bytes:
    body = _encode(msg)
    return FRAME_HEADER.pack(len(body)) + body


@st.composite
def mutated(draw, valid: st.SearchStrategy[bytes]) -> bytes:
    """Valid bytes with a few mutations: a byte flipped or set to a msgpack edge marker, bytes
    inserted, a range dropped or repeated, a truncation."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "marker", "insert", "drop", "repeat", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "marker" and i < len(data):
            data[i] = draw(
                st.sampled_from(
                    [0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xC6, 0xCF, 0xD3, 0xDB, 0xDD, 0xDF, 0xFF]
                )
            )
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "drop":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "repeat":
            data[i:i] = data[i : i + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


frame_streams = st.builds(
    lambda seed, msgs: seed + b"".join(_frame(m) for m in msgs),
    st.binary(min_size=2, max_size=2),
    st.lists(messages, max_size=6),
)


@st.composite
def job_links(draw, *, from_coordinator: bool) -> bytes:
    if from_coordinator:
        first = [JobOffer(job_id=SCENE_ID, scene_id=SCENE_ID, settings=SETTINGS, backend="cpu")]
    else:
        first = [Beat(lease_ids=[1], samples_done=0, rendering=False)]
    good = [_unit_done(u, draw(st.integers(0, 3)), _counts(u), _sums(u), 0.5) for u in UNITS]
    rest = draw(st.lists(st.one_of(messages, st.sampled_from(good)), max_size=8))
    return b"".join(_frame(m) for m in first + rest)


@st.composite
def manifests(draw) -> bytes:
    from meshrender.store.manifest import ChunkRef, Manifest, Segment

    m = msgspec.msgpack.decode(_MANIFEST, type=Manifest)
    arrays = list(m.arrays)
    i = draw(st.integers(0, len(arrays) - 1))
    a = arrays[i]
    change = draw(st.sampled_from(["shape", "dtype", "size", "drop", "twice", "segments", "name", "version"]))
    if change == "shape":
        a = msgspec.structs.replace(a, shape=draw(st.lists(edge_ints, max_size=5)))
    elif change == "dtype":
        a = msgspec.structs.replace(a, dtype=draw(st.sampled_from(["<f8", ">f4", "|u1", "O", "<U9", ""])))
    elif change == "size" and a.segments and a.segments[0].chunks:
        ref = a.segments[0].chunks[0]
        seg = Segment(label="all", chunks=[ChunkRef(ref.hash, draw(edge_ints)), *a.segments[0].chunks[1:]])
        a = msgspec.structs.replace(a, segments=[seg, *a.segments[1:]])
    elif change == "segments":
        seg = Segment(
            label="x", chunks=[ChunkRef(h, draw(edge_ints)) for h in draw(st.lists(hashes, max_size=3))]
        )
        a = msgspec.structs.replace(a, segments=[*a.segments, seg] * draw(st.integers(0, 3)))
    elif change == "name":
        a = msgspec.structs.replace(
            a, name=draw(st.sampled_from(["", "positions", "vertices", "frames", "x" * 65]))
        )
    arrays[i] = a
    if change == "drop":
        del arrays[i]
    elif change == "twice":
        arrays.append(a)
    out = Manifest(version=m.version, format_version=m.format_version, settings=m.settings, arrays=arrays)
    if change == "version":
        out = msgspec.structs.replace(out, version=draw(edge_ints), format_version=draw(edge_ints))
    return _encode(out)


def _small_scene() -> CompiledScene:
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    return compile_scene(load_scene("cornell"))


_SCENE = _small_scene()
_MANIFEST = chunk_scene(_SCENE).manifest_bytes
_COMPILED = _SCENE.to_bytes()


@st.composite
def compiled_records(draw) -> bytes:
    from meshrender.compiled import ArrayRecord, SceneRecord

    rec = msgspec.msgpack.decode(_COMPILED, type=SceneRecord)
    name = draw(st.sampled_from(sorted(rec.arrays) + ["surprise"]))
    old = rec.arrays.get(name, ArrayRecord("float32", [1], b"\0" * 4))
    shape = draw(st.one_of(st.just(old.shape), st.lists(edge_ints, max_size=4)))
    dtype = draw(
        st.one_of(st.just(old.dtype), st.sampled_from(["float32", "int32", "uint8", "<f4", "O", "V8", ""]))
    )
    data = draw(st.one_of(st.just(old.data), st.binary(max_size=48)))
    arrays = {**rec.arrays, name: ArrayRecord(dtype, shape, data)}
    if draw(st.booleans()):
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    return _encode(
        msgspec.structs.replace(rec, arrays=arrays, version=draw(st.sampled_from([rec.version, 0, 2**40])))
    )


@st.composite
def chunk_blobs(draw) -> bytes:
    """Flags, a size and a zstd frame (recording its size or not, the size true or a lie, a bomb,
    several frames) or raw bytes."""
    kind = draw(st.sampled_from(["zstd", "nosize", "bomb", "frames", "raw", "garbage"]))
    body = draw(st.binary(max_size=256))
    if kind == "zstd":
        payload = zstandard.ZstdCompressor(level=1).compress(body)
    elif kind == "nosize":
        payload = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(body)
    elif kind == "bomb":  # a few KiB that expand past the chunk cap, with or without saying so
        size = draw(st.sampled_from([CHUNK_BYTES_MAX + 1, 4 * CHUNK_BYTES_MAX]))
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=draw(st.booleans()))
        payload = cctx.compress(bytes(size))
    elif kind == "frames":
        payload = b"".join(
            zstandard.ZstdCompressor(level=1).compress(body) for _ in range(draw(st.integers(2, 3)))
        )
    else:
        payload = body
    if kind != "raw":
        payload = draw(st.one_of(st.just(payload), mutated(st.just(payload))))
    flags = (kind != "raw") | draw(st.sampled_from([0, 2])) | draw(st.sampled_from([0, 4]))
    size = draw(st.one_of(st.just(len(body)), st.integers(0, CHUNK_WIRE_BYTES_MAX), st.just(CHUNK_BYTES_MAX)))
    return bytes([flags]) + size.to_bytes(4, "big") + payload


STRUCTURED = {
    "frames": st.one_of(frame_streams, mutated(frame_streams)),
    "body": st.one_of(messages.map(_encode), mutated(messages.map(_encode))),
    "gossip": st.one_of(gossip_messages.map(_encode), mutated(gossip_messages.map(_encode))),
    "manifest": st.one_of(manifests(), mutated(st.just(_MANIFEST))),
    "chunk_map": st.one_of(
        mutated(st.just(_encode(ChunkMap.partial(SCENE_ID, len(ORDER), 0b10110)))),
        st.builds(
            lambda c, b, w: _encode(ChunkMap(scene_id=SCENE_ID, count=c, whole=w, bits=b)),
            st.one_of(st.just(37), edge_ints),
            st.binary(max_size=6),
            st.booleans(),
        ),
    ),
    "chunk_blob": chunk_blobs(),
    "worker": st.one_of(job_links(from_coordinator=True), mutated(job_links(from_coordinator=True))),
    "coordinator": st.one_of(job_links(from_coordinator=False), mutated(job_links(from_coordinator=False))),
    "compiled": st.one_of(compiled_records(), mutated(st.just(_COMPILED))),
}
# the heap a target may grow by, beyond its input: a chunk blob may decompress to one chunk
HEAP_BYTES_MAX = {"chunk_blob": CHUNK_BYTES_MAX + (1 << 16)}

# ---------------------------------------------------------------------------- the tests
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes_only_raise_documented_errors(name):
    target = TARGETS[name]

    @FUZZ
    @given(st.binary(max_size=512))
    def run(data):
        within_budget(target, data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_structured_inputs_only_raise_documented_errors(name):
    target, budget = TARGETS[name], HEAP_BYTES_MAX.get(name)

    @FUZZ
    @given(STRUCTURED[name])
    def run(data):
        within_budget(
            target, data, heap_bytes_max=None if budget is None else budget + len(data) + HEAP_SLACK_BYTES
        )

    run()


def seed_files() -> list[tuple[str, Path]]:
    return sorted((p.parent.name, p) for p in SEEDS.glob("*/*") if p.is_file() and p.parent.name in TARGETS)


@pytest.mark.parametrize("name,path", seed_files(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_seed_corpus_and_regressions(name, path):
    within_budget(
        TARGETS[name], path.read_bytes(), heap_bytes_max=HEAP_BYTES_MAX.get(name, 64 << 20) + (4 << 20)
    )


def test_every_target_has_a_seed_corpus():
    assert {name for name, _ in seed_files()} == set(TARGETS)


def test_a_worker_given_a_lease_due_in_infinite_seconds_refuses_the_frame():
    """Found by fuzzing: `due_in_s` took any non-negative float, and a lease due in infinite
    seconds made the worker's core raise (a deadline must be finite), ending its job link with a
    traceback. The frame is now refused as malformed, like any other out-of-bounds field."""
    lease = LeaseGrant(lease_id=1, units=[UNITS[0]], due_in_s=math.inf)
    with pytest.raises(RemoteProtocolError, match="due_in_s"):
        decode_body(_encode(lease))


def test_budgets_are_enforced():
    """The budget checks themselves can fail: a target that spins or allocates is caught."""

    def spin(data):
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass

    def hog(data):
        return bytearray(4 << 20)

    with pytest.raises(AssertionError, match="CPU"):
        within_budget(spin, b"", cpu_s_max=0.1)
    with pytest.raises(AssertionError, match="allocated"):
        within_budget(hog, b"", heap_bytes_max=1 << 20)
