"""The same small party run for real (subprocess peers on loopback) and in the simulator, fed what
the real run measured: their lease traces have the same shape (calibration leases of one unit,
the same share of the frame per peer, sized leases of the same number and size).

The simulator gives each peer a constant speed from t = 0; a real machine does not. On a busy
machine (other processes on the cores) the real run differs from that in two ways the simulator
can be told about, and one it cannot:
  * peers start late: a render process spawned and its kernel loaded under contention can take
    10-25 s, longer than the frame, and a member is offered work only once its renderer is
    ready. So the workers' renderers are waited for before the frame is queued, by a coordinator
    that does not render (`--no-local-render`: its own renderer would start with the job). Its
    links to the members still open at their own pace: the real run's job.json says when each
    peer started its first unit, and in the simulation the first to start is peer 0 and each
    other peer joins at its own start time (a `join` event);
  * every peer is slower, and the party spends part of its time between units (results, leases,
    heartbeats, Python): each peer's speed is its mean render seconds per unit, relative to the
    others, scaled by the run's utilisation (render seconds over the peers' active time), so the
    simulated party does the frame's work in about the real time;
  * a peer's speed changes part-way (a neighbour process starts): modelled by nothing. A peer
    that slowed while it held a large lease leaves the others a tail of one-unit endgame leases,
    and its share moves. So the lease counts compared are of sized leases (more than one unit),
    and each peer's share tolerance grows by the drift of its speed measured in the run itself
    (its second half of units against its first).
"""

from __future__ import annotations

import json
import math
import signal
import statistics

import pytest
from party import PeerProc
from test_distributed import finish, party_render

from sim.engine import Sim
from sim.scenario import Event, FrameSpec, NetworkSpec, PeerClass, Scenario

pytestmark = pytest.mark.slow

# 256 units of 16x16 pixels x 128 samples: a frame of a few seconds a peer even with a fast kernel,
# so the members' staggered starts (up to 2 s apart) are a small part of it. At 32 samples a unit
# (10 ms) the whole frame took 2.5 s, and the first member had leased most of it alone.
ARGS = ["--res", "64x64", "--spp", "2048", "--pass-spp", "128", "--max-depth", "4", "--tile", "16"]
PEERS = 3  # members that render; the coordinator (a fourth peer) only coordinates
SHARE_TOL = 0.15  # a constant-speed party, 256 units of unequal cost: shares agree to a few units
NOISE = 0.1  # log-normal sigma of each simulated unit's time (the real units' cost spread is per unit)


def shape(leases: list[tuple[int, int]], units_by_peer: dict[int, int]) -> dict:
    by_peer: dict[int, list[int]] = {}
    for peer, n in leases:
        by_peer.setdefault(peer, []).append(n)
    total = sum(units_by_peer.values())
    sized = [n for _, n in leases if n > 1]
    return {
        "first": {p: sizes[0] for p, sizes in by_peer.items()},
        "share": {p: units_by_peer.get(p, 0) / total for p in range(PEERS)},
        "sized": len(sized),
        "median_sized": statistics.median(sized),
        "leases": len(leases),
    }


def measured(job: dict):
    """The peers in order of their first unit's start, the simulated scenario the run measured,
    and each peer's speed drift: |log| of its later units' mean relative time over its earlier
    ones', a unit's relative time being its seconds over the median of that bucket's seconds in
    the run (every bucket is rendered once per pass, so this takes out how hard the bucket is)."""
    started = job["started_s"]
    units = {p: sorted((u for u in job["units"] if u["peer"] == p), key=lambda u: u["at_s"])
             for p in job["units_by_peer"]}  # fmt: skip
    start = {p: us[0]["at_s"] - us[0]["seconds"] - started for p, us in units.items()}
    order = sorted(units, key=start.__getitem__)
    buckets: dict[tuple, list[float]] = {}
    for u in job["units"]:
        buckets.setdefault((u["frame"], u["x0"], u["y0"]), []).append(u["seconds"])
    median = {k: statistics.median(v) for k, v in buckets.items()}
    # relative unit times, past the first unit (it may include compiling) unless it is the only one
    rel = {p: [u["seconds"] / median[u["frame"], u["x0"], u["y0"]] for u in us[1:] or us]
           for p, us in units.items()}  # fmt: skip
    busy = sum(u["seconds"] for us in units.values() for u in us)
    active = sum(max(us[-1]["at_s"] - started - start[p], us[0]["seconds"]) for p, us in units.items())
    utilisation = min(1.0, busy / active)
    unit_s = statistics.mean(u["seconds"] for u in job["units"]) / utilisation
    classes = [PeerClass(name=f"c{i}", count=int(i == 0), noise=NOISE, speed=1 / statistics.mean(rel[p]))
               for i, p in enumerate(order)]  # fmt: skip
    joins = [Event(at=max(0.0, start[p] - start[order[0]]), kind="join", count=1, cls=f"c{i}")
             for i, p in enumerate(order) if i]  # fmt: skip
    frame = FrameSpec(units=len(job["units"]), unit_cost_s=unit_s, result_bytes=16 * 16 * 12)
    scenario = Scenario(peers=classes, network=NetworkSpec(latency_ms=0.3), frame=frame, events=joins)
    drift = {}
    for i, p in enumerate(order):
        r, half = rel[p], len(rel[p]) // 2
        drift[i] = abs(math.log(statistics.mean(r[half:]) / statistics.mean(r[:half]))) if half >= 4 else 0.0
    return order, scenario, drift


def test_a_real_party_and_its_simulation_lease_alike(tmp_path):
    workers = [PeerProc(tmp_path / "w0", "--threads", "1", "--backend", "cpu")]
    for i in range(1, PEERS):
        workers.append(PeerProc(tmp_path / f"w{i}", "--threads", "1", "--backend", "cpu",
                                "--bootstrap", workers[0].addr))  # fmt: skip
    try:
        # every worker is in the party with its renderer up before the frame is queued: a member is
        # offered work once its renderer is ready, and under load (two test processes on two cores)
        # loading the kernel takes 10-25 s, longer than the frame. The coordinator only coordinates.
        for w in workers:
            w.wait_for("renderer", timeout=300)
        for w in workers[1:]:
            workers[0].wait_for("peer-joined", timeout=60, peer=w.peer_id)
        summary = finish(party_render(tmp_path / "c", workers[0].addr, tmp_path / "out.exr",
                                      [*ARGS, "--no-local-render"]))  # fmt: skip
    finally:
        for w in workers:
            w.proc.send_signal(signal.SIGTERM)
            w.stop()
    job = json.loads((tmp_path / "c" / "results" / summary["job_id"] / "job.json").read_text())
    assert set(job["units_by_peer"]) <= {w.peer_id for w in workers}  # --no-local-render: none here
    order, scenario, drift = measured(job)
    # a peer leased to but never started (its renderer was not up before the frame was done) is
    # one that never joins the simulated party; it still had its one-unit first lease
    order += sorted({x["peer"] for x in job["leases"]} - set(order))
    sim = Sim(scenario, 0)
    report = sim.run()
    assert report.violations == []
    index = {name: int(p.cls[1:]) for name, p in sim.peers.items()}  # simulated peer -> its real one
    real = shape([(order.index(x["peer"]), x["units"]) for x in job["leases"]],
                 {order.index(p): n for p, n in job["units_by_peer"].items()})  # fmt: skip
    sim_leases = zip(sim.trace_leases, sim.trace_lease_sizes, strict=True)
    simulated = shape([(index[a[2]], n) for a, n in sim_leases],
                      {index[p]: n for p, n in report.units_by_peer.items()})  # fmt: skip
    context = (real, simulated, scenario, drift)
    # one calibration unit each (a peer that starts after the simulated frame is done gets none)
    assert real["first"] == {p: 1 for p in range(PEERS)} and set(simulated["first"].values()) == {1}, context
    for p in range(PEERS):
        tol = SHARE_TOL + real["share"][p] * math.tanh(drift.get(p, 0.0) / 2)  # (f - 1) / (f + 1) of its work
        assert abs(real["share"][p] - simulated["share"][p]) < tol, context
    assert 0.5 < real["sized"] / simulated["sized"] < 2.0, context
    assert 0.4 < real["median_sized"] / simulated["median_sized"] < 2.5, context
