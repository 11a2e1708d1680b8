"""The same small party run for real (subprocess peers on loopback) and in the simulator, with the
speeds the real run measured: their lease traces have the same shape (calibration leases of one
unit, the same share of the frame per peer, lease counts and sizes of the same order)."""

from __future__ import annotations

import json
import signal
import statistics

import pytest
from party import PeerProc
from test_distributed import finish, party_render

from sim.engine import Sim
from sim.scenario import FrameSpec, NetworkSpec, PeerClass, Scenario

pytestmark = pytest.mark.slow

ARGS = ["--res", "64x64", "--spp", "512", "--pass-spp", "32", "--max-depth", "4", "--tile", "16"]


def shape(leases: list[tuple[str, int]], units_by_peer: dict[str, int]) -> dict:
    by_peer: dict[str, list[int]] = {}
    for peer, n in leases:
        by_peer.setdefault(peer, []).append(n)
    total = sum(units_by_peer.values())
    return {
        "first": {p: sizes[0] for p, sizes in by_peer.items()},
        "share": {p: units_by_peer.get(p, 0) / total for p in by_peer},
        "leases": len(leases),
        "largest": max(n for _, n in leases),
    }


def test_a_real_party_and_its_simulation_lease_alike(tmp_path):
    workers = [PeerProc(tmp_path / "w0", "--threads", "1", "--backend", "cpu")]
    workers.append(
        PeerProc(tmp_path / "w1", "--threads", "1", "--backend", "cpu", "--bootstrap", workers[0].addr)
    )
    try:
        summary = finish(party_render(tmp_path / "c", workers[0].addr, tmp_path / "out.exr", ARGS))
    finally:
        for w in workers:
            w.proc.send_signal(signal.SIGTERM)
            w.stop()
    job = json.loads((tmp_path / "c" / "results" / summary["job_id"] / "job.json").read_text())
    coordinator = job["coordinator"]
    names = [coordinator, *sorted(p for p in job["units_by_peer"] if p != coordinator)]
    seconds = {p: [u["seconds"] for u in job["units"] if u["peer"] == p][1:] for p in names}  # past compiling
    unit_s = statistics.mean(s for v in seconds.values() for s in v)
    classes = [PeerClass(name=f"c{i}", count=1, speed=unit_s / statistics.mean(seconds[p]), noise=0.1)
               for i, p in enumerate(names)]  # fmt: skip
    frame = FrameSpec(units=len(job["units"]), unit_cost_s=unit_s, result_bytes=16 * 16 * 12)
    scenario = Scenario(peers=classes, network=NetworkSpec(latency_ms=0.3), frame=frame)
    sim = Sim(scenario, 0)
    report = sim.run()
    assert report.violations == []
    real = shape([(names.index(x["peer"]), x["units"]) for x in job["leases"]],
                 {names.index(p): n for p, n in job["units_by_peer"].items()})  # fmt: skip
    sim_leases = zip(sim.trace_leases, sim.trace_lease_sizes, strict=True)
    simulated = shape([(int(a[2][1:]), n) for a, n in sim_leases],
                      {int(p[1:]): n for p, n in report.units_by_peer.items()})  # fmt: skip
    assert real["first"] == simulated["first"] == {0: 1, 1: 1, 2: 1}  # one calibration unit each
    for p in range(3):
        assert abs(real["share"][p] - simulated["share"][p]) < 0.15, (real, simulated)
    assert 0.5 < real["leases"] / simulated["leases"] < 2.0, (real, simulated)
    assert 0.4 < real["largest"] / simulated["largest"] < 2.5, (real, simulated)
