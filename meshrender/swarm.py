"""How one peer fetches one scene from a party as a swarm, with no I/O and no clock.

`meshrender.exchange.ChunkFetch` decides which provider is asked for which chunk. This core adds
what makes many fetchers starting at once a swarm rather than a queue at the source, so that the
real peer (`meshrender.node`) and the simulator (`sim/`) run the same policy:

  * Each fetcher takes the chunks in an order of its own (`shuffle`), so
    fetchers starting together ask the source for different chunks and then trade them. Once a
    map round shows the other fetchers, each cuts the want-list into shares the same way (the
    k-th of the fetchers by id takes the hashes that are k modulo their number) and asks the
    whole holders for its own share first, and for others' only while nothing else is out
    (`ChunkFetch.set_share`); a whole holder is never first asked for a chunk a partial holder
    has (`prefer_partial`). So what only the source has leaves it about once.
  * While it fetches, a peer serves what it holds so far: `chunk_map()` is its answer to a
    `ChunkMapQuery`, one bit per chunk of the scene's chunk order.
  * Every MAP_POLL_S the caller asks every member for its chunk map and hands the round's answers
    to `on_maps`. A member holding the scene whole is offered as a provider of everything, again
    every round (a holder the fetch dropped for timeouts, or lost, comes back while it answers);
    a partial holder is offered the chunks it gained since its last map (a set-bit difference,
    so a round costs in proportion to what changed).
  * The members holding the scene whole are what every fetcher leans on: the more partial holders
    there are to trade with, the fewer requests a fetcher keeps out at a whole holder
    (INFLIGHT_CHUNKS_MAX // (1 + partial holders), at least SOURCE_REQUESTS_MIN), so the source's
    upload goes to chunks the swarm lacks rather than to copies it will soon have. In the first
    round, which cannot see who else is starting, every other member not holding the scene whole
    (`members`) is counted as a fetcher.
  * `stuck_error` says when to give up: chunks no usable provider holds, with nothing in flight
    that could still bring them, for STUCK_GRACE_S (at once when there is no partial map to wait
    on, as for a manifest).

Without an `order` (fetching a manifest, whose members' maps only say they hold it) every member
with a map is offered as a provider of everything and `chunk_map` is not available.

Our misuse raises `meshrender.exchange.LocalProtocolError`; a member's malformed map is returned
by `on_maps` as (peer, reason) for the caller to penalise, and is otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from meshrender.exchange import INFLIGHT_CHUNKS_MAX, Action, ChunkFetch, FetchStatistics, LocalProtocolError
from meshrender.protocol import ChunkMap, RemoteProtocolError

MAP_POLL_S = 0.25  # while fetching, members are asked for their chunk maps this often
MAP_TIMEOUT_S = 5.0  # a chunk-map answer is a few bytes from memory: a member slower than this is skipped
SOURCE_REQUESTS_MIN = 2  # requests a fetcher keeps out at a whole holder, however many fetchers share it
FIND_TIMEOUT_S = 10.0  # a fetch asks the members this long for the scene before saying nobody has it
STUCK_GRACE_S = 15.0  # chunks no reachable member holds fail a fetch after this long without one


class SceneSwarm:
    """One fetch of one scene's chunks (or of its manifest). See the module docstring."""

    def __init__(
        self,
        wanted: Iterable[tuple[str, int]],
        now: float,
        *,
        scene_id: str | None = None,
        order: list[str] | None = None,
        shuffle: Callable[[list], None] | None = None,
        peer_id: str | None = None,
        members: int = 0,
        **fetch_options,
    ):
        """`wanted`: (hash, size) of the chunks to fetch. `order`: the scene's chunk order (its
        manifest's distinct chunks); chunks in it and not wanted are held already. `shuffle` puts
        the want-list in this peer's own order, in place (a seeded `random.Random().shuffle`; None:
        kept as given). `peer_id`: this peer's own id, which gives it its share of what only the
        whole holders have (see the module docstring). `members`: how many other members the party
        has; until a map round shows who else fetches, each that does not hold the scene whole is
        counted as a fetcher. `fetch_options` go to ChunkFetch."""
        wanted = list(wanted)
        if shuffle is not None:
            shuffle(wanted)
        self.scene_id = scene_id
        fetch_options.setdefault("prefer_partial", order is not None)  # the source sends what the swarm lacks
        self.fetch = ChunkFetch(wanted, now, **fetch_options)
        self.order = order
        self._bits = 0  # chunk i of `order` held: bit i
        self._index: dict[str, int] = {}
        if order is not None:
            if scene_id is None:
                raise LocalProtocolError("a swarm with a chunk order needs the scene id")
            self._index = {h: i for i, h in enumerate(order)}
            missing = {h for h, _ in wanted}
            stray = missing - self._index.keys()
            if stray:
                raise LocalProtocolError(f"{len(stray)} wanted chunk(s) are not in the chunk order")
            for h, i in self._index.items():
                if h not in missing:
                    self._bits |= 1 << i
        # per provider: the bits of its last map offered to the fetch (None: it holds everything)
        self._known: dict[str, int | None] = {}
        self._stuck_since: float | None = None
        self.peer_id = peer_id
        self._wanted = [h for h, _ in wanted]  # in this peer's own order
        self._fetchers: tuple[str, ...] = ()  # the fetchers the share was last cut among
        self._rounds = 0
        self._members = members

    # ------------------------------------------------------------------ what ChunkFetch does
    @property
    def done(self) -> bool:
        return self.fetch.done

    @property
    def stuck(self) -> tuple[str, ...]:
        return self.fetch.stuck

    def __contains__(self, hash: object) -> bool:
        return hash in self.fetch

    def poll(self, now: float) -> list[Action]:
        return self.fetch.poll(now)

    def next_deadline(self) -> float | None:
        return self.fetch.next_deadline()

    def statistics(self) -> FetchStatistics:
        return self.fetch.statistics()

    def on_not_found(self, peer: str, hash: str, now: float) -> None:
        self.fetch.on_not_found(peer, hash, now)

    def on_arrived(self, peer: str, hash: str, now: float) -> None:
        self.fetch.on_arrived(peer, hash, now)

    def on_chunk(self, peer: str, hash: str, ok: bool, now: float) -> bool:
        """As ChunkFetch.on_chunk; a chunk that completes is also marked held in `chunk_map`."""
        completed = self.fetch.on_chunk(peer, hash, ok, now)
        if completed and self.order is not None:
            self._bits |= 1 << self._index[hash]
        return completed

    # ------------------------------------------------------------------ the swarm
    def holds(self, hash: str) -> bool:
        """Whether this peer holds chunk `hash` of the scene: what its chunk map says."""
        i = self._index.get(hash)
        return i is not None and bool(self._bits >> i & 1)

    @property
    def partial_holders(self) -> int:
        return sum(1 for v in self._known.values() if v is not None)

    def chunk_map(self) -> ChunkMap:
        """What this peer holds of the scene so far, as its answer to a ChunkMapQuery."""
        if self.order is None:
            raise LocalProtocolError("a manifest fetch has no chunk map to serve")
        return ChunkMap.partial(self.scene_id, len(self.order), self._bits)

    def on_maps(self, maps: Mapping[str, ChunkMap], now: float) -> list[tuple[str, str]]:
        """One round of members' chunk maps (members that hold nothing of the scene may be left
        out). Returns (peer, reason) for each malformed map; its sender is not offered."""
        bad = []
        for peer, m in maps.items():
            reason = self._offer(peer, m, now)
            if reason:
                bad.append((peer, reason))
        self._share_sources(now)
        return bad

    def provider_failed(self, peer: str, now: float) -> bool:
        """The stream to `peer` failed: its requests go elsewhere, and its next map is taken whole
        again. Returns whether it was a provider until now (to say so once)."""
        was = self._known.pop(peer, 0) != 0
        self.fetch.remove_provider(peer, now)
        return was

    def stuck_error(self, now: float, in_flight: int) -> str | None:
        """A reason to give up, or None. `in_flight`: requests sent whose answer is not in yet."""
        if self.fetch.stuck and not in_flight:
            if self._stuck_since is None:
                self._stuck_since = now
            if self.order is None or now - self._stuck_since > STUCK_GRACE_S:
                return f"{len(self.fetch.stuck)} chunk(s) no reachable member can provide"
        else:
            self._stuck_since = None
        return None

    def _offer(self, peer: str, m: ChunkMap, now: float) -> str | None:
        if m.whole or self.order is None:
            self.fetch.add_provider(peer, None, now)
            self._known[peer] = None
            return None
        if m.scene_id != self.scene_id:
            return f"sent a chunk map of scene {m.scene_id[:16]} for {self.scene_id[:16]}"
        try:
            bits = m.held_bits(len(self.order))
        except RemoteProtocolError as exc:
            return str(exc)
        seen = self._known.get(peer, 0)
        if seen is None:  # it held the scene whole: it stays a provider of everything, and its
            return None  # not-founds drop it if it has since evicted chunks
        new = bits & ~seen
        if new or peer not in self._known:
            self._known[peer] = seen | new
            self.fetch.add_provider(peer, _set_hashes(new, self.order), now)
        return None

    def _share_sources(self, now: float) -> None:
        self._rounds += 1
        if self.order is None:
            return
        fetchers = self.partial_holders
        if self._rounds == 1:  # the first round cannot see who else starts now: assume the others do
            fetchers = max(fetchers, self._members - sum(1 for v in self._known.values() if v is None))
        cap = max(SOURCE_REQUESTS_MIN, INFLIGHT_CHUNKS_MAX // (1 + fetchers))
        for peer, v in self._known.items():
            if v is None:
                self.fetch.add_provider(peer, None, now, inflight_chunks_max=cap)
        if self.peer_id is not None:
            self._cut_shares()

    def _cut_shares(self) -> None:
        """Put this peer's share of the chunks first in its order: of the fetchers it knows (the
        partial holders and itself, by id), the k-th takes the chunks whose hash is k modulo their
        number. Every fetcher cuts the same way, so what only the whole holders have is asked of
        them by one fetcher each, and the others get it from that one."""
        me = self.peer_id
        fetchers = tuple(sorted({me, *(p for p, v in self._known.items() if v is not None)}))
        if fetchers == self._fetchers:
            return
        self._fetchers = fetchers
        n, k = len(fetchers), fetchers.index(me)
        self.fetch.set_share(h for h in self._wanted if int(h, 16) % n == k)


def _set_hashes(bits: int, order: list[str]) -> list[str]:
    """The hashes of `order` whose bit is set, lowest first."""
    out = []
    while bits:
        low = bits & -bits
        out.append(order[low.bit_length() - 1])
        bits ^= low
    return out
