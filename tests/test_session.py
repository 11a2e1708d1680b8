"""The streaming session's sans-IO core (meshrender.session): versions, leases, previews, ending.

Most tests drive `SessionCore` with "workers" that answer every unit with a result that encodes
what it is (channel 0: the scene's code; channel 1: 4**pass per sample; channel 2: the pixel's
index), so a preview's image shows whether it holds one version and whole passes only. The last
test uses the real renderer: a session edited mid-way and left to converge is bit for bit a
`render_frame` of its last version.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
import sansio
from conftest import REPO
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshrender import session as session_mod
from meshrender.film import Film
from meshrender.schedule import LocalProtocolError, ScheduleConfig
from meshrender.session import (
    END_IDLE,
    END_STOPPED,
    REVOKE_EDITED,
    REVOKE_ENDED,
    Converged,
    Ended,
    Lease,
    Outcome,
    Penalize,
    Preview,
    Revoke,
    SceneVersion,
    SessionConfig,
    SessionCore,
)
from meshrender.settings import RenderSettings
from meshrender.units import UnitResult, WorkUnit, frame_units

# 8x8 in 4 px buckets: 4 buckets; 3 or 4 passes (the last one short in S3)
S1 = RenderSettings(width=8, height=8, spp=3, pass_spp=1, bucket_px=4)
S2 = RenderSettings(width=12, height=4, spp=4, pass_spp=1, bucket_px=4)
S3 = RenderSettings(width=8, height=8, spp=5, pass_spp=2, bucket_px=4)
PEERS = ("a", "b", "c")
WATCHERS = ("w1", "w2")


def scene(code: int, s: RenderSettings = S1) -> SceneVersion:
    return SceneVersion(f"scene-{code}", s)


def code_of(v: SceneVersion) -> int:
    return int(v.scene_id.split("-")[1])


def fake(v: SceneVersion, unit: WorkUnit) -> UnitResult:
    """What an honest worker sends for `unit` of `v` (see the module docstring)."""
    s = v.settings
    counts = [s.pass_range(p)[1] - s.pass_range(p)[0] for p in unit.passes]
    ys, xs = np.mgrid[unit.y0 : unit.y0 + unit.height, unit.x0 : unit.x0 + unit.width]
    sums = np.empty((unit.pass_count, unit.height, unit.width, 3), np.float32)
    for k, p in enumerate(unit.passes):
        sums[k, ..., 0] = code_of(v) * counts[k]
        sums[k, ..., 1] = 4.0**p * counts[k]
        sums[k, ..., 2] = (ys * s.width + xs) * counts[k]
    return UnitResult(unit=unit, sums=sums, sample_counts=counts)


def expected_image(v: SceneVersion, passes: int) -> np.ndarray:
    """The image of passes 0..passes-1 of `v`, made as the film makes it."""
    s = v.settings
    film = Film(s, v.frame)
    for u in frame_units(s, frame=v.frame):
        if u.pass_index < passes:
            film.add(fake(v, u))
    return film.image()


def check_preview(p: Preview, v: SceneVersion) -> None:
    """One version and whole passes: channel 0 is that version's code everywhere, channel 1 the
    same pass mix everywhere, channel 2 each pixel's own index."""
    s = v.settings
    assert p.image.shape == (s.height, s.width, 3)
    assert 1 <= p.pass_done <= s.pass_count == p.pass_count
    assert p.samples == s.pass_range(p.pass_done - 1)[1]
    assert np.array_equal(p.image.view(np.uint32), expected_image(v, p.pass_done).view(np.uint32))
    assert not p.image.flags.writeable


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


class Party:
    """A session and honest workers that answer what they hold, on virtual time."""

    def __init__(self, first: SceneVersion, *, config: SessionConfig | None = None, peers=("a", "b")):
        self.t = 0.0
        self.core = SessionCore(first, 0.0, config=config)
        self.scenes = {1: first}
        self.held: dict[str, list[tuple[int, int, WorkUnit]]] = {}
        self.log: list = []
        for p in peers:
            self.join(p)

    def join(self, peer: str) -> None:
        assert self.core.add_worker(peer, self.t)
        self.held.setdefault(peer, [])

    def edit(self, v: SceneVersion) -> int:
        n = self.core.edit(v, self.t)
        self.scenes[n] = v
        return n

    def pump(self) -> list:
        actions = self.core.poll(self.t)
        for a in actions:
            if isinstance(a, Lease):
                self.scenes.setdefault(a.version, self.core.scene)  # a restart: the same scene
                self.held[a.peer] += [(a.version, a.lease_id, u) for u in a.units]
            if isinstance(a, Revoke):
                assert a.units
        self.log += actions
        return actions

    def deliver(self, peer: str, item):
        version, lid, unit = item
        self.held[peer].remove(item)
        return self.core.on_result(peer, version, lid, fake(self.scenes[version], unit), self.t)

    def round(self, dt: float = 0.1, *, only_current: bool = True) -> list:
        """Every worker heartbeats and returns what it holds (of the current version only, unless
        told otherwise), then time moves on and the session is polled."""
        got = []
        for peer, items in self.held.items():
            if peer not in self.core.workers:
                continue
            self.core.on_heartbeat(peer, self.t, samples_done=len(self.log), rendering=True)
            for item in list(items):
                if not only_current or item[0] == self.core.version:
                    got.append(self.deliver(peer, item))
        self.t += dt
        self.pump()
        return got

    def step(self, dt: float = 0.05) -> None:
        """One worker returns one unit (the oldest leased of the current version), then a poll."""
        items = [(i[1], p, i) for p, its in self.held.items() for i in its if i[0] == self.core.version]
        if items:
            _, peer, item = min(items)
            for p in self.core.workers:
                self.core.on_heartbeat(p, self.t, samples_done=len(self.log), rendering=True)
            got = self.deliver(peer, item)
            assert got.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE), got
        self.t += dt
        self.pump()

    def converge(self, rounds: int = 200) -> Converged:
        self.pump()
        for _ in range(rounds):
            done = [a for a in of(self.log, Converged) if a.version == self.core.version]
            if done:
                return done[0]
            self.round()
        raise AssertionError(f"version {self.core.version} did not converge: {self.core.statistics()}")


# ---- layering -----------------------------------------------------------------------------------

ALLOWED = {"__future__", "dataclasses", "collections.abc", "enum", "hashlib", "math", "numpy"}
IO = ("trio", "libp2p", "taichi", "textual", "kernels")


def test_session_imports_no_io_and_no_clock():
    found = sansio.forbidden_imports(Path(session_mod.__file__).read_text(), ALLOWED)
    assert set(found) <= {".", ".film", ".schedule", ".settings", ".units"}, found
    code = "import sys, meshrender.session; print([m for m in sys.modules if m.split('.')[0] in %r])"
    out = subprocess.run(
        [sys.executable, "-c", code % (IO,)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"  # nor do the modules it stands on


# ---- leasing and editing ------------------------------------------------------------------------


def test_passes_are_leased_in_pass_order_over_every_bucket():
    party = Party(scene(1, S2))
    party.converge()
    first = list(dict.fromkeys(u for a in of(party.log, Lease) for u in a.units))  # endgame duplicates out
    assert sorted(first) == sorted(frame_units(S2))
    passes = [u.pass_index for u in first]
    assert passes == sorted(passes)


def test_an_edit_revokes_the_old_version_at_once_and_leases_the_new_first_pass():
    party = Party(scene(1), peers=("a", "b", "c"))
    party.pump()
    party.round()  # everyone calibrated: each holds a lease of version 1 now
    out = [a for a in party.log if isinstance(a, Lease) and a.version == 1]
    live = {a.lease_id for a in out} - {a.lease_id for a in of(party.log, Revoke)}
    assert live and all(party.held[p] for p in PEERS)
    assert party.edit(scene(2)) == 2
    actions = party.pump()
    revoked = {a.lease_id for a in of(actions, Revoke) if a.version == 1}
    assert all(a.reason == REVOKE_EDITED for a in of(actions, Revoke))
    owing = {lid for items in party.held.values() for v, lid, _ in items if v == 1}
    assert owing <= revoked  # every lease that still owed a unit
    new = of(actions, Lease)
    assert {a.peer for a in new} == set(PEERS) and all(a.version == 2 for a in new)
    leased = [u for a in new for u in a.units]  # speeds carried over: full shares, in pass order
    assert {u for u in frame_units(S1) if u.pass_index == 0} <= set(leased)
    assert all([u.pass_index for u in a.units] == sorted(u.pass_index for u in a.units) for a in new)
    # the old leases' late results are dropped and counted, and never reach the film
    before = party.core.film.sums.copy()
    late = [party.deliver(p, item) for p in PEERS for item in list(party.held[p]) if item[0] == 1]
    assert late and all(r.outcome is Outcome.STALE for r in late)
    assert np.array_equal(before, party.core.film.sums)
    assert party.core.statistics().results["stale"] == len(late)
    conv = party.converge()
    assert conv.version == 2 and conv.scene == scene(2)
    assert np.array_equal(conv.image.view(np.uint32), expected_image(scene(2), S1.pass_count).view(np.uint32))


def test_an_edit_that_changes_nothing_keeps_the_version():
    party = Party(scene(1))
    party.pump()
    assert party.core.edit(scene(1), 0.0) == 1
    assert of(party.pump(), Revoke) == []
    assert party.core.edit(SceneVersion("scene-1", S3), 0.0) == 2  # other settings: a new version


def test_a_result_the_peer_was_not_asked_for_is_its_fault_not_a_crash():
    party = Party(scene(1))
    party.pump()
    (v, lid, unit), other = party.held["a"][0], party.held["b"][0]
    core, t = party.core, party.t
    stray = next(u for u in frame_units(S1) if u != unit)
    cases = {
        "a unit its lease did not name": core.on_result("a", v, lid, fake(scene(1), stray), t),
        "a lease given to another peer": core.on_result("a", v, other[1], fake(scene(1), other[2]), t),
        "a lease it was never given": core.on_result("a", v, 10**6, fake(scene(1), unit), t),
        "the wrong version": core.on_result("a", v + 1, lid, fake(scene(1), unit), t),
    }
    bad = fake(scene(1), unit)
    bad.sums[0, 0, 0, 0] = np.nan
    cases["NaN"] = core.on_result("a", v, lid, bad, t)
    for what, got in cases.items():
        assert got.fault, (what, got)
    penalties = of(party.pump(), Penalize)
    assert {p.peer for p in penalties} == {"a"} and len(penalties) == len(cases)
    assert core.pass_done == 0 and not core.film.sums.any()  # nothing of it landed
    # the honest result still counts, once; the same result again is the peer's fault
    assert party.deliver("a", (v, lid, unit)).outcome is Outcome.ACCEPTED
    assert core.on_result("a", v, lid, fake(scene(1), unit), t).fault


# ---- previews -----------------------------------------------------------------------------------


def test_a_slow_watcher_gets_the_latest_frame_never_a_queue():
    cfg = SessionConfig(preview_interval_s=0.0)
    v = scene(1, RenderSettings(width=8, height=8, spp=6, pass_spp=1, bucket_px=4))
    party = Party(v, config=cfg)
    core = party.core
    assert core.add_watcher("fast", 0.0) and core.add_watcher("slow", 0.0)

    def frames(w: str) -> list[Preview]:
        return [p for p in of(party.log, Preview) if p.watcher == w]

    acked = False
    party.pump()
    while not core.converged:
        party.step()
        core.watcher_ready("fast", party.t)  # the fast one shows every frame at once
        if len(frames("fast")) >= 3 and not acked:
            core.watcher_ready("slow", party.t)  # the slow one acknowledges its first frame, late
            acked = True
        assert party.t < 20
    party.t += 1.0
    party.pump()
    fast, slow = frames("fast"), frames("slow")
    for p in fast + slow:
        check_preview(p, v)
    assert [p.pass_done for p in fast] == list(range(1, v.settings.pass_count + 1))  # one per pass
    assert len(slow) == 2  # one frame, one acknowledgement, one more frame: no backlog
    assert slow[0].pass_done == 1 and slow[1].pass_done >= 3  # it skipped to the newest pass
    assert set(fast[-1].peers) == {"a", "b"}


def test_previews_to_one_watcher_keep_the_rate_limit():
    cfg = SessionConfig(preview_interval_s=1.0)
    party = Party(scene(1, RenderSettings(width=8, height=8, spp=8, pass_spp=1, bucket_px=4)), config=cfg)
    party.core.add_watcher("w", 0.0)
    sent_at = []
    party.pump()
    while not (of(party.log, Preview) and of(party.log, Preview)[-1].pass_done == 8):
        party.step(dt=0.25)
        sent_at += [party.t] * (len(of(party.log, Preview)) - len(sent_at))
        party.core.watcher_ready("w", party.t)
        assert party.t < 30
    assert len(sent_at) >= 3 and len(sent_at) < 8  # fewer frames than passes: some were skipped
    assert all(b - a >= 1.0 for a, b in zip(sent_at, sent_at[1:], strict=False))
    due = party.core.next_deadline()
    assert due is None or due >= party.t  # nothing owed to the past


# ---- ending -------------------------------------------------------------------------------------


def test_a_session_nobody_watches_or_edits_ends_after_the_idle_limit():
    cfg = SessionConfig(idle_s=10.0)
    party = Party(scene(1, RenderSettings(width=8, height=8, spp=64, pass_spp=1, bucket_px=4)), config=cfg)
    core = party.core
    core.add_watcher("w", 0.0)
    party.t = 30.0
    assert not of(party.pump(), Ended)  # watched: not idle
    core.remove_watcher("w", party.t)
    party.t = 35.0
    party.edit(scene(2, core.scene.settings))  # an edit restarts the idle clock
    party.t = 44.0
    assert not of(party.pump(), Ended)
    assert core.next_deadline() <= 45.0
    party.t = 45.0
    actions = party.pump()
    assert of(actions, Ended) == [Ended(END_IDLE)] and isinstance(actions[-1], Ended)
    assert {a.reason for a in of(actions, Revoke)} == {REVOKE_ENDED}
    assert core.ended == END_IDLE and core.next_deadline() is None
    assert party.pump() == []
    assert core.statistics().leases_live == 0


def test_stop_revokes_everything_and_results_after_it_are_dropped():
    party = Party(scene(1))
    party.pump()
    party.core.add_watcher("w", 0.0)
    party.core.stop(party.t)
    actions = party.pump()
    assert of(actions, Ended) == [Ended(END_STOPPED)]
    assert {a.peer for a in of(actions, Revoke)} == {"a", "b"}
    item = party.held["a"][0]
    assert party.deliver("a", item).outcome is Outcome.STALE
    assert not party.core.add_worker("c", party.t)
    with pytest.raises(LocalProtocolError):
        party.core.edit(scene(2), party.t)
    party.core.stop(party.t)  # twice is harmless
    assert party.pump() == []


def test_misuse_raises():
    core = SessionCore(scene(1), 5.0)
    with pytest.raises(LocalProtocolError):
        core.poll(4.0)
    with pytest.raises(LocalProtocolError):
        core.add_worker("", 5.0)
    with pytest.raises(LocalProtocolError):
        SceneVersion("", S1)
    core.add_watcher("w", 5.0)
    with pytest.raises(LocalProtocolError):
        core.add_watcher("w", 5.0)


# ---- verification ------------------------------------------------------------------------------


@pytest.mark.parametrize("check_after_rounds", [0, 6])
def test_a_convicted_liars_results_leave_the_image_and_it_gets_no_more_work(check_after_rounds):
    """Every unit is spot-checked; the trusted peer's results convict the liar. Its results still
    waiting for a pass are dropped; once one is in the film (the checks come late), the version
    restarts without it. The image converges right either way."""
    cfg = SessionConfig(schedule=ScheduleConfig(spot_check_fraction=1.0, trusted="t"))
    v = scene(1, S2)
    party = Party(v, config=cfg, peers=("liar", "t"))
    core = party.core

    lied = []

    def lie(peer, item):
        version, lid, unit = item
        party.held[peer].remove(item)
        res = fake(party.scenes[version], unit)
        if peer == "liar":
            res.sums[...] += 1.0
            lied.append(unit)
        return core.on_result(peer, version, lid, res, party.t)

    party.pump()
    for n in range(200):
        if core.converged:
            break
        # the liar answers first, so its results reach the film before the checks do
        for peer in ("liar", "t"):
            if peer in core.workers:
                core.on_heartbeat(peer, party.t, samples_done=len(party.log), rendering=True)
                if peer == "t" and n < check_after_rounds:
                    continue
                for item in [i for i in party.held[peer] if i[0] == core.version]:
                    lie(peer, item)
        party.t += 0.1
        party.pump()
    assert core.converged and lied
    stats = core.statistics()
    assert stats.banned == ("liar",) and "liar" not in core.workers
    assert not core.add_worker("liar", party.t)
    assert any(p.peer == "liar" for p in of(party.log, Penalize))
    final = [a for a in of(party.log, Converged)][-1]
    assert final.version == core.version and final.scene == v
    assert np.array_equal(final.image.view(np.uint32), expected_image(v, S2.pass_count).view(np.uint32))
    restarted = int(check_after_rounds > 0)
    assert stats.restarts == restarted and stats.versions == 1 + restarted, stats
    convicted_at = min(i for i, a in enumerate(party.log) if isinstance(a, Penalize) and a.peer == "liar")
    assert not any(isinstance(a, Lease) and a.peer == "liar" for a in party.log[convicted_at:])


# ---- random interleavings ------------------------------------------------------------------------


class SessionMachine(RuleBasedStateMachine):
    """Edits, results (late, duplicated, bogus), joins, leaves, watchers and time, in any order."""

    @initialize(settings_=st.sampled_from([S1, S2, S3]))
    def start(self, settings_):
        self.cfg = SessionConfig(preview_interval_s=0.5, idle_s=1e9)
        self.party = Party(scene(1, settings_), config=self.cfg, peers=())
        self.core = self.party.core
        self.workers: set[str] = set()
        self.leases: dict[int, tuple[str, int, set[WorkUnit]]] = {}  # lid -> peer, version, units owed
        self.lease_units: dict[int, tuple[WorkUnit, ...]] = {}
        self.closed: set[int] = set()  # revoked, or its peer removed since
        self.sent: list[tuple[str, tuple[int, int, WorkUnit], Outcome]] = []
        self.landed: dict[int, set[WorkUnit]] = {}
        self.waiting_ack: set[str] = set()
        self.sent_at: dict[str, float] = {}
        self.watching: set[str] = set()
        self.pump()

    def pump(self) -> list:
        actions = self.party.pump()
        for a in actions:
            if isinstance(a, Lease):
                assert a.version == self.core.version and a.peer in self.workers
                assert a.lease_id not in self.leases
                self.leases[a.lease_id] = (a.peer, a.version, set(a.units))
                self.lease_units[a.lease_id] = a.units
            elif isinstance(a, Revoke):
                assert a.lease_id in self.leases and self.leases[a.lease_id][:2] == (a.peer, a.version)
                self.closed.add(a.lease_id)
            elif isinstance(a, Preview):
                assert a.watcher in self.watching and a.watcher not in self.waiting_ack  # never a queue
                assert a.version == self.core.version
                assert self.party.t - self.sent_at.get(a.watcher, -1e9) >= self.cfg.preview_interval_s
                check_preview(a, self.party.scenes[a.version])
                self.waiting_ack.add(a.watcher)
                self.sent_at[a.watcher] = self.party.t
            elif isinstance(a, Converged):
                assert a.version == self.core.version
                assert len(self.landed.get(a.version, ())) == len(frame_units(a.scene.settings))
            elif isinstance(a, Penalize):
                assert a.peer in PEERS
            else:
                raise AssertionError(f"unexpected {a}")
        return actions

    @invariant()
    def old_versions_owe_nothing(self):
        """Every lease of an old version still owing a unit was revoked (or its peer lost)."""
        for lid, (_, version, owed) in self.leases.items():
            if version != self.core.version and owed:
                assert lid in self.closed, f"lease {lid} of version {version} still out"

    @rule(peer=st.sampled_from(PEERS))
    def join(self, peer):
        assert self.core.add_worker(peer, self.party.t)
        self.workers.add(peer)
        self.party.held.setdefault(peer, [])
        self.pump()

    @rule(peer=st.sampled_from(PEERS))
    def leave(self, peer):
        self.core.remove_worker(peer, self.party.t)
        self.workers.discard(peer)
        self.closed |= {lid for lid, (p, _, _) in self.leases.items() if p == peer}
        self.pump()

    @rule(code=st.integers(1, 3), settings_=st.sampled_from([S1, S2, S3]))
    def edit(self, code, settings_):
        old = self.core.version
        v = scene(code, settings_)
        n = self.party.edit(v)
        assert n == (old if v == self.party.scenes[old] else old + 1)
        self.pump()

    @precondition(lambda self: any(self.party.held.values()))
    @rule(pick=st.integers(0, 10**6))
    def deliver(self, pick):
        peers = [p for p, items in self.party.held.items() if items]
        peer = peers[pick % len(peers)]
        item = self.party.held[peer][pick % len(self.party.held[peer])]
        version, lid, unit = item
        got = self.party.deliver(peer, item)
        assert not got.fault, got
        if version != self.core.version:
            assert got.outcome is Outcome.STALE  # an old version never lands
        if got.outcome is Outcome.ACCEPTED:
            assert version == self.core.version
            assert unit not in self.landed.setdefault(version, set())
            self.landed[version].add(unit)
        if got.outcome is not Outcome.IGNORED:
            self.leases[lid][2].discard(unit)
        self.sent.append((peer, item, got.outcome))
        self.pump()

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6))
    def resend(self, pick):
        k = pick % len(self.sent)
        peer, (version, lid, unit), first = self.sent[k]
        got = self.core.on_result(peer, version, lid, fake(self.party.scenes[version], unit), self.party.t)
        if first is not Outcome.IGNORED:
            assert got.fault  # the same result twice on one lease is the peer's fault
        elif got.outcome is not Outcome.IGNORED:  # its peer is back: the first time counts now
            assert not got.fault
            self.sent[k] = (peer, (version, lid, unit), got.outcome)
            self.leases[lid][2].discard(unit)
            if got.outcome is Outcome.ACCEPTED:
                assert version == self.core.version and unit not in self.landed.setdefault(version, set())
                self.landed[version].add(unit)
        self.pump()

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from(["unit", "peer", "version", "lease"]))
    def bogus(self, pick, kind):
        lid = sorted(self.leases)[pick % len(self.leases)]
        peer, version, _ = self.leases[lid]
        v = self.party.scenes[version]
        units = self.lease_units[lid]
        unit = units[pick % len(units)]
        if kind == "unit":
            unit = WorkUnit(x0=0, y0=0, width=1, height=1, pass_index=0)  # buckets are 4 px: none is this
        elif kind == "peer":
            peer = next(p for p in PEERS if p != peer)
        elif kind == "version":
            version += 1
        else:
            lid += 10**6
        got = self.core.on_result(peer, version, lid, fake(v, unit), self.party.t)
        assert got.fault, (kind, got)
        assert Penalize(peer, got.reason) in self.pump()

    @rule(peer=st.sampled_from(PEERS))
    def heartbeat(self, peer):
        if peer in self.workers:
            self.core.on_heartbeat(peer, self.party.t, samples_done=len(self.sent), rendering=True)
        self.pump()

    @rule(dt=st.sampled_from([0.0, 0.2, 0.6, 2.0, 70.0]))
    def tick(self, dt):
        self.party.t += dt
        self.pump()

    @rule(w=st.sampled_from(WATCHERS))
    def watch(self, w):
        if w not in self.watching:
            assert self.core.add_watcher(w, self.party.t)
            self.watching.add(w)
            self.waiting_ack.discard(w)
            self.sent_at.pop(w, None)
        self.pump()

    @rule(w=st.sampled_from(WATCHERS))
    def unwatch(self, w):
        self.core.remove_watcher(w, self.party.t)
        self.watching.discard(w)
        self.pump()

    @rule(w=st.sampled_from(WATCHERS))
    def ack(self, w):
        self.core.watcher_ready(w, self.party.t)
        self.waiting_ack.discard(w)
        self.pump()

    def teardown(self):
        """After the last edit, workers that return what they hold make the session converge, to
        the image a one-peer render of that version makes, with nothing left out."""
        if not hasattr(self, "core"):
            return
        if not self.workers:
            self.join("a")
        for p in self.workers:
            self.core.add_worker(p, self.party.t)  # back after strikes or silence
        conv = self.party.converge(rounds=400)
        v = self.party.scenes[self.core.version]
        assert conv.scene == v
        assert np.array_equal(
            conv.image.view(np.uint32), expected_image(v, v.settings.pass_count).view(np.uint32)
        )
        assert np.array_equal(self.core.film.sums.view(np.uint32), _reference_sums(v).view(np.uint32)), (
            "converged film differs from a render of the version"
        )
        assert self.core.statistics().leases_live == 0
        assert self.core.next_deadline() is None or self.core.next_deadline() >= self.party.t


def _reference_sums(v: SceneVersion) -> np.ndarray:
    film = Film(v.settings, v.frame)
    for u in frame_units(v.settings):
        film.add(fake(v, u))
    return film.sums


SessionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_session_under_random_interleavings = SessionMachine.TestCase


# ---- the real renderer --------------------------------------------------------------------------


def test_a_session_edited_midway_converges_to_a_render_of_its_last_version(renderer_for, cornell):
    """Two workers render with the real CPU renderer; the camera moves after the first pass. The
    old version's late results are dropped; the final frame is render_frame of the new camera,
    bit for bit, and a preview of the new version is its first passes, bit for bit."""
    from meshrender.render import render_frame
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    loaded = load_scene("cornell")
    cam = loaded.camera
    moved = dataclasses.replace(
        cam, position=(cam.position[0] + 0.15, cam.position[1] + 0.1, cam.position[2])
    )
    cornell2 = compile_scene(dataclasses.replace(loaded, camera=moved))
    s = msgspec.structs.replace(cornell.settings, width=24, height=16, spp=4, pass_spp=1, bucket_px=8, seed=7)
    scenes = {"cornell-a": cornell, "cornell-b": cornell2}
    renderers = {k: renderer_for(sc) for k, sc in scenes.items()}
    versions: dict[int, str] = {1: "cornell-a"}

    core = SessionCore(SceneVersion("cornell-a", s), 0.0)
    core.add_watcher("w", 0.0)
    for p in ("p1", "p2"):
        core.add_worker(p, 0.0)
    t = 0.0
    held: list[tuple[str, Lease, WorkUnit]] = []
    previews: list[Preview] = []
    converged: list[Converged] = []
    held_back = None
    stale = []
    for _ in range(200):
        for a in core.poll(t):
            if isinstance(a, Lease):
                held += [(a.peer, a, u) for u in a.units]
            elif isinstance(a, Preview):
                previews.append(a)
                core.watcher_ready("w", t)
            elif isinstance(a, Converged):
                converged.append(a)
        if converged:
            break
        if core.version == 1 and previews:  # the first pass is in: the camera moves
            held_back = next(((p, a, u) for p, a, u in held if a.version == 1), None)
            if held_back is not None:
                held.remove(held_back)
            versions[core.edit(SceneVersion("cornell-b", s), t)] = "cornell-b"
        elif held_back is not None and core.version == 2:
            p, a, u = held_back  # a result of version 1 that was rendering when the edit came
            res = renderers[versions[a.version]].render_unit(u, s)
            stale.append(core.on_result(p, a.version, a.lease_id, res, t))
            held_back = None
        for p, a, u in list(held):  # workers render what they hold, old versions' leases dropped
            held.remove((p, a, u))
            if a.version == core.version:
                res = renderers[versions[a.version]].render_unit(u, s)
                got = core.on_result(p, a.version, a.lease_id, res, t)
                assert got.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE), got
        t += 0.1
    assert converged and converged[0].version == 2
    assert [r.outcome for r in stale] == [Outcome.STALE]
    ref = render_frame(renderers["cornell-b"], s)
    assert ref.complete
    assert np.array_equal(core.film.sums.view(np.uint32), ref.sums.view(np.uint32))
    assert np.array_equal(converged[0].image.view(np.uint32), ref.image().view(np.uint32))
    first = next(p for p in previews if p.version == 2)
    part = render_frame(
        renderers["cornell-b"], s, units=[u for u in frame_units(s) if u.pass_index < first.pass_done]
    )
    assert np.array_equal(first.image.view(np.uint32), part.image().view(np.uint32))
    assert all(p.version == 1 for p in previews[: previews.index(first)])
    assert set(first.peers) <= {"p1", "p2"} and first.peers


def test_an_edit_keeps_each_workers_measured_speed_so_its_first_leases_are_full_shares():
    settings = RenderSettings(width=32, height=32, spp=2, pass_spp=1, bucket_px=4)  # 128 units a version
    party = Party(scene(1, settings), peers=("a", "b"))
    first = of(party.pump(), Lease)
    assert first and all(len(a.units) == 1 for a in first)  # unmeasured: one calibration unit each
    for _ in range(3):
        party.round()
    party.edit(scene(2, settings))
    new = [a for a in of(party.pump(), Lease) if a.version == 2]
    assert {a.peer for a in new} == {"a", "b"}
    assert all(len(a.units) > 1 for a in new), [len(a.units) for a in new]  # no calibration again
    assert len(new) > 2  # both of each measured worker's lease slots at once
