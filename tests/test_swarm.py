"""The swarm policy core: own want-list order, a served map that grows, map rounds offered as
differences, the source's request cap shrinking with the partial holders, bad maps named, and the
stuck grace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sansio

import meshrender.swarm as swarm_mod
from meshrender.exchange import INFLIGHT_CHUNKS_MAX, LocalProtocolError, Request
from meshrender.protocol import ChunkMap
from meshrender.swarm import SOURCE_REQUESTS_MIN, STUCK_GRACE_S, SceneSwarm

SCENE = "5" * 64
ORDER = [f"{i:064x}" for i in range(42)]
SIZE = 1000


def whole() -> ChunkMap:
    return ChunkMap(scene_id=SCENE, count=0, whole=True, bits=b"")


def partial(*held: int) -> ChunkMap:
    return ChunkMap.partial(SCENE, len(ORDER), sum(1 << i for i in held))


def new_swarm(held: set[int] = frozenset(), **kw) -> SceneSwarm:
    wanted = [(h, SIZE) for i, h in enumerate(ORDER) if i not in held]
    return SceneSwarm(wanted, 0.0, scene_id=SCENE, order=ORDER, **kw)


def requested(actions) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in actions:
        if isinstance(a, Request):
            out.setdefault(a.peer, []).extend(a.hashes)
    return out


def test_swarm_imports_only_sans_io_modules():
    allowed = {"__future__", "collections.abc", "meshrender.exchange", "meshrender.protocol"}
    assert sansio.forbidden_imports(Path(swarm_mod.__file__).read_text(), allowed) == []


def test_each_fetcher_has_its_own_order_and_the_same_seed_the_same_one():
    def first_asked(seed: int) -> list[str]:
        s = new_swarm(shuffle=random.Random(seed).shuffle)
        s.on_maps({"src": whole()}, 0.0)
        return requested(s.poll(0.0))["src"]

    assert first_asked(1) == first_asked(1)
    assert first_asked(1) != first_asked(2)
    s = new_swarm()
    s.on_maps({"src": whole()}, 0.0)
    assert requested(s.poll(0.0))["src"] == ORDER[:INFLIGHT_CHUNKS_MAX]  # no shuffle: as given


def test_the_served_map_starts_with_what_is_held_and_grows_with_each_chunk():
    s = new_swarm(held={0, 5})
    assert s.chunk_map().held_bits(len(ORDER)) == (1 << 0) | (1 << 5)
    assert s.holds(ORDER[5]) and not s.holds(ORDER[1]) and not s.holds("f" * 64)
    s.on_maps({"src": whole()}, 0.0)
    asked = requested(s.poll(0.0))["src"]
    assert s.on_chunk("src", asked[0], True, 0.1)
    bits = s.chunk_map().held_bits(len(ORDER))
    assert bits >> ORDER.index(asked[0]) & 1
    assert not s.on_chunk("src", asked[1], False, 0.2)  # wrong bytes: not held
    assert s.chunk_map().held_bits(len(ORDER)) == bits


def test_a_partial_holder_is_offered_only_what_it_gained():
    s = new_swarm()
    s.on_maps({"a": partial(1, 2)}, 0.0)
    assert sorted(requested(s.poll(0.0))["a"]) == [ORDER[1], ORDER[2]]
    s.on_maps({"a": partial(1, 2)}, 0.25)  # nothing new: nothing more to ask
    assert "a" not in requested(s.poll(0.25))
    s.on_maps({"a": partial(1, 2, 7)}, 0.5)
    assert requested(s.poll(0.5))["a"] == [ORDER[7]]


def test_the_source_cap_shrinks_as_partial_holders_appear():
    s = new_swarm()
    s.on_maps({"src": whole()}, 0.0)
    assert len(requested(s.poll(0.0))["src"]) == INFLIGHT_CHUNKS_MAX  # alone with the source
    fresh = new_swarm()
    maps = {"src": whole(), **{f"f{i}": partial(i) for i in range(7)}}
    fresh.on_maps(maps, 0.0)
    assert len(requested(fresh.poll(0.0))["src"]) == INFLIGHT_CHUNKS_MAX // 8
    crowd = new_swarm()
    crowd.on_maps({"src": whole(), **{f"f{i}": partial(i) for i in range(30)}}, 0.0)
    assert len(requested(crowd.poll(0.0))["src"]) == SOURCE_REQUESTS_MIN


def test_malformed_maps_are_named_and_their_senders_not_offered():
    s = new_swarm()
    short = ChunkMap.partial(SCENE, 41, 1)
    other = ChunkMap.partial("6" * 64, 42, 1)
    over = ChunkMap(scene_id=SCENE, count=42, whole=False, bits=b"\0" * 5 + b"\x08")  # bit 43
    bad = dict(s.on_maps({"x": short, "y": other, "z": over}, 0.0))
    assert "scene of 42" in bad["x"] and "scene 6666" in bad["y"] and "past" in bad["z"]
    assert requested(s.poll(0.0)) == {}
    assert s.stuck  # nobody usable has anything


def test_a_failed_provider_is_taken_afresh_next_round():
    s = new_swarm()
    s.on_maps({"a": partial(1)}, 0.0)
    assert requested(s.poll(0.0))["a"] == [ORDER[1]]
    assert s.provider_failed("a", 0.1)
    assert not s.provider_failed("a", 0.1)  # said once
    s.on_maps({"a": partial(1)}, 0.25)  # the same map: offered again in full
    assert requested(s.poll(0.25))["a"] == [ORDER[1]]


def test_stuck_waits_for_partial_maps_but_not_for_a_manifest():
    s = new_swarm()
    s.on_maps({"a": partial(1)}, 0.0)
    s.poll(0.0)
    assert s.stuck_error(0.0, in_flight=1) is None  # something may still come
    assert s.stuck_error(1.0, in_flight=0) is None  # grace starts
    assert s.stuck_error(1.0 + STUCK_GRACE_S / 2, in_flight=0) is None
    assert "41 chunk(s)" in s.stuck_error(1.1 + STUCK_GRACE_S, in_flight=0)
    assert s.stuck_error(2.0 + STUCK_GRACE_S, in_flight=1) is None  # in flight again: grace resets
    assert s.stuck_error(3.0 + STUCK_GRACE_S, in_flight=0) is None
    manifest = SceneSwarm([(SCENE, 0)], 0.0)
    assert manifest.stuck_error(0.0, in_flight=0) == "1 chunk(s) no reachable member can provide"
    with pytest.raises(LocalProtocolError):
        manifest.chunk_map()


def test_misuse_is_ours():
    with pytest.raises(LocalProtocolError, match="needs the scene id"):
        SceneSwarm([], 0.0, order=ORDER)
    with pytest.raises(LocalProtocolError, match="not in the chunk order"):
        SceneSwarm([("f" * 64, 1)], 0.0, scene_id=SCENE, order=ORDER)


def test_swarm_of_fetchers_completes_trading_with_each_other():
    """Four fetchers and one source, driven in lockstep rounds (maps, then requests answered):
    every fetcher ends with every chunk, and the source sends fewer than four copies."""
    rng = random.Random(7)
    fetchers = {f"f{i}": new_swarm(shuffle=rng.shuffle) for i in range(4)}
    sent_by: dict[str, int] = {}
    t = 0.0
    for _ in range(200):
        if all(s.done for s in fetchers.values()):
            break
        maps = {"src": whole(), **{n: s.chunk_map() for n, s in fetchers.items()}}
        for name, s in fetchers.items():
            s.on_maps({p: m for p, m in maps.items() if p != name}, t)
            for peer, hashes in requested(s.poll(t)).items():
                for h in hashes:  # every request answered within the round
                    s.on_chunk(peer, h, True, t)
                    sent_by[peer] = sent_by.get(peer, 0) + 1
        t += 0.25
    assert all(s.done for s in fetchers.values())
    assert all(s.chunk_map().held_bits(42) == (1 << 42) - 1 for s in fetchers.values())
    assert sent_by["src"] < 4 * len(ORDER)
    assert sum(v for k, v in sent_by.items() if k != "src") > 0


def test_fetchers_that_see_each_other_ask_the_source_for_disjoint_shares():
    asked = {}
    for me, other in (("f1", "f2"), ("f2", "f1")):
        s = new_swarm(shuffle=random.Random(me).shuffle, peer_id=me)
        s.on_maps({"src": whole(), other: partial()}, 0.0)  # the other has nothing yet
        asked[me] = requested(s.poll(0.0))["src"]
    assert asked["f1"] and asked["f2"] and not set(asked["f1"]) & set(asked["f2"])
    assert all(int(h, 16) % 2 == 0 for h in asked["f1"]) and all(int(h, 16) % 2 == 1 for h in asked["f2"])


def test_the_first_round_asks_little_of_the_source_in_a_big_party():
    lone = new_swarm(members=1)  # the source is the only other member
    lone.on_maps({"src": whole()}, 0.0)
    assert len(requested(lone.poll(0.0))["src"]) == INFLIGHT_CHUNKS_MAX
    party = new_swarm(members=8)  # seven others may be starting this fetch too
    party.on_maps({"src": whole()}, 0.0)
    assert len(requested(party.poll(0.0))["src"]) == INFLIGHT_CHUNKS_MAX // 8
    party.on_maps({"src": whole()}, 0.25)  # the next round shows nobody else fetches
    assert len(requested(party.poll(0.25))["src"]) == INFLIGHT_CHUNKS_MAX - INFLIGHT_CHUNKS_MAX // 8
