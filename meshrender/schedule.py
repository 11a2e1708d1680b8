"""How one job's work units are leased to a changing set of workers, with no I/O and no clock.

The coordinating peer builds a `Coordinator` from the job's units in queue order (pass-major
buckets, frame after frame), each an opaque hashable key with its cost (pixels x samples), and the
time. It says which party members render for the job (`add_worker`, `remove_worker`), hands over
what they send (`on_heartbeat`; `on_result` with a digest of the result's exact bytes, whose
`Verdict` says whether to store it; `on_refuse`), then calls `poll(now)` and carries out the
actions it returns: `Lease`, `Revoke`, `Penalize`, `Discard`. It arms a timer for
`next_deadline()` and polls again when that fires. A rendering peer drives a `WorkerJob` the same
way: leases and revokes in, `RenderNext` and `Heartbeat` out. Time is always an argument, so the
real peer and the simulator drive the same objects, and one seed replays a whole run.

  * A unit is *queued* (no accepted result and no live lease owes it), *out* (live leases owe it)
    or *accepted* (the first result's digest is kept, with the peer it came from). The queue is a
    heap of unit indices: leases take its head, and a unit taken back returns to its place in
    queue order, ahead of everything not leased yet.
  * Leases. Until its speed is measured a worker holds one lease of `first_lease_units` units with
    `first_lease_s` to finish (it may still fetch the scene and compile kernels; a second lease
    would queue behind that and could not keep the same allowance). Once measured it holds up to
    `leases_per_worker` leases at once, so it never idles during a round trip, each worth about
    `lease_target_s` at its speed but never more than its share of the queue: the queued cost x
    its speed over the party's capacity (every worker that may take leases; one not yet measured
    counts at the measured workers' mean) / `leases_per_worker`. So the first worker measured does
    not swallow a small frame while the others calibrate, and leases shrink towards the end of the
    queue (guided self-scheduling). A unit is added while that brings the total closer to the
    target; at least one, at most `lease_units_max`. Units may name their frame (an animation):
    a measured worker's lease that holds a whole frame then ends at a frame boundary, so it gets
    blocks of consecutive whole frames, as a render farm's proven servers do. A lease is due
    `lease_slack` x the estimated time of everything the worker owes plus this lease, plus
    `lease_grace_s`. A lease takes, in this order: disputed units it can arbitrate, spot checks it
    can make, queued units in queue order, and (queue empty) endgame duplicates.
  * Speed: cost units per second on this job, the ratio of two sums over its results, cost and
    busy time, each decayed by 1 - 1/`speed_window_results` per result (so it follows a worker that
    slows down). A result's busy time runs from the latest of its previous result, the lease given
    to it while it owed nothing, and its latest heartbeat saying it was not rendering (fetching,
    compiling). A burst of results arriving at once therefore measures the same as a steady flow.
  * Losing units. A missed deadline revokes that lease (a strike). A worker holding leases and
    silent for `heartbeat_timeout_s` loses them all at once (no strike) and gets nothing more until
    it is heard from again. A worker whose heartbeats say it renders but whose `samples_done` has
    not changed for max(`stall_min_s`, `stall_factor` x its current unit's expected time) loses
    them all too (a strike), and gets nothing more until it shows progress (a result, or a changed
    counter). `strikes_max` strikes drop it from the job. A lost connection
    (`remove_worker`) takes its units back at once, without a strike. Units taken back are queued
    again unless another live lease still owes them.
  * Endgame. Once the queue is empty, a worker with a free slot gets duplicates of the units out
    longest that it does not hold itself, each owed by at most 1 + `duplicates_max` leases. The
    first result wins (ACCEPT); a lease left owing only accepted units is revoked.
  * Verification. A second result is compared by digest: MATCH or MISMATCH. A mismatch opens a
    dispute: the next result from a worker that gave neither (an arbiter lease goes to one when no
    such worker holds the unit already) settles it. Agreeing with the accepted result convicts the
    dissenter; agreeing with the dissenter convicts the accepted result's peer; agreeing with
    neither penalizes all three and voids the accepted result. A convicted worker gets a
    `Penalize`, loses its leases, never gets another, and every unit whose accepted result is its
    own is voided (`Discard`) and queued again; disputes it raised still go to an arbiter (a liar's
    dissent proves nothing either way). Arbiters are only workers involved in neither
    result, so two disagreeing peers alone never convict each other: the dispute waits for a third
    (unless one of them is `trusted`, the coordinating peer's own worker, which cannot lie to its
    coordinator: the other is convicted at once, so a party of two still finishes with a liar).
    Spot checks: a fraction `spot_check_fraction` of units, picked by a hash of (seed, repr(key)),
    is leased to a second worker while out, whatever the phase, and that check is waited for.
  * The job is `done` when every unit has an accepted result, no dispute is open and no spot check
    is still owed. A result that arrives later and disagrees opens a dispute and makes it not done.

Finding work for a free worker never walks the whole queue or every worker: the queue, the
units out (for duplicates) and the spot-check candidates are heaps with lazily dropped entries,
free workers are a set, and timers (lease deadlines, heartbeat and stall checks) are one heap.

Our misuse (time running backwards, malformed arguments, a unit listed twice) raises
`LocalProtocolError`; a peer's misbehaviour never raises: it is ignored, or becomes a `Penalize`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum

UNITS_MAX = 1 << 21  # units in one job: 2 M (an 8K frame in 32 px buckets x 64 passes), ~0.5 GB of records
WORKERS_MAX = 1 << 14  # worker records per job, departed ones included: convictions must outlive them
LEASE_UNITS_MAX = 4096  # units in one lease: one Lease is one message on the wire
LEASE_RECORDS_MAX = 1 << 16  # closed leases remembered so that a late result for one is still used
PENALTIES_QUEUED_MAX = 1024  # Penalize actions waiting for the next poll; a flood beyond is counted, not kept
BUSY_S_MIN = 1e-3  # floor of a worker's measured busy time: results at one instant are not infinite speed

HEARTBEAT_S = 0.5  # a worker's heartbeat period (WorkerJob default)

REVOKE_DEADLINE = "deadline missed"
REVOKE_SILENT = "no heartbeat"
REVOKE_STALLED = "no progress"
REVOKE_ACCEPTED = "accepted elsewhere"
REVOKE_DROPPED = "too many strikes"
REVOKE_CONVICTED = "convicted"
REVOKE_CANCELLED = "job cancelled"


class LocalProtocolError(Exception):
    """The caller used the coordinator or the worker state wrongly (our bug, not a peer's)."""


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LocalProtocolError(f"{name} must be a positive integer, not {value!r}")


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise LocalProtocolError(f"{name} must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise LocalProtocolError(
            f"{name} must be {'positive' if positive else 'non-negative'}, not {value!r}"
        )


def _check_peer(peer: object) -> str:
    if not isinstance(peer, str) or not peer:
        raise LocalProtocolError(f"peer id must be a non-empty string, not {peer!r}")
    return peer


def _check_lease_id(lease_id: object) -> int:
    if not isinstance(lease_id, int) or isinstance(lease_id, bool):
        raise LocalProtocolError(f"lease id must be an integer, not {lease_id!r}")
    return lease_id


class Verdict(Enum):
    """What to do with a result: ACCEPT it (store it, add it to the film); the others drop it."""

    ACCEPT = "accept"  # the first result for the unit
    MATCH = "match"  # a duplicate, bit-identical to the accepted one
    MISMATCH = "mismatch"  # differs from the accepted one: verification takes over
    IGNORED = "ignored"  # unknown lease or unit, or from a removed or convicted worker


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """The knobs of one job's schedule. Times are seconds of the caller's monotonic clock."""

    first_lease_units: int = 1
    first_lease_s: float = 60.0  # a new worker may have to fetch the scene and compile kernels
    lease_target_s: float = 3.0
    lease_units_max: int = 256
    leases_per_worker: int = 2
    lease_slack: float = 2.0
    lease_grace_s: float = 5.0
    heartbeat_timeout_s: float = 1.5  # with heartbeats every 0.5 s: a frozen peer loses its units in 2 s
    stall_min_s: float = 5.0
    stall_factor: float = 3.0
    strikes_max: int = 3
    duplicates_max: int = 1
    spot_check_fraction: float = 0.0
    seed: int = 0
    speed_window_results: int = 16
    trusted: str = ""  # the coordinating peer's own worker: its result settles a dispute it is in

    def __post_init__(self) -> None:
        for name in ("first_lease_units", "lease_units_max", "leases_per_worker", "strikes_max"):
            _check_count(name, getattr(self, name))
        _check_count("speed_window_results", self.speed_window_results)
        if self.lease_units_max > LEASE_UNITS_MAX:
            raise LocalProtocolError(f"lease_units_max {self.lease_units_max} exceeds {LEASE_UNITS_MAX}")
        if self.first_lease_units > self.lease_units_max:
            raise LocalProtocolError("first_lease_units exceeds lease_units_max")
        for name in ("first_lease_s", "lease_target_s", "lease_slack", "heartbeat_timeout_s", "stall_factor"):
            _check_number(name, getattr(self, name), positive=True)
        for name in ("lease_grace_s", "stall_min_s"):
            _check_number(name, getattr(self, name), positive=False)
        if not isinstance(self.duplicates_max, int) or isinstance(self.duplicates_max, bool):
            raise LocalProtocolError(f"duplicates_max must be an integer, not {self.duplicates_max!r}")
        if self.duplicates_max < 0:
            raise LocalProtocolError("duplicates_max must not be negative")
        if not isinstance(self.trusted, str):
            raise LocalProtocolError(f"trusted must be a peer id string, not {self.trusted!r}")
        f = self.spot_check_fraction
        if not isinstance(f, int | float) or isinstance(f, bool) or not 0.0 <= f <= 1.0:
            raise LocalProtocolError(f"spot_check_fraction must be within [0, 1], not {f!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise LocalProtocolError(f"seed must be an integer, not {self.seed!r}")


DEFAULT_CONFIG = ScheduleConfig()


# ---- coordinator actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """Give `peer` these units to render in this order, due at `deadline` (coordinator's clock)."""

    peer: str
    lease_id: int
    units: tuple[Hashable, ...]
    deadline: float


@dataclass(frozen=True, slots=True)
class Revoke:
    """Tell `peer` to drop what it has not started of this lease; a result on its way is still used."""

    peer: str
    lease_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Penalize:
    """`peer` misbehaved; the caller logs it and decides (after a conviction: disconnect it)."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Discard:
    """Results accepted from `peer` for these units are void: remove them from the film and the
    store. The units are queued again."""

    peer: str
    units: tuple[Hashable, ...]


Action = Lease | Revoke | Penalize | Discard


@dataclass(frozen=True, slots=True)
class ScheduleStatistics:
    """What a job's schedule has done so far. Per-peer maps list only peers with a non-zero entry."""

    units_total: int
    units_accepted: int
    units_queued: int
    units_out: int
    units_by_peer: dict[str, int]  # accepted results standing now, per peer
    leases: int  # leases issued
    leases_live: int
    lease_units: int  # units named in leases issued
    revokes: dict[str, int]  # Revoke actions by reason
    duplicates: int  # units leased while another live lease owed them or once accepted
    matches: int
    mismatches: int
    disputes_open: int
    disputes_waiting: int  # open disputes no uninvolved worker is rendering: they need an arbiter
    convictions: dict[str, str]  # peer -> reason
    discarded: int  # accepted results voided
    spot_checks: int  # units picked for a spot check
    spot_checks_passed: int
    strikes: dict[str, int]
    dropped: tuple[str, ...]  # out for strikes (until added again), in drop order
    refused: dict[str, str]  # peer -> the reason it gave
    removed: dict[str, str]  # peers whose connection was lost (and not back) -> reason
    silences: int  # times a worker lost its leases for missing heartbeats
    stalls: int  # times a worker lost its leases for rendering without progress
    penalties: int
    penalties_dropped: int
    speed: dict[str, float]  # cost units per second, per worker measured so far
    workers: int  # workers that may take leases now (active, not dropped, refused or silent)
    elapsed_s: float  # from creation to done, or to the latest time seen while not done


# ---- coordinator records ------------------------------------------------------------------------


class _Status(Enum):
    ACTIVE = "active"
    GONE = "gone"
    CONVICTED = "convicted"


@dataclass(slots=True)
class _Dispute:
    against: str  # the peer whose result differs from the accepted one
    digest: bytes


@dataclass(slots=True)
class _Unit:
    key: Hashable
    cost: int
    index: int
    spot: bool
    frame: int | None = None  # units of one frame are consecutive in the queue
    holders: dict[int, None] = field(default_factory=dict)  # live leases that owe it
    out_since: float = 0.0  # when it last went from no live lease to one
    source: str | None = None  # the peer whose result is accepted
    digest: bytes | None = None
    checker: str | None = None  # another peer whose result matched the accepted one
    dispute: _Dispute | None = None
    # derived membership, as last published by Coordinator._refresh
    queued: bool = True
    dup_ok: bool = False
    spot_ok: bool = False


@dataclass(slots=True)
class _Lease:
    id: int
    peer: str
    owed: dict[int, bool]  # unit index -> still wanted from this peer; results not yet received
    issued: float
    deadline: float
    needed: int = 0  # owed units still wanted from this peer
    live: bool = True


@dataclass(slots=True)
class _Worker:
    id: str
    seq: int  # join order: the tie-break among equally fast workers
    status: _Status = _Status.ACTIVE
    refused: bool = False  # refused a lease: no more leases in this job
    dropped: bool = False  # strikes_max strikes: no more leases until added again
    silent: bool = False  # lost its leases for silence: no more until heard from
    stalled: bool = False  # lost its leases for no progress: no more until it makes some
    leases: dict[int, None] = field(default_factory=dict)  # live leases in issue order
    owed_cost: int = 0  # cost of the units its live leases owe
    strikes: int = 0
    cost_sum: float = 0.0  # decayed sums behind its speed
    busy_sum: float = 0.0
    busy_from: float = 0.0
    last_heard: float = 0.0
    samples_done: int = -1
    progress_at: float = 0.0
    rendering: bool = False
    timer: int = 0  # version of its liveness timer entry
    counted: float | None = None  # its part of Coordinator's capacity: speed, 0.0 unmeasured, None out
    accepted: dict[int, None] = field(default_factory=dict)  # units whose accepted result is its own
    confirmed: set[int] = field(default_factory=set)  # units where it is the checker
    against: set[int] = field(default_factory=set)  # open disputes where it is the dissenter

    @property
    def speed(self) -> float | None:
        if self.cost_sum <= 0:
            return None
        return self.cost_sum / max(self.busy_sum, BUSY_S_MIN)


class _Clock:
    """Time as the caller tells it: finite, never backwards."""

    def __init__(self, now: float):
        self._now = self._check(now)

    @staticmethod
    def _check(now: object) -> float:
        if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number, not {now!r}")
        return now

    def advance(self, now: float) -> float:
        self._check(now)
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} after {self._now}")
        self._now = now
        return now


def spot_checked(key: Hashable, fraction: float, seed: int = 0) -> bool:
    """Whether a unit is picked for a spot check: a hash of (seed, repr(key)) below the fraction.
    The same key and seed give the same answer in every process (keys need a stable repr)."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    h = hashlib.blake2b(f"{seed}:{key!r}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") < fraction * (1 << 64)


class Coordinator:
    """Lease one job's units to its workers until each has a verified result. See the module
    docstring."""

    def __init__(
        self, units: Iterable[tuple[Hashable, int]], now: float, *, config: ScheduleConfig = DEFAULT_CONFIG
    ):
        """`units`: (key, cost) or (key, cost, frame) in queue order (a frame's units consecutive);
        keys hashable and distinct, costs positive, frames integers."""
        if not isinstance(config, ScheduleConfig):
            raise LocalProtocolError(f"config must be a ScheduleConfig, not {config!r}")
        self.config = config
        self._clock = _Clock(now)
        self._start = now
        self._latest = now
        self._done_at: float | None = None
        self._units: list[_Unit] = []
        self._index: dict[Hashable, int] = {}
        for item in units:
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise LocalProtocolError(f"unit entry {item!r} is not (key, cost) or (key, cost, frame)")
            key, cost = item[0], item[1]
            frame = item[2] if len(item) == 3 else None
            if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool)):
                raise LocalProtocolError(f"unit {key!r}: frame must be an integer, not {frame!r}")
            try:
                hash(key)
            except TypeError:
                raise LocalProtocolError(f"unit key {key!r} is not hashable") from None
            if key in self._index:
                raise LocalProtocolError(f"unit {key!r} listed twice")
            if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
                raise LocalProtocolError(f"unit {key!r}: cost must be a positive integer, not {cost!r}")
            if len(self._units) >= UNITS_MAX:
                raise LocalProtocolError(f"job exceeds {UNITS_MAX} units")
            i = len(self._units)
            self._index[key] = i
            self._units.append(
                _Unit(key, cost, i, spot_checked(key, config.spot_check_fraction, config.seed), frame)
            )
        self._queue: list[int] = list(range(len(self._units)))  # heap of queued unit indices (lazy)
        self._queued_cost = sum(u.cost for u in self._units)
        self._speed_sum = 0.0  # capacity: the summed speeds of measured workers that may take leases,
        self._measured_n = self._unmeasured_n = 0  # how many those are, and how many not yet measured
        self._dups: list[tuple[float, int]] = []  # heap of (out_since, index): duplicate candidates
        self._spots: list[tuple[float, int]] = []  # the same for spot-check candidates
        self._waiting: dict[int, None] = {}  # disputed units that need an arbiter, in dispute order
        self._disputes: dict[int, None] = {}
        self._checks_out: set[int] = set()  # accepted spot units a live lease still owes a check for
        self._accepted = 0

        self._workers: dict[str, _Worker] = {}
        self._open: dict[str, None] = {}  # workers that may take another lease now
        self._leases: dict[int, _Lease] = {}  # live leases and the latest closed ones
        self._closed: dict[int, None] = {}  # closed lease ids, oldest first
        self._next_lease = 1
        self._live_leases = 0
        self._timers: list[tuple[float, int, int, int | str, int]] = []  # (due, seq, kind, ref, version)
        self._seq = itertools.count()
        self._unneeded: dict[int, None] = {}  # live leases that may owe nothing wanted any more
        self._cancelled = False

        self._actions: list[Action] = []
        self._penalties: set[tuple[str, str]] = set()
        self._penalty_count = self._penalties_dropped = 0
        self._leases_issued = self._lease_units = self._duplicates = 0
        self._matches = self._mismatches = self._discarded = self._spot_passed = 0
        self._silences = self._stalls = 0
        self._revokes: dict[str, int] = {}
        self._convictions: dict[str, str] = {}
        self._dropped: dict[str, None] = {}
        self._refused: dict[str, str] = {}
        self._removed: dict[str, str] = {}
        self._check_done()

    # ---- queries -------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._index
        except TypeError:
            return False

    @property
    def done(self) -> bool:
        """Every unit has an accepted result, no dispute is open and no spot check is still owed."""
        return self._accepted == len(self._units) and not self._disputes and not self._checks_out

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def next_deadline(self) -> float | None:
        """When `poll` next has a timer to act on, or None while nothing is out."""
        t = self._timers
        while t and not self._timer_valid(t[0]):
            heapq.heappop(t)
        return t[0][0] if t else None

    def units_held(self) -> dict[str, int]:
        """Units each worker's live leases still owe (for "who holds what" progress reports);
        workers holding none are left out."""
        return {w.id: sum(len(self._leases[lid].owed) for lid in w.leases)
                for w in self._workers.values() if w.leases}  # fmt: skip

    def statistics(self) -> ScheduleStatistics:
        workers = self._workers.values()
        units = self._units
        end = self._done_at if self._done_at is not None else self._latest
        return ScheduleStatistics(
            units_total=len(units),
            units_accepted=self._accepted,
            units_queued=sum(1 for u in units if u.queued),
            units_out=sum(1 for u in units if u.holders and u.source is None),
            units_by_peer={w.id: len(w.accepted) for w in workers if w.accepted},
            leases=self._leases_issued,
            leases_live=self._live_leases,
            lease_units=self._lease_units,
            revokes=dict(self._revokes),
            duplicates=self._duplicates,
            matches=self._matches,
            mismatches=self._mismatches,
            disputes_open=len(self._disputes),
            disputes_waiting=len(self._waiting),
            convictions=dict(self._convictions),
            discarded=self._discarded,
            spot_checks=sum(1 for u in units if u.spot),
            spot_checks_passed=self._spot_passed,
            strikes={w.id: w.strikes for w in workers if w.strikes},
            dropped=tuple(self._dropped),
            refused=dict(self._refused),
            removed=dict(self._removed),
            silences=self._silences,
            stalls=self._stalls,
            penalties=self._penalty_count,
            penalties_dropped=self._penalties_dropped,
            speed={w.id: s for w in workers if (s := w.speed) is not None},
            workers=sum(1 for w in workers if self._eligible(w)),
            elapsed_s=end - self._start,
        )

    # ---- events --------------------------------------------------------------------------------

    def add_worker(self, peer: str, now: float, *, prior: tuple[float, float] | None = None) -> bool:
        """A party member that can render joins the job (mid-job too: it gets work at the next
        poll). Brings back a removed worker, and a dropped one with its strikes cleared. Returns
        False, changing nothing, for a convicted or refusing worker or when WORKERS_MAX are known.
        `prior` is a new worker's speed as another coordinator measured it (`speed_state`): a
        streaming session's next version leases it full shares at once instead of calibrating."""
        self._time(now)
        _check_peer(peer)
        if prior is not None:
            ok = isinstance(prior, tuple) and len(prior) == 2
            if not ok or not all(isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in prior):
                raise LocalProtocolError(f"prior must be (cost_sum, busy_sum), both positive, not {prior!r}")
        w = self._workers.get(peer)
        if w is None:
            if len(self._workers) >= WORKERS_MAX:
                return False
            w = self._workers[peer] = _Worker(peer, len(self._workers), last_heard=now, busy_from=now)
            if prior is not None:
                w.cost_sum, w.busy_sum = float(prior[0]), max(float(prior[1]), BUSY_S_MIN)
        if w.status is _Status.CONVICTED or w.refused:
            return False
        w.status = _Status.ACTIVE
        self._removed.pop(peer, None)
        if w.dropped:
            w.dropped = False
            w.strikes = 0
            del self._dropped[peer]
        w.stalled = False  # a fresh start: it says it is back
        self._heard(w, now)
        self._track_open(w)
        return True

    def speed_state(self, peer: str) -> tuple[float, float] | None:
        """`peer`'s measured speed as the decayed (cost, busy seconds) sums behind it, or None."""
        w = self._workers.get(peer)
        if w is None or w.cost_sum <= 0:
            return None
        return (w.cost_sum, max(w.busy_sum, BUSY_S_MIN))

    def remove_worker(self, peer: str, now: float, reason: str = "connection lost") -> None:
        """`peer`'s connection is lost: its leases close at once and their units are queued again,
        without a strike. A peer this job does not know is ignored."""
        self._time(now)
        w = self._workers.get(_check_peer(peer))
        if w is None or w.status is not _Status.ACTIVE:
            return
        for lid in list(w.leases):
            self._close(self._leases[lid], None)
        w.status = _Status.GONE
        w.silent = w.stalled = False
        self._removed[peer] = str(reason)
        self._track_open(w)
        self._settle()

    def on_heartbeat(
        self, peer: str, lease_id: int | tuple[int, ...], now: float, *, samples_done: int, rendering: bool
    ) -> None:
        """`peer` is alive. `lease_id`: the lease it names, or the tuple of a `Heartbeat` (liveness
        is per worker; the ids are only checked for type). `samples_done`: a progress counter that
        changes while it renders; `rendering` False means it is fetching the scene or compiling."""
        self._time(now)
        _check_peer(peer)
        if not isinstance(lease_id, int | tuple | list):
            raise LocalProtocolError(f"lease_id must be an id or a tuple of ids, not {lease_id!r}")
        for lid in (lease_id,) if isinstance(lease_id, int) else lease_id:
            _check_lease_id(lid)
        if not isinstance(samples_done, int) or isinstance(samples_done, bool) or samples_done < 0:
            raise LocalProtocolError(f"samples_done must be a non-negative integer, not {samples_done!r}")
        if not isinstance(rendering, bool):
            raise LocalProtocolError(f"rendering must be a bool, not {rendering!r}")
        w = self._workers.get(peer)
        if self._cancelled or w is None or w.status is not _Status.ACTIVE:
            return
        self._heard(w, now)
        if samples_done != w.samples_done:
            w.samples_done = samples_done
            w.progress_at = now
            self._unstall(w)
        if rendering and not w.rendering:
            w.progress_at = now  # the stall clock counts rendering time only
        if not rendering:
            w.busy_from = now  # not rendering now: its next result's work starts later
        w.rendering = rendering
        self._arm(w)

    def on_result(self, peer: str, lease_id: int, unit_key: Hashable, digest: bytes, now: float) -> Verdict:
        """A unit's result arrived from `peer`; `digest` hashes its exact bytes. ACCEPT: store it
        and add it to the film; MATCH, MISMATCH, IGNORED: drop it. A result for a lease revoked
        earlier is still used when it answers a unit that lease owed."""
        self._time(now)
        _check_peer(peer)
        _check_lease_id(lease_id)
        if not isinstance(digest, bytes):
            raise LocalProtocolError(f"digest must be bytes, not {type(digest).__name__}")
        w = self._workers.get(peer)
        if self._cancelled or (w is not None and w.status is not _Status.ACTIVE):
            return Verdict.IGNORED
        if w is None:
            self._penalize(peer, "sent a result for a job it does not work on")
            return Verdict.IGNORED
        try:
            i = self._index.get(unit_key)
        except TypeError:
            i = None
        L = self._leases.get(lease_id)
        if L is None and 0 < lease_id < self._next_lease and i is not None:
            return Verdict.IGNORED  # a lease closed long ago and forgotten: not the peer's fault
        if i is None or L is None or L.peer != peer or i not in L.owed:
            self._penalize(peer, "sent a result it was not asked for")
            return Verdict.IGNORED
        u = self._units[i]
        self._heard(w, now)
        self._measure(w, u.cost, now)
        wanted = L.owed.pop(i)
        if L.live:
            del u.holders[L.id]
            w.owed_cost -= u.cost
            L.needed -= wanted
        verdict = self._judge(u, w, digest)
        self._refresh(u)
        if L.live:
            if not L.owed:
                self._close(L, None)
            elif not L.needed:
                self._unneeded[L.id] = None
        self._settle()
        self._track_open(w)  # measured now: it may hold more leases
        self._arm(w)
        self._check_done()
        return verdict

    def on_refuse(self, peer: str, lease_id: int, reason: str, now: float) -> None:
        """`peer` cannot take this lease (it cannot get the scene, say): its units are queued
        again and the worker gets no more leases in this job. Its other leases stand."""
        self._time(now)
        _check_peer(peer)
        _check_lease_id(lease_id)
        w = self._workers.get(peer)
        if self._cancelled or w is None or w.status is not _Status.ACTIVE:
            return
        L = self._leases.get(lease_id)
        if L is None or L.peer != peer:
            if not 0 < lease_id < self._next_lease:
                self._penalize(peer, "refused a lease it was never given")
            return
        self._heard(w, now)
        if not w.refused:
            w.refused = True
            self._refused[peer] = str(reason)
        if L.live:
            self._close(L, None)
        self._track_open(w)
        self._settle()

    def cancel(self, now: float) -> None:
        """The job is cancelled: every live lease is revoked and no new one is given. Results that
        arrive afterwards are IGNORED. Cancelling twice is harmless."""
        self._time(now)
        if self._cancelled:
            return
        self._cancelled = True
        for lid in sorted(lid for w in self._workers.values() for lid in w.leases):
            self._close(self._leases[lid], REVOKE_CANCELLED)
        self._open.clear()
        self._timers.clear()
        self._unneeded.clear()

    def poll(self, now: float) -> list[Action]:
        """Act on expired timers, lease queued work to free workers, and return every action since
        the last poll in the order they arose (Penalize, Revoke and Discard from events and timers
        first, then this poll's Leases). Repeated Penalize(peer, reason) between polls merge."""
        self._time(now)
        self._expire(now)
        self._settle()
        if not self._cancelled:
            self._schedule(now)
        self._check_done()
        actions, self._actions = self._actions, []
        self._penalties.clear()
        return actions

    # ---- internals: bookkeeping ----------------------------------------------------------------

    def _time(self, now: float) -> None:
        self._latest = self._clock.advance(now)

    def _check_done(self) -> None:
        if self.done:
            if self._done_at is None:
                self._done_at = self._latest
        else:
            self._done_at = None

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _penalize(self, peer: str, reason: str) -> None:
        self._penalty_count += 1
        key = (peer, reason)
        if key in self._penalties:
            return
        if len(self._penalties) >= PENALTIES_QUEUED_MAX:
            self._penalties_dropped += 1
            return
        self._penalties.add(key)
        self._emit(Penalize(peer, reason))

    def _eligible(self, w: _Worker) -> bool:
        return (
            w.status is _Status.ACTIVE
            and not (w.refused or w.dropped or w.silent or w.stalled)
            and not self._cancelled
        )

    def _slots(self, w: _Worker) -> int:
        """Leases `w` may hold: one calibration lease until its speed is measured."""
        return self.config.leases_per_worker if w.speed is not None else 1

    def _track_open(self, w: _Worker) -> None:
        eligible = self._eligible(w)
        if eligible and len(w.leases) < self._slots(w):
            self._open[w.id] = None
        else:
            self._open.pop(w.id, None)
        self._recount(w, eligible)

    def _recount(self, w: _Worker, eligible: bool) -> None:
        """Keep `w`'s part of the capacity behind lease shares up to date (every change of its
        speed or eligibility passes through `_track_open`)."""
        old = w.counted
        if old is not None:
            if old > 0.0:
                self._speed_sum -= old
                self._measured_n -= 1
            else:
                self._unmeasured_n -= 1
        new = (w.speed or 0.0) if eligible else None
        if new is not None:
            if new > 0.0:
                self._speed_sum += new
                self._measured_n += 1
            else:
                self._unmeasured_n += 1
        if not self._measured_n:
            self._speed_sum = 0.0  # no float drift survives an empty sum
        w.counted = new

    def _share(self, speed: float) -> float:
        """The most cost one lease to a worker of `speed` may take: its part of the queue."""
        measured = max(self._speed_sum, speed)
        mean = measured / max(self._measured_n, 1)
        capacity = measured + self._unmeasured_n * mean
        return self._queued_cost * speed / capacity / self.config.leases_per_worker

    def _heard(self, w: _Worker, now: float) -> None:
        w.last_heard = now
        if w.silent:
            w.silent = False
            self._track_open(w)

    def _measure(self, w: _Worker, cost: int, now: float) -> None:
        keep = 1.0 - 1.0 / self.config.speed_window_results
        w.cost_sum = w.cost_sum * keep + cost
        w.busy_sum = w.busy_sum * keep + max(0.0, now - w.busy_from)
        w.busy_from = now
        w.progress_at = now
        self._unstall(w)

    def _unstall(self, w: _Worker) -> None:
        if w.stalled:
            w.stalled = False
            self._track_open(w)

    def _need(self, u: _Unit, peer: str) -> bool:
        """Whether a result for `u` from `peer` is still wanted."""
        if u.source is None:
            return True
        if u.dispute is not None:
            return peer != u.source and peer != u.dispute.against  # it can settle the dispute
        return u.spot and u.checker is None and peer != u.source  # it can pass the spot check

    def _refresh(self, u: _Unit) -> None:
        """Recompute what follows from `u`'s state: queue, candidate heaps, disputes waiting for an
        arbiter, spot checks owed, and whether each lease owing it still wants it."""
        n = len(u.holders)
        accepted = u.source is not None
        queued = not accepted and n == 0
        if queued != u.queued:
            self._queued_cost += u.cost if queued else -u.cost
            if queued:
                heapq.heappush(self._queue, u.index)
        u.queued = queued
        dup_ok = not accepted and 0 < n <= self.config.duplicates_max
        if dup_ok and not u.dup_ok:
            heapq.heappush(self._dups, (u.out_since, u.index))
        u.dup_ok = dup_ok
        spot_ok = u.spot and not accepted and n == 1
        if spot_ok and not u.spot_ok:
            heapq.heappush(self._spots, (u.out_since, u.index))
        u.spot_ok = spot_ok
        d = u.dispute
        peers = [self._leases[lid].peer for lid in u.holders]
        if d is not None and all(p in (u.source, d.against) for p in peers):
            self._waiting.setdefault(u.index)
        else:
            self._waiting.pop(u.index, None)
        if u.spot and accepted and u.checker is None and d is None and any(p != u.source for p in peers):
            self._checks_out.add(u.index)
        else:
            self._checks_out.discard(u.index)
        for lid in u.holders:
            L = self._leases[lid]
            need = self._need(u, L.peer)
            if need != L.owed[u.index]:
                L.owed[u.index] = need
                L.needed += 1 if need else -1
                if not L.needed:
                    self._unneeded[lid] = None

    def _settle(self) -> None:
        """Revoke live leases left owing nothing anyone wants."""
        while self._unneeded:
            lid = next(iter(self._unneeded))
            del self._unneeded[lid]
            L = self._leases.get(lid)
            if L is not None and L.live and not L.needed:
                self._close(L, REVOKE_ACCEPTED)

    def _close(self, L: _Lease, reason: str | None) -> None:
        """End a live lease: completed or lost (`reason` None: nothing to tell the worker) or
        revoked. Units it owed stay listed in it, so that a late result is still used."""
        L.live = False
        self._live_leases -= 1
        w = self._workers[L.peer]
        del w.leases[L.id]
        for i in L.owed:
            u = self._units[i]
            del u.holders[L.id]
            w.owed_cost -= u.cost
            self._refresh(u)
        if reason is not None:
            self._emit(Revoke(L.peer, L.id, reason))
            self._revokes[reason] = self._revokes.get(reason, 0) + 1
        self._unneeded.pop(L.id, None)
        self._closed[L.id] = None
        if len(self._closed) > LEASE_RECORDS_MAX:
            old = next(iter(self._closed))
            del self._closed[old]
            del self._leases[old]
        self._track_open(w)
        self._arm(w)

    def _revoke_all(self, w: _Worker, reason: str) -> None:
        for lid in list(w.leases):
            self._close(self._leases[lid], reason)

    def _strike(self, w: _Worker) -> None:
        w.strikes += 1
        if w.strikes >= self.config.strikes_max and not w.dropped and w.status is _Status.ACTIVE:
            w.dropped = True
            self._dropped[w.id] = None
            self._revoke_all(w, REVOKE_DROPPED)
            self._track_open(w)

    # ---- internals: verification ---------------------------------------------------------------

    def _judge(self, u: _Unit, w: _Worker, digest: bytes) -> Verdict:
        if u.source is None:
            u.source = w.id
            u.digest = digest
            w.accepted[u.index] = None
            self._accepted += 1
            return Verdict.ACCEPT
        d = u.dispute
        if digest == u.digest:
            self._matches += 1
            if w.id != u.source:
                if d is not None and w.id != d.against:  # the arbiter sides with the accepted result
                    dissenter = self._workers[d.against]
                    self._end_dispute(u)
                    self._convict(dissenter, f"its result for unit {u.key!r} disagreed with two others")
                    self._refresh(u)
                elif d is None and u.checker is None:
                    u.checker = w.id
                    w.confirmed.add(u.index)
                    self._spot_passed += u.spot
            return Verdict.MATCH
        self._mismatches += 1
        trusted = self.config.trusted
        if w.id == u.source:
            self._penalize(w.id, f"sent two different results for unit {u.key!r}")
        elif d is None and trusted and trusted in (w.id, u.source):
            # the coordinator's own renderer cannot lie to it: no arbiter needed
            # (a liar's accepted result is voided and the unit queued again, like the rest of its)
            liar = self._workers[u.source if w.id == trusted else w.id]
            self._convict(liar, f"its result for unit {u.key!r} disagreed with the coordinator's own")
        elif d is None:
            u.dispute = _Dispute(w.id, digest)
            w.against.add(u.index)
            self._disputes[u.index] = None
        elif w.id != d.against:  # a third opinion settles it
            source = self._workers[u.source]
            if digest == d.digest:
                self._end_dispute(u)
                self._convict(source, f"its result for unit {u.key!r} disagreed with two others")
            else:
                why = f"three different results for unit {u.key!r}"
                for p in (u.source, d.against, w.id):
                    self._penalize(p, why)
                self._end_dispute(u)
                self._void(u)
                self._emit(Discard(source.id, (u.key,)))
            self._refresh(u)
        return Verdict.MISMATCH

    def _end_dispute(self, u: _Unit) -> None:
        assert u.dispute is not None
        self._workers[u.dispute.against].against.discard(u.index)
        u.dispute = None
        del self._disputes[u.index]
        self._waiting.pop(u.index, None)

    def _void(self, u: _Unit) -> None:
        """The accepted result of `u` no longer stands (the caller is told with a Discard)."""
        assert u.source is not None
        del self._workers[u.source].accepted[u.index]
        if u.checker is not None:
            self._workers[u.checker].confirmed.discard(u.index)
        if u.dispute is not None:
            self._end_dispute(u)
        u.source = u.digest = u.checker = None
        self._accepted -= 1
        self._discarded += 1

    def _convict(self, w: _Worker, reason: str) -> None:
        if w.status is _Status.CONVICTED:
            return
        self._penalize(w.id, reason)
        self._revoke_all(w, REVOKE_CONVICTED)
        w.status = _Status.CONVICTED
        w.silent = w.stalled = False
        self._convictions[w.id] = reason
        self._removed.pop(w.id, None)
        self._track_open(w)
        voided = sorted(w.accepted)
        touched = set(voided) | w.confirmed
        for i in voided:
            self._void(self._units[i])
        if voided:
            self._emit(Discard(w.id, tuple(self._units[i].key for i in voided)))
        # disputes it raised stay open: a liar's dissent does not make the accepted result right,
        # so an arbiter still settles them
        for i in sorted(w.confirmed):  # checks it passed prove nothing
            self._units[i].checker = None
        w.confirmed.clear()
        for i in sorted(touched):
            self._refresh(self._units[i])

    # ---- internals: timers ---------------------------------------------------------------------

    def _stall_s(self, w: _Worker) -> float:
        sp = w.speed
        if sp is None or not w.leases:
            return self.config.first_lease_s
        L = self._leases[next(iter(w.leases))]
        u = self._units[next(iter(L.owed))]
        return max(self.config.stall_min_s, self.config.stall_factor * u.cost / sp)

    def _arm(self, w: _Worker) -> None:
        """(Re)arm `w`'s liveness timer: heartbeat silence, or rendering without progress."""
        w.timer += 1
        if not w.leases:
            return
        due = w.last_heard + self.config.heartbeat_timeout_s
        if w.rendering:
            due = min(due, w.progress_at + self._stall_s(w))
        heapq.heappush(self._timers, (due, next(self._seq), 1, w.id, w.timer))

    def _timer_valid(self, entry: tuple[float, int, int, int | str, int]) -> bool:
        due, _, kind, ref, version = entry
        if kind == 0:
            L = self._leases.get(ref)
            return L is not None and L.live and L.deadline == due
        w = self._workers[ref]
        return w.timer == version and bool(w.leases)

    def _expire(self, now: float) -> None:
        t = self._timers
        while t and t[0][0] <= now:
            entry = heapq.heappop(t)
            if not self._timer_valid(entry):
                continue
            _, _, kind, ref, _ = entry
            if kind == 0:
                L = self._leases[ref]
                self._close(L, REVOKE_DEADLINE)
                self._strike(self._workers[L.peer])
                continue
            w = self._workers[ref]
            if now >= w.last_heard + self.config.heartbeat_timeout_s:
                self._silences += 1
                w.silent = True
                self._revoke_all(w, REVOKE_SILENT)
                self._track_open(w)
            elif w.rendering and now >= w.progress_at + self._stall_s(w):
                self._stalls += 1
                w.stalled = True
                self._revoke_all(w, REVOKE_STALLED)
                w.progress_at = now
                self._strike(w)
                self._track_open(w)
            else:
                self._arm(w)
        if len(t) > 4 * (self._live_leases + len(self._workers)) + 64:  # stale entries pile up: compact
            self._timers = [e for e in t if self._timer_valid(e)]
            heapq.heapify(self._timers)

    # ---- internals: scheduling -----------------------------------------------------------------

    def _prune(self, heap: list, valid) -> bool:
        """Drop invalid entries from the top of `heap`; whether a valid one is left."""
        while heap and not valid(heap[0]):
            heapq.heappop(heap)
        return bool(heap)

    def _queue_valid(self, i: int) -> bool:
        return self._units[i].queued

    def _dup_valid(self, e: tuple[float, int]) -> bool:
        u = self._units[e[1]]
        return u.dup_ok and u.out_since == e[0]

    def _spot_valid(self, e: tuple[float, int]) -> bool:
        u = self._units[e[1]]
        return u.spot_ok and u.out_since == e[0]

    def _work_exists(self) -> bool:
        return (
            bool(self._waiting)
            or self._prune(self._queue, self._queue_valid)
            or self._prune(self._spots, self._spot_valid)
            or self._prune(self._dups, self._dup_valid)
        )

    def _schedule(self, now: float) -> None:
        """Fill free workers' lease slots, fastest measured worker first (then join order)."""
        if not self._open or not self._work_exists():
            return
        order = [(-(w.speed or 0.0), w.seq, w.id) for w in (self._workers[p] for p in self._open)]
        heapq.heapify(order)
        while order and self._work_exists():
            w = self._workers[heapq.heappop(order)[2]]
            while w.id in self._open:
                units = self._take(w)
                if not units:
                    break
                self._issue(w, units, now)
        n = len(self._units)
        for name, valid in (("_dups", self._dup_valid), ("_spots", self._spot_valid)):
            heap = getattr(self, name)
            if len(heap) > 2 * n + 64:
                setattr(self, name, [e for e in heap if valid(e)])
                heapq.heapify(getattr(self, name))
        if len(self._queue) > 2 * n + 64:
            self._queue = [i for i in self._queue if self._queue_valid(i)]
            heapq.heapify(self._queue)

    def _take(self, w: _Worker) -> list[int]:
        """The units of `w`'s next lease: disputes it can settle, spot checks it can make, queued
        units in queue order, then (queue empty) duplicates of the units out longest."""
        cfg = self.config
        speed = w.speed
        count_max = cfg.lease_units_max if speed is not None else cfg.first_lease_units
        target = min(speed * cfg.lease_target_s, self._share(speed)) if speed is not None else math.inf
        took: list[int] = []
        taken: set[int] = set()
        total = 0

        def room(cost: int) -> bool:
            return len(took) < count_max and (not took or total + cost / 2 <= target)

        def add(i: int) -> None:
            nonlocal total
            took.append(i)
            taken.add(i)
            total += self._units[i].cost

        for i in list(self._waiting):
            u = self._units[i]
            assert u.dispute is not None
            if w.id in (u.source, u.dispute.against):
                continue
            if not room(u.cost):
                return took
            add(i)
        if not self._take_dups(w, self._spots, self._spot_valid, room, add, taken):
            return took
        q = self._queue
        from_queue = 0
        while self._prune(q, self._queue_valid):
            if not room(self._units[q[0]].cost):
                self._whole_frames(took, from_queue)
                return took
            add(heapq.heappop(q))
            from_queue += 1
        self._take_dups(w, self._dups, self._dup_valid, room, add, taken)
        return took

    def _whole_frames(self, took: list[int], from_queue: int) -> None:
        """A lease that holds a whole frame from the queue ends at a frame boundary: the units of a
        frame it would only start go back to the queue, so a measured worker's leases are blocks of
        consecutive whole frames (a frame is then one peer's, and done in one piece) whenever a
        frame is smaller than its lease."""
        q = self._queue
        if from_queue < 2 or not q:
            return
        units = self._units
        last = units[took[-1]].frame
        if last is None or units[q[0]].frame != last:
            return  # no frames, or the lease already ends where a frame does
        tail = 0
        while tail < from_queue and units[took[-1 - tail]].frame == last:
            tail += 1
        if tail == from_queue:
            return  # the lease holds part of one frame only: the frame is bigger than a lease
        for _ in range(tail):
            i = took.pop()
            heapq.heappush(q, i)

    def _take_dups(self, w: _Worker, heap: list, valid, room, add, taken: set[int]) -> bool:
        """Take candidates from `heap` (oldest out first) that `w` does not hold; False when the
        lease is full."""
        aside = []
        full = False
        while self._prune(heap, valid):
            i = heap[0][1]
            u = self._units[i]
            if i in taken or any(self._leases[lid].peer == w.id for lid in u.holders):
                aside.append(heapq.heappop(heap))
                continue
            if not room(u.cost):
                full = True
                break
            add(i)
            aside.append(heapq.heappop(heap))  # still a candidate for others until the lease refreshes it
        for e in aside:
            heapq.heappush(heap, e)
        return not full

    def _issue(self, w: _Worker, idxs: list[int], now: float) -> None:
        cfg = self.config
        cost = sum(self._units[i].cost for i in idxs)
        speed = w.speed
        if speed is None:
            allowance = cfg.first_lease_s
        else:
            allowance = cfg.lease_slack * (w.owed_cost + cost) / speed + cfg.lease_grace_s
        if not w.leases:  # it owed nothing: its heartbeat, busy and stall clocks start now
            w.last_heard = max(w.last_heard, now)
            w.busy_from = now
            w.progress_at = now
        lid = self._next_lease
        self._next_lease += 1
        L = _Lease(lid, w.id, dict.fromkeys(idxs, False), now, now + allowance)
        self._leases[lid] = L
        self._live_leases += 1
        w.leases[lid] = None
        w.owed_cost += cost
        for i in idxs:
            u = self._units[i]
            if u.holders or u.source is not None:
                self._duplicates += 1
            if not u.holders:
                u.out_since = now
            u.holders[lid] = None
            self._refresh(u)
        self._leases_issued += 1
        self._lease_units += len(idxs)
        heapq.heappush(self._timers, (L.deadline, next(self._seq), 0, lid, 0))
        self._track_open(w)
        self._arm(w)
        self._emit(Lease(w.id, lid, tuple(self._units[i].key for i in idxs), L.deadline))


# ---- the worker's side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderNext:
    """Render this unit next (call `started`, then `finished`, and send its result)."""

    lease_id: int
    unit: Hashable


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Tell the coordinator we are alive: the leases we hold, a job-wide samples counter that grows
    as we render, and whether we render (False: fetching the scene or compiling kernels)."""

    lease_ids: tuple[int, ...]
    samples_done: int
    rendering: bool


WorkerAction = RenderNext | Heartbeat

WORKER_LEASE_IDS_MAX = 4096  # lease ids a worker remembers to refuse a repeat; older ones are forgotten


@dataclass(slots=True)
class _Held:
    units: tuple[Hashable, ...]
    next: int = 0  # units handed out so far


class WorkerJob:
    """One peer's side of one job: leases in, one unit at a time out, heartbeats while it holds a
    lease. Units run in lease-arrival order; a revoked lease's remaining units are skipped (the unit
    rendering now finishes, and its result is still sent: the caller decides)."""

    def __init__(self, now: float, *, heartbeat_s: float = HEARTBEAT_S):
        _check_number("heartbeat_s", heartbeat_s, positive=True)
        self.heartbeat_s = float(heartbeat_s)
        self._clock = _Clock(now)
        self._held: dict[int, _Held] = {}
        self._seen: dict[int, None] = {}  # lease ids received, oldest first
        self._handed: tuple[int, Hashable] | None = None  # RenderNext given, not started
        self._current: tuple[int, Hashable] | None = None  # started, not finished
        self._preparing = False
        self._samples_base = 0  # samples of finished units
        self._samples_unit = 0  # samples of the unit rendering now
        self._heartbeat_at: float | None = None

    @property
    def lease_ids(self) -> tuple[int, ...]:
        """Leases held: received, not revoked, not finished."""
        return tuple(self._held)

    @property
    def rendering(self) -> Hashable | None:
        """The unit started and not finished, if any."""
        return self._current[1] if self._current else None

    @property
    def idle(self) -> bool:
        return not self._held and self._handed is None and self._current is None

    def on_lease(self, lease_id: int, units: Iterable[Hashable], deadline: float, now: float) -> bool:
        """A lease arrived. Returns False, ignoring it, for a lease id seen before or no units.
        `deadline` is on the coordinator's clock: the coordinator enforces it, not this side."""
        self._clock.advance(now)
        _check_lease_id(lease_id)
        _check_number("deadline", deadline, positive=False)
        if isinstance(units, str | bytes):
            raise LocalProtocolError("units must be a collection of unit keys, not one string")
        units = tuple(units)
        if lease_id in self._seen or not units:
            return False
        self._seen[lease_id] = None
        if len(self._seen) > WORKER_LEASE_IDS_MAX:
            del self._seen[next(iter(self._seen))]
        if not self._held:
            self._heartbeat_at = now  # say at once that it arrived, then every heartbeat_s
        self._held[lease_id] = _Held(units)
        return True

    def on_revoke(self, lease_id: int, now: float) -> bool:
        """The coordinator took this lease back. Returns whether it was held (a race is harmless)."""
        self._clock.advance(now)
        _check_lease_id(lease_id)
        held = self._held.pop(lease_id, None) is not None
        if not self._held:
            self._heartbeat_at = None
        return held

    def preparing(self, flag: bool) -> None:
        """The caller is fetching the scene or compiling kernels (True) or done with that (False)."""
        if not isinstance(flag, bool):
            raise LocalProtocolError(f"preparing takes a bool, not {flag!r}")
        self._preparing = flag

    def started(self, unit: Hashable, now: float) -> None:
        """The caller starts rendering the unit of the last RenderNext."""
        self._clock.advance(now)
        if self._handed is None or self._handed[1] != unit:
            raise LocalProtocolError(f"started {unit!r}, but the unit handed out is {self._handed!r}")
        self._current, self._handed = self._handed, None
        self._samples_unit = 0

    def progress(self, samples_done: int, now: float) -> None:
        """Samples rendered so far in the current unit (never fewer than last time)."""
        self._clock.advance(now)
        if self._current is None:
            raise LocalProtocolError("progress reported while no unit is rendering")
        if not isinstance(samples_done, int) or isinstance(samples_done, bool) or samples_done < 0:
            raise LocalProtocolError(f"samples_done must be a non-negative integer, not {samples_done!r}")
        if samples_done < self._samples_unit:
            raise LocalProtocolError(f"progress went backwards: {samples_done} after {self._samples_unit}")
        self._samples_unit = samples_done

    def finished(self, unit: Hashable, now: float) -> None:
        """The current unit is rendered (the caller sends its result)."""
        self._clock.advance(now)
        if self._current is None or self._current[1] != unit:
            raise LocalProtocolError(f"finished {unit!r}, but the unit rendering is {self._current!r}")
        lid = self._current[0]
        self._current = None
        self._samples_base += self._samples_unit
        self._samples_unit = 0
        h = self._held.get(lid)
        if h is not None and h.next >= len(h.units):
            del self._held[lid]
            if not self._held:
                self._heartbeat_at = None

    def next_deadline(self) -> float | None:
        """When the next heartbeat is due, or None while no lease is held. Poll after every event
        too: that is when a RenderNext comes."""
        return self._heartbeat_at if self._held else None

    def poll(self, now: float) -> list[WorkerAction]:
        """A Heartbeat when one is due, then a RenderNext when nothing is handed out or rendering."""
        self._clock.advance(now)
        actions: list[WorkerAction] = []
        if self._held and self._heartbeat_at is not None and now >= self._heartbeat_at:
            actions.append(
                Heartbeat(
                    tuple(self._held),
                    self._samples_base + self._samples_unit,
                    self._current is not None and not self._preparing,
                )
            )
            self._heartbeat_at = now + self.heartbeat_s
        if self._current is None and self._handed is None:
            for lid, h in self._held.items():
                if h.next < len(h.units):
                    self._handed = (lid, h.units[h.next])
                    h.next += 1
                    actions.append(RenderNext(lid, h.units[h.next - 1]))
                    break
        return actions
