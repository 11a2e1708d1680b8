"""Simulator scenarios: TOML files read into checked records (an unknown key is an error naming it).

name = "lan_party_8"
limit_s = 3600            # virtual seconds: a run still going then has failed
[[peers]]                 # a class of peers; peer 0 (the submitting peer) is the first of the first
name = "gpu"
count = 8
speed = 4.0               # seconds of work per second (1.0: the reference machine)
noise = 0.05              # log-normal sigma on each unit's time
up_mbps = 1000            # upload and download caps
down_mbps = 1000
latency_ms = 0.0          # added to [network] latency_ms on every link of these peers (Wi-Fi, WAN)
lie_p = 0.0               # fraction of its results that are wrong
[network]
latency_ms = 0.3
loss = 0.0                # fraction of messages lost
[frame]
units = 256
unit_cost_s = 0.5         # seconds of work per unit at speed 1.0
cost_noise = 0.2          # log-normal sigma of unit costs (some buckets are harder)
result_bytes = 49152      # one unit's result on the wire
[scene]                   # the compiled scene; without this table every peer holds it already
bytes = 1_000_000_000     # its size
chunk_bytes = 524288      # mean chunk size (chunks vary from half to 1.5x this, as content-defined)
holders = 1               # peers holding it whole at the start: peer 0, then the next ones
swarm = true              # false: a peer serves the scene only once it holds it whole (one source)
fetch = "lease"           # lease: a peer fetches on its first unit, as a worker does;
                          # join: as it joins (and the run lasts until every live peer holds it)
[[events]]
at = 5.0
kind = "drop"             # drop | join | freeze | partition | liar
fraction = 0.1            # of the live peers (or count = N); peer 0 is never picked
class = ""                # only peers of this class ("" any); for join: the class to add
until = 8.0               # freeze and partition: when it ends (absent: never)
lie_p = 1.0               # liar: how often the peers picked lie from then on
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from meshrender.errors import MeshrenderError

PEERS_MAX = 100_000  # simulated peers in one scenario
UNITS_MAX = 2_000_000  # schedule.UNITS_MAX
EVENTS_MAX = 10_000
SCENE_BYTES_MAX = 1 << 40  # 1 TiB
SCENE_CHUNKS_MAX = 1 << 20  # exchange.CHUNKS_MAX
SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

Pos = Annotated[float, Meta(gt=0)]
NonNeg = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]


class ScenarioError(MeshrenderError):
    pass


class PeerClass(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    name: Annotated[str, Meta(min_length=1, max_length=32)]
    count: Annotated[int, Meta(ge=0, le=PEERS_MAX)] = 1
    speed: Pos = 1.0
    noise: NonNeg = 0.0
    up_mbps: Pos = 1000.0
    down_mbps: Pos = 1000.0
    latency_ms: NonNeg = 0.0
    lie_p: Fraction = 0.0


class NetworkSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    latency_ms: NonNeg = 0.3
    loss: Annotated[float, Meta(ge=0, lt=1)] = 0.0


class FrameSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    units: Annotated[int, Meta(ge=1, le=UNITS_MAX)]
    unit_cost_s: Pos = 0.5
    cost_noise: NonNeg = 0.0
    result_bytes: Annotated[int, Meta(ge=0, le=1 << 30)] = 49152


class SceneSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    bytes: Annotated[int, Meta(ge=1, le=SCENE_BYTES_MAX)]
    chunk_bytes: Annotated[int, Meta(ge=1024, le=1 << 26)] = 512 << 10
    holders: Annotated[int, Meta(ge=1, le=PEERS_MAX)] = 1
    swarm: bool = True
    fetch: Literal["lease", "join"] = "lease"


class Event(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, rename={"cls": "class"}):
    at: NonNeg
    kind: Literal["drop", "join", "freeze", "partition", "liar"]
    count: Annotated[int, Meta(ge=0, le=PEERS_MAX)] = 0
    fraction: Fraction = 0.0
    cls: str = ""
    until: NonNeg | None = None
    lie_p: Fraction = 1.0
    state: Literal["", "frozen"] = ""


class Scenario(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    name: str = "scenario"
    limit_s: Pos = 3600.0
    peers: Annotated[list[PeerClass], Meta(min_length=1, max_length=64)]
    network: NetworkSpec = NetworkSpec()
    frame: FrameSpec
    scene: SceneSpec | None = None
    events: Annotated[list[Event], Meta(max_length=EVENTS_MAX)] = []


def check(sc: Scenario, where: str = "scenario") -> Scenario:
    if sc.peers[0].count < 1:
        raise ScenarioError(f"{where}: the first peer class needs count >= 1 (peer 0 submits the frame)")
    names = [c.name for c in sc.peers]
    if sc.scene is not None:
        present = sum(c.count for c in sc.peers)
        if sc.scene.holders > present:
            raise ScenarioError(f"{where}: scene.holders {sc.scene.holders} is more than the {present} peers")
        if sc.scene.bytes // sc.scene.chunk_bytes >= SCENE_CHUNKS_MAX:
            raise ScenarioError(
                f"{where}: scene of {sc.scene.bytes} bytes in {sc.scene.chunk_bytes}-byte chunks is over "
                f"{SCENE_CHUNKS_MAX} chunks"
            )
    for i, ev in enumerate(sc.events):
        if ev.cls and ev.cls not in names:
            raise ScenarioError(
                f"{where}: events[{i}]: no peer class {ev.cls!r} (classes: {', '.join(names)})"
            )
        if ev.kind == "join" and not ev.count:
            raise ScenarioError(f"{where}: events[{i}]: a join needs count >= 1")
        if ev.until is not None and ev.until <= ev.at:
            raise ScenarioError(f"{where}: events[{i}]: until {ev.until} is not after at {ev.at}")
    return sc


def load_scenario(spec: str | Path) -> Scenario:
    """A scenario file, or the name of a shipped one (`lan_party_8`, ...)."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = SCENARIOS_DIR / f"{spec}.toml"
        if not path.exists():
            shipped = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml")))
            raise ScenarioError(f"no scenario {spec!r} (shipped: {shipped})")
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: TOML syntax error: {exc}") from None
    try:
        sc = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return check(sc, str(path))
