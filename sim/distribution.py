"""Scene distribution in the simulator: chunks moved by bytes, fetched by the real swarm core.

  * The scene (`[scene]` of a scenario) is cut into chunks of seeded sizes, from half to 1.5x the
    mean (content-defined chunks vary so), summing to its size, plus a manifest of
    MANIFEST_BYTES_PER_CHUNK per chunk. The first `holders` peers hold it whole.
  * A peer that needs the scene does what `meshrender.node.Peer.fetch_scene` does, with the same
    cores: it asks every member for its chunk map (again every MAP_POLL_S * 2 until one answers,
    for FIND_TIMEOUT_S), fetches the manifest from the members that answered, then the chunks
    through `meshrender.swarm.SceneSwarm` with a map round every MAP_POLL_S, serving what it holds
    so far to the others, and the whole scene once it has it. `swarm = false` plays a render
    farm's file server instead: only the first holders serve, and fetchers serve nothing.
  * Wants, chunks and not-founds go through the simulator's `Network` (latency, caps, loss,
    partitions); a chunk takes its bytes' time on the sender's uplink and the receiver's
    downlink. A map round is computed when it is asked, and answered one round trip later, or
    after MAP_TIMEOUT_S when a member asked does not answer (frozen, cut off, or its answer lost),
    as the real round waits for every member or its timeout. A frozen provider keeps the wants
    it receives and serves them when it thaws; a frozen fetcher keeps the chunks it receives.
  * A provider that drops: every fetcher with requests out at it hears so one latency later
    (its stream fails), and what that provider had sent and not yet delivered never arrives. A
    want or chunk lost (a partition, or the loss rate) stalls its stream, which the fetcher resets
    STREAM_RESET_S later: the requests out on it go elsewhere, and the provider may be asked again.
  * What the run reports: when each fetch finished, the bytes the holders uploaded, and the bound
    the ideal uses: S / (holders' upload), S / (slowest download) and, for a swarm, N x S / (the
    whole party's upload); for one source N x S / (holders' upload).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshrender.exchange import Penalize, Request
from meshrender.protocol import ChunkMap
from meshrender.swarm import FIND_TIMEOUT_S, MAP_POLL_S, MAP_TIMEOUT_S, SceneSwarm

MANIFEST_BYTES_PER_CHUNK = 48  # a chunk reference in the manifest: hash, size, offset
WANT_BYTES = 16
WANT_HASH_BYTES = 34
NOT_FOUND_BYTES = 48
SCENE_ID = "5c" * 32
MANIFEST = "ma" + "0" * 62
STREAM_RESET_S = 5.0  # a stalled chunk stream is given up after this long
STUCK_CHECK_S = 1.0  # a fetch with stuck chunks looks again this often (as the real loop wakes)


@dataclass(eq=False)
class Fetch:
    peer: str
    started: float
    stage: str = "find"  # find, manifest, chunks
    swarm: SceneSwarm | None = None
    maps: dict[str, ChunkMap] = field(default_factory=dict)  # the find round's answers
    in_flight: int = 0
    asked: dict[str, int] = field(default_factory=dict)  # provider -> requests out on its stream
    streams: dict[str, int] = field(default_factory=dict)  # provider -> its stream's generation
    timer: float | None = None
    round_held: bool = False  # a map round came due while frozen
    map: ChunkMap | None = None  # the served map, until the next chunk
    then: list[Callable[[str], None]] = field(default_factory=list)  # told "" or the failure


class Distribution:
    def __init__(self, sim, spec, rng):
        self.sim = sim
        self.spec = spec
        sizes, left = [], spec.bytes
        while left > 0:
            size = min(left, max(1, round(spec.chunk_bytes * (0.5 + rng.random()))))
            sizes.append(size)
            left -= size
        self.order = [f"{i:064x}" for i in range(len(sizes))]
        self.wanted = list(zip(self.order, sizes, strict=True))
        self.size = dict(self.wanted)
        self.manifest_bytes = MANIFEST_BYTES_PER_CHUNK * len(sizes)
        self.size[MANIFEST] = self.manifest_bytes
        self.whole: set[str] = set()  # peers holding the scene whole
        self.fetches: dict[str, Fetch] = {}  # live fetches
        self.finished: dict[str, tuple[float, float]] = {}  # peer -> (started, done)
        self.failed: dict[str, str] = {}
        self.holders: list[str] = []
        self.incomplete: list[str] = []  # fetches that ended without holding every chunk: a bug

    # ------------------------------------------------------------------ set-up and questions
    def add_holder(self, name: str) -> None:
        self.whole.add(name)
        self.holders.append(name)

    def holds(self, name: str) -> bool:
        return name in self.whole

    @property
    def fetching(self) -> int:
        return len(self.fetches)

    def need(self, name: str, then: Callable[[str], None]) -> None:
        """`name` needs the scene: `then("")` once it holds it, `then(reason)` if it cannot get it."""
        if name in self.whole:
            then("")
            return
        f = self.fetches.get(name)
        if f is None:
            f = self.fetches[name] = Fetch(name, self.sim.now)
            self._round(f)
        f.then.append(then)

    def forget(self, name: str) -> None:
        """`name` dropped: its fetch ends and its providers hear that its streams closed."""
        self.whole.discard(name)
        self.fetches.pop(name, None)
        sim = self.sim
        for f in self.fetches.values():
            if f.asked.get(name):
                lat = sim.net.link_s(sim.peers[name], sim.peers[f.peer])
                sim.at(sim.now + lat, self._provider_lost, f, name, f.streams.get(name, 0))

    def thawed(self, name: str) -> None:
        f = self.fetches.get(name)
        if f is not None:
            if f.round_held:
                f.round_held = False
                self._round(f)
            self._step(f)

    # ------------------------------------------------------------------ map rounds
    def _answer(self, member) -> ChunkMap | None:
        """What `member` answers a chunk-map query with; None: it is left out of the round."""
        if not self.spec.swarm and member.name not in self.holders:
            return None  # one source: only the first holders serve
        if member.name in self.whole:
            return ChunkMap(scene_id=SCENE_ID, count=0, whole=True, bits=b"")
        f = self.fetches.get(member.name)
        if f is None or f.stage != "chunks":
            return None  # it holds nothing of the scene yet
        if f.map is None:
            f.map = f.swarm.chunk_map()
        return f.map

    def _round(self, f: Fetch) -> None:
        sim = self.sim
        p = sim.peers[f.peer]
        if self.fetches.get(f.peer) is not f or not p.alive:
            return
        if p.frozen:
            f.round_held = True
            return
        maps: dict[str, ChunkMap] = {}
        wait = 0.0  # the round lasts until its slowest answer
        for m in sim.peers.values():
            if m is p or not m.alive:
                continue
            wait = max(wait, 2 * sim.net.link_s(p, m))
            if m.frozen or sim.net.lost(p.name, m.name) or sim.net.lost(m.name, p.name):
                wait = MAP_TIMEOUT_S  # the round waits for its answer until the timeout
                continue
            answer = self._answer(m)
            if answer is not None:
                maps[m.name] = answer
        sim.at(sim.now + wait, self._maps_in, f, maps)

    def _maps_in(self, f: Fetch, maps: dict[str, ChunkMap]) -> None:
        sim = self.sim
        if self.fetches.get(f.peer) is not f:
            return
        now = sim.now
        if f.stage == "find":
            if not maps:
                if now - f.started >= FIND_TIMEOUT_S:
                    self._fail(f, "no member of the party holds the scene")
                else:
                    sim.at(now + MAP_POLL_S * 2, self._round, f)
                return
            f.maps, f.stage = maps, "manifest"
            f.swarm = SceneSwarm([(MANIFEST, self.manifest_bytes)], now)
            f.swarm.on_maps(maps, now)
        else:
            f.swarm.on_maps(maps, now)
            sim.at(now + MAP_POLL_S, self._round, f)
        self._step(f)

    # ------------------------------------------------------------------ the fetch loop
    def _step(self, f: Fetch) -> None:
        sim = self.sim
        p = sim.peers[f.peer]
        if self.fetches.get(f.peer) is not f or f.swarm is None or p.frozen:
            return
        now = sim.now
        for a in f.swarm.poll(now):
            if isinstance(a, Request):
                f.in_flight += len(a.hashes)
                f.asked[a.peer] = f.asked.get(a.peer, 0) + len(a.hashes)
                size = WANT_BYTES + WANT_HASH_BYTES * len(a.hashes)
                q, gen = sim.peers[a.peer], f.streams.get(a.peer, 0)
                args = (a.peer, q.epoch, f, p.epoch, gen, a.hashes)
                if not sim.net.send(p.name, a.peer, size, self._want, *args):
                    self._stalled(f, a.peer, gen)
            elif isinstance(a, Penalize):
                pass  # nobody sends wrong chunks here
        reason = f.swarm.stuck_error(now, f.in_flight)
        if reason:
            self._fail(f, reason)
            return
        due = f.swarm.next_deadline()
        if f.swarm.stuck:
            due = now + STUCK_CHECK_S if due is None else min(due, now + STUCK_CHECK_S)
        if due is not None and (f.timer is None or f.timer < now or due < f.timer):
            f.timer = max(due, now)
            sim.at(f.timer, self._timer, f)

    def _timer(self, f: Fetch) -> None:
        if f.timer is not None and f.timer <= self.sim.now:
            f.timer = None
        self._step(f)

    def _stalled(self, f: Fetch, src: str, gen: int) -> None:
        self.sim.at(self.sim.now + STREAM_RESET_S, self._provider_lost, f, src, gen)

    def _want(self, name: str, epoch: int, f: Fetch, f_epoch: int, gen: int, hashes: tuple[str, ...]) -> None:
        sim = self.sim
        q = sim.peers[name]
        if q.epoch != epoch or not q.alive:  # sent to a peer that is gone: the stream fails
            sim.at(sim.now + sim.net.link_s(q, sim.peers[f.peer]), self._provider_lost, f, name, gen)
            return
        if q.frozen:
            q.inbox.append(("call", self._want, (name, epoch, f, f_epoch, gen, hashes)))
            return
        mine = self.fetches.get(name)
        for h in hashes:  # a provider serves what its store holds, whatever it announced
            held = name in self.whole or (mine is not None and mine.stage == "chunks" and mine.swarm.holds(h))
            size = self.size[h] if held else NOT_FOUND_BYTES
            if not sim.net.send(name, f.peer, size, self._chunk, f, f_epoch, name, epoch, gen, h, held):
                self._stalled(f, name, gen)

    def _chunk(self, f: Fetch, f_epoch: int, src: str, src_epoch: int, gen: int, h: str, found: bool) -> None:
        sim = self.sim
        p = sim.peers[f.peer]
        if (
            self.fetches.get(f.peer) is not f
            or p.epoch != f_epoch
            or sim.peers[src].epoch != src_epoch
            or f.streams.get(src, 0) != gen
        ):
            return  # the fetch is over, or that stream failed (what it owed was counted then)
        if p.frozen:
            p.inbox.append(("call", self._chunk, (f, f_epoch, src, src_epoch, gen, h, found)))
            return
        f.in_flight -= 1
        f.asked[src] -= 1
        now = sim.now
        if h in f.swarm:
            if found:
                if f.swarm.on_chunk(src, h, True, now):
                    f.map = None
            else:
                f.swarm.on_not_found(src, h, now)
        if f.swarm.done:
            if f.stage == "manifest":
                f.stage = "chunks"
                f.swarm = SceneSwarm(self.wanted, now, scene_id=SCENE_ID, order=self.order,
                                     shuffle=sim.rng.shuffle, peer_id=f.peer,
                                     members=sum(q.alive for q in sim.peers.values()) - 1)  # fmt: skip
                f.swarm.on_maps(f.maps, now)
                sim.at(now + MAP_POLL_S, self._round, f)
            else:
                self._done(f)
                return
        self._step(f)

    def _provider_lost(self, f: Fetch, src: str, gen: int) -> None:
        """The stream to `src` failed: what it owed goes elsewhere; a new stream may be opened."""
        if self.fetches.get(f.peer) is not f or f.streams.get(src, 0) != gen:
            return
        f.streams[src] = gen + 1
        f.in_flight -= f.asked.pop(src, 0)
        if f.swarm is not None:
            f.swarm.provider_failed(src, self.sim.now)
        self._step(f)

    def _done(self, f: Fetch) -> None:
        n = len(self.order)
        if f.swarm.chunk_map().held_bits(n) != (1 << n) - 1:
            self.incomplete.append(f.peer)
        del self.fetches[f.peer]
        self.whole.add(f.peer)
        self.finished[f.peer] = (f.started, self.sim.now)
        for then in f.then:
            then("")

    def _fail(self, f: Fetch, reason: str) -> None:
        del self.fetches[f.peer]
        self.failed[f.peer] = reason
        for then in f.then:
            then(reason)

    # ------------------------------------------------------------------ figures
    def bound_s(self, peers) -> float:
        """The distribution bound over the peers present at the start (see the module docstring)."""
        held = [p for p in peers if p.name in self.holders]
        fetchers = [p for p in peers if p.name not in self.holders]
        if not fetchers:
            return 0.0
        s = float(self.spec.bytes)
        up_h = sum(p.up_Bps for p in held)
        bound = max(s / up_h, s / min(p.down_Bps for p in fetchers))
        if self.spec.swarm:
            return max(bound, len(fetchers) * s / sum(p.up_Bps for p in peers))
        return max(bound, len(fetchers) * s / up_h)

    def figures(self) -> dict:
        """`distribution_s`: when the last peer present from the start got the scene (None while
        one of them still fetches); `fetch_s_max`: the longest fetch, late joiners' included."""
        first = [n for n, p in self.sim.peers.items() if p.joined_at == 0.0 and n not in self.holders]
        done = [self.finished[n][1] for n in first if n in self.finished]
        pending = any(n in self.fetches for n in first)
        return {
            "scene_bytes": self.spec.bytes,
            "chunks": len(self.order),
            "fetched": len(self.finished),
            "fetch_failed": dict(self.failed),
            "distribution_s": round(max(done), 6) if done and not pending else None,
            "fetch_s_max": round(max((d - s for s, d in self.finished.values()), default=0.0), 6),
            "holders_bytes_out": sum(self.sim.peers[n].bytes_out for n in self.holders),
        }
