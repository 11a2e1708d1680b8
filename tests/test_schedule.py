"""Scheduling core: first leases are small and later ones follow measured speed, two leases keep a
worker busy, deadlines strike, silent and stalled workers lose their units within their allowance,
the endgame duplicates slow peers' units, disagreeing results are arbitrated and a liar's results
are discarded; a seeded party of failing and lying workers replays exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sansio
from hypothesis import given, settings
from hypothesis import strategies as st

import meshrender.schedule as schedule
from meshrender.schedule import (
    REVOKE_ACCEPTED,
    REVOKE_CANCELLED,
    REVOKE_CONVICTED,
    REVOKE_DEADLINE,
    REVOKE_DROPPED,
    REVOKE_SILENT,
    REVOKE_STALLED,
    Coordinator,
    Discard,
    Heartbeat,
    Lease,
    LocalProtocolError,
    Penalize,
    RenderNext,
    Revoke,
    ScheduleConfig,
    Verdict,
    WorkerJob,
    spot_checked,
)

ALLOWED_IMPORTS = {
    "__future__",
    "dataclasses",
    "collections",
    "collections.abc",
    "enum",
    "typing",
    "hashlib",
    "heapq",
    "itertools",
    "math",
}


def U(i: int) -> str:
    return f"u{i:03d}"


def job(n: int, cost: int = 100) -> list[tuple[str, int]]:
    return [(U(i), cost) for i in range(n)]


def good(key) -> bytes:
    return hashlib.sha256(f"ok:{key}".encode()).digest()


def bad(key, peer: str) -> bytes:
    return hashlib.sha256(f"lie:{peer}:{key}".encode()).digest()


def of_type(actions, kind) -> list:
    return [a for a in actions if isinstance(a, kind)]


def leases(actions, peer: str | None = None) -> list[Lease]:
    return [a for a in of_type(actions, Lease) if peer is None or a.peer == peer]


def alive(c: Coordinator, peer: str, t: float, samples: int = 0, rendering: bool = True) -> None:
    c.on_heartbeat(peer, (), t, samples_done=samples, rendering=rendering)


def finish(c: Coordinator, lease: Lease, t: float, digest=good) -> list[Verdict]:
    """`lease`'s holder returns every unit at time t, honestly unless told otherwise."""
    return [c.on_result(lease.peer, lease.lease_id, k, digest(k), t) for k in lease.units]


# ---- layering -----------------------------------------------------------------------------------


def forbidden_imports(source: str) -> list[str]:
    return sansio.forbidden_imports(source, ALLOWED_IMPORTS)


def test_checker_catches_forbidden_imports():
    src = (
        "import time\nfrom trio import sleep\nfrom .units import WorkUnit\nimport random\n__import__('np')\n"
    )
    assert forbidden_imports(src) == ["time", "trio", ".units", "random", "__import__()"]
    assert forbidden_imports("from collections.abc import Hashable\nimport heapq, hashlib\n") == []


def test_schedule_imports_only_the_standard_library_subset():
    assert forbidden_imports(Path(schedule.__file__).read_text()) == []


HEAVY = ("numpy", "msgspec", "trio", "libp2p", "taichi", "textual")


def test_importing_schedule_pulls_in_no_heavy_or_io_module():
    """The package's __init__ is on the import path too: the simulator must stay light."""
    code = f"import sys, meshrender.schedule; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- lease sizing -------------------------------------------------------------------------------


def test_first_lease_is_small_and_later_ones_hold_about_three_seconds_of_work():
    c = Coordinator(job(200), 0.0)
    c.add_worker("a", 0.0)
    # unknown speed: one small calibration lease, with the first-lease allowance
    assert c.poll(0.0) == [Lease("a", 1, (U(0),), 60.0)]
    alive(c, "a", 0.0, rendering=False)  # fetching the scene, compiling: not busy time
    alive(c, "a", 0.5, rendering=False)
    assert c.poll(0.5) == []  # one lease until it is measured
    assert c.on_result("a", 1, U(0), good(U(0)), 1.5) is Verdict.ACCEPT  # 100 cost units in 1 s
    assert c.statistics().speed == {"a": pytest.approx(100.0)}
    # measured: two leases of 3 s of work in queue order, each due twice the estimated time of
    # everything the worker owes by then, plus 5 s
    first = c.poll(1.5)
    assert first == [
        Lease("a", 2, (U(1), U(2), U(3)), 1.5 + 2 * 300 / 100 + 5),
        Lease("a", 3, (U(4), U(5), U(6)), 1.5 + 2 * 600 / 100 + 5),
    ]
    # it turns out faster: 0.25 s per unit from now on; leases grow towards 3 s of work
    t = 1.5
    held = list(first)
    sizes = []
    while len(sizes) < 12:
        lease = held.pop(0)
        for k in lease.units:
            t += 0.25
            alive(c, "a", t, samples=int(t * 1000))
            assert c.on_result("a", lease.lease_id, k, good(k), t) is Verdict.ACCEPT
        new = leases(c.poll(t))
        assert len(new) == 1 and len(held) == 1  # a slot freed: exactly one lease refills it
        held.append(new[0])
        sizes.append(len(new[0].units))
    speed = c.statistics().speed["a"]
    assert speed == pytest.approx(400.0, rel=0.1)
    assert sizes[-1] == round(speed * 3 / 100)  # ~3 s of work at the measured speed
    assert sizes == sorted(sizes)  # it grew as the estimate caught up
    owed = sum(len(x.units) for x in held) * 100
    assert held[-1].deadline == pytest.approx(t + 2 * owed / speed + 5)


def test_lease_size_respects_units_max_and_takes_at_least_one_unit():
    cfg = ScheduleConfig(lease_units_max=5)
    c = Coordinator(job(40, 10), 0.0, config=cfg)
    c.add_worker("a", 0.0)
    (a,) = c.poll(0.0)
    finish(c, a, 0.01)  # 10 cost units in 10 ms: 1000/s, 3000 per lease: capped at 5 units
    assert [len(x.units) for x in c.poll(0.01)] == [5, 5]
    c2 = Coordinator([("x", 10), ("y", 10), ("huge", 100_000), ("z", 10)], 0.0)
    c2.add_worker("a", 0.0)
    (l1,) = c2.poll(0.0)
    finish(c2, l1, 1.0)  # 10/s: 30 per lease; the huge unit alone is 10 000 s, still leased whole
    assert c2.poll(1.0) == [
        Lease("a", 2, ("y",), pytest.approx(1.0 + 2 * 10 / 10 + 5)),
        Lease("a", 3, ("huge",), pytest.approx(1.0 + 2 * 100_010 / 10 + 5)),
    ]


def test_the_first_worker_measured_takes_only_its_share_while_another_calibrates():
    """A small frame: the first measured worker is not handed 3 s of work each lease (the whole
    frame) while a peer is still on its calibration lease; leases shrink as the queue drains."""
    c = Coordinator(job(64), 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    a1, b1 = c.poll(0.0)
    finish(c, a1, 0.1)  # a: 1000/s, so 3 s of work would be 30 units, two leases the whole queue
    a2, a3 = c.poll(0.1)
    # the queue (62 units) over a and b (counted at a's speed until measured), over 2 leases each
    assert len(a2.units) == round(62 / 2 / 2) and len(a3.units) == round((62 - 16) / 2 / 2)
    assert c.statistics().units_queued == 62 - 16 - 12 > 0  # b's share is left for b
    finish(c, b1, 0.5)  # b measured too (it started with a's lease time: slower)
    sizes = []
    t = 0.5
    held = leases(c.poll(0.5)) + [a2, a3]
    while held:
        lease = held.pop(0)
        sizes.append((lease.peer, len(lease.units)))
        t += 0.01 * len(lease.units)
        finish(c, lease, t)
        held += leases(c.poll(t))
    assert c.done
    assert [n for p, n in sizes if p == "a"][-1] == 1  # the last leases are single units
    assert {p for p, _ in sizes} == {"a", "b"}


def lease_trace(units) -> list[Lease]:
    """Two workers, a twice as fast as b, answering every lease until the job is done."""
    c = Coordinator(units, 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    held = leases(c.poll(0.0))
    t, trace = 0.0, []
    while held:
        lease = held.pop(0)
        trace.append(lease)
        t += 0.01 * len(lease.units) * (1 if lease.peer == "a" else 2)
        finish(c, lease, t)
        held += leases(c.poll(t))
    assert c.done
    return trace


def test_a_measured_worker_gets_blocks_of_whole_consecutive_frames():
    """An animation of small frames: after calibration, leases end at frame boundaries, so almost
    every frame is rendered by one peer in one lease, in blocks of consecutive frames."""
    units = [(f"f{f}-u{k}", 100, f) for f in range(40) for k in range(5)]
    frame_of = {k: f for k, _, f in units}

    def split_frames(trace) -> int:
        leases_of: dict[int, set[int]] = {}
        for lease in trace:
            for k in lease.units:
                leases_of.setdefault(frame_of[k], set()).add(lease.lease_id)
        return sum(len(ids) > 1 for ids in leases_of.values())

    trace = lease_trace(units)
    assert [len(x.units) for x in trace[:2]] == [1, 1]  # calibration: one unit each
    assert split_frames(trace) <= 5  # the calibrated frame and a few at the shrinking tail
    for lease in trace:
        frames = [frame_of[k] for k in lease.units]
        assert set(frames) == set(range(min(frames), max(frames) + 1))  # consecutive
    assert sum(len({frame_of[k] for k in x.units}) >= 5 for x in trace) >= 3  # blocks of many frames
    # the same units without frames: leases cut through frames wherever their size ends
    assert split_frames(lease_trace([(k, c) for k, c, _ in units])) > 8


def test_a_worker_never_holds_more_than_two_leases_and_never_idles():
    c = Coordinator(job(60), 0.0)
    c.add_worker("a", 0.0)
    held = leases(c.poll(0.0))
    assert len(held) == 1
    assert c.poll(0.0) == [] and c.poll(0.5) == []  # nothing more until a slot frees
    t = 0.5
    while held:
        lease = held.pop(0)
        for k in lease.units:
            t += 0.1
            alive(c, "a", t, samples=int(t * 100))
            c.on_result("a", lease.lease_id, k, good(k), t)
        held += leases(c.poll(t))
        assert len(held) <= 2
        if not c.done and c.statistics().units_queued:
            assert len(held) == 2  # the next lease was already there while it finished this one
    assert c.done and c.statistics().revokes == {}


# ---- deadlines, heartbeats, stalls --------------------------------------------------------------


def test_missed_deadlines_strike_requeue_and_drop_the_worker():
    cfg = ScheduleConfig(strikes_max=2, first_lease_s=10.0)
    c = Coordinator(job(6), 0.0, config=cfg)
    c.add_worker("slow", 0.0)
    assert c.poll(0.0) == [Lease("slow", 1, (U(0),), 10.0)]
    t = 0.0
    while t < 19.5:  # alive but never ready (still compiling): only the deadline catches it
        t += 0.5
        alive(c, "slow", t, rendering=False)
        out = c.poll(t)
        if t == 10.0:  # a strike; its unit back at the head of the queue (here: to itself again)
            assert out == [Revoke("slow", 1, REVOKE_DEADLINE), Lease("slow", 2, (U(0),), 20.0)]
        else:
            assert out == []
    c.add_worker("ok", 20.0)
    # the second strike drops it; its unit goes to the worker that joined
    assert c.poll(20.0) == [Revoke("slow", 2, REVOKE_DEADLINE), Lease("ok", 3, (U(0),), 30.0)]
    st_ = c.statistics()
    assert st_.strikes == {"slow": 2} and st_.dropped == ("slow",) and st_.revokes == {REVOKE_DEADLINE: 2}
    # its late result is still welcome while nobody else's is in
    assert c.on_result("slow", 1, U(0), good(U(0)), 20.2) is Verdict.ACCEPT
    assert c.poll(20.2) == [Revoke("ok", 3, REVOKE_ACCEPTED), Lease("ok", 4, (U(1),), 30.2)]
    assert c.statistics().workers == 1
    # added again (it reconnected): a clean record, and it gets work
    assert c.add_worker("slow", 21.0)
    assert c.statistics().dropped == () and c.statistics().strikes == {}
    assert leases(c.poll(21.0), "slow")


def test_a_silent_worker_loses_its_units_within_the_heartbeat_timeout():
    c = Coordinator(job(10), 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    assert [(x.peer, x.units) for x in c.poll(0.0)] == [("a", (U(0),)), ("b", (U(1),))]
    for t in (0.5, 1.0):
        alive(c, "a", t, samples=int(t * 10))
        alive(c, "b", t, samples=int(t * 10))
    # a freezes after its heartbeat at 1.0; b keeps beating
    alive(c, "b", 1.5, samples=15)
    assert c.poll(1.5) == []
    assert c.next_deadline() == pytest.approx(2.5)  # 1.5 s after a's last heartbeat
    alive(c, "b", 2.0, samples=20)
    assert c.poll(2.4) == []
    assert c.on_result("b", 2, U(1), good(U(1)), 2.5) is Verdict.ACCEPT
    out = c.poll(2.5)
    assert of_type(out, Revoke) == [Revoke("a", 1, REVOKE_SILENT)]
    # a's unit comes back at once, ahead of the rest of the queue, to the live worker
    assert [(x.peer, x.units[0]) for x in leases(out)] == [("b", U(0)), ("b", U(2))]
    st_ = c.statistics()
    assert st_.silences == 1 and st_.strikes == {} and st_.workers == 1
    # silence costs no strike; a gets nothing more until it is heard from again
    assert leases(c.poll(3.0), "a") == []
    alive(c, "a", 3.1, samples=31)
    assert leases(c.poll(3.1), "a")


def test_a_lease_given_to_a_dead_peer_is_taken_back_after_the_timeout():
    c = Coordinator(job(3), 0.0)
    c.add_worker("ghost", 5.0)  # it joined at 5 s and froze at once
    c.poll(7.0)  # its heartbeat clock starts when it gets a lease while holding none
    assert c.next_deadline() == pytest.approx(8.5)
    assert c.poll(8.5) == [Revoke("ghost", 1, REVOKE_SILENT)]


def test_a_stalled_worker_loses_its_leases_and_takes_a_strike():
    c = Coordinator(job(50), 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    first = c.poll(0.0)
    for x in first:
        alive(c, x.peer, 0.0, samples=0, rendering=False)
    for x in first:
        finish(c, x, 1.0)  # one unit each in 1 s: 100 per second
    assert [len(x.units) for x in c.poll(1.0)] == [3, 3, 3, 3]
    # a says it renders, but its samples counter stops at 1000 from 1.5 s on
    t = 1.0
    while t < 6.0:
        t += 0.5
        alive(c, "a", t, samples=1000)
        alive(c, "b", t, samples=int(t * 1000))
        assert of_type(c.poll(t), Revoke) == []
    # allowance: max(5 s, 3 x its next unit's expected second) after the last change
    assert c.next_deadline() == pytest.approx(6.5)
    alive(c, "b", 6.5, samples=6500)
    out = c.poll(6.5)
    assert [(r.peer, r.reason) for r in of_type(out, Revoke)] == [("a", REVOKE_STALLED)] * 2
    assert leases(out) == []  # a gets nothing until it makes progress (b is full)
    st_ = c.statistics()
    assert st_.stalls == 1 and st_.strikes == {"a": 1} and st_.workers == 1
    alive(c, "a", 7.0, samples=1000)  # still stuck (its revoke may not have arrived)
    assert leases(c.poll(7.0), "a") == []
    alive(c, "a", 7.5, samples=1100)  # moving again
    alive(c, "b", 7.5, samples=7500)
    assert c.statistics().workers == 2


def test_a_worker_that_joins_mid_job_gets_work_at_the_next_poll():
    c = Coordinator(job(100), 0.0)
    c.add_worker("a", 0.0)
    (first,) = c.poll(0.0)
    finish(c, first, 1.0)
    assert len(c.poll(1.0)) == 2
    c.add_worker("late", 1.2)
    assert [(x.peer, len(x.units)) for x in c.poll(1.2)] == [("late", 1)]
    assert c.statistics().workers == 2


def test_a_lost_connection_requeues_its_units_without_a_strike():
    c = Coordinator(job(8), 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    a1, b1 = c.poll(0.0)
    c.remove_worker("a", 0.3, "stream reset")
    assert c.poll(0.3) == []  # no Revoke to a peer that is gone; b holds its one first lease
    finish(c, b1, 1.0)
    assert leases(c.poll(1.0))[0].units[0] == a1.units[0]  # a's unit first
    st_ = c.statistics()
    assert st_.strikes == {} and st_.removed == {"a": "stream reset"} and st_.revokes == {}
    assert c.on_result("a", 1, U(0), good(U(0)), 1.1) is Verdict.IGNORED  # from a gone peer
    c.remove_worker("never-seen", 1.2)  # harmless


# ---- endgame ------------------------------------------------------------------------------------


def test_endgame_duplicates_the_units_out_longest_at_most_duplicates_max_times():
    c = Coordinator(job(6), 0.0, config=ScheduleConfig(first_lease_units=2))
    joined = []
    for t, p in ((0.0, "w0"), (1.0, "w1"), (1.5, "w2")):
        for q in joined:
            alive(c, q, t)
        c.add_worker(p, t)
        joined.append(p)
        assert [(x.peer, x.units) for x in c.poll(t)] == [
            (p, (U(2 * len(joined) - 2), U(2 * len(joined) - 1)))
        ]
    # the queue is empty: free workers get duplicates, oldest out first
    for q in joined:
        alive(c, q, 2.0)
    for p in ("f0", "f1", "f2", "f3"):
        c.add_worker(p, 2.0)
    out = c.poll(2.0)
    assert [(x.peer, x.units) for x in out] == [
        ("f0", (U(0), U(1))),
        ("f1", (U(2), U(3))),
        ("f2", (U(4), U(5))),
    ]  # each unit once: f3 gets nothing
    assert c.statistics().duplicates == 6 and c.statistics().units_queued == 0
    # with duplicates_max=2, the same order once more
    c2 = Coordinator(job(2), 0.0, config=ScheduleConfig(first_lease_units=2, duplicates_max=2))
    c2.add_worker("w0", 0.0)
    c2.poll(0.0)
    for p in ("f0", "f1", "f2"):
        c2.add_worker(p, 0.5)
    assert [x.peer for x in c2.poll(0.5)] == ["f0", "f1"]


def test_a_worker_never_gets_a_duplicate_of_its_own_unit():
    c = Coordinator(job(4), 0.0)
    c.add_worker("a", 0.0)
    (a1,) = c.poll(0.0)
    alive(c, "a", 0.0, rendering=False)
    finish(c, a1, 0.5)  # 200/s: 6 units per lease, but at most half the queue: both slots fill
    assert [x.units for x in c.poll(0.5)] == [(U(1), U(2)), (U(3),)]
    alive(c, "a", 1.0)
    assert c.poll(1.0) == []  # a free slot, nothing queued, and every unit out is its own
    c.add_worker("b", 1.0)
    assert [(x.peer, x.units) for x in c.poll(1.0)] == [("b", (U(1),))]


def test_the_first_result_wins_and_the_other_holder_is_revoked():
    c = Coordinator(job(2), 0.0)
    c.add_worker("slow", 0.0)
    (s1,) = c.poll(0.0)
    alive(c, "slow", 0.1, rendering=False)
    finish(c, s1, 2.0)  # slow: about 50 per second
    (s2,) = c.poll(2.0)
    c.add_worker("fast", 2.0)
    (d,) = c.poll(2.0)  # nothing queued: a duplicate of u1
    assert (s2.units, d.units) == ((U(1),), (U(1),))
    assert c.on_result("fast", d.lease_id, U(1), good(U(1)), 2.5) is Verdict.ACCEPT
    assert c.poll(2.5) == [Revoke("slow", s2.lease_id, REVOKE_ACCEPTED)]
    assert c.done
    # the slow copy still arrives (it was rendering it): compared, not accepted twice
    assert c.on_result("slow", s2.lease_id, U(1), good(U(1)), 3.5) is Verdict.MATCH
    st_ = c.statistics()
    assert st_.units_by_peer == {"slow": 1, "fast": 1} and st_.matches == 1
    assert st_.revokes == {REVOKE_ACCEPTED: 1} and st_.leases_live == 0
    assert c.next_deadline() is None


def test_a_lease_is_not_revoked_while_it_still_owes_an_unaccepted_unit():
    c = Coordinator(job(3), 0.0, config=ScheduleConfig(first_lease_units=3))
    c.add_worker("slow", 0.0)
    (s,) = leases(c.poll(0.0))
    alive(c, "slow", 1.0)
    c.add_worker("fast", 1.0)
    (d,) = c.poll(1.0)
    assert d.units == (U(0), U(1), U(2))
    assert c.on_result("fast", d.lease_id, U(0), good(U(0)), 1.5) is Verdict.ACCEPT
    alive(c, "slow", 1.5)
    assert c.poll(1.5) == []  # slow still owes u1 and u2, which nobody has returned
    assert c.on_result("fast", d.lease_id, U(1), good(U(1)), 1.6) is Verdict.ACCEPT
    assert c.on_result("fast", d.lease_id, U(2), good(U(2)), 1.7) is Verdict.ACCEPT
    assert c.poll(1.7) == [Revoke("slow", s.lease_id, REVOKE_ACCEPTED)]


# ---- verification -------------------------------------------------------------------------------


def lying_party(trusted: str = ""):
    """The liar's lies for u0..u2 are accepted; honest `a` duplicates its next lease, u3..u5."""
    cfg = ScheduleConfig(first_lease_units=3, leases_per_worker=1, trusted=trusted)
    c = Coordinator(job(6), 0.0, config=cfg)
    c.add_worker("liar", 0.0)
    (l1,) = c.poll(0.0)
    assert finish(c, l1, 1.0, lambda k: bad(k, "liar")) == [Verdict.ACCEPT] * 3
    (l2,) = c.poll(1.0)  # alone, one lease at a time: the rest of the queue
    c.add_worker("a", 1.0)
    (dup,) = c.poll(1.0)  # nothing queued after the liar's lease: a duplicates it
    assert (l2.peer, l2.units) == ("liar", (U(3), U(4), U(5)))
    assert (dup.peer, dup.units) == ("a", (U(3), U(4), U(5)))
    return c, l2, dup


def test_mismatch_goes_to_an_arbiter_who_convicts_the_liar_and_its_results_are_discarded():
    c, l2, dup = lying_party()
    # the liar answers u3 with a lie; a's duplicate of u3 disagrees
    assert c.on_result("liar", l2.lease_id, U(3), bad(U(3), "liar"), 1.5) is Verdict.ACCEPT
    assert c.on_result("a", dup.lease_id, U(3), good(U(3)), 2.0) is Verdict.MISMATCH
    st_ = c.statistics()
    assert st_.mismatches == 1 and st_.disputes_open == 1 and st_.disputes_waiting == 1
    assert c.poll(2.0) == []  # no worker outside the dispute: it waits, and the job is not done
    c.add_worker("b", 2.5)
    (arb,) = c.poll(2.5)
    assert (arb.peer, arb.units) == ("b", (U(3),))  # the arbiter lease
    assert c.on_result("b", arb.lease_id, U(3), good(U(3)), 3.0) is Verdict.MISMATCH  # not the accepted one
    out = c.poll(3.0)
    pen = of_type(out, Penalize)
    assert [p.peer for p in pen] == ["liar"] and U(3) in pen[0].reason
    assert Revoke("liar", l2.lease_id, REVOKE_CONVICTED) in out
    assert of_type(out, Discard) == [Discard("liar", (U(0), U(1), U(2), U(3)))]
    assert "liar" not in {x.peer for x in leases(out)}
    st_ = c.statistics()
    assert st_.convictions.keys() == {"liar"} and st_.discarded == 4 and st_.units_accepted == 0
    assert st_.disputes_open == 0 and not c.done
    assert not c.add_worker("liar", 3.0)  # never again in this job
    assert c.on_result("liar", l2.lease_id, U(4), bad(U(4), "liar"), 3.1) is Verdict.IGNORED
    # the honest workers finish the job with good results only
    accepted = drive_to_done(c, 3.1, ["a", "b"], [dup, *leases(out)])
    assert accepted == {U(i): good(U(i)) for i in range(6)}
    assert c.done and set(c.statistics().units_by_peer) <= {"a", "b"}


def test_the_coordinators_own_worker_settles_a_dispute_it_is_in_so_two_peers_finish():
    """A party of two, the coordinator's own worker `a` and a liar: no third worker will ever come
    to arbitrate, so the trusted worker's disagreement convicts the liar at once."""
    c, l2, dup = lying_party(trusted="a")
    assert c.on_result("liar", l2.lease_id, U(3), bad(U(3), "liar"), 1.5) is Verdict.ACCEPT
    assert c.on_result("a", dup.lease_id, U(3), good(U(3)), 2.0) is Verdict.MISMATCH
    out = c.poll(2.0)
    (pen,) = of_type(out, Penalize)
    assert pen.peer == "liar" and "coordinator's own" in pen.reason
    assert of_type(out, Discard) == [Discard("liar", (U(0), U(1), U(2), U(3)))]
    assert c.statistics().disputes_open == 0 and c.statistics().convictions.keys() == {"liar"}
    accepted = drive_to_done(c, 2.0, ["a"], [dup, *leases(out)])
    assert accepted == {U(i): good(U(i)) for i in range(6)} and c.done
    # the other way round: the trusted worker's result was accepted first, the liar dissents
    c, l2, dup = lying_party(trusted="a")
    assert c.on_result("a", dup.lease_id, U(3), good(U(3)), 1.5) is Verdict.ACCEPT
    assert c.on_result("liar", l2.lease_id, U(3), bad(U(3), "liar"), 2.0) is Verdict.MISMATCH
    assert c.statistics().convictions.keys() == {"liar"}
    # without a trusted worker the same dispute waits for a third (see the test above)
    c, l2, dup = lying_party(trusted="")
    c.on_result("liar", l2.lease_id, U(3), bad(U(3), "liar"), 1.5)
    c.on_result("a", dup.lease_id, U(3), good(U(3)), 2.0)
    assert c.statistics().disputes_waiting == 1 and not c.statistics().convictions


def drive_to_done(c: Coordinator, t: float, peers: list[str], held: list[Lease]) -> dict:
    """Honest peers answer every lease (those given, then new ones) until the job is done;
    returns the digests accepted meanwhile."""
    accepted: dict = {}
    held = list(held)
    for _ in range(200):
        out = c.poll(t)
        for d in of_type(out, Discard):
            for k in d.units:
                accepted.pop(k, None)
        held += [x for x in leases(out) if x.peer in peers]
        revoked = {r.lease_id for r in of_type(out, Revoke)}
        held = [x for x in held if x.lease_id not in revoked]
        if c.done:
            return accepted
        t += 0.5
        for p in peers:
            alive(c, p, t, samples=int(t * 100))
        if held:
            x = held.pop(0)
            for k in x.units:
                if k in accepted:
                    continue
                if c.on_result(x.peer, x.lease_id, k, good(k), t) is Verdict.ACCEPT:
                    accepted[k] = good(k)
    raise AssertionError("job did not finish")


def test_an_arbiter_agreeing_with_the_accepted_result_convicts_the_dissenter():
    c = Coordinator(job(2), 0.0)
    c.add_worker("a", 0.0)
    (a1,) = c.poll(0.0)
    finish(c, a1, 1.0)
    c.add_worker("liar", 1.0)
    c.add_worker("b", 1.0)
    a2, dup = c.poll(1.0)  # a (measured: first) takes u1; the next free worker duplicates it
    assert (a2.peer, a2.units, dup.peer, dup.units) == ("a", (U(1),), "liar", (U(1),))
    finish(c, a2, 1.2)  # a accepts u1 first
    # the liar's lease was revoked when a's copy came in, but its result was already on the way
    assert c.on_result("liar", dup.lease_id, U(1), bad(U(1), "liar"), 1.5) is Verdict.MISMATCH
    out = c.poll(1.5)
    assert of_type(out, Revoke) == [Revoke("liar", dup.lease_id, REVOKE_ACCEPTED)]
    (arb,) = leases(out)
    assert arb.peer == "b" and arb.units == (U(1),)
    assert not c.done
    assert c.on_result("b", arb.lease_id, U(1), good(U(1)), 2.0) is Verdict.MATCH
    out = c.poll(2.0)
    assert [p.peer for p in of_type(out, Penalize)] == ["liar"] and of_type(out, Discard) == []
    assert c.done and c.statistics().convictions.keys() == {"liar"}


def test_a_dissenting_liar_convicted_elsewhere_does_not_settle_its_disputes():
    """Two liars disagree on u0; one of them is convicted over another unit. That proves nothing
    about u0's accepted result: the dispute still needs an honest arbiter."""
    c = Coordinator(job(2), 0.0, config=ScheduleConfig(first_lease_units=2))
    c.add_worker("l1", 0.0)
    (x,) = c.poll(0.0)
    c.add_worker("l2", 0.0)
    (y,) = c.poll(0.0)  # a duplicate of both units
    assert c.on_result("l1", x.lease_id, U(0), bad(U(0), "l1"), 1.0) is Verdict.ACCEPT
    assert c.on_result("l2", y.lease_id, U(0), bad(U(0), "l2"), 1.1) is Verdict.MISMATCH
    assert c.on_result("l2", y.lease_id, U(1), bad(U(1), "l2"), 1.2) is Verdict.ACCEPT
    assert c.on_result("l1", x.lease_id, U(1), good(U(1)), 1.3) is Verdict.MISMATCH  # l1 tells the truth
    c.add_worker("h", 1.5)
    out = c.poll(1.5)
    assert of_type(out, Revoke) == [Revoke("l1", x.lease_id, REVOKE_ACCEPTED)]  # u1 came from l2 first
    (arb,) = leases(out)
    assert arb.units == (U(0), U(1))  # both disputes, in the order they arose
    assert c.on_result("h", arb.lease_id, U(1), good(U(1)), 2.0) is Verdict.MISMATCH
    out = c.poll(2.0)
    assert of_type(out, Discard) == [Discard("l2", (U(1),))]  # l2 convicted over u1
    assert not c.done and c.statistics().disputes_open == 1  # u0 is still disputed
    assert c.on_result("h", arb.lease_id, U(0), good(U(0)), 2.5) is Verdict.MISMATCH
    out = c.poll(2.5)
    assert of_type(out, Discard) == [Discard("l1", (U(0),))]  # three different results for u0
    assert {p.peer for p in of_type(out, Penalize)} == {"l1", "l2", "h"}


def test_three_different_results_penalize_all_three_and_requeue_the_unit():
    c = Coordinator(job(1), 0.0)
    c.add_worker("p", 0.0)
    (p1,) = c.poll(0.0)
    c.add_worker("q", 0.1)
    (q1,) = c.poll(0.1)  # endgame duplicate
    assert c.on_result("p", p1.lease_id, U(0), b"one", 1.0) is Verdict.ACCEPT
    assert c.on_result("q", q1.lease_id, U(0), b"two", 1.1) is Verdict.MISMATCH
    c.add_worker("r", 1.2)
    out = c.poll(1.2)
    assert of_type(out, Revoke) == [Revoke("q", q1.lease_id, REVOKE_ACCEPTED)]  # before its answer came
    (r1,) = leases(out)
    assert c.on_result("r", r1.lease_id, U(0), b"three", 1.5) is Verdict.MISMATCH
    out = c.poll(1.5)
    assert {p.peer for p in of_type(out, Penalize)} == {"p", "q", "r"}
    assert of_type(out, Discard) == [Discard("p", (U(0),))]
    assert leases(out)  # queued again, for someone
    st_ = c.statistics()
    assert st_.convictions == {} and st_.units_accepted == 0 and st_.discarded == 1


def test_two_peers_alone_never_convict_each_other():
    c = Coordinator(job(1), 0.0)
    c.add_worker("p", 0.0)
    (p1,) = c.poll(0.0)
    c.add_worker("q", 0.1)
    (q1,) = c.poll(0.1)
    c.on_result("p", p1.lease_id, U(0), b"one", 1.0)
    c.on_result("q", q1.lease_id, U(0), b"two", 1.1)
    for t in (2.0, 30.0, 300.0):
        alive(c, "p", t)
        alive(c, "q", t)
        assert leases(c.poll(t)) == [] and not c.done
    assert c.statistics().disputes_waiting == 1 and c.statistics().convictions == {}


def test_spot_checks_duplicate_a_fraction_of_units_outside_the_endgame():
    keys = [U(i) for i in range(2000)]
    picked = [k for k in keys if spot_checked(k, 0.1, seed=7)]
    assert 150 < len(picked) < 250
    assert picked == [k for k in keys if spot_checked(k, 0.1, seed=7)]  # deterministic
    assert picked != [k for k in keys if spot_checked(k, 0.1, seed=8)]
    assert not any(spot_checked(k, 0.0) for k in keys) and all(spot_checked(k, 1.0) for k in keys)
    assert Coordinator(
        job(2000), 0.0, config=ScheduleConfig(spot_check_fraction=0.1, seed=7)
    ).statistics().spot_checks == len(picked)

    cfg = ScheduleConfig(spot_check_fraction=1.0, first_lease_units=2)
    c = Coordinator(job(40), 0.0, config=cfg)
    c.add_worker("liar", 0.0)
    (l1,) = c.poll(0.0)
    c.add_worker("a", 0.1)
    # plenty still queued, yet a's lease checks the liar's units
    assert c.poll(0.1) == [Lease("a", 2, (U(0), U(1)), 60.1)]
    assert c.statistics().units_queued == 38
    assert finish(c, l1, 0.5, lambda k: bad(k, "liar")) == [Verdict.ACCEPT] * 2
    assert c.on_result("a", 2, U(0), good(U(0)), 0.6) is Verdict.MISMATCH
    c.add_worker("b", 0.6)
    out = c.poll(0.6)
    arb = leases(out, "b")[0]
    assert arb.units[0] == U(0)  # b arbitrates first
    assert c.on_result("b", arb.lease_id, U(0), good(U(0)), 0.8) is Verdict.MISMATCH
    out = c.poll(0.8)
    assert of_type(out, Discard) == [Discard("liar", (U(0), U(1)))]
    assert c.statistics().convictions.keys() == {"liar"}


def test_the_job_waits_for_an_owed_spot_check():
    cfg = ScheduleConfig(spot_check_fraction=1.0)
    c = Coordinator(job(1), 0.0, config=cfg)
    c.add_worker("a", 0.0)
    (a1,) = c.poll(0.0)
    c.add_worker("b", 0.0)
    (b1,) = c.poll(0.0)
    assert c.on_result("a", a1.lease_id, U(0), good(U(0)), 1.0) is Verdict.ACCEPT
    assert c.poll(1.0) == [] and not c.done  # b's check is still owed
    assert c.on_result("b", b1.lease_id, U(0), good(U(0)), 1.2) is Verdict.MATCH
    assert c.done and c.statistics().spot_checks_passed == 1
    # a check lost with its worker is not waited for
    c2 = Coordinator(job(1), 0.0, config=cfg)
    c2.add_worker("a", 0.0)
    (a1,) = c2.poll(0.0)
    c2.add_worker("b", 0.0)
    c2.poll(0.0)
    c2.on_result("a", a1.lease_id, U(0), good(U(0)), 1.0)
    c2.remove_worker("b", 1.1)
    assert c2.done


# ---- refuse, cancel, misuse, bounds -------------------------------------------------------------


def test_a_refused_lease_is_requeued_and_the_worker_gets_no_more():
    c = Coordinator(job(4), 0.0)
    c.add_worker("nos", 0.0)
    (n1,) = c.poll(0.0)
    c.on_refuse("nos", n1.lease_id, "cannot fetch the scene", 0.5)
    c.add_worker("ok", 0.5)
    assert c.poll(0.5) == [Lease("ok", 2, (U(0),), 60.5)]
    assert c.statistics().refused == {"nos": "cannot fetch the scene"}
    assert not c.add_worker("nos", 1.0)
    c.on_refuse("nos", 999, "?", 1.0)  # never issued
    assert of_type(c.poll(1.0), Penalize) == [Penalize("nos", "refused a lease it was never given")]


def test_cancel_revokes_every_lease_and_gives_no_more():
    c = Coordinator(job(20), 0.0)
    for p in ("a", "b"):
        c.add_worker(p, 0.0)
    out = c.poll(0.0)
    c.cancel(1.0)
    assert c.cancelled and not c.done
    revs = c.poll(1.0)
    assert revs == [
        Revoke(x.peer, x.lease_id, REVOKE_CANCELLED) for x in sorted(out, key=lambda x: x.lease_id)
    ]
    c.add_worker("c", 1.0)
    assert c.poll(2.0) == [] and c.next_deadline() is None
    assert c.on_result("a", out[0].lease_id, U(0), good(U(0)), 2.0) is Verdict.IGNORED
    c.cancel(3.0)  # twice is harmless
    assert c.statistics().revokes == {REVOKE_CANCELLED: 2}


def test_results_nobody_asked_for_are_penalized_and_ignored_never_raised():
    c = Coordinator(job(3), 0.0)
    c.add_worker("a", 0.0)
    c.add_worker("b", 0.0)
    a1, b1 = c.poll(0.0)
    assert c.on_result("a", a1.lease_id, U(2), good(U(2)), 0.5) is Verdict.IGNORED  # not in that lease
    assert c.on_result("a", b1.lease_id, b1.units[0], b"x", 0.5) is Verdict.IGNORED  # b's lease
    assert c.on_result("a", 77, U(0), b"x", 0.5) is Verdict.IGNORED  # never issued
    assert c.on_result("a", a1.lease_id, "nope", b"x", 0.5) is Verdict.IGNORED  # not in the job
    assert c.on_result("a", a1.lease_id, ["unhashable"], b"x", 0.5) is Verdict.IGNORED
    assert c.on_result("stranger", a1.lease_id, U(0), b"x", 0.5) is Verdict.IGNORED
    assert c.on_result("a", a1.lease_id, U(0), good(U(0)), 0.6) is Verdict.ACCEPT
    assert c.on_result("a", a1.lease_id, U(0), good(U(0)), 0.7) is Verdict.IGNORED  # twice
    assert of_type(c.poll(0.7), Penalize) == [
        Penalize("a", "sent a result it was not asked for"),
        Penalize("stranger", "sent a result for a job it does not work on"),
    ]
    assert c.statistics().penalties == 7 and c.statistics().units_accepted == 1
    c.on_heartbeat("stranger", 5, 0.8, samples_done=3, rendering=True)  # harmless


def test_illegal_use_raises_local_protocol_error():
    with pytest.raises(LocalProtocolError, match="listed twice"):
        Coordinator([("a", 1), ("a", 1)], 0.0)
    with pytest.raises(LocalProtocolError, match="cost"):
        Coordinator([("a", 0)], 0.0)
    with pytest.raises(LocalProtocolError, match="hashable"):
        Coordinator([(["a"], 1)], 0.0)
    with pytest.raises(LocalProtocolError, match=r"is not \(key, cost\)"):
        Coordinator(["a"], 0.0)
    with pytest.raises(LocalProtocolError, match="finite"):
        Coordinator(job(1), float("inf"))
    for bad_cfg in (
        {"leases_per_worker": 0},
        {"lease_target_s": 0},
        {"spot_check_fraction": 1.5},
        {"lease_units_max": schedule.LEASE_UNITS_MAX + 1},
        {"first_lease_units": 300, "lease_units_max": 200},
        {"duplicates_max": -1},
        {"heartbeat_timeout_s": float("nan")},
    ):
        with pytest.raises(LocalProtocolError):
            ScheduleConfig(**bad_cfg)
    with pytest.raises(LocalProtocolError, match="ScheduleConfig"):
        Coordinator(job(1), 0.0, config={"leases_per_worker": 2})
    c = Coordinator(job(2), 5.0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        c.poll(4.0)
    c.add_worker("a", 5.0)
    (a1,) = c.poll(6.0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        c.on_result("a", a1.lease_id, U(0), b"x", 5.5)
    with pytest.raises(LocalProtocolError, match="digest"):
        c.on_result("a", a1.lease_id, U(0), "not bytes", 6.0)
    with pytest.raises(LocalProtocolError, match="lease id"):
        c.on_result("a", "1", U(0), b"x", 6.0)
    with pytest.raises(LocalProtocolError, match="peer id"):
        c.add_worker("", 6.0)
    with pytest.raises(LocalProtocolError, match="samples_done"):
        c.on_heartbeat("a", 1, 6.0, samples_done=-1, rendering=True)
    with pytest.raises(LocalProtocolError, match="rendering"):
        c.on_heartbeat("a", (1, 2), 6.0, samples_done=1, rendering="yes")
    with pytest.raises(LocalProtocolError, match="lease_id"):
        c.on_heartbeat("a", 1.0, 6.0, samples_done=1, rendering=True)
    with pytest.raises(LocalProtocolError, match="lease id"):
        c.on_heartbeat("a", (1, "2"), 6.0, samples_done=1, rendering=True)
    assert c.on_result("a", a1.lease_id, U(0), b"x", 6.0) is Verdict.ACCEPT  # nothing was changed


def test_worker_and_unit_counts_are_bounded(monkeypatch):
    monkeypatch.setattr(schedule, "UNITS_MAX", 10)
    with pytest.raises(LocalProtocolError, match="exceeds 10 units"):
        Coordinator(job(11), 0.0)
    monkeypatch.setattr(schedule, "WORKERS_MAX", 3)
    c = Coordinator(job(10), 0.0)
    assert all(c.add_worker(p, 0.0) for p in ("a", "b", "c"))
    assert not c.add_worker("d", 0.0)
    c.remove_worker("a", 0.0)
    assert not c.add_worker("d", 0.0)  # records outlive departures
    assert c.add_worker("a", 0.0)


def test_an_empty_job_is_done_at_once():
    c = Coordinator([], 2.0)
    c.add_worker("a", 2.0)
    assert c.done and c.poll(2.0) == [] and c.next_deadline() is None
    assert c.statistics().elapsed_s == 0.0


# ---- the worker's side --------------------------------------------------------------------------


def test_worker_renders_one_unit_at_a_time_in_lease_order_and_beats_while_it_holds_one():
    w = WorkerJob(0.0)
    assert w.poll(0.0) == [] and w.next_deadline() is None and w.idle
    assert w.on_lease(1, ("a", "b"), 60.0, 0.0)
    assert w.on_lease(2, ("c",), 60.0, 0.0)
    assert not w.on_lease(1, ("x",), 60.0, 0.0)  # a repeat is ignored
    w.preparing(True)
    assert w.poll(0.0) == [Heartbeat((1, 2), 0, False), RenderNext(1, "a")]
    assert w.poll(0.1) == []  # one unit at a time
    w.started("a", 0.1)
    assert w.next_deadline() == 0.5
    assert w.poll(0.5) == [Heartbeat((1, 2), 0, False)]  # still compiling
    w.preparing(False)
    w.progress(40, 0.8)
    assert w.poll(1.0) == [Heartbeat((1, 2), 40, True)]
    w.finished("a", 1.1)
    assert w.poll(1.1) == [RenderNext(1, "b")]
    w.started("b", 1.1)
    w.progress(10, 1.3)
    w.finished("b", 1.4)  # lease 1 is done
    assert w.lease_ids == (2,)
    assert w.poll(1.5) == [Heartbeat((2,), 50, False), RenderNext(2, "c")]
    w.started("c", 1.5)
    w.finished("c", 1.6)
    assert w.idle and w.next_deadline() is None and w.poll(3.0) == []


def test_worker_skips_a_revoked_lease_but_finishes_the_unit_it_renders():
    w = WorkerJob(0.0, heartbeat_s=1.0)
    w.on_lease(1, ("a", "b", "c"), 9.0, 0.0)
    w.on_lease(2, ("d",), 9.0, 0.0)
    assert w.poll(0.0)[-1] == RenderNext(1, "a")
    w.started("a", 0.0)
    assert w.on_revoke(1, 0.2) and not w.on_revoke(1, 0.2)
    assert w.rendering == "a"
    w.finished("a", 0.5)  # its result is still sent
    assert w.poll(0.5) == [RenderNext(2, "d")]
    w.started("d", 0.6)
    assert w.poll(1.0) == [Heartbeat((2,), 0, True)]
    assert w.on_revoke(2, 1.1) and w.next_deadline() is None
    w.finished("d", 1.2)
    # a unit handed out just before its lease was revoked may still be started
    w.on_lease(3, ("e",), 9.0, 2.0)
    assert w.poll(2.0)[-1] == RenderNext(3, "e")
    w.on_revoke(3, 2.0)
    w.started("e", 2.1)
    w.finished("e", 2.2)
    assert w.idle


def test_worker_misuse_raises():
    w = WorkerJob(1.0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        w.poll(0.5)
    with pytest.raises(LocalProtocolError, match="handed out"):
        w.started("a", 1.0)
    w.on_lease(1, ("a", "b"), 9.0, 1.0)
    w.poll(1.0)
    with pytest.raises(LocalProtocolError, match="handed out"):
        w.started("b", 1.0)
    with pytest.raises(LocalProtocolError, match="no unit is rendering"):
        w.progress(1, 1.0)
    w.started("a", 1.0)
    w.progress(5, 1.1)
    with pytest.raises(LocalProtocolError, match="backwards"):
        w.progress(4, 1.2)
    with pytest.raises(LocalProtocolError, match="rendering is"):
        w.finished("b", 1.2)
    with pytest.raises(LocalProtocolError, match="one string"):
        w.on_lease(2, "ab", 9.0, 1.2)
    with pytest.raises(LocalProtocolError, match="deadline"):
        w.on_lease(2, ("x",), float("nan"), 1.2)
    with pytest.raises(LocalProtocolError, match="heartbeat_s"):
        WorkerJob(0.0, heartbeat_s=0)
    with pytest.raises(LocalProtocolError, match="bool"):
        w.preparing(1)
    assert not w.on_lease(3, (), 9.0, 1.3)  # an empty lease from a confused coordinator: ignored


# ---- scale --------------------------------------------------------------------------------------


def test_thousands_of_workers_finish_a_big_job_without_quadratic_work(monkeypatch):
    """2000 virtual workers, 20 000 units, results in a random order: each poll does work in
    proportion to what changed, not to units x workers."""
    n_units, n_workers = 20_000, 2_000
    rng = random.Random(3)
    cfg = ScheduleConfig(heartbeat_timeout_s=1e9)  # this driver sends no heartbeats
    c = Coordinator(job(n_units), 0.0, config=cfg)
    counting = sansio.CountingHeapq()
    monkeypatch.setattr(schedule, "heapq", counting)
    speed = {f"w{i}": rng.uniform(50, 500) for i in range(n_workers)}
    events: list = []
    seq = 0
    started = time.perf_counter()
    free_at = dict.fromkeys(speed, 0.0)
    for p in speed:
        c.add_worker(p, 0.0)
    t, polls = 0.0, 0
    while not c.done:
        polls += 1
        for x in leases(c.poll(t)):
            for k in x.units:  # each worker renders its leases back to back
                free_at[x.peer] = max(free_at[x.peer], t) + 100 / speed[x.peer]
                seq += 1
                heapq.heappush(events, (free_at[x.peer], seq, x.peer, x.lease_id, k))
        t, _, p, lid, k = heapq.heappop(events)
        c.on_result(p, lid, k, good(k), t)
        assert polls < 4 * n_units
    elapsed = time.perf_counter() - started
    st_ = c.statistics()
    ideal = n_units * 100 / sum(speed.values())
    assert st_.units_accepted == n_units
    assert len(st_.units_by_peer) > 0.95 * n_workers  # spread over the party (the slowest lose races)
    assert t < 2 * ideal + 3, (t, ideal)  # the endgame does not wait for the slowest peers
    assert counting.pops < 10 * n_units, counting.pops
    assert elapsed < 10, elapsed


# ---- a seeded party of failing and lying workers ------------------------------------------------

KINDS = ("honest", "joiner", "slow", "dier", "freezer", "staller", "liar", "refuser")
STEADY = 2  # honest workers that never fail: with them every run must finish
FROZEN_LOSS_S = 2.0  # the issue: a frozen peer loses its units within 2 s


@dataclass
class SimWorker:
    peer: str
    kind: str
    speed: float  # cost units (and samples) per second
    latency: float  # one way, both directions: one link keeps its messages in order
    job: WorkerJob | None = None
    epoch: int = 0  # connection number: messages of a closed connection are lost
    connected: bool = False
    frozen_at: float | None = None
    hung: bool = False
    lie_p: float = 0.0
    render: tuple | None = None  # (lease id, unit, start, token)
    token: int = 0
    samples: int = 0
    inbox: list = field(default_factory=list)  # deliveries held while frozen
    timer_at: float | None = None


@dataclass
class Sim:
    """A seeded discrete-event party: a Coordinator and one WorkerJob per worker, with messages,
    renders, deaths, freezes, hangs, refusals and lies, checked after every step."""

    seed: int
    kinds: list[str]
    n_units: int
    spot: float = 0.0
    lie_p: float | None = None  # every liar lies this often (default: each its own, 0.3 to 1)
    config: dict = field(default_factory=dict)  # ScheduleConfig fields to override
    trace: list = field(default_factory=list)

    def run(self) -> Coordinator:
        rng = self.rng = random.Random(self.seed)
        self.cost = {U(i): rng.choice([50, 100, 200, 400]) for i in range(self.n_units)}
        self.cfg = ScheduleConfig(
            strikes_max=rng.randint(2, 4),
            duplicates_max=rng.choice([1, 1, 2]),
            first_lease_s=rng.choice([8.0, 60.0]),
            spot_check_fraction=self.spot,
            seed=self.seed,
        )
        if self.config:
            self.cfg = dataclasses.replace(self.cfg, **self.config)
        c = self.c = Coordinator(list(self.cost.items()), 0.0, config=self.cfg)
        self.events: list = []
        self.seq = 0
        self.accepted: dict[str, tuple[str, bytes]] = {}  # the caller's film: unit -> (peer, digest)
        self.compared: set[str] = set()  # units whose standing result another peer's result met
        self.held: dict[str, dict[int, tuple[float, set]]] = {}  # peer -> lease -> (issued, units left)
        self.issued_to: dict[int, str] = {}
        self.ctimers: set[float] = set()
        kinds = ["honest"] * STEADY + list(self.kinds)
        self.w: dict[str, SimWorker] = {}
        for i, kind in enumerate(kinds):
            p = f"{kind}{i}"
            speed = rng.uniform(100, 1000) / (10 if kind == "slow" else 1)
            w = self.w[p] = SimWorker(p, kind, speed, rng.uniform(0.001, 0.05))
            self.at(rng.uniform(0.5, 10.0) if kind == "joiner" else 0.0, "join", p)
            when = rng.uniform(0.0, 8.0)
            if kind == "dier":
                self.at(when, "die", p)
                if rng.random() < 0.5:
                    self.at(when + rng.uniform(0.5, 5.0), "join", p)
            elif kind == "freezer":
                self.at(when, "freeze", p)
                if rng.random() < 0.5:
                    self.at(when + rng.uniform(0.5, 6.0), "thaw", p)
            elif kind == "staller":
                self.at(when, "hang", p)
            elif kind == "liar":
                w.lie_p = rng.uniform(0.3, 1.0) if self.lie_p is None else self.lie_p
        steps = 0
        while self.events and not c.done:
            steps += 1
            assert steps < 100_000, f"runaway party, seed {self.seed}"
            t, _, what, *rest = heapq.heappop(self.events)
            assert t < 3_000, f"job never finished, seed {self.seed}: {c.statistics()}"
            getattr(self, "ev_" + what)(t, *rest)
        assert c.done, f"not done, seed {self.seed}: {c.statistics()}"
        return c

    def at(self, t: float, what: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, what, *args))

    # -- the coordinator's side --

    def coord_step(self, t: float) -> None:
        c = self.c
        out = c.poll(t)
        self.trace += [(round(t, 9), a) for a in out]
        convicted = c.statistics().convictions
        for a in out:
            if isinstance(a, Lease):
                assert a.peer not in convicted, f"leased to convicted {a.peer}, seed {self.seed}"
                owed = {k for _, left in self.held.get(a.peer, {}).values() for k in left}
                assert not owed & set(a.units), f"{a.peer} leased a unit it owes, seed {self.seed}"
                self.held.setdefault(a.peer, {})[a.lease_id] = (t, set(a.units))
                self.issued_to[a.lease_id] = a.peer
                self.send_worker(a.peer, t, a)
            elif isinstance(a, Revoke):
                self.held.get(a.peer, {}).pop(a.lease_id, None)
                self.send_worker(a.peer, t, a)
            elif isinstance(a, Discard):
                for k in a.units:
                    assert self.accepted.pop(k)[0] == a.peer, f"discarded another's {k}, seed {self.seed}"
                    self.compared.discard(k)
        for p, hs in self.held.items():
            assert len(hs) <= self.cfg.leases_per_worker, f"{p} holds {len(hs)}, seed {self.seed}"
            w = self.w[p]
            if w.frozen_at is not None:
                for lid, (issued, _) in hs.items():
                    allowed = max(w.frozen_at, issued) + FROZEN_LOSS_S
                    assert t <= allowed, f"frozen {p} still holds lease {lid} at {t}, seed {self.seed}"
        d = c.next_deadline()
        if d is not None and max(d, t) not in self.ctimers:
            self.ctimers.add(max(d, t))
            self.at(max(d, t), "ctimer")

    def ev_ctimer(self, t: float) -> None:
        self.ctimers.discard(t)
        self.coord_step(t)

    def ev_to_coord(self, t: float, p: str, epoch: int, msg: tuple) -> None:
        w, c = self.w[p], self.c
        if epoch != w.epoch:
            return  # its connection closed on the way
        if msg[0] == "hb":
            hb = msg[1]
            c.on_heartbeat(p, hb.lease_ids, t, samples_done=hb.samples_done, rendering=hb.rendering)
        elif msg[0] == "refuse":
            c.on_refuse(p, msg[1], "cannot get the scene", t)
            self.held.get(p, {}).pop(msg[1], None)
        else:
            _, lid, k, digest = msg
            v = c.on_result(p, lid, k, digest, t)
            self.trace.append((round(t, 9), p, lid, k, v))
            if v is not Verdict.IGNORED:
                left = self.held.get(p, {}).get(lid)
                if left is not None:
                    left[1].discard(k)
                    if not left[1]:
                        del self.held[p][lid]
            if v is Verdict.ACCEPT:
                assert k not in self.accepted, f"{k} accepted twice, seed {self.seed}"
                self.accepted[k] = (p, digest)
            elif v is not Verdict.IGNORED and self.accepted.get(k, (p,))[0] != p:
                self.compared.add(k)
        self.coord_step(t)

    # -- the workers' side --

    def send_coord(self, w: SimWorker, t: float, msg: tuple) -> None:
        self.at(t + w.latency, "to_coord", w.peer, w.epoch, msg)

    def send_worker(self, p: str, t: float, action) -> None:
        w = self.w[p]
        self.at(t + w.latency, "to_worker", p, w.epoch, action)

    def ev_join(self, t: float, p: str) -> None:
        w = self.w[p]
        w.epoch += 1
        w.connected = True
        w.job = WorkerJob(t)
        w.render = None
        w.samples = 0
        self.c.add_worker(p, t)
        self.coord_step(t)

    def ev_die(self, t: float, p: str) -> None:
        w = self.w[p]
        w.connected = False
        w.epoch += 1
        w.render = None
        self.at(t + self.rng.uniform(0.05, 1.0), "lost", p, w.epoch)

    def ev_lost(self, t: float, p: str, epoch: int) -> None:
        if self.w[p].epoch == epoch and not self.w[p].connected:
            self.c.remove_worker(p, t, "connection lost")
            self.held.pop(p, None)
            self.coord_step(t)

    def ev_freeze(self, t: float, p: str) -> None:
        self.w[p].frozen_at = t

    def ev_thaw(self, t: float, p: str) -> None:
        w = self.w[p]
        w.frozen_at = None
        if w.render is not None:  # the interrupted unit starts over (its samples counter keeps)
            w.token += 1
            lid, k, _, _ = w.render
            w.render = (lid, k, t, w.token)
            self.at(t + self.cost[k] / w.speed, "unit_done", p, w.token)
        inbox, w.inbox = w.inbox, []
        for action in inbox:
            self.deliver(w, t, action)
        self.worker_step(t, p)

    def ev_hang(self, t: float, p: str) -> None:
        self.w[p].hung = True
        self.w[p].token += 1  # what it renders now never finishes

    def ev_to_worker(self, t: float, p: str, epoch: int, action) -> None:
        w = self.w[p]
        if epoch != w.epoch or not w.connected:
            return
        if w.frozen_at is not None:
            w.inbox.append(action)
            return
        self.deliver(w, t, action)
        self.worker_step(t, p)

    def deliver(self, w: SimWorker, t: float, action) -> None:
        if isinstance(action, Lease):
            if w.kind == "refuser":
                self.send_coord(w, t, ("refuse", action.lease_id))
            else:
                w.job.on_lease(action.lease_id, action.units, action.deadline, t)
        else:
            w.job.on_revoke(action.lease_id, t)

    def ev_wtimer(self, t: float, p: str) -> None:
        if self.w[p].timer_at == t:
            self.w[p].timer_at = None
            self.worker_step(t, p)

    def worker_step(self, t: float, p: str) -> None:
        w = self.w[p]
        if not w.connected or w.frozen_at is not None:
            return
        job = w.job
        if w.render is not None and not w.hung:
            lid, k, start, _ = w.render
            w.samples = max(w.samples, min(self.cost[k] - 1, int((t - start) * w.speed)))
            job.progress(w.samples, t)
        for a in job.poll(t):
            if isinstance(a, Heartbeat):
                self.send_coord(w, t, ("hb", a))
            else:
                job.started(a.unit, t)
                w.token += 1
                w.samples = 0
                w.render = (a.lease_id, a.unit, t, w.token)
                if not w.hung:
                    self.at(t + self.cost[a.unit] / w.speed, "unit_done", p, w.token)
        d = job.next_deadline()
        if d is not None and (w.timer_at is None or w.timer_at > max(d, t)):
            w.timer_at = max(d, t)
            self.at(w.timer_at, "wtimer", p)

    def ev_unit_done(self, t: float, p: str, token: int) -> None:
        w = self.w[p]
        if token != w.token or w.render is None or not w.connected or w.frozen_at is not None:
            return
        lid, k, _, _ = w.render
        w.render = None
        w.job.progress(self.cost[k], t)
        w.job.finished(k, t)
        lie = w.lie_p and self.rng.random() < w.lie_p
        self.send_coord(w, t, ("result", lid, k, bad(k, p) if lie else good(k)))
        self.worker_step(t, p)

    def check_end(self) -> None:
        c, seed = self.c, self.seed
        st_ = c.statistics()
        assert set(self.accepted) == set(self.cost), seed
        assert st_.units_accepted == len(self.cost)
        by_peer: dict[str, int] = {}
        for p, _ in self.accepted.values():
            by_peer[p] = by_peer.get(p, 0) + 1
        assert st_.units_by_peer == by_peer, seed
        liars = {p for p, w in self.w.items() if w.kind == "liar"}
        assert set(st_.convictions) <= liars, f"an honest worker was convicted, seed {seed}"
        for k, (p, digest) in self.accepted.items():
            if digest != good(k):
                # a lie can only stand where no other worker's result ever met it
                assert p in liars and p not in st_.convictions and k not in self.compared, (seed, k, p)
        assert not (set(by_peer) & set(st_.convictions)), seed


party_cases = st.tuples(
    st.integers(0, 2**32 - 1),
    st.lists(st.sampled_from(KINDS), min_size=0, max_size=8),
    st.integers(0, 80),
    st.sampled_from([0.0, 0.0, 0.3, 1.0]),
    st.fixed_dictionaries(
        {},
        optional={
            "leases_per_worker": st.integers(1, 3),
            "first_lease_units": st.integers(1, 3),
            "duplicates_max": st.integers(0, 2),
            "lease_target_s": st.sampled_from([0.5, 3.0, 10.0]),
        },
    ),
)


@settings(max_examples=150, deadline=None)
@given(party_cases)
def test_party_invariants(case):
    seed, kinds, n, spot, config = case
    sim = Sim(seed, kinds, n, spot, config=config)
    sim.run()
    sim.check_end()
    again = Sim(seed, kinds, n, spot, config=config)
    again.run()
    assert again.trace == sim.trace  # the same seed replays the same run


SCENARIO = (7, ["liar", "slow", "freezer", "dier", "staller", "refuser", "joiner", "liar"], 60, 0.3)


def test_a_hostile_party_finishes_with_every_liar_caught():
    """Liars that always lie, spot checks on every unit: each liar is caught and nothing it said
    stands; slow, frozen, dying, stalled and refusing peers cost time, not units."""
    for seed in range(3):
        sim = Sim(seed, ["liar", "liar", "slow", "freezer", "dier", "staller"], 60, 1.0, lie_p=1.0)
        c = sim.run()
        sim.check_end()
        st_ = c.statistics()
        assert all(d == good(k) for k, (_, d) in sim.accepted.items()), seed
        assert st_.convictions.keys() == {p for p, w in sim.w.items() if w.kind == "liar" and w.lie_p}
        assert st_.silences + st_.stalls + st_.revokes.get(REVOKE_DEADLINE, 0) > 0


def accepts_duplicates(monkeypatch):
    judge = Coordinator._judge

    def broken(self, u, w, digest):
        v = judge(self, u, w, digest)
        return Verdict.ACCEPT if v is Verdict.MATCH else v

    monkeypatch.setattr(Coordinator, "_judge", broken)


def misses_silence(monkeypatch):
    monkeypatch.setattr(Coordinator, "_arm", lambda self, w: None)


def overfills_workers(monkeypatch):
    issue = Coordinator._issue

    def broken(self, w, idxs, now):
        issue(self, w, idxs, now)
        if len(idxs) > 1:
            issue(self, w, idxs[-1:], now)

    monkeypatch.setattr(Coordinator, "_issue", broken)


@pytest.mark.parametrize("breakage", [accepts_duplicates, misses_silence, overfills_workers])
def test_party_checks_can_fail(monkeypatch, breakage):
    """The party's checks catch a broken core (whether one seed's party meets the fault, a freeze
    while holding a lease for instance, depends on the schedule: a few seeds are tried)."""
    seeds = range(SCENARIO[0], SCENARIO[0] + 6)
    for seed in seeds:
        Sim(seed, *SCENARIO[1:]).run()
    breakage(monkeypatch)
    caught = []
    for seed in seeds:
        try:
            sim = Sim(seed, *SCENARIO[1:])
            sim.run()
            sim.check_end()
        except AssertionError:
            caught.append(seed)
    assert caught, f"{breakage.__name__} went unnoticed in seeds {list(seeds)}"


TRACE_SCRIPT = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from test_schedule import Sim, SCENARIO
sim = Sim(*SCENARIO)
sim.run()
print(hashlib.sha256(repr(sim.trace).encode()).hexdigest(), len(sim.trace))
"""


def test_same_seed_same_trace_whatever_the_hash_seed():
    """Set and dict iteration of strings must not leak into the schedule: processes with different
    PYTHONHASHSEED replay the same party action for action."""
    here = str(Path(__file__).parent)
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run(
            [sys.executable, "-c", TRACE_SCRIPT, here], env=env, capture_output=True, text=True, check=True
        )
        outs.append(r.stdout.split())
    assert outs[0] == outs[1]
    assert int(outs[0][1]) > 100
    local = Sim(*SCENARIO)
    local.run()
    assert hashlib.sha256(repr(local.trace).encode()).hexdigest() == outs[0][0]


def test_every_revoke_reason_is_exercised_by_the_party():
    reasons: dict[str, int] = {}
    for seed in range(6):
        sim = Sim(seed, ["freezer", "staller", "slow", "liar", "dier"], 50, 0.3)
        reasons.update(sim.run().statistics().revokes)
    assert {REVOKE_SILENT, REVOKE_STALLED, REVOKE_ACCEPTED} <= set(reasons), reasons
    assert REVOKE_DROPPED in reasons or REVOKE_CONVICTED in reasons, reasons
