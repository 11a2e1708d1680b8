"""The per-peer timeline of a simulated run: the same figure as a real job's (`meshrender.timeline`).

`timeline_from_sim(sim)` reads what the run recorded: each peer's unit bars (a wrong result
marked), the leases the coordinator granted it (the trace), its frozen stretches, when it joined
late or left, its scene fetch (scenarios with a [scene]), and the run's frame time against the
ideal (`Sim.ideal_s`). `draw_timeline(sim, path)` writes it as a PNG; peer 0 is the coordinator.
"""

from __future__ import annotations

import math
from pathlib import Path

from meshrender.timeline import Bar, Row, Span, Timeline, draw


def timeline_from_sim(sim) -> Timeline:
    end = sim.done_at if sim.done_at is not None else sim.now
    leases: dict[str, list[float]] = {}
    for t, _kind, peer, _lease_id in sim.trace_leases:
        leases.setdefault(peer, []).append(t)
    dist = sim.dist
    rows = []
    for p in sim.peers.values():
        fetches = []
        if dist is not None:
            if p.name in dist.finished:
                fetches.append(Span(*dist.finished[p.name]))
            if p.name in dist.fetches:  # still fetching when the run ended
                fetches.append(Span(dist.fetches[p.name].started, None))
        rows.append(Row(
            peer=p.name, cls=p.cls,
            bars=tuple(Bar(start, stop, bool(lie)) for start, stop, _unit, lie in p.bars),
            leases=tuple(leases.get(p.name, ())),
            fetches=tuple(fetches),
            freezes=tuple(Span(a, b) for a, b in p.frozen_spans),
            joined_s=p.joined_at if p.joined_at > 0 else None,
            left_s=p.left_at,
            coordinator=p.name == "p0",
        ))  # fmt: skip
    ideal = sim.ideal_s()
    return Timeline(
        title=f"simulated {sim.scenario.name} (seed {sim.seed}): {len(sim.cost)} units",
        rows=tuple(rows),
        end_s=end,
        frame_s=sim.done_at,
        ideal_s=ideal if math.isfinite(ideal) else None,
    )


def draw_timeline(sim, path: str | Path) -> Path:
    return draw(timeline_from_sim(sim), path)
