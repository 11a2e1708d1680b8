"""A seeded discrete-event run of one frame on a simulated party, driving the real scheduling cores.

How it works
  * Time is virtual. Events sit in one heap as (time, seq, kind, args): `seq` is a counter, so
    ties break in the order events were made and one seed replays the same run, event for event.
  * Peer 0 is the submitting peer: it runs the real `meshrender.schedule.Coordinator` and renders
    too, over a link with no delay (as the real peer's in-process link). Every peer runs the real
    `WorkerJob`. The simulator only plays what the real peers' I/O edges do: carry messages
    (`Network`), render (a unit takes cost / speed seconds, times seeded noise), and the faults of
    the scenario (drops, joins, freezes, partitions, liars). Nothing here decides who gets what.
  * Messages go through `Network`: per-link latency, per-peer upload and download caps (a message
    waits for the sender's uplink and the receiver's downlink, bytes / rate), seeded loss, and
    partitions that drop everything across them. A dropped peer's connection closes: the
    coordinator hears of it one latency later. A frozen peer does nothing and hears nothing until
    it thaws (its inbox is kept), so the coordinator only learns of it by its silence.
  * The report compares the frame time with the ideal: the time at which the party's capacity
    (the speeds of the peers present, as joins, drops and freezes change it) has done the frame's
    work. Invariants are checked on every run (`Report.violations`): each unit accepted exactly
    once, the frame complete when any peer survives, no lease outstanding at the end, and a run
    that fails says its seed.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
from dataclasses import dataclass, field

from meshrender.schedule import (
    Coordinator,
    Discard,
    Heartbeat,
    Lease,
    RenderNext,
    Revoke,
    ScheduleConfig,
    Verdict,
    WorkerJob,
)

from .distribution import Distribution
from .scenario import Scenario

PROGRESS_EVENTS = 20_000  # events between progress reports
EVENTS_MAX = 50_000_000  # a run that needs more events is runaway, not big
COST_SCALE = 1000  # scheduler cost units per second of work at speed 1.0
LEASE_BYTES = 64  # a lease message: header plus per-unit keys below
LEASE_UNIT_BYTES = 24
BEAT_BYTES = 48
REVOKE_BYTES = 32
REFUSE_BYTES = 96
MBPS = 125_000  # bytes per second in one Mbit/s
JOB_EVENTS = frozenset({"to_coord", "lease", "revoke", "beat", "rendered", "ctimer", "lost"})
FRAME_BYTES = 16 << 10  # a message up to one stream frame interleaves with bulk transfers


def good_digest(unit: int) -> bytes:
    return unit.to_bytes(8, "big")


def bad_digest(unit: int, peer: str) -> bytes:
    return unit.to_bytes(8, "big") + peer.encode()


@dataclass
class SimPeer:
    name: str
    cls: str
    speed: float  # seconds of work per second
    noise: float
    up_Bps: float  # upload and download caps, bytes per second
    down_Bps: float
    latency_s: float = 0.0  # this peer's share of every link's one-way latency
    lie_p: float = 0.0
    alive: bool = True
    frozen: bool = False
    epoch: int = 0  # bumped on drop: events of an earlier life are ignored
    worker: WorkerJob | None = None
    rendering: tuple[int, int, float, float] | None = None  # lease, unit, start, end
    remaining_s: float = 0.0  # work left in the unit interrupted by a freeze
    inbox: list = field(default_factory=list)
    busy_s: float = 0.0
    bars: list = field(default_factory=list)  # (start, end, unit, lied?) for the timeline
    frozen_spans: list = field(default_factory=list)  # (from, to) for the timeline
    joined_at: float = 0.0
    left_at: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    beat_timer: float | None = None
    waiting: tuple[int, int] | None = None  # (lease, unit) handed out while the scene is fetched
    refused: str = ""  # why it refuses every lease (it could not get the scene)


@dataclass
class Report:
    seed: int
    frame_s: float | None
    ideal_s: float
    efficiency: float | None
    units: int
    leases: int
    revokes: dict[str, int]
    re_leased_units: int  # units leased again after a lease that owed them was lost or revoked
    duplicated_units: int
    convictions: dict[str, str]
    units_by_peer: dict[str, int]
    bytes_by_peer: dict[str, tuple[int, int]]  # peer -> (in, out)
    events: int
    violations: list[str]
    trace_digest: str
    distribution: dict | None = None  # scene distribution figures (scenarios with a [scene])

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class Network:
    """Latency, bandwidth caps, loss and partitions between simulated peers."""

    def __init__(self, sim: Sim, scenario: Scenario):
        self.sim = sim
        net = scenario.network
        self.latency_s = net.latency_ms / 1000.0
        self.loss = net.loss
        self.up_free: dict[str, float] = {}
        self.down_free: dict[str, float] = {}
        self.cut: set[str] = set()  # peers partitioned away from peer 0

    def link_s(self, a: SimPeer, b: SimPeer) -> float:
        """One-way latency between two peers: the network's, plus each end's own."""
        return self.latency_s + a.latency_s + b.latency_s

    def lost(self, src: str, dst: str) -> bool:
        """Whether a message from src to dst is lost: across a partition, or by the loss rate."""
        if (src in self.cut) != (dst in self.cut):
            return True
        return bool(self.loss) and self.sim.rng.random() < self.loss

    def send(self, src: str, dst: str, size: int, kind, *args) -> bool:
        """Deliver `kind(*args)` (a handler name, or a callable) at dst when the message arrives.
        Returns False when the message is lost."""
        sim = self.sim
        if src == dst:  # the coordinator's own worker: an in-process link
            sim.at(sim.now, kind, *args)
            return True
        if self.lost(src, dst):
            return False
        now = sim.now
        a, b = sim.peers[src], sim.peers[dst]
        if size <= FRAME_BYTES:  # one frame: it does not wait behind the bulk bytes queued
            a.bytes_out += size
            b.bytes_in += size
            sim.at(now + self.link_s(a, b) + size / min(a.up_Bps, b.down_Bps), kind, *args)
            return True
        start = max(now, self.up_free.get(src, 0.0))
        up = size / sim.peers[src].up_Bps
        self.up_free[src] = start + up
        arrive = start + up + self.link_s(a, b)
        down = size / sim.peers[dst].down_Bps
        begin = max(arrive - down, self.down_free.get(dst, 0.0))
        done = begin + down
        self.down_free[dst] = done
        sim.peers[src].bytes_out += size
        sim.peers[dst].bytes_in += size
        sim.at(max(done, arrive), kind, *args)
        return True


class Sim:
    def __init__(self, scenario: Scenario, seed: int = 0, *, config: ScheduleConfig | None = None):
        self.scenario = scenario
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list = []
        self._seq = 0
        self.events = 0
        self.trace: list = []
        self.trace_leases: list = []  # the Lease entries of the trace, and their sizes
        self.trace_lease_sizes: list[int] = []
        self.peers: dict[str, SimPeer] = {}
        for cls in scenario.peers:
            for _ in range(cls.count):
                self._new_peer(cls)
        f = scenario.frame
        self.cost = [
            max(1, round(f.unit_cost_s * COST_SCALE * self._noise(f.cost_noise))) for _ in range(f.units)
        ]
        self.config = config or ScheduleConfig(seed=seed, trusted="p0")
        self.coord = Coordinator([(i, c) for i, c in enumerate(self.cost)], 0.0, config=self.config)
        self.net = Network(self, scenario)
        self.dist = Distribution(self, scenario.scene, self.rng) if scenario.scene else None
        if self.dist is not None:
            for name in list(self.peers)[: scenario.scene.holders]:
                self.dist.add_holder(name)
        self.accepted: dict[int, str] = {}
        self.violations: list[str] = []
        self.leased_before: set[int] = set()
        self.re_leased = 0
        self._coord_timer: float | None = None
        self.done_at: float | None = None

    # ------------------------------------------------------------------ set-up
    def _noise(self, sigma: float) -> float:
        return math.exp(self.rng.gauss(0.0, sigma)) if sigma > 0 else 1.0

    def _new_peer(self, cls, at: float = 0.0) -> SimPeer:
        name = f"p{len(self.peers)}"
        p = SimPeer(name, cls.name, cls.speed, cls.noise, cls.up_mbps * MBPS, cls.down_mbps * MBPS,
                    cls.latency_ms / 1000.0, lie_p=cls.lie_p, joined_at=at)  # fmt: skip
        self.peers[name] = p
        return p

    def at(self, t: float, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, args))

    # ------------------------------------------------------------------ running
    def run(self, progress=None) -> Report:
        """Run to the end of the frame (or `limit_s`); `progress(accepted, units)` is called every
        PROGRESS_EVENTS events and at the end."""
        sc = self.scenario
        for name in self.peers:
            self.at(0.0, "join", name, 0)
        for ev in sc.events:
            self.at(ev.at, "scenario", ev)
        horizon = sc.limit_s
        # with scene.fetch = "join" the run goes on after the frame until every live peer holds it
        wait_fetches = self.dist is not None and sc.scene.fetch == "join"
        while self._heap and (self.done_at is None or (wait_fetches and self.dist.fetching)):
            t, _, kind, args = heapq.heappop(self._heap)
            if t > horizon:
                break
            self.events += 1
            if self.events > EVENTS_MAX:
                self.violations.append(f"more than {EVENTS_MAX} events: runaway run")
                break
            self.now = t
            if callable(kind):  # the scene's distribution
                kind(*args)
            elif self.done_at is None or kind not in JOB_EVENTS:  # the job's are over with it
                getattr(self, "_on_" + kind.replace("-", "_"))(*args)
            if progress is not None and not self.events % PROGRESS_EVENTS:
                progress(len(self.accepted), len(self.cost))
        if progress is not None:
            progress(len(self.accepted) if self.done_at is None else len(self.cost), len(self.cost))
        return self._report()

    def _survivors(self) -> list[SimPeer]:
        return [p for p in self.peers.values() if p.alive]

    # ------------------------------------------------------------------ the coordinator (peer 0)
    def _coord_step(self) -> None:
        c = self.coord
        for a in c.poll(self.now):
            self.trace.append((round(self.now, 9), type(a).__name__, a.peer, getattr(a, "lease_id", 0)))
            if isinstance(a, Lease):
                self.trace_leases.append(self.trace[-1])
                self.trace_lease_sizes.append(len(a.units))
                for u in a.units:
                    if u in self.leased_before and u not in self.accepted:
                        self.re_leased += 1
                    self.leased_before.add(u)
                size = LEASE_BYTES + LEASE_UNIT_BYTES * len(a.units)
                self.net.send("p0", a.peer, size, "lease", a.peer, self.peers[a.peer].epoch, a)
            elif isinstance(a, Revoke):
                self.net.send("p0", a.peer, REVOKE_BYTES, "revoke", a.peer, self.peers[a.peer].epoch, a)
            elif isinstance(a, Discard):
                for u in a.units:
                    if self.accepted.pop(u, None) != a.peer:
                        self.violations.append(f"seed {self.seed}: discarded unit {u} was not {a.peer}'s")
        if c.done and self.done_at is None:
            self.done_at = self.now
            return
        d = c.next_deadline()
        if d is not None and (
            self._coord_timer is None or d < self._coord_timer or self._coord_timer < self.now
        ):
            self._coord_timer = max(d, self.now)
            self.at(self._coord_timer, "ctimer")

    def _on_ctimer(self) -> None:
        if self._coord_timer is not None and self._coord_timer <= self.now:
            self._coord_timer = None
        self._coord_step()

    def _on_to_coord(self, name: str, epoch: int, what: str, payload) -> None:
        p = self.peers[name]
        if p.epoch != epoch or not p.alive:
            return
        c = self.coord
        if what == "beat":
            c.on_heartbeat(name, payload.lease_ids, self.now, samples_done=payload.samples_done,
                           rendering=payload.rendering)  # fmt: skip
        elif what == "result":
            lease_id, unit, digest = payload
            verdict = c.on_result(name, lease_id, unit, digest, self.now)
            if verdict is Verdict.ACCEPT:
                if unit in self.accepted:
                    self.violations.append(f"seed {self.seed}: unit {unit} accepted twice")
                self.accepted[unit] = name
        elif what == "joined":
            c.add_worker(name, self.now)
        elif what == "refuse":
            c.on_refuse(name, payload[0], payload[1], self.now)
        self._coord_step()

    # ------------------------------------------------------------------ peers
    def _on_join(self, name: str, epoch: int) -> None:
        p = self.peers[name]
        if p.epoch != epoch:
            return
        p.alive, p.frozen = True, False
        p.worker = WorkerJob(self.now)
        self.net.send(name, "p0", BEAT_BYTES, "to_coord", name, p.epoch, "joined", None)
        if self.dist is not None and self.scenario.scene.fetch == "join":
            self.dist.need(name, lambda reason: None)

    def _on_lease(self, name: str, epoch: int, lease: Lease) -> None:
        p = self.peers[name]
        if not self._reachable(p, epoch, ("lease", lease)):
            return
        if p.refused:
            self._refuse(p, lease.lease_id)
            return
        p.worker.on_lease(lease.lease_id, lease.units, lease.deadline, self.now)
        self._worker_step(p)

    def _refuse(self, p: SimPeer, lease_id: int) -> None:
        p.worker.on_revoke(lease_id, self.now)
        why = (lease_id, p.refused)
        self.net.send(p.name, "p0", REFUSE_BYTES, "to_coord", p.name, p.epoch, "refuse", why)

    def _on_revoke(self, name: str, epoch: int, revoke: Revoke) -> None:
        p = self.peers[name]
        if not self._reachable(p, epoch, ("revoke", revoke)):
            return
        p.worker.on_revoke(revoke.lease_id, self.now)
        self._worker_step(p)

    def _reachable(self, p: SimPeer, epoch: int, held) -> bool:
        if p.epoch != epoch or not p.alive:
            return False
        if p.frozen:
            p.inbox.append(held)
            return False
        return True

    def _worker_step(self, p: SimPeer) -> None:
        w = p.worker
        for a in w.poll(self.now):
            if isinstance(a, Heartbeat):
                self.net.send(p.name, "p0", BEAT_BYTES, "to_coord", p.name, p.epoch, "beat", a)
            elif isinstance(a, RenderNext):
                if self.dist is None or self.dist.holds(p.name):
                    self._render(p, a.lease_id, a.unit)
                else:  # as the real worker: fetch the scene first, then render the unit handed out
                    w.preparing(True)
                    p.waiting = (a.lease_id, a.unit)
                    self.dist.need(p.name, functools.partial(self._scene_ready, p, p.epoch))
        d = w.next_deadline()
        if d is not None and (p.beat_timer is None or p.beat_timer < self.now or d < p.beat_timer):
            p.beat_timer = max(d, self.now)
            self.at(p.beat_timer, "beat", p.name, p.epoch)

    def _render(self, p: SimPeer, lease_id: int, unit: int) -> None:
        p.worker.started(unit, self.now)
        seconds = self.cost[unit] / COST_SCALE / p.speed * self._noise(p.noise)
        p.rendering = (lease_id, unit, self.now, self.now + seconds)
        self.at(self.now + seconds, "rendered", p.name, p.epoch, unit)

    def _scene_ready(self, p: SimPeer, epoch: int, reason: str) -> None:
        if p.epoch != epoch or not p.alive or p.waiting is None or self.done_at is not None:
            return
        lease_id, unit = p.waiting
        p.waiting = None
        p.worker.preparing(False)
        if reason:  # as the real worker: say why, refuse what it holds, and take no more
            p.refused = f"cannot get the scene: {reason}"
            p.worker.started(unit, self.now)
            p.worker.finished(unit, self.now)
            for lid in p.worker.lease_ids or (lease_id,):
                self._refuse(p, lid)
        else:
            self._render(p, lease_id, unit)
        self._worker_step(p)

    def _on_beat(self, name: str, epoch: int) -> None:
        p = self.peers[name]
        if p.epoch != epoch or not p.alive or p.frozen:
            return
        if p.beat_timer is not None and p.beat_timer <= self.now:
            p.beat_timer = None
        if p.rendering is not None:
            lid, unit, start, end = p.rendering
            done = min(1.0, (self.now - start) / max(end - start, 1e-12))
            p.worker.progress(int(done * self.cost[unit]), self.now)
        self._worker_step(p)

    def _on_rendered(self, name: str, epoch: int, unit: int) -> None:
        p = self.peers[name]
        if p.epoch != epoch or not p.alive or p.frozen or p.rendering is None or p.rendering[1] != unit:
            return
        lid, _, start, end = p.rendering
        if end > self.now + 1e-12:  # rescheduled by a thaw: a later event finishes it
            return
        p.rendering = None
        p.busy_s += self.now - start
        p.worker.progress(self.cost[unit], self.now)
        p.worker.finished(unit, self.now)
        lie = p.lie_p > 0 and self.rng.random() < p.lie_p
        digest = bad_digest(unit, name) if lie else good_digest(unit)
        p.bars.append((start, self.now, unit, lie))
        size = self.scenario.frame.result_bytes
        self.net.send(name, "p0", size, "to_coord", name, p.epoch, "result", (lid, unit, digest))
        self._worker_step(p)

    def _on_lost(self, name: str, epoch: int) -> None:
        self.coord.remove_worker(name, self.now, "connection lost")
        self._coord_step()

    # ------------------------------------------------------------------ scenario events
    def _targets(self, ev) -> list[SimPeer]:
        pool = [p for p in self.peers.values() if p.name != "p0" and p.alive and (ev.cls in ("", p.cls))]
        if ev.state == "frozen":
            pool = [p for p in pool if p.frozen]
        elif ev.kind == "freeze":  # a frozen peer cannot freeze again
            pool = [p for p in pool if not p.frozen]
        n = ev.count if ev.count else round(ev.fraction * len(pool))
        return self.rng.sample(pool, min(n, len(pool)))

    def _on_scenario(self, ev) -> None:
        kind = ev.kind
        if kind == "join":
            cls = (
                next(c for c in self.scenario.peers if c.name == ev.cls) if ev.cls else self.scenario.peers[0]
            )
            for _ in range(ev.count):
                p = self._new_peer(cls, self.now)
                self.at(self.now, "join", p.name, 0)
        elif kind == "drop":
            for p in self._targets(ev):
                p.alive = False
                p.left_at = self.now
                p.epoch += 1
                p.rendering = p.waiting = None
                if self.dist is not None:
                    self.dist.forget(p.name)
                self.at(self.now + self.net.link_s(p, self.peers["p0"]), "lost", p.name, p.epoch)
        elif kind == "freeze":
            for p in self._targets(ev):
                p.frozen = True
                p.frozen_spans.append([self.now, None])
                if p.rendering is not None:
                    lid, unit, start, end = p.rendering
                    p.remaining_s = max(0.0, end - self.now)
                    p.busy_s += self.now - start
                    p.rendering = (lid, unit, self.now, math.inf)
                if ev.until is not None:
                    self.at(ev.until, "thaw", p.name, p.epoch)
        elif kind == "partition":
            for p in self._targets(ev):
                self.net.cut.add(p.name)
                if ev.until is not None:
                    self.at(ev.until, "heal", p.name)
        elif kind == "liar":
            for p in self._targets(ev):
                p.lie_p = ev.lie_p

    def _on_thaw(self, name: str, epoch: int) -> None:
        p = self.peers[name]
        if p.epoch != epoch or not p.alive or not p.frozen:
            return
        p.frozen = False
        p.frozen_spans[-1][1] = self.now
        if p.rendering is not None:
            lid, unit, _, _ = p.rendering
            p.rendering = (lid, unit, self.now, self.now + p.remaining_s)
            self.at(self.now + p.remaining_s, "rendered", p.name, p.epoch, unit)
        inbox, p.inbox = p.inbox, []
        for kind, *msg in inbox:
            if kind == "call":  # the distribution's messages, held while frozen
                msg[0](*msg[1])
            elif self.done_at is not None:
                continue
            elif kind == "lease":
                self._on_lease(name, epoch, msg[0])
            else:
                p.worker.on_revoke(msg[0].lease_id, self.now)
        if self.dist is not None:
            self.dist.thawed(name)
        if self.done_at is None:
            self._worker_step(p)

    def _on_heal(self, name: str) -> None:
        self.net.cut.discard(name)

    # ------------------------------------------------------------------ results
    def ideal_s(self) -> float:
        """When the capacity present (speeds of live, unfrozen peers over time) has done the work.
        With a scene to distribute, a peer that lacks it counts from when it could hold it: the
        distribution bound after its joining (see sim.distribution)."""
        work = sum(self.cost) / COST_SCALE
        changes: dict[float, float] = {0.0: 0.0}
        bound = self._distribution_bound_s()
        for p in self.peers.values():
            start, end = p.joined_at, p.left_at if p.left_at is not None else math.inf
            if self.dist is not None and p.name not in self.dist.holders:
                start += bound
            if start >= end:
                continue
            changes[start] = changes.get(start, 0.0) + p.speed
            if end != math.inf:
                changes[end] = changes.get(end, 0.0) - p.speed
        t, rate, done = 0.0, 0.0, 0.0
        for when in sorted(changes):
            if rate > 0 and done + rate * (when - t) >= work:
                return t + (work - done) / rate
            done += rate * (when - t)
            t, rate = when, rate + changes[when]
        return t + (work - done) / rate if rate > 0 else math.inf

    def _report(self) -> Report:
        import hashlib

        c = self.coord
        st = c.statistics()
        survivors = self._survivors()
        if self.done_at is None and survivors:
            self.violations.append(
                f"seed {self.seed}: the frame did not complete though {len(survivors)} peers survive"
            )
        if self.done_at is not None:
            missing = set(range(len(self.cost))) - set(self.accepted)
            if missing:
                self.violations.append(f"seed {self.seed}: done with {len(missing)} units never accepted")
            if st.leases_live:
                self.violations.append(
                    f"seed {self.seed}: {st.leases_live} leases still outstanding when done"
                )
        self._check_distribution()
        ideal = self.ideal_s()
        return Report(
            seed=self.seed,
            frame_s=self.done_at,
            ideal_s=round(ideal, 6),
            efficiency=None if not self.done_at else round(ideal / self.done_at, 4),
            units=len(self.cost),
            leases=st.leases,
            revokes=dict(st.revokes),
            re_leased_units=self.re_leased,
            duplicated_units=st.duplicates,
            convictions=dict(st.convictions),
            units_by_peer=dict(st.units_by_peer),
            bytes_by_peer={n: (p.bytes_in, p.bytes_out) for n, p in self.peers.items()},
            events=self.events,
            violations=self.violations,
            trace_digest=hashlib.sha256(repr(self.trace).encode()).hexdigest(),
            distribution=self._distribution_figures(),
        )

    def _check_distribution(self) -> None:
        """Every fetch that ended held every chunk; with no partition and no loss, none failed (peer
        0 holds the scene and never leaves); with fetch = "join", none was left running while the
        run could go on."""
        d = self.dist
        if d is None:
            return
        sc = self.scenario
        if not sc.network.loss and not any(e.kind == "partition" for e in sc.events):
            for name, reason in d.failed.items():
                self.violations.append(f"seed {self.seed}: {name} could not get the scene from a party "
                                       f"that held it: {reason}")  # fmt: skip
        if sc.scene.fetch == "join" and not self._heap:
            for name, f in d.fetches.items():
                if not self.peers[name].frozen:
                    self.violations.append(f"seed {self.seed}: {name}'s fetch ({f.stage}) never ended")
        for name in d.incomplete:
            self.violations.append(f"seed {self.seed}: {name} ended its fetch without every chunk")

    def _distribution_figures(self) -> dict | None:
        if self.dist is None:
            return None
        out = self.dist.figures()
        out["bound_s"] = round(self._distribution_bound_s(), 6)
        return out

    def _distribution_bound_s(self) -> float:
        if self.dist is None:
            return 0.0
        return self.dist.bound_s([p for p in self.peers.values() if p.joined_at == 0.0])
