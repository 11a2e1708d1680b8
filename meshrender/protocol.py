"""Wire messages, frames and the party handshake: bytes and events in, messages and verdicts out.

Frames. Every message is a msgpack body behind a 4-byte big-endian length. The length is checked
against FRAME_BYTES_MAX before a byte of the body is buffered, so a peer cannot make us allocate
more; a stream that ends inside a frame is an error, never a short message (a SIGKILLed peer can
look like a clean EOF on yamux). `FrameDecoder` does this over any byte source.

Messages are one frozen, tagged union (`Msg`); every field that comes off the wire is bounded.

Party handshake. A party is a name and a secret. Its messages (Hello, HelloReply, HelloFinish,
HelloConfirm, Refused) are here; the state machine, a SPAKE2 exchange bound to both Noise peer
IDs that gives an outsider nothing to test a guess of the secret against, is
meshrender.peer.membership. `party_tag` is the public label of a party (a hash of its name).
"""

from __future__ import annotations

import struct
from typing import Annotated, Literal

import blake3
import msgspec
from msgspec import Meta

from .settings import RenderSettings
from .units import WorkUnit

PROTOCOL_VERSION = 2  # 2: the SPAKE2 handshake (1 sent a keyed proof to anyone who asked)
FRAME_HEADER = struct.Struct(">I")
CHUNK_WIRE_BYTES_MAX = 16 << 20  # one stored chunk (the store's CHUNK_BYTES_MAX), compressed or not
FRAME_BYTES_MAX = CHUNK_WIRE_BYTES_MAX + (64 << 10)  # a chunk plus its envelope
WANT_HASHES_MAX = 64  # hashes in one request: bounds the work one message can ask for
CHUNKS_PER_SCENE_MAX = 1 << 20  # a manifest lists no more chunks (the exchange's CHUNKS_MAX)
SPAKE_MSG_BYTES = 33  # spake2's message: a side byte and an Ed25519 group element
MAC_BYTES = 32
REASON_CHARS_MAX = 400

Hash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
SpakeMsg = Annotated[bytes, Meta(min_length=SPAKE_MSG_BYTES, max_length=SPAKE_MSG_BYTES)]
Mac = Annotated[bytes, Meta(min_length=MAC_BYTES, max_length=MAC_BYTES)]
Reason = Annotated[str, Meta(max_length=REASON_CHARS_MAX)]


class LocalProtocolError(Exception):
    """We used the protocol wrongly: a bug here, not the peer's fault."""


class RemoteProtocolError(Exception):
    """The peer sent something malformed, oversized, out of turn or unproven: drop the peer."""


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    pass


class Hello(Msg, tag="hello"):
    """The dialer's first message: which party, and its SPAKE2 message (side A)."""

    version: Annotated[int, Meta(ge=0, le=1 << 16)]
    party_tag: Hash  # which party the dialer means (public: a hash of the name)
    spake: SpakeMsg


class HelloReply(Msg, tag="hello-reply"):
    """The listener's SPAKE2 message (side B): nothing keyed, the dialer has proven nothing yet."""

    spake: SpakeMsg


class HelloFinish(Msg, tag="hello-finish"):
    """The dialer's key confirmation."""

    confirm: Mac


class HelloConfirm(Msg, tag="hello-confirm"):
    """The listener's key confirmation, sent only once the dialer's has checked out."""

    confirm: Mac


class Refused(Msg, tag="refused"):
    reason: Reason


PEERS_MAX = 256  # members listed in one Peers message: a LAN party is far smaller
ADDRS_PER_PEER_MAX = 8
TEXT_CHARS_MAX = 256


class PeerAddr(msgspec.Struct, frozen=True, array_like=True):
    peer_id: Annotated[str, Meta(max_length=TEXT_CHARS_MAX)]
    addrs: Annotated[
        list[Annotated[str, Meta(max_length=TEXT_CHARS_MAX)]], Meta(max_length=ADDRS_PER_PEER_MAX)
    ]


class Peers(Msg, tag="peers"):
    """After a handshake: the sender itself first, then the members it knows."""

    peers: Annotated[list[PeerAddr], Meta(max_length=PEERS_MAX)]


class Want(Msg, tag="want"):
    hashes: Annotated[list[Hash], Meta(min_length=1, max_length=WANT_HASHES_MAX)]


class Chunk(Msg, tag="chunk"):
    hash: Hash
    raw_size: Annotated[int, Meta(ge=0, le=CHUNK_WIRE_BYTES_MAX)]
    zstd: bool  # data is one zstd frame of raw_size bytes
    data: Annotated[bytes, Meta(max_length=CHUNK_WIRE_BYTES_MAX)]


class NotFound(Msg, tag="not-found"):
    hash: Hash


class ChunkMapQuery(Msg, tag="map?"):
    """Which chunks of this scene do you hold?"""

    scene_id: Hash


class ChunkMap(Msg, tag="map"):
    """The answer: bit i (LSB first) of `bits` says chunk i of the scene's chunk order is held.

    The order is the manifest's distinct chunks in order of first reference
    (`Manifest.unique_chunks`). `whole` means the sender holds the scene whole (then `count` is 0
    and there are no bits); otherwise `count` 0 means it does not even hold the manifest."""

    scene_id: Hash
    count: Annotated[int, Meta(ge=0, le=CHUNKS_PER_SCENE_MAX)]
    whole: bool
    bits: Annotated[bytes, Meta(max_length=CHUNKS_PER_SCENE_MAX // 8)]

    @classmethod
    def partial(cls, scene_id: str, count: int, held: int) -> ChunkMap:
        """The map of a scene of `count` chunks of which those whose bit is set in `held` are held."""
        bits = held.to_bytes((count + 7) // 8, "little")
        return cls(scene_id=scene_id, count=count, whole=False, bits=bits)

    def held_bits(self, count: int) -> int:
        """The held chunks as an int, bit i for chunk i, checked against our own chunk count (a
        whole map is every bit)."""
        if self.whole:
            return (1 << count) - 1
        if self.count != count or len(self.bits) != (count + 7) // 8:
            raise RemoteProtocolError(
                f"chunk map of {self.count} chunks in {len(self.bits)} bytes for a scene of {count}"
            )
        bits = int.from_bytes(self.bits, "little")
        if bits >> count:
            raise RemoteProtocolError("chunk map sets bits past the scene's last chunk")
        return bits


class Error(Msg, tag="error"):
    reason: Reason


# ---------------------------------------------------------------------------- jobs
# One stream per (coordinator, worker, job) on /meshrender/jobs/1. The coordinator sends JobOffer
# first, then leases, revokes and at last JobEnd (finished or cancelled). The worker sends
# heartbeats while it holds a lease, one UnitDone per unit, LeaseRefused when it cannot render.

LEASE_UNITS_WIRE_MAX = 4096  # schedule.LEASE_UNITS_MAX: one lease is one message
LEASE_IDS_WIRE_MAX = 1024  # leases a heartbeat names (a worker holds a few)
LEASE_DUE_S_MAX = 7 * 86400.0  # a lease due in over a week is no deadline (and infinity broke the worker)


class JobOffer(Msg, tag="job"):
    job_id: Hash
    scene_id: Hash
    settings: RenderSettings
    backend: Literal["cpu", "gpu"]  # the one backend class this job renders on (bit-identical results)
    interactive: bool = False  # a streaming session's: its units go before queued jobs' at the worker


class LeaseGrant(Msg, tag="lease"):
    lease_id: Annotated[int, Meta(ge=0, le=1 << 62)]
    units: Annotated[list[WorkUnit], Meta(min_length=1, max_length=LEASE_UNITS_WIRE_MAX)]
    due_in_s: Annotated[float, Meta(ge=0, le=LEASE_DUE_S_MAX)]  # the coordinator enforces it on its own clock


class LeaseRevoke(Msg, tag="revoke"):
    lease_id: Annotated[int, Meta(ge=0, le=1 << 62)]
    reason: Reason


class JobEnd(Msg, tag="job-end"):
    reason: Reason  # "done", "cancelled", ...: stop everything of this job now
    # a streaming session's units are one pass of one bucket (milliseconds): the one in the kernel
    # may finish rather than the render process be killed (and restarted, seconds) to stop it
    finish_unit: bool = False


class Beat(Msg, tag="beat"):
    lease_ids: Annotated[list[Annotated[int, Meta(ge=0, le=1 << 62)]], Meta(max_length=LEASE_IDS_WIRE_MAX)]
    samples_done: Annotated[int, Meta(ge=0)]
    rendering: bool
    preparing: Reason = ""  # what it does instead of rendering ("fetching the scene", ...)


class UnitDone(Msg, tag="unit"):
    lease_id: Annotated[int, Meta(ge=0, le=1 << 62)]
    unit: WorkUnit
    sample_counts: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(max_length=1 << 20)]
    sums: Annotated[bytes, Meta(max_length=CHUNK_WIRE_BYTES_MAX)]  # float32 (passes, h, w, 3), C order
    seconds: Annotated[float, Meta(ge=0)]
    backend: Label
    # the denoiser's albedo and normal sums, float32 (passes, h, w, 6); b"" from a peer without them
    aov_sums: Annotated[bytes, Meta(max_length=CHUNK_WIRE_BYTES_MAX)] = b""


class LeaseRefused(Msg, tag="refuse"):
    lease_id: Annotated[int, Meta(ge=0, le=1 << 62)]
    reason: Reason


# ---------------------------------------------------------------------------- control
# /meshrender/control/1: a party member asks a peer about its queue, one request per stream. The
# answer is a JobList (or Error); FetchResults is answered by a JobList naming the job, then the
# job's result files in ResultPiece messages, the last piece of the last file marked `last`.

JOBS_LISTED_MAX = 1000  # jobs in one listing: the queue's running and queued ones, newest finished
RESULT_PIECE_BYTES = 4 << 20  # a result file travels in pieces of this size (an 8K EXR is ~400 MB)
PRIORITY_WIRE = Meta(ge=-1000, le=1000)  # jobs.PRIORITY_MIN..PRIORITY_MAX
JobPrefix = Annotated[str, Meta(pattern=r"^[0-9a-f]{4,64}$")]  # a job id or a prefix of >= 4 digits
FileName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]  # no folders, no dot-files
Frame = Annotated[int, Meta(ge=0, le=(1 << 31) - 1)]


class SubmitJob(Msg, tag="submit"):
    """Queue this job; the scene is fetched from the party (the submitter holds it) first."""

    scene_id: Hash
    settings: RenderSettings
    first_frame: Frame = 0
    last_frame: Frame = 0
    backend: Literal["any", "cpu", "gpu"] = "any"
    priority: Annotated[int, PRIORITY_WIRE] = 0


class ListJobs(Msg, tag="jobs?"):
    pass


class CancelJob(Msg, tag="cancel"):
    job: JobPrefix


class SetPriority(Msg, tag="priority"):
    job: JobPrefix
    priority: Annotated[int, PRIORITY_WIRE]


class FetchResults(Msg, tag="results?"):
    job: JobPrefix


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: Hash
    scene_id: Hash
    state: Label
    priority: Annotated[int, PRIORITY_WIRE]
    first_frame: Frame
    last_frame: Frame
    units_done: Annotated[int, Meta(ge=0)]
    units_total: Annotated[int, Meta(ge=0)]
    submitted_s: float
    started_s: float | None
    finished_s: float | None
    error: Reason | None
    outputs: Annotated[list[FileName], Meta(max_length=2 * 100_000 + 1)]  # file names, no folders


class JobList(Msg, tag="jobs"):
    jobs: Annotated[list[JobInfo], Meta(max_length=JOBS_LISTED_MAX)]


class ResultPiece(Msg, tag="file"):
    name: FileName
    data: Annotated[bytes, Meta(max_length=RESULT_PIECE_BYTES)]
    end_of_file: bool
    last: bool  # the end of the last file


AnyMsg = (
    Hello
    | HelloReply
    | HelloFinish
    | HelloConfirm
    | Refused
    | Peers
    | Want
    | Chunk
    | NotFound
    | ChunkMapQuery
    | ChunkMap
    | Error
    | JobOffer
    | LeaseGrant
    | LeaseRevoke
    | JobEnd
    | Beat
    | UnitDone
    | LeaseRefused
    | SubmitJob
    | ListJobs
    | CancelJob
    | SetPriority
    | FetchResults
    | JobList
    | ResultPiece
)

# ---------------------------------------------------------------------------- gossip

GOSSIP_BYTES_MAX = 8 << 10  # one gossip message; gossipsub itself drops anything over 1 MiB silently
HAVE_SCENES_MAX = 100  # scene ids in one have-announcement (a peer holding more sends its newest)
Label = Annotated[str, Meta(max_length=32)]


# A gossip message's publish time on its sender's wall clock, in ms (0: not told, from an older
# peer). It orders one sender's messages: GossipSub hands a peer that just joined the messages
# still in its neighbours' caches, a few seconds' worth, in no set order, so an old Status
# ("compiling") can arrive after the newer one ("ready"). meshrender.peer.presence keeps the newest.
SentMs = Annotated[int, Meta(ge=0, le=2**53)]


class Status(Msg, tag="status"):
    """What a peer tells the party about itself, every few seconds."""

    version: Label
    state: Literal["idle", "busy"]
    backend: Label  # what renders here: "auto" until the renderer has started, then its arch
    fell_back: bool | None  # asked for a GPU and got the CPU; None: not known yet
    speed: Annotated[float, Meta(ge=0)] | None  # measured Msamples/s; None: not measured yet
    threads: Annotated[int, Meta(ge=1, le=1 << 16)]
    free_mem: Annotated[int, Meta(ge=0)]  # bytes available
    load: Annotated[float, Meta(ge=0)]  # 1-minute load average
    scenes: Annotated[int, Meta(ge=0)]  # held whole
    gpu: bool | None = None  # renders on a GPU; None: the renderer has not started yet
    renders: bool = True  # takes leases (a `store fetch` or `submit` client does not)
    units: Annotated[int, Meta(ge=0)] = 0  # units rendered since the peer started
    reason: Reason = ""  # why it renders where it does (why it fell back to the CPU)
    activity: Label = ""  # "rendering", "fetching" (a scene's chunks), "" when idle: finer than `state`
    # the render process: "starting", "compiling", "ready", "failed", "stopped"; "" when it does not
    # render. A coordinator offers a job only to a member whose renderer is ready (or says nothing).
    renderer: Label = ""
    renderer_note: Reason = ""  # in words: "renderer compiling kernels (first run, cold cache), 40 s so far"
    fallback: Label = ""  # why it fell back to the CPU, for programs: "no-gpu", "gpu-oom" (out of GPU memory)
    sent_ms: SentMs = 0  # the sender's clock when it published this (see SentMs)


class Have(Msg, tag="have"):
    """Scenes the sender holds whole (its newest, when it holds more than HAVE_SCENES_MAX)."""

    scene_ids: Annotated[list[Hash], Meta(max_length=HAVE_SCENES_MAX)]
    sent_ms: SentMs = 0


GossipMsg = Status | Have

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMsg)
_gossip_decoder = msgspec.msgpack.Decoder(GossipMsg)


def encode_gossip(msg: Status | Have) -> bytes:
    body = _encoder.encode(msg)
    if len(body) > GOSSIP_BYTES_MAX:
        raise LocalProtocolError(f"{type(msg).__name__} of {len(body)} bytes exceeds {GOSSIP_BYTES_MAX}")
    return body


def decode_gossip(body: bytes) -> Status | Have:
    if len(body) > GOSSIP_BYTES_MAX:
        raise RemoteProtocolError(f"gossip message of {len(body)} bytes, limit {GOSSIP_BYTES_MAX}")
    try:
        return _gossip_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"malformed gossip: {exc}") from None


def encode_frame(msg: Msg) -> bytes:
    body = _encoder.encode(msg)
    if len(body) > FRAME_BYTES_MAX:
        raise LocalProtocolError(f"{type(msg).__name__} of {len(body)} bytes exceeds the frame limit")
    return FRAME_HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Msg:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"malformed message: {exc}") from None


def frame_length(header: bytes) -> int:
    """The body length a frame header announces; refused beyond FRAME_BYTES_MAX."""
    (n,) = FRAME_HEADER.unpack(header)
    if n > FRAME_BYTES_MAX:
        raise RemoteProtocolError(f"frame of {n} bytes announced, limit {FRAME_BYTES_MAX}")
    return n


class FrameDecoder:
    """Bytes in (any split), whole messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need: int | None = None
        self.eof = False

    def feed(self, data: bytes) -> list[Msg]:
        if self.eof:
            raise LocalProtocolError("data fed after end of stream")
        self._buf += data
        out = []
        while True:
            if self._need is None:
                if len(self._buf) < FRAME_HEADER.size:
                    break
                self._need = frame_length(bytes(self._buf[: FRAME_HEADER.size]))
                del self._buf[: FRAME_HEADER.size]
            if len(self._buf) < self._need:
                break
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            out.append(decode_body(body))
        return out

    def end(self) -> None:
        """The stream ended: fine between frames, a truncation inside one."""
        self.eof = True
        if self._need is not None or self._buf:
            raise RemoteProtocolError("stream ended inside a frame (peer died or cut the stream)")


# ---------------------------------------------------------------------------- the party


def party_tag(name: str) -> str:
    """Public label of a party (which party a Hello means); reveals nothing about the secret."""
    return blake3.blake3(name.encode(), derive_key_context="meshrender party tag v1").hexdigest()
