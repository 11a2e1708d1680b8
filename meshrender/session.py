"""How a streaming session refines one scene version after another, with no I/O and no clock.

A session is a progressive job whose scene can change under it. The edge builds a `SessionCore`
from the first `SceneVersion` (the scene's manifest id and its render settings) and the time, says
which party members render (`add_worker`, `remove_worker`), hands over what they send
(`on_heartbeat`, `on_result`, `on_refuse`) and what its clients do (`add_watcher`,
`remove_watcher`, `watcher_ready`, `edit`, `stop`), then calls `poll(now)` and carries out the
actions it returns: `Lease`, `Revoke`, `Penalize`, `Preview`, `Converged`, `Ended`. It arms a
timer for `next_deadline()` and polls again when that fires. Time is always an argument.

  * Versions. Each version has a number (1, 2, ...) and its own `schedule.Coordinator` over the
    frame's units, pass-major over all buckets, one pass per unit (units.frame_units): leases take
    pass 0 everywhere first, so the whole image refines together. An `edit` cancels the old
    coordinator, so every lease it still has out is revoked at once (`Revoke`, REVOKE_EDITED),
    and the new version's first pass is leased to every worker at the next poll. An edit that
    changes nothing (same scene id, settings and frame) makes no new version.
  * Leases. A session is a job whose scene can change, so the lease table is the coordinator's,
    unchanged: speeds, deadlines, heartbeats, stalls, endgame duplicates and verification are
    schedule.py's. Each worker's measured speed carries over to the next version (its first
    leases there are full shares, not a one-unit calibration lease). The session only renames its
    lease ids: session lease ids are never reused across versions, so one worker state
    (schedule.WorkerJob) serves them all, and it remembers the last LEASE_RECORDS_MAX leases to
    tell a late result from a bogus one.
  * Results. `on_result` answers a `Received`: ACCEPTED (it is in this version's film, or will be
    once the passes before it are complete), DUPLICATE (bit-identical to the accepted one),
    MISMATCH (verification takes over), STALE (a lease of an older version or of an ended
    session: dropped and counted, never in an image), IGNORED (from a worker removed or
    convicted, or a lease too old to remember) or FAULT: the peer's fault (a lease it was not
    given, a unit its lease did not name, a version its lease is not of, a second result for one
    unit of a lease, a malformed result), with a `Penalize`; it never raises for what a peer
    sent. A result of a lease the current coordinator revoked for a missed deadline is still
    used, as in a job: it is this version's unit, with this version's bits.
  * Film. An accepted result of pass k waits until every bucket of passes 0..k has one; then
    pass k joins the version's `Film` (canonical pass order, as film.py does it). So the film holds
    exactly passes 0..pass_done-1 at every pixel: a preview never mixes passes or versions, and
    a converged film is, bit for bit, `render.render_frame` of that version. A result voided by
    verification (schedule.Discard) that still waits is dropped; one already in the film cannot be
    taken out again, so the version restarts under a new number (REVOKE_RESTARTED), the convicted
    peers left out of it. Waiting results are held in memory: the units returned past the first
    incomplete pass (leases go in pass order, and a lost unit is leased again at its deadline).
  * Previews. Each watcher gets a `Preview` of the newest complete pass at most every
    `preview_interval_s`, and only once it has acknowledged its last one (`watcher_ready`): a slow
    watcher gets fewer frames, the latest each time, never a queue. A Preview says which version
    and how many passes it shows, and which peers rendered them. Its image is shared and
    read-only.
  * Ending. `Converged(version)` once every unit of the version is in the film and verified (the
    session stays open for the next edit). The session ends (`Ended`) on `stop`, or after
    `idle_s` with no watcher and no edit; its leases are revoked then (REVOKE_ENDED).

Our misuse (time running backwards, wrong argument types, an edit after the end) raises
`schedule.LocalProtocolError`; nothing a peer or a watcher sends raises.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from . import schedule
from .film import Film
from .schedule import WORKERS_MAX, LocalProtocolError, ScheduleConfig
from .settings import RenderSettings
from .units import FRAME_MAX, UnitResult, WorkUnit, frame_units

# a lease is this much work at the worker's speed (a job's are 3 s): a pass is spread over every
# worker and comes in within a few tenths of a second, rather than in one worker's first lease
LEASE_TARGET_S = 0.1
IDLE_S = 300.0  # a session nobody watches or edits for 5 minutes ends: its workers go back to the queue
PREVIEW_INTERVAL_S = 1.0 / 15  # at most 15 frames a second to one watcher: a viewport, not a video
WATCHERS_MAX = 256  # watchers of one session: each preview is one frame sent to every one of them
LEASE_RECORDS_MAX = 1 << 16  # leases remembered (any version) to tell a late result from a bogus one
VERSION_MAX = (1 << 53) - 1  # version numbers travel as JSON numbers to the web page: exact in a double
SCENE_ID_CHARS_MAX = 256  # a manifest hash is 64 hex digits; anything much longer is a caller's bug
PENALTIES_QUEUED_MAX = 1024  # Penalize actions waiting for the next poll; a flood beyond is counted

REVOKE_EDITED = "scene edited"
REVOKE_RESTARTED = "version restarted: results voided"
REVOKE_ENDED = "session ended"

END_STOPPED = "stopped"
END_IDLE = "idle"


# ---- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SceneVersion:
    """What one version renders: the compiled scene's manifest id, the settings, the frame."""

    scene_id: str
    settings: RenderSettings
    frame: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.scene_id, str) or not 0 < len(self.scene_id) <= SCENE_ID_CHARS_MAX:
            raise LocalProtocolError(
                f"scene id must be 1..{SCENE_ID_CHARS_MAX} characters, not {self.scene_id!r}"
            )
        if not isinstance(self.settings, RenderSettings):
            raise LocalProtocolError(f"settings must be RenderSettings, not {type(self.settings).__name__}")
        if (
            not isinstance(self.frame, int)
            or isinstance(self.frame, bool)
            or not 0 <= self.frame <= FRAME_MAX
        ):
            raise LocalProtocolError(f"frame must be an integer in 0..{FRAME_MAX}, not {self.frame!r}")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The knobs of one session. Times are seconds of the caller's monotonic clock."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(lease_target_s=LEASE_TARGET_S))
    preview_interval_s: float = PREVIEW_INTERVAL_S
    idle_s: float = IDLE_S

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, ScheduleConfig):
            raise LocalProtocolError(f"schedule must be a ScheduleConfig, not {self.schedule!r}")
        for name in ("preview_interval_s", "idle_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise LocalProtocolError(f"{name} must be a finite non-negative number, not {v!r}")


class Outcome(Enum):
    """What became of a result (see the module docstring)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    MISMATCH = "mismatch"
    STALE = "stale"
    IGNORED = "ignored"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Received:
    """`on_result`'s answer. For FAULT, `reason` says what the peer did wrong (a Penalize with the
    same reason follows at the next poll); the caller may drop the peer."""

    outcome: Outcome
    reason: str = ""

    @property
    def fault(self) -> bool:
        return self.outcome is Outcome.FAULT


# ---- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """Give `peer` these units of `version` to render in this order, due at `deadline`."""

    peer: str
    version: int
    lease_id: int
    units: tuple[WorkUnit, ...]
    deadline: float


@dataclass(frozen=True, slots=True)
class Revoke:
    """Tell `peer` to drop this lease; its results are not used any more when the version is old."""

    peer: str
    version: int
    lease_id: int
    units: tuple[WorkUnit, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Penalize:
    """`peer` misbehaved; the caller logs it and decides (after a conviction: disconnect it)."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class Preview:
    """Send `watcher` this frame: passes 0..pass_done-1 of `version` (`samples` per pixel) at every
    pixel, rendered by `peers`. `image` is float32 (H, W, 3) mean radiance, read-only, shared."""

    watcher: str
    version: int
    pass_done: int
    pass_count: int
    samples: int
    peers: tuple[str, ...]
    image: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class Converged:
    """Every unit of `version` is in and verified: `image` is its final frame (read-only)."""

    version: int
    scene: SceneVersion
    image: np.ndarray


@dataclass(frozen=True, slots=True)
class Ended:
    reason: str


Action = Lease | Revoke | Penalize | Preview | Converged | Ended


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """What a session has done so far."""

    version: int
    scene_id: str
    pass_done: int
    pass_count: int
    versions: int  # versions made, restarts included
    edits: int
    restarts: int
    results: dict[str, int]  # Outcome value -> results with that outcome, every version
    faults: dict[str, int]  # FAULT reason -> count
    leases: int  # leases issued, every version
    leases_live: int  # of the current version
    previews: int
    watchers: int
    workers: int
    banned: tuple[str, ...]  # convicted peers: no lease in any later version
    converged: tuple[int, ...]  # versions that converged, oldest first
    ended: str | None


# ---- records ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LeaseRecord:
    version: int
    peer: str
    job_lease: int  # the coordinator's id of it
    units: tuple[WorkUnit, ...]
    revoked: str | None = None
    returned: set[WorkUnit] = field(default_factory=set)  # units whose result was taken (or dropped)


@dataclass(slots=True)
class _Watcher:
    ready: bool = True  # acknowledged its last frame (or got none yet)
    sent: tuple[int, int] | None = None  # (version, pass_done) of the last frame sent
    sent_at: float = -math.inf


class _Version:
    """One scene version: its coordinator, its film, and the accepted results waiting for the
    passes before theirs."""

    def __init__(self, number: int, scene: SceneVersion, now: float, config: ScheduleConfig):
        s = scene.settings
        self.number = number
        self.scene = scene
        self.units = frame_units(s, frame=scene.frame)
        self.buckets = len(self.units) // s.pass_count
        self.coord = schedule.Coordinator(
            [(u, u.pixels * u.samples(s)) for u in self.units], now, config=config
        )
        self.film = Film(s, scene.frame)
        self.film.keep_blocks = False  # duplicates are compared by digest in the coordinator
        self.waiting: list[dict[WorkUnit, tuple[UnitResult, str]]] = [{} for _ in range(s.pass_count)]
        self.pass_done = 0
        self.peers: dict[str, int] = {}  # peer -> its units in the film
        self.leases: dict[int, int] = {}  # coordinator lease id -> session lease id
        self.penalized = False  # the coordinator has said Penalize: it may have convicted someone
        self.converged = False
        self._image: tuple[int, np.ndarray] | None = None

    @property
    def pass_count(self) -> int:
        return self.scene.settings.pass_count

    @property
    def complete(self) -> bool:
        return self.pass_done == self.pass_count

    def samples(self) -> int:
        return self.scene.settings.pass_range(self.pass_done - 1)[1] if self.pass_done else 0

    def accept(self, result: UnitResult, peer: str) -> None:
        self.waiting[result.unit.pass_index][result.unit] = (result, peer)
        while not self.complete and len(self.waiting[self.pass_done]) == self.buckets:
            for res, p in self.waiting[self.pass_done].values():  # disjoint buckets: any order
                self.film.add(res)
                self.peers[p] = self.peers.get(p, 0) + 1
            self.waiting[self.pass_done] = {}
            self.pass_done += 1

    def void(self, unit: WorkUnit) -> bool:
        """Drop a voided result that still waits; False when it is in the film already."""
        if unit.pass_index < self.pass_done:
            return False
        self.waiting[unit.pass_index].pop(unit, None)
        return True

    def image(self) -> np.ndarray:
        if self._image is None or self._image[0] != self.pass_done:
            img = self.film.image()
            img.setflags(write=False)
            self._image = (self.pass_done, img)
        return self._image[1]


def _check_peer(peer: object) -> str:
    if not isinstance(peer, str) or not peer:
        raise LocalProtocolError(f"peer id must be a non-empty string, not {peer!r}")
    return peer


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{name} must be an integer, not {value!r}")
    return value


def result_digest(result: UnitResult) -> bytes:
    """A hash of a result's exact bytes (sums, sample counts, AOVs): duplicates compare by it."""
    h = hashlib.blake2b(digest_size=32)
    h.update(repr((result.unit, list(result.sample_counts))).encode())
    h.update(np.ascontiguousarray(result.sums).tobytes())
    if result.aov_sums is not None:
        h.update(b"aov")
        h.update(np.ascontiguousarray(result.aov_sums).tobytes())
    return h.digest()


def _malformed(result: UnitResult, settings: RenderSettings) -> str | None:
    """What is wrong with a result's numbers for this version, or None."""
    u = result.unit
    want = [settings.pass_range(k)[1] - settings.pass_range(k)[0] for k in u.passes]
    if list(result.sample_counts) != want:
        return "sent a result with the wrong sample counts"
    if not np.all(np.isfinite(result.sums)) or float(result.sums.min(initial=0.0)) < 0.0:
        return "sent a result with NaN, infinite or negative radiance"
    if result.aov_sums is not None and not np.all(np.isfinite(result.aov_sums)):
        return "sent a result with NaN or infinite AOVs"
    return None


class SessionCore:
    """A streaming session's state machine. See the module docstring."""

    def __init__(self, scene: SceneVersion, now: float, *, config: SessionConfig | None = None):
        if not isinstance(scene, SceneVersion):
            raise LocalProtocolError(f"scene must be a SceneVersion, not {scene!r}")
        config = SessionConfig() if config is None else config
        if not isinstance(config, SessionConfig):
            raise LocalProtocolError(f"config must be a SessionConfig, not {config!r}")
        self.config = config
        self._now = self._check_time(now)
        self._workers: dict[str, None] = {}
        self._banned: dict[str, None] = {}
        self._watchers: dict[str, _Watcher] = {}
        self._leases: dict[int, _LeaseRecord] = {}  # session lease id -> record, oldest first
        self._next_lease = 1
        self._actions: list[Action] = []
        self._penalties: set[tuple[str, str]] = set()
        self._penalties_dropped = 0
        self._outcomes: dict[str, int] = {}
        self._faults: dict[str, int] = {}
        self._versions = 1
        self._edits = self._restarts = self._previews = self._leases_issued = 0
        self._converged: list[int] = []
        self._ended: str | None = None
        self._idle_from = now
        self._v = _Version(1, scene, now, config.schedule)

    # ---- queries -------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The current version's number."""
        return self._v.number

    @property
    def scene(self) -> SceneVersion:
        return self._v.scene

    @property
    def pass_done(self) -> int:
        """Passes complete over every bucket of the current version (all of them in its film)."""
        return self._v.pass_done

    @property
    def film(self) -> Film:
        """The current version's film: exactly passes 0..pass_done-1 everywhere. Do not add to it."""
        return self._v.film

    @property
    def ended(self) -> str | None:
        """Why the session ended, or None while it runs."""
        return self._ended

    @property
    def converged(self) -> bool:
        return self._v.converged

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._workers)

    @property
    def watchers(self) -> tuple[str, ...]:
        return tuple(self._watchers)

    def next_deadline(self) -> float | None:
        """When `poll` next has something timed to do (a lease or liveness timer, a preview held
        back by the rate limit, the idle limit), or None."""
        if self._ended is not None:
            return None
        due = [d] if (d := self._v.coord.next_deadline()) is not None else []
        if not self._watchers:
            due.append(self._idle_from + self.config.idle_s)
        elif self._v.pass_done:
            state = (self._v.number, self._v.pass_done)
            due += [w.sent_at + self.config.preview_interval_s
                    for w in self._watchers.values() if w.ready and w.sent != state]  # fmt: skip
        return min(due) if due else None

    def statistics(self) -> SessionStatistics:
        v = self._v
        return SessionStatistics(
            version=v.number,
            scene_id=v.scene.scene_id,
            pass_done=v.pass_done,
            pass_count=v.pass_count,
            versions=self._versions,
            edits=self._edits,
            restarts=self._restarts,
            results=dict(self._outcomes),
            faults=dict(self._faults),
            leases=self._leases_issued,
            leases_live=v.coord.statistics().leases_live,
            previews=self._previews,
            watchers=len(self._watchers),
            workers=len(self._workers),
            banned=tuple(self._banned),
            converged=tuple(self._converged),
            ended=self._ended,
        )

    # ---- events: workers -----------------------------------------------------------------------

    def add_worker(self, peer: str, now: float) -> bool:
        """A party member that renders joins the session (it gets work at the next poll; again
        after it was dropped from the version's job). False, changing nothing, for a convicted
        peer, an ended session, or past WORKERS_MAX."""
        self._time(now)
        _check_peer(peer)
        if self._ended is not None or peer in self._banned:
            return False
        if peer not in self._workers and len(self._workers) >= WORKERS_MAX:
            return False
        if not self._v.coord.add_worker(peer, now):
            return False
        self._workers[peer] = None
        return True

    def remove_worker(self, peer: str, now: float, reason: str = "connection lost") -> None:
        """`peer` is gone: its leases of the current version go back to the queue at once."""
        self._time(now)
        _check_peer(peer)
        if peer in self._workers:
            del self._workers[peer]
            if self._ended is None:
                self._v.coord.remove_worker(peer, now, reason)

    def on_heartbeat(
        self, peer: str, now: float, *, lease_ids: Iterable[int] = (), samples_done: int, rendering: bool
    ) -> None:
        """`peer` is alive (see schedule.Coordinator.on_heartbeat); leases of old versions it still
        names are left out."""
        self._time(now)
        _check_peer(peer)
        if isinstance(lease_ids, str | bytes):
            raise LocalProtocolError("lease_ids must be a collection of lease ids")
        ids = []
        for lid in lease_ids:
            rec = self._leases.get(_check_int("lease id", lid))
            if rec is not None and rec.version == self._v.number:
                ids.append(rec.job_lease)
        if self._ended is None and peer in self._workers:
            self._v.coord.on_heartbeat(peer, tuple(ids), now, samples_done=samples_done, rendering=rendering)

    def on_refuse(self, peer: str, lease_id: int, reason: str, now: float) -> None:
        """`peer` cannot take this lease (it cannot get the scene, say): no more leases for it in
        this version; the next version offers it work again."""
        self._time(now)
        _check_peer(peer)
        rec = self._leases.get(_check_int("lease id", lease_id))
        if rec is None:
            if not 0 < lease_id < self._next_lease:
                self._penalize(peer, "refused a lease it was never given")
            return
        if rec.peer != peer:
            self._penalize(peer, "refused a lease given to another peer")
        elif self._ended is None and rec.version == self._v.number:
            self._v.coord.on_refuse(peer, rec.job_lease, reason, now)

    def on_result(self, peer: str, version: int, lease_id: int, result: UnitResult, now: float) -> Received:
        """A unit's result from `peer`, for the lease `lease_id` of `version`. See `Outcome`."""
        self._time(now)
        _check_peer(peer)
        _check_int("version", version)
        _check_int("lease id", lease_id)
        if not isinstance(result, UnitResult):
            raise LocalProtocolError(f"result must be a UnitResult, not {type(result).__name__}")
        got = self._receive(peer, version, lease_id, result, now)
        self._outcomes[got.outcome.value] = self._outcomes.get(got.outcome.value, 0) + 1
        if got.fault:
            self._faults[got.reason] = self._faults.get(got.reason, 0) + 1
            self._penalize(peer, got.reason)
        return got

    def _receive(self, peer: str, version: int, lease_id: int, result: UnitResult, now: float) -> Received:
        v = self._v
        rec = self._leases.get(lease_id)
        if rec is None:
            if 0 < lease_id < self._next_lease and 0 < version <= v.number:
                # a lease issued so long ago that its record is gone: late, not the peer's fault
                return Received(Outcome.STALE if version < v.number else Outcome.IGNORED, "lease forgotten")
            return Received(Outcome.FAULT, "sent a result for a lease it was never given")
        if rec.peer != peer:
            return Received(Outcome.FAULT, "sent a result for a lease given to another peer")
        if rec.version != version:
            return Received(Outcome.FAULT, "sent a result naming the wrong version for its lease")
        if result.unit not in rec.units:
            return Received(Outcome.FAULT, "sent a result for a unit its lease did not name")
        if result.unit in rec.returned:
            return Received(Outcome.FAULT, "sent a second result for one unit of a lease")
        if self._ended is not None or version != v.number:
            rec.returned.add(result.unit)
            if self._ended is not None:
                return Received(Outcome.STALE, "the session ended")
            return Received(Outcome.STALE, f"version {version} was replaced by {v.number}")
        problem = _malformed(result, v.scene.settings)
        if problem is not None:
            return Received(Outcome.FAULT, problem)
        verdict = v.coord.on_result(peer, rec.job_lease, result.unit, result_digest(result), now)
        if verdict is not schedule.Verdict.IGNORED:
            rec.returned.add(result.unit)
        if verdict is schedule.Verdict.ACCEPT:
            v.accept(result, peer)
            return Received(Outcome.ACCEPTED)
        if verdict is schedule.Verdict.MATCH:
            return Received(Outcome.DUPLICATE)
        if verdict is schedule.Verdict.MISMATCH:
            return Received(Outcome.MISMATCH, "differs from the accepted result")
        return Received(Outcome.IGNORED, "from a worker out of the job")

    # ---- events: clients -----------------------------------------------------------------------

    def edit(self, scene: SceneVersion, now: float) -> int:
        """The scene changed: a new version, unless nothing changed. Every lease of the old version
        is revoked at once (the Revokes come with the next poll). Returns the current number."""
        self._time(now)
        if not isinstance(scene, SceneVersion):
            raise LocalProtocolError(f"scene must be a SceneVersion, not {scene!r}")
        if self._ended is not None:
            raise LocalProtocolError(f"edit after the session ended ({self._ended})")
        self._idle_from = now
        if scene == self._v.scene:
            return self._v.number
        self._edits += 1
        self._replace(scene, now, REVOKE_EDITED)
        return self._v.number

    def add_watcher(self, watcher: str, now: float) -> bool:
        """A client watches: it gets the newest complete pass at once (if any). False past
        WATCHERS_MAX. Adding a watcher twice is our bug."""
        self._time(now)
        if not isinstance(watcher, str) or not watcher:
            raise LocalProtocolError(f"watcher id must be a non-empty string, not {watcher!r}")
        if self._ended is not None:
            raise LocalProtocolError(f"watcher added after the session ended ({self._ended})")
        if watcher in self._watchers:
            raise LocalProtocolError(f"watcher {watcher!r} added twice")
        if len(self._watchers) >= WATCHERS_MAX:
            return False
        self._watchers[watcher] = _Watcher()
        return True

    def remove_watcher(self, watcher: str, now: float) -> None:
        """The client is gone (removing an unknown one is harmless: it may have raced its end)."""
        self._time(now)
        if self._watchers.pop(watcher, None) is not None and not self._watchers:
            self._idle_from = now

    def watcher_ready(self, watcher: str, now: float) -> None:
        """The client has shown its last frame and can take the next (an extra or unknown
        acknowledgement is harmless)."""
        self._time(now)
        w = self._watchers.get(watcher)
        if w is not None:
            w.ready = True

    def stop(self, now: float, reason: str = END_STOPPED) -> None:
        """End the session: every lease is revoked, then `Ended(reason)`. Stopping twice is harmless."""
        self._time(now)
        self._end(now, str(reason))

    def poll(self, now: float) -> list[Action]:
        """Act on timers, lease work, make previews, and return every action since the last poll
        in the order they arose."""
        self._time(now)
        if self._ended is None:
            if not self._watchers and now >= self._idle_from + self.config.idle_s:
                self._end(now, END_IDLE)
            else:
                self._drive(now)
        actions, self._actions = self._actions, []
        self._penalties.clear()
        return actions

    # ---- internals -----------------------------------------------------------------------------

    @staticmethod
    def _check_time(now: object) -> float:
        if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number, not {now!r}")
        return now

    def _time(self, now: float) -> None:
        self._check_time(now)
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} after {self._now}")
        self._now = now

    def _penalize(self, peer: str, reason: str) -> None:
        key = (peer, reason)
        if key in self._penalties:
            return
        if len(self._penalties) >= PENALTIES_QUEUED_MAX:
            self._penalties_dropped += 1
            return
        self._penalties.add(key)
        self._actions.append(Penalize(peer, reason))

    def _drive(self, now: float) -> None:
        v = self._v
        restart = self._translate(v, v.coord.poll(now), None)
        if v.penalized:
            self._ban_convicted(v)
        if restart:
            self._restarts += 1
            self._replace(v.scene, now, REVOKE_RESTARTED)
            self._translate(self._v, self._v.coord.poll(now), None)
        v = self._v
        if v.complete and not v.converged and v.coord.done:
            v.converged = True
            self._converged.append(v.number)
            self._actions.append(Converged(v.number, v.scene, v.image()))
        self._previews_due(now)

    def _translate(self, v: _Version, actions: list, revoke_reason: str | None) -> bool:
        """Turn the coordinator's actions into the session's; True when a voided result is in the
        film already (the version must restart)."""
        restart = False
        for a in actions:
            if isinstance(a, schedule.Lease):
                lid = self._next_lease
                self._next_lease += 1
                self._leases[lid] = _LeaseRecord(v.number, a.peer, a.lease_id, a.units)
                v.leases[a.lease_id] = lid
                if len(self._leases) > LEASE_RECORDS_MAX:
                    old = next(iter(self._leases))
                    rec = self._leases.pop(old)
                    if rec.version == v.number:
                        v.leases.pop(rec.job_lease, None)
                self._leases_issued += 1
                self._actions.append(Lease(a.peer, v.number, lid, a.units, a.deadline))
            elif isinstance(a, schedule.Revoke):
                lid = v.leases.get(a.lease_id)
                rec = self._leases.get(lid) if lid is not None else None
                if rec is None:
                    continue  # forgotten: issued LEASE_RECORDS_MAX leases ago, long revoked
                rec.revoked = revoke_reason or a.reason
                self._actions.append(Revoke(rec.peer, v.number, lid, rec.units, rec.revoked))
            elif isinstance(a, schedule.Penalize):
                v.penalized = True
                self._penalize(a.peer, a.reason)
            elif isinstance(a, schedule.Discard):
                for u in a.units:
                    if not v.void(u):
                        restart = True
        return restart

    def _ban_convicted(self, v: _Version) -> None:
        """Convicted peers get no lease in any later version either. Only after the coordinator
        said Penalize: its statistics() walks every unit."""
        v.penalized = False
        for p in v.coord.statistics().convictions:
            self._banned[p] = None
            self._workers.pop(p, None)

    def _retire(self, now: float, reason: str) -> None:
        """Cancel the current version's job: its live leases are revoked with `reason`."""
        v = self._v
        v.coord.cancel(now)
        self._translate(v, v.coord.poll(now), reason)

    def _replace(self, scene: SceneVersion, now: float, reason: str) -> None:
        if self._v.number >= VERSION_MAX:
            raise LocalProtocolError(f"session reached {VERSION_MAX} versions")
        old = self._v.coord
        self._retire(now, reason)
        self._versions += 1
        self._v = _Version(self._v.number + 1, scene, now, self.config.schedule)
        for p in self._workers:  # speeds carry over: no calibration lease per worker per edit
            self._v.coord.add_worker(p, now, prior=old.speed_state(p))

    def _end(self, now: float, reason: str) -> None:
        if self._ended is not None:
            return
        self._retire(now, REVOKE_ENDED)
        self._ended = reason
        self._watchers.clear()
        self._actions.append(Ended(reason))

    def _previews_due(self, now: float) -> None:
        v = self._v
        if not v.pass_done:
            return
        state = (v.number, v.pass_done)
        interval = self.config.preview_interval_s
        peers = tuple(sorted(v.peers))
        for name, w in self._watchers.items():
            if w.ready and w.sent != state and now >= w.sent_at + interval:
                w.ready, w.sent, w.sent_at = False, state, now
                self._previews += 1
                self._actions.append(
                    Preview(name, v.number, v.pass_done, v.pass_count, v.samples(), peers, v.image())
                )
