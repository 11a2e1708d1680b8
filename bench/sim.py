"""The simulator's figures, measured side by side in one run. Nothing here asserts a time.

  * wall time of 1,000 peers x 10,000 units (target <= 60 s);
  * office_64_mixed with 10% of peers dropping mid-frame, against the ideal (target <= 1.15x),
    over several seeds, and the same party without the drop;
  * a 1 GB scene from one holder to 1 peer, and to 100 peers on 1 Gb/s links, as a swarm and
    from a single source (target: the swarm to 100 <= 3x the time to 1).

    python bench/sim.py [--seeds 5] [--only frame|scene]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.engine import Sim  # noqa: E402
from sim.scenario import Event, FrameSpec, PeerClass, Scenario, SceneSpec, load_scenario  # noqa: E402


def timed(sc: Scenario, seed: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = Sim(sc, seed).run()
    wall = time.perf_counter() - t0
    assert not r.violations, r.violations
    return r.to_json(), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", choices=["frame", "scene"])
    args = ap.parse_args()
    if args.only != "scene":
        frames(args.seeds)
    if args.only != "frame":
        scene()


def scene() -> None:
    """Distribution only: every peer fetches as it joins, and the frame is a token one."""
    times = {}
    for n, swarm in ((2, True), (100, True), (100, False)):
        sc = Scenario(
            name=f"1GB to {n - 1} {'swarm' if swarm else 'single source'}",
            peers=[PeerClass(name="pc", count=n, up_mbps=1000, down_mbps=1000)],
            frame=FrameSpec(units=n, unit_cost_s=0.001),
            scene=SceneSpec(bytes=1_000_000_000, holders=1, swarm=swarm, fetch="join"),
        )
        r, wall = timed(sc, 0)
        d = r["distribution"]
        times[(n, swarm)] = d["distribution_s"]
        print(json.dumps({"run": sc.name, "distribution_s": round(d["distribution_s"], 2),
                          "bound_s": d["bound_s"], "source_bytes_out": d["holders_bytes_out"],
                          "chunks": d["chunks"], "events": r["events"],
                          "wall_s": round(wall, 1)}))  # fmt: skip
    one = times[(2, True)]
    print(json.dumps({"swarm_100_over_1": round(times[(100, True)] / one, 2),
                      "single_source_100_over_1": round(times[(100, False)] / one, 2)}))  # fmt: skip


def frames(seeds: int) -> None:
    big = Scenario(
        name="1000x10000",
        peers=[PeerClass(name="cpu", count=1000, speed=1.0, noise=0.2)],
        frame=FrameSpec(units=10_000, unit_cost_s=2.0, cost_noise=0.3),
    )
    r, wall = timed(big, 0)
    print(json.dumps({"run": "1000 peers x 10000 units", "wall_s": round(wall, 2), "events": r["events"],
                      "frame_s": round(r["frame_s"], 2), "ideal_s": r["ideal_s"]}))  # fmt: skip
    office = load_scenario("office_64_mixed")
    party = {"peers": office.peers, "network": office.network, "frame": office.frame}
    drop_only = Scenario(name="office_64_drop10", events=[Event(at=20.0, kind="drop", fraction=0.1)], **party)
    calm = Scenario(name="office_64_calm", **party)
    for sc in (calm, drop_only, office):
        ratios = []
        for seed in range(seeds):
            r, _ = timed(sc, seed)
            ratios.append(r["frame_s"] / r["ideal_s"])
        print(json.dumps({"run": sc.name, "frame_over_ideal_mean": round(statistics.mean(ratios), 3),
                          "worst": round(max(ratios), 3), "seeds": seeds}))  # fmt: skip


if __name__ == "__main__":
    main()
