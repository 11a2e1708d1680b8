"""How one want-list of chunks is pulled from several peers at once, with no I/O and no clock.

The caller builds a `ChunkFetch` from the want-list and the time, says which peers provide what
(`add_provider`, `remove_provider`), hands over every answer a peer gives (`on_chunk` once it has
checked the bytes against the hash, `on_not_found`), then calls `poll(now)` and carries out the
actions it returns: `Request`, `Cancel`, `Penalize`. It arms a timer for `next_deadline()` and
polls again when that fires. An answer whose check takes a while (a decompression and a hash on
another thread) may be announced with `on_arrived` as soon as its bytes are in, so the peer's pipe
is refilled while the check runs; `on_chunk` then gives the verdict. Time is always an argument,
so the real peer and the simulator drive the same object, and one seed replays a whole run.

  * A chunk is *queued*, *live* (exactly one request out, with a deadline) or *done*. A request
    that misses its deadline turns *late*: the chunk is queued again for someone else and the peer
    takes a strike, but the late request still counts against that peer's in-flight limits (it is
    probably still in its send queue) and its answer is still welcome — the first good copy wins
    and every other request for that chunk is cancelled. A late request not answered within its
    allowance once more is given up and cancelled, so no chunk waits forever on a half-frozen peer.
    An answer `on_arrived` is *checking*: it no longer counts against the peer's limits and has
    no deadline (the check is our own work), and the chunk is asked of nobody else meanwhile; if
    the check fails the chunk is queued again. While CHECKING_BYTES_MAX bytes (`checking_bytes_max`)
    are being checked, nothing more is asked: the bound on what answers hold in memory.
  * `poll` expires deadlines, then schedules: queued chunks rarest first (fewest usable providers),
    then in want-list order; each goes to the provider that has it, has room under
    `inflight_bytes_max` / `inflight_chunks_max`, has not refused it and has no request for it
    out, with the least bytes in flight (then fewest bytes received, then peer id). A peer whose
    next chunk would overrun its byte budget waits for room; a chunk bigger than the whole budget
    goes alone to an idle peer. Requests to one peer are batched into one action. A deadline
    allows `request_timeout_s` plus the bytes queued at that peer (this one included) at
    `min_rate_bytes_s`. The queue is a heap keyed (providers, want-list index), shared by the
    providers of everything, plus one per partial provider, so finding work for an idle peer
    never walks past chunks that only busy peers have.
  * A peer leaves the fetch three ways. *Banned*: it sent bytes that failed the caller's check;
    never asked again, and anything more it sends is a `Penalize`. *Dropped*: `strikes_max`
    timeouts or REFUSALS_MAX not-founds; not a fault (slow, frozen, evicted), so `add_provider`
    may bring it back with a clean record. *Gone*: its connection was lost; no strike, and
    `add_provider` brings it back. Each way its requests are taken back at once; banned and
    dropped peers also get a `Cancel`. A not-found excludes that peer for that chunk for good.
  * A chunk no usable provider can give (none has it, or all that have it left or refused it) is
    `stuck`; adding a provider that has it un-sticks it.

Our misuse (unknown hash, negative size, time running backwards) raises `LocalProtocolError`; a
peer's misbehaviour never raises, it becomes a `Penalize` action and is otherwise ignored.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

CHUNKS_MAX = 1 << 20  # one fetch is one scene's want-list; a manifest holds no more chunks than this
PEERS_MAX = 1024  # peer records per fetch, live or departed: a ban or a credit must outlive a disconnect
PROVIDERS_MAX = 256  # usable providers at once: 256 x 16 requests out already saturate any link we meet
PENALTIES_QUEUED_MAX = 1024  # Penalize actions waiting for the next poll; a flood beyond is counted, not kept
# not-founds before a peer is dropped: its announcements are not worth a round trip each, and a
# full provider's refused chunks are stepped over in the shared queue at every poll
REFUSALS_MAX = 64
REQUEST_HASHES_MAX = 64  # hashes in one Request action: the wire's WANT_HASHES_MAX, one action is one message

INFLIGHT_BYTES_MAX = 8 << 20  # default bytes asked of one peer and not yet answered: a fast LAN's pipe
INFLIGHT_CHUNKS_MAX = 16  # default requests out to one peer: keeps its pipe full without hoarding the queue
REQUEST_TIMEOUT_S = 5.0  # default fixed part of a deadline: connection latency plus the peer's store read
MIN_RATE_BYTES_S = 1_000_000.0  # default slowest transfer tolerated, 1 MB/s (a poor Wi-Fi link)
STRIKES_MAX = 3  # default timeouts before a peer is dropped from the fetch
CHECKING_BYTES_MAX = 64 << 20  # default bytes arrived and not yet checked: what answers may hold in memory


class LocalProtocolError(Exception):
    """The caller used the fetch wrongly (our bug, not a peer's)."""


@dataclass(frozen=True, slots=True)
class Request:
    """Ask `peer` for these chunks (one message)."""

    peer: str
    hashes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell `peer` these requests are no longer wanted; an answer already on its way is harmless."""

    peer: str
    hashes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Penalize:
    """`peer` misbehaved; the caller logs it and decides (after a ban: disconnect it)."""

    peer: str
    reason: str


Action = Request | Cancel | Penalize


@dataclass(frozen=True, slots=True)
class FetchStatistics:
    """What a fetch has done so far. Per-peer maps list only peers with a non-zero count."""

    chunks_total: int
    chunks_done: int
    bytes_total: int
    bytes_done: int
    chunks_by_peer: dict[str, int]  # good chunks that completed the chunk, per peer
    bytes_by_peer: dict[str, int]
    requests_sent: int  # chunk requests (hashes named in Request actions)
    request_actions: int  # Request actions (batches)
    retries: int  # chunk requests that repeat an earlier request for the same chunk
    timeouts: int  # live requests that missed their deadline
    given_up: int  # late requests abandoned after a second allowance
    not_found: int
    duplicates: int  # good copies that arrived after the chunk was done
    duplicate_bytes: int
    penalties: int  # misbehaviours seen, bans included (repeats before a poll merge into one Penalize)
    penalties_dropped: int  # Penalize actions not kept because PENALTIES_QUEUED_MAX were waiting
    strikes: dict[str, int]  # timeouts per peer (reset when a dropped peer is added again)
    bans: dict[str, str]  # peer -> reason
    dropped: tuple[str, ...]  # peers out for timeouts or refusals (until added again), in drop order
    stuck: tuple[str, ...]
    elapsed_s: float  # from creation to completion, or to the latest time seen while not done


class _State(Enum):
    QUEUED = "queued"
    LIVE = "live"
    DONE = "done"


class _Status(Enum):
    USABLE = "usable"
    GONE = "gone"
    DROPPED = "dropped"
    BANNED = "banned"


@dataclass(slots=True)
class _Chunk:
    hash: str
    size: int
    index: int  # want-list position: the tie-break after rarity
    state: _State = _State.QUEUED
    live: str | None = None  # the peer holding the one live request
    late: dict[str, None] = field(default_factory=dict)  # peers with a timed-out request still out
    refused: set[str] = field(default_factory=set)  # peers that said not found (membership only)
    holders: int = 0  # usable peers that have it and have not refused it
    partial: int = 0  # ...of which providers of a part of the want-list
    requested: int = 0
    checking: int = 0  # copies arrived (`on_arrived`) and not yet judged by `on_chunk`


@dataclass(slots=True)
class _Req:
    seq: int  # identifies this request in the deadline heap
    sent: float
    due: float  # deadline while live, give-up time while late
    late: bool = False


@dataclass(slots=True, eq=False)  # compared by identity: lists of peers are searched often
class _Peer:
    id: str
    all: bool = False  # has every chunk
    hashes: dict[str, None] = field(default_factory=dict)  # chunks of this fetch it has (when not all)
    status: _Status = _Status.GONE
    pending: dict[str, _Req] = field(default_factory=dict)  # requests out, live and late
    abandoned: set[str] = field(default_factory=set)  # cancelled or lost requests: an answer is a race
    checking: dict[str, None] = field(default_factory=dict)  # its answers arrived and being checked
    inflight_bytes: int = 0
    strikes: int = 0
    refusals: int = 0
    bytes_received: int = 0
    chunks_received: int = 0
    chunks_max: int = 0  # its own cap on requests out (0: the fetch's inflight_chunks_max)


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LocalProtocolError(f"{name} must be a positive integer, not {value!r}")


def _check_peer(peer: object) -> str:
    if not isinstance(peer, str) or not peer:
        raise LocalProtocolError(f"peer id must be a non-empty string, not {peer!r}")
    return peer


class ChunkFetch:
    """Fetch every chunk of a want-list from a changing set of providers. See the module docstring."""

    def __init__(
        self,
        chunks: Iterable[tuple[str, int]],
        now: float,
        *,
        inflight_bytes_max: int = INFLIGHT_BYTES_MAX,
        inflight_chunks_max: int = INFLIGHT_CHUNKS_MAX,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        min_rate_bytes_s: float = MIN_RATE_BYTES_S,
        strikes_max: int = STRIKES_MAX,
        checking_bytes_max: int = CHECKING_BYTES_MAX,
        prefer_partial: bool = False,
    ):
        """`chunks`: (hash, size) pairs, or objects with `.hash` and `.size` (a manifest's refs).
        A hash listed twice is fetched once; listing it with two sizes is an error. With
        `prefer_partial`, a provider of everything is first asked only for chunks that no usable
        partial provider holds (a retry goes anywhere): a swarm's source then uploads what the
        swarm lacks, and the fetchers trade the rest."""
        counts = {
            "inflight_bytes_max": inflight_bytes_max,
            "inflight_chunks_max": inflight_chunks_max,
            "strikes_max": strikes_max,
            "checking_bytes_max": checking_bytes_max,
        }
        for name, value in counts.items():
            _check_count(name, value)
        for name, value in (("request_timeout_s", request_timeout_s), ("min_rate_bytes_s", min_rate_bytes_s)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise LocalProtocolError(f"{name} must be a positive number, not {value!r}")
        self.inflight_bytes_max = inflight_bytes_max
        self.inflight_chunks_max = inflight_chunks_max
        self.request_timeout_s = float(request_timeout_s)
        self.min_rate_bytes_s = float(min_rate_bytes_s)
        self.strikes_max = strikes_max
        self.checking_bytes_max = checking_bytes_max
        self.prefer_partial = bool(prefer_partial)
        self._share: set[str] | None = None  # set_share: the chunks this fetcher asks whole providers for

        self._start = self._now = self._check_time(now, first=True)
        self._done_at: float | None = None
        self._chunks: dict[str, _Chunk] = {}
        for item in chunks:
            try:
                h, size = item if isinstance(item, tuple | list) else (item.hash, item.size)
            except (AttributeError, ValueError):
                raise LocalProtocolError(f"want-list entry {item!r} is not a (hash, size) pair") from None
            if not isinstance(h, str) or not h:
                raise LocalProtocolError(f"chunk hash must be a non-empty string, not {h!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise LocalProtocolError(f"chunk {h}: size must be a non-negative integer, not {size!r}")
            old = self._chunks.get(h)
            if old is not None:
                if old.size != size:
                    raise LocalProtocolError(f"chunk {h} listed with sizes {old.size} and {size}")
                continue
            if len(self._chunks) >= CHUNKS_MAX:
                raise LocalProtocolError(f"want-list exceeds {CHUNKS_MAX} chunks")
            self._chunks[h] = _Chunk(h, size, len(self._chunks))
        self._bytes_total = sum(c.size for c in self._chunks.values())
        self._chunks_done = 0
        self._bytes_done = 0

        self._peers: dict[str, _Peer] = {}
        self._usable = 0
        self._open_ids: dict[str, None] = {}  # usable peers with room for another request
        self._queued: dict[str, None] = dict.fromkeys(self._chunks)  # ordered set of queued chunks
        self._stuck: dict[str, None] = dict.fromkeys(self._chunks)  # no holders yet: every chunk is stuck
        self._sched: list[tuple[int, int, str]] = []  # heap of (holders, index, hash) over queued chunks
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}  # the same, per usable partial provider
        self._sched_dirty = True  # holder counts changed: rebuild the heaps before scheduling
        self._deadlines: list[tuple[float, int, str, str]] = []  # heap of (due, seq, peer, hash), lazy
        self._pending_total = 0
        self._checking_bytes = 0
        self._seq = itertools.count()

        self._penalties: dict[tuple[str, str], None] = {}
        self._cancels: dict[str, dict[str, None]] = {}
        self._dropped: dict[str, None] = {}
        self._bans: dict[str, str] = {}
        self._requests_sent = self._request_actions = self._retries = 0
        self._timeouts = self._given_up = self._not_found = 0
        self._duplicates = self._duplicate_bytes = 0
        self._penalty_count = self._penalties_dropped = 0
        if not self._chunks:
            self._done_at = self._start

    # ---- queries -------------------------------------------------------------------------------

    def __contains__(self, hash: object) -> bool:
        """Whether `hash` is on the want-list (the caller checks before `on_chunk`)."""
        return hash in self._chunks

    @property
    def done(self) -> bool:
        """Every chunk has arrived and been verified."""
        return self._chunks_done == len(self._chunks)

    @property
    def stuck(self) -> tuple[str, ...]:
        """Chunks no usable provider can give, in want-list order."""
        return tuple(sorted(self._stuck, key=lambda h: self._chunks[h].index))

    def next_deadline(self) -> float | None:
        """When `poll` next has a timeout to act on, or None while no request is out."""
        d = self._deadlines
        while d and not self._entry_valid(d[0]):
            heapq.heappop(d)
        return d[0][0] if d else None

    def statistics(self) -> FetchStatistics:
        peers = self._peers.values()
        end = self._done_at if self._done_at is not None else self._now
        return FetchStatistics(
            chunks_total=len(self._chunks),
            chunks_done=self._chunks_done,
            bytes_total=self._bytes_total,
            bytes_done=self._bytes_done,
            chunks_by_peer={p.id: p.chunks_received for p in peers if p.chunks_received},
            bytes_by_peer={p.id: p.bytes_received for p in peers if p.chunks_received},
            requests_sent=self._requests_sent,
            request_actions=self._request_actions,
            retries=self._retries,
            timeouts=self._timeouts,
            given_up=self._given_up,
            not_found=self._not_found,
            duplicates=self._duplicates,
            duplicate_bytes=self._duplicate_bytes,
            penalties=self._penalty_count,
            penalties_dropped=self._penalties_dropped,
            strikes={p.id: p.strikes for p in peers if p.strikes},
            bans=dict(self._bans),
            dropped=tuple(self._dropped),
            stuck=self.stuck,
            elapsed_s=end - self._start,
        )

    # ---- events --------------------------------------------------------------------------------

    def add_provider(
        self, peer: str, hashes: Iterable[str] | None, now: float, *, inflight_chunks_max: int | None = None
    ) -> bool:
        """`peer` has every chunk (`hashes=None`) or these ones (added to what it had announced;
        hashes not on the want-list are ignored). Brings back a gone or dropped peer (a dropped one
        with its strikes cleared). `inflight_chunks_max` gives this peer a cap of its own on requests
        out (lower than the fetch's, say, for a source that many fetchers share; requests already
        out stay). Returns False, changing nothing, for a banned peer or when the fetch already has
        PEERS_MAX peer records or PROVIDERS_MAX usable providers."""
        self._check_time(now)
        _check_peer(peer)
        if inflight_chunks_max is not None:
            _check_count("inflight_chunks_max", inflight_chunks_max)
        if isinstance(hashes, str):
            raise LocalProtocolError("hashes must be a collection of hashes, not one string")
        wanted: list[str] | None = None
        if hashes is not None:
            wanted = []
            for h in hashes:
                if not isinstance(h, str):
                    raise LocalProtocolError(f"hash must be a string, not {h!r}")
                if h in self._chunks:
                    wanted.append(h)
        p = self._peers.get(peer)
        if p is None:
            if len(self._peers) >= PEERS_MAX or self._usable >= PROVIDERS_MAX:
                return False
            p = self._peers[peer] = _Peer(peer)
        if p.status is _Status.BANNED:
            return False
        if inflight_chunks_max is not None:
            p.chunks_max = inflight_chunks_max
            self._track_open(p)
        if p.status is _Status.USABLE:
            if p.all:
                return True
            if wanted is None:
                gained = [c for c in self._chunks.values() if c.hash not in p.hashes]
                for h in p.hashes:  # what it held as a partial provider it now holds as a whole one
                    if p.id not in (c := self._chunks[h]).refused:
                        c.partial -= 1
                        if c.state is _State.QUEUED:
                            self._sched_dirty = True
                p.all = True
                p.hashes.clear()
            else:
                gained = [self._chunks[h] for h in wanted if h not in p.hashes]
                p.hashes.update(dict.fromkeys(wanted))
            self._count_holders(p, gained, +1)
            return True
        if self._usable >= PROVIDERS_MAX:
            return False
        if wanted is None:
            p.all = True
            p.hashes.clear()
        elif not p.all:
            p.hashes.update(dict.fromkeys(wanted))
        if p.status is _Status.DROPPED:
            p.strikes = p.refusals = 0
            del self._dropped[p.id]
        self._set_status(p, _Status.USABLE)
        return True

    def set_share(self, hashes: Iterable[str]) -> None:
        """This fetcher's share of the want-list, when several fetch it at once: from now on the
        chunks named come first (in the order given) among chunks equally rare, and providers of
        everything are asked for a chunk outside the share only while nothing else is out (some
        other fetcher takes it from them, and we from that one) or for a retry. Hashes not on the
        want-list are ignored."""
        if isinstance(hashes, str):
            raise LocalProtocolError("hashes must be a collection of hashes, not one string")
        first = [c for h in dict.fromkeys(hashes) if (c := self._chunks.get(h)) is not None]
        self._share = {c.hash for c in first}
        rest = sorted((c for c in self._chunks.values() if c.hash not in self._share), key=lambda c: c.index)
        for i, c in enumerate(itertools.chain(first, rest)):
            c.index = i
        self._sched_dirty = True

    def remove_provider(self, peer: str, now: float) -> None:
        """`peer`'s connection is lost: its requests are queued again at once, without a strike.
        A peer this fetch does not use is ignored."""
        self._check_time(now)
        p = self._peers.get(_check_peer(peer))
        if p is None or p.status is not _Status.USABLE:
            return
        self._withdraw(p, cancel=False)
        self._set_status(p, _Status.GONE)

    def on_arrived(self, peer: str, hash: str, now: float) -> None:
        """`peer`'s answer to our request for `hash` is in and is being checked: the request stops
        counting against `peer`'s limits and loses its deadline; `on_chunk` follows with the verdict.
        Anything else (no such request out, a banned peer) is left for `on_chunk` to judge."""
        self._check_time(now)
        _check_peer(peer)
        c = self._chunks.get(hash)
        if c is None:
            raise LocalProtocolError(f"on_arrived for {hash!r}, which is not on the want-list")
        p = self._peers.get(peer)
        if p is None or p.status is _Status.BANNED or hash not in p.pending:
            return
        self._release(p, hash, requeue=False)  # a live chunk stays live, with nobody else asked
        p.checking[hash] = None
        c.checking += 1
        self._checking_bytes += c.size

    def on_chunk(self, peer: str, hash: str, ok: bool, now: float) -> bool:
        """`peer` sent chunk `hash`; `ok` says whether its bytes matched the hash. Returns True when
        this copy completed the chunk (store it), False when it was bad, a duplicate or ignored."""
        self._check_time(now)
        _check_peer(peer)
        c = self._chunks.get(hash)
        if c is None:
            raise LocalProtocolError(f"on_chunk for {hash!r}, which is not on the want-list")
        p = self._peers.get(peer)
        if p is not None and hash in p.checking:  # announced by on_arrived: asked for, whoever it is now
            del p.checking[hash]
            c.checking -= 1
            self._checking_bytes -= c.size
            if not ok:
                if p.status is not _Status.BANNED:
                    self._ban(p, f"sent bytes that do not match chunk {hash}")
                self._orphaned(c)
                return False
            return self._good_copy(c, p, now)
        if p is None:
            self._penalize(peer, "sent a chunk it was never asked for")
            return False
        if p.status is _Status.BANNED:
            self._penalize(peer, "sent a chunk after it was banned")
            return False
        if hash in p.pending:
            self._release(p, hash, requeue=not ok)  # a good copy completes it just below
        elif hash in p.abandoned:
            p.abandoned.discard(hash)
        else:
            self._penalize(peer, "sent a chunk it was never asked for")
            return False
        if not ok:
            self._ban(p, f"sent bytes that do not match chunk {hash}")
            return False
        return self._good_copy(c, p, now)

    def _good_copy(self, c, p, now: float) -> bool:
        """A copy whose bytes matched: it completes the chunk, unless another copy already did."""
        if c.state is _State.DONE:
            self._duplicates += 1
            self._duplicate_bytes += c.size
            return False
        self._complete(c, p, now)
        return True

    def on_not_found(self, peer: str, hash: str, now: float) -> None:
        """`peer` says it does not have `hash` after all: it is never asked for it again here."""
        self._check_time(now)
        _check_peer(peer)
        c = self._chunks.get(hash)
        if c is None:
            raise LocalProtocolError(f"on_not_found for {hash!r}, which is not on the want-list")
        p = self._peers.get(peer)
        if p is not None and p.status is _Status.BANNED:
            return
        if p is None or (hash not in p.pending and hash not in p.abandoned):
            self._penalize(peer, "answered a request it was never sent")
            return
        self._not_found += 1
        if hash in p.pending:
            self._release(p, hash)
        else:
            p.abandoned.discard(hash)
        if p.id not in c.refused:
            if p.status is _Status.USABLE and (p.all or hash in p.hashes):
                self._count_holders(p, [c], -1)
            c.refused.add(p.id)
            p.refusals += 1
            if p.refusals >= REFUSALS_MAX and p.status is _Status.USABLE:
                self._drop(p)

    def poll(self, now: float) -> list[Action]:
        """Act on expired deadlines, schedule queued chunks, and return every action since the last
        poll: Penalize first, then Cancel, then Request (at most one Request per peer per poll, unless
        it names more than REQUEST_HASHES_MAX hashes)."""
        self._check_time(now)
        self._expire(now)
        batches = self._schedule(now)
        actions: list[Action] = [Penalize(peer, reason) for peer, reason in self._penalties]
        actions += [Cancel(peer, tuple(hs)) for peer, hs in self._cancels.items()]
        self._penalties = {}
        self._cancels = {}
        for peer, hs in batches.items():
            for i in range(0, len(hs), REQUEST_HASHES_MAX):
                actions.append(Request(peer, tuple(hs[i : i + REQUEST_HASHES_MAX])))
                self._request_actions += 1
        return actions

    # ---- internals -----------------------------------------------------------------------------

    def _check_time(self, now: float, first: bool = False) -> float:
        if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number, not {now!r}")
        if not first:
            if now < self._now:
                raise LocalProtocolError(f"time went backwards: {now} after {self._now}")
            self._now = now
        return now

    def _penalize(self, peer: str, reason: str) -> None:
        self._penalty_count += 1
        key = (peer, reason)
        if key in self._penalties:
            return
        if len(self._penalties) >= PENALTIES_QUEUED_MAX:
            self._penalties_dropped += 1
            return
        self._penalties[key] = None

    def _cancel(self, peer: str, hashes: Iterable[str]) -> None:
        self._cancels.setdefault(peer, {}).update(dict.fromkeys(hashes))

    def _entry_valid(self, entry: tuple[float, int, str, str]) -> bool:
        due, seq, peer, h = entry
        r = self._peers[peer].pending.get(h)
        return r is not None and r.seq == seq and r.due == due

    def _count_holders(self, p: _Peer, chunks: Iterable[_Chunk], delta: int) -> None:
        """Peer `p` starts (+1) or stops (-1) being a usable source of these chunks."""
        for c in chunks:
            if p.id in c.refused:
                continue
            c.holders += delta
            if not p.all:
                c.partial += delta
            if c.state is not _State.DONE:
                if c.holders == 0:
                    self._stuck[c.hash] = None
                else:
                    self._stuck.pop(c.hash, None)
            if c.state is _State.QUEUED:  # a live chunk is pushed afresh if it is queued again
                self._sched_dirty = True

    def _held(self, p: _Peer) -> Iterable[_Chunk]:
        return self._chunks.values() if p.all else [self._chunks[h] for h in p.hashes]

    def _set_status(self, p: _Peer, status: _Status) -> None:
        was = p.status is _Status.USABLE
        p.status = status
        now = status is _Status.USABLE
        if was != now:
            self._usable += 1 if now else -1
            self._count_holders(p, self._held(p), +1 if now else -1)
        self._track_open(p)

    def _requeue(self, c: _Chunk) -> None:
        c.state = _State.QUEUED
        c.live = None
        self._queued[c.hash] = None
        if c.holders > 0 and not self._sched_dirty:
            e = (c.holders, c.index, c.hash)
            heapq.heappush(self._sched, e)
            for pid, heap in self._heaps.items():
                if c.hash in self._peers[pid].hashes and pid not in c.refused:
                    heapq.heappush(heap, e)

    def _spared(self, c: _Chunk) -> bool:
        """Whether providers of everything leave `c` to the partial providers that hold it."""
        return self.prefer_partial and c.partial > 0 and not c.requested

    def _reserved(self, c: _Chunk) -> bool:
        """Whether providers of everything leave `c` to the fetcher whose share it is, for now."""
        mine = self._share is None or c.hash in self._share
        return not mine and not c.requested and self._pending_total > 0

    def _orphaned(self, c: _Chunk) -> None:
        """A copy of live chunk `c` failed its check: queue it again unless another is still coming."""
        if c.state is _State.LIVE and c.live is None and not c.late and not c.checking:
            self._requeue(c)

    def _release(self, p: _Peer, h: str, requeue: bool = True) -> None:
        """Forget `p`'s request for `h` (answered, cancelled or lost); a live one's chunk is queued
        again unless `requeue` is False (the caller completes it, or checks its answer) or a copy
        of it is being checked (which queues it again if it fails)."""
        r = p.pending.pop(h)
        c = self._chunks[h]
        p.inflight_bytes -= c.size
        self._pending_total -= 1
        self._track_open(p)
        if r.late:
            del c.late[p.id]
        else:
            c.live = None
            if c.state is _State.LIVE and requeue and not c.checking:
                self._requeue(c)

    def _track_open(self, p: _Peer) -> None:
        if p.status is _Status.USABLE and self._open(p):
            self._open_ids[p.id] = None
        else:
            self._open_ids.pop(p.id, None)

    def _withdraw(self, p: _Peer, *, cancel: bool) -> None:
        """Take back every request out to `p` (it is leaving the fetch)."""
        hs = list(p.pending)
        for h in hs:
            self._release(p, h)
        p.abandoned.update(hs)
        if cancel and hs:
            self._cancel(p.id, hs)

    def _ban(self, p: _Peer, reason: str) -> None:
        self._withdraw(p, cancel=True)
        p.abandoned.clear()  # anything more from a banned peer is penalized, race or not
        if p.status is _Status.DROPPED:
            del self._dropped[p.id]
        self._set_status(p, _Status.BANNED)
        self._bans[p.id] = reason
        self._penalize(p.id, reason)

    def _drop(self, p: _Peer) -> None:
        self._withdraw(p, cancel=True)
        self._set_status(p, _Status.DROPPED)
        self._dropped[p.id] = None

    def _complete(self, c: _Chunk, p: _Peer, now: float) -> None:
        c.state = _State.DONE
        self._queued.pop(c.hash, None)
        self._stuck.pop(c.hash, None)
        others = ([c.live] if c.live is not None else []) + list(c.late)
        for other in others:
            q = self._peers[other]
            self._release(q, c.hash)
            q.abandoned.add(c.hash)
            self._cancel(other, [c.hash])
        p.bytes_received += c.size
        p.chunks_received += 1
        self._chunks_done += 1
        self._bytes_done += c.size
        if self.done:
            self._done_at = now

    def _expire(self, now: float) -> None:
        d = self._deadlines
        while d and d[0][0] <= now:
            entry = heapq.heappop(d)
            if not self._entry_valid(entry):
                continue
            _, _, peer, h = entry
            p = self._peers[peer]
            r = p.pending[h]
            c = self._chunks[h]
            if r.late:  # a second allowance has passed too: give it up and let the chunk be asked again
                self._release(p, h)
                p.abandoned.add(h)
                self._cancel(peer, [h])
                self._given_up += 1
                continue
            r.late = True
            r.due += r.due - r.sent
            heapq.heappush(d, (r.due, r.seq, peer, h))
            c.late[peer] = None
            self._requeue(c)
            self._timeouts += 1
            p.strikes += 1
            if p.strikes >= self.strikes_max:
                self._drop(p)
        if len(d) > 2 * self._pending_total + 64:  # answered requests leave stale entries: compact
            self._deadlines = [
                (r.due, r.seq, p.id, h) for p in self._peers.values() for h, r in p.pending.items()
            ]
            heapq.heapify(self._deadlines)

    def _open(self, p: _Peer) -> bool:
        """Whether `p` has room for another request at all."""
        n = len(p.pending)
        return n < (p.chunks_max or self.inflight_chunks_max) and (
            n == 0 or p.inflight_bytes < self.inflight_bytes_max
        )

    def _fits(self, p: _Peer, size: int) -> bool:
        n = len(p.pending)
        if n >= (p.chunks_max or self.inflight_chunks_max):
            return False
        # a peer with nothing out may take one chunk bigger than the byte limit, or it never moves
        return n == 0 or p.inflight_bytes + size <= self.inflight_bytes_max

    def _rebuild(self) -> None:
        """Fresh heaps after holder counts changed: the shared one for providers of everything, and
        one per usable provider of a subset (so a partial peer finds its chunks without a scan)."""
        self._sched = self._fresh_heap(None)
        self._heaps = {
            p.id: self._fresh_heap(p)
            for p in self._peers.values()
            if p.status is _Status.USABLE and not p.all
        }
        self._sched_dirty = False

    def _fresh_heap(self, p: _Peer | None) -> list[tuple[int, int, str]]:
        """(holders, index, hash) of the queued chunks that `p` can give (None: any provider)."""
        chunks = self._chunks
        if p is None:
            heap = [
                (c.holders, c.index, h)
                for h in self._queued
                if (c := chunks[h]).holders > 0 and not self._spared(c)
            ]
        else:
            among = self._queued if len(self._queued) < len(p.hashes) else p.hashes
            heap = [
                (c.holders, c.index, h)
                for h in among
                if h in p.hashes
                and h in self._queued
                and (c := chunks[h]).holders > 0
                and p.id not in c.refused
            ]
        heapq.heapify(heap)
        return heap

    def _schedule(self, now: float) -> dict[str, list[str]]:
        """Chunk after chunk in (rarity, want-list) order, each to its least loaded open candidate.

        The next chunk with any open candidate is the least of each open peer's own next chunk, so
        instead of walking the queue past chunks whose providers are all busy, this asks the open
        peers: partial providers look in their own heaps, providers of everything in the shared
        one. A peer whose next chunk does not fit its byte budget waits for room."""
        if self._checking_bytes >= self.checking_bytes_max:
            return {}  # answers in memory are at their bound: ask again once checks are done
        if self._sched_dirty:
            self._rebuild()
        batches: dict[str, list[str]] = {}
        chunks, shared = self._chunks, self._sched
        usable = [self._peers[pid] for pid in self._open_ids]
        full = [p for p in usable if p.all]
        part = [p for p in usable if not p.all]
        shared_aside: list[tuple[int, int, str]] = []
        aside: dict[str, list[tuple[int, int, str]]] = {}
        while full or part:
            best: tuple[int, int, str] | None = None
            while full and shared:  # the shared heap's first chunk an open full provider can take
                e = shared[0]
                c = chunks[e[2]]
                if c.state is not _State.QUEUED or self._spared(c):  # a spared one is in partial heaps
                    heapq.heappop(shared)
                    continue
                if self._reserved(c):  # what follows, as rare or rarer, is others' share too
                    break
                for f in list(full):
                    if f.id in c.refused or c.hash in f.pending:
                        continue
                    if self._fits(f, c.size):
                        best = e
                    else:
                        full.remove(f)  # its next chunk does not fit: it waits for room
                if best is not None or not full:
                    break
                shared_aside.append(heapq.heappop(shared))
            still = []
            for p in part:
                heap = self._heaps.get(p.id, [])
                while heap:
                    e = heap[0]
                    c = chunks[e[2]]
                    if c.state is not _State.QUEUED or p.id in c.refused:
                        heapq.heappop(heap)
                    elif c.hash in p.pending:  # a late request of its own is still out
                        aside.setdefault(p.id, []).append(heapq.heappop(heap))
                    else:
                        break
                if heap and self._fits(p, chunks[heap[0][2]].size):
                    still.append(p)
                    if best is None or heap[0] < best:
                        best = heap[0]
            part = still
            if best is None:
                break
            c = chunks[best[2]]
            to: _Peer | None = None
            spared = self._spared(c) or self._reserved(c)
            for p in itertools.chain(full, part):
                if (
                    ((p.all and not spared) or (not p.all and c.hash in p.hashes))
                    and p.id not in c.refused
                    and c.hash not in p.pending
                    and self._fits(p, c.size)
                    and (
                        to is None
                        or (p.inflight_bytes, p.bytes_received, p.id)
                        < (to.inflight_bytes, to.bytes_received, to.id)
                    )
                ):
                    to = p
            assert to is not None  # the peer whose next chunk `best` is can take it
            self._send(to, c, now)
            batches.setdefault(to.id, []).append(c.hash)
            if not self._open(to):
                (full if to.all else part).remove(to)
        for e in shared_aside:
            heapq.heappush(shared, e)
        for pid, entries in aside.items():
            for e in entries:
                heapq.heappush(self._heaps[pid], e)
        # entries of chunks that left the queue are dropped lazily; rebuild a heap before they pile up
        stale_max = 2 * len(self._queued) + 64
        if len(shared) > stale_max:
            self._sched = self._fresh_heap(None)
        for pid, heap in self._heaps.items():
            if len(heap) > stale_max:
                self._heaps[pid] = self._fresh_heap(self._peers[pid])
        return batches

    def _send(self, p: _Peer, c: _Chunk, now: float) -> None:
        p.inflight_bytes += c.size
        due = now + self.request_timeout_s + p.inflight_bytes / self.min_rate_bytes_s
        r = _Req(next(self._seq), now, due)
        p.pending[c.hash] = r  # an answer to an older, abandoned request for it may still come: both are fine
        self._pending_total += 1
        self._track_open(p)
        heapq.heappush(self._deadlines, (due, r.seq, p.id, c.hash))
        c.state = _State.LIVE
        c.live = p.id
        del self._queued[c.hash]
        if c.requested:
            self._retries += 1
        c.requested += 1
        self._requests_sent += 1
